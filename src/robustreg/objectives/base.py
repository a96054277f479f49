"""The one interface every training method implements.

A method is a frozen dataclass whose fields are its hyperparameters (the keys a
config may set). Calling it on a batch returns the scalar loss to minimize and a
dict of floats to log. The training loop owns the optimizer, the schedule and the
noise seed; an objective owns everything between "here is a clean batch in [0, 1]
pixel space" and "here is the loss".
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn


@dataclass(frozen=True)
class StepContext:
    """Where the training loop is when it asks for a loss (epochs count from 0)."""

    epoch: int
    epochs: int


@dataclass(frozen=True)
class Objective:
    """Base class: subclasses add their hyperparameters as dataclass fields.

    ``sigma`` is the Gaussian noise level in [0, 1] pixel units; every method gets it.
    ``batch_split`` tells the training loop to cut each loaded batch into that many
    equal chunks and take one optimizer step per chunk, as the SmoothAdv and
    consistency authors do (Salman et al.'s and Jeong & Shin's ``_chunk_minibatch``),
    so an m-noise method costs one batch's worth of forward passes per step.
    """

    name: ClassVar[str] = ""
    # Fixed traits a settings table prints beside the hyperparameters (SmoothAdv's attack).
    traits: ClassVar[dict[str, str]] = {}
    sigma: float

    @property
    def batch_split(self) -> int:
        return 1

    def __call__(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, ctx: StepContext
    ) -> tuple[torch.Tensor, dict[str, float]]:
        raise NotImplementedError


REGISTRY: dict[str, type[Objective]] = {}


def register(cls: type[Objective]) -> type[Objective]:
    """Class decorator: make a method buildable by its ``name``."""
    if not cls.name or cls.name in REGISTRY:
        raise ValueError(f"objective name missing or taken: {cls.name!r}")
    REGISTRY[cls.name] = cls
    return cls


def parameter_names(method: str) -> list[str]:
    """The hyperparameters a config may set for ``method`` (sigma comes from the experiment)."""
    cls = _lookup(method)
    return [f.name for f in dataclasses.fields(cls) if f.name != "sigma"]


def resolve_params(method: str, params: dict) -> dict:
    """``params`` completed with the method's defaults; unknown or missing keys raise ValueError."""
    cls = _lookup(method)
    known = {f.name: f for f in dataclasses.fields(cls) if f.name != "sigma"}
    unknown = sorted(set(params) - set(known))
    if unknown:
        raise ValueError(
            f"unknown parameter {unknown[0]!r} for method {method!r} (known: {', '.join(known)})"
        )
    resolved = {}
    for key, field in known.items():
        if key in params:
            resolved[key] = params[key]
        elif field.default is not dataclasses.MISSING:
            resolved[key] = field.default
        else:
            raise ValueError(f"missing parameter {key!r} for method {method!r}")
    return resolved


def describe(method: str, params: dict) -> dict:
    """What a settings table shows for ``method``: its name, fixed traits, resolved params."""
    return {"method": method, **_lookup(method).traits, **resolve_params(method, params)}


def build_objective(method: str, sigma: float, params: dict) -> Objective:
    """Instantiate a registered method; the single entry point the training loop uses."""
    if sigma <= 0:
        raise ValueError(f"sigma must be > 0, got {sigma}")
    return _lookup(method)(sigma=sigma, **resolve_params(method, params))


def _lookup(method: str) -> type[Objective]:
    from robustreg import objectives  # noqa: F401  (importing the package registers every method)

    if method not in REGISTRY:
        raise ValueError(f"unknown method {method!r} (known: {', '.join(sorted(REGISTRY))})")
    return REGISTRY[method]
