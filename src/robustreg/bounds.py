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
where they are made. The authors' released code (cfinlay/tulip, cifar10/ and
imagenet/test_statistics.py) has no GEV fit and no omega at all: it takes L as the empirical
maximum of the gradient norms, which ``batch_maxima(grad_norm, len(grad_norm))`` also gives.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from numpy.typing import ArrayLike
from scipy import optimize
from scipy.stats import genextreme
from torch import nn

from robustreg.attacks.pgd import NORMS, eval_mode, flat_norms, per_example

__all__ = [
    "GEV_P",
    "OUTPUTS",
    "batch_maxima",
    "bound_error",
    "fit_gev",
    "gev_quantile",
    "gradient_dual_norms",
    "l_bound",
    "margin_loss",
    "modulus_samples",
    "omega_bound_distance",
    "omega_bound_holds",
    "uniform_ball",
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


def modulus_samples(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    eps: float,
    norm: str,
    samples: int,
    generator: torch.Generator,
    *,
    top_k: int = 1,
    outputs: str = "logits",
    clip: bool = True,
) -> torch.Tensor:
    """Per-image sampled maxima of the bracket of Eq. 5 (the modulus of continuity):

        m_i = max_{s = 1..samples}  l(x_i + v_s) - l(x_i) - <v_s, grad l(x_i)>,

    with every v_s drawn by ``uniform_ball`` in the eps-ball of ``norm`` (fresh draws per image
    and sample). The paper samples "over ||v|| <= eps" without saying how; uniform in the ball
    is our reading, the same as CLEVER's (Weng et al. 2018) sampling of gradient norms.
    ``batch_maxima`` of the m_i then gives maxima "over batches of the data distribution and
    ||v|| <= eps", the samples ``fit_gev`` takes to estimate omega(eps).

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
            v = uniform_ball(tuple(x.shape), eps, norm, generator, x.dtype).to(x.device)
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
