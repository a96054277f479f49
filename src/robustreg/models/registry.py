"""The registry of paper architectures: each module registers its builders with
``register_model``; ``create_model`` builds one by name.

Our own rather than timm's: every ``import timm`` loads its layers, which import
torchvision's ops and torch._dynamo, and its ~100 architectures (seconds of every job's
start-up), while only the ImageNet ResNet-50 is timm's (``robustreg.models.imagenet``, which
imports timm when it builds one).
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

Builder = Callable[[int], nn.Module]

_BUILDERS: dict[str, Builder] = {}


def register_model(builder: Builder) -> Builder:
    """Register ``builder(num_classes)`` under its function name."""
    name = builder.__name__
    if name in _BUILDERS:
        raise ValueError(f"architecture {name!r} is registered twice")
    _BUILDERS[name] = builder
    return builder


def create_model(arch: str, num_classes: int) -> nn.Module:
    """Build a registered architecture; one entry point, no if/else chains."""
    try:
        builder = _BUILDERS[arch]
    except KeyError:
        raise ValueError(f"unknown architecture {arch!r}") from None
    return builder(num_classes)


def architectures() -> list[str]:
    """The registered architectures' names, sorted."""
    return sorted(_BUILDERS)
