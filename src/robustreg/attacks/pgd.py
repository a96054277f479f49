"""Projected gradient descent in an l2 or linf ball (Madry et al. 2018), the one PGD of the
package: adversarial training (PGD-AT, TRADES, MART, MMA) and the attack stage both call it.

Madry et al.'s iteration, as the ATENT paper states it (section 2; Algorithm 4), with a
random start:

    x^{t+1} = Pi_{x + Delta_{p, eps}}( x^t + step_size * d(grad_x loss(f(x^t), y)) ),

d = sign for linf and the per-example unit-l2 direction for l2. Each step ends as Foolbox's
``LinfPGD`` / ``L2PGD`` end theirs (foolbox/attacks/gradient_descent_base.py): project the
perturbation into the eps ball, then clip the image into [0, 1]; since x is in [0, 1],
clipping only shrinks each coordinate of the perturbation, so the result satisfies both
constraints. Random starts follow Foolbox too: uniform in the linf box, uniform in the l2
ball. With several restarts an example keeps the first restart's point that fools the model,
else the point of highest loss.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn

from robustreg.attacks.threat import NORMS, check_threat_model

__all__ = [
    "NORMS",
    "PerExampleLoss",
    "check_threat_model",
    "direction",
    "eval_mode",
    "flat_norms",
    "per_example",
    "pgd",
    "project",
    "xent",
]


# ``(logits, y) -> per-example loss [B]`` that the attack ascends.
PerExampleLoss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[None]:
    """Put every submodule in eval mode; give each its own previous mode back afterwards
    (attacks inside training recipes that craft their examples in eval mode: TRADES, MART, MMA)."""
    modes = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for module, training in modes:
            module.training = training


def xent(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-example cross-entropy, the loss PGD ascends unless told otherwise."""
    return F.cross_entropy(logits.float(), y, reduction="none")


def flat_norms(t: torch.Tensor, norm: str) -> torch.Tensor:
    """Per-example l2 or linf norms [B] of a [B, ...] tensor."""
    flat = t.flatten(1)
    return flat.abs().amax(dim=1) if norm == "linf" else flat.norm(p=2, dim=1)


def per_example(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """A per-example [B] tensor shaped [B, 1, ...] to broadcast against ``like``."""
    return v.view(-1, *([1] * (like.dim() - 1)))


def project(
    x: torch.Tensor, x_adv: torch.Tensor, norm: str, eps: float | torch.Tensor
) -> torch.Tensor:
    """``x_adv`` moved into the eps ball around ``x`` (``eps`` a float or one radius per
    example [B]), then clipped into [0, 1]."""
    delta = x_adv - x
    if norm == "linf":
        bound = per_example(eps, delta) if isinstance(eps, torch.Tensor) else eps
        delta = delta.clamp(-bound, bound)
    else:
        norms = flat_norms(delta, "l2")
        # shrink only what lies outside the ball (eps = 0 and a zero delta would give 0/0)
        scale = torch.where(norms > eps, eps / norms.clamp(min=1e-30), torch.ones_like(norms))
        delta = delta * per_example(scale, delta)
    return (x + delta).clamp(0.0, 1.0)


def direction(grad: torch.Tensor, norm: str) -> torch.Tensor:
    """The step direction d: sign for linf, the per-example unit-l2 gradient for l2 (0 where
    the gradient is 0)."""
    if norm == "linf":
        return grad.sign()
    norms = flat_norms(grad, "l2")
    return grad / per_example(norms.clamp(min=1e-12), grad)


def _random_start(x: torch.Tensor, norm: str, eps: float | torch.Tensor) -> torch.Tensor:
    if norm == "linf" and isinstance(eps, torch.Tensor):
        delta = torch.empty_like(x).uniform_(-1.0, 1.0) * per_example(eps, x)
    elif norm == "linf":
        delta = torch.empty_like(x).uniform_(-eps, eps)
    else:
        # uniform in the l2 ball: a uniform direction and a radius eps * u^(1/d)
        unit = torch.randn_like(x)
        unit = unit / per_example(flat_norms(unit, "l2").clamp(min=1e-12), x)
        d = x[0].numel()
        radius = eps * torch.rand(x.shape[0], dtype=x.dtype, device=x.device) ** (1.0 / d)
        delta = unit * per_example(radius, x)
    return (x + delta).clamp(0.0, 1.0)


def _smallest(value: float | torch.Tensor) -> float:
    return float(value.min()) if isinstance(value, torch.Tensor) else value


def pgd(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    norm: str,
    eps: float | torch.Tensor,
    steps: int,
    step_size: float | torch.Tensor,
    restarts: int = 1,
    random_start: bool = True,
    loss: PerExampleLoss = xent,
    start: torch.Tensor | None = None,
) -> torch.Tensor:
    """Adversarial examples [B, ...] in [0, 1] with ``||x_adv - x||_p <= eps``, detached.

    ``eps`` and ``step_size`` are floats or one value per example [B] (MMA searches each
    example's own margin).

    The model runs in whatever mode the caller left it in (adversarial-training recipes
    differ: TRADES and MART attack in eval mode, Madry's PGD-AT in train mode). Only the
    gradient w.r.t. the input is taken (``torch.autograd.grad``), so no parameter's
    ``.grad`` is touched. ``start`` replaces the random start (TRADES starts at
    ``x + 0.001 * N(0, I)``); it is projected first. ``loss`` returns one value per example;
    it sees the logits and the labels, so a loss that needs more (TRADES' KL to the clean
    prediction) closes over it.
    """
    check_threat_model(norm, _smallest(eps), steps, _smallest(step_size), restarts)
    step = per_example(step_size, x) if isinstance(step_size, torch.Tensor) else step_size
    x = x.detach()
    best = x.clone()
    best_loss = torch.full((x.shape[0],), -torch.inf, device=x.device)
    fooled = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
    for restart in range(restarts):
        if start is not None and restart == 0:
            x_adv = project(x, start.detach(), norm, eps)
        elif random_start:
            x_adv = _random_start(x, norm, eps)
        else:
            x_adv = x.clone()
        with torch.enable_grad():
            for _ in range(steps):
                x_adv.requires_grad_(True)
                value = loss(model(x_adv), y).sum()
                (grad,) = torch.autograd.grad(value, [x_adv])
                x_adv = project(x, x_adv.detach() + step * direction(grad, norm), norm, eps)
        if restarts == 1:
            return x_adv.detach()
        with torch.no_grad():
            logits = model(x_adv)
            value = loss(logits, y).detach()
            wrong = logits.argmax(dim=1) != y
        # a fooling point beats any other; among the rest the higher loss wins
        take = ~fooled & (wrong | (value > best_loss))
        best = torch.where(per_example(take, x), x_adv.detach(), best)
        best_loss = torch.where(take, value, best_loss)
        fooled |= wrong
    return best
