"""Tests for T-CERTIFY of Feng et al. (2020) in robustreg.certify: Eq. 14's bounds, Algorithm 2."""

import numpy as np
import pytest
from scipy.optimize import brentq
from scipy.stats import beta, binom, binomtest, norm

from robustreg.certify import (
    ABSTAIN,
    TCERTIFY_GRID,
    certify,
    generalized_upper_bound,
    t_certify,
)

# --- generalized_upper_bound (Eq. 14, bottom) --------------------------------------------------


@pytest.mark.parametrize(
    ("count", "n", "level"),
    [(0, 10, 0.05), (3, 10, 0.05), (9, 10, 0.5), (30, 100, 0.001), (400, 1000, 0.09), (0, 1, 0.3)],
)
def test_generalized_upper_bound_one_class_is_clopper_pearson(count, n, level):
    expected = beta.ppf(1 - level, count + 1, n - count)
    bound = generalized_upper_bound([count], n, level)
    assert isinstance(bound, float)
    # Never below Eq. 14's bound, and within the bisection's 2**-40 above it.
    assert expected - 1e-14 <= bound <= expected + 1e-12


def test_generalized_upper_bound_all_trials_in_one_class_is_trivial():
    # P(Bin(n, p) <= n) = 1 > level for every p: the set in Eq. 14 is empty.
    assert generalized_upper_bound([10], 10, 0.05) == 1.0


@pytest.mark.parametrize(("n", "level"), [(1, 0.5), (50, 0.01), (1000, 0.09)])
def test_generalized_upper_bound_two_empty_classes_closed_form(n, level):
    # With N_2 = N_3 = 0 the sum is 2 (1 - p)^n, which equals level at p = 1 - (level / 2)^(1/n).
    expected = 1 - (level / 2) ** (1 / n)
    assert expected - 1e-14 <= generalized_upper_bound([0, 0], n, level) <= expected + 1e-12


def test_generalized_upper_bound_solves_eq14_conservatively():
    rng = np.random.default_rng(0)
    n = 1000
    others = rng.multinomial(n, [0.5, 0.2, 0.15, 0.1, 0.05], size=200)[:, 1:]
    level = rng.uniform(0.001, 0.1, size=200)
    bound = generalized_upper_bound(others, n, level)
    tail = binom.cdf(others, n, bound[:, None]).sum(axis=1)
    tail_below = binom.cdf(others, n, bound[:, None] - 1e-12).sum(axis=1)
    assert np.all(tail <= level)
    assert np.all(tail_below > level)


def test_generalized_upper_bound_is_decreasing_in_level_with_trivial_ends():
    levels = np.array([-0.1, 0.0, 1e-6, 0.001, 0.01, 0.1, 0.5, 1.0, 1.9, 2.0, 3.0])
    bounds = generalized_upper_bound([40, 25], 200, levels)
    assert bounds.shape == levels.shape
    assert np.all(np.diff(bounds) <= 0)
    # level <= 0: nothing is excluded; level >= C - 1 = 2: the sum never exceeds it.
    assert bounds[0] == bounds[1] == 1.0
    assert bounds[-2] == bounds[-1] == 0.0


def test_generalized_upper_bound_broadcasts():
    others = np.array([[5, 3], [0, 0], [7, 7]])
    trials = np.array([20, 30, 40])
    levels = np.array([0.01, 0.05])
    grid = generalized_upper_bound(others[:, None, :], trials[:, None], levels)
    assert grid.shape == (3, 2)
    for i in range(3):
        for j in range(2):
            assert grid[i, j] == generalized_upper_bound(others[i], trials[i], levels[j])


@pytest.mark.parametrize(
    ("others", "trials", "level"),
    [
        ([11], 10, 0.05),
        ([-1, 2], 10, 0.05),
        ([1.5], 10, 0.05),
        ([], 10, 0.05),
        (3, 10, 0.05),
        ([3], 10.5, 0.05),
        ([3], 10, np.nan),
    ],
)
def test_generalized_upper_bound_rejects_invalid_input(others, trials, level):
    with pytest.raises(ValueError):
        generalized_upper_bound(others, trials, level)


# --- t_certify (Algorithm 2) -------------------------------------------------------------------


def _random_counts(seed, images=400, classes=5, n0=100, n=1000):
    """Selection and estimation counts of images whose class probabilities are Dirichlet draws."""
    rng = np.random.default_rng(seed)
    probabilities = rng.dirichlet([4.0] + [1.0] * (classes - 1), size=images)
    counts0 = np.stack([rng.multinomial(n0, p) for p in probabilities])
    counts = np.stack([rng.multinomial(n, p) for p in probabilities])
    return counts0, counts


@pytest.mark.parametrize(("seed", "alpha", "sigma"), [(0, 0.001, 0.25), (1, 0.1, 1.0)])
def test_t_certify_at_alpha_prime_alpha_is_certify(seed, alpha, sigma):
    counts0, counts = _random_counts(seed)
    prediction, radius, alpha_prime = t_certify(counts0, counts, sigma, alpha, grid=(1.0,))
    expected_prediction, expected_radius, _ = certify(counts0, counts, sigma, alpha)
    assert 0 < np.sum(prediction != ABSTAIN) < len(prediction)
    np.testing.assert_array_equal(prediction, expected_prediction)
    np.testing.assert_allclose(radius, expected_radius, rtol=0, atol=1e-12)
    np.testing.assert_array_equal(alpha_prime, np.where(prediction == ABSTAIN, np.nan, alpha))


@pytest.mark.parametrize(("seed", "alpha", "sigma"), [(2, 0.001, 0.5), (3, 0.1, 0.25)])
def test_t_certify_default_grid_never_below_certify(seed, alpha, sigma):
    counts0, counts = _random_counts(seed)
    prediction, radius, alpha_prime = t_certify(counts0, counts, sigma, alpha)
    base_prediction, base_radius, p_lower = certify(counts0, counts, sigma, alpha)
    # CERTIFY also certifies at pA_lower = 1/2 exactly (radius 0), Algorithm 2 does not.
    edge = p_lower == 0.5
    assert np.all(radius >= base_radius - 1e-12)
    np.testing.assert_array_equal(prediction[~edge], base_prediction[~edge])
    assert np.any(radius > base_radius + 1e-3)
    certified = prediction != ABSTAIN
    assert np.all(radius[~certified] == 0) and np.all(radius[certified] > 0)
    assert np.all(np.isnan(alpha_prime[~certified]))
    assert np.all(np.isin(alpha_prime[certified], alpha * np.array(TCERTIFY_GRID)))


def test_t_certify_three_classes_matches_reference():
    counts0, counts = np.array([80, 15, 5]), np.array([600, 250, 150])
    sigma, alpha, n = 0.25, 0.001, 1000
    radii = []
    for g in TCERTIFY_GRID:
        alpha_prime = g * alpha
        p_lower = beta.ppf(alpha_prime, 600, 401)
        p_upper = 1.0
        if g < 1:
            p_upper = brentq(
                lambda p, a=alpha - alpha_prime: binom.cdf(250, n, p) + binom.cdf(150, n, p) - a,
                0.0,
                1.0,
                xtol=1e-15,
            )
        p_upper = min(p_upper, 1 - p_lower)
        radii.append(sigma / 2 * (norm.ppf(p_lower) - norm.ppf(p_upper)) if p_lower > 0.5 else 0)
    prediction, radius, alpha_prime = t_certify(counts0, counts, sigma, alpha)
    assert prediction.tolist() == [0]
    assert radius[0] == pytest.approx(max(radii), rel=0, abs=1e-10)
    assert alpha_prime[0] == pytest.approx(alpha * TCERTIFY_GRID[int(np.argmax(radii))])
    # Estimating pB separately beats CERTIFY's pB_upper = 1 - pA_lower here by far.
    assert radius[0] > 2 * certify(counts0, counts, sigma, alpha)[1][0]


def test_t_certify_abstains_without_a_majority():
    prediction, radius, alpha_prime = t_certify([[30, 30, 40]], [[400, 300, 300]], 0.5, 0.001)
    assert prediction.tolist() == [ABSTAIN]
    assert radius.tolist() == [0.0]
    assert np.isnan(alpha_prime[0])


@pytest.mark.parametrize(
    "probabilities",
    [[0.6, 0.4], [0.5, 0.3, 0.2], [0.7, 0.2, 0.1], [0.55] + [0.05] * 9],
    ids=["2-class", "3-class-tied-half", "3-class", "10-class"],
)
def test_t_certify_overstates_with_probability_at_most_alpha(probabilities):
    # Simulated base classifiers with known class probabilities (class 0 on top); a certificate
    # overstates when it names another class or exceeds the true radius of Eq. (2).
    trials, alpha, sigma = 4000, 0.1, 0.5
    p = np.array(probabilities)
    rng = np.random.default_rng(1234)
    counts0 = rng.multinomial(100, p, size=trials)
    counts = rng.multinomial(1000, p, size=trials)
    prediction, radius, _ = t_certify(counts0, counts, sigma, alpha)
    true_radius = sigma / 2 * (norm.ppf(p[0]) - norm.ppf(p[1]))
    overstated = (prediction != ABSTAIN) & ((prediction != 0) | (radius > true_radius))
    assert np.any(prediction != ABSTAIN)
    test = binomtest(int(overstated.sum()), trials, alpha, alternative="greater")
    assert test.pvalue > 1e-3


def test_t_certify_single_image():
    prediction, radius, alpha_prime = t_certify([90, 10], [950, 50], 0.5, 0.001)
    assert prediction.shape == radius.shape == alpha_prime.shape == (1,)
    assert prediction.dtype == np.int64 and radius.dtype == alpha_prime.dtype == np.float64
    assert prediction[0] == 0 and radius[0] > 0


@pytest.mark.parametrize(
    ("counts0", "counts", "sigma", "alpha", "grid"),
    [
        ([[9, 1]], [[90, 10], [80, 20]], 0.5, 0.001, TCERTIFY_GRID),
        ([[9, 1]], [[90, 10, 0]], 0.5, 0.001, TCERTIFY_GRID),
        ([[10]], [[100]], 0.5, 0.001, TCERTIFY_GRID),
        ([[9, 1]], [[90, -1]], 0.5, 0.001, TCERTIFY_GRID),
        ([[9, 1]], [[90, 10]], 0.0, 0.001, TCERTIFY_GRID),
        ([[9, 1]], [[90, 10]], 0.5, 0.0, TCERTIFY_GRID),
        ([[9, 1]], [[90, 10]], 0.5, 1.5, TCERTIFY_GRID),
        ([[9, 1]], [[90, 10]], 0.5, 0.001, ()),
        ([[9, 1]], [[90, 10]], 0.5, 0.001, (0.0, 0.5)),
        ([[9, 1]], [[90, 10]], 0.5, 0.001, (0.5, 1.1)),
        ([[9, 1]], [[90, 10]], 0.5, 0.001, (np.nan,)),
    ],
)
def test_t_certify_rejects_invalid_input(counts0, counts, sigma, alpha, grid):
    with pytest.raises(ValueError):
        t_certify(counts0, counts, sigma, alpha, grid)


def test_cli_writes_the_tcertify_log_of_stored_counts(tmp_path):
    from robustreg.certify import read_certify_log
    from robustreg.cli import main

    rng = np.random.default_rng(7)
    p = np.array([0.6, 0.3, 0.1])
    counts0, counts = rng.multinomial(100, p, size=20), rng.multinomial(1000, p, size=20)
    path = tmp_path / "counts.npz"
    np.savez(
        path,
        sigma=0.5,
        n0=100,
        n=1000,
        seed=0,
        idx=np.arange(0, 40, 2),
        label=np.zeros(20, dtype=np.int64),
        counts0=counts0,
        counts=counts,
        seconds=np.full(20, 0.25),
    )
    out = tmp_path / "tcertify.tsv"
    assert main(["tcertify", "--counts", str(path), "--alpha", "0.01", "--out", str(out)]) == 0
    log = read_certify_log(out)
    prediction, radius, _ = t_certify(counts0, counts, 0.5, 0.01)
    assert np.array_equal(log["idx"], np.arange(0, 40, 2))
    assert np.array_equal(log["predict"], prediction)
    np.testing.assert_array_equal(log["radius"], radius)
    assert np.allclose(log["time"], 0.25)


def test_cli_names_a_file_that_is_not_counts(tmp_path, capsys):
    from robustreg.cli import main

    bad = tmp_path / "counts.npz"
    bad.write_text("no")
    assert main(["tcertify", "--counts", str(bad), "--alpha", "0.01", "--out", "x.tsv"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(bad) in err[0]


def test_generalized_upper_bound_with_many_tied_classes_solves_the_full_sum():
    # ImageNet-like: 999 other classes, most with the same few counts; the bound sums over
    # distinct counts with their multiplicities, which must be the same equation.
    rng = np.random.default_rng(3)
    others = np.zeros((3, 999), dtype=np.int64)
    others[:, :40] = rng.integers(0, 30, size=(3, 40))
    n, level = 10_000, 0.0005
    bounds = generalized_upper_bound(others, n, level)
    for row, bound in zip(others, bounds, strict=True):
        reference = brentq(lambda p, row=row: binom.cdf(row, n, p).sum() - level, 1e-12, 1.0)
        assert reference <= bound <= reference + 1e-9


@pytest.mark.parametrize("seed", [0, 1])
def test_t_certify_bonferroni_is_the_paper_rule_at_alpha_over_the_grid(seed):
    # the sound variant splits alpha evenly over the grid: each point at alpha / |grid|
    rng = np.random.default_rng(seed)
    p = np.array([0.7, 0.2, 0.1])
    counts0, counts = rng.multinomial(100, p, size=50), rng.multinomial(2000, p, size=50)
    sound = t_certify(counts0, counts, 0.5, 0.01, level="bonferroni")
    split = t_certify(counts0, counts, 0.5, 0.01 / len(TCERTIFY_GRID))
    for ours, theirs in zip(sound, split, strict=True):
        np.testing.assert_array_equal(ours, theirs)
    paper = t_certify(counts0, counts, 0.5, 0.01)
    assert np.all(sound[1] <= paper[1]) and np.any(sound[1] < paper[1])


def test_t_certify_bonferroni_overstates_with_probability_at_most_alpha():
    trials, alpha, sigma = 4000, 0.1, 0.5
    p = np.array([0.5, 0.3, 0.2])
    rng = np.random.default_rng(99)
    counts0 = rng.multinomial(100, p, size=trials)
    counts = rng.multinomial(1000, p, size=trials)
    prediction, radius, _ = t_certify(counts0, counts, sigma, alpha, level="bonferroni")
    true_radius = sigma / 2 * (norm.ppf(p[0]) - norm.ppf(p[1]))
    overstated = (prediction != ABSTAIN) & ((prediction != 0) | (radius > true_radius))
    assert np.any(prediction != ABSTAIN)
    assert overstated.mean() <= alpha


def test_t_certify_rejects_an_unknown_level():
    with pytest.raises(ValueError, match="level must be one of paper, bonferroni"):
        t_certify([[9, 1]], [[90, 10]], 0.5, 0.001, level="holm")


def test_cli_level_bonferroni_and_its_choices(tmp_path, capsys):
    from robustreg.certify import TCERTIFY_LEVELS, read_certify_log
    from robustreg.cli import main

    rng = np.random.default_rng(3)
    p = np.array([0.7, 0.3])
    counts0, counts = rng.multinomial(100, p, size=8), rng.multinomial(1000, p, size=8)
    path = tmp_path / "counts.npz"
    np.savez(
        path,
        **{"sigma": 0.5, "n0": 100, "n": 1000, "seed": 0, "counts0": counts0, "counts": counts},
        **{"idx": np.arange(8), "label": np.zeros(8, dtype=np.int64), "seconds": np.ones(8)},
    )
    args = ["tcertify", "--counts", str(path), "--alpha", "0.01", "--out", str(tmp_path / "t")]
    assert main([*args, "--level", "bonferroni"]) == 0
    _, radius, _ = t_certify(counts0, counts, 0.5, 0.01, level="bonferroni")
    np.testing.assert_array_equal(read_certify_log(tmp_path / "t")["radius"], radius)
    # the CLI offers exactly robustreg.certify's levels (it lists them without importing it)
    assert main([*args, "--level", "holm"]) == 2
    offered = ", ".join(repr(level) for level in TCERTIFY_LEVELS)
    assert f"(choose from {offered})" in capsys.readouterr().err
