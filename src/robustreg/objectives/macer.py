"""MACER (Zhai et al. 2020): attack-free maximization of the soft-smoothed certified radius.

Jeong & Shin 2020, supp. E.2, Eq. (8):

    L_MACER = CE(F_hat(x), y) + lbd * (sigma/2) * max(gamma - CR(F_hat; x, y), 0) * 1[F_hat(x) = y],

``F_hat`` the softmax averaged over m noise copies. Implemented as the authors' ``macer.py``
(RuntianZ/macer; copied as ``code/third_party/macer.py`` in jh-jeong/smoothing-consistency):

- classification term: ``-log(mean_i softmax(f(x + delta_i))_y + 1e-10)``, WITHOUT the inverse
  temperature beta (the code tempers the logits for the robustness term alone; the
  supplement's shorthand, which puts the beta-calibrated F_hat in both terms, reads otherwise);
- robustness term on the tempered ``F_beta = mean_i softmax(beta * f(x + delta_i))``: with
  p1 >= p2 its top-two entries and only for examples whose top-1 is y,
  ``xi = Phi^-1(p1) - Phi^-1(p2)``; an example contributes ``gamma - xi`` only if xi is
  finite and ``xi <= gamma`` (the code's filter, i.e. the hinge restricted to its active
  part); the sum is multiplied by sigma/2 ONCE. Read literally, Eq. (8) counts sigma/2 twice,
  since CR in Eq. (6) already carries it; the code uses ``gamma - xi`` times sigma/2, so gamma
  is a margin in units of xi, not of radius;
- ``loss = (sum classification + lbd * sum robustness) / B``.

``deferred_epochs``: lbd is 0 while ``epoch < deferred_epochs`` (epochs from 0), Jeong & Shin's
``code/train_macer.py --deferred`` for MNIST ("MACER is applied after the first learning rate
drop"). Defaults m = 16, lbd = 16, gamma = 8, beta = 16 are supp. B's (lbd = 6 at sigma = 1).
No batch splitting: the authors do not chunk MACER batches.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from robustreg.objectives.base import Objective, StepContext
from robustreg.objectives.common import accuracy, as_floats, copy_logits, gaussian_noise
from robustreg.objectives.settings import MacerSettings

__all__ = ["Macer", "macer_classification", "macer_robustness"]


def macer_classification(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Sum over the batch of ``-log(mean_i softmax(logits_i)_y + 1e-10)``; ``logits`` [m, B, C]."""
    mean_probs = F.softmax(logits, dim=-1).mean(dim=0)
    return -torch.log(mean_probs.gather(1, y.view(-1, 1)).squeeze(1) + 1e-10).sum()


def macer_robustness(
    logits: torch.Tensor, y: torch.Tensor, sigma: float, gamma: float, beta: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(sigma/2) * sum (gamma - xi)`` over the contributing examples, and their count.

    ``logits`` [m, B, C]. Masking uses ``torch.where`` with a harmless stand-in (p1 = p2 = 1/2)
    for the examples left out, so no infinite Phi^-1 enters the graph (a NaN gradient) and
    no device synchronisation is needed.
    """
    tempered = F.softmax(beta * logits, dim=-1).mean(dim=0)
    top2, top2_idx = tempered.topk(2, dim=-1)
    p1, p2 = top2[:, 0], top2[:, 1]
    with torch.no_grad():
        xi_raw = torch.special.ndtri(p1) - torch.special.ndtri(p2)
        keep = (top2_idx[:, 0] == y) & torch.isfinite(xi_raw) & (xi_raw <= gamma)
    half = torch.full_like(p1, 0.5)
    xi = torch.special.ndtri(torch.where(keep, p1, half)) - torch.special.ndtri(
        torch.where(keep, p2, half)
    )
    hinge = torch.where(keep, gamma - xi, torch.zeros_like(xi))
    return hinge.sum() * sigma / 2, keep.sum()


class Macer(MacerSettings, Objective):
    """MACER as in the authors' code; see the module docstring for the exact terms and
    ``settings.MacerSettings`` for the hyperparameters."""

    def lbd_at(self, epoch: int) -> float:
        """Robustness weight during ``epoch`` (0-indexed).

        The authors' ``train_macer.py`` zeroes lbd while ``epoch <= lr_step_size``, so with
        ``lr_step_size = 30`` MACER starts at epoch 31, one epoch after StepLR's first drop
        (which takes effect at epoch 30). Here ``epoch < deferred_epochs``: with
        ``deferred_epochs = 30`` the robustness term starts with the first dropped-LR epoch.
        """
        return 0.0 if epoch < self.deferred_epochs else float(self.lbd)

    def __call__(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, ctx: StepContext
    ) -> tuple[torch.Tensor, dict[str, float]]:
        batch = x.shape[0]
        logits = copy_logits(model, x, gaussian_noise(x, self.m, self.sigma))
        classification = macer_classification(logits, y)
        lbd = self.lbd_at(ctx.epoch)
        if lbd > 0:
            robustness, count = macer_robustness(logits, y, self.sigma, self.gamma, self.beta)
            loss = (classification + lbd * robustness) / batch
        else:  # as the authors' code: no robustness term computed at all
            robustness, count = torch.zeros((), device=x.device), 0
            loss = classification / batch
        return loss, as_floats(
            loss=loss,
            xent=classification / batch,
            reg=robustness / batch,
            robust_frac=count / batch,  # count: 0, or a tensor on the device
            lbd=lbd,
            acc=accuracy(logits, y),
        )
