"""PGD adversarial training (Madry et al. 2018), ATENT paper appendix B.4, Algorithm 4.

Per batch: x_adv = PGD(x) in the ``norm`` ball of radius ``eps`` (random start, ``steps``
steps of size ``step_size`` along sign(grad) for linf, the unit-l2 gradient for l2;
``robustreg.attacks.pgd.pgd``), then minimize the batch mean of ``CE(f(x_adv), y)``
(Algorithm 4, lines 10-12; Eq. (19)).

Mode of the attack (``attack_mode``). Rice et al.'s ``train_cifar.py``
(locuslab/robust_overfitting, ``attack_pgd`` called right after ``model.train()``; the
PGD-AT(E) row of ATENT Table 3) attacks in TRAIN mode, as Madry et al.'s own training does
(MadryLab/cifar10_challenge ``train.py``: the attack uses the ``Model(mode='train')`` graph),
so batch-norm layers normalize every attack step by its batch and their running statistics
move at each step: the default. The l2 PGD-AT rows of ATENT Tables 1 and 4 follow Ding et
al.'s (MMA) setting; their repository (BorealisAI/mma_training) holds no PGD-AT trainer, but
its training attacks run in EVAL mode (``anpgd.py``, ``ANPGD.perturb`` under advertorch's
``ctx_noparamgrad_and_eval``), so ``attack_mode = "eval"`` is the reading for those rows.
The MNIST LeNet5 of Table 1 has neither batch norm nor dropout, where the two agree.

``acc`` is the accuracy on the clean batch from one extra forward pass in eval mode without
gradient (the loss itself never sees the clean batch; a train-mode pass would move the
batch-norm statistics); ``adv_acc`` is the accuracy of the loss's own logits at x_adv.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from robustreg.attacks.pgd import eval_mode, pgd
from robustreg.objectives.base import Objective, StepContext
from robustreg.objectives.common import accuracy, as_floats
from robustreg.objectives.settings import PgdAtSettings

__all__ = ["PgdAt", "clean_accuracy"]


def clean_accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Accuracy on ``x`` in eval mode without gradient: no batch-norm statistic moves."""
    with eval_mode(model), torch.no_grad():
        return accuracy(model(x), y)


class PgdAt(PgdAtSettings, Objective):
    """``CE(f(PGD(x)), y)`` with a random-start PGD (Algorithm 4); hyperparameters:
    ``settings.PgdAtSettings``."""

    def attack(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The PGD adversarial batch, in ``attack_mode``."""
        settings = dict(norm=self.norm, eps=self.eps, steps=self.steps, step_size=self.step_size)
        if self.attack_mode == "eval":
            with eval_mode(model):
                return pgd(model, x, y, **settings)
        return pgd(model, x, y, **settings)

    def __call__(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, ctx: StepContext
    ) -> tuple[torch.Tensor, dict[str, float]]:
        x_adv = self.attack(model, x, y)
        logits = model(x_adv).float()
        loss = F.cross_entropy(logits, y)
        return loss, as_floats(
            loss=loss,
            xent=loss,
            acc=clean_accuracy(model, x, y),
            adv_acc=accuracy(logits, y),
        )
