"""Gaussian data augmentation (Cohen et al. 2019).

Cohen et al. train the base classifier on ``CE(f(x + delta), y)`` with
``delta ~ N(0, sigma^2 I)``, one draw per example and step (Jeong & Shin 2020, Sec. 2; the
authors' ``code/train_cohen.py`` in jh-jeong/smoothing-consistency).

``label_smoothing`` (default 0: plain CE) is ``F.cross_entropy``'s: the target becomes
``(1 - ls) * e_y + ls / C``. Feng et al. 2020 (Experiments) train their ImageNet models,
the Basic baseline of Table 1 among them, with label smoothing 0.1.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from robustreg.objectives.base import Objective, StepContext
from robustreg.objectives.common import accuracy, as_floats, copy_logits, gaussian_noise
from robustreg.objectives.settings import GaussianSettings


class Gaussian(GaussianSettings, Objective):
    """``CE(f(x + delta), y)``, ``delta ~ N(0, sigma^2 I)``, one draw per example (Cohen et al.);
    hyperparameters: ``settings.GaussianSettings``."""

    def __call__(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, ctx: StepContext
    ) -> tuple[torch.Tensor, dict[str, float]]:
        logits = copy_logits(model, x, gaussian_noise(x, 1, self.sigma))
        loss = F.cross_entropy(logits[0], y, label_smoothing=self.label_smoothing)
        return loss, as_floats(loss=loss, xent=loss, acc=accuracy(logits, y))
