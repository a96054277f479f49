"""The estimates and bounds of Finlay & Oberman (2021), section 2.2, from the per-image
statistics of a bounds job (``robustreg.bounds``, whose docstring states the pipeline), and the
job's files: GEV fits of block maxima (``fit_gev``, ``gev_quantile``, ``bound_summary``), the
L-bound and omega-bound per image (``l_bound``, ``omega_bound_distance``, ``bound_error``),
and bounds.tsv / bounds.json (``write_bounds``, ``read_bounds``, ``bound_distances``).

Torch-free, so that tables read a bounds job's files without it; scipy.stats and pandas are
imported by the functions that use them.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from numpy.typing import ArrayLike

from robustreg.attacks.threat import NORMS
from robustreg.bound_settings import EPS_GRID_SAYS, MIN_MAXIMA, check_blocks, is_eps_grid
from robustreg.io import write_text_atomic
from robustreg.settings import is_int, is_number

if TYPE_CHECKING:
    import pandas as pd

__all__ = [
    "BOUNDS_FORMAT",
    "BOUND_COLUMNS",
    "GEV_P",
    "batch_maxima",
    "bound_distances",
    "bound_error",
    "bound_summary",
    "fit_gev",
    "fit_warnings",
    "gev_quantile",
    "gev_shapes",
    "l_bound",
    "modulus_column",
    "omega_bound_distance",
    "omega_bound_holds",
    "omega_envelope",
    "read_bounds",
    "write_bounds",
]

# "estimated from the fitted GEV distribution with threshold p = 0.001" (section 2.2).
GEV_P = 1e-3
# Euler-Mascheroni constant: the Gumbel (c = 0) mean is loc + gamma * scale.
_EULER_GAMMA = 0.5772156649015329
_START_SHAPES = (-0.3, 0.0, 0.3)


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
    from scipy import optimize

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
    from scipy.stats import genextreme

    array = np.asarray(maxima, dtype=np.float64)
    if array.ndim != 1 or array.size < MIN_MAXIMA:
        raise ValueError(f"maxima must be 1-D with >= {MIN_MAXIMA} values, got {array.shape}")
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
    from scipy.stats import genextreme

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


def omega_envelope(omegas: ArrayLike) -> np.ndarray:
    """The estimates of omega on an increasing eps grid made nondecreasing:

        envelope_j = max_{k <= j} omega_k.

    omega(eps) is a supremum over the eps-ball (Eq. 5), so it cannot decrease as eps grows;
    estimates at the grid points, each from its own GEV fit of a few random draws, can. The
    envelope is the smallest nondecreasing sequence above them, and it is what the tables use
    (issue 20): a larger ball is never credited with a smaller modulus than a smaller one.
    """
    array = np.asarray(omegas, dtype=np.float64)
    if array.ndim != 1 or array.size == 0 or not np.all(np.isfinite(array)):
        raise ValueError(f"omegas must be 1-D, non-empty and finite, got {array}")
    return np.maximum.accumulate(array)


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


# --- the bounds job's files -------------------------------------------------------------------

# The per-image columns of bounds.tsv before the modulus columns (``modulus_column``).
BOUND_COLUMNS: tuple[str, ...] = ("idx", "label", "correct", "loss", "grad_norm")
BOUNDS_FORMAT = "robustreg-bounds/1"


def modulus_column(k: int) -> str:
    """The bounds.tsv column of the sampled modulus at the k-th eps (0-based) of the grid."""
    return f"modulus_{k}"


def _moduli(per_image: Mapping, grid: int) -> np.ndarray:
    """The [N, grid] sampled moduli: ``bound_statistics``' "modulus", or the modulus columns
    of a bounds.tsv frame."""
    if "modulus" in per_image:
        return np.asarray(per_image["modulus"], dtype=np.float64)
    return np.column_stack([np.asarray(per_image[modulus_column(k)]) for k in range(grid)])


def _fit(name: str, values: np.ndarray, block: int) -> tuple[dict[str, float], float]:
    """The GEV fitted to the block maxima of ``values``, and its value at GEV_P
    (``gev_quantile``, without fitting twice)."""
    from scipy.stats import genextreme

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


def gev_shapes(summary: Mapping) -> list[tuple[str, float]]:
    """Each GEV fit of ``summary`` (``bound_summary``) by what it estimates, with its shape in
    the usual sign, xi = -c of scipy's genextreme: xi > 0 is a heavy tail."""
    fits = summary["gev"]
    return [("L", -fits["lipschitz"]["c"])] + [
        (f"ω at ε = {eps:g}", -fit["c"])
        for eps, fit in zip(summary["eps"], fits["omega"], strict=True)
    ]


def fit_warnings(summary: Mapping) -> list[str]:
    """What a reader of the estimates in ``summary`` (``bound_summary``) should be told, as
    phrases: each GEV fit with a heavy tail, and each omega(eps) that ``omega_envelope``
    raised.

    A fit is heavy-tailed when its shape xi > 0 (``gev_shapes``): the distribution has no
    upper end, and its 1 - p quantile, our L or omega, rests on the extrapolated tail, so it
    moves far with a few block maxima (Weng et al.'s CLEVER fits a reverse Weibull, xi < 0,
    for this reason). The paper reports no shapes.
    """
    phrases = [
        f"the GEV fit of {name} is heavy-tailed (shape ξ = {xi:.2f} > 0)"
        for name, xi in gev_shapes(summary)
        if xi > 0
    ]
    envelope = omega_envelope(summary["omega"])
    for eps, omega, raised in zip(summary["eps"], summary["omega"], envelope, strict=True):
        if raised > omega:
            phrases.append(
                f"ω at ε = {eps:g} is raised from {omega:.3g} to {raised:.3g}, its estimate at a "
                "smaller ε (ω cannot decrease with ε)"
            )
    return phrases


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


def _is_fit(fit: object) -> bool:
    return isinstance(fit, dict) and all(is_number(fit.get(key)) for key in ("c", "loc", "scale"))


def _read_summary(path: Path) -> dict:
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
    if not is_eps_grid(summary.get("eps")):
        raise ValueError(f"{path}: eps must be {EPS_GRID_SAYS}")
    omega = summary.get("omega")
    if not isinstance(omega, list) or not all(is_number(w) for w in omega):
        raise ValueError(f"{path}: omega must be a list of numbers")
    if len(omega) != len(summary["eps"]):
        raise ValueError(f"{path}: omega must hold one number per eps ({len(summary['eps'])})")
    gev = summary.get("gev")
    if not (
        isinstance(gev, dict)
        and _is_fit(gev.get("lipschitz"))
        and isinstance(gev.get("omega"), list)
        and len(gev["omega"]) == len(omega)
        and all(_is_fit(fit) for fit in gev["omega"])
    ):
        raise ValueError(
            f"{path}: gev must hold the fits of lipschitz and of each omega, each with numbers "
            "c, loc and scale"
        )
    if not (is_number(summary.get("lipschitz")) and summary["lipschitz"] > 0):
        raise ValueError(f"{path}: lipschitz must be a number > 0")
    if not (is_int(summary.get("images")) and summary["images"] >= 1):
        raise ValueError(f"{path}: images must be an integer >= 1")
    return summary


def read_bounds(directory: str | os.PathLike) -> tuple[pd.DataFrame, dict]:
    """A bounds job's files (``write_bounds``): bounds.tsv as a frame (idx, label, correct as
    int64, the rest float64) and bounds.json as a dict. The two must agree: one modulus column
    per eps, one row per image. One-line ValueErrors name the file and the problem."""
    import pandas as pd

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
        "omega": ``omega_bound_distance(loss, grad_norm, omega_envelope(omega), eps)``
                 (omega-bound, floored to the eps grid; Tables 1, 2 and B.6),

    0 for misclassified images (loss >= 0) either way. ``bound_error`` of these gives the
    "bound % error at eps" columns, their mean Table 2's "mean adversarial distance".
    """
    if which == "l":
        return l_bound(frame["loss"].to_numpy(), summary["lipschitz"])
    if which == "omega":
        return omega_bound_distance(
            frame["loss"].to_numpy(),
            frame["grad_norm"].to_numpy(),
            omega_envelope(summary["omega"]),
            summary["eps"],
        )
    raise ValueError(f"which: {which!r} is not one of l, omega")
