"""Robustness tables (Finlay & Oberman's Tables 1, 2, B.3, B.4, B.6): metrics, plan, render."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import yaml
from test_plan import merged

from robustreg.plan import ConfigError, cells_document, make_plan, write_cells_document
from robustreg.tables import load_spec
from robustreg.tables.robustness import (
    clean_error,
    empirical_distance,
    empirical_error,
    smallest_distances,
)

OUTCOME_HEADER = "idx\tlabel\tclean\tadversarial\trobust\tl2\tlinf\ttime"


def outcome_frame(rows: list[tuple[int, float, float]]) -> pd.DataFrame:
    """Synthetic minimum-distance outcomes: (robust, l2, linf) per image, label 0."""
    return pd.DataFrame(
        {
            "idx": np.arange(len(rows)),
            "label": 0,
            "clean": 0,
            "adversarial": [0 if r else 1 for r, _, _ in rows],
            "robust": [r for r, _, _ in rows],
            "l2": [a for _, a, _ in rows],
            "linf": [b for _, _, b in rows],
            "time": 0.0,
        }
    )


# image 0 misclassified, 1 broken by both attacks, 2 by the second only, 3 by none
PGD = outcome_frame([(0, 0.0, 0.0), (0, 0.5, 0.02), (1, 0.0, 0.0), (1, 0.0, 0.0)])
CW = outcome_frame([(0, 0.0, 0.0), (0, 0.3, 0.04), (0, 1.2, 0.05), (1, 0.0, 0.0)])


def test_smallest_distance_per_image_over_the_attacks_in_each_norm():
    # hand-derived: l2 min(0.5, 0.3) = 0.3; linf min(0.02, 0.04) = 0.02 (another attack's point)
    assert smallest_distances([PGD, CW], "l2").tolist() == [0.0, 0.3, 1.2, math.inf]
    assert smallest_distances([PGD, CW], "linf").tolist() == [0.0, 0.02, 0.05, math.inf]
    assert smallest_distances([PGD], "l2").tolist() == [0.0, 0.5, math.inf, math.inf]


def test_clean_empirical_error_and_mean_distance():
    distance = smallest_distances([PGD, CW], "l2")
    assert clean_error([PGD, CW]) == 0.25
    # <= eps: the attack's point lies within eps
    assert empirical_error(distance, 0.3) == 0.5
    assert empirical_error(distance, 0.29) == 0.25
    assert empirical_error(distance, 0.0) == 0.25
    assert empirical_error(distance, 10.0) == 0.75
    # the image no attack broke is left out of the mean: (0 + 0.3 + 1.2) / 3
    assert empirical_distance(distance) == pytest.approx(0.5)
    assert math.isnan(empirical_distance(np.array([math.inf])))


def test_logs_of_other_images_or_other_misclassifications_are_refused():
    shifted = PGD.assign(idx=PGD["idx"] + 1)
    with pytest.raises(ValueError, match="different images"):
        smallest_distances([PGD, shifted], "l2")
    other = CW.copy()
    other.loc[3, ["robust", "l2", "linf"]] = [0, 0.0, 0.0]
    with pytest.raises(ValueError, match="disagree on which images are misclassified"):
        smallest_distances([PGD, other], "l2")


def test_gradreg_specs_transcribe_the_paper():
    t1 = load_spec("table1_gradreg")
    assert t1.values_from == "robustness"
    rows = {r.key: r for r in t1.rows}
    assert rows["l1_fd_1"].paper["CIFAR-10"] == (9.02, 20.66, 55.30, 18.47, 58.69, 5.15)
    assert rows["imagenet_l2_1"].paper["ImageNet-1k"][3] == 52.79
    assert rows["imagenet_l2_1"].groups == ("ImageNet-1k",)
    t2 = load_spec("table2_gradreg")
    assert {r.key: r.paper["CIFAR-10"][3] for r in t2.rows if r.groups == ("CIFAR-10",)}[
        "l2_fd_1"
    ] == 0.81
    b4 = load_spec("tableB4_gradreg")
    assert [r.key for r in b4.rows] == [
        "undefended",
        "dbp",
        "h1e-4",
        "h1e-3",
        "h1e-2",
        "h1e-1",
        "h1",
    ]
    b5 = load_spec("tableB5_gradreg")
    assert {r.key: r.cited for r in b5.rows if r.cited} == {
        "cohen": "Cohen et al. 2019",
        "salman": "Salman et al. 2019",
    }
    b6 = load_spec("tableB6_gradreg")
    assert [c.eps for c in b6.columns] == [0.25, 0.5, 0.75, 1.0, 1.25, 1.5]


def test_gradreg_tables_plan_attack_bounds_and_training_files():
    plan = make_plan(merged())
    t1 = plan.tables["table1_gradreg"]
    cells = {c.row: c for c in t1.cells}
    at8 = cells["at8"]
    assert at8.sigma == "CIFAR-10"
    exp = at8.experiments[0]
    assert plan.experiments[exp]["arch"] == "resnext34_2x32_cifar"
    assert at8.files["hours"] == (f"results/models/{exp}/model.pt",)
    assert len(at8.files["emp2"]) == 4 and at8.files["emp2"] == at8.files["clean"]
    (bounds,) = at8.files["omega8"]
    assert bounds.startswith(f"results/bounds/{exp}/gradreg_linf-")
    job = plan.bounds[bounds.removeprefix("results/bounds/").removesuffix("/bounds.json")]
    assert job["bounds"]["norm"] == "linf" and job["sample"] == 1000
    # ImageNet rows: their own data, model, evaluation and top-5 attacks
    imagenet = cells["imagenet_l2_1"]
    assert imagenet.sigma == "ImageNet-1k"
    attack = imagenet.files["emp8"][0].removeprefix("results/attacks/")
    assert plan.attacks[attack.removesuffix("/outcomes.tsv")]["attack"]["top_k"] == 5
    # Foolbox's Carlini-Wagner is top-1 only: not in the top-5 suites
    assert len(imagenet.files["emp8"]) == 3
    assert not any("gradreg_cw_l2" in f for f in imagenet.files["emp8"])
    # the same model in Tables 1, 2, B.3 and B.6; the l2 attacks (Boundary, Carlini-Wagner)
    # are in both norms' suites, one job each
    same = {c.row: c.experiments for c in plan.tables["table2_gradreg"].cells}
    assert same["at8"] == at8.experiments
    t2 = {c.row: c for c in plan.tables["table2_gradreg"].cells}
    for name in ("gradreg_boundary-", "gradreg_cw_l2-"):
        (shared,) = [f for f in at8.files["emp2"] if name in f]
        assert shared in t2["at8"].files["empirical"]
    # Table B.4's h = 0.1 row is Table 1's lambda = 1 FD row
    b4 = {c.row: c.experiments for c in plan.tables["tableB4_gradreg"].cells}
    assert b4["h1e-1"] == cells["l1_fd_1"].experiments


def test_gradreg_cells_file_lists_outcome_logs_and_single_files(tmp_path):
    plan = make_plan(merged())
    path = tmp_path / "results" / "tables" / "table1_gradreg.cells.yaml"
    write_cells_document(cells_document(plan.tables["table1_gradreg"], path), path)
    doc = yaml.safe_load(path.read_text())
    entry = next(c for c in doc["cells"] if c["row"] == "at2")
    assert entry["dataset"] == "CIFAR-10"
    assert isinstance(entry["files"]["emp2"], list) and len(entry["files"]["emp2"]) == 4
    assert entry["files"]["hours"].endswith("model.pt")
    assert entry["files"]["omega2"].endswith("bounds.json")


@pytest.mark.parametrize(
    ("overlay", "message"),
    [
        (
            {"tables": {"table1_gradreg": {"suites": {"linf": ["pgd20_linf_cifar10"]}}}},
            "tables.table1_gradreg.suites.linf[0]: 'pgd20_linf_cifar10' is not a minimum-distance",
        ),
        (
            {"tables": {"table1_gradreg": {"bounds": {"linf": "gradreg_l2"}}}},
            "tables.table1_gradreg.bounds.linf: bounds 'gradreg_l2' are in l2, not linf",
        ),
        (
            {"tables": {"tableB6_gradreg": {"bounds": {"l2": "missing"}}}},
            "tables.tableB6_gradreg.bounds.l2: 'missing' is not defined under bounds",
        ),
        (
            {"bounds": {"gradreg_linf": {"samples": 0}}},
            "bounds.gradreg_linf: ",
        ),
    ],
)
def test_gradreg_config_errors_name_the_key(overlay, message):
    with pytest.raises(ConfigError) as err:
        make_plan(merged(overlay))
    assert str(err.value).startswith(message)
    assert "\n" not in str(err.value)


def test_table_b5_certifies_models_trained_without_noise_at_its_sigma():
    plan = make_plan(merged())
    cells = {c.row: c for c in plan.tables["tableB5_gradreg"].cells}
    (cert,) = cells["l2_fd_1"].certifications
    assert plan.certifications[cert]["sigma"] == 0.5
    assert plan.certifications[cert]["skip"] == 20
    assert plan.experiments[cells["l2_fd_1"].experiments[0]]["sigma"] is None


def _write_outcomes(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    frame = outcome_frame(rows)
    lines = [OUTCOME_HEADER] + [
        f"{r.idx}\t{r.label}\t{r.clean}\t{r.adversarial}\t{r.robust}\t{r.l2!r}\t{r.linf!r}\t0:00:01"
        for r in frame.itertuples()
    ]
    path.write_text("\n".join(lines) + "\n")
    return path


def _bound_job_images(loss: np.ndarray, grid: int) -> dict[str, np.ndarray]:
    """A bounds job's per-image statistics for 100 correct images: ``loss`` as given,
    gradient norms near 1 and a flat modulus at each of ``grid`` eps (seeded draws)."""
    rng = np.random.default_rng(0)
    return {
        "idx": np.arange(100),
        "label": np.zeros(100, dtype=np.int64),
        "correct": np.ones(100, dtype=np.int64),
        "loss": loss,
        "grad_norm": rng.uniform(0.9, 1.1, size=100),
        "modulus": rng.gumbel(0.01, 0.001, size=(100, grid)),
        "seconds": np.zeros(100),
    }


def _write_model(path, seconds: float):
    import json

    import torch

    from robustreg.model_files import MODEL_FORMAT

    path.parent.mkdir(parents=True, exist_ok=True)
    config = {"schedule": {"epochs": 3}}
    record = {"config": json.dumps(config), "train_seconds": seconds, "device": "cpu (test)"}
    torch.save({"format": MODEL_FORMAT} | record, path)
    return path


def test_robustness_table_renders_our_values_from_outcomes_bounds_and_model(tmp_path):
    """Table B.4 (outcome logs and a model) and B.6 (a bounds job) from synthetic files."""
    from robustreg.bounds import bound_summary, write_bounds
    from robustreg.tables.render import render_table

    pgd = _write_outcomes(tmp_path / "pgd" / "outcomes.tsv", [(0, 0.0, 0.0), (0, 0.5, 0.005)])
    cw = _write_outcomes(tmp_path / "cw" / "outcomes.tsv", [(0, 0.0, 0.0), (1, 0.0, 0.0)])
    cells = tmp_path / "b4.cells.yaml"
    cells.write_text(
        yaml.safe_dump(
            {
                "table": "tableB4_gradreg",
                "cells": [
                    {
                        "row": "dbp",
                        "dataset": "CIFAR-10",
                        "files": {
                            "clean": [str(pgd), str(cw)],
                            "emp2": [str(pgd), str(cw)],
                            "emp8": [str(pgd), str(cw)],
                        },
                    },
                ],
            }
        )
    )
    frame = render_table(cells, tmp_path / "b4.md", tmp_path / "b4.tex")
    ours = frame.set_index(["row", "column"])["ours"]
    # image 0 misclassified, image 1 broken at linf 0.005 (< 2/255 = 0.00784)
    assert ours[("dbp", "clean")] == 50.0
    assert ours[("dbp", "emp2")] == 100.0 and ours[("dbp", "emp8")] == 100.0
    assert math.isnan(ours[("undefended", "clean")])
    md = (tmp_path / "b4.md").read_text()
    assert "12.62" in md
    # the files are listed once for the three columns that read them, as the cells file gives
    assert f"- Double backpropagation, Dataset = CIFAR-10: `clean, emp2, emp8: {pgd}, {cw}`" in md

    # a bounds job: 10 images, loss gaps 1..10 with gradient norm 1, a flat modulus
    per_image = _bound_job_images(-np.linspace(0.1, 2.0, 100), grid=6)
    eps = [0.25, 0.5, 0.75, 1.0, 1.25, 1.5]
    summary = bound_summary(per_image, eps=eps, block=10) | {"norm": "l2", "eps": eps}
    write_bounds(tmp_path / "bounds", per_image, summary)
    model = _write_model(tmp_path / "model.pt", 7200.0)
    cells = tmp_path / "b6.cells.yaml"
    files = {f"r{int(e * 100):03d}": str(tmp_path / "bounds" / "bounds.json") for e in eps}
    cells.write_text(
        yaml.safe_dump(
            {
                "table": "tableB6_gradreg",
                "cells": [{"row": "at2", "dataset": "CIFAR-10", "files": files}],
            }
        )
    )
    frame = render_table(cells, tmp_path / "b6.md", tmp_path / "b6.tex")
    ours = frame.set_index(["row", "column"])["ours"]
    # the bound holds at eps iff gap - omega(eps) >= eps: gap = 0.1 .. 2.0 in 100 steps
    from robustreg.bounds import omega_bound_holds

    envelope = np.maximum.accumulate(summary["omega"])
    for k, e in enumerate(eps):
        certified = np.zeros(100, dtype=bool)
        for j in range(k, len(eps)):
            certified |= omega_bound_holds(
                per_image["loss"], per_image["grad_norm"], envelope[j], eps[j]
            )
        assert ours[("at2", f"r{int(e * 100):03d}")] == pytest.approx(100 * np.mean(~certified))
    assert 0 < ours[("at2", "r025")] < ours[("at2", "r150")] < 100.0
    listed = [
        line for line in (tmp_path / "b6.md").read_text().splitlines() if "bounds.json" in line
    ]
    assert listed == [
        f"- ℓ∞ 7-step AT, ε = 2/255, Dataset = CIFAR-10: `{', '.join(files)}: "
        f"{tmp_path / 'bounds' / 'bounds.json'}`"
    ]

    cells = tmp_path / "t1.cells.yaml"
    entry = {"row": "at2", "dataset": "CIFAR-10", "files": {"hours": str(model)}}
    cells.write_text(yaml.safe_dump({"table": "table1_gradreg", "cells": [entry]}))
    frame = render_table(cells, tmp_path / "t1.md", tmp_path / "t1.tex")
    assert frame.set_index(["row", "column"])["ours"][("at2", "hours")] == 2.0
    assert "measured on cpu (test)" in (tmp_path / "t1.md").read_text()


def test_l1_penalty_captions_state_the_authors_scale():
    # ||g||_1^2 / N (tulip's form, robustreg.objectives.gradient_norm) is N = 3,072 times
    # weaker on CIFAR-10 than Eq. 8 read literally; both tables with l1 rows say so
    from robustreg.tables import load_spec

    for name in ("table1_gradreg", "tableB4_gradreg"):
        caption = " ".join(load_spec(name).caption.split())
        assert "‖g‖₁²/N" in caption and "3,072 times weaker than Eq. 8" in caption, name


def test_a_bound_certifying_past_an_attacks_point_is_noted(tmp_path):
    # Proposition 2.2's bounds are estimates: on images an attack broke closer than the bound
    # certifies, the table says so (5 of the 10 attacked images here)
    from robustreg.bounds import bound_summary, write_bounds
    from robustreg.tables.render import render_table

    # gap 1 and gradient norms near 1: L-bound near 1
    per_image = _bound_job_images(np.full(100, -1.0), grid=2)
    eps = [0.5, 1.0]
    summary = bound_summary(per_image, eps=eps, block=10) | {"norm": "l2", "eps": eps}
    write_bounds(tmp_path / "bounds", per_image, summary)
    # images 0-4 broken at l2 0.05, far inside the bound; 5-9 at 5.0, beyond it
    pgd = _write_outcomes(
        tmp_path / "pgd" / "outcomes.tsv", [(0, 0.05, 0.01)] * 5 + [(0, 5.0, 1.0)] * 5
    )
    files = {"lbound": str(tmp_path / "bounds" / "bounds.json"), "empirical": [str(pgd)]}
    cells = tmp_path / "t2.cells.yaml"
    entry = {"row": "at2", "dataset": "CIFAR-10", "files": files}
    cells.write_text(yaml.safe_dump({"table": "table2_gradreg", "cells": [entry]}))
    render_table(cells, tmp_path / "t2.md", tmp_path / "t2.tex")
    md = (tmp_path / "t2.md").read_text()
    assert (
        "ℓ∞ 7-step AT, ε = 2/255: the L-bound (l2) certifies a larger distance than an attack "
        "found on 5 of 10 images, a visible violation: the bounds are estimates, not guarantees."
    ) in md


def test_heavy_tailed_fits_and_raised_omegas_are_noted(tmp_path):
    """Issue 20: a robustness table names, per row, the GEV fits with a heavy tail and the
    omega(eps) estimates it raised to keep omega nondecreasing in eps."""
    from robustreg.bounds import bound_summary, write_bounds
    from robustreg.tables.render import render_table

    per_image = _bound_job_images(-np.linspace(0.1, 2.0, 100), grid=2)
    eps = [0.5, 1.0]
    summary = bound_summary(per_image, eps=eps, block=10) | {"norm": "l2", "eps": eps}
    summary["gev"]["lipschitz"]["c"] = -0.3
    for fit in summary["gev"]["omega"]:
        fit["c"] = 0.1
    summary["omega"] = [0.02, 0.01]
    write_bounds(tmp_path / "bounds", per_image, summary)
    files = {"lbound": str(tmp_path / "bounds" / "bounds.json")}
    cells = tmp_path / "t2.cells.yaml"
    entry = {"row": "at2", "dataset": "CIFAR-10", "files": files}
    cells.write_text(yaml.safe_dump({"table": "table2_gradreg", "cells": [entry]}))
    render_table(cells, tmp_path / "t2.md", tmp_path / "t2.tex")
    md = " ".join((tmp_path / "t2.md").read_text().split())
    assert (
        "ℓ∞ 7-step AT, ε = 2/255 (l2): the GEV fit of L is heavy-tailed (shape ξ = 0.30 > 0); "
        "ω at ε = 1 is raised from 0.01 to 0.02, its estimate at a smaller ε (ω cannot "
        "decrease with ε)."
    ) in md
