"""Jagatap et al.'s (ATENT) reports through the real `snakemake` command: the DAG with its
attack stage, one-line config errors, and a micro run of two attacks tables."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
import yaml
from conftest import REPO, planned_jobs, snakemake, workflow_copy
from snakemake.utils import update_config

from robustreg.attacks.suite import read_outcomes
from robustreg.plan import make_plan, validate_config

TARGET = "reports/atent.md"


def _config(*overlays: str) -> dict:
    config = yaml.safe_load((REPO / "config.yaml").read_text())
    for overlay in overlays:
        update_config(config, yaml.safe_load((REPO / overlay).read_text()))
    validate_config(config, REPO / "workflow" / "schemas" / "config.schema.yaml")
    return config


def test_dry_run_plans_one_job_per_model_and_attack(workdir):
    jobs = planned_jobs(workdir, TARGET, "--configfile", "micro.yaml")
    # 22 models: Table 1 6 (SGD and Entropy-SGD shared with Table 2), Table 2 5 more, Table 3 5,
    # Table 4 5, Table 5 1 more (its ResNet-20 rows are Table 4's; at micro scale its ResNet-110
    # TRADES row is the ResNet-20 one), Table 6 none (Table 3's ATENT model). Attacks: 22 + 28 +
    # 24 + 10 + 8; the paper's "-" cells get none.
    assert jobs == {
        "dataset": 2,
        "train": 22,
        "attack": 92,
        "certify": 3,
        "table_cells": 6,
        "table": 6,
        "paper": 1,
    }


@pytest.mark.parametrize(
    "overlay, message",
    [
        (
            {"attacks": {"cw_l2_mnist": {"steps": 0}}},
            "config error: attacks.cw_l2_mnist.steps: need an integer >= 1, got 0",
        ),
        (
            {"schedules": {"mnist_adam_madry": {"momentum": 0.9}}},
            "config error: schedules.mnist_adam_madry.momentum: Adam has no momentum setting",
        ),
        (
            {"tables": {"table2_atent": {"rows": {"mart": {"attacks": {"pgd40": "benign"}}}}}},
            "config error: tables.table2_atent.rows.mart.attacks.pgd40: not a column of table",
        ),
        (
            {"tables": {"table1_atent": {"rows": {"pgd_at": {"attacks": {"cw": "cw_l2_mnist"}}}}}},
            "config error: tables.table1_atent.rows.pgd_at.attacks.cw: the paper never evaluated",
        ),
    ],
)
def test_bad_attack_config_stops_before_any_job_with_one_line(workdir, overlay, message):
    (workdir / "bad.yaml").write_text(yaml.safe_dump(overlay))
    proc = snakemake(workdir, "--dry-run", TARGET, "--configfile", "bad.yaml", check=False)
    assert proc.returncode != 0
    out = proc.stdout + proc.stderr
    lines = [line for line in out.splitlines() if line.startswith("config error:")]
    assert len(lines) == 1 and lines[0].startswith(message), out


def test_every_scale_plans_and_states_what_it_changes():
    paper = make_plan(_config())
    assert all(paper.tables[f"table{n}_atent"].banner is None for n in range(1, 7))
    quick = make_plan(_config("config/quick.yaml"))
    banner = quick.tables["table3_atent"].banner
    assert banner.startswith("Quick scale") and "ResNet-20 in place of WideResNet-34-10" in banner
    assert "attacked 50 test images" in banner
    assert "9 binary-search steps of 100" in quick.tables["table1_atent"].banner
    # one model serves every table that asks for it
    cells = {t: {c.row: c.experiments for c in quick.tables[t].cells} for t in quick.tables}
    assert cells["table1_atent"]["sgd"] == cells["table2_atent"]["sgd"]
    assert cells["table4_atent"]["atent_smooth"] == cells["table5_atent"]["atent"]
    assert cells["table3_atent"]["atent"] == cells["table6_atent"]["pgd20"]
    # methods trained without Gaussian noise carry no sigma; their certification does
    experiment = quick.experiments[cells["table5_atent"]["atent"][0]]
    assert experiment["sigma"] is None
    (cert,) = quick.tables["table5_atent"].cells[-1].certifications
    assert quick.certifications[cert]["sigma"] == 0.12


@pytest.fixture(scope="module")
def atent_run(tmp_path_factory) -> Path:
    """Table 1 cut to two rows (one with a column the paper never evaluated) and Table 6."""
    workdir = workflow_copy(tmp_path_factory.mktemp("atent"))
    # its own package copy (the Snakefile puts ./src first), so a test may edit a spec
    shutil.copytree(REPO / "src", workdir / "src", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("config.yaml", "micro.yaml"):
        config = yaml.safe_load((workdir / name).read_text())
        rows = config["tables"]["table1_atent"]["rows"]
        config["tables"]["table1_atent"]["rows"] = {k: rows[k] for k in ("pgd_at", "atent")}
        (workdir / name).write_text(yaml.safe_dump(config, sort_keys=False, allow_unicode=True))
    targets = ("reports/table1_atent.md", "reports/table6_atent.md")
    snakemake(workdir, "--cores", "2", *targets, "--configfile", "micro.yaml")
    return workdir


def _cells(workdir: Path, table: str) -> list[dict]:
    doc = yaml.safe_load((workdir / "results" / "tables" / f"{table}.cells.yaml").read_text())
    return doc["cells"]


def test_micro_run_attacks_each_model_with_each_column(atent_run):
    md = (atent_run / "reports" / "table1_atent.md").read_text()
    assert md.startswith("> **Micro scale") and "attacked 10 test images" in md
    (pgd_at,) = [line for line in md.splitlines() if line.startswith("| ℓ2 PGD-AT")]
    assert [f.strip() for f in pgd_at.strip("|").split("|")][3] == "–"  # never evaluated
    for table, columns in (("table1_atent", 4), ("table6_atent", 4)):
        for cell in _cells(atent_run, table):
            expected = columns - (cell["row"] == "pgd_at")
            assert len(cell["outcomes"]) == expected, cell
            for path in cell["outcomes"].values():
                outcomes = read_outcomes(atent_run / "results" / "tables" / path)
                assert len(outcomes) == 10
                # an image is robust only if the model classified it correctly to begin with
                assert (outcomes["robust"] <= (outcomes["clean"] == outcomes["label"])).all()
                # what broke each image: for AutoAttack, the sub-attack of its cascade
                broken = (outcomes["robust"] == 0) & (outcomes["clean"] == outcomes["label"])
                assert (outcomes["broken_by"] != "-").tolist() == broken.tolist()
                if "autoattack" in path:
                    names = set(outcomes["broken_by"]) - {"-"}
                    assert names <= {"apgd-ce", "apgd-t", "fab-t", "square"}, names


def test_early_stopped_models_record_their_epoch(atent_run):
    (atent,) = [c for c in _cells(atent_run, "table1_atent") if c["row"] == "atent"]
    experiment = Path(atent["outcomes"]["benign"]).parts[2]
    model = torch.load(
        atent_run / "results" / "models" / experiment / "model.pt", weights_only=True
    )
    assert model["selected_epoch"] == 1
    # the l2 chain's final radius, set beside the eps it starts on, per epoch (issue 20)
    log = (atent_run / "logs" / "train" / f"{experiment}.log").read_text()
    assert "l2-ATENT epoch 1: the Langevin chain ends at mean radius " in log
    assert "against the eps = 2 it starts on" in log


def test_changing_one_attack_reruns_only_its_jobs(atent_run):
    (atent_run / "change.yaml").write_text(
        yaml.safe_dump({"attacks": {"cw_l2_mnist": {"steps": 6}}})
    )
    jobs = planned_jobs(
        atent_run,
        "reports/table1_atent.md",
        "reports/table6_atent.md",
        "--configfile",
        "micro.yaml",
        "change.yaml",
    )
    # CW runs against the ATENT row only (the paper never ran it against PGD-AT)
    assert jobs == {"attack": 1, "table_cells": 1, "table": 1}


def test_editing_a_table_spec_rerenders_only_that_table(atent_run):
    spec = atent_run / "src" / "robustreg" / "tables" / "specs" / "table6_atent.yaml"
    spec.write_text(spec.read_text().replace('"Table 6:', '"Edited Table 6:', 1))
    jobs = planned_jobs(
        atent_run,
        "reports/table1_atent.md",
        "reports/table6_atent.md",
        "--configfile",
        "micro.yaml",
    )
    assert jobs == {"table": 1}
