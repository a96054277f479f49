"""Paired comparisons in results tables (issue 22): ΔACR against the baseline row with its
paired standard error, and which of the paper's orderings ours reproduce."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import yaml
from scipy import stats

from robustreg.certify import paired_difference, write_certify_log
from robustreg.tables.render import render_table


def test_paired_difference_by_hand_and_against_scipys_paired_t_test():
    delta, se = paired_difference([1.0, 2.0, 3.0], [0.0, 0.0, 0.0])
    assert delta == 2.0 and se == pytest.approx(1 / math.sqrt(3))
    rng = np.random.default_rng(0)
    a, b = rng.random(50), rng.random(50)
    delta, se = paired_difference(a, b)
    assert delta / se == pytest.approx(stats.ttest_rel(a, b).statistic, rel=1e-12)
    assert math.isnan(paired_difference([1.0], [0.5])[1])
    with pytest.raises(ValueError, match="paired values"):
        paired_difference([1.0, 2.0], [1.0])


def _log(path: Path, radius: np.ndarray) -> str:
    n = radius.size
    label = np.arange(n) % 10
    prediction = np.where(radius > 0, label, -1)  # radius 0: abstained
    path.parent.mkdir(parents=True, exist_ok=True)
    write_certify_log(path, np.arange(n), label, prediction, radius, np.zeros(n))
    return path.name


def test_table_notes_paired_differences_and_the_orderings_it_reproduces(tmp_path):
    """Synthetic logs on the same 200 images: at σ = 0.50 consistency adds 0.1 to every
    image's radius (resolved, the paper's way); at σ = 1.00 it takes 0.1 off (resolved, the
    other way); SmoothAdv + consistency differs from SmoothAdv by noise (not resolved)."""
    rng = np.random.default_rng(1)
    base = rng.uniform(0.2, 1.5, 200)
    noise = rng.normal(0, 0.05, 200)
    logs = {
        ("gaussian", 0.5): base,
        ("consistency", 0.5): base + 0.1,
        ("gaussian", 1.0): base,
        ("consistency", 1.0): base - 0.1,
        ("smoothadv", 0.5): base,
        ("smoothadv_consistency", 0.5): np.abs(base + noise),
    }
    cells = [
        {"row": row, "sigma": sigma, "log": _log(tmp_path / f"{row}-{sigma}.tsv", radius)}
        for (row, sigma), radius in logs.items()
    ]
    path = tmp_path / "cells.yaml"
    doc = {"table": "table2_mnist", "banner": "Quick scale.", "cells": cells}
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    render_table(path, tmp_path / "t.md", tmp_path / "t.tex")
    text = " ".join((tmp_path / "t.md").read_text().split())
    delta, se = paired_difference(np.abs(base + noise), base)
    assert abs(delta) < 2 * se  # the noise case is within 2 SE
    assert (
        "> **Quick scale. The paper's ACR orderings of each row against its baseline (3), by our "
        "paired differences (resolved beyond 2 SE): reproduced: + Consistency (λ = 5) > Gaussian "
        "at σ = 0.50. not resolved: + Consistency (λ = 1) > SmoothAdv at σ = 0.50. reversed: "
        "+ Consistency (λ = 5) > Gaussian at σ = 1.00.**"
    ) in text
    assert (
        "+ Consistency (λ = 5) against Gaussian, σ = 0.50: ΔACR = +0.1000 ± 0.0000 (paired over "
        "200 images), beyond 2 SE."
    ) in text
    assert (
        f"+ Consistency (λ = 1) against SmoothAdv, σ = 0.50: ΔACR = {delta:+.4f} ± {se:.4f} "
        "(paired over 200 images), within 2 SE."
    ) in text


def test_seeds_pair_by_seed_in_table3(tmp_path):
    """Table 3: a row and its baseline train with the same seeds; the pairs are the seeds'
    ACRs (three here: consistency ahead by 0.10, 0.12 and 0.14)."""
    rng = np.random.default_rng(2)
    base = rng.uniform(0.2, 1.5, 100)
    cells = []
    for row, shifts in (("gaussian", (0.0, 0.0, 0.0)), ("consistency", (0.10, 0.12, 0.14))):
        logs = [_log(tmp_path / f"{row}-{s}.tsv", base + shift) for s, shift in enumerate(shifts)]
        cells.append({"row": row, "sigma": 0.5, "log": logs})
    path = tmp_path / "cells.yaml"
    path.write_text(yaml.safe_dump({"table": "table3_mnist_seeds", "cells": cells}))
    render_table(path, tmp_path / "t.md", tmp_path / "t.tex")
    text = " ".join((tmp_path / "t.md").read_text().split())
    assert (
        "+ Consistency against Gaussian, σ = 0.50: ΔACR = +0.12000 ± 0.01155 (paired over 3 "
        "seeds), beyond 2 SE."
    ) in text
    # no banner (logs made elsewhere): the orderings lead the notes
    assert "reproduced: + Consistency > Gaussian at σ = 0.50." in text


def test_rows_labelled_by_a_bare_number_are_named_by_their_label_column(tmp_path):
    # Table 6's rows are the values of λ: "λ = 5.0 > λ = 0.0", not "5.0 > 0.0"
    base = np.random.default_rng(3).uniform(0.2, 1.5, 100)
    cells = [
        {"row": row, "sigma": 1.0, "log": _log(tmp_path / f"{row}.tsv", base + shift)}
        for row, shift in (("lbd0", 0.0), ("lbd5", 0.2))
    ]
    path = tmp_path / "cells.yaml"
    path.write_text(yaml.safe_dump({"table": "table6_mnist_lambda", "cells": cells}))
    render_table(path, tmp_path / "t.md", tmp_path / "t.tex")
    text = " ".join((tmp_path / "t.md").read_text().split())
    assert "reproduced: λ = 5.0 > λ = 0.0 at σ = 1.00." in text


def test_table5_compares_more_noise_samples_with_m_2(tmp_path):
    # m = 4 and m = 8 against m = 2 (the paper's ACRs rise with m at every σ)
    base = np.random.default_rng(4).uniform(0.2, 1.5, 100)
    cells = [
        {"row": row, "sigma": 1.0, "log": _log(tmp_path / f"{row}.tsv", base + shift)}
        for row, shift in (("m2", 0.0), ("m4", 0.1), ("m8", -0.1))
    ]
    path = tmp_path / "cells.yaml"
    path.write_text(yaml.safe_dump({"table": "table5_mnist_m", "cells": cells}))
    render_table(path, tmp_path / "t.md", tmp_path / "t.tex")
    text = " ".join((tmp_path / "t.md").read_text().split())
    assert "reproduced: m = 4 > m = 2 at σ = 1.00. reversed: m = 8 > m = 2 at σ = 1.00." in text
    assert "m = 4 against m = 2, σ = 1.00: ΔACR = +0.1000 ± 0.0000" in text
