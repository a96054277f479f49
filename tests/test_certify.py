"""Tests for robustreg.certify: CERTIFY / PREDICT of Cohen et al. (2019) from stored counts."""

import math

import numpy as np
import pandas as pd
import pytest
from scipy.stats import beta, binomtest, norm

from robustreg.certify import (
    ABSTAIN,
    LOG_COLUMNS,
    average_certified_radius,
    certified_accuracy,
    certify,
    clopper_pearson_lower,
    max_certified_radius,
    predict,
    read_certify_log,
    write_certify_log,
)

# --- clopper_pearson_lower -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("k", "n", "alpha"),
    [(1, 10, 0.05), (7, 10, 0.05), (50, 100, 0.001), (99_000, 100_000, 0.001), (3, 1000, 0.01)],
)
def test_clopper_pearson_matches_two_sided_exact_interval(k, n, alpha):
    # The lower end of the two-sided exact interval at 1 - 2 alpha is the one-sided bound at 1 - a.
    expected = binomtest(k, n).proportion_ci(confidence_level=1 - 2 * alpha, method="exact").low
    assert clopper_pearson_lower(k, n, alpha) == pytest.approx(expected, rel=1e-10)


@pytest.mark.parametrize(("n", "alpha"), [(1, 0.05), (10, 0.05), (100_000, 0.001)])
def test_clopper_pearson_all_successes_closed_form(n, alpha):
    # Beta(n, 1) has CDF p**n, so its alpha-quantile is alpha**(1/n).
    assert clopper_pearson_lower(n, n, alpha) == pytest.approx(alpha ** (1 / n), rel=1e-12)


def test_clopper_pearson_no_successes_is_zero():
    assert clopper_pearson_lower(0, 100, 0.001) == 0.0


def test_clopper_pearson_vectorized_and_scalar_types():
    k = np.array([0, 5, 10])
    n = np.array([10, 10, 10])
    lower = clopper_pearson_lower(k, n, 0.05)
    assert isinstance(lower, np.ndarray)
    assert lower.shape == (3,)
    assert lower[0] == 0.0
    assert lower[1] == pytest.approx(beta.ppf(0.05, 5, 6))
    assert lower[2] == pytest.approx(0.05**0.1)
    assert isinstance(clopper_pearson_lower(5, 10, 0.05), float)


def test_clopper_pearson_is_scipy_stats_beta_quantile():
    k = np.array([1, 2, 5, 50, 99, 100, 4_980, 50_000, 99_990, 100_000])
    n = np.array([1, 10, 10, 100, 100, 100, 10_000, 100_000, 100_000, 100_000])
    for alpha in (1e-6, 0.001, 0.05, 0.5):
        expected = beta.ppf(alpha, k, n - k + 1)
        np.testing.assert_allclose(clopper_pearson_lower(k, n, alpha), expected, rtol=1e-13)


@pytest.mark.parametrize(("k", "n", "alpha"), [(11, 10, 0.05), (-1, 10, 0.05), (5, 10, 0.0)])
def test_clopper_pearson_rejects_invalid_input(k, n, alpha):
    with pytest.raises(ValueError):
        clopper_pearson_lower(k, n, alpha)


# --- certify -------------------------------------------------------------------------------------


def test_certify_all_samples_on_top_class_hand_computed():
    sigma, alpha, n = 0.5, 0.001, 100_000
    counts0 = np.array([0, 100, 0])
    counts = np.array([0, n, 0])
    prediction, radius, p_lower = certify(counts0, counts, sigma, alpha)
    expected_p = 0.001 ** (1e-5)
    assert prediction.tolist() == [1]
    assert p_lower[0] == pytest.approx(expected_p, rel=1e-12)
    assert radius[0] == pytest.approx(sigma * norm.ppf(expected_p), rel=1e-9)
    assert prediction.dtype == np.int64
    assert radius.dtype == np.float64
    assert p_lower.dtype == np.float64


def test_certify_maximum_radius_sigma_025_is_about_095():
    # With n = 100000 and alpha = 0.001 no pA_lower exceeds 0.001**1e-5, so no radius exceeds
    # 0.25 * Phi^-1(0.001**1e-5) ~= 0.953: why Cohen et al.'s sigma = 0.25 rows are 0 past 1.0.
    _, radius, _ = certify(np.array([100, 0]), np.array([100_000, 0]), 0.25, 0.001)
    assert radius[0] == pytest.approx(0.9529, abs=5e-4)
    assert radius[0] < 1.0


def test_certify_abstains_when_lower_bound_below_half():
    # 5020 / 10000 is above 1/2 but its 99.9% lower bound is not.
    counts0 = np.array([60, 40])
    counts = np.array([5020, 4980])
    assert clopper_pearson_lower(5020, 10_000, 0.001) < 0.5
    prediction, radius, p_lower = certify(counts0, counts, 0.25, 0.001)
    assert prediction.tolist() == [ABSTAIN]
    assert radius.tolist() == [0.0]
    assert p_lower[0] == pytest.approx(beta.ppf(0.001, 5020, 4981))


def test_certify_moderate_case_against_scipy():
    counts0 = np.array([3, 90, 7])
    counts = np.array([100, 9_800, 100])
    prediction, radius, p_lower = certify(counts0, counts, 1.0, 0.001)
    expected_p = beta.ppf(0.001, 9_800, 10_000 - 9_800 + 1)
    assert prediction.tolist() == [1]
    assert p_lower[0] == pytest.approx(expected_p)
    assert radius[0] == pytest.approx(norm.ppf(expected_p))
    assert 1.9 < radius[0] < 2.1


def test_certify_selects_with_counts0_and_estimates_with_counts():
    # Selection says class 2, estimation favours class 0: cA follows counts0 and nA is counts[2],
    # never the larger counts[0] (which would certify).
    prediction, radius, p_lower = certify([10, 0, 90], [600, 0, 400], 0.25, 0.001)
    assert prediction.tolist() == [ABSTAIN]
    assert p_lower[0] == pytest.approx(beta.ppf(0.001, 400, 601))
    assert radius[0] == 0.0

    # Same estimation counts, selection now agrees: certified with nA = counts[0] = 600.
    prediction, radius, p_lower = certify([90, 0, 10], [600, 0, 400], 0.25, 0.001)
    expected_p = beta.ppf(0.001, 600, 401)
    assert expected_p >= 0.5
    assert prediction.tolist() == [0]
    assert p_lower[0] == pytest.approx(expected_p)
    assert radius[0] == pytest.approx(0.25 * norm.ppf(expected_p))


def test_certify_ties_in_counts0_go_to_lowest_index():
    counts0 = np.array([0, 50, 50, 0])
    counts = np.array([0, 0, 1000, 0])
    prediction, _, p_lower = certify(counts0, counts, 0.25, 0.001)
    # cA = 1 although class 2 has every estimation sample; nA = counts[1] = 0.
    assert prediction.tolist() == [ABSTAIN]
    assert p_lower.tolist() == [0.0]

    counts = np.array([0, 1000, 0, 0])
    prediction, _, _ = certify(counts0, counts, 0.25, 0.001)
    assert prediction.tolist() == [1]


def test_certify_vectorized_equals_per_row():
    rng = np.random.default_rng(0)
    num_classes = 10
    probabilities = rng.dirichlet(np.full(num_classes, 0.2), size=40)
    counts0 = np.stack([rng.multinomial(100, p) for p in probabilities])
    counts = np.stack([rng.multinomial(10_000, p) for p in probabilities])
    prediction, radius, p_lower = certify(counts0, counts, 0.5, 0.001)
    assert prediction.shape == radius.shape == p_lower.shape == (40,)
    # The random case must exercise both branches for the comparison to mean something.
    assert 0 < np.sum(prediction == ABSTAIN) < 40
    for i in range(40):
        row = certify(counts0[i], counts[i], 0.5, 0.001)
        assert row[0].tolist() == [prediction[i]]
        assert row[1][0] == pytest.approx(radius[i], rel=1e-12)
        assert row[2][0] == pytest.approx(p_lower[i], rel=1e-12)


def test_certify_rejects_mismatched_or_invalid_counts():
    with pytest.raises(ValueError):
        certify(np.array([1, 2]), np.array([1, 2, 3]), 0.25, 0.001)
    with pytest.raises(ValueError):
        certify(np.array([1, -2]), np.array([1, 2]), 0.25, 0.001)
    with pytest.raises(ValueError):
        certify(np.array([1.5, 2]), np.array([1, 2]), 0.25, 0.001)


# --- predict -------------------------------------------------------------------------------------


def test_predict_abstains_on_near_tie_and_predicts_on_clear_majority():
    alpha = 0.001
    counts = np.array(
        [
            [0, 52, 48, 0],  # near tie
            [0, 90, 10, 0],  # clear majority
            [5, 5, 5, 5],  # exact tie
        ]
    )
    assert binomtest(52, 100, 0.5).pvalue > alpha
    assert binomtest(90, 100, 0.5).pvalue <= alpha
    assert predict(counts, alpha).tolist() == [ABSTAIN, 1, ABSTAIN]


def test_predict_decision_matches_scipy_binomtest():
    rng = np.random.default_rng(1)
    alpha = 0.01
    counts = rng.integers(0, 60, size=(50, 5))
    prediction = predict(counts, alpha)
    assert prediction.dtype == np.int64
    for row, predicted in zip(counts, prediction, strict=True):
        order = np.argsort(-row, kind="stable")
        n_a, n_b = int(row[order[0]]), int(row[order[1]])
        expected = order[0] if binomtest(n_a, n_a + n_b, 0.5).pvalue <= alpha else ABSTAIN
        assert predicted == expected
    assert 0 < np.sum(prediction == ABSTAIN) < 50


@pytest.mark.parametrize(("trials", "alpha"), [(100, 0.001), (1_001, 0.05), (100_000, 0.001)])
def test_predict_decides_as_scipy_binomtest_around_the_critical_count(trials, alpha):
    # every split of the trials between two classes from clear abstention to clear prediction
    critical = next(
        k for k in range(trials // 2, trials + 1) if binomtest(k, trials).pvalue <= alpha
    )
    n_top = np.arange(max(trials // 2, critical - 20), min(trials, critical + 20) + 1)
    counts = np.stack([trials - n_top, n_top], axis=1)
    expected = [1 if binomtest(int(k), trials, 0.5).pvalue <= alpha else ABSTAIN for k in n_top]
    assert predict(counts, alpha).tolist() == expected
    assert ABSTAIN in expected and 1 in expected


def test_predict_single_image_and_no_samples():
    assert predict(np.array([3, 40, 0]), 0.001).tolist() == [1]
    assert predict(np.array([0, 0, 0]), 0.001).tolist() == [ABSTAIN]


# --- certified accuracy and ACR ------------------------------------------------------------------

RADIUS = np.array([0.5, 0.25, 0.0, 1.0, 0.75, 0.3])
CORRECT = np.array([1, 1, 0, 0, 1, 1])  # row 2 abstained (radius 0), row 3 wrong


def test_certified_accuracy_hand_example():
    accuracy = certified_accuracy(RADIUS, CORRECT, [0.0, 0.25, 0.5, 0.75, 1.0])
    # r = 0.25 equals row 1's radius exactly and counts; the wrong row's radius 1.0 never counts.
    np.testing.assert_array_equal(accuracy, [4 / 6, 4 / 6, 2 / 6, 1 / 6, 0.0])


def test_certified_accuracy_scalar_radius():
    np.testing.assert_array_equal(certified_accuracy(RADIUS, CORRECT, 0.3), [3 / 6])


def test_average_certified_radius_hand_example():
    assert average_certified_radius(RADIUS, CORRECT) == pytest.approx((0.5 + 0.25 + 0.75 + 0.3) / 6)


def test_metrics_reject_length_mismatch():
    with pytest.raises(ValueError):
        certified_accuracy(RADIUS, CORRECT[:-1], [0.0])
    with pytest.raises(ValueError):
        average_certified_radius([], [])


# --- log -----------------------------------------------------------------------------------------


def test_log_round_trip(tmp_path):
    path = tmp_path / "sigma_0.25" / "certify.tsv"
    idx = np.array([0, 20, 40, 60])
    label = np.array([3, 8, 8, 0])
    prediction = np.array([3, 1, ABSTAIN, 0])
    radius = np.array([0.4996123456789, 0.812, 0.0, 1 / 3])
    seconds = np.array([1.234567, 0.5, 90_061.25, 12.0])
    write_certify_log(path, idx, label, prediction, radius, seconds)

    text = path.read_text()
    lines = text.splitlines()
    assert lines[0] == "idx\tlabel\tpredict\tradius\tcorrect\ttime"
    assert lines[1] == "0\t3\t3\t0.4996123456789\t1\t0:00:01.234567"
    assert lines[3].endswith("\t0.0\t0\t1 day, 1:01:01.250000")
    assert lines[4].endswith("\t1\t0:00:12")
    assert [p.name for p in path.parent.iterdir()] == ["certify.tsv"]

    log = read_certify_log(path)
    assert tuple(log.columns) == LOG_COLUMNS
    assert log["idx"].tolist() == idx.tolist()
    assert log["label"].tolist() == label.tolist()
    assert log["predict"].tolist() == prediction.tolist()
    assert log["correct"].tolist() == [1, 0, 0, 1]
    # Radii round-trip exactly, so metrics from the log equal metrics from the arrays.
    assert log["radius"].tolist() == radius.tolist()
    np.testing.assert_allclose(log["time"], seconds, atol=1e-6)
    for column in ("idx", "label", "predict", "correct"):
        assert log[column].dtype == np.int64
    assert log["radius"].dtype == log["time"].dtype == np.float64
    # Cohen et al.'s "{:.3}" would have written 0.4996... as "0.5" and certified it at 0.5.
    accuracy = certified_accuracy(log["radius"], log["correct"], [0.4996123456789, 0.5])
    assert accuracy.tolist() == [0.25, 0.0]


def test_read_cohen_format(tmp_path):
    path = tmp_path / "cohen.tsv"
    path.write_text(
        "idx\tlabel\tpredict\tradius\tcorrect\ttime\n"
        "0\t7\t7\t0.953\t1\t0:00:01.234567\n"
        "1\t2\t-1\t0.0\t0\t0:00:01.1\n"
    )
    log = read_certify_log(path)
    expected = pd.DataFrame(
        {
            "idx": np.array([0, 1], dtype=np.int64),
            "label": np.array([7, 2], dtype=np.int64),
            "predict": np.array([7, -1], dtype=np.int64),
            "radius": [0.953, 0.0],
            "correct": np.array([1, 0], dtype=np.int64),
            "time": [1.234567, 1.1],
        }
    )
    pd.testing.assert_frame_equal(log, expected)


def test_read_plain_seconds_whitespace_and_column_order(tmp_path):
    path = tmp_path / "other.tsv"
    path.write_text(
        "label\tidx\tpredict\tradius\tcorrect\ttime \n"
        " 4 \t 10\t4\t1.23e-05\t1\t12.5\n"
        "\n"
        "5\t30\t3\t0.5\t0\t0.25\n"
        "\n"
    )
    log = read_certify_log(path)
    assert tuple(log.columns) == LOG_COLUMNS
    assert log["idx"].tolist() == [10, 30]
    assert log["label"].tolist() == [4, 5]
    assert log["radius"].tolist() == [1.23e-05, 0.5]
    assert log["time"].tolist() == [12.5, 0.25]


def test_read_header_only_gives_empty_typed_frame(tmp_path):
    path = tmp_path / "empty.tsv"
    path.write_text("idx\tlabel\tpredict\tradius\tcorrect\ttime\n")
    log = read_certify_log(path)
    assert len(log) == 0
    assert tuple(log.columns) == LOG_COLUMNS
    assert log["idx"].dtype == np.int64


@pytest.mark.parametrize(
    ("content", "mentions"),
    [
        ("idx\tlabel\tprediction\tradius\tcorrect\ttime\n0\t1\t1\t0.5\t1\t0:00:01\n", "predict"),
        ("idx\tlabel\tpredict\tradius\tcorrect\n0\t1\t1\t0.5\t1\n", "time"),
        ("", "empty"),
        ("idx\tlabel\tpredict\tradius\tcorrect\ttime\n0\t1\t1\t0.5\t1\n", "line 2"),
        ("idx\tlabel\tpredict\tradius\tcorrect\ttime\n0\t1\tx\t0.5\t1\t0:00:01\n", "'predict'"),
        ("idx\tlabel\tpredict\tradius\tcorrect\ttime\n0\t1\t1\t0.5\t1\tsoon\n", "'time'"),
        ("idx\tlabel\tpredict\tradius\tcorrect\ttime\n0\t1\t1\tnan\t1\t0:00:01\n", "'radius'"),
        ("idx\tlabel\tpredict\tradius\tcorrect\ttime\n0\t1\t1\t0.5\t2\t0:00:01\n", "correct"),
        ("idx\tlabel\tpredict\tradius\tcorrect\ttime\n0\t1\t-1\t0.0\t1\t0:00:01\n", "inconsistent"),
    ],
)
def test_read_rejects_bad_logs_with_one_line_naming_the_file(tmp_path, content, mentions):
    path = tmp_path / "broken_log.tsv"
    path.write_text(content)
    with pytest.raises(ValueError) as excinfo:
        read_certify_log(path)
    message = str(excinfo.value)
    assert "broken_log.tsv" in message
    assert mentions in message
    assert "\n" not in message


def test_read_missing_file(tmp_path):
    path = tmp_path / "does_not_exist.tsv"
    with pytest.raises(ValueError, match="does_not_exist.tsv") as excinfo:
        read_certify_log(path)
    assert "\n" not in str(excinfo.value)


def test_write_rejects_unequal_lengths(tmp_path):
    with pytest.raises(ValueError):
        write_certify_log(tmp_path / "log.tsv", [0, 1], [1, 1], [1, 1], [0.5], [1.0, 1.0])
    assert not (tmp_path / "log.tsv").exists()


def test_acr_from_log_equals_acr_from_arrays(tmp_path):
    rng = np.random.default_rng(2)
    radius = rng.uniform(0.0, 1.0, size=200)
    label = rng.integers(0, 10, size=200)
    prediction = np.where(rng.random(200) < 0.8, label, ABSTAIN)
    radius = np.where(prediction == ABSTAIN, 0.0, radius)
    path = tmp_path / "log.tsv"
    write_certify_log(path, np.arange(200), label, prediction, radius, np.ones(200))
    log = read_certify_log(path)
    correct = (prediction == label).astype(int)
    assert average_certified_radius(log["radius"], log["correct"]) == average_certified_radius(
        radius, correct
    )
    assert math.isfinite(average_certified_radius(radius, correct))


def test_max_certified_radius_hand_derived_and_reached_by_certify():
    # 0.001 ** (1/100) = exp(ln(0.001) / 100) = 0.933254; Phi^-1(0.933254) = 1.500475
    assert max_certified_radius(0.12, 100, 0.001) == pytest.approx(0.12 * 1.500475, rel=1e-6)
    assert max_certified_radius(1.0, 100_000, 0.001) == pytest.approx(3.8115, abs=1e-4)
    # the best case of CERTIFY itself: every estimation sample on the selected class
    _, radius, _ = certify([[0, 5, 0]], [[0, 100, 0]], sigma=0.12, alpha=0.001)
    assert radius[0] == pytest.approx(max_certified_radius(0.12, 100, 0.001), rel=1e-12)
    # 0.001 ** (1/9) = 0.464 < 1/2: not even a perfect run certifies
    assert max_certified_radius(0.5, 9, 0.001) == 0.0
    with pytest.raises(ValueError, match="need sigma > 0 and n >= 1"):
        max_certified_radius(0.0, 100, 0.001)
    with pytest.raises(ValueError, match=r"alpha must be in \(0, 1\)"):
        max_certified_radius(0.25, 100, 1.0)


@pytest.mark.parametrize("n", [10, 100, 1_000, 100_000])
@pytest.mark.parametrize("alpha", [1e-6, 0.001, 0.05])
def test_max_certified_radius_closed_form_is_scipy_stats(n, alpha):
    # the radius of n of n samples on the top class: Phi^-1 of Beta(n, 1)'s alpha-quantile
    expected = max(0.0, 0.25 * norm.ppf(beta.ppf(alpha, n, 1)))  # 0 when nothing certifies
    assert max_certified_radius(0.25, n, alpha) == pytest.approx(expected, rel=1e-12)
