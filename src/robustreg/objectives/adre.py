"""ADRE regularization (Feng et al., AAAI 2020): ADRE_REG and its adversarial form ADRE_ADV.

ADRE_REG (Eqs. 5-8, Algorithm 1) minimizes the regularized risk of Eq. (6),

    (1/B) sum_i [ l_per_i - lbd * l_adre_i ],

estimated from k draws delta_ij ~ N(0, sigma^2 I) per example, the SAME draws for both terms
(Algorithm 1; the paper finds a second set of draws costs twice the forward passes for no
gain):

    l_per_i  = (1/k) sum_j CE(F(x_i + delta_ij), y_i)                            (Eq. 7)
    G_hat_i  = (1/k) sum_j softmax(f(x_i + delta_ij))                            (Eq. 8)
    y_hat_i  = argmax_{c != y_i} G_hat_i^c
    l_adre_i = CE(G_hat_i, y_hat_i) = -log G_hat_i^{y_hat_i}                     (Eq. 4, L' = CE)

When the smoothed classifier is right, y_hat_i is its runner-up class and ``-lbd * l_adre``
pushes that class down, widening the certified radius; when it is wrong, y_hat_i is the
(wrong) top class, which is pushed down as well (Eq. 4's two cases). The term is unbounded
below (G_hat^{y_hat} -> 0); lbd is kept small (0.05-0.3 in the Experiments).

``per_term = "single"`` is the variant behind the CIFAR-10 rows of Table 1 (Experiments):
l_per_i is the CE of ONE of the k copies, drawn uniformly per example, so that ADRE_REG and
Basic training (``gaussian``) differ only by the ADRE term; with lbd = 0 and k = 1 it is
Basic training. ``label_smoothing`` (the ImageNet recipe's 0.1) is ``F.cross_entropy``'s
and enters l_per only: l_adre's target is the class to push down, and a smoothed target
there would push every class down with it, y included.

ADRE_ADV (Eqs. 12-13 and Algorithm 1's adversarial branch) first attacks the smoothed
classifier with M steps of L2 PGD, step size 2 eps / M (Experiments), ascending

    CE(G_hat(x'), y) - lbd * CE(G_hat(x'), argmax_{c != y} G_hat^c(x'))          (Eq. 12)

with G_hat from the k draws, reused at every step (as SmoothAdv does), then takes ADRE_REG's
loss (Eq. 7's l_per) at the adversarial input with the same draws. With lbd = 0 this is
SmoothAdv's attack and outer loss (Salman et al. 2019; ``robustreg.objectives.smoothadv``).
"""

from __future__ import annotations

import math
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

from robustreg.attacks.smoothed_pgd import smoothed_pgd_l2, smoothed_xent
from robustreg.objectives.base import Objective, StepContext
from robustreg.objectives.common import accuracy, as_floats, copy_logits, gaussian_noise
from robustreg.objectives.settings import AdreAdvSettings, AdreRegSettings
from robustreg.objectives.smoothadv import SmoothAdv

__all__ = [
    "AdreAdv",
    "AdreReg",
    "adre_attack_objective",
    "runner_up",
    "smoothed_log_probs",
]


def smoothed_log_probs(logits: torch.Tensor) -> torch.Tensor:
    """``log G_hat`` [B, C] of Eq. (8) from the logits [k, B, C] of k noisy copies.

    Computed as ``logsumexp_j log_softmax_j - log k``: the log of the averaged softmax would
    be -inf (an infinite ADRE loss) wherever a class's probability underflows in every copy,
    which is exactly the runner-up class of a confident, well-trained model.
    """
    return torch.logsumexp(F.log_softmax(logits, dim=-1), dim=0) - math.log(logits.shape[0])


def runner_up(log_probs: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``argmax_{c != y_i}`` of each row of ``log_probs`` [B, C]: the class ADRE pushes down.

    An index, so no gradient flows through the choice; it is made on detached values.
    """
    masked = log_probs.detach().scatter(1, y.view(-1, 1), -math.inf)
    return masked.argmax(dim=1)


def _pick(log_probs: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
    """``log_probs[i, classes[i]]`` for every row i."""
    return log_probs.gather(1, classes.view(-1, 1)).squeeze(1)


def adre_attack_objective(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, noise: torch.Tensor, *, lbd: float
) -> torch.Tensor:
    """Per-example objective of Eq. (12) with the plug-in G_hat of Eq. (8); noise [k, B, ...].

    Both cross-entropies use the stable ``smoothed_log_probs``, so neither term saturates
    (``smoothed_xent`` clamps G_hat^y at 1e-20, where its gradient vanishes).
    """
    log_g = smoothed_log_probs(copy_logits(model, x, noise))
    return -_pick(log_g, y) + lbd * _pick(log_g, runner_up(log_g, y))


def _regularized_loss(
    logits: torch.Tensor, y: torch.Tensor, xent: torch.Tensor, lbd: float
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Eq. (6)'s batch loss ``mean_i l_per_i - lbd * mean_i l_adre_i`` and its log values.

    ``xent`` is the batch mean of l_per, computed by the caller from the same ``logits``.
    """
    log_g = smoothed_log_probs(logits)
    adre = -_pick(log_g, runner_up(log_g, y)).mean()
    loss = xent - lbd * adre
    smoothed_acc = (log_g.argmax(dim=1) == y).float().mean()
    return loss, {
        "loss": loss,
        "xent": xent,
        "adre": adre,
        "acc": accuracy(logits, y),
        "smoothed_acc": smoothed_acc,
    }


class AdreReg(AdreRegSettings, Objective):
    """ADRE_REG (Algorithm 1, non-adversarial); see the module docstring for the terms and
    ``settings.AdreRegSettings`` for the hyperparameters."""

    def __call__(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, ctx: StepContext
    ) -> tuple[torch.Tensor, dict[str, float]]:
        batch = x.shape[0]
        noise = gaussian_noise(x, self.k, self.sigma)
        if self.per_term == "single":
            # Each example's copy, drawn right after the noise. With k = 1 there is nothing to
            # draw, and not drawing leaves the RNG stream (hence every later batch's noise)
            # exactly as Basic training's.
            if self.k > 1:
                chosen = torch.randint(self.k, (batch,), device=x.device)
            else:
                chosen = torch.zeros(batch, dtype=torch.long, device=x.device)
        logits = copy_logits(model, x, noise)
        if self.per_term == "mean":  # mean over all k*B copies = (1/B) sum_i of Eq. (7)
            per_copy, labels = logits.flatten(0, 1), y.repeat(self.k)
        else:
            per_copy, labels = logits[chosen, torch.arange(batch, device=x.device)], y
        xent = F.cross_entropy(per_copy, labels, label_smoothing=self.label_smoothing)
        loss, logs = _regularized_loss(logits, y, xent, self.lbd)
        return loss, as_floats(**logs)


class AdreAdv(AdreAdvSettings, Objective):
    """ADRE_ADV: the Eq. (13) PGD attack, then Eq. (6)'s loss at the attack with the same noise;
    hyperparameters: ``settings.AdreAdvSettings``.

    Schedule and batching are SmoothAdv's, taken from a ``SmoothAdv`` with the same k, eps,
    steps and warm-up (``smoothadv``): the linear eps warm-up and ``batch_split = k`` (Salman
    et al.'s chunking of each loaded batch into k optimizer steps). Figure 1 compares ADRE_ADV
    with SmoothAdv at the same k and eps; sharing both makes the two methods differ only by
    the ADRE terms, and with lbd = 0 ADRE_ADV is SmoothAdv exactly.
    """

    def smoothadv(self) -> SmoothAdv:
        """SmoothAdv with this method's noise, attack and warm-up settings."""
        return SmoothAdv(
            sigma=self.sigma,
            m=self.k,
            eps=self.eps,
            steps=self.steps,
            warmup_epochs=self.warmup_epochs,
        )

    @property
    def batch_split(self) -> int:
        return self.smoothadv().batch_split

    def eps_at(self, epoch: int) -> float:
        """Attack radius used during ``epoch`` (0-indexed): SmoothAdv's linear warm-up."""
        return self.smoothadv().eps_at(epoch)

    def __call__(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, ctx: StepContext
    ) -> tuple[torch.Tensor, dict[str, float]]:
        eps = self.eps_at(ctx.epoch)
        noise = gaussian_noise(x, self.k, self.sigma)
        # lbd = 0 reduces Eq. (12) to SmoothAdv's attack: use its loss as is, so that the
        # adversarial input is SmoothAdv's bit for bit (the stable log differs in rounding).
        attack = smoothed_xent if self.lbd == 0 else partial(adre_attack_objective, lbd=self.lbd)
        x_adv = smoothed_pgd_l2(model, x, y, noise, eps, self.steps, loss=attack)
        logits = copy_logits(model, x_adv, noise)
        xent = F.cross_entropy(
            logits.flatten(0, 1), y.repeat(self.k), label_smoothing=self.label_smoothing
        )
        loss, logs = _regularized_loss(logits, y, xent, self.lbd)
        return loss, as_floats(**logs, eps=eps)
