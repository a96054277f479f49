"""Input-gradient regularization (Finlay & Oberman, "Scaleable input gradient regularization").

Loss (paper Eq. 8): ``mean_i CE_i + (lam / 2) * mean_i R_i``, where ``R_i`` estimates the
squared dual norm of the input gradient ``g_i = grad_x CE_i`` of example i.

Scale convention. The factor is ``lam / 2`` as in Eq. 8 and in the authors' released trainer
(cfinlay/tulip ``cifar10/train.py``: ``tik_penalty = dl2.mean()/2``, added as
``tik * tik_penalty``), not Algorithm 1 of Appendix A, whose line 11 has ``lam`` without the
1/2; so ``lam`` means what it means in the authors' runs. ``R_i`` estimates
``||g_i||_2^2`` for ``norm = "l2"`` (against l2 attacks) and ``||g_i||_1^2 / N`` for
``norm = "l1"`` (the dual of linf attacks), N the number of input dimensions of one image:
the l1 finite-difference direction ``sign(g)/sqrt(N)`` of Section 3.1 has
``<g, sign(g)>/sqrt(N) = ||g||_1/sqrt(N)``, so that is what it estimates. Double
backpropagation uses the same scale, so FD and DBP rows of Tables 1, 2 and B.4 compare.
``g`` is the gradient of the SUM of per-example CE, so row i is example i's own gradient
(with batch norm in train mode the batch statistics couple the rows, as in tulip).

``method = "fd"``: finite differences (Proposition 3.2, Eq. 9; Algorithm 1). One backward
without ``create_graph`` gives g, detached; ``d_i = g_i / ||g_i||_2`` (l2) or
``sign(g_i) / sqrt(N)`` (l1), and ``d_i = 0`` where ``g_i = 0``; ``z = x + h d``, not clamped
to [0, 1] (tulip does not clamp); ``R_i = ((CE(f(z_i)) - CE(f(x_i))) / h)^2`` with both CE
terms in the graph, so the parameter gradient flows through both, as in tulip. The parameter
gradient needs ordinary backpropagation only: no second-order graph is built.

``method = "dbp"``: double backpropagation (Drucker & LeCun, paper Section 3.1). g comes from
``autograd.grad(..., create_graph=True)`` and ``R_i`` is its squared norm on the scale
above; the authors released no DBP code (tulip has none), so this is written from Eq. 8.

Both forwards run in the model's current (train) mode, as tulip's second forward does, so
batch norm normalizes z by its own batch and updates its running statistics twice per step.
``h`` is in [0, 1] pixel units (tulip's CIFAR inputs are unstandardized [0, 1] images).
Under a bfloat16 autocast the difference of two CE values of nearby inputs keeps only a few
significant digits, so FD refuses ``schedule.amp`` (``bf16_problem``); tulip trains in
float32. DBP's penalty is a gradient, not a difference, and agrees with float32's to about
1% (tests/test_amp.py).

Logs: ``loss``, ``xent`` (mean clean CE), ``penalty`` (mean ``R_i``, the estimated squared
dual norm on the scale above) and ``acc`` (accuracy of the clean logits).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from robustreg.objectives.base import Objective, StepContext
from robustreg.objectives.common import accuracy, as_floats
from robustreg.objectives.settings import GradientNormSettings

__all__ = ["GradientNorm", "fd_direction", "squared_dual_norm"]


def fd_direction(g: torch.Tensor, norm: str) -> torch.Tensor:
    """The finite-difference direction d per example (Algorithm 1, line 6; Section 3.1).

    ``g / ||g||_2`` (l2) or ``sign(g) / sqrt(N)`` (l1), 0 for a row whose gradient is 0.
    """
    flat = g.flatten(1)
    if norm == "l2":
        # F.normalize divides by max(||g||, eps): with eps the smallest normal number a zero
        # row stays exactly 0, and any nonzero row is divided by its own norm.
        d = F.normalize(flat, dim=1, eps=torch.finfo(g.dtype).tiny)
    else:
        d = torch.sign(flat) / math.sqrt(flat.shape[1])
    return d.view_as(g)


def squared_dual_norm(g: torch.Tensor, norm: str) -> torch.Tensor:
    """Per-example ``||g_i||_2^2`` (l2) or ``||g_i||_1^2 / N`` (l1), the quantity FD estimates."""
    flat = g.flatten(1)
    if norm == "l2":
        return flat.pow(2).sum(dim=1)
    return flat.abs().sum(dim=1).pow(2) / flat.shape[1]


def _xent(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits (half precision promoted to float32) and per-example cross-entropy."""
    logits = model(x)
    if logits.dtype in (torch.float16, torch.bfloat16):
        logits = logits.float()
    return logits, F.cross_entropy(logits, y, reduction="none")


class GradientNorm(GradientNormSettings, Objective):
    """``CE + (lam/2) * squared dual norm of grad_x CE``, by finite differences or DBP;
    hyperparameters: ``settings.GradientNormSettings``."""

    @property
    def bf16_problem(self) -> str | None:
        if self.method != "fd":
            return None
        # Each CE keeps about 3 significant digits in bfloat16 and their difference is about
        # h * ||g||, so the relative error of R_i grows as h or the input gradient shrinks:
        # on a small net at initialization it is tens of percent at h = 0.01 and a factor
        # hundreds at h = 1e-4 (tests/test_amp.py), worse as training shrinks ||g||.
        return (
            "finite differences (method: fd) divide the difference of two nearby losses by h, "
            "and bfloat16 keeps about 3 significant digits of each; use method: dbp or float32"
        )

    def penalty_terms(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Clean logits [B, C], per-example clean CE [B] and per-example ``R_i`` [B]."""
        x = x.detach().requires_grad_(True)
        logits, xent = _xent(model, x, y)
        # materialize_grads: a model whose output ignores x has g = 0, not an autograd error.
        if self.method == "dbp":
            (g,) = torch.autograd.grad(xent.sum(), x, create_graph=True, materialize_grads=True)
            return logits, xent, squared_dual_norm(g, self.norm)
        # retain_graph: the clean CE's graph is backpropagated again through the loss.
        (g,) = torch.autograd.grad(xent.sum(), x, retain_graph=True, materialize_grads=True)
        z = x.detach() + self.h * fd_direction(g, self.norm)
        _, xent_z = _xent(model, z, y)
        return logits, xent, ((xent_z - xent) / self.h).pow(2)

    def __call__(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, ctx: StepContext
    ) -> tuple[torch.Tensor, dict[str, float]]:
        logits, xent, reg = self.penalty_terms(model, x, y)
        xent, penalty = xent.mean(), reg.mean()
        loss = xent + self.lam / 2 * penalty
        return loss, as_floats(
            loss=loss, xent=xent, penalty=penalty, acc=accuracy(logits.detach(), y)
        )
