"""The GPU check (benchmarks/gpu_check.py): its rates in the cost command's format, and its
CPU smoke mode, which runs every step of the GPU run at tiny sizes so that it cannot rot."""

from __future__ import annotations

import datetime
import json
import subprocess
import sys
from pathlib import Path

import pytest

from robustreg.cost import load_rates, write_rates

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "benchmarks"))

import gpu_check  # noqa: E402  (a script of benchmarks/, not a package module)


def test_measured_rates_are_written_in_the_cost_commands_format(tmp_path):
    env = {"gpu": "NVIDIA H200", "torch": "2.11.0+cu130"}
    rates = {
        "cifar_resnet110": {"input": [3, 32, 32], "forward": {"batch_size": 400, "fp32": 2.5e4}},
        "imagenet_resnet50": {"input": [3, 224, 224], "forward": {"batch_size": 400, "bf16": 1e4}},
    }
    train = {
        "arch": "cifar_resnet110",
        "batch_size": 256,
        "methods": {"gaussian": 4466.3, "gradient_norm_dbp": 1405.5},
        "method_precision": {"gaussian": "bf16", "gradient_norm_dbp": "bf16"},
        "settings": {
            "gaussian": {"params": {}},
            "gradient_norm_dbp": {"params": {"norm": "l2", "lam": 0.1, "method": "dbp"}},
        },
    }
    started = datetime.datetime(2026, 12, 4, tzinfo=datetime.UTC)
    write_rates(tmp_path / "r.yaml", gpu_check.rates_document(env, started, rates, train))
    doc = load_rates(tmp_path / "r.yaml")
    assert doc["date"] == "2026-12-04" and doc["gpu"] == "NVIDIA H200"
    runs = doc["archs"]["cifar_resnet110"]["train"]
    assert runs["gradient_norm_dbp"]["method"] == "gradient_norm"
    assert runs["gaussian"]["images_per_s"] == 4466.3
    # the same network as imagenet_resnet50, under Finlay & Oberman's initialization
    assert doc["archs"]["imagenet_resnet50_bn0"]["forward"]["bf16"] == 1e4


def test_the_repositorys_measured_rates_load():
    doc = load_rates(REPO / "benchmarks" / "gpu_rates.yaml")
    assert doc["gpu"] == "NVIDIA H200" and "cifar_resnet110" in doc["archs"]


@pytest.mark.slow
def test_cpu_smoke_mode_runs_every_step(tmp_path):
    proc = subprocess.run(
        [
            sys.executable,
            str(REPO / "benchmarks" / "gpu_check.py"),
            "--cpu",
            "--out",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
    )
    result = json.loads((tmp_path / "gpu_check.json").read_text())
    failed = {s["name"]: s["error"] for s in result["steps"] if s["status"] != "ok"}
    assert proc.returncode == 0 and not failed, (failed, proc.stdout[-2000:])
    names = {s["name"] for s in result["steps"]}
    # every kind of job: one training per method family, certify and T-CERTIFY, each attack
    # kind, bounds, and the Snakemake report
    assert {"train/gaussian/lenet_mnist", "train/gradient_norm_fd/lenet_mnist"} <= names
    assert {"certify/bf16/lenet_mnist", "tcertify/lenet_mnist", "bounds"} <= names
    assert {"attack/autoattack", "attack/boundary_min", "snakemake/micro_table2"} <= names
    assert "# GPU check (cpu smoke)" in (tmp_path / "gpu_check.md").read_text()
