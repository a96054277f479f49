"""Gaussian data augmentation (Cohen et al. 2019).

Cohen et al. train the base classifier on ``CE(f(x + delta), y)`` with
``delta ~ N(0, sigma^2 I)``, one draw per example and step (Jeong & Shin 2020, Sec. 2; the
authors' ``code/train_cohen.py`` in jh-jeong/smoothing-consistency).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from robustreg.objectives.base import Objective, StepContext, register
from robustreg.objectives.common import (
    accuracy,
    as_floats,
    copies_xent,
    copy_logits,
    gaussian_noise,
)


@register
@dataclass(frozen=True)
class Gaussian(Objective):
    """``CE(f(x + delta), y)``, ``delta ~ N(0, sigma^2 I)``, one draw per example (Cohen et al.)."""

    name: ClassVar[str] = "gaussian"

    def __call__(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, ctx: StepContext
    ) -> tuple[torch.Tensor, dict[str, float]]:
        logits = copy_logits(model, x, gaussian_noise(x, 1, self.sigma))
        loss = copies_xent(logits, y)
        return loss, as_floats(loss=loss, xent=loss, acc=accuracy(logits, y))
