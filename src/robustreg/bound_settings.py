"""The bounds job's settings (``robustreg.bounds``; Finlay & Oberman 2021, section 2.2),
declared and checked without importing torch or scipy: planning resolves every bounds job's
settings, and so its id, before any job starts (issue 19)."""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from dataclasses import dataclass

from robustreg.settings import (
    BOOL,
    INT_1,
    NORM,
    Need,
    is_number,
    one_of,
    read_settings,
    setting,
)

__all__ = [
    "EPS_GRID_SAYS",
    "MIN_MAXIMA",
    "OUTPUTS",
    "BoundSettings",
    "check_blocks",
    "is_eps_grid",
    "resolve_bound_settings",
]

# What the margin loss is taken on (``robustreg.bounds.margin_loss``).
OUTPUTS = ("logits", "softmax")
# A three-parameter likelihood maximized on fewer points is not identified in practice.
MIN_MAXIMA = 10
EPS_GRID_SAYS = "a non-empty, strictly increasing list of numbers > 0"


def is_eps_grid(value: object) -> bool:
    """A list of numbers > 0, strictly increasing: the radii a bounds job estimates omega at."""
    return (
        isinstance(value, list)
        and len(value) > 0
        and all(is_number(e) and e > 0 for e in value)
        and all(a < b for a, b in itertools.pairwise(value))
    )


@dataclass(frozen=True, kw_only=True)
class BoundSettings:
    """The bounds job's settings (``robustreg.bounds.bound_statistics`` and ``bound_summary``):
    the attack ``norm``, the ``eps`` grid of omega(eps), ``samples`` draws of v per image and
    eps, ``block`` images per block maximum, ``top_k`` of the margin loss, the ``outputs`` it
    is taken on and ``clip`` (v kept inside the [0, 1] box, ``modulus_samples``).

    eps must be > 0: omega(0) = 0 exactly (Eq. 5 at v = 0), and its maxima, all 0, cannot be
    fitted."""

    norm: str = setting(need=NORM)
    eps: list[float] = setting(
        need=Need(is_eps_grid, EPS_GRID_SAYS, lambda v: [float(e) for e in v])
    )
    samples: int = setting(need=INT_1)
    block: int = setting(need=INT_1)
    top_k: int = setting(1, need=INT_1)
    outputs: str = setting("softmax", need=one_of(*OUTPUTS))
    clip: bool = setting(True, need=BOOL)


def resolve_bound_settings(spec: Mapping) -> dict:
    """The bounds job's settings from a mapping such as ``{"norm": "l2", "eps": [0.5, 1.0],
    "samples": 10, "block": 10}``, defaults filled in (``BoundSettings``: top_k 1, outputs
    "softmax", clip true), numbers as floats; one-line ValueErrors name the unknown, missing or
    bad key."""
    if not isinstance(spec, Mapping):
        raise ValueError(f"bounds: need a mapping of settings, got {spec!r}")
    return read_settings(BoundSettings, spec, "bounds")


def check_blocks(images: int, block: int) -> None:
    """``block`` images per block must split ``images`` into equal blocks
    (``robustreg.bounds.batch_maxima``), at least as many as a GEV fit needs
    (``robustreg.bounds.fit_gev``)."""
    if block < 1 or images % block or images // block < MIN_MAXIMA:
        raise ValueError(
            f"block: {block} images per block must split the {images} images into "
            f">= {MIN_MAXIMA} equal blocks"
        )
