"""The attack kinds other libraries run: one module per library (``foolbox``, ``art``,
``autoattack``), each importing its library, so an attack job imports only the library of its
kind (``robustreg.attacks.registry.IMPLEMENTED_IN``)."""

from __future__ import annotations

import torch
from torch import Tensor


def fooling(x: Tensor, points: Tensor, fooled: Tensor) -> Tensor:
    """``points`` where ``fooled``, else the clean images: a minimum-norm attack cut to the eps
    ball keeps only the points that still fool the model."""
    return torch.where(fooled.view(-1, *([1] * (x.dim() - 1))), points, x)
