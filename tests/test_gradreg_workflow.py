"""Finlay & Oberman's reports through the real `snakemake` command: the DAG with its attack and
bounds stages, one-line config errors, and a micro run of Tables 1 and 2 cut to one CIFAR-10
row and one ImageNet-shaped row (synthetic data: this checks the plumbing, not the numbers)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import yaml
from conftest import REPO, planned_jobs, snakemake, workflow_copy
from snakemake.utils import update_config

from robustreg.attacks.suite import read_outcomes
from robustreg.bounds import read_bounds
from robustreg.model_files import training_record
from robustreg.plan import make_plan, validate_config

TARGET = "reports/gradreg.md"
TABLES = ("table1_gradreg", "table2_gradreg")
ROWS = ("undefended", "imagenet_l2_1")


def _config(*overlays: str) -> dict:
    config = yaml.safe_load((REPO / "config.yaml").read_text())
    for overlay in overlays:
        update_config(config, yaml.safe_load((REPO / overlay).read_text()))
    validate_config(config, REPO / "workflow" / "schemas" / "config.schema.yaml")
    return config


def test_every_scale_plans_one_model_per_row_and_states_what_it_changes():
    paper = make_plan(_config())
    assert all(paper.tables[t].banner is None for t in TABLES)
    quick = make_plan(_config("config/quick.yaml"))
    banner = quick.tables["table2_gradreg"].banner
    assert banner.startswith("CIFAR10 rows: Quick scale") and "ImageNet rows: Quick scale" in banner
    assert "ResNet-20 in place of ResNeXt-34 (2x32)" in banner
    assert "Carlini-Wagner 5 binary-search steps of 50 (not 9 of 1,000)" in banner
    cells = {t: {c.row: c.experiments for c in quick.tables[t].cells} for t in quick.tables}
    # Table 1's lambda = 1 FD row (h = 0.1) is Table B.4's h = 0.1 row; Table 2's rows share
    # Table 1's baselines; Table B.5 smooths Table 2's models
    assert cells["table1_gradreg"]["l1_fd_1"] == cells["tableB4_gradreg"]["h1e-1"]
    assert cells["table1_gradreg"]["at8"] == cells["table2_gradreg"]["at8"]
    assert cells["tableB5_gradreg"]["l2_fd_1"] == cells["tableB6_gradreg"]["l2_fd_1"]
    # at quick scale too, the ImageNet rows train with 2 data-parallel processes
    imagenet = quick.experiments[cells["table1_gradreg"]["imagenet_l2_1"][0]]
    assert imagenet["schedule"]["processes"] == 2


@pytest.mark.parametrize(
    "overlay, message",
    [
        (
            {"bounds": {"gradreg_l2": {"block": 3}}},
            "config error: bounds.gradreg_l2.block: 3 images per block must split the 20 images",
        ),
        (
            {"evaluation": {"cifar10_gradreg": {"sample": 41}}},
            "config error: evaluation.cifar10_gradreg.sample: 41 is more than the cifar10 test",
        ),
        (
            {"tables": {"table2_gradreg": {"suites": {"l2": ["gradreg_pgd_l2", "pgd10_l2_050"]}}}},
            "config error: tables.table2_gradreg.suites.l2[1]: 'pgd10_l2_050' is not a minimum",
        ),
        (
            {"attacks": {"gradreg_logbarrier_l2": {"max_inner": 0}}},
            "config error: attacks.gradreg_logbarrier_l2.max_inner:",
        ),
    ],
)
def test_bad_config_stops_before_any_job_with_one_line(workdir, overlay, message):
    (workdir / "bad.yaml").write_text(yaml.safe_dump(overlay))
    proc = snakemake(
        workdir, "--dry-run", TARGET, "--configfile", "micro.yaml", "bad.yaml", check=False
    )
    assert proc.returncode != 0
    out = proc.stdout + proc.stderr
    lines = [line for line in out.splitlines() if line.startswith("config error:")]
    assert len(lines) == 1 and lines[0].startswith(message), out


@pytest.fixture(scope="module")
def gradreg_run(tmp_path_factory) -> Path:
    """Tables 1 and 2 cut to their undefended CIFAR-10 row and the lambda = 1 ImageNet row:
    every kind of minimum-distance attack (top-1 and top-5), both bounds norms and training
    times, on 20 synthetic CIFAR-shaped and 10 synthetic ImageNet-shaped test images."""
    workdir = workflow_copy(tmp_path_factory.mktemp("gradreg"))
    config = yaml.safe_load((workdir / "config.yaml").read_text())
    for table in TABLES:
        rows = config["tables"][table]["rows"]
        config["tables"][table]["rows"] = {k: rows[k] for k in ROWS}
    text = yaml.safe_dump(config, sort_keys=False, allow_unicode=True)
    (workdir / "config.yaml").write_text(text)
    targets = [f"reports/{table}.md" for table in TABLES]
    snakemake(workdir, "--cores", "2", *targets, "--configfile", "micro.yaml")
    return workdir


def _cells(workdir: Path, table: str) -> dict[str, dict]:
    doc = yaml.safe_load((workdir / "results" / "tables" / f"{table}.cells.yaml").read_text())
    return {cell["row"]: cell for cell in doc["cells"]}


def _row(md: str, dataset: str, label: str) -> list[str]:
    """The cells after the label of the Markdown row ``label`` in group ``dataset`` (the
    group's name is printed on its first row only)."""
    rows, group = {}, None
    for line in md.splitlines():
        if not line.startswith("| ") or line.startswith(("| Dataset", "|:-")):
            continue
        fields = [field.strip() for field in line.strip().strip("|").split("|")]
        group = fields[0] or group
        rows[group, fields[1]] = fields[2:]
    return rows[dataset, label]


def test_micro_run_fills_every_cell_of_the_configured_rows(gradreg_run):
    for table in TABLES:
        md = (gradreg_run / "reports" / f"{table}.md").read_text()
        assert md.startswith("> **CIFAR10 rows: Micro scale"), md[:200]
        assert "Attacks and bounds with cut budgets" in md
        cells = _cells(gradreg_run, table)
        assert set(cells) == set(ROWS)
        for cell in cells.values():
            assert cell["files"], cell
        # a row of the spec that the config left out is shown, without our values
        assert "| ℓ∞ 7-step AT, ε = 2/255 " in md
    # Table 1's columns: clean, two omega-bound errors, two empirical errors, training hours;
    # each configured row has ours in every one (our value is the first number of a cell)
    md = (gradreg_run / "reports" / "table1_gradreg.md").read_text()
    for dataset, label in (("CIFAR-10", "Undefended"), ("ImageNet-1k", "Squared ℓ2 norm, λ = 1")):
        fields = _row(md, dataset, label)
        assert len(fields) == 6 and all(f[0].isdigit() for f in fields), fields
    assert _row(md, "ImageNet-1k", "Undefended")[0].startswith("– (")


def test_minimum_distance_logs_cover_the_sampled_images_in_top_k(gradreg_run):
    cells = _cells(gradreg_run, "table2_gradreg")
    tables = gradreg_run / "results" / "tables"
    for row, images, attacks in (("undefended", 20, 4), ("imagenet_l2_1", 10, 3)):
        paths = cells[row]["files"]["empirical"]
        assert len(paths) == attacks
        logs = [read_outcomes(tables / path) for path in paths]
        first = logs[0]
        assert len(first) == images and first["idx"].is_unique
        for log in logs:
            assert (log["idx"] == first["idx"]).all()  # the same seeded sample for every attack
            broken = log["robust"] == 0
            # a broken image keeps a point at a positive distance in both norms, or is
            # misclassified (0 in both)
            assert ((log["l2"] > 0) == (log["linf"] > 0))[broken].all()
            assert (log.loc[~broken, ["l2", "linf"]] == 0).all().all()


def test_bounds_and_training_time_come_from_their_jobs(gradreg_run):
    tables = gradreg_run / "results" / "tables"
    cells = _cells(gradreg_run, "table1_gradreg")
    for row, top_k, images in (("undefended", 1, 20), ("imagenet_l2_1", 5, 10)):
        path = cells[row]["files"]["omega2"]  # one file: written as a string
        frame, summary = read_bounds((tables / path).parent)
        assert summary["norm"] == "linf" and summary["top_k"] == top_k
        assert len(frame) == images and math.isfinite(summary["lipschitz"])
        model = cells[row]["files"]["hours"]
        record = training_record(tables / model)
        assert record["train_seconds"] > 0 and record["device"]
    md = (gradreg_run / "reports" / "table1_gradreg.md").read_text()
    assert "Training time: wall time of our training job" in md


def test_changing_one_attack_or_bounds_setting_reruns_only_its_jobs(gradreg_run):
    targets = [f"reports/{table}.md" for table in TABLES]
    (gradreg_run / "change.yaml").write_text(
        yaml.safe_dump({"attacks": {"gradreg_cw_l2": {"steps": 6}}})
    )
    jobs = planned_jobs(gradreg_run, *targets, "--configfile", "micro.yaml", "change.yaml")
    # Carlini-Wagner is top-1 only: the CIFAR-10 row's one job, in Table 1's l-inf suite and
    # Table 2's l2 suite
    assert jobs == {"attack": 1, "table_cells": 2, "table": 2}
    (gradreg_run / "change.yaml").write_text(
        yaml.safe_dump({"bounds": {"gradreg_linf": {"samples": 2}}})
    )
    jobs = planned_jobs(gradreg_run, *targets, "--configfile", "micro.yaml", "change.yaml")
    assert jobs == {"bounds": 1, "table_cells": 1, "table": 1}
