"""Helpers for tests that drive the workflow through the real `snakemake` command."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from filelock import FileLock
from torch import nn

from robustreg.data import save_split

REPO = Path(__file__).resolve().parents[1]
# Snakemake imports every installed executor plugin when it starts, and the SLURM plugin then
# runs `scontrol show config` (to word a help text) with a 10 s timeout. Where SLURM is
# installed but not running, as after test_slurm.py stops the SLURM it started, each call
# would wait about 9 s for it; runs that do not use SLURM find a failing scontrol first.
NO_SLURM = REPO / "tests" / "no-slurm"


# The files of the end-to-end runs, longest first. `make test` runs the suite on two
# pytest-xdist workers, a file at a time each (--dist loadfile --no-loadscope-reorder): started
# first, the long files overlap each other and the short ones fill in behind them.
LONG_FIRST = (
    "test_slurm.py",
    "test_workflow.py",
    "test_adre_workflow.py",
    "test_gradreg_workflow.py",
    "test_gpu_check.py",
    "test_atent_workflow.py",
    "test_docs.py",
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    def rank(item: pytest.Item) -> int:
        name = item.path.name
        return LONG_FIRST.index(name) if name in LONG_FIRST else len(LONG_FIRST)

    items.sort(key=rank)


def workflow_copy(dest: Path) -> Path:
    """The workflow's files in a scratch folder, so runs never touch the checkout's results."""
    for name in ("Snakefile", "config.yaml"):
        shutil.copy(REPO / name, dest / name)
    for name in ("workflow", "config", "envs", "profiles"):
        shutil.copytree(REPO / name, dest / name)
    shutil.copy(REPO / "tests" / "micro.yaml", dest / "micro.yaml")
    return dest


def snakemake(
    workdir: Path, *args: str, check: bool = True, workflow_profile: str = "none"
) -> subprocess.CompletedProcess:
    """Run `snakemake` in ``workdir``; ``workflow_profile`` is passed as --workflow-profile
    (default none: no profile, so a run depends only on its arguments)."""
    env = dict(os.environ)
    # The rules call `python -m robustreg`: the interpreter running the tests must be first.
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    if not any(arg.startswith("--slurm") for arg in args) and "slurm" not in workflow_profile:
        env["PATH"] = f"{NO_SLURM}{os.pathsep}{env['PATH']}"
    proc = subprocess.run(
        [sys.executable, "-m", "snakemake", "--workflow-profile", workflow_profile, *args],
        cwd=workdir,
        env=env,
        capture_output=True,
        text=True,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"snakemake {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}")
    return proc


def planned_jobs(workdir: Path, *args: str) -> dict[str, int]:
    """Jobs per rule that a dry run plans (empty when there is nothing to do)."""
    proc = snakemake(workdir, "--dry-run", "--cores", "2", *args)
    out = proc.stdout + proc.stderr
    counts: dict[str, int] = {}
    if "Job stats:" not in out:
        assert "Nothing to be done" in out, out
        return counts
    stats = out.split("Job stats:", 1)[1]
    for line in stats.splitlines()[3:]:
        match = re.fullmatch(r"(\w+)\s+(\d+)", line.strip())
        if not match:
            break
        if match[1] != "total":
            counts[match[1]] = int(match[2])
    return counts


@pytest.fixture
def synthetic_split(tmp_path: Path) -> Path:
    """Synthetic, MNIST-shaped: 40 random uint8 images, 4 per class."""
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, size=(40, 1, 28, 28), dtype=np.uint8)
    y = np.repeat(np.arange(10), 4).astype(np.int64)
    path = tmp_path / "train.npz"
    save_split(path, x, y)
    return path


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    return workflow_copy(tmp_path)


# The consistency paper's micro run, cut to the fewest trainings that still run every method,
# every consistency loss, every table kind (seeds, by_sigma rows, the CIFAR-shaped table) and
# Figure 1: Table 2 whole (its 18 rows, which the SLURM test compares at sigma = 0.25), the other
# tables at one noise level and a few rows. 32 trainings instead of 76.
CONSISTENCY_CUTS = {
    "table3_mnist_seeds": {"sigmas": [0.25]},
    "table4_mnist_loss": {"rows": ["gaussian", "mse5", "kl5", "xent5"]},
    "table5_mnist_m": {"sigmas": [1.00]},
    "table6_mnist_lambda": {"rows": ["lbd0", "lbd1", "lbd5"]},
    "table7_cifar10": {"sigmas": [0.25], "rows": ["gaussian", "consistency", "stability1"]},
}


def cut_tables(workdir: Path, cuts: dict[str, dict]) -> None:
    """Keep, in ``workdir``'s config.yaml and micro.yaml, only the ``rows`` and ``sigmas`` that
    ``cuts`` names per table (a table's own sigmas and each kept row's). Overlays merge into the
    configuration and cannot remove rows, so the copies are edited."""
    for name in ("config.yaml", "micro.yaml"):
        config = yaml.safe_load((workdir / name).read_text())
        for table, cut in cuts.items():
            spec = config.get("tables", {}).get(table)
            if spec is None:
                continue
            if "rows" in cut and "rows" in spec:
                spec["rows"] = {k: v for k, v in spec["rows"].items() if k in cut["rows"]}
            if "sigmas" in cut:
                for entry in [spec, *spec.get("rows", {}).values()]:
                    if "sigmas" in entry:
                        entry["sigmas"] = [s for s in entry["sigmas"] if s in cut["sigmas"]]
                if name == "config.yaml" and "sigmas" not in spec:
                    spec["sigmas"] = list(cut["sigmas"])  # a table whose rows come from another
        text = yaml.safe_dump(config, sort_keys=False, allow_unicode=True)
        (workdir / name).write_text(text)


def shared_run(tmp_path_factory, worker_id: str, name: str, build) -> Path:
    """``build(folder)`` once per test session: under pytest-xdist the workers share one
    folder, the first to ask builds it and the others wait for it (a lock file beside it)."""
    if worker_id == "master":
        folder = tmp_path_factory.mktemp(name)
        build(folder)
        return folder
    root = tmp_path_factory.getbasetemp().parent
    folder, done = root / name, root / f"{name}.done"
    with FileLock(root / f"{name}.lock"):
        if not done.exists():
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir()
            build(folder)
            done.touch()
    return folder


def _consistency_micro_run(folder: Path) -> None:
    workdir = workflow_copy(folder)
    cut_tables(workdir, CONSISTENCY_CUTS)
    snakemake(workdir, "--cores", "2", "reports/consistency.md", "--configfile", "micro.yaml")


@pytest.fixture(scope="session")
def micro_run(tmp_path_factory, worker_id) -> Path:
    """Every consistency report of the micro configuration (cut: ``CONSISTENCY_CUTS``), run
    locally once per session (test_workflow.py checks it; test_slurm.py compares a SLURM run's
    Table 2 with it)."""
    return shared_run(tmp_path_factory, worker_id, "micro", _consistency_micro_run)


def lenet_experiment(epochs: int = 2, **schedule) -> dict:
    """A resolved experiment: Gaussian training of LeNet on a synthetic MNIST-shaped split,
    ``schedule`` overriding the small default schedule."""
    return {
        "data": {"dataset": "synthetic", "train_limit": None},
        "arch": "lenet_mnist",
        "num_classes": 10,
        "method": "gaussian",
        "params": {},
        "sigma": 0.25,
        "schedule": {
            "epochs": epochs,
            "batch_size": 16,
            "lr": 0.01,
            "momentum": 0.9,
            "nesterov": True,
            "weight_decay": 1e-4,
            "lr_milestones": [1],
            "lr_gamma": 0.1,
        }
        | schedule,
        "seed": 0,
    }


@contextlib.contextmanager
def killed_after_first_append(log_class):
    """The command run inside is killed (KeyboardInterrupt) right after its progress log
    (``log_class``, a ``robustreg.io.ResumableLog``) appended its first group of images."""
    append = log_class.append

    def killed(self, group):
        append(self, group)
        raise KeyboardInterrupt

    log_class.append = killed
    try:
        with pytest.raises(KeyboardInterrupt):
            yield
    finally:
        log_class.append = append


def same_weights(a: Path, b: Path) -> bool:
    wa = torch.load(a, weights_only=True)["state_dict"]
    wb = torch.load(b, weights_only=True)["state_dict"]
    return all(torch.equal(wa[k], wb[k]) for k in wa)


def train_killed_then_resumed(config: dict, split: Path, out_dir: Path, monkeypatch) -> Path:
    """Train ``config``, killed right after its first epoch's checkpoint, then run it again."""
    import robustreg.checkpoints as checkpoints_module
    import robustreg.train as train_module

    save = checkpoints_module.atomic_save

    def killed_after_first_epoch(obj, path):
        save(obj, path)
        if path.name == "checkpoint.pt":
            raise KeyboardInterrupt

    monkeypatch.setattr(checkpoints_module, "atomic_save", killed_after_first_epoch)
    with pytest.raises(KeyboardInterrupt):
        train_module.train(config, split, out_dir, progress=False)
    monkeypatch.setattr(checkpoints_module, "atomic_save", save)
    assert torch.load(out_dir / "checkpoint.pt", weights_only=True)["epoch"] == 0
    torch.manual_seed(123)  # whatever the global RNG holds now, the checkpoint restores it
    return train_module.train(config, split, out_dir, progress=False)


class FixedLogits(nn.Module):
    """A model that ignores its input's content and returns its logits parameter (one row
    per input row), recording each input: objectives' losses computed by hand from chosen
    logits."""

    def __init__(self, logits: np.ndarray):
        super().__init__()
        self.logits = nn.Parameter(torch.tensor(logits, dtype=torch.float32))
        self.inputs: list[torch.Tensor] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        assert x.shape[0] == self.logits.shape[0], (x.shape, self.logits.shape)
        self.inputs.append(x.detach().clone())
        return self.logits
