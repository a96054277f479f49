"""Learning-rate schedules, and data-parallel training over several processes.

The data-parallel tests run real process groups on the CPU (gloo): through the CLI, which
starts its ranks with torchrun, and, where a test must control what each rank computes,
as two processes that ``torch.multiprocessing`` spawns around the library's ``train``.
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import ClassVar

import numpy as np
import pandas as pd
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from conftest import same_weights, train_killed_then_resumed

from robustreg.cli import main
from robustreg.data import save_split
from robustreg.model_files import load_model
from robustreg.objectives.base import REGISTRY, Objective
from robustreg.optim import lr_schedule
from robustreg.train import TrainingDiverged, train

K = 10


def _schedule(**changes) -> dict:
    return {
        "epochs": 3,
        "batch_size": 32,
        "lr": 0.01,
        "momentum": 0.9,
        "nesterov": True,
        "weight_decay": 1e-4,
        "lr_milestones": [2],
        "lr_gamma": 0.1,
    } | changes


def _config(method: str = "gaussian", **schedule) -> dict:
    return {
        "data": {"dataset": "synthetic", "train_limit": None},
        "arch": "lenet_mnist",
        "num_classes": K,
        "method": method,
        "params": {},
        "sigma": 0.25,
        "schedule": _schedule(**schedule),
        "seed": 0,
    }


def _split(path: Path, num: int) -> Path:
    """``num`` random MNIST-shaped images, classes in turn."""
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, size=(num, 1, 28, 28), dtype=np.uint8)
    save_split(path, x, (np.arange(num) % K).astype(np.int64))
    return path


def _epoch_lrs(schedule: dict) -> list[float]:
    """The learning rate of every epoch, as the training loop steps the scheduler."""
    param = torch.zeros(1, requires_grad=True)
    optimizer = torch.optim.SGD([param], lr=schedule["lr"])
    scheduler = lr_schedule(optimizer, schedule)
    lrs = []
    for _ in range(schedule["epochs"]):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return lrs


# --- learning-rate schedules ---------------------------------------------------------------------


def test_cosine_schedule_with_warmup_follows_nvidias_per_epoch_formula():
    # Feng et al.'s ImageNet schedule: 50 epochs, 8 of warm-up, lr 0.1.
    lrs = _epoch_lrs(_schedule(epochs=50, lr=0.1, lr_decay="cosine", warmup_epochs=8))
    expected = [0.1 * (e + 1) / 8 for e in range(8)]
    expected += [0.1 * 0.5 * (1 + math.cos(math.pi * (e - 8) / 42)) for e in range(8, 50)]
    assert lrs == pytest.approx(expected, rel=1e-12)
    assert lrs[0] == pytest.approx(0.0125)
    assert lrs[7] == pytest.approx(0.1) and lrs[8] == pytest.approx(0.1)
    assert lrs[29] == pytest.approx(0.05)
    assert 0 < lrs[49] < 1e-3


def test_cosine_schedule_whose_warmup_is_every_epoch():
    # micro scale: 1 epoch, 1 of warm-up; the scheduler still steps past the last epoch
    assert _epoch_lrs(_schedule(epochs=1, lr=0.1, lr_decay="cosine", warmup_epochs=1)) == [
        pytest.approx(0.1)
    ]


def test_step_schedule_with_warmup_and_the_default_schedule():
    lrs = _epoch_lrs(_schedule(epochs=10, lr=0.1, warmup_epochs=2, lr_milestones=[5, 8]))
    assert lrs == pytest.approx([0.05, 0.1, 0.1, 0.1, 0.1, 0.01, 0.01, 0.01, 0.001, 0.001])
    # no new key: the scheduler of every existing config, MultiStepLR, unchanged
    param = torch.zeros(1, requires_grad=True)
    optimizer = torch.optim.SGD([param], lr=0.1)
    assert type(lr_schedule(optimizer, _schedule())) is torch.optim.lr_scheduler.MultiStepLR
    assert _epoch_lrs(_schedule(epochs=4, lr_milestones=[1, 3])) == [0.01, 0.001, 0.001, 0.0001]


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"lr_decay": "linear"}, "schedule.lr_decay"),
        ({"warmup_epochs": -1}, "schedule.warmup_epochs"),
        ({"warmup_epochs": 1.5}, "schedule.warmup_epochs"),
    ],
)
def test_bad_schedule_keys_are_refused(changes, message):
    param = torch.zeros(1, requires_grad=True)
    with pytest.raises(ValueError, match=message):
        lr_schedule(torch.optim.SGD([param], lr=0.1), _schedule(**changes))


def test_cosine_schedule_resumes_from_a_checkpoint(tmp_path, monkeypatch):
    split = _split(tmp_path / "train.npz", 40)
    config = _config(lr=0.1, lr_decay="cosine", warmup_epochs=1, batch_size=16)
    full = train(config, split, tmp_path / "full", progress=False)
    resumed = train_killed_then_resumed(config, split, tmp_path / "resumed", monkeypatch)
    assert same_weights(full, resumed)
    history = pd.read_csv(tmp_path / "full" / "history.csv")
    assert history["lr"].tolist() == pytest.approx([0.1, 0.1, 0.05])


# --- the world size ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("processes", "env", "device", "message"),
    [
        (1, {"WORLD_SIZE": "2", "LOCAL_RANK": "0"}, None, "schedule.processes is 1 but torchrun"),
        (3, {"WORLD_SIZE": "2", "LOCAL_RANK": "0"}, None, "schedule.processes is 3 but torchrun"),
        (0, {}, None, "schedule.processes: need an integer >= 1"),
        (2, {"WORLD_SIZE": "2", "LOCAL_RANK": "0"}, "cuda:1", "--device cuda:1 names one GPU"),
    ],
    ids=["1-of-2", "3-of-2", "zero", "one-gpu"],
)
def test_cli_refuses_a_world_size_other_than_the_schedules(
    tmp_path, monkeypatch, capsys, processes, env, device, message
):
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    args = ["train", "--config-json", json.dumps(_config(processes=processes)),
            "--data", str(tmp_path / "none.npz"), "--out-dir", str(tmp_path / "o")]  # fmt: skip
    assert main(args + (["--device", device] if device else [])) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]
    assert not (tmp_path / "o").exists()


def test_library_refuses_processes_without_a_process_group(tmp_path):
    with pytest.raises(ValueError, match="schedule.processes is 2 but this process is one of 1"):
        train(_config(processes=2), _split(tmp_path / "t.npz", 40), tmp_path / "o")


# --- two processes through the CLI (torchrun) ----------------------------------------------------


def _cli(config: dict, split: Path, out: Path, log: Path) -> subprocess.Popen:
    """``python -m robustreg train`` in a session of its own (torchrun's agent and ranks)."""
    args = [sys.executable, "-m", "robustreg", "train", "--config-json", json.dumps(config),
            "--data", str(split), "--out-dir", str(out), "--threads", "2",
            "--no-progress"]  # fmt: skip
    with open(log, "wb") as fh:
        return subprocess.Popen(args, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True)


def _wait(proc: subprocess.Popen, log: Path, timeout: float = 120) -> int:
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        pytest.fail(f"{log.name}: still running after {timeout} s:\n{log.read_text()}")


@dataclass
class TwoProcessRuns:
    full: Path  # out dir of an uninterrupted run
    killed: Path  # out dir of a run SIGKILLed (agent and ranks) after a checkpoint, then rerun
    checkpoint: dict  # the checkpoint the killed run left
    config: dict


@pytest.fixture(scope="module")
def two_process_runs(tmp_path_factory) -> TwoProcessRuns:
    # 480 images in global batches of 32: 15 steps of 16 images per rank and epoch, about
    # 0.4 s an epoch. The kill comes half an epoch after the first checkpoint.
    tmp = tmp_path_factory.mktemp("ddp")
    split = _split(tmp / "train.npz", 480)
    config = _config(epochs=4, processes=2)
    full, killed = tmp / "full", tmp / "killed"
    uninterrupted = _cli(config, split, full, tmp / "full.log")
    proc = _cli(config, split, killed, tmp / "killed.log")
    try:
        ckpt_path = killed / "checkpoint.pt"
        deadline = time.monotonic() + 90
        while not ckpt_path.exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"no checkpoint:\n{(tmp / 'killed.log').read_text()}")
            time.sleep(0.01)
        first = json.loads(torch.load(ckpt_path, weights_only=True)["history"])
        time.sleep(first[0]["seconds"] / 2)
        assert proc.poll() is None, "the run ended before it could be killed; make it longer"
        os.killpg(proc.pid, signal.SIGKILL)  # the agent and both ranks, as a preemption does
        proc.wait()
        checkpoint = torch.load(ckpt_path, weights_only=True)
        assert checkpoint["epoch"] < 3 and not (killed / "model.pt").exists()

        again = _cli(config, split, killed, tmp / "again.log")
        assert _wait(again, tmp / "again.log") == 0, (tmp / "again.log").read_text()
        assert _wait(uninterrupted, tmp / "full.log") == 0, (tmp / "full.log").read_text()
    finally:
        for p in (uninterrupted, proc):
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
    return TwoProcessRuns(full, killed, checkpoint, config)


def test_two_process_cli_run_writes_a_loadable_model_and_history(two_process_runs):
    run = two_process_runs
    model, config = load_model(run.full / "model.pt", torch.device("cpu"))
    assert config == run.config
    assert model(torch.rand(2, 1, 28, 28)).shape == (2, K)
    history = pd.read_csv(run.full / "history.csv")
    assert history["epoch"].tolist() == [1, 2, 3, 4]
    assert history["steps"].tolist() == [15] * 4  # global batches, not images per rank
    assert history["lr"].tolist() == pytest.approx([0.01, 0.01, 0.001, 0.001])
    assert not (run.full / "checkpoint.pt").exists()
    assert json.loads((run.full / "experiment.json").read_text()) == run.config


def test_two_process_checkpoint_holds_each_ranks_noise_stream(two_process_runs):
    ckpt = two_process_runs.checkpoint
    assert "torch_rng" not in ckpt
    states = [rank["torch_rng"] for rank in ckpt["rank_rng"]]
    assert len(states) == 2 and not torch.equal(states[0], states[1])
    # the saved weights are the plain module's: the keys of a single-process run
    names = set(torch.load(two_process_runs.full / "model.pt", weights_only=True)["state_dict"])
    assert set(ckpt["model"]) == names


def test_two_process_run_killed_by_sigkill_resumes_to_the_same_model(two_process_runs):
    run = two_process_runs
    assert same_weights(run.full / "model.pt", run.killed / "model.pt")
    history = pd.read_csv(run.killed / "history.csv")
    expected = pd.read_csv(run.full / "history.csv")
    pd.testing.assert_frame_equal(history.drop(columns="seconds"), expected.drop(columns="seconds"))
    done = len(json.loads(run.checkpoint["history"]))
    assert history["seconds"][:done].tolist() == pytest.approx(
        [row["seconds"] for row in json.loads(run.checkpoint["history"])], rel=1e-12
    )


def test_two_process_divergence_exits_with_status_3(tmp_path):
    split = _split(tmp_path / "train.npz", 64)
    proc = _cli(_config(lr=1e30, processes=2), split, tmp_path / "o", tmp_path / "nan.log")
    log = (tmp_path / "nan.log").read_text
    assert _wait(proc, tmp_path / "nan.log") == 3, log()
    # each rank says so, unless torchrun stopped the second before it could
    assert "diverged, no model written: loss became nan, mean over 2 processes" in log()
    assert not (tmp_path / "o" / "model.pt").exists()


# --- two spawned ranks around train(): what each rank computes -----------------------------------


@dataclass(frozen=True)
class CleanXent(Objective):
    """Cross-entropy on the clean images: nothing random, so one process and two ranks take
    the same steps. Registered only for these tests."""

    name: ClassVar[str] = "test_clean_xent"

    def __call__(self, model, x, y, ctx):
        loss = F.cross_entropy(model(x), y)
        return loss, {"loss": loss.item()}


@dataclass(frozen=True)
class NanOnRank1(Objective):
    """A loss that is NaN on rank 1 only."""

    name: ClassVar[str] = "test_nan_on_rank_1"

    def __call__(self, model, x, y, ctx):
        loss = F.cross_entropy(model(x), y)
        return loss * (math.nan if dist.get_rank() == 1 else 1.0), {"loss": loss.item()}


def _spawned_rank(rank: int, tmp: str) -> None:
    """Rank ``rank`` of 2: trains with CleanXent, then with NanOnRank1, recording outcomes."""
    torch.set_num_threads(1)
    REGISTRY.update({cls.name: cls for cls in (CleanXent, NanOnRank1)})
    # A timeout, so that a rank left waiting fails the test instead of hanging it.
    dist.init_process_group(
        "gloo", init_method=f"file://{tmp}/store", rank=rank, world_size=2,
        timeout=timedelta(seconds=60),
    )  # fmt: skip
    try:
        split = Path(tmp) / "train.npz"
        config = _config("test_clean_xent", epochs=1, batch_size=16, lr=0.1, processes=2)
        train(config, split, Path(tmp) / "ddp", device=torch.device("cpu"), progress=False)
        config = _config("test_nan_on_rank_1", epochs=1, batch_size=16, processes=2)
        try:
            train(config, split, Path(tmp) / "nan", device=torch.device("cpu"), progress=False)
        except TrainingDiverged as err:
            (Path(tmp) / f"diverged.{rank}").write_text(str(err))
    finally:
        dist.destroy_process_group()


def test_data_parallel_steps_equal_single_process_steps(tmp_path, monkeypatch):
    # 41 images in batches of 16: the last global batch of 9 splits 5 + 4 between the ranks,
    # where each rank's mean loss must be weighted by its share.
    torch.set_num_threads(1)
    split = _split(tmp_path / "train.npz", 41)
    mp.spawn(_spawned_rank, args=(str(tmp_path),), nprocs=2)

    monkeypatch.setitem(REGISTRY, CleanXent.name, CleanXent)
    config = _config("test_clean_xent", epochs=1, batch_size=16, lr=0.1)
    single = train(config, split, tmp_path / "single", progress=False)
    one = torch.load(single, weights_only=True)["state_dict"]
    two = torch.load(tmp_path / "ddp" / "model.pt", weights_only=True)["state_dict"]
    for key in one:
        torch.testing.assert_close(
            two[key], one[key], rtol=0, atol=1e-6, msg=lambda why, key=key: f"{key}: {why}"
        )
    assert not (tmp_path / "ddp" / "checkpoint.pt").exists()

    # rank 1's NaN stops rank 0 at the same step
    for rank in (0, 1):
        message = (tmp_path / f"diverged.{rank}").read_text()
        assert message.startswith("loss became nan, mean over 2 processes at epoch 1/1, step 1")
    assert not (tmp_path / "nan" / "model.pt").exists()
