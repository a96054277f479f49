"""The DAG through the real `snakemake` command: job counts, sharing, bad input, a micro run."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from conftest import NO_SLURM, planned_jobs, snakemake
from snakemake.utils import update_config

from robustreg.plan import make_plan

TARGET = "reports/table2_mnist.md"


def overlay(workdir: Path, name: str, content: dict) -> str:
    (workdir / name).write_text(yaml.safe_dump(content))
    return name


def test_dry_run_plans_18_trainings_and_18_certifications(workdir):
    jobs = planned_jobs(workdir, TARGET)
    assert jobs == {"dataset": 1, "train": 18, "certify": 18, "table_cells": 1, "table": 1}


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        ("reports/table1_smoothadv.md", {"table_cells": 1, "table": 1}),
        ("reports/table3_mnist_seeds.md", {"dataset": 1, "train": 90, "certify": 90}),
        ("reports/table4_mnist_loss.md", {"dataset": 1, "train": 9, "certify": 9}),
        ("reports/table5_mnist_m.md", {"dataset": 1, "train": 9, "certify": 9}),
        ("reports/table6_mnist_lambda.md", {"dataset": 1, "train": 9, "certify": 9}),
        ("reports/table7_cifar10.md", {"dataset": 1, "train": 21, "certify": 21}),
        ("reports/figure1_mnist.md", {"dataset": 1, "train": 18, "certify": 18, "figure": 1}),
    ],
)
def test_dry_run_of_each_table_plans_its_jobs(workdir, target, expected):
    jobs = planned_jobs(workdir, target)
    if "figure" not in expected and "table" not in expected:
        expected = expected | {"table_cells": 1, "table": 1}
    if "figure" in expected:
        expected = expected | {"table_cells": 1}
    assert jobs == expected


def test_all_consistency_tables_train_each_distinct_config_once(workdir):
    jobs = planned_jobs(workdir, "reports/consistency.md")
    # 131 distinct configs (counted by hand in test_plan.py) for 18 + 90 + 9 + 9 + 9 + 21 cells.
    assert jobs["train"] == 131
    assert jobs["certify"] == 131
    assert jobs["dataset"] == 2
    assert (jobs["table"], jobs["figure"], jobs["paper"]) == (7, 1, 1)


def test_two_tables_asking_for_the_same_models_share_them(workdir):
    config = yaml.safe_load((workdir / "config.yaml").read_text())
    twin = config["tables"]["table2_mnist"] | {"spec": "table2_mnist"}
    name = overlay(workdir, "twin.yaml", {"tables": {"table2_twin": twin}})
    jobs = planned_jobs(workdir, TARGET, "reports/table2_twin.md", "--configfile", name)
    assert jobs["train"] == 18
    assert jobs["certify"] == 18
    assert jobs["table"] == 2


def test_bf16_certification_is_its_own_result_and_passed_to_the_command(workdir):
    name = overlay(workdir, "bf16.yaml", {"certify": {"mnist": {"precision": "bf16"}}})
    proc = snakemake(workdir, "--dry-run", "--printshellcmds", "--cores", "1", TARGET)
    fp32 = set(re.findall(r"results/certify/\S+/counts\.npz", proc.stdout))
    proc = snakemake(
        workdir, "--dry-run", "--printshellcmds", "--cores", "1", TARGET, "--configfile", name
    )
    bf16 = set(re.findall(r"results/certify/\S+/counts\.npz", proc.stdout))
    assert len(fp32) == len(bf16) == 18 and not fp32 & bf16
    assert proc.stdout.count("--precision bf16") == 18


@pytest.mark.parametrize(
    ("content", "key"),
    [
        ({"tables": {"table2_mnist": {"rows": {"gaussian": {"method": "gausian"}}}}}, "method"),
        ({"tables": {"table2_mnist": {"sigmas": [0.25, 0.0]}}}, "sigmas"),
        ({"certify": {"mnist": {"alpah": 0.01}}}, "alpah"),
        ({"schedules": {"mnist": {"epochs": -1}}}, "epochs"),
        ({"tables": {"table2_mnist": {"rows": {"macer": {"params": {"gama": 8}}}}}}, "gama"),
        # strings that reach an id, a path or a command line
        ({"tables": {"table2_mnist": {"arch": "lenet_mnist$(touch PWNED)"}}}, "arch"),
        ({"certify": {"mnist;touch PWNED": {"n": 1}}}, "certify"),
        ({"tables": {"table2_mnist": {"sigmas": [float("inf")]}}}, "sigmas"),
        ({"certify": {"mnist": {"alpha": float("nan")}}}, "alpha"),
        ({"seed": 10**23}, "seed"),
        ({"certify": {"mnist": {"batch_size": 10**12}}}, "batch_size"),
        ({"certify": {"mnist": {"precision": "fp16"}}}, "precision"),
    ],
)
def test_bad_config_is_refused_before_any_job_naming_the_key(workdir, content, key):
    name = overlay(workdir, "bad.yaml", content)
    proc = snakemake(workdir, "--cores", "1", TARGET, "--configfile", name, check=False)
    out = proc.stderr + proc.stdout
    assert proc.returncode != 0
    assert "config error: " in out and key in out, out
    assert "Traceback" not in out
    assert not (workdir / "results").exists()
    assert not (workdir / "PWNED").exists()


def test_missing_required_key_is_named(workdir):
    config = yaml.safe_load((workdir / "config.yaml").read_text())
    del config["certify"]["mnist"]["n0"]
    (workdir / "config.yaml").write_text(yaml.safe_dump(config))
    proc = snakemake(workdir, "--cores", "1", TARGET, check=False)
    assert proc.returncode != 0
    assert "'n0' is a required property" in proc.stderr + proc.stdout


def test_no_network_and_no_files_stops_before_training_naming_both_remedies(workdir):
    proc = snakemake(workdir, "--cores", "1", TARGET, check=False)
    assert proc.returncode != 0
    message = (workdir / "logs" / "data" / "mnist.log").read_text()
    assert "connect this machine to the network" in message
    assert "data.mnist.files" in message
    assert not (workdir / "results" / "models").exists()


@pytest.mark.slow
def test_micro_run_renders_every_consistency_report(micro_run):
    reports = micro_run / "reports"
    index = (reports / "consistency.md").read_text()
    for name in (
        "table1_smoothadv",
        "table2_mnist",
        "table3_mnist_seeds",
        "table4_mnist_loss",
        "table5_mnist_m",
        "table6_mnist_lambda",
        "table7_cifar10",
        "figure1_mnist",
    ):
        assert (reports / f"{name}.md").is_file() and (reports / f"{name}.tex").is_file()
        assert f"]({name}.md)" in index
    # conftest.CONSISTENCY_CUTS: Table 2's 18, Table 3's seed 1 at sigma = 0.25 (6), Table 4's
    # MSE and KL rows (2), Table 5's m = 4 and 8 at sigma = 1 (2), Table 6's lambda = 1 (1) and
    # Table 7's three rows at sigma = 0.25 (3): the others are Table 2's models
    assert len(list((micro_run / "logs" / "train").glob("*.log"))) == 32
    assert (reports / "figures" / "figure1_mnist.png").stat().st_size > 0
    assert (reports / "figures" / "figure1_mnist.pdf").stat().st_size > 0
    table7 = (reports / "table7_cifar10.md").read_text()
    assert "synthetic CIFAR10-shaped dataset (NOT CIFAR10 images)" in table7
    assert " ± " in (reports / "table3_mnist_seeds.md").read_text()
    table1 = (reports / "table1_smoothadv.md").read_text()
    assert "PGD" in table1 and "0.996" in table1


@pytest.mark.slow
def test_micro_run_fills_all_18_rows(micro_run):
    markdown = (micro_run / TARGET).read_text()
    assert "Micro scale, not comparable with the paper's numbers" in markdown
    rows = [line for line in markdown.splitlines() if re.match(r"\|.*\(\d+\.\d+\)", line)]
    assert len(rows) == 18
    assert not any("–" in row for row in rows)
    assert (micro_run / "reports" / "table2_mnist.tex").exists()


@pytest.mark.slow
def test_changing_one_hyperparameter_reruns_only_its_row(micro_run):
    assert planned_jobs(micro_run, TARGET, "--configfile", "micro.yaml") == {}
    name = overlay(
        micro_run,
        "changed.yaml",
        {
            "tables": {
                "table2_mnist": {
                    "rows": {
                        "consistency": {
                            "by_sigma": [
                                {"sigma": 0.5, "params": {"lbd": 5.0}},
                                {"sigma": 1.0, "params": {"lbd": 7.0}},
                            ]
                        }
                    }
                }
            }
        },
    )
    jobs = planned_jobs(micro_run, TARGET, "--configfile", "micro.yaml", name)
    assert jobs == {"train": 1, "certify": 1, "table_cells": 1, "table": 1}


@pytest.mark.slow
def test_html_report_holds_every_table_and_figure(micro_run):
    snakemake(
        micro_run,
        "--cores",
        "1",
        "--configfile",
        "micro.yaml",
        "--report",
        "report.html",
        "reports/consistency.md",
    )
    report = (micro_run / "report.html").read_text()
    config = yaml.safe_load((micro_run / "config.yaml").read_text())
    reports = config["papers"]["consistency"]["reports"]
    tables = [name for name in reports if not name.startswith("figure")]
    for name in tables:
        assert f"{name}.html" in report
        assert (micro_run / "reports" / f"{name}.html").read_text().count("<table>") == 1
    assert "figure1_mnist.png" in report
    # the captions under workflow/report/ were rendered, with their wildcards filled in
    assert "certified accuracy against radius" in report
    assert "scale: micro" in report


@pytest.mark.slow
def test_a_failed_cell_job_withdraws_the_report_it_leaves_stale(micro_run, tmp_path):
    """A diverged training under --keep-going leaves its table unrendered: the report of the
    earlier run must not stay in reports/ looking current."""
    workdir = tmp_path / "run"
    shutil.copytree(micro_run, workdir, symlinks=True)
    report = workdir / TARGET
    assert report.exists()
    config = yaml.safe_load((workdir / "config.yaml").read_text())
    update_config(config, yaml.safe_load((workdir / "micro.yaml").read_text()))
    diverging = config["schedules"]["mnist"] | {"lr": 1.0e12}
    name = overlay(
        workdir,
        "diverge.yaml",
        {
            "schedules": {"mnist_diverging": diverging},
            "tables": {"table2_mnist": {"rows": {"gaussian": {"schedule": "mnist_diverging"}}}},
        },
    )
    proc = snakemake(
        workdir,
        TARGET,
        "--cores",
        "2",
        "--keep-going",
        "--configfile",
        "micro.yaml",
        name,
        check=False,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0, out
    assert "diverged, no model written" in "".join(
        p.read_text() for p in (workdir / "logs" / "train").glob("*.log")
    )
    assert "removed reports/table2_mnist.md, reports/table2_mnist.tex" in out, out
    assert not report.exists() and not report.with_suffix(".tex").exists()


@pytest.mark.slow
def test_killed_snakemake_costs_a_finished_training_seconds_not_a_retraining(workdir):
    """kill -9 of Snakemake while a training runs: the training finishes unseen, Snakemake's
    --rerun-incomplete then deletes its model and runs it again, and the job rewrites the
    model from its final checkpoint without training an epoch."""
    config = yaml.safe_load((workdir / "config.yaml").read_text())
    update_config(config, yaml.safe_load((workdir / "micro.yaml").read_text()))
    long = {"schedules": {"mnist": {"epochs": 40}}}
    update_config(config, long)
    name = overlay(workdir, "long.yaml", long)
    cells = make_plan(config).tables["table2_mnist"].cells
    exp = next(c for c in cells if (c.row, c.sigma) == ("gaussian", 0.25)).experiments[0]
    folder = workdir / "results" / "models" / exp
    target = f"results/models/{exp}/model.pt"
    args = [target, "--cores", "1", "--configfile", "micro.yaml", name]
    env = dict(
        os.environ,
        PATH=f"{NO_SLURM}{os.pathsep}{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
    )
    command = [sys.executable, "-m", "snakemake", "--workflow-profile", "none", *args]
    run = subprocess.Popen(
        command, cwd=workdir, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.monotonic() + 300
    while not (folder / "checkpoint.pt").exists():  # the first epoch is done
        assert run.poll() is None and time.monotonic() < deadline, "training never started"
        time.sleep(0.2)
    run.kill()
    run.wait()
    while not (folder / "model.pt").exists():  # the orphaned job finishes by itself
        assert time.monotonic() < deadline, "the orphaned training did not finish"
        time.sleep(0.5)
    time.sleep(1)
    finished = (folder / "model.pt").read_bytes()

    snakemake(workdir, *args, "--unlock")  # a killed Snakemake leaves its lock behind
    proc = snakemake(workdir, *args, "--rerun-incomplete")
    out = proc.stdout + proc.stderr
    assert "rule train:" in out, out  # Snakemake did rerun it ...
    log = (workdir / "logs" / "train" / f"{exp}.log").read_text()
    assert "restored model.pt and history.csv from the final checkpoint, no epoch trained" in log
    assert (folder / "model.pt").read_bytes() == finished  # ... in seconds, to the same model
