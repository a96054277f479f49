"""Feng et al.'s (ADRE) reports through the real `snakemake` command: the DAG, and a micro run
with a synthetic ImageNet-shaped image folder trained data-parallel (gloo) by torchrun."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import cut_tables, planned_jobs, snakemake, workflow_copy

from robustreg.certify import read_certify_log

TARGET = "reports/adre.md"


def test_dry_run_plans_each_model_once(workdir):
    jobs = planned_jobs(workdir, TARGET)
    # Table 1: 4 + 12 CIFAR-10 and 3 + 6 ImageNet models; Figure 1: 6 + 6; Figure 2 reuses
    # two Table 1 models and their counts, adding two T-CERTIFY logs at each level.
    assert jobs == {
        "dataset": 2,
        "train": 37,
        "certify": 37,
        "tcertify": 4,
        "table_cells": 3,
        "table": 3,
        "figure": 2,
        "paper": 1,
    }


def test_missing_imagenet_folder_stops_at_the_dataset_job_with_one_line(workdir):
    proc = snakemake(workdir, "--cores", "2", "results/data/imagenet/train.npz", check=False)
    assert proc.returncode != 0
    log = (workdir / "logs" / "data" / "imagenet.log").read_text().strip().splitlines()
    assert len(log) == 1 and "root" in log[0], log


# Every report, every ADRE method (regularized and adversarial), SmoothAdv and T-CERTIFY on
# both datasets, at one noise level: 8 trainings (4 data-parallel) instead of 37.
ADRE_CUTS = {
    "table1_adre": {
        "rows": ["cifar_basic", "cifar_adre_s050_l01", "imagenet_basic", "imagenet_adre_s050_l005"],
        "sigmas": [0.50],
    },
    "figure1_adre_models": {"sigmas": [0.50]},
}


@pytest.fixture(scope="module")
def adre_run(tmp_path_factory) -> Path:
    workdir = workflow_copy(tmp_path_factory.mktemp("adre"))
    cut_tables(workdir, ADRE_CUTS)
    snakemake(workdir, "--cores", "2", TARGET, "--configfile", "micro.yaml")
    return workdir


def _cells(workdir: Path, table: str) -> list[dict]:
    doc = yaml.safe_load((workdir / "results" / "tables" / f"{table}.cells.yaml").read_text())
    return doc["cells"]


def test_micro_run_renders_every_report_with_every_cell(adre_run):
    for name in ("table1_adre", "figure1_adre_models", "figure2_adre_models"):
        md = (adre_run / "reports" / f"{name}.md").read_text()
        assert md.startswith("> **"), name  # reduced scale says so
        assert "synthetic ImageNet-shaped dataset (NOT ImageNet images)" in md
        for cell in _cells(adre_run, name):
            log = adre_run / "results" / "tables" / cell["log"]
            assert len(read_certify_log(log)) > 0, log
    for figure in ("figure1_adre", "figure2_adre"):
        assert (adre_run / "reports" / "figures" / f"{figure}.png").stat().st_size > 0
    index = (adre_run / "reports" / "adre.md").read_text()
    assert all(f"{name}.md" in index for name in ("table1_adre", "figure1_adre", "figure2_adre"))


def test_tcertify_reads_the_same_counts_and_never_certifies_less(adre_run):
    cells = {c["row"]: c for c in _cells(adre_run, "figure2_adre_models")}
    for dataset in ("cifar", "imagenet"):
        certify = adre_run / "results" / "tables" / cells[f"{dataset}_certify"]["log"]
        tcertify = adre_run / "results" / "tables" / cells[f"{dataset}_tcertify"]["log"]
        assert certify.parent == tcertify.parent  # one certification, one set of counts
        ours, theirs = read_certify_log(tcertify), read_certify_log(certify)
        assert np.array_equal(ours["idx"], theirs["idx"])
        certified = theirs["predict"] >= 0
        assert np.all(ours["radius"][certified] >= theirs["radius"][certified] - 1e-12)
        # the sound variant (alpha split over the grid) never certifies more than the paper's
        sound = read_certify_log(
            adre_run / "results" / "tables" / cells[f"{dataset}_tcertify_sound"]["log"]
        )
        assert Path(cells[f"{dataset}_tcertify_sound"]["log"]).name == "tcertify_bonferroni.tsv"
        assert np.all(sound["radius"] <= ours["radius"] + 1e-12)
    tlog = next((adre_run / "logs" / "tcertify_bonferroni").rglob("*.log"))
    assert tlog.exists()
    figure = (adre_run / "reports" / "figure2_adre.md").read_text()
    assert "holds at level α + 0.9α = 1.9α" in " ".join(figure.split())
    assert "Our certified accuracy (fraction) at the radii of the table's columns:" in figure
    assert "- (a) CIFAR-10, T-CERTIFY (sound): " in figure


def test_imagenet_trains_data_parallel_through_torchrun(adre_run):
    logs = sorted((adre_run / "logs" / "train").glob("imagenet-*.log"))
    assert len(logs) == 4  # Table 1's two ImageNet rows, Figure 1's two
    text = logs[0].read_text()
    assert "rank 0 of 2, gloo" in text and "rank 1 of 2, gloo" in text, text[-2000:]
    folder = next((adre_run / "results" / "data").glob("imagenet-synthetic-*"))
    assert len(list((folder / "folder" / "train").iterdir())) == 6  # class folders (micro.yaml)


def test_changing_the_tcertify_grid_recomputes_only_tcertify(adre_run):
    name = "grid.yaml"
    (adre_run / name).write_text(yaml.safe_dump({"tcertify": {"grid": [0.5, 1.0]}}))
    jobs = planned_jobs(adre_run, TARGET, "--configfile", "micro.yaml", name)
    assert jobs == {"tcertify": 4, "table_cells": 1, "table": 1, "figure": 1, "paper": 1}
