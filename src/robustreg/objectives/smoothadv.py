"""SmoothAdv (Salman et al. 2019): adversarial training of the soft-smoothed classifier.

Jeong & Shin 2020, supp. E.1: draw delta_1..delta_m ~ N(0, sigma^2 I), find

    x_hat = argmax_{||x' - x||_2 <= eps} -log((1/m) sum_i F_y(x' + delta_i))        (Eq. 4)

by L2 PGD (``robustreg.attacks.smoothed_pgd.smoothed_pgd_l2``), then minimize the outer loss
of Eq. (2) as ``(1/m) sum_i CE(F(x_hat + delta_i), y)`` with the SAME delta_i reused.

Schedule and batching follow Salman et al.'s ``code/train_pgd.py``
(Hadisalman/smoothing-adversarial) and Jeong & Shin's ``code/train_salman.py``: the attack
radius warms up linearly, ``eps_epoch = min(eps, (epoch + 1) * eps / warmup_epochs)``
(epochs from 0; ``warmup_epochs = 0`` switches the warm-up off), and each loaded batch is
cut into m chunks (``batch_split = m``), one optimizer step per chunk. Defaults are the MNIST
setting of supp. B: PGD, 10 steps, eps = 1.0, m = 4, 10 warm-up epochs (supp. A.1).
"""

from __future__ import annotations

import torch
from torch import nn

from robustreg.attacks.smoothed_pgd import smoothed_pgd_l2
from robustreg.objectives.base import Objective, StepContext
from robustreg.objectives.common import (
    accuracy,
    as_floats,
    copies_xent,
    copy_logits,
    gaussian_noise,
)
from robustreg.objectives.settings import SmoothAdvSettings

__all__ = ["SmoothAdv"]


class SmoothAdv(SmoothAdvSettings, Objective):
    """SmoothAdv-PGD: mean CE over the m noisy copies of the smoothed-PGD adversarial input;
    hyperparameters: ``settings.SmoothAdvSettings``."""

    @property
    def batch_split(self) -> int:
        return self.m

    def eps_at(self, epoch: int) -> float:
        """Attack radius used during ``epoch`` (0-indexed), after the linear warm-up."""
        if self.warmup_epochs == 0:
            return float(self.eps)
        return min(float(self.eps), (epoch + 1) * self.eps / self.warmup_epochs)

    def adversarial_logits(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, ctx: StepContext
    ) -> tuple[torch.Tensor, float]:
        """Logits [m, B, C] of the m noisy copies of the adversarial input, and the eps used."""
        eps = self.eps_at(ctx.epoch)
        noise = gaussian_noise(x, self.m, self.sigma)
        x_adv = smoothed_pgd_l2(model, x, y, noise, eps, self.steps)
        return copy_logits(model, x_adv, noise), eps

    def __call__(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, ctx: StepContext
    ) -> tuple[torch.Tensor, dict[str, float]]:
        logits, eps = self.adversarial_logits(model, x, y, ctx)
        loss = copies_xent(logits, y)
        return loss, as_floats(loss=loss, xent=loss, acc=accuracy(logits, y), eps=eps)
