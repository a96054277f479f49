"""Robustness-bound statistics of Finlay & Oberman (2021), "Scaleable input gradient
regularization for adversarial robustness", section 2.2.

The loss is their modified Carlini-Wagner loss (section 2.2, after Eq. 3),

    l(x) = max_{i != c} f_i(x) - f_c(x),    l_0 = 0,

so an image is classified correctly iff l(x) < l_0 (``margin_loss``). With ||.||_* the dual of
the attack norm (l2 -> l2, linf -> l1), the section bounds the minimum adversarial distance by

    L-bound (Eq. 4, Proposition 2.2):   ||v|| >= max(l_0 - l(x), 0) / L,
    omega-bound (Eqs. 5-6, Prop. 2.2):  ||v|| >= eps  whenever
                                        (l_0 - l(x) - omega(eps)) / ||grad l(x)||_* >= eps,

with L the Lipschitz constant of l and omega the modulus of continuity of Eq. 5,

    omega(eps) = sup_{x, ||v|| <= eps}  l(x + v) - l(x) - <v, grad l(x)>.

Neither is computable, so (section 2.2, last paragraph, following Weng et al. 2018) both are
estimated with extreme-value theory: maxima over batches of data of ||grad l(x)||_*
(``gradient_dual_norms``) and of Eq. 5's bracket (``modulus_samples``) are fitted with a
generalized extreme value distribution by maximum likelihood (``fit_gev``), and L and omega(eps)
are read from the fit "with threshold p = 0.001" (``gev_quantile``). The pipeline is

    loss, grad_norm = gradient_dual_norms(model, x, y, norm)             # per image
    L = gev_quantile(batch_maxima(grad_norm, batch_size))
    omega = gev_quantile(batch_maxima(modulus_samples(model, x, y, eps, norm, samples, gen),
                                      batch_size))                       # one fit per eps
    l_bound(loss, L), omega_bound_distance(loss, grad_norm, omegas, eps_grid)

The paper does not say how v is drawn, how many, nor the batch size; our readings are stated
where they are made. The bounds job (``python -m robustreg bounds``) runs this pipeline on a
set of test images: ``bound_statistics`` (per image), ``bound_summary`` (the fits),
``write_bounds`` / ``read_bounds`` (bounds.tsv and bounds.json) and ``bound_distances``
(per-image certified distances for ``bound_error`` and the tables).

The authors' released code (cfinlay/tulip, cifar10/ and imagenet/test_statistics.py) has no
GEV fit and no omega at all: it takes L as the empirical maximum of the gradient norms, which
``batch_maxima(grad_norm, len(grad_norm))`` also gives.
"""

from __future__ import annotations

import itertools
import json
import os
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from numpy.typing import ArrayLike
from scipy import optimize
from scipy.stats import genextreme
from torch import nn
from tqdm import tqdm

from robustreg.attacks.pgd import NORMS, eval_mode, flat_norms, per_example
from robustreg.io import image_ids, write_text_atomic
from robustreg.smoothing import indexed_device

__all__ = [
    "BOUNDS_FORMAT",
    "BOUND_COLUMNS",
    "GEV_P",
    "OUTPUTS",
    "batch_maxima",
    "bound_distances",
    "bound_error",
    "bound_statistics",
    "bound_summary",
    "check_blocks",
    "fit_gev",
    "gev_quantile",
    "gradient_dual_norms",
    "l_bound",
    "margin_loss",
    "modulus_column",
    "modulus_samples",
    "omega_bound_distance",
    "omega_bound_holds",
    "read_bounds",
    "resolve_bound_settings",
    "uniform_ball",
    "write_bounds",
]

OUTPUTS = ("logits", "softmax")
# "estimated from the fitted GEV distribution with threshold p = 0.001" (section 2.2).
GEV_P = 1e-3
# A three-parameter likelihood maximized on fewer points is not identified in practice.
_MIN_MAXIMA = 10
# Euler-Mascheroni constant: the Gumbel (c = 0) mean is loc + gamma * scale.
_EULER_GAMMA = 0.5772156649015329
_START_SHAPES = (-0.3, 0.0, 0.3)


def margin_loss(
    logits: torch.Tensor, labels: torch.Tensor, top_k: int = 1, outputs: str = "logits"
) -> torch.Tensor:
    """The modified Carlini-Wagner loss of section 2.2, per example [N]:

        l(x) = (k-th largest of f_i(x), i != c) - f_c(x),    c = labels,

    which is max_{i != c} f_i(x) - f_c(x) for k = 1. l < 0 iff fewer than k other classes score
    at least f_c, i.e. iff the true class is in the top k with ties counted as errors, so l_0 = 0
    for top-1 and, with k = 5, for the ImageNet top-5 error (the paper's footnote 1; the
    authors' imagenet/test_statistics.py likewise takes the 6th-largest output overall).

    ``outputs`` says what f is. "logits" (the default) uses the model outputs as given: the
    paper writes the loss on f_i (section 2.2 and the caption of Table B.3), and Carlini &
    Wagner's loss is on logits. "softmax" applies it to softmax probabilities, as the authors'
    released cfinlay/tulip cifar10/test_statistics.py does; the gap -l is then at most 1 and
    L and omega come out in those units. The bounds are not comparable across the two.

    Args:
        logits: model outputs [N, C], C >= 2.
        labels: true classes [N], integers in [0, C).
        top_k: k, in [1, C - 1].
        outputs: "logits" or "softmax".
    """
    if logits.dim() != 2 or logits.shape[1] < 2:
        raise ValueError(f"logits must have shape [N, C] with C >= 2, got {tuple(logits.shape)}")
    classes = logits.shape[1]
    if labels.shape != logits.shape[:1] or labels.dtype.is_floating_point:
        raise ValueError(f"labels must be integers of shape [{logits.shape[0]}]")
    if labels.numel() and (labels.min() < 0 or labels.max() >= classes):
        raise ValueError(f"labels must lie in [0, {classes})")
    if not 1 <= top_k < classes:
        raise ValueError(f"top_k must be in [1, {classes - 1}], got {top_k}")
    if outputs not in OUTPUTS:
        raise ValueError(f"outputs: {outputs!r} is not one of {', '.join(OUTPUTS)}")
    scores = logits.softmax(dim=1) if outputs == "softmax" else logits
    true = scores.gather(1, labels[:, None]).squeeze(1)
    others = scores.masked_fill(F.one_hot(labels, classes).bool(), float("-inf"))
    return others.topk(top_k, dim=1).values[:, -1] - true


def _check_norm(norm: str) -> None:
    if norm not in NORMS:
        raise ValueError(f"norm: {norm!r} is not one of {', '.join(NORMS)}")


def _loss_and_grad(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, top_k: int, outputs: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """l(x) [N] and grad_x l(x) [N, ...], both detached, with the model in eval mode so that
    each image's loss depends on that image alone and the gradient of the sum is per image."""
    if x.dim() < 2 or not x.dtype.is_floating_point:
        raise ValueError(f"x must be a floating [N, ...] batch, got {x.dtype} {tuple(x.shape)}")
    inputs = x.detach().clone().requires_grad_(True)
    with eval_mode(model), torch.enable_grad():
        loss = margin_loss(model(inputs), y, top_k, outputs)
        (grad,) = torch.autograd.grad(loss.sum(), inputs)
    return loss.detach(), grad


def gradient_dual_norms(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    norm: str,
    top_k: int = 1,
    outputs: str = "logits",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-image loss and dual norm of its input gradient, the two numbers Proposition 2.2
    needs per image:

        l(x_i)  and  ||grad_x l(x_i)||_*,   ||.||_* = l2 for norm = "l2", l1 for norm = "linf".

    One forward and one backward for the batch, with the model in eval mode (its previous modes
    are restored). The gradient is taken w.r.t. ``x`` as given, so a model that standardizes its
    input internally yields gradients in the units of ``x``.

    Returns:
        (loss [N], dual norm [N]), detached, on x's device and in x's dtype.
    """
    _check_norm(norm)
    loss, grad = _loss_and_grad(model, x, y, top_k, outputs)
    flat = grad.flatten(1)
    dual = flat.abs().sum(dim=1) if norm == "linf" else flat.norm(p=2, dim=1)
    return loss, dual


def uniform_ball(
    shape: tuple[int, ...],
    eps: float,
    norm: str,
    generator: torch.Generator,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """``shape[0]`` independent points, each uniform in the radius-eps ball of ``norm`` over the
    remaining dimensions (d = prod(shape[1:])), drawn from ``generator`` on its device:

        linf: every coordinate uniform in [-eps, eps] (the cube);
        l2:   a uniform direction (a normalized Gaussian) times radius eps * U^(1/d).
    """
    _check_norm(norm)
    if len(shape) < 2 or not np.isfinite(eps) or eps < 0:
        raise ValueError(f"need shape [n, ...] and a finite eps >= 0, got {shape} and {eps}")
    device = generator.device
    if norm == "linf":
        unit = torch.rand(shape, generator=generator, dtype=dtype, device=device)
        return eps * (2.0 * unit - 1.0)
    direction = torch.randn(shape, generator=generator, dtype=dtype, device=device)
    direction = direction / per_example(flat_norms(direction, "l2"), direction)
    dim = int(np.prod(shape[1:]))
    radius = eps * torch.rand(shape[0], generator=generator, dtype=dtype, device=device) ** (
        1.0 / dim
    )
    return direction * per_example(radius, direction)


def _ball_draws(
    shape: tuple[int, ...],
    eps: float,
    norm: str,
    generator: torch.Generator | Sequence[torch.Generator],
    dtype: torch.dtype,
) -> torch.Tensor:
    """``uniform_ball`` points [shape[0], ...], from one generator or one generator per point."""
    if isinstance(generator, torch.Generator):
        return uniform_ball(shape, eps, norm, generator, dtype)
    if len(generator) != shape[0]:
        raise ValueError(f"need one generator per image ({shape[0]}), got {len(generator)}")
    return torch.cat([uniform_ball((1, *shape[1:]), eps, norm, g, dtype) for g in generator])


def modulus_samples(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    eps: float,
    norm: str,
    samples: int,
    generator: torch.Generator | Sequence[torch.Generator],
    *,
    top_k: int = 1,
    outputs: str = "logits",
    clip: bool = True,
) -> torch.Tensor:
    """Per-image sampled maxima of the bracket of Eq. 5 (the modulus of continuity):

        m_i = max_{s = 1..samples}  l(x_i + v_s) - l(x_i) - <v_s, grad l(x_i)>,

    with every v_s drawn by ``uniform_ball`` in the eps-ball of ``norm`` (fresh draws per image
    and sample), from ``generator``, or from ``generator[i]`` for image i when it is a sequence
    of one generator per image (then an image's draws do not depend on the other images). The
    paper samples "over ||v|| <= eps" without saying how; uniform in the ball is our reading,
    the same as CLEVER's (Weng et al. 2018) sampling of gradient norms. ``batch_maxima`` of the
    m_i then gives maxima "over batches of the data distribution and ||v|| <= eps", the samples
    ``fit_gev`` takes to estimate omega(eps).

    ``clip`` (default True) replaces each v by clip(x_i + v, 0, 1) - x_i, so only valid images
    are evaluated. Eq. 5 has no box, but the attacks whose distances the bound is compared with
    all stay in [0, 1], and the omega-bound's argument evaluates l only at the adversarial image
    x + v; the supremum over this smaller set is what the bound needs for that threat model. The
    clipped v is still in the ball (for x in [0, 1] clipping only shrinks coordinates of v) and
    enters the bracket as it is, so the bracket stays exact; its distribution is no longer
    uniform near the box's faces. ``clip=False`` keeps Eq. 5's unboxed ball.

    The bracket is 0 at v = 0, so omega(eps) >= 0, but m_i is the maximum over the drawn v only
    and may be negative (a locally concave loss); ``omega_bound_holds`` floors omega at 0.

    Cost: one forward and backward, then ``samples`` forwards of the whole batch, in eval mode.

    Returns:
        m [N], detached, on x's device and in x's dtype.
    """
    _check_norm(norm)
    if samples < 1:
        raise ValueError(f"samples must be >= 1, got {samples}")
    if clip and (x.min() < 0 or x.max() > 1):
        raise ValueError("x must lie in [0, 1] when clip=True")
    loss, grad = _loss_and_grad(model, x, y, top_k, outputs)
    best = torch.full_like(loss, float("-inf"))
    with eval_mode(model), torch.no_grad():
        for _ in range(samples):
            v = _ball_draws(tuple(x.shape), eps, norm, generator, x.dtype).to(x.device)
            if clip:
                v = (x + v).clamp(0.0, 1.0) - x
            shifted = margin_loss(model(x + v), y, top_k, outputs)
            linear = (v * grad).flatten(1).sum(dim=1)
            best = torch.maximum(best, shifted - loss - linear)
    return best


def batch_maxima(values: ArrayLike, batch_size: int) -> np.ndarray:
    """Maxima of consecutive batches of ``values``: [max(values[0:b]), max(values[b:2b]), ...].

    These are the block maxima that extreme-value theory fits; the blocks are taken in the given
    order, so ``values`` should come from images in random order (a seeded random subset is).
    The length must be a multiple of ``batch_size``: a short last batch has a smaller maximum in
    distribution and would bias the fit, so it is an error rather than silently dropped.
    At least two batches are required.
    """
    array = np.asarray(values, dtype=np.float64)
    if array.ndim != 1:
        raise ValueError(f"values must be 1-D, got shape {array.shape}")
    if batch_size < 1 or array.size % batch_size != 0 or array.size // batch_size < 2:
        raise ValueError(
            f"batch_size must split {array.size} values into >= 2 equal batches, got {batch_size}"
        )
    if not np.all(np.isfinite(array)):
        raise ValueError("values must be finite")
    return array.reshape(-1, batch_size).max(axis=1)


def _polish(
    func: Callable[..., float], x0: np.ndarray, args: tuple = (), disp: int = 0
) -> np.ndarray:
    """scipy's default optimizer (Nelder-Mead) with tolerances far below its 1e-4 defaults."""
    return optimize.fmin(func, x0, args=args, disp=disp, xtol=1e-10, ftol=1e-12, maxfun=20_000)


def fit_gev(maxima: ArrayLike) -> tuple[float, float, float]:
    """Maximum-likelihood fit of a generalized extreme value distribution to block maxima.

    Returns the (c, loc, scale) of ``scipy.stats.genextreme``, whose CDF is
    exp(-(1 - c z)^(1/c)), z = (m - loc)/scale (scipy's c is minus the usual shape xi: c > 0 has
    a finite upper end loc + scale/c, c < 0 a heavy tail, c = 0 is Gumbel). The likelihood is
    regular for c < 1/2 (Smith 1985); estimates beyond that are unreliable.

    The fitting is ``genextreme.fit``, made dependable (as tested on synthetic maxima) thus:
    the data are standardized first (the GEV is a location-scale family, so the MLE is
    equivariant, while scipy's optimizer has absolute tolerances that fail on maxima of order
    1e-3, typical of omega); the fit is started from scipy's default guess and from Gumbel
    moment estimates with c in (-0.3, 0, 0.3), keeping the highest likelihood, since a single
    start can stop far from the maximum for heavy tails; and the best is polished with tighter
    optimizer tolerances.
    """
    array = np.asarray(maxima, dtype=np.float64)
    if array.ndim != 1 or array.size < _MIN_MAXIMA:
        raise ValueError(f"maxima must be 1-D with >= {_MIN_MAXIMA} values, got {array.shape}")
    if not np.all(np.isfinite(array)):
        raise ValueError("maxima must be finite")
    center, spread = array.mean(), array.std()
    if not spread > 0:
        raise ValueError("maxima are all equal: a GEV fit needs spread")
    z = (array - center) / spread
    # Gumbel moments of standardized data: scale = sqrt(6)/pi * std, loc = mean - gamma * scale.
    scale0 = np.sqrt(6.0) / np.pi
    starts = [genextreme.fit(z)] + [
        genextreme.fit(z, c0, loc=-_EULER_GAMMA * scale0, scale=scale0) for c0 in _START_SHAPES
    ]
    c, loc, scale = min(starts, key=lambda params: genextreme.nnlf(params, z))
    # Nelder-Mead never returns worse than its start, so the polish can only improve the fit.
    c, loc, scale = genextreme.fit(z, c, loc=loc, scale=scale, optimizer=_polish)
    return float(c), float(loc * spread + center), float(scale * spread)


def gev_quantile(maxima: ArrayLike, p: float = GEV_P) -> float:
    """The value exceeded with probability p under the GEV fitted to ``maxima``:

        genextreme.isf(p, *fit_gev(maxima))  (= the (1 - p)-quantile).

    The paper reads L and omega(eps) "from the fitted GEV distribution with threshold
    p = 0.001"; as both are suprema, the upper tail is our reading of that threshold. (CLEVER
    instead takes the location of a reverse Weibull fitted to the maxima.)
    """
    if not 0.0 < p < 1.0:
        raise ValueError(f"p must be in (0, 1), got {p}")
    return float(genextreme.isf(p, *fit_gev(maxima)))


def _per_image(loss: ArrayLike, grad_norm: ArrayLike | None = None) -> tuple[np.ndarray, ...]:
    arrays = [np.asarray(loss, dtype=np.float64).ravel()]
    if grad_norm is not None:
        arrays.append(np.asarray(grad_norm, dtype=np.float64).ravel())
    if len({a.size for a in arrays}) != 1 or arrays[0].size == 0:
        sizes = [a.size for a in arrays]
        raise ValueError(f"loss and grad_norm must be non-empty and of equal length, got {sizes}")
    if not all(np.all(np.isfinite(a)) for a in arrays):
        raise ValueError("loss and grad_norm must be finite")
    if grad_norm is not None and np.any(arrays[1] < 0):
        raise ValueError("grad_norm must be >= 0")
    return tuple(arrays)


def l_bound(loss: ArrayLike, lipschitz: float) -> np.ndarray:
    """(L-bound) of Proposition 2.2 per image, with l_0 = 0:

        max(l_0 - l(x_i), 0) / L,

    a lower bound on the minimum adversarial distance if L bounds ||grad l||_* everywhere;
    0 for misclassified images (l >= 0).
    """
    (values,) = _per_image(loss)
    if not np.isfinite(lipschitz) or lipschitz <= 0:
        raise ValueError(f"lipschitz must be finite and > 0, got {lipschitz}")
    return np.maximum(-values, 0.0) / lipschitz


def omega_bound_holds(
    loss: ArrayLike, grad_norm: ArrayLike, omega: float, eps: float
) -> np.ndarray:
    """Whether (omega-bound) of Proposition 2.2 certifies distance eps, per image [N] bool.

    With l_0 = 0 and gap_i = l_0 - l(x_i) - max(omega, 0), the bound holds iff

        gap_i > 0  and  gap_i >= eps * ||grad l(x_i)||_*.

    For a non-zero gradient and eps > 0 this is (gap_i / ||grad l||_* >= eps), the paper's form
    multiplied out. The first condition settles the cases the quotient leaves open: by Eq. 6,
    l(x + v) <= l(x) + ||v|| ||grad l||_* + omega(eps) < l_0 for all ||v|| < eps exactly when
    the gap is positive and large enough, so a zero gradient certifies iff the gap is positive
    (not at gap = 0, where l may reach l_0, a tie, which counts as an error), and misclassified
    images (l >= 0) are never certified, at eps = 0 included. omega(eps) >= 0 by Eq. 5 (v = 0 is
    in the ball), so a negative estimate is raised to 0.

    Args:
        loss: l(x_i) [N] (``margin_loss``).
        grad_norm: ||grad l(x_i)||_* [N] (``gradient_dual_norms``).
        omega: the estimate of omega(eps) (``gev_quantile`` of ``modulus_samples`` maxima).
        eps: the distance to certify, >= 0.
    """
    values, norms = _per_image(loss, grad_norm)
    if not np.isfinite(omega):
        raise ValueError(f"omega must be finite, got {omega}")
    if not np.isfinite(eps) or eps < 0:
        raise ValueError(f"eps must be finite and >= 0, got {eps}")
    gap = -values - max(omega, 0.0)
    return (gap > 0) & (gap >= eps * norms)


def omega_bound_distance(
    loss: ArrayLike, grad_norm: ArrayLike, omegas: ArrayLike, eps_grid: ArrayLike
) -> np.ndarray:
    """Per-image distance certified by (omega-bound) on a grid: the largest eps_j for which
    ``omega_bound_holds(loss, grad_norm, omegas[j], eps_j)``, 0 where none does.

    Each eps_j is a separate certificate (distance >= eps_j implies distance >= every smaller
    eps), so the largest one that holds is taken even if a smaller one fails, which can happen
    because each omega(eps_j) is a separate estimate. The result is floored to the grid: its
    mean over images ("mean adversarial distance" from the omega-bound, Table 2) depends on the
    grid's resolution. ``bound_error`` turns it into the "% error at eps" of Tables 1 and B.6.

    Args:
        loss, grad_norm: per image [N], as for ``omega_bound_holds``.
        omegas: omega(eps_j) for every grid point [G].
        eps_grid: strictly increasing eps_j >= 0 [G].
    """
    grid = np.asarray(eps_grid, dtype=np.float64)
    omega_arr = np.asarray(omegas, dtype=np.float64)
    if grid.ndim != 1 or grid.size == 0 or omega_arr.shape != grid.shape:
        raise ValueError(
            f"eps_grid and omegas must be 1-D of equal non-zero length, got {grid.shape} and "
            f"{omega_arr.shape}"
        )
    if np.any(np.diff(grid) <= 0):
        raise ValueError("eps_grid must be strictly increasing")
    distance = np.zeros(np.asarray(loss).size)
    for eps, omega in zip(grid, omega_arr, strict=True):
        distance = np.where(
            omega_bound_holds(loss, grad_norm, float(omega), float(eps)), eps, distance
        )
    return distance


def bound_error(distance: ArrayLike, eps: ArrayLike) -> np.ndarray:
    """Fraction of images whose certified distance is below each eps, [len(eps)]:

        err(eps) = (1/N) sum_i 1[distance_i < eps],

    the "bound % error at eps" (over 100) of Tables 1 and B.6 for distances from ``l_bound`` or
    ``omega_bound_distance``. Misclassified images have distance 0 and count as errors at
    every eps > 0.
    """
    dist = np.asarray(distance, dtype=np.float64).ravel()
    thresholds = np.atleast_1d(np.asarray(eps, dtype=np.float64))
    if dist.size == 0 or np.any(np.isnan(dist)) or np.any(dist < 0):
        raise ValueError("distance must be non-empty, with no nan, and >= 0")
    return (dist[None, :] < thresholds[:, None]).mean(axis=1)


# --- the bounds job ---------------------------------------------------------------------------

# The per-image columns of bounds.tsv before the modulus columns (``modulus_column``).
BOUND_COLUMNS: tuple[str, ...] = ("idx", "label", "correct", "loss", "grad_norm")
BOUNDS_FORMAT = "robustreg-bounds/1"
_EPS_GRID_SAYS = "a non-empty, strictly increasing list of numbers > 0"


def _is_eps_grid(value: object) -> bool:
    from robustreg.attacks.suite import _is_number

    return (
        isinstance(value, list)
        and len(value) > 0
        and all(_is_number(e) and e > 0 for e in value)
        and all(a < b for a, b in itertools.pairwise(value))
    )


def _setting_needs() -> dict:
    """key -> (what it accepts, default; None = required). The attack stage's setting checks
    (``robustreg.attacks.suite``), imported here: its minimal attacks import this module."""
    from robustreg.attacks.suite import _BOOL, _INT_1, _NORM, _Need, _one_of

    grid = _Need(_is_eps_grid, _EPS_GRID_SAYS, lambda v: [float(e) for e in v])
    return {
        "norm": (_NORM, None),
        "eps": (grid, None),
        "samples": (_INT_1, None),
        "block": (_INT_1, None),
        "top_k": (_INT_1, 1),
        "outputs": (_one_of(*OUTPUTS), "logits"),
        "clip": (_BOOL, True),
    }


def modulus_column(k: int) -> str:
    """The bounds.tsv column of the sampled modulus at the k-th eps (0-based) of the grid."""
    return f"modulus_{k}"


def resolve_bound_settings(spec: Mapping) -> dict:
    """The bounds job's settings from a mapping such as ``{"norm": "l2", "eps": [0.5, 1.0],
    "samples": 10, "block": 10}``, defaults filled in (top_k 1, outputs "logits", clip true),
    numbers as floats; one-line ValueErrors name the unknown, missing or bad key.

    eps must be > 0: omega(0) = 0 exactly (Eq. 5 at v = 0), and its maxima, all 0, cannot be
    fitted. ``clip`` is ``modulus_samples``' (v kept inside the [0, 1] box).
    """
    if not isinstance(spec, Mapping):
        raise ValueError(f"bounds: need a mapping of settings, got {spec!r}")
    needs = _setting_needs()
    unknown = sorted(set(spec) - set(needs))
    if unknown:
        raise ValueError(f"bounds: unknown key {unknown[0]!r} (known: {', '.join(needs)})")
    settings = {}
    for key, (need, default) in needs.items():
        if key not in spec:
            if default is None:
                raise ValueError(f"bounds: missing key {key!r}")
            settings[key] = default
        elif not need.test(spec[key]):
            raise ValueError(f"bounds.{key}: need {need.says}, got {spec[key]!r}")
        else:
            settings[key] = need.cast(spec[key])
    return settings


def check_blocks(images: int, block: int) -> None:
    """``block`` images per block must split ``images`` into equal blocks (``batch_maxima``),
    at least as many as a GEV fit needs (``fit_gev``)."""
    if block < 1 or images % block or images // block < _MIN_MAXIMA:
        raise ValueError(
            f"block: {block} images per block must split the {images} images into "
            f">= {_MIN_MAXIMA} equal blocks"
        )


def bound_statistics(
    model: nn.Module,
    x: torch.Tensor | np.ndarray,
    y: Sequence[int] | torch.Tensor | np.ndarray,
    *,
    norm: str,
    eps: Sequence[float],
    samples: int,
    top_k: int = 1,
    outputs: str = "logits",
    clip: bool = True,
    batch_size: int,
    seed: int,
    device: torch.device | str,
    progress: bool = True,
    indices: Sequence[int] | np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """Per-image statistics of Proposition 2.2 (section 2.2) on a set of test images: what
    ``bound_summary`` fits and the per-image bounds (``bound_distances``) read.

    ``x`` [N, C, H, W] uint8 or float in [0, 1] (CPU), ``y`` its labels, ``indices`` the images'
    dataset positions (default 0..N-1). The model runs in eval mode with frozen parameters on
    ``device`` (``attack_mode``), ``batch_size`` images at a time. Per image: ``margin_loss``
    and the dual norm of its input gradient (``gradient_dual_norms``), and for every eps of the
    grid the maximum of Eq. 5's bracket over ``samples`` draws (``modulus_samples``).

    The draws of image i come from its own generator on ``device``, seeded from (``seed``,
    indices[i]) and seeded again for every eps: an image's results depend neither on the batch
    size nor on the other images, and every eps scales the same unit draws (up to the box, with
    ``clip``), which keeps the omega(eps) estimates of one grid comparable.

    Returns numpy arrays, one row per image: idx, label, correct (1 if the label is in the top
    ``top_k``, i.e. loss < 0) as int64; loss, grad_norm, modulus [N, len(eps)] and seconds (the
    batch's wall time shared evenly between its images) as float64.
    """
    from robustreg.attacks.suite import _as_unit_float, _batch_seed, attack_mode

    _check_norm(norm)
    grid = [float(e) for e in eps]
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    images = torch.as_tensor(x)
    device = indexed_device(device)
    num = images.shape[0]
    idx, label = image_ids(num, indices, y)
    result = {
        "idx": idx,
        "label": label,
        "loss": np.zeros(num, dtype=np.float64),
        "grad_norm": np.zeros(num, dtype=np.float64),
        "modulus": np.zeros((num, len(grid)), dtype=np.float64),
        "seconds": np.zeros(num, dtype=np.float64),
    }
    bar = tqdm(total=num, disable=not progress, file=sys.stderr, unit="img")
    with bar, attack_mode(model, device):
        for start in range(0, num, batch_size):
            stop = min(start + batch_size, num)
            t0 = time.perf_counter()
            batch = _as_unit_float(images[start:stop]).to(device)
            labels = torch.as_tensor(label[start:stop], device=device)
            loss, dual = gradient_dual_norms(model, batch, labels, norm, top_k, outputs)
            result["loss"][start:stop] = loss.cpu().numpy()
            result["grad_norm"][start:stop] = dual.cpu().numpy()
            for j, radius in enumerate(grid):
                generators = [
                    torch.Generator(device).manual_seed(_batch_seed(seed, i))
                    for i in idx[start:stop]
                ]
                modulus = modulus_samples(
                    model,
                    batch,
                    labels,
                    radius,
                    norm,
                    samples,
                    generators,
                    top_k=top_k,
                    outputs=outputs,
                    clip=clip,
                )
                result["modulus"][start:stop, j] = modulus.cpu().numpy()
            # .cpu() waited for the device, so this is the batch's real wall time
            result["seconds"][start:stop] = (time.perf_counter() - t0) / (stop - start)
            bar.update(stop - start)
    return {"correct": (result["loss"] < 0).astype(np.int64), **result}


def _moduli(per_image: Mapping, grid: int) -> np.ndarray:
    """The [N, grid] sampled moduli: ``bound_statistics``' "modulus", or the modulus columns
    of a bounds.tsv frame."""
    if "modulus" in per_image:
        return np.asarray(per_image["modulus"], dtype=np.float64)
    return np.column_stack([np.asarray(per_image[modulus_column(k)]) for k in range(grid)])


def _fit(name: str, values: np.ndarray, block: int) -> tuple[dict[str, float], float]:
    """The GEV fitted to the block maxima of ``values``, and its value at GEV_P
    (``gev_quantile``, without fitting twice)."""
    try:
        c, loc, scale = fit_gev(batch_maxima(values, block))
    except ValueError as err:
        raise ValueError(f"GEV fit of {name}: {err}") from None
    return {"c": c, "loc": loc, "scale": scale}, float(genextreme.isf(GEV_P, c, loc, scale))


def bound_summary(per_image: Mapping, *, eps: Sequence[float], block: int, seed: int = 0) -> dict:
    """The estimates of section 2.2 from per-image values (``bound_statistics``' result or the
    frame of ``read_bounds``):

        L        = gev_quantile(batch_maxima(grad_norm, block)),
        omega_j  = gev_quantile(batch_maxima(modulus at eps_j, block)),   j over the grid,

    with the images put in blocks of ``block`` in an order drawn from ``seed`` (numpy's
    default_rng permutation): the paper takes maxima "over batches from the data
    distribution", i.e. random batches, while a split's own order may be by class (an ImageNet
    folder split is). The paper gives neither the block size nor the number of blocks, so
    ``block`` is a setting. Every image goes into the maxima, misclassified ones included: the
    paper samples "from the data distribution", and L and omega are suprema over all inputs.

    Returns a JSON-ready dict: lipschitz (L), omega (aligned with ``eps``), p (GEV_P), gev (the
    fits' scipy genextreme parameters: {"lipschitz": {c, loc, scale}, "omega": [{c, loc,
    scale}, ...]}), grad_norm_mean and grad_norm_max (over all images: Table B.3's "mean" and
    "max"), blocks (maxima per fit) and images.
    """
    grid = [float(e) for e in eps]
    grad = np.asarray(per_image["grad_norm"], dtype=np.float64).ravel()
    modulus = _moduli(per_image, len(grid))
    if modulus.shape != (grad.size, len(grid)):
        raise ValueError(
            f"modulus must have shape [{grad.size}, {len(grid)}] (images, eps), got {modulus.shape}"
        )
    check_blocks(grad.size, block)
    order = np.random.default_rng(seed).permutation(grad.size)
    lipschitz_fit, lipschitz = _fit("grad_norm", grad[order], block)
    omega_fits, omegas = [], []
    for j, radius in enumerate(grid):
        fit, omega = _fit(f"the modulus at eps {radius}", modulus[order, j], block)
        omega_fits.append(fit)
        omegas.append(omega)
    return {
        "lipschitz": lipschitz,
        "omega": omegas,
        "p": GEV_P,
        "gev": {"lipschitz": lipschitz_fit, "omega": omega_fits},
        "grad_norm_mean": float(grad.mean()),
        "grad_norm_max": float(grad.max()),
        "blocks": grad.size // block,
        "images": int(grad.size),
    }


def write_bounds(
    directory: str | os.PathLike, per_image: Mapping[str, np.ndarray], summary: Mapping
) -> None:
    """A bounds job's two files in ``directory``, each written atomically, bounds.json last.

    bounds.tsv: tab-separated, one row per image: ``BOUND_COLUMNS`` (idx, label, correct, loss,
    grad_norm), then ``modulus_0``, ``modulus_1``, ... (the sampled maximum of Eq. 5's bracket
    at summary["eps"][k]); floats written with ``repr``, so they read back exactly.

    bounds.json: ``summary`` (one flat object, its "eps" the grid) with "format" added.
    """
    grid = len(summary["eps"])
    columns = [*BOUND_COLUMNS, *(modulus_column(k) for k in range(grid))]
    modulus = np.asarray(per_image["modulus"], dtype=np.float64).reshape(-1, grid)
    lines = ["\t".join(columns)]
    for row in zip(*(per_image[key] for key in BOUND_COLUMNS), modulus, strict=True):
        *ints, loss, grad_norm, moduli = row
        floats = [loss, grad_norm, *moduli]
        lines.append("\t".join([str(int(v)) for v in ints] + [repr(float(v)) for v in floats]))
    folder = Path(directory)
    write_text_atomic(folder / "bounds.tsv", "\n".join(lines) + "\n")
    document = {"format": BOUNDS_FORMAT, **summary}
    write_text_atomic(folder / "bounds.json", json.dumps(document, indent=2, sort_keys=True))


def _read_summary(path: Path) -> dict:
    from robustreg.attacks.suite import _is_int, _is_number

    try:
        summary = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise ValueError(f"{path}: not a readable bounds summary (not UTF-8 text)") from None
    except (OSError, json.JSONDecodeError) as err:
        # JSON says where the text breaks (line, column), not what it holds
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ValueError(f"{path}: not a readable bounds summary ({reason})") from None
    if not isinstance(summary, dict) or summary.get("format") != BOUNDS_FORMAT:
        raise ValueError(f"{path}: not a bounds summary (expected format {BOUNDS_FORMAT})")
    if summary.get("norm") not in NORMS:
        raise ValueError(f"{path}: norm must be one of {', '.join(NORMS)}")
    if not _is_eps_grid(summary.get("eps")):
        raise ValueError(f"{path}: eps must be {_EPS_GRID_SAYS}")
    omega = summary.get("omega")
    if not isinstance(omega, list) or not all(_is_number(w) for w in omega):
        raise ValueError(f"{path}: omega must be a list of numbers")
    if len(omega) != len(summary["eps"]):
        raise ValueError(f"{path}: omega must hold one number per eps ({len(summary['eps'])})")
    if not (_is_number(summary.get("lipschitz")) and summary["lipschitz"] > 0):
        raise ValueError(f"{path}: lipschitz must be a number > 0")
    if not (_is_int(summary.get("images")) and summary["images"] >= 1):
        raise ValueError(f"{path}: images must be an integer >= 1")
    return summary


def read_bounds(directory: str | os.PathLike) -> tuple[pd.DataFrame, dict]:
    """A bounds job's files (``write_bounds``): bounds.tsv as a frame (idx, label, correct as
    int64, the rest float64) and bounds.json as a dict. The two must agree: one modulus column
    per eps, one row per image. One-line ValueErrors name the file and the problem."""
    folder = Path(directory)
    summary = _read_summary(folder / "bounds.json")
    name = folder / "bounds.tsv"
    try:
        frame = pd.read_csv(name, sep="\t", dtype=str, keep_default_na=False)
    except UnicodeDecodeError:
        raise ValueError(f"{name}: not a readable bounds table (not UTF-8 text)") from None
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError) as err:
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ValueError(f"{name}: not a readable bounds table ({reason})") from None
    columns = [*BOUND_COLUMNS, *(modulus_column(k) for k in range(len(summary["eps"])))]
    if list(frame.columns) != columns:
        raise ValueError(
            f"{name}: columns must be {' '.join(columns)} (one modulus column per eps of "
            f"bounds.json), in that order"
        )
    typed = {}
    for column in columns:
        kind = np.int64 if column in ("idx", "label", "correct") else np.float64
        try:
            typed[column] = frame[column].astype(kind)
        except ValueError:
            raise ValueError(
                f"{name}: column {column!r} holds a value that is not a number"
            ) from None
    frame = pd.DataFrame(typed)
    if len(frame) != summary["images"]:
        raise ValueError(
            f"{name}: {len(frame)} rows, but bounds.json counts {summary['images']} images"
        )
    if not frame["correct"].isin([0, 1]).all():
        raise ValueError(f"{name}: column 'correct' must be 0 or 1")
    if frame["idx"].duplicated().any():
        raise ValueError(f"{name}: column 'idx' repeats an image")
    return frame, summary


def bound_distances(frame: pd.DataFrame, summary: Mapping, which: str) -> np.ndarray:
    """Per-image certified distances [N] from ``read_bounds``' frame and summary:

        "l":     ``l_bound(loss, L)``                                   (L-bound, Table 2),
        "omega": ``omega_bound_distance(loss, grad_norm, omega, eps)``  (omega-bound, floored
                 to the eps grid; Tables 1, 2 and B.6),

    0 for misclassified images (loss >= 0) either way. ``bound_error`` of these gives the
    "bound % error at eps" columns, their mean Table 2's "mean adversarial distance".
    """
    if which == "l":
        return l_bound(frame["loss"].to_numpy(), summary["lipschitz"])
    if which == "omega":
        return omega_bound_distance(
            frame["loss"].to_numpy(),
            frame["grad_norm"].to_numpy(),
            summary["omega"],
            summary["eps"],
        )
    raise ValueError(f"which: {which!r} is not one of l, omega")
