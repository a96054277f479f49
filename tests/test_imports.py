"""What a job imports (issue 19): each command loads the libraries its work needs, no more, so
that a job starts in about the time of ``import torch`` or less (benchmarks/job_start.py
measures it). Each check runs in a fresh interpreter and reads its ``sys.modules``."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import yaml
from conftest import lenet_experiment

from robustreg.certify import write_certify_log
from robustreg.data import save_split
from robustreg.train import train

WATCHED = (
    "torch",
    "torch._dynamo",
    "torchvision",
    "timm",
    "scipy.stats",
    "pandas",
    "jinja2",
    "matplotlib",
    "foolbox",
    "art",
    "pyautoattack",
)
ATTACK_LIBRARIES = {"foolbox", "art", "pyautoattack"}
LEAN = {"timm", "torchvision", "torch._dynamo"}  # what a job that trains no model never needs
MARK = "loaded:"


def loaded(code: str) -> set[str]:
    """The ``WATCHED`` modules a fresh interpreter holds after running ``code``."""
    probe = f"{code}\nimport sys\nprint({MARK!r}, *[m for m in {WATCHED!r} if m in sys.modules])"
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    (line,) = [line for line in done.stdout.splitlines() if line.startswith(MARK)]
    return set(line.split()[1:])


def command(argv: list[str]) -> str:
    return f"from robustreg.cli import main\nassert main({argv!r}) == 0"


def test_the_cli_imports_no_torch():
    assert loaded("import robustreg.cli") & {"torch", "pandas", "scipy.stats", "timm"} == set()


def test_paper_architectures_build_without_timm_torchvision_or_dynamo():
    code = "from robustreg.models import create_model\n"
    code += "for arch in ('lenet_mnist', 'cifar_resnet20', 'small_cnn_mnist'):\n"
    code += "    create_model(arch, 10)"
    modules = loaded(code)
    assert "torch" in modules
    assert modules & {"timm", "torchvision", "torch._dynamo"} == set()


def test_certificate_statistics_import_neither_torch_nor_scipy_stats():
    code = "from robustreg.certify import max_certified_radius\n"
    code += "assert max_certified_radius(0.25, 100, 0.001) > 0"
    assert loaded(code) & {"torch", "scipy.stats", "pandas"} == set()


def test_planning_imports_no_torch():
    assert loaded("import robustreg.plan") & {"torch", "scipy.stats", "timm"} == set()


def test_table_specs_import_no_renderer():
    # planning reads the specs (robustreg.tables); the renderers' libraries load to render
    assert loaded("import robustreg.tables") & set(WATCHED) == set()


def test_the_training_loop_imports_no_model_zoo_and_no_attack_library():
    modules = loaded("import robustreg.train")
    assert modules & {"timm", "torchvision", "scipy.stats", "pandas", "torch._dynamo"} == set()
    assert modules & ATTACK_LIBRARIES == set()


@pytest.fixture(scope="module")
def job_inputs(tmp_path_factory) -> dict[str, str]:
    """A trained LeNet, a test split, a certification's counts and log, its table's cells file
    and rendered report: what the jobs below read."""
    tmp = tmp_path_factory.mktemp("jobs")
    rng = np.random.default_rng(0)
    for split, size in (("train", 40), ("test", 4)):
        x = rng.integers(0, 256, size=(size, 1, 28, 28), dtype=np.uint8)
        save_split(tmp / f"{split}.npz", x, np.arange(size) % 10)
    model = train(lenet_experiment(epochs=1), tmp / "train.npz", tmp / "model", progress=False)
    counts = np.array([[0, 100] + [0] * 8])
    np.savez(
        tmp / "counts.npz",
        **{"sigma": 0.25, "n0": 100, "n": 100, "idx": [1], "label": [1], "seconds": [0.1]},
        **{"counts0": counts, "counts": counts},
    )
    write_certify_log(tmp / "certify.tsv", [1], [1], [1], [0.5], [0.1])
    cell = {"row": "gaussian", "sigma": 0.25, "log": str(tmp / "certify.tsv")}
    cells = tmp / "cells.yaml"
    cells.write_text(yaml.safe_dump({"table": "table2_mnist", "cells": [cell]}))
    (tmp / "report.md").write_text("## Table 2\n")
    return {
        "tmp": str(tmp),
        "model": str(model),
        "test": str(tmp / "test.npz"),
        "cells": str(cells),
        "document": json.dumps({"table": "table2_mnist", "cells": [cell]}),
    }


def jobs(inputs: dict[str, str]) -> dict[str, list[str]]:
    tmp, model, test, cells = inputs["tmp"], inputs["model"], inputs["test"], inputs["cells"]
    cw = {"kind": "cw_l2", "eps": 2.0, "binary_search_steps": 1, "steps": 1, "stepsize": 0.01}
    pgd = {"kind": "pgd", "norm": "l2", "eps": 2.0, "steps": 1, "step_size": 0.25}
    one_image = ["--model", model, "--data", test, "--max-images", "1", "--no-progress"]
    experiment = json.dumps(lenet_experiment(epochs=1))
    return {
        "train": ["train", "--config-json", experiment, "--data", f"{tmp}/train.npz"]
        + ["--out-dir", f"{tmp}/train", "--no-progress"],
        "certify": ["certify", *one_image, "--sigma", "0.25", "--n0", "10", "--n", "20"]
        + ["--out-dir", f"{tmp}/certify"],
        "attack pgd": ["attack", *one_image, "--attack-json", json.dumps(pgd)]
        + ["--out-dir", f"{tmp}/pgd"],
        "attack cw_l2": ["attack", *one_image, "--attack-json", json.dumps(cw)]
        + ["--out-dir", f"{tmp}/cw"],
        "tcertify": ["tcertify", "--counts", f"{tmp}/counts.npz", "--alpha", "0.001"]
        + ["--out", f"{tmp}/tcertify.tsv"],
        "cells": ["cells", "--json", inputs["document"], "--out", f"{tmp}/cells2.yaml"],
        "table": ["table", "--cells", cells, "--md", f"{tmp}/t.md", "--tex", f"{tmp}/t.tex"]
        + ["--logs-root", tmp],
        "figure": ["figure", "--spec", "figure1_mnist", "--cells", cells, "--logs-root", tmp]
        + [f"--{kind}={tmp}/f.{kind}" for kind in ("md", "tex", "pdf", "png")],
        "index": ["index", "--title", "Index", "--out", f"{tmp}/index.md", f"{tmp}/report.md"],
    }


# (job, modules it must load, modules it must not)
EXPECTED = [
    # torch.optim imports torch._dynamo: training is the one job that loads it
    ("train", {"torch"}, ATTACK_LIBRARIES | {"timm", "torchvision", "scipy.stats", "pandas"}),
    ("certify", {"torch"}, ATTACK_LIBRARIES | LEAN | {"scipy.stats", "pandas"}),
    ("attack pgd", {"torch"}, ATTACK_LIBRARIES | LEAN),
    ("attack cw_l2", {"torch", "foolbox"}, {"art", "pyautoattack", "timm"}),
    ("tcertify", set(), {"torch", "scipy.stats", "pandas"}),
    ("cells", set(), {"torch", "pandas", "jinja2", "matplotlib"}),
    ("table", {"pandas", "jinja2"}, {"torch", "matplotlib"}),
    ("figure", {"matplotlib"}, {"torch"}),
    ("index", set(), {"torch", "pandas", "jinja2", "matplotlib"}),
]


@pytest.mark.parametrize(("job", "needed", "unneeded"), EXPECTED, ids=[e[0] for e in EXPECTED])
def test_a_job_imports_what_its_command_needs(job_inputs, job, needed, unneeded):
    modules = loaded(command(jobs(job_inputs)[job]))
    assert needed <= modules
    assert modules & unneeded == set()
