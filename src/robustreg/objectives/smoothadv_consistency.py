"""SmoothAdv + consistency regularization (Jeong & Shin 2020, Sec. 3 and supp. E.1).

The authors' ``code/train_consistency.py`` with ``--adv-training``
(jh-jeong/smoothing-consistency): the m noise draws of a chunk are attacked together with
SmoothAdv's smoothed PGD (supp. Eq. 4), and the loss on the m noisy adversarial copies
``x_hat + delta_i`` is SmoothAdv's outer loss plus the consistency regularizer of main-text
Eq. (9):

    (1/m) sum_i CE(F(x_hat + delta_i), y) + lbd * mean_i KL(F_hat || F(x_hat + delta_i))
        + eta * H(F_hat),                    F_hat = (1/m) sum_i F(x_hat + delta_i)

(or the ``'xent'`` / ``'kl'`` / ``'mse'`` variant). Attack, eps warm-up and
``batch_split = m`` are SmoothAdv's (``robustreg.objectives.smoothadv``); the regularizer
is ``robustreg.objectives.consistency.consistency_regularizer``. Defaults: the MNIST
SmoothAdv setting (supp. B) and lbd = 1 (supp. Table 2).
"""

from __future__ import annotations

import torch
from torch import nn

from robustreg.objectives.base import StepContext
from robustreg.objectives.common import accuracy, as_floats, copies_xent
from robustreg.objectives.consistency import consistency_regularizer
from robustreg.objectives.settings import SmoothAdvConsistencySettings
from robustreg.objectives.smoothadv import SmoothAdv

__all__ = ["SmoothAdvConsistency"]


class SmoothAdvConsistency(SmoothAdvConsistencySettings, SmoothAdv):
    """SmoothAdv's adversarial copies, its outer CE, plus ``consistency_regularizer`` on them;
    hyperparameters: ``settings.SmoothAdvConsistencySettings``."""

    def __call__(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, ctx: StepContext
    ) -> tuple[torch.Tensor, dict[str, float]]:
        logits, eps = self.adversarial_logits(model, x, y, ctx)
        xent = copies_xent(logits, y)
        reg = consistency_regularizer(logits, self.lbd, self.eta, self.loss)
        loss = xent + reg
        return loss, as_floats(loss=loss, xent=xent, reg=reg, acc=accuracy(logits, y), eps=eps)
