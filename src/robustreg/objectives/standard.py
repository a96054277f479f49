"""Standard training: cross-entropy on the clean batch, no noise, no adversary.

The "SGD" rows of the ATENT paper (Jagatap et al., Tables 1-2; appendix A.1, "Training SGD
and Entropy SGD models"). Its "Entropy SGD" rows (Chaudhari et al.; ATENT appendix B.2,
Algorithm 3) minimize the same loss with another optimizer, so they build this objective
too; the optimizer belongs to the training loop.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from robustreg.objectives.base import Objective, StepContext
from robustreg.objectives.common import accuracy, as_floats
from robustreg.objectives.settings import StandardSettings

__all__ = ["Standard"]


class Standard(StandardSettings, Objective):
    """``CE(f(x), y)`` averaged over the batch (``settings.StandardSettings``)."""

    def __call__(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, ctx: StepContext
    ) -> tuple[torch.Tensor, dict[str, float]]:
        logits = model(x).float()
        loss = F.cross_entropy(logits, y)
        return loss, as_floats(loss=loss, xent=loss, acc=accuracy(logits, y))
