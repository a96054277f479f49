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
(per-image certified distances for ``bound_error`` and the tables). This module computes the
per-image statistics on the model (torch); the estimates, the bounds and the files are
``robustreg.bound_estimates`` (numpy and scipy: tables read them without torch), the job's
settings ``robustreg.bound_settings`` (planning checks them); all are importable from here.

The authors' released code (cfinlay/tulip, cifar10/ and imagenet/test_statistics.py) has no
GEV fit and no omega at all: it takes L as the empirical maximum of the gradient norms, which
``batch_maxima(grad_norm, len(grad_norm))`` also gives.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from robustreg.attacks.pgd import NORMS, eval_mode, flat_norms, per_example
from robustreg.attacks.runner import as_unit_float, attack_mode, batch_seed
from robustreg.bound_estimates import (
    BOUND_COLUMNS,
    BOUNDS_FORMAT,
    GEV_P,
    batch_maxima,
    bound_distances,
    bound_error,
    bound_summary,
    fit_gev,
    fit_warnings,
    gev_quantile,
    gev_shapes,
    l_bound,
    modulus_column,
    omega_bound_distance,
    omega_bound_holds,
    omega_envelope,
    read_bounds,
    write_bounds,
)
from robustreg.bound_settings import OUTPUTS, check_blocks, resolve_bound_settings
from robustreg.io import image_ids
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
    "fit_warnings",
    "gev_quantile",
    "gev_shapes",
    "gradient_dual_norms",
    "l_bound",
    "margin_loss",
    "modulus_column",
    "modulus_samples",
    "omega_bound_distance",
    "omega_bound_holds",
    "omega_envelope",
    "read_bounds",
    "resolve_bound_settings",
    "uniform_ball",
    "write_bounds",
]


def margin_loss(
    logits: torch.Tensor, labels: torch.Tensor, top_k: int = 1, outputs: str = "softmax"
) -> torch.Tensor:
    """The modified Carlini-Wagner loss of section 2.2, per example [N]:

        l(x) = (k-th largest of f_i(x), i != c) - f_c(x),    c = labels,

    which is max_{i != c} f_i(x) - f_c(x) for k = 1. l < 0 iff fewer than k other classes score
    at least f_c, i.e. iff the true class is in the top k with ties counted as errors, so l_0 = 0
    for top-1 and, with k = 5, for the ImageNet top-5 error (the paper's footnote 1; the
    authors' imagenet/test_statistics.py likewise takes the 6th-largest output overall).

    ``outputs`` says what f is. "softmax" (the default) takes the softmax of the model's
    outputs: section 2 defines f as "a model which takes input vectors x to label
    probabilities", so section 2.2's loss is max_{i != c} p_i - p_c, and the authors' released
    cfinlay/tulip cifar10/test_statistics.py takes it after a softmax too; the gap -l is then
    at most 1 and L and omega are in those units, the paper's. "logits" uses the model's
    outputs as given (Carlini & Wagner's own loss). The bounds are not comparable across the
    two.

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
    outputs: str = "softmax",
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
    outputs: str = "softmax",
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


def bound_statistics(
    model: nn.Module,
    x: torch.Tensor | np.ndarray,
    y: Sequence[int] | torch.Tensor | np.ndarray,
    *,
    norm: str,
    eps: Sequence[float],
    samples: int,
    top_k: int = 1,
    outputs: str = "softmax",
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
            batch = as_unit_float(images[start:stop]).to(device)
            labels = torch.as_tensor(label[start:stop], device=device)
            loss, dual = gradient_dual_norms(model, batch, labels, norm, top_k, outputs)
            result["loss"][start:stop] = loss.cpu().numpy()
            result["grad_norm"][start:stop] = dual.cpu().numpy()
            for j, radius in enumerate(grid):
                generators = [
                    torch.Generator(device).manual_seed(batch_seed(seed, i))
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
