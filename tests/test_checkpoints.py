"""Checkpoints and stored results that went bad, and trainings that finished before.

A corrupt checkpoint is set aside and training goes on from the previous epoch's; a
finished training keeps a final checkpoint, from which a rerun rewrites model.pt and
history.csv without training; a corrupt counts.npz or model.pt read by a later job is set
aside, so that the next run of the workflow computes it again.
"""

from __future__ import annotations

import json
import zipfile
from datetime import timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from conftest import lenet_experiment, same_weights

import robustreg.checkpoints as checkpoints_module
import robustreg.distributed as distributed_module
import robustreg.train as train_module
from robustreg.cli import main
from robustreg.data import save_split
from robustreg.train import train

EARLY_STOP = {"val_images": 10, "norm": "linf", "eps": 0.1, "steps": 1, "step_size": 0.1}


def experiment(**schedule) -> dict:
    return lenet_experiment(**({"epochs": 3} | schedule))


class Killed(Exception):
    pass


def killed_after(epochs: int, config: dict, split: Path, out: Path, monkeypatch) -> None:
    """A run of ``config`` stopped right after its checkpoint of epoch ``epochs``."""
    save, written = checkpoints_module.atomic_save, []

    def killed(obj, path):
        save(obj, path)
        written.append(path.name)
        if written.count("checkpoint.pt") == epochs:
            raise Killed

    with monkeypatch.context() as m:
        m.setattr(checkpoints_module, "atomic_save", killed)
        with pytest.raises(Killed):
            train(config, split, out, progress=False)


def history(ckpt_path: Path) -> list[dict]:
    return json.loads(torch.load(ckpt_path, weights_only=True)["history"])


def corrupt_files(folder: Path) -> list[Path]:
    return sorted(folder.glob("*.corrupt-*"))


def no_training(monkeypatch) -> None:
    """From now on, building a model to train fails the test."""

    def trains(*args):
        raise AssertionError("a model was built to train")

    monkeypatch.setattr(train_module, "create_model", trains)


# --- a corrupt checkpoint ------------------------------------------------------------------------


def _garbage(path: Path) -> None:
    path.write_bytes(b"not a checkpoint")


def _truncated(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _not_a_dict(path: Path) -> None:
    torch.save([1, 2, 3], path)


def _without_optimizer(path: Path) -> None:
    ckpt = torch.load(path, weights_only=True)
    del ckpt["optimizer"]
    torch.save(ckpt, path)


def _torn_history(path: Path) -> None:
    ckpt = torch.load(path, weights_only=True)
    ckpt["history"] = ckpt["history"][:-5]
    torch.save(ckpt, path)


@pytest.mark.parametrize(
    "spoil",
    [_garbage, _truncated, _not_a_dict, _without_optimizer, _torn_history],
    ids=["garbage", "truncated", "not-a-dict", "no-optimizer", "torn-history"],
)
def test_a_corrupt_checkpoint_is_set_aside_and_the_previous_epochs_resumed(
    tmp_path, synthetic_split, monkeypatch, capsys, spoil
):
    full = train(experiment(), synthetic_split, tmp_path / "full", progress=False)
    out = tmp_path / "run"
    killed_after(2, experiment(), synthetic_split, out, monkeypatch)
    ckpt, previous = out / "checkpoint.pt", out / "checkpoint.prev.pt"
    assert [len(history(ckpt)), len(history(previous))] == [2, 1]
    first_epoch = history(previous)[0]
    spoil(ckpt)
    spoiled = ckpt.read_bytes()
    capsys.readouterr()

    resumed = train(experiment(), synthetic_split, out, progress=False)
    err = capsys.readouterr().err.splitlines()
    [aside] = corrupt_files(out)
    assert aside.name.startswith("checkpoint.pt.corrupt-") and aside.read_bytes() == spoiled
    assert err[0].startswith(f"{ckpt}: corrupt checkpoint (")
    assert err[0].endswith(f"); set aside as {aside.name}")
    assert err[1] == f"{out}: resuming from checkpoint.prev.pt after epoch 1 of 3"
    assert same_weights(full, resumed)
    # the first epoch is the one the previous checkpoint holds, not trained again
    assert pd.read_csv(out / "history.csv")["seconds"][0] == first_epoch["seconds"]
    assert not ckpt.exists() and not previous.exists()


def test_without_a_good_checkpoint_training_starts_from_scratch(
    tmp_path, synthetic_split, monkeypatch, capsys
):
    full = train(experiment(), synthetic_split, tmp_path / "full", progress=False)
    out = tmp_path / "run"
    killed_after(2, experiment(), synthetic_split, out, monkeypatch)
    _garbage(out / "checkpoint.pt")
    _truncated(out / "checkpoint.prev.pt")
    capsys.readouterr()

    again = train(experiment(), synthetic_split, out, progress=False)
    err = capsys.readouterr().err.splitlines()
    assert len(corrupt_files(out)) == 2 and len(err) == 3
    assert "checkpoint.prev.pt: corrupt checkpoint (" in err[1]
    assert err[2] == f"{out}: no usable checkpoint, training from scratch"
    assert same_weights(full, again)


def test_each_epoch_keeps_the_previous_checkpoint(tmp_path, synthetic_split, monkeypatch):
    saved = []
    save = checkpoints_module.atomic_save

    def recording(obj, path):
        files = sorted(p.name for p in path.parent.iterdir() if not p.name.startswith("."))
        saved.append((path.name, obj.get("epoch"), files))
        save(obj, path)

    monkeypatch.setattr(checkpoints_module, "atomic_save", recording)
    out = tmp_path / "run"
    train(experiment(), synthetic_split, out, progress=False)
    assert [(name, epoch) for name, epoch, _ in saved] == [
        ("checkpoint.pt", 0), ("checkpoint.pt", 1), ("checkpoint.pt", 2),
        ("checkpoint.final.pt", None), ("model.pt", None),
    ]  # fmt: skip
    # when a checkpoint is written, the one before it has been moved aside, never lost
    assert saved[2][2] == ["checkpoint.prev.pt"]
    assert sorted(p.name for p in out.iterdir()) == [
        "checkpoint.final.pt",
        "history.csv",
        "model.pt",
    ]


def test_a_checkpoint_of_another_config_is_passed_over_not_set_aside(
    tmp_path, synthetic_split, monkeypatch, capsys
):
    other = tmp_path / "other"
    killed_after(1, experiment(lr=0.02), synthetic_split, other, monkeypatch)
    capsys.readouterr()
    again = train(experiment(), synthetic_split, other, progress=False)
    err = capsys.readouterr().err.splitlines()
    assert err == [
        f"{other / 'checkpoint.pt'}: of another run (config differ), not resumed; this run's "
        "checkpoints replace it",
        f"{other}: no usable checkpoint, training from scratch",
    ]
    assert corrupt_files(other) == []
    assert same_weights(train(experiment(), synthetic_split, tmp_path / "fresh"), again)


@pytest.mark.parametrize("finished", [False, True], ids=["killed", "finished"])
def test_a_checkpoint_of_other_training_data_is_not_used(
    tmp_path, synthetic_split, monkeypatch, capsys, finished
):
    out = tmp_path / "run"
    if finished:
        train(experiment(), synthetic_split, out, progress=False)
    else:
        killed_after(1, experiment(), synthetic_split, out, monkeypatch)
    rng = np.random.default_rng(5)  # the same experiment on re-made data: another model
    x = rng.integers(0, 256, size=(40, 1, 28, 28), dtype=np.uint8)
    remade = tmp_path / "remade.npz"
    save_split(remade, x, np.repeat(np.arange(10), 4))
    capsys.readouterr()

    again = train(experiment(), remade, out, progress=False)
    name = "checkpoint.final.pt" if finished else "checkpoint.pt"
    assert capsys.readouterr().err.splitlines()[0] == (
        f"{out / name}: of another run (data_sha256 differ), not resumed; this run's "
        "checkpoints replace it"
    )
    assert same_weights(train(experiment(), remade, tmp_path / "fresh", progress=False), again)


# --- a finished training -------------------------------------------------------------------------


def test_a_finished_training_is_restored_from_its_final_checkpoint(
    tmp_path, synthetic_split, monkeypatch, capsys
):
    config = experiment(early_stop=EARLY_STOP)
    out = tmp_path / "run"
    path = train(config, synthetic_split, out, progress=False)
    model, csv = path.read_bytes(), (out / "history.csv").read_text()
    record = torch.load(path, weights_only=True)
    assert "selected_epoch" in record and record["train_seconds"] > 0
    final = torch.load(out / "checkpoint.final.pt", weights_only=True)
    # slim: what model.pt and history.csv are written from, no optimizer, no last weights
    assert set(final) == {"config", "data_sha256", "history", "model_file"}
    assert final["model_file"].keys() == record.keys()
    capsys.readouterr()

    no_training(monkeypatch)
    for deleted in (True, False):  # as --rerun-incomplete does; a rerun with nothing changed
        if deleted:
            path.unlink()
            (out / "history.csv").unlink()
        assert train(config, synthetic_split, out, progress=False) == path
        assert path.read_bytes() == model and (out / "history.csv").read_text() == csv
        assert capsys.readouterr().err == (
            f"{out / 'checkpoint.final.pt'}: restored model.pt and history.csv from the final "
            "checkpoint, no epoch trained (delete the folder to train again)\n"
        )


def test_a_corrupt_final_checkpoint_is_set_aside_and_the_model_trained_again(
    tmp_path, synthetic_split, capsys
):
    out = tmp_path / "run"
    path = train(experiment(), synthetic_split, out, progress=False)
    weights = tmp_path / "model.pt"
    path.rename(weights)
    _truncated(out / "checkpoint.final.pt")
    capsys.readouterr()
    train(experiment(), synthetic_split, out, progress=False)
    err = capsys.readouterr().err.splitlines()
    assert err[0].startswith(f"{out / 'checkpoint.final.pt'}: corrupt checkpoint (")
    assert len(corrupt_files(out)) == 1 and same_weights(weights, path)


def _train_args(config: dict, split: Path, out: Path) -> list[str]:
    return ["train", "--config-json", json.dumps(config), "--data", str(split),
            "--out-dir", str(out), "--threads", "1", "--no-progress"]  # fmt: skip


def test_cli_rerun_of_a_finished_training_trains_no_epoch(
    tmp_path, synthetic_split, monkeypatch, capsys
):
    out = tmp_path / "run"
    args = _train_args(experiment(epochs=2), synthetic_split, out)
    assert main(args) == 0
    model, csv = (out / "model.pt").read_bytes(), (out / "history.csv").read_text()
    (out / "model.pt").unlink()
    (out / "history.csv").unlink()
    capsys.readouterr()

    no_training(monkeypatch)
    assert main(args) == 0
    assert "restored model.pt and history.csv from the final checkpoint" in (
        capsys.readouterr().err
    )
    # the same epoch times: nothing was trained again
    assert (out / "history.csv").read_text() == csv
    assert (out / "model.pt").read_bytes() == model


# --- data-parallel ranks take rank 0's decision --------------------------------------------------


def _rank(rank: int, tmp: str) -> None:
    """Rank ``rank`` of 2 training ``experiment(processes=2)`` three times: killed before
    its third epoch; again, after rank 0 spoiled the last checkpoint; again, after rank 0
    deleted model.pt, stopping (a failure) if it trained an epoch. Rank 0 keeps what the
    test checks in ``tmp``."""
    torch.set_num_threads(1)
    # A timeout, so that a rank left waiting fails the test instead of hanging it.
    dist.init_process_group(
        "gloo", init_method=f"file://{tmp}/store", rank=rank, world_size=2,
        timeout=timedelta(seconds=60),
    )  # fmt: skip
    out = Path(tmp) / "ddp"
    chunks, epochs = distributed_module.rank_chunks, []

    def stopping(*args):
        epochs.append(None)
        if len(epochs) == stop_before:
            raise Killed
        return chunks(*args)

    distributed_module.rank_chunks = stopping
    try:
        for stop_before in (3, None, 1):
            epochs.clear()
            try:
                train(experiment(processes=2), Path(tmp) / "train.npz", out,
                      device=torch.device("cpu"), progress=False)  # fmt: skip
            except Killed:
                assert stop_before == 3, "trained an epoch to restore a model"
            dist.barrier()
            if rank == 0 and stop_before == 3:
                (out / "first.json").write_text(json.dumps(history(out / "checkpoint.prev.pt")))
                _garbage(out / "checkpoint.pt")
            elif rank == 0 and stop_before is None:
                (out / "model.pt").rename(out / "trained.pt")
            dist.barrier()
    finally:
        dist.destroy_process_group()


def test_every_rank_resumes_from_the_checkpoint_rank_0_chose(tmp_path, synthetic_split):
    save_split(tmp_path / "train.npz", *np.load(synthetic_split).values())
    mp.spawn(_rank, args=(str(tmp_path),), nprocs=2)
    out = tmp_path / "ddp"
    assert len(corrupt_files(out)) == 1
    rows = pd.read_csv(out / "history.csv")
    # resumed from the previous checkpoint: its epoch was not trained again
    first = json.loads((out / "first.json").read_text())
    assert rows["epoch"].tolist() == [1, 2, 3] and rows["seconds"][0] == first[0]["seconds"]
    assert (out / "model.pt").read_bytes() == (out / "trained.pt").read_bytes()


# --- corrupt results read by later jobs ----------------------------------------------------------


def _counts(path: Path) -> Path:
    rng = np.random.default_rng(7)
    p = np.array([0.6, 0.3, 0.1])
    np.savez(
        path, sigma=0.5, n0=100, n=1000, seed=0, idx=np.arange(0, 40, 2),
        label=np.zeros(20, dtype=np.int64), counts0=rng.multinomial(100, p, size=20),
        counts=rng.multinomial(1000, p, size=20), seconds=np.full(20, 0.25),
    )  # fmt: skip
    return path


def _bad_crc(path: Path) -> None:
    data = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as z:
        info = z.getinfo("counts.npy")
    data[info.header_offset + 200] ^= 0xFF  # inside the array's data
    path.write_bytes(bytes(data))


def _wrong_sums(path: Path) -> None:
    with np.load(path) as f:
        arrays = dict(f)
    arrays["counts"][3, 0] += 1
    np.savez(path, **arrays)


@pytest.mark.parametrize(
    "spoil",
    [_truncated, _bad_crc, _wrong_sums, lambda path: path.write_text("no")],
    ids=["truncated", "bad-crc", "wrong-sums", "text"],
)
def test_tcertify_sets_a_corrupt_counts_file_aside(tmp_path, capsys, spoil):
    counts = _counts(tmp_path / "counts.npz")
    spoil(counts)
    spoiled = counts.read_bytes()
    out = tmp_path / "tcertify.tsv"
    assert main(["tcertify", "--counts", str(counts), "--alpha", "0.01", "--out", str(out)]) == 2
    [line] = capsys.readouterr().err.strip().splitlines()
    [aside] = corrupt_files(tmp_path)
    assert line.startswith(f"robustreg tcertify: error: {counts}: not the counts.npz of a ")
    assert line.endswith(f"; set aside as {aside.name}; rerun to recompute it")
    assert aside.read_bytes() == spoiled and not counts.exists() and not out.exists()


def test_tcertify_without_counts_says_so_and_moves_nothing(tmp_path, capsys):
    counts = tmp_path / "counts.npz"
    assert main(["tcertify", "--counts", str(counts), "--alpha", "0.01", "--out", "x.tsv"]) == 2
    [line] = capsys.readouterr().err.strip().splitlines()
    assert line.endswith(f"{counts}: no such file (the counts.npz of a certify run)")
    assert list(tmp_path.iterdir()) == []


def _certify_args(model: Path, data: Path, out: Path) -> list[str]:
    return ["certify", "--model", str(model), "--data", str(data), "--out-dir", str(out),
            "--sigma", "0.25", "--n0", "5", "--n", "10", "--threads", "1",
            "--no-progress"]  # fmt: skip


def test_a_corrupt_model_is_set_aside_and_restored_without_training(
    tmp_path, synthetic_split, monkeypatch, capsys
):
    out = tmp_path / "run"
    path = train(experiment(epochs=1), synthetic_split, out, progress=False)
    model = path.read_bytes()
    _truncated(path)
    capsys.readouterr()
    assert main(_certify_args(path, synthetic_split, tmp_path / "c")) == 2
    line = capsys.readouterr().err.strip().splitlines()[-1]
    [aside] = corrupt_files(out)
    assert line.startswith(f"robustreg certify: error: {path}: not a readable robustreg model")
    assert line.endswith(f"; set aside as {aside.name}; rerun to recompute it")
    assert not path.exists()

    no_training(monkeypatch)
    train(experiment(epochs=1), synthetic_split, out, progress=False)
    assert path.read_bytes() == model


def test_a_readable_model_of_another_format_is_left_in_place(tmp_path, synthetic_split, capsys):
    foreign = tmp_path / "model.pt"
    torch.save({"state_dict": {}}, foreign)
    assert main(_certify_args(foreign, synthetic_split, tmp_path / "c")) == 2
    assert "not a robustreg model checkpoint" in capsys.readouterr().err
    assert foreign.exists() and corrupt_files(tmp_path) == []
