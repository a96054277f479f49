"""ATENT's Langevin sampler in input space (Jagatap et al., Algorithm 1, l2, Eq. 9; Algorithm 2,
linf, Eq. 14), the one sampler of the package: the ATENT training objective
(``robustreg.objectives.atent``) and the ATENT attack below both run it.

    x'^0     = clip(x + delta),  delta = r * sign(N(0, I))  (linf)  or  N(0, I) scaled onto the
                                 l2 sphere of radius r  (l2)                  (Alg. 1/2, line 4)
    x'^(k+1) = x'^k + eta' * d(g^k) + pull * (x - x'^k) + noise * sqrt(2 eta') N(0, I)
                                                               (Alg. 1, line 8, Eq. 9; Eq. 14)

g^k is the input gradient of the summed per-example CE at x'^k, d = sign for linf and the
per-example unit-l2 direction for l2. Both the unit step and the pull without eta' are the
authors' code's (issue 20: Algorithm 1 scales the pull by eta' but steps along the raw
gradient; taking the code's step with Algorithm 1's pull, as we once did, mixed the two, and
the l2 chain's balance of the unit step and the pull, radius eta'/gamma, moved to 1/gamma).
Each x'^(k+1) is clipped into [0, 1], except the last one when a final radius is given: that
one is projected onto the ball of that radius around x (P_gamma of Eq. 14), then clipped.
Reading followed (GauriJagatap/StochAT): adversarial/functional.py ``_langevin_samples`` (one
step per call, its ``projector`` set on the last call only) and adversarial/utils.py
``random_perturbation`` (the start, which projects N(0, I) onto the l2 ball: the same point as
ours whenever ||N|| > r, as always in image dimensions). The start is clipped before the first
gradient (theirs evaluates the model once outside the image domain).

ATENT as an attack (appendix A.3, "ATENT as Attack"; Table 6, "ATENT-20": the configuration of
PGD-20) runs this sampler on one model and one batch, with r = eps, no pull and the last step
projected onto the eps ball, and keeps the last iterate: this is what the authors evaluate.
Driven as notebooks/ATENT_as_attack.ipynb ``_atent_whitebox`` does (20 steps of 0.003 at eps
0.031, noise ``ep=1e-3``). Its pull is 0: the ``gamma * (x - x')`` term belongs to the l2
*training* distribution (Eq. 9), and the authors' linf attack has none.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from robustreg.attacks.pgd import check_threat_model, direction, flat_norms, per_example, project

__all__ = ["LangevinSampler", "atent_attack"]


@dataclass(frozen=True, kw_only=True)
class LangevinSampler:
    """The chain above for inputs [B, ...] in [0, 1]; random draws come from torch's global
    generator. ``norm`` is checked by the callers (``Atent``, ``check_threat_model``).

    ``start_radius`` is r; ``pull`` weighs Eq. 9's gamma * (x - x'), not scaled by eta' (the
    authors' code; 0 for linf, whose Eq. 14 has no such term); ``final_radius`` is the radius
    of the last step's projection, None to clip the last step like the others.
    """

    norm: str
    step_size: float
    noise: float
    start_radius: float
    pull: float = 0.0
    final_radius: float | None = None

    def start(self, x: torch.Tensor) -> torch.Tensor:
        """x'^0: x plus a random perturbation of size r (line 4), clipped into [0, 1]."""
        draw = torch.randn_like(x)
        if self.norm == "linf":
            delta = self.start_radius * draw.sign()
        else:
            norms = flat_norms(draw, "l2").clamp(min=1e-12)
            delta = draw * per_example(self.start_radius / norms, draw)
        return (x + delta).clamp(0.0, 1.0)

    def step(
        self, x: torch.Tensor, x_k: torch.Tensor, grad: torch.Tensor, *, last: bool
    ) -> torch.Tensor:
        """x'^{k+1} from x'^k and the input gradient ``grad`` of the summed CE at x'^k."""
        x_next = x_k + self.step_size * direction(grad, self.norm) + self.pull * (x - x_k)
        if self.noise > 0:  # no draw at all for a noiseless chain
            x_next = x_next + math.sqrt(2 * self.step_size) * self.noise * torch.randn_like(x)
        if last and self.final_radius is not None:  # Eq. 14: P_gamma on the last step only
            return project(x, x_next, self.norm, self.final_radius)
        return x_next.clamp(0.0, 1.0)


def atent_attack(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    norm: str,
    eps: float,
    steps: int,
    step_size: float,
    noise: float = 1e-3,
) -> torch.Tensor:
    """ATENT samples [B, ...] in [0, 1] with ``||x' - x||_p <= eps``, detached: the last of
    ``steps`` Langevin steps from a start of radius eps, projected onto the eps ball.

    Runs the model as the caller left it (the attack stage puts it in eval mode) and takes
    only the gradient w.r.t. the input. Random draws come from torch's global generator.
    """
    check_threat_model(norm, eps, steps, step_size, 1)
    if steps < 1:
        raise ValueError(f"need steps >= 1 (the last step projects), got {steps}")
    sampler = LangevinSampler(
        norm=norm, step_size=step_size, noise=noise, start_radius=eps, final_radius=eps
    )
    x = x.detach()
    x_adv = sampler.start(x)
    with torch.enable_grad():
        for step in range(steps):
            x_adv.requires_grad_(True)
            loss = F.cross_entropy(model(x_adv).float(), y, reduction="sum")
            (grad,) = torch.autograd.grad(loss, [x_adv])
            x_adv = sampler.step(x, x_adv.detach(), grad, last=step == steps - 1)
    return x_adv.detach()
