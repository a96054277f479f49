"""MART (Wang et al. 2020): misclassification-aware adversarial training.

Wang et al.'s surrogate loss (boosted CE plus a misclassification-weighted KL) as the
authors' ``mart.py`` computes it (``mart_loss``; YisenWang/MART, called from
``train_wideresnet.py``): with x' from a CE-ascending linf PGD started at
``x + 0.001 * N(0, I)`` (EVAL mode; the loss then in the caller's train mode), p = softmax
f(x) and q = softmax f(x'),

    BCE_i    = CE(f(x'_i), y_i) - log(1.0001 - q_i[y'_i] + 1e-12),
               y'_i = argmax_{c != y_i} q_i[c]
    robust_i = KL(p_i || q_i) * (1.0000001 - p_i[y_i])      KL with log(q + 1e-12)
    loss     = mean_i BCE_i + beta * mean_i robust_i,

the constants the code's (they keep both logs and the weight finite), every term
differentiated, the clean prediction included. Defaults are the code's single recipe
(both training scripts): eps = 0.031, 10 steps of 0.007, beta = 6. The code's attack is
linf only; ``norm = "l2"`` runs the same loss with an l2 PGD.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from robustreg.attacks.pgd import eval_mode, pgd
from robustreg.objectives.adre import runner_up
from robustreg.objectives.base import Objective, StepContext
from robustreg.objectives.common import accuracy, as_floats
from robustreg.objectives.settings import MartSettings
from robustreg.objectives.trades import START_STD

__all__ = ["Mart", "mart_terms"]


def mart_terms(
    clean_logits: torch.Tensor, adv_logits: torch.Tensor, y: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(mean_i BCE_i, mean_i robust_i)`` of the module docstring, from [B, C] logits."""
    p = F.softmax(clean_logits, dim=-1)
    q = F.softmax(adv_logits, dim=-1)
    wrong = runner_up(q, y)
    q_wrong = q.gather(1, wrong.view(-1, 1)).squeeze(1)
    bce = F.cross_entropy(adv_logits, y) - torch.log(1.0001 - q_wrong + 1e-12).mean()
    kl = (p * (F.log_softmax(clean_logits, dim=-1) - torch.log(q + 1e-12))).sum(-1)
    p_true = p.gather(1, y.view(-1, 1)).squeeze(1)
    return bce, (kl * (1.0000001 - p_true)).mean()


class Mart(MartSettings, Objective):
    """MART's boosted CE at the PGD point plus the misclassification-weighted KL;
    hyperparameters: ``settings.MartSettings``."""

    def __call__(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, ctx: StepContext
    ) -> tuple[torch.Tensor, dict[str, float]]:
        x = x.detach()
        with eval_mode(model):
            x_adv = pgd(
                model,
                x,
                y,
                norm=self.norm,
                eps=self.eps,
                steps=self.steps,
                step_size=self.step_size,
                start=x + START_STD * torch.randn_like(x),
            )
        clean_logits = model(x).float()
        adv_logits = model(x_adv).float()
        bce, robust = mart_terms(clean_logits, adv_logits, y)
        loss = bce + self.beta * robust
        return loss, as_floats(
            loss=loss,
            bce=bce,
            robust=robust,
            acc=accuracy(clean_logits, y),
            adv_acc=accuracy(adv_logits, y),
        )
