"""L2 PGD on the soft-smoothed classifier (SmoothAdv; Salman et al. 2019).

Jeong & Shin 2020, supp. E.1, Eq. (4): with noise samples delta_1..delta_m fixed,

    x_hat = argmax_{||x' - x||_2 <= eps}  -log( (1/m) sum_i F_y(x' + delta_i) ),

F the softmax of the base classifier. The update and projection follow Salman et al.'s
multi-noise PGD (Hadisalman/smoothing-adversarial, ``code/attacks.py``,
``PGD_L2._attack_mutlinoise``): perturbation starts at zero, step size 2 * eps / steps
along the per-example unit-L2 gradient (a zero gradient gets a random unit direction),
then clip ``x + delta`` into [0, 1] and shrink ``delta`` back into the eps ball.
Jeong & Shin's own variant (jh-jeong/smoothing-consistency, ``code/train_consistency.py``,
``SmoothAdv_PGD``) projects in the other order and adds 1e-8 to the gradient norm instead
of drawing a random direction; since shrinking ``delta`` towards zero keeps ``x + delta``
in [0, 1], the order used here returns a point that satisfies both constraints.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from robustreg.attacks.pgd import eval_mode

__all__ = ["AttackLoss", "smoothed_pgd_l2", "smoothed_xent"]

# ``(model, x, y, noise) -> per-example loss [B]`` that the attack ascends; noise [m, B, ...].
AttackLoss = Callable[[nn.Module, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def smoothed_xent(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, noise: torch.Tensor
) -> torch.Tensor:
    """Per-example ``-log(mean_i softmax(model(x + noise_i))_y)``, mean prob clamped at 1e-20.

    ``noise`` is [m, B, ...] with ``noise.shape[1:] == x.shape``; the m copies go through the
    model as one [m*B, ...] batch, copy-major (rows i*B .. (i+1)*B - 1 carry noise_i).
    """
    if noise.dim() != x.dim() + 1 or noise.shape[1:] != x.shape:
        raise ValueError(
            f"noise must have shape [m, *x.shape] = [m, {', '.join(map(str, x.shape))}], "
            f"got {list(noise.shape)}"
        )
    m, batch = noise.shape[0], x.shape[0]
    logits = model((x.unsqueeze(0) + noise).flatten(0, 1))
    mean_prob = torch.softmax(logits.view(m, batch, -1), dim=-1).mean(dim=0)
    p_y = mean_prob.gather(1, y.view(-1, 1)).squeeze(1)
    return -torch.log(p_y.clamp(min=1e-20))


def _unit_rows(g: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows of a [B, d] tensor scaled to unit L2 norm, and the mask of rows that were zero."""
    norms = g.norm(p=2, dim=1, keepdim=True)
    zero = norms == 0
    return g / torch.where(zero, torch.ones_like(norms), norms), zero.squeeze(1)


def _project(x: torch.Tensor, delta: torch.Tensor, eps: float) -> torch.Tensor:
    """Clip ``x + delta`` into [0, 1], then scale each example's ``delta`` to L2 norm <= eps."""
    delta = (x + delta).clamp(0.0, 1.0) - x
    norms = delta.flatten(1).norm(p=2, dim=1)
    scale = (eps / norms).clamp(max=1.0)  # a zero row gives inf, clamped to 1
    return delta * scale.view(-1, *([1] * (delta.dim() - 1)))


def smoothed_pgd_l2(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    noise: torch.Tensor,
    eps: float,
    steps: int,
    *,
    loss: AttackLoss = smoothed_xent,
) -> torch.Tensor:
    """Adversarial ``x_adv`` [B, ...] for the soft-smoothed classifier, ||x_adv - x||_2 <= eps.

    ``x`` is a clean batch in [0, 1], ``noise`` [m, B, ...] the (already sigma-scaled) noise
    draws, which the caller reuses for its outer loss. ``loss`` is the per-example objective
    each step ascends, evaluated with the same ``noise`` at every step; the default is
    SmoothAdv's Eq. (4), and a method attacking another function of the smoothed classifier
    (Feng et al.'s ADRE attack, their Eq. 13) passes its own. The model runs in eval mode (each
    submodule's mode is restored afterwards) and only the gradient w.r.t. the perturbation
    is taken (``torch.autograd.grad``), so no parameter's ``.grad`` is touched. The result is
    detached. ``eps == 0`` returns ``x`` itself.
    """
    if eps < 0 or steps < 1:
        raise ValueError(f"need eps >= 0 and steps >= 1, got eps={eps}, steps={steps}")
    if eps == 0:
        return x
    x = x.detach()
    noise = noise.detach()
    step_size = 2.0 * eps / steps
    delta = torch.zeros_like(x)
    with eval_mode(model), torch.enable_grad():
        for _ in range(steps):
            delta.requires_grad_(True)
            total = loss(model, x + delta, y, noise).sum()
            if total.requires_grad:
                (grad,) = torch.autograd.grad(total, [delta], allow_unused=True)
            else:  # nothing in the model requires grad and the output ignores x
                grad = None
            if grad is None:
                grad = torch.zeros_like(delta)
            direction, zero = _unit_rows(grad.flatten(1))
            if bool(zero.any()):
                random_dir, _ = _unit_rows(torch.randn_like(direction))
                direction = torch.where(zero.unsqueeze(1), random_dir, direction)
            delta = delta.detach() + step_size * direction.view_as(delta)
            delta = _project(x, delta, eps)
    return (x + delta).detach()
