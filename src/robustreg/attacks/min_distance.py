"""Minimum-distance attacks for Finlay & Oberman's attack suite (section 4): "We perturb each
image with attacks in both the Euclidean and l-inf norms ... We report our results using the
best adversarial distance on a per image basis, in each norm". Each attack returns, per image,
the closest adversarial point it found; the ``pgd_min``, ``cw_l2_min``, ``boundary_min`` and
``logbarrier`` kinds (``robustreg.attacks.registry``) run them.

"Adversarial" is top-k misclassification: the label is outside the model's top k. ImageNet
rows use top-5 error and a top-5 version of the Carlini-Wagner loss (footnote 1); CIFAR-10
rows are top-1. ``robustreg.attacks.runner.in_top_k`` is the one definition the runner and
these attacks share.

- ``pgd_min_distance``: PGD (Madry et al. 2018) as a minimum-distance attack, by bisection over
  the radius. Section 4 names PGD among the suite's attacks but not how its distance is read
  off; a per-image bisection over eps is the usual way and is what we do. PGD ascends the
  modified Carlini-Wagner loss of section 2.2 (``robustreg.bounds.margin_loss``), whose top-k
  form (footnote 1) makes top-5 attacks possible, where cross-entropy would only push the
  label off the top-1.
- The Boundary attack's top-k criterion is Foolbox's, beside the Foolbox kinds
  (``robustreg.attacks.adapters.foolbox.TopKMisclassification``).
"""

from __future__ import annotations

import torch
from torch import nn

from robustreg.attacks.pgd import NORMS, eval_mode, flat_norms, pgd
from robustreg.attacks.runner import in_top_k
from robustreg.bounds import margin_loss

__all__ = ["pgd_min_distance"]


def _check(name: str, ok: bool, says: str, value: object) -> None:
    if not ok:
        raise ValueError(f"{name}: must be {says}, got {value!r}")


def _adversarial(model: nn.Module, points: torch.Tensor, y: torch.Tensor, top_k: int):
    with torch.no_grad():
        return ~in_top_k(model(points), y, top_k)


def _pgd_at(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    eps: torch.Tensor,
    *,
    norm: str,
    steps: int,
    step_ratio: float,
    restarts: int,
    top_k: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """PGD at one radius per image [B]: points [B, ...] and whether each is adversarial [B].

    Restarts are run here rather than by ``pgd``, which keeps a restart's point when it fools
    the model top-1; an image keeps its first restart's point that is adversarial top-k."""
    points = x.clone()
    adversarial = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
    for _ in range(restarts):
        idx = (~adversarial).nonzero().squeeze(1)
        if idx.numel() == 0:
            break
        trial = pgd(
            model,
            x[idx],
            y[idx],
            norm=norm,
            eps=eps[idx],
            steps=steps,
            step_size=step_ratio * eps[idx],
            loss=lambda logits, labels: margin_loss(logits, labels, top_k),
        )
        fooled = _adversarial(model, trial, y[idx], top_k)
        points[idx[fooled]] = trial[fooled]
        adversarial[idx[fooled]] = True
    return points, adversarial


def pgd_min_distance(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    norm: str,
    eps_max: float,
    search_steps: int,
    steps: int,
    step_ratio: float,
    restarts: int,
    top_k: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The closest adversarial points PGD finds [B, ...] in [0, 1], detached, and ``found`` [B].

    Per image: PGD (random start, ``steps`` steps of ``step_ratio * eps``, up to ``restarts``
    tries, the margin loss ``margin_loss(., ., top_k)``) at eps = ``eps_max`` first; an image
    not adversarial there is not found and comes back unchanged. The others are bisected,
    ``search_steps`` times, on [lo, hi] = [0, eps_max]: PGD at eps = (lo + hi) / 2, then
    hi = eps where it found an adversarial point and lo = eps where not, so hi ends within
    eps_max / 2^search_steps of the smallest radius at which PGD succeeds. Each image keeps the
    closest (in ``norm``) of the points that were adversarial (``in_top_k`` on the model's
    logits), whatever radius found it. Images already adversarial come back unchanged, found.

    The model runs in eval mode (its modes restored afterwards); random starts draw from
    torch's global RNG.
    """
    _check("norm", norm in NORMS, f"one of {', '.join(NORMS)}", norm)
    _check("eps_max", eps_max > 0, "> 0", eps_max)
    _check("step_ratio", step_ratio > 0, "> 0", step_ratio)
    for name, value, least in (
        ("search_steps", search_steps, 0),
        ("steps", steps, 1),
        ("restarts", restarts, 1),
        ("top_k", top_k, 1),
    ):
        ok = isinstance(value, int) and not isinstance(value, bool) and value >= least
        _check(name, ok, f"an integer >= {least}", value)
    x = x.detach()
    with eval_mode(model):
        found = _adversarial(model, x, y, top_k)
        points = x.clone()
        best = torch.where(found, 0.0, torch.inf).to(x.dtype)
        lo = torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)
        hi = torch.full_like(lo, eps_max)
        searching = ~found
        for search in range(search_steps + 1):
            idx = searching.nonzero().squeeze(1)
            if idx.numel() == 0:
                break
            eps = hi[idx] if search == 0 else (lo[idx] + hi[idx]) / 2
            trial, fooled = _pgd_at(
                model,
                x[idx],
                y[idx],
                eps,
                norm=norm,
                steps=steps,
                step_ratio=step_ratio,
                restarts=restarts,
                top_k=top_k,
            )
            dist = flat_norms(trial - x[idx], norm)
            closer = fooled & (dist < best[idx])
            points[idx[closer]] = trial[closer]
            best[idx[closer]] = dist[closer]
            found[idx[fooled]] = True
            hi[idx[fooled]] = eps[fooled]
            lo[idx[~fooled]] = eps[~fooled]
            if search == 0:
                searching[idx[~fooled]] = False
    return points, found
