"""Consistency regularization (Jeong & Shin 2020, main text Eq. (9)) on top of Gaussian training.

With m noisy copies ``x + delta_i`` (``delta_i ~ N(0, sigma^2 I)``), per example

    L = (1/m) sum_i CE(F(x + delta_i), y)
        + lbd * (1/m) sum_i KL(F_hat || F(x + delta_i))       F_hat = (1/m) sum_i F(x + delta_i)
        + eta * H(F_hat),

F the softmax of the classifier, averaged over the batch. The regularizer's variants match
the authors' ``consistency_loss`` (jh-jeong/smoothing-consistency, ``code/consistency.py``):

- ``'default'``: ``lbd * KL + eta * H`` (all the paper's numbers use this form);
- ``'xent'``:    ``lbd * (KL + H)``, the cross-entropy form, i.e. ``'default'`` with ``eta = lbd``;
- ``'kl'``:      ``lbd * KL`` only;
- ``'mse'``:     ``lbd * ||F(x + delta_1) - F(x + delta_2)||_2^2`` (first two copies only).

KL follows ``F.kl_div`` conventions (a zero target probability contributes 0); the entropy
clamps probabilities at 1e-20 inside the log, as the authors do. ``batch_split = m``: the
authors cut each loaded batch into m mini-batches (``_chunk_minibatch`` in
``code/train_consistency.py``) and give each its m noise copies, one optimizer step each.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from robustreg.objectives.base import Objective, StepContext
from robustreg.objectives.common import (
    accuracy,
    as_floats,
    copies_xent,
    copy_logits,
    gaussian_noise,
)
from robustreg.objectives.settings import LOSS_VARIANTS, ConsistencySettings

__all__ = ["Consistency", "consistency_regularizer"]


def consistency_regularizer(
    logits: torch.Tensor | Sequence[torch.Tensor], lbd: float, eta: float, loss: str = "default"
) -> torch.Tensor:
    """Batch mean of the consistency term for logits of m >= 2 noisy copies.

    ``logits`` is a [m, B, C] tensor or a sequence of m [B, C] tensors (copy i = noise draw i).
    """
    if loss not in LOSS_VARIANTS:
        raise ValueError(f"loss: unknown variant {loss!r} (known: {', '.join(LOSS_VARIANTS)})")
    if not isinstance(logits, torch.Tensor):
        logits = torch.stack(list(logits))
    if logits.dim() != 3 or logits.shape[0] < 2:
        raise ValueError(f"need logits [m >= 2, B, C], got shape {list(logits.shape)}")
    log_probs = F.log_softmax(logits, dim=-1)
    probs = log_probs.exp()
    if loss == "mse":
        per_example = lbd * (probs[1] - probs[0]).pow(2).sum(dim=-1)
        return per_example.mean()
    mean_probs = probs.mean(dim=0)  # F_hat, [B, C]
    kl = F.kl_div(log_probs, mean_probs.expand_as(log_probs), reduction="none").sum(-1).mean(0)
    if loss == "kl":
        per_example = lbd * kl
    else:
        entropy = -(mean_probs * torch.log(mean_probs.clamp(min=1e-20))).sum(dim=-1)
        per_example = lbd * (kl + entropy) if loss == "xent" else lbd * kl + eta * entropy
    return per_example.mean()


class Consistency(ConsistencySettings, Objective):
    """Gaussian augmentation with m copies + consistency regularizer (Jeong & Shin 2020, Eq. (9));
    hyperparameters: ``settings.ConsistencySettings``."""

    @property
    def batch_split(self) -> int:
        return self.m

    def __call__(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, ctx: StepContext
    ) -> tuple[torch.Tensor, dict[str, float]]:
        logits = copy_logits(model, x, gaussian_noise(x, self.m, self.sigma))
        xent = copies_xent(logits, y)
        reg = consistency_regularizer(logits, self.lbd, self.eta, self.loss)
        loss = xent + reg
        return loss, as_floats(loss=loss, xent=xent, reg=reg, acc=accuracy(logits, y))
