"""Paper architectures, registered in timm's registry and built with ``timm.create_model``.

Every model is ``Normalize`` followed by a backbone, so noise is always added in
[0, 1] pixel space and per-channel normalization happens inside the model
(Cohen et al. 2019; Jeong & Shin 2020, supp. A.2).
"""

from __future__ import annotations

import timm
from torch import nn

from robustreg.models import (  # noqa: F401  (registers the paper architectures)
    cifar_resnet,
    imagenet,
    lenet,
    lenet5,
    resnext_cifar,
    small_cnn,
    wide_resnet,
)
from robustreg.models.normalize import Normalize

__all__ = ["Normalize", "create_model"]


def create_model(arch: str, num_classes: int) -> nn.Module:
    """Build a registered architecture; one entry point, no if/else chains."""
    if not timm.is_model(arch):
        raise ValueError(f"unknown architecture {arch!r}")
    return timm.create_model(arch, pretrained=False, num_classes=num_classes)
