"""The one interface every training method implements, and how the training loop builds one.

A method's hyperparameters are declared in ``settings`` (no torch); its implementation, a
subclass of that declaration and of ``Objective``, computes the loss. Calling it on a batch
returns the scalar loss to minimize and a dict of floats to log. The training loop owns the
optimizer, the schedule and the noise seed; an objective owns everything between "here is a
clean batch in [0, 1] pixel space" and "here is the loss".
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import nn

from robustreg.objectives.settings import (
    REGISTRY,
    MethodSettings,
    declaration,
    resolve_params,
)

# REGISTRY: every declared method by name, which ``build_objective`` reads (tests register
# objectives of their own in it).
__all__ = ["REGISTRY", "Objective", "StepContext", "build_objective", "implementation"]


@dataclass(frozen=True)
class StepContext:
    """Where the training loop is when it asks for a loss (epochs count from 0), and which
    examples the batch holds.

    ``indices`` [B] (int64, on the batch's device) are the batch's positions in the training
    split of ``num_examples`` images: positions in the whole split, so images held out for
    early stopping keep theirs and never appear. ``state`` is given to a method that
    ``keeps_state`` only: a dict of tensors the loop keeps for the whole run and saves in its
    checkpoint (not in the model), so a resumed run goes on from the same state. The method
    adds its entries on first use and decides their layout: tensors over the split's
    examples indexed by those positions (MMA: each example's last margin), or tensors that
    belong to no example (free adversarial training: one batch-shaped perturbation carried
    from batch to batch). Called outside the loop (``state`` None) a method runs without them.

    ``scratch`` lives for one optimizer step only: what a method's call hands to its
    ``after_backward`` on the same step (the loop makes a new context for every step and
    never saves it).
    """

    epoch: int
    epochs: int
    indices: torch.Tensor | None = None
    num_examples: int | None = None
    state: dict[str, torch.Tensor] | None = None
    scratch: dict[str, torch.Tensor] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.state is not None and (self.indices is None or self.num_examples is None):
            raise ValueError("state: needs the batch's indices and the split's num_examples")


class Objective(MethodSettings):
    """The torch side of a method: the loss of its declaration in ``settings``.

    A method's implementation subclasses its declaration (``settings.<Method>Settings``, whose
    fields are its hyperparameters) and this class, and adds no field. Calling it on a batch
    returns the scalar loss to minimize and a dict of floats to log.

    ``batch_split`` tells the training loop to cut each loaded batch into that many
    equal chunks and take one optimizer step per chunk, as the SmoothAdv and
    consistency authors do (Salman et al.'s and Jeong & Shin's ``_chunk_minibatch``),
    so an m-noise method costs one batch's worth of forward passes per step.

    ``replays`` tells the loop to take that many optimizer steps on each chunk, calling the
    method afresh for each (free adversarial training's minibatch replay). After every
    step's backward pass, before the optimizer steps, the loop calls ``after_backward``: the
    gradients of that step's loss are in place, so a method can use the same backward pass
    for tensors of its own (their ``.grad``), at no extra cost.
    """

    @property
    def batch_split(self) -> int:
        return 1

    @property
    def replays(self) -> int:
        return 1

    def after_backward(self, ctx: StepContext) -> None:
        """Called by the loop after each step's backward pass, before the optimizer steps."""

    def epoch_report(self, row: Mapping[str, float]) -> str | None:
        """A line for the training log after each epoch, about what the method's own logs in
        the epoch's history ``row`` mean (ATENT's chain radius), or None."""
        return None

    @property
    def bf16_problem(self) -> str | None:
        """Why this method cannot train under a bfloat16 autocast (``schedule.amp``), or None.

        The training loop refuses an ``amp`` schedule for a method that says why. Every
        other method's loss under a CPU bfloat16 autocast agrees with its float32 loss
        (tests/test_amp.py): the forward passes round to bfloat16, the loss terms are
        computed in float32 from the logits (``common.copy_logits``).
        """
        return None

    def __call__(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, ctx: StepContext
    ) -> tuple[torch.Tensor, dict[str, float]]:
        raise NotImplementedError


def implementation(method: str) -> type[Objective]:
    """The class that computes ``method``'s loss, imported now: the one its declaration names,
    or the registered class itself when it is an ``Objective`` (a test's own method)."""
    cls = declaration(method)
    if issubclass(cls, Objective):
        return cls
    module, _, name = cls.implemented_by.rpartition(".")
    return getattr(importlib.import_module(module), name)


def build_objective(method: str, sigma: float | None, params: dict) -> Objective:
    """Instantiate a registered method; the single entry point the training loop uses."""
    cls = declaration(method)
    if cls.uses_sigma and (sigma is None or sigma <= 0):
        raise ValueError(f"sigma must be > 0 for method {method!r}, got {sigma}")
    if not cls.uses_sigma and sigma is not None:
        raise ValueError(f"method {method!r} trains without Gaussian noise: sigma must be unset")
    return implementation(method)(sigma=sigma, **resolve_params(method, params))
