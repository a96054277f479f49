"""Randomized-smoothing certification from stored class counts.

Implements the statistics of Cohen, Rosenfeld & Kolter (2019), "Certified Adversarial Robustness
via Randomized Smoothing" (ICML), for the smoothed classifier

    g(x) = argmax_c P(f(x + eps) = c),    eps ~ N(0, sigma^2 I):

* ``certify`` is their Algorithm CERTIFY: pick the top class cA from n0 selection samples, bound
  pA = P(f(x + eps) = cA) from below with n fresh estimation samples, and certify the L2 radius
  sigma * Phi^-1(pA_lower) (their Theorem 1 with pB upper-bounded by 1 - pA_lower), or abstain.
* ``predict`` is their Algorithm PREDICT: a two-sided binomial test between the top two classes.

The Monte Carlo sampling itself happens elsewhere; every image's class counts are stored once, so
everything here is a pure function of integer count arrays (``counts0`` from the n0 selection
samples, ``counts`` from the n estimation samples), of shape [N, C] or [C] for one image.

The per-image log format (``write_certify_log`` / ``read_certify_log``) is the tab-separated one
written by Cohen et al.'s ``certify.py`` and reused by Salman et al. (2019) and Jeong & Shin (2020).
"""

from __future__ import annotations

import datetime
import math
import os
import re
from typing import TYPE_CHECKING

import numpy as np
from numpy.typing import ArrayLike

# scipy.special, not scipy.stats: the same functions (beta.ppf and betaincinv are both Boost's
# inverse incomplete beta, norm.ppf is ndtri, binomtest at 1/2 is a binomial tail: see predict)
# without the second that importing scipy.stats adds to every certify job and every plan.
# tests/test_certify.py compares each with scipy.stats.
from scipy.special import bdtr, betaincinv, ndtri

from robustreg.io import write_text_atomic

if TYPE_CHECKING:
    import pandas as pd

ABSTAIN: int = -1
LOG_COLUMNS: tuple[str, ...] = ("idx", "label", "predict", "radius", "correct", "time")

_INT_COLUMNS = ("idx", "label", "predict", "correct")
_COLUMN_HOLDS = {
    **dict.fromkeys(_INT_COLUMNS, "an integer"),
    "radius": "a radius (a number >= 0)",
    "time": "a duration (H:MM:SS or seconds)",
}
# str(datetime.timedelta) output: "H:MM:SS", "H:MM:SS.ffffff", with "N day(s), " past 24 hours.
_TIMEDELTA = re.compile(
    r"^(?:(?P<days>\d+) days?, )?(?P<hours>\d+):(?P<minutes>\d{2}):(?P<seconds>\d{2}(?:\.\d+)?)$"
)


def clopper_pearson_lower(successes: ArrayLike, trials: ArrayLike, alpha: float):
    """One-sided (1 - alpha) Clopper-Pearson lower confidence bound on a binomial proportion.

    For k successes in n trials the bound is the alpha-quantile of Beta(k, n - k + 1),

        p_lower = B^-1(alpha; k, n - k + 1),    and p_lower = 0 when k = 0,

    so that P(p_lower <= p) >= 1 - alpha. This equals the lower end of the two-sided exact interval
    at level 1 - 2 alpha, which is how Cohen et al. call ``proportion_confint(..., alpha=2*alpha,
    method="beta")``. Special case k = n: p_lower = alpha**(1/n).

    Vectorized over broadcastable arrays; returns a float for scalar inputs.
    """
    k = np.asarray(successes)
    n = np.asarray(trials)
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    if np.any(k < 0) or np.any(k > n):
        raise ValueError("successes must satisfy 0 <= successes <= trials")
    # Beta(0, .) is degenerate at 0, where scipy returns nan rather than the bound 0.
    lower = np.where(k == 0, 0.0, betaincinv(k, n - k + 1, alpha))
    return float(lower) if lower.ndim == 0 else lower


def _as_count_matrix(counts: ArrayLike, name: str) -> np.ndarray:
    """Validate counts as non-negative integers and view a single image's [C] as [1, C]."""
    array = np.asarray(counts)
    if array.ndim not in (1, 2) or array.shape[-1] == 0:
        raise ValueError(f"{name} must have shape [C] or [N, C] with C >= 1, got {array.shape}")
    as_int = array.astype(np.int64)
    # Counts may arrive as floats (e.g. from a generic array store); only whole numbers are counts.
    if not np.array_equal(as_int, array) or np.any(as_int < 0):
        raise ValueError(f"{name} must hold non-negative integer counts")
    return as_int.reshape(-1, as_int.shape[-1])


def _count_pair(counts0: ArrayLike, counts: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """Selection and estimation counts as [N, C] matrices of the same shape."""
    selection = _as_count_matrix(counts0, "counts0")
    estimation = _as_count_matrix(counts, "counts")
    if selection.shape != estimation.shape:
        raise ValueError(
            f"counts0 and counts must have the same shape, got {selection.shape} and "
            f"{estimation.shape}"
        )
    return selection, estimation


def certify(
    counts0: ArrayLike, counts: ArrayLike, sigma: float, alpha: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Algorithm CERTIFY of Cohen et al. (2019), from stored counts.

    Per image, with n = sum_c counts[c]:

        cA       = argmax_c counts0[c]           (selection samples; ties -> lowest class index)
        nA       = counts[cA]                    (independent estimation samples)
        pA_lower = clopper_pearson_lower(nA, n, alpha)
        if pA_lower < 1/2: predict ABSTAIN, radius 0
        else:              predict cA,      radius sigma * Phi^-1(pA_lower)

    With probability >= 1 - alpha over the sampling, a non-abstaining prediction equals g(x + d)
    for every ||d||_2 < radius. Selecting cA on counts0 rather than counts keeps the estimate of pA
    unbiased by the selection. Ties go to the lowest index because that is what ``np.argmax`` does
    in Cohen et al.'s code.

    Args:
        counts0: selection counts, [N, C] or [C] (treated as N = 1).
        counts: estimation counts, same shape as counts0.
        sigma: standard deviation of the Gaussian noise.
        alpha: failure probability of the certificate.

    Returns:
        (prediction int64 [N], radius float64 [N], pA_lower float64 [N]).
    """
    selection, estimation = _count_pair(counts0, counts)
    if sigma <= 0:
        raise ValueError(f"sigma must be positive, got {sigma}")
    top = np.argmax(selection, axis=1)
    n_top = estimation[np.arange(len(top)), top]
    p_lower = np.asarray(
        clopper_pearson_lower(n_top, estimation.sum(axis=1), alpha), dtype=np.float64
    )
    certified = p_lower >= 0.5
    prediction = np.where(certified, top, ABSTAIN).astype(np.int64)
    # Clipping keeps Phi^-1 away from its p < 1/2 branch on abstentions, which are zeroed anyway.
    radius = np.where(certified, sigma * ndtri(np.maximum(p_lower, 0.5)), 0.0)
    return prediction, radius.astype(np.float64), p_lower


def max_certified_radius(sigma: float, n: int, alpha: float) -> float:
    """The largest radius CERTIFY can return with n estimation samples at level alpha.

    The best case is every sample on the top class (nA = n), where the Clopper-Pearson lower
    bound is alpha**(1/n), so no certificate exceeds

        sigma * Phi^-1(alpha**(1/n))        (0 when alpha**(1/n) < 1/2: nothing certifies)

    e.g. 3.81 sigma for Cohen et al.'s n = 100,000, alpha = 0.001, but 1.50 sigma for n = 100.
    A table column at a larger radius reads 0 by construction, whatever the model.
    """
    if sigma <= 0 or n < 1:
        raise ValueError(f"need sigma > 0 and n >= 1, got sigma={sigma}, n={n}")
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    # The alpha-quantile of Beta(n, 1), whose CDF is p**n.
    p_lower = alpha ** (1 / n)
    return float(sigma * ndtri(p_lower)) if p_lower >= 0.5 else 0.0


def predict(counts: ArrayLike, alpha: float) -> np.ndarray:
    """Algorithm PREDICT of Cohen et al. (2019), from stored counts.

    Per image, let nA >= nB be the two largest class counts (class cA, ties -> lowest index) and

        p = two-sided binomial test p-value of nA successes in nA + nB trials under H0: q = 1/2
          = scipy.stats.binomtest(nA, nA + nB, 0.5).pvalue
          = min(1, 2 P(Bin(nA + nB, 1/2) <= nB)),

    the last because Bin(m, 1/2) is symmetric: the outcomes at most as likely as nA are the two
    tails, <= nB and >= nA. Predict cA if p <= alpha, else ABSTAIN; the prediction then differs
    from g(x) with probability at most alpha. Images with nA + nB = 0 abstain (p = 1: there is
    nothing to test).

    Args:
        counts: class counts, [N, C] or [C] (treated as N = 1), C >= 2.
        alpha: significance level of the test.

    Returns:
        int64 predictions [N].
    """
    matrix = _as_count_matrix(counts, "counts")
    if matrix.shape[1] < 2:
        raise ValueError("predict needs at least two classes")
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    # A stable sort makes the order of tied classes well defined; which tied class is cA never
    # shows, since a tie for first has p-value 1 and abstains.
    order = np.argsort(-matrix, axis=1, kind="stable")
    rows = np.arange(len(matrix))
    top, n_top, n_second = order[:, 0], matrix[rows, order[:, 0]], matrix[rows, order[:, 1]]
    p_value = np.minimum(1.0, 2.0 * bdtr(n_second, n_top + n_second, 0.5))
    return np.where(p_value <= alpha, top, ABSTAIN).astype(np.int64)


def certified_accuracy(radius: ArrayLike, correct: ArrayLike, radii: ArrayLike) -> np.ndarray:
    """Approximate certified accuracy at each L2 radius r in ``radii``:

        acc(r) = (1/N) sum_i 1[correct_i = 1 and radius_i >= r]

    over ALL N images, so abstentions and wrong predictions count as failures. A radius exactly
    equal to r counts as certified at r.
    """
    radius_arr, correct_arr = _per_image(radius, correct)
    thresholds = np.atleast_1d(np.asarray(radii, dtype=np.float64))
    hits = (correct_arr == 1)[None, :] & (radius_arr[None, :] >= thresholds[:, None])
    return hits.mean(axis=1)


def average_certified_radius(radius: ArrayLike, correct: ArrayLike) -> float:
    """Average certified radius (ACR): (1/N) sum_i radius_i * correct_i over ALL N images.

    Wrong predictions and abstentions contribute 0.
    """
    return float(np.mean(certified_terms(radius, correct)))


def paired_difference(ours: ArrayLike, theirs: ArrayLike) -> tuple[float, float]:
    """mean(ours - theirs) over paired observations, and its standard error

        SE = sd(d, ddof=1) / sqrt(N),    d_i = ours_i - theirs_i,

    the paired t-test's (``scipy.stats.ttest_rel`` has statistic mean / SE). Paired: the same
    test images (per-image certified radii, 0 where wrong or abstained: ACR's terms) or the
    same seeds (ACRs across seeds). A difference counts as resolved beyond 2 SE (issue 22).
    Fewer than two pairs have no SE (nan).
    """
    a = np.asarray(ours, dtype=np.float64).ravel()
    b = np.asarray(theirs, dtype=np.float64).ravel()
    if a.shape != b.shape or a.size == 0:
        raise ValueError(f"need paired values of equal non-zero length, got {a.size} and {b.size}")
    d = a - b
    se = float(np.std(d, ddof=1) / np.sqrt(d.size)) if d.size > 1 else math.nan
    return float(d.mean()), se


def certified_terms(radius: ArrayLike, correct: ArrayLike) -> np.ndarray:
    """Each image's term of the ACR: its radius where correct, else 0."""
    radius_arr, correct_arr = _per_image(radius, correct)
    return radius_arr * (correct_arr == 1)


def _per_image(radius: ArrayLike, correct: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    radius_arr = np.asarray(radius, dtype=np.float64).ravel()
    correct_arr = np.asarray(correct).astype(np.int64).ravel()
    if radius_arr.shape != correct_arr.shape or radius_arr.size == 0:
        raise ValueError(
            "radius and correct must be non-empty and of equal length, got "
            f"{radius_arr.size} and {correct_arr.size}"
        )
    return radius_arr, correct_arr


def write_certify_log(
    path: str | os.PathLike,
    idx: ArrayLike,
    label: ArrayLike,
    prediction: ArrayLike,
    radius: ArrayLike,
    seconds: ArrayLike,
) -> None:
    """Write per-image certification results in Cohen et al.'s tab-separated log format.

    Header ``idx, label, predict, radius, correct, time`` (tab-separated), then one row per image
    with correct = int(prediction == label) and time = str(datetime.timedelta(seconds=...)), i.e.
    "H:MM:SS.ffffff", exactly as their ``certify.py`` writes it.

    Unlike their ``{:.3}`` (3 significant digits), the radius is written as the shortest decimal
    that round-trips the float64 exactly (Python's ``repr``). Rounding would shift radii across
    the thresholds of ``certified_accuracy`` (0.4996 -> "0.5" counts as certified at 0.5) and bias
    the ACR, so tables computed from the log would differ from those computed from the arrays.

    The file is written to a temporary file in the same directory and moved into place with
    ``os.replace``, so readers never see a partial log.
    """
    columns = [np.asarray(a).ravel() for a in (idx, label, prediction, radius, seconds)]
    if len({c.size for c in columns}) != 1:
        raise ValueError(
            "idx, label, prediction, radius and seconds must have equal lengths, got "
            f"{[c.size for c in columns]}"
        )
    idx_arr, label_arr, pred_arr, radius_arr, seconds_arr = columns
    lines = ["\t".join(LOG_COLUMNS)]
    for i, y, p, r, s in zip(idx_arr, label_arr, pred_arr, radius_arr, seconds_arr, strict=True):
        elapsed = str(datetime.timedelta(seconds=float(s)))
        lines.append(f"{int(i)}\t{int(y)}\t{int(p)}\t{float(r)!r}\t{int(p == y)}\t{elapsed}")
    write_text_atomic(path, "\n".join(lines) + "\n")


def parse_seconds(text: str) -> float:
    """Seconds from "H:MM:SS[.ffffff]" (with optional "N day(s), ") or a plain number."""
    match = _TIMEDELTA.match(text)
    if match is None:
        seconds = float(text)
    else:
        seconds = (
            int(match["days"] or 0) * 86400
            + int(match["hours"]) * 3600
            + int(match["minutes"]) * 60
            + float(match["seconds"])
        )
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError(f"invalid duration {text!r}")
    return seconds


def _parse_field(column: str, text: str) -> int | float:
    if column in _INT_COLUMNS:
        return int(text)
    if column == "time":
        return parse_seconds(text)
    radius = float(text)
    if not math.isfinite(radius) or radius < 0:
        raise ValueError(f"invalid radius {text!r}")
    return radius


def _split(line: str) -> list[str]:
    # Tabs are the format's separator; lines without any tab are taken as whitespace-separated.
    fields = line.split("\t") if "\t" in line else line.split()
    return [field.strip() for field in fields]


def read_certify_log(path: str | os.PathLike) -> pd.DataFrame:
    """Read a certification log in Cohen et al.'s tab-separated format.

    Accepts logs written by ``write_certify_log`` and by the ``certify.py`` of Cohen et al. (2019),
    Salman et al. (2019) or Jeong & Shin (2020): columns in any order, surrounding whitespace and
    blank lines ignored, ``time`` either as str(datetime.timedelta) or as plain seconds.

    Nothing is recomputed: ``correct`` is trusted as written, but a row with correct = 1 and
    predict = ABSTAIN is rejected as inconsistent.

    Returns:
        DataFrame with columns idx, label, predict, correct (int64), radius and time (float64
        seconds), in LOG_COLUMNS order.

    Raises:
        ValueError: one line naming the file (and line/column) on a missing file, a header with
            missing or unknown columns, or an unparsable or inconsistent row. It never quotes
            the file: a cells file may point at any file, and the message lands in logs.
    """
    name = os.fspath(path)
    try:
        with open(name, encoding="utf-8") as handle:
            lines = handle.read().splitlines()
    except OSError as err:
        raise ValueError(f"{name}: cannot read certification log ({err.strerror})") from err
    except UnicodeDecodeError:
        raise ValueError(f"{name}: not a certification log (not UTF-8 text)") from None
    numbered = [(number, line) for number, line in enumerate(lines, start=1) if line.strip()]
    if not numbered:
        raise ValueError(f"{name}: empty certification log, expected a header line")
    header_number, header_line = numbered[0]
    header = _split(header_line)
    missing = [c for c in LOG_COLUMNS if c not in header]
    unknown = [c for c in header if c not in LOG_COLUMNS]
    if missing or unknown or len(header) != len(set(header)):
        faults = [f"missing {', '.join(missing)}"] if missing else []
        faults += [f"{len(unknown)} other column{'s' * (len(unknown) > 1)}"] if unknown else []
        faults += ["a repeated column"] if len(header) != len(set(header)) else []
        raise ValueError(
            f"{name}: line {header_number}: not a certification log header ({'; '.join(faults)}), "
            f"expected the columns {' '.join(LOG_COLUMNS)}"
        )
    values: dict[str, list] = {c: [] for c in LOG_COLUMNS}
    for number, line in numbered[1:]:
        fields = _split(line)
        if len(fields) != len(header):
            raise ValueError(
                f"{name}: line {number}: expected {len(header)} fields, got {len(fields)}"
            )
        row = dict(zip(header, fields, strict=True))
        for column in LOG_COLUMNS:
            try:
                values[column].append(_parse_field(column, row[column]))
            except ValueError:
                raise ValueError(
                    f"{name}: line {number}: column {column!r} holds a value that is not "
                    f"{_COLUMN_HOLDS[column]}"
                ) from None
        if values["correct"][-1] not in (0, 1):
            raise ValueError(f"{name}: line {number}: column 'correct' must be 0 or 1")
        if values["correct"][-1] == 1 and values["predict"][-1] == ABSTAIN:
            raise ValueError(
                f"{name}: line {number}: inconsistent row, correct == 1 with predict == {ABSTAIN}"
            )
    import pandas as pd

    dtypes = {c: np.int64 if c in _INT_COLUMNS else np.float64 for c in LOG_COLUMNS}
    return pd.DataFrame({c: np.asarray(values[c], dtype=dtypes[c]) for c in LOG_COLUMNS})


# T-CERTIFY of Feng et al. (2020), "Regularized Training and Tight Certification for Randomized
# Smoothed Classifier with Provable Robustness" (AAAI), from the same stored counts.

TCERTIFY_GRID: tuple[float, ...] = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)
# the paper's Algorithm 2, and its sound variant (``t_certify``)
TCERTIFY_LEVELS = ("paper", "bonferroni")
# 2**-40 < 1e-12: the bisection of ``generalized_upper_bound`` stops this close to Eq. 14's bound.
_BISECTION_STEPS = 40


def generalized_upper_bound(others: ArrayLike, trials: ArrayLike, level: ArrayLike):
    """Upper confidence bound on the runner-up probability pB, Eq. 14 of Feng et al. (2020):

        pB_upper = inf{ p : sum_j P(Bin(n, p) <= N_j) <= level },

    where N_j runs over the counts of every class except the predicted one, n = ``trials`` and
    level = alpha - alpha'. If N_c ~ Bin(n, p_c) is the count of the true runner-up c, then
    pB_upper < p_c implies P(Bin(n, p_c) <= N_c) <= level (the sum is decreasing in p), which
    happens with probability at most level (proof of Proposition 1). With one other class this is
    the one-sided Clopper-Pearson upper bound B^-1(1 - level; N + 1, n - N).

    The sum is continuous and decreasing in p, so the bound is found by bisection on [0, 1],
    vectorized over all bounds at once; the end returned is the one where the sum is already
    <= level, so the bound is never too small and at most 2**-40 above Eq. 14's. level <= 0 gives
    1.0 (the bound is trivial), level >= C - 1 gives 0.0 (the sum is at most C - 1), and an empty
    set (some N_j = n with level < 1) gives 1.0.

    Args:
        others: counts of the classes other than the predicted one, [..., C - 1] with C - 1 >= 1.
        trials: n, broadcastable to others.shape[:-1], with others <= trials.
        level: alpha - alpha', broadcastable to others.shape[:-1].

    Returns:
        float64 bounds of the broadcast shape of others.shape[:-1], trials and level; a float
        when that shape is ().
    """
    counts = np.asarray(others)
    if counts.ndim == 0 or counts.shape[-1] == 0:
        raise ValueError(f"others must have shape [..., C - 1] with C - 1 >= 1, got {counts.shape}")
    counts = _as_count_matrix(counts.reshape(-1, counts.shape[-1]), "others").reshape(counts.shape)
    n = np.asarray(trials)
    if not np.array_equal(n.astype(np.int64), n) or np.any(counts > n[..., None]):
        raise ValueError("trials must be whole numbers with 0 <= others <= trials")
    level_arr = np.asarray(level, dtype=np.float64)
    if np.any(np.isnan(level_arr)):
        raise ValueError("level must not be nan")
    classes = counts.shape[-1]
    shape = np.broadcast_shapes(counts.shape[:-1], n.shape, level_arr.shape)
    values, weights = _distinct_counts(counts)
    values = np.broadcast_to(values, (*shape, values.shape[-1]))
    weights = np.broadcast_to(weights, values.shape)
    n = np.broadcast_to(n, shape)[..., None]
    level_arr = np.broadcast_to(level_arr, shape)
    lo, hi = np.zeros(shape), np.ones(shape)
    for _ in range(_BISECTION_STEPS):
        mid = 0.5 * (lo + hi)
        below = (weights * bdtr(values, n, mid[..., None])).sum(axis=-1) <= level_arr
        hi = np.where(below, mid, hi)
        lo = np.where(below, lo, mid)
    # Explicit because bdtr underflows to 0 (n = 1e5, p = 1/2), which would meet "sum <= 0".
    upper = np.where(level_arr <= 0, 1.0, np.where(level_arr >= classes, 0.0, hi))
    return float(upper) if upper.ndim == 0 else upper


def _distinct_counts(counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each row's distinct counts and how often each occurs, [..., U] both (U the most distinct
    values of any row; padding has weight 0), so Eq. 14's sum costs U terms, not C - 1: of
    ImageNet's 999 other classes, most have the same few counts (mostly 0)."""
    flat = np.sort(counts.reshape(-1, counts.shape[-1]), axis=1)
    width = flat.shape[1]
    starts = np.ones(flat.shape, dtype=bool)
    starts[:, 1:] = flat[:, 1:] != flat[:, :-1]
    # The positions where runs of equal counts start, first in each row (padding: width).
    first = np.sort(np.where(starts, np.arange(width), width), axis=1)[:, : starts.sum(1).max()]
    ends = np.concatenate([first[:, 1:], np.full((len(flat), 1), width)], axis=1)
    weights = np.where(first < width, ends - first, 0)
    values = np.take_along_axis(flat, np.minimum(first, width - 1), axis=1)
    lead = counts.shape[:-1]
    return values.reshape(*lead, -1), weights.reshape(*lead, -1)


def t_certify(
    counts0: ArrayLike,
    counts: ArrayLike,
    sigma: float,
    alpha: float,
    grid: tuple[float, ...] = TCERTIFY_GRID,
    level: str = "paper",
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Algorithm 2 (T-CERTIFY) of Feng et al. (2020), from stored counts.

    Per image, with n = sum_c counts[c], cA = argmax_c counts0[c] (ties -> lowest index, as in
    ``certify``) and, for every alpha' = g * alpha with g in ``grid``:

        pA_lower = clopper_pearson_lower(counts[cA], n, alpha')                  (Eq. 14, top)
        pB_upper = min(generalized_upper_bound(counts[c != cA], n, alpha - alpha'),
                       1 - pA_lower)                                              (Eq. 14, bottom)
        r_alpha' = sigma / 2 * (Phi^-1(pA_lower) - Phi^-1(pB_upper))  if pA_lower > 1/2, else 0

    and predict cA with radius max_alpha' r_alpha' if that is > 0, else ABSTAIN with radius 0.

    The cap 1 - pA_lower is not in Eq. 14. Without it the grid point alpha' = alpha has level 0,
    hence pB_upper = 1 and radius -inf, whereas the paper's Experiments state that this point
    returns CERTIFY's radius; with it, that point gives exactly sigma * Phi^-1(pA_lower). The cap
    is sound: on the event pA_lower <= pA, already required by Proposition 1, pB <= 1 - pA <=
    1 - pA_lower. It also makes r_alpha' > 0 whenever pA_lower > 1/2.

    CERTIFY certifies at pA_lower >= 1/2, T-CERTIFY at pA_lower > 1/2 (Algorithm 2); the two differ
    only when pA_lower is exactly 1/2.

    Guarantee: Theorem 1's proof covers one fixed alpha' (Proposition 1: failure probability at
    most alpha' + (alpha - alpha') = alpha). The maximum over the grid is not covered by it. The
    failure events are nested in alpha' (pA_lower grows with alpha', Eq. 14's pB_upper shrinks as
    alpha - alpha' grows), so their union over the grid has probability at most
    max alpha' + (alpha - min alpha'), i.e. up to alpha + (alpha - min alpha') in the worst case
    rather than alpha. tests/test_tcertify.py measures the actual rate on simulated classifiers.
    ``level`` "bonferroni" is the sound variant: alpha is split evenly over the grid (every
    grid point is the computation above at alpha / |grid|), so by the union bound the best
    radius over the grid fails with probability at most alpha. "paper" (the default) is
    Algorithm 2 as printed, whose tables and Figure 2 it reproduces.

    Args:
        counts0: selection counts, [N, C] or [C] (treated as N = 1), C >= 2.
        counts: estimation counts, same shape as counts0.
        sigma: standard deviation of the Gaussian noise.
        alpha: total failure probability alpha of Eq. 14, in (0, 1).
        grid: the values alpha' / alpha searched over, each in (0, 1]; the paper uses 0.1, ..., 1.
        level: "paper" or "bonferroni" (alpha / |grid| at every grid point).

    Returns:
        (prediction int64 [N], radius float64 [N], alpha_prime float64 [N]), where alpha_prime is
        the alpha' attaining the radius (the first in ``grid`` order on ties; nan on abstention).
    """
    selection, estimation = _count_pair(counts0, counts)
    if estimation.shape[1] < 2:
        raise ValueError("t_certify needs at least two classes")
    if sigma <= 0:
        raise ValueError(f"sigma must be positive, got {sigma}")
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    fractions = np.asarray(grid, dtype=np.float64)
    if fractions.ndim != 1 or fractions.size == 0 or not np.all((fractions > 0) & (fractions <= 1)):
        raise ValueError(f"grid must be a non-empty sequence of values in (0, 1], got {grid}")
    if level not in TCERTIFY_LEVELS:
        raise ValueError(f"level must be one of {', '.join(TCERTIFY_LEVELS)}, got {level!r}")
    if level == "bonferroni":
        alpha = alpha / fractions.size
    alpha_primes = alpha * fractions
    rows = np.arange(len(estimation))
    top = np.argmax(selection, axis=1)
    n = estimation.sum(axis=1)
    others = estimation[np.arange(estimation.shape[1]) != top[:, None]].reshape(len(rows), -1)
    # Arrays below are [N, G]: one row per image, one column per grid point.
    p_lower = np.stack(
        [clopper_pearson_lower(estimation[rows, top], n, a) for a in alpha_primes], axis=1
    ).astype(np.float64)
    p_upper = np.minimum(
        generalized_upper_bound(others[:, None, :], n[:, None], alpha - alpha_primes), 1 - p_lower
    )
    radii = np.where(p_lower > 0.5, 0.5 * sigma * (ndtri(p_lower) - ndtri(p_upper)), 0.0)
    best = np.argmax(radii, axis=1)
    radius = radii[rows, best]
    certified = radius > 0
    prediction = np.where(certified, top, ABSTAIN).astype(np.int64)
    alpha_prime = np.where(certified, alpha_primes[best], np.nan)
    return prediction, np.where(certified, radius, 0.0), alpha_prime
