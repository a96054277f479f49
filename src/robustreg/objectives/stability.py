"""Stability training (Li et al. 2019) as Jeong & Shin 2020 ran it as a baseline.

Follows the authors' ``code/train_stab.py`` (jh-jeong/smoothing-consistency): with one draw
``delta ~ N(0, sigma^2 I)`` per example,

    L = CE(f(x), y) + lbd * CE(softmax(f(x)), softmax(f(x + delta))),
    CE(p, q) = -sum_c p_c log q_c,

the classification term on the CLEAN input and the stability term a cross-entropy with the
clean prediction as (not detached) target. Li et al. state the stability term as
KL(softmax(f(x)) || softmax(f(x + delta))); the cross-entropy used by the authors' code equals
that KL plus the entropy of the clean prediction. ``lbd = 2`` is the value of supp. B.

Clean and noisy inputs go through the model in two passes, as in the authors' code, so that
a BatchNorm model normalizes each with its own batch statistics (issue 20: one joint batch
gave another loss, 7.047 against 6.828 for a ResNet-20 at initialization with sigma = 1;
for models without batch statistics, such as the MNIST LeNet, the two are the same). Logged
accuracy is on the noisy copy, as the authors log it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from robustreg.objectives.base import Objective, StepContext
from robustreg.objectives.common import accuracy, as_floats, copy_logits, gaussian_noise
from robustreg.objectives.settings import StabilitySettings

__all__ = ["Stability"]


class Stability(StabilitySettings, Objective):
    """``CE(f(x), y) + lbd * CE(softmax f(x), softmax f(x + delta))`` (authors' train_stab.py);
    hyperparameters: ``settings.StabilitySettings``."""

    def __call__(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, ctx: StepContext
    ) -> tuple[torch.Tensor, dict[str, float]]:
        noise = gaussian_noise(x, 1, self.sigma)
        clean = copy_logits(model, x, torch.zeros_like(noise))[0]
        noisy = copy_logits(model, x, noise)[0]
        xent = F.cross_entropy(clean, y)
        stab = -(F.softmax(clean, dim=-1) * F.log_softmax(noisy, dim=-1)).sum(dim=-1).mean()
        loss = xent + self.lbd * stab
        return loss, as_floats(loss=loss, xent=xent, reg=stab, acc=accuracy(noisy, y))
