"""Early stopping by validation robust accuracy (ATENT section 4) in the training loop."""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import same_weights, train_killed_then_resumed
from torch import nn

import robustreg.checkpoints as checkpoints_module
import robustreg.distributed as distributed_module
import robustreg.train as train_module
from robustreg.data import load_split, save_split
from robustreg.schedule import EarlyStop, holdout_positions
from robustreg.train import train

EARLY_STOP = {"val_images": 10, "norm": "linf", "eps": 0.1, "steps": 2, "step_size": 0.05}


@pytest.fixture
def indexed_split(tmp_path):
    """Synthetic, MNIST-shaped: 40 images, 4 per class; image i is random noise whose first
    pixel is 6 * i, so a batch tells which images it holds."""
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, size=(40, 1, 28, 28), dtype=np.uint8)
    x[:, 0, 0, 0] = 6 * np.arange(40)
    y = np.tile(np.arange(10), 4).astype(np.int64)
    path = tmp_path / "train.npz"
    save_split(path, x, y)
    return path


def positions(x: torch.Tensor) -> list[int]:
    return torch.round(x[:, 0, 0, 0] * 255 / 6).long().tolist()


def experiment(early_stop=EARLY_STOP, augment="none", **schedule) -> dict:
    return {
        "data": {"dataset": "synthetic", "train_limit": None, "augment": augment},
        "arch": "lenet_mnist",
        "num_classes": 10,
        "method": "gaussian",
        "params": {},
        "sigma": 0.25,
        "schedule": {
            "epochs": 3,
            "batch_size": 16,
            "lr": 0.05,
            "momentum": 0.9,
            "nesterov": True,
            "weight_decay": 1e-4,
            "lr_milestones": [2],
            "lr_gamma": 0.1,
            "early_stop": early_stop,
        }
        | schedule,
        "seed": 0,
    }


def scripted_scores(monkeypatch, scores) -> None:
    """Validation robust accuracies in the given order, one per evaluated epoch."""
    stream = iter(scores)
    monkeypatch.setattr(
        EarlyStop, "evaluate", lambda self, model, x, y, batch, device: (0.5, next(stream))
    )


def checkpointed_weights(monkeypatch) -> list[dict]:
    """The model weights of every checkpoint written from now on, in order."""
    saved, save = [], checkpoints_module.atomic_save

    def recording(obj, path):
        if path.name == "checkpoint.pt":
            saved.append({k: v.clone() for k, v in obj["model"].items()})
        save(obj, path)

    monkeypatch.setattr(checkpoints_module, "atomic_save", recording)
    return saved


def model_file(path) -> dict:
    return torch.load(path, weights_only=True)


def test_holdout_is_seeded_class_balanced_and_independent_of_the_training_seed():
    labels = np.repeat(np.arange(10), 10)
    held = holdout_positions(labels, 25, seed=0)
    assert len(held) == 25 and np.all(np.diff(held) > 0)
    counts = np.bincount(labels[held], minlength=10)
    assert counts.min() == 2 and counts.max() == 3
    np.testing.assert_array_equal(held, holdout_positions(labels, 25, seed=0))
    assert not np.array_equal(held, holdout_positions(labels, 25, seed=1))
    # a class that runs out leaves its share to the others
    few = np.array([0] * 2 + [1] * 20)
    assert np.bincount(few[holdout_positions(few, 10, seed=0)]).tolist() == [2, 8]


def test_validation_scores_match_a_hand_computation_on_a_linear_model():
    # Class 1 iff the sum of the 4 pixels exceeds 2, i.e. a constant image of value v is
    # class 1 iff v > 0.5, with logit margin 4 |v - 0.5|. A linf attack of radius 0.08 takes
    # 4 * 0.08 = 0.32 off the margin (the gradient's sign is constant, 2 steps of 0.1 reach
    # the corner from any random start): images with |v - 0.5| > 0.08 stay correct.
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 2))
    with torch.no_grad():
        model[1].weight.copy_(torch.tensor([[0.0] * 4, [1.0] * 4]))
        model[1].bias.copy_(torch.tensor([2.0, 0.0]))
    values = torch.tensor([0.55, 0.6, 0.7, 0.45, 0.3, 0.35, 0.8])
    x = values.view(-1, 1, 1, 1).expand(-1, 1, 2, 2).contiguous()
    y = torch.tensor([1, 1, 1, 0, 0, 0, 0])  # the last is misclassified: 0.8 -> class 1
    spec = {"val_images": 7, "norm": "linf", "eps": 0.08, "steps": 2, "step_size": 0.1}
    early_stop = EarlyStop.from_schedule({"early_stop": spec})
    clean, robust = early_stop.evaluate(model, x, y, 3, torch.device("cpu"))
    assert clean == pytest.approx(6 / 7)
    assert robust == pytest.approx(4 / 7)  # 0.6, 0.7, 0.3, 0.35
    no_attack = EarlyStop.from_schedule({"early_stop": spec | {"eps": 0.0}})
    assert no_attack.evaluate(model, x, y, 3, torch.device("cpu")) == (6 / 7, 6 / 7)


def test_history_gains_the_validation_columns_and_scores_are_reproducible(tmp_path, indexed_split):
    train(experiment(), indexed_split, tmp_path / "a", progress=False)
    train(experiment(), indexed_split, tmp_path / "b", progress=False)
    a = pd.read_csv(tmp_path / "a" / "history.csv")
    b = pd.read_csv(tmp_path / "b" / "history.csv")
    assert {"val_acc", "val_robust_acc", "selected_epoch"} <= set(a.columns)
    assert a["val_acc"].between(0, 1).all() and a["val_robust_acc"].between(0, 1).all()
    best = a["val_robust_acc"].to_numpy()
    assert a["selected_epoch"].tolist() == [
        int(np.argmax(best[: i + 1])) + 1 for i in range(len(best))
    ]
    cols = ["val_acc", "val_robust_acc", "selected_epoch"]
    pd.testing.assert_frame_equal(a[cols], b[cols])
    assert model_file(tmp_path / "a" / "model.pt")["selected_epoch"] == a["selected_epoch"].iat[-1]


def test_model_holds_the_best_epochs_weights_not_the_last(tmp_path, indexed_split, monkeypatch):
    scripted_scores(monkeypatch, [0.2, 0.7, 0.4])
    saved = checkpointed_weights(monkeypatch)
    path = train(experiment(), indexed_split, tmp_path / "run", progress=False)
    ckpt = model_file(path)
    assert ckpt["selected_epoch"] == 2
    assert all(torch.equal(ckpt["state_dict"][k], v) for k, v in saved[1].items())
    assert not all(torch.equal(ckpt["state_dict"][k], v) for k, v in saved[2].items())
    history = pd.read_csv(tmp_path / "run" / "history.csv")
    assert history["selected_epoch"].tolist() == [1, 2, 2]
    assert history["val_robust_acc"].tolist() == [0.2, 0.7, 0.4]


def test_ties_keep_the_earlier_epoch(tmp_path, indexed_split, monkeypatch):
    scripted_scores(monkeypatch, [0.5, 0.5, 0.5])
    path = train(experiment(), indexed_split, tmp_path / "run", progress=False)
    assert model_file(path)["selected_epoch"] == 1


def test_resume_restores_the_best_weights_and_score(tmp_path, indexed_split, monkeypatch):
    # The best epoch is the first, finished before the kill: only the checkpoint has it.
    scripted_scores(monkeypatch, [0.9, 0.5, 0.3])
    saved = checkpointed_weights(monkeypatch)
    train(experiment(), indexed_split, tmp_path / "full", progress=False)
    scripted_scores(monkeypatch, [0.9, 0.5, 0.3])
    resumed = train_killed_then_resumed(
        experiment(), indexed_split, tmp_path / "resumed", monkeypatch
    )
    ckpt = model_file(resumed)
    assert ckpt["selected_epoch"] == 1
    assert all(torch.equal(ckpt["state_dict"][k], v) for k, v in saved[0].items())
    history = pd.read_csv(tmp_path / "resumed" / "history.csv")
    assert history["selected_epoch"].tolist() == [1, 1, 1]


def test_resumed_run_matches_an_uninterrupted_one(tmp_path, indexed_split, monkeypatch):
    full = train(experiment(epochs=2), indexed_split, tmp_path / "full", progress=False)
    resumed = train_killed_then_resumed(
        experiment(epochs=2), indexed_split, tmp_path / "resumed", monkeypatch
    )
    assert same_weights(full, resumed)
    assert model_file(full)["selected_epoch"] == model_file(resumed)["selected_epoch"]
    cols = ["epoch", "val_acc", "val_robust_acc", "selected_epoch"]
    pd.testing.assert_frame_equal(
        pd.read_csv(tmp_path / "full" / "history.csv")[cols],
        pd.read_csv(tmp_path / "resumed" / "history.csv")[cols],
    )


def test_held_out_images_are_never_trained_on_nor_augmented(tmp_path, indexed_split, monkeypatch):
    trained, validated = [], []
    build = train_module.build_objective

    def recording(*args):
        objective = build(*args)

        class Recording:
            batch_split = objective.batch_split

            def __call__(self, net, x, y, ctx):
                trained.extend(positions(x))
                return objective(net, x, y, ctx)

        return Recording()

    def evaluate(self, model, x, y, batch_size, device):
        validated.append((x.clone(), y.clone()))
        return 0.5, 0.5

    monkeypatch.setattr(train_module, "build_objective", recording)
    monkeypatch.setattr(EarlyStop, "evaluate", evaluate)
    # crop_flip moves the marked pixel of training images, so this run checks the epochs'
    # counts; the one without augmentation below checks which images they were
    train(
        experiment(augment="crop_flip", epochs=1), indexed_split, tmp_path / "aug", progress=False
    )
    assert len(trained) == 30
    x_all, y_all = load_split(indexed_split)
    held = holdout_positions(y_all, 10, seed=0)
    x_val, y_val = validated[0]
    assert torch.equal(x_val, x_all[held]) and torch.equal(y_val, y_all[held])

    trained.clear()
    train(experiment(epochs=2), indexed_split, tmp_path / "plain", progress=False)
    assert sorted(trained) == sorted(2 * sorted(set(range(40)) - set(held.tolist())))


def test_off_leaves_no_trace_and_changes_nothing(tmp_path, indexed_split):
    off = train(experiment(early_stop=None), indexed_split, tmp_path / "off", progress=False)
    plain = experiment()
    del plain["schedule"]["early_stop"]
    absent = train(plain, indexed_split, tmp_path / "absent", progress=False)
    assert same_weights(off, absent)
    assert "selected_epoch" not in model_file(off)
    history = pd.read_csv(tmp_path / "off" / "history.csv")
    assert not {"val_acc", "val_robust_acc", "selected_epoch"} & set(history.columns)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"patience": 3}, "schedule.early_stop: unknown key 'patience'"),
        ({"eps": None}, "schedule.early_stop.eps: need a number"),
        ({"norm": "l1"}, "schedule.early_stop: norm: 'l1' is not one of"),
        ({"val_images": 40}, "schedule.early_stop.val_images: 40 leaves no training images"),
    ],
)
def test_bad_settings_are_refused_naming_the_key(tmp_path, indexed_split, change, message):
    with pytest.raises(ValueError, match=message):
        train(experiment(EARLY_STOP | change), indexed_split, tmp_path / "bad", progress=False)


def test_missing_key_and_multi_process_runs_are_refused(tmp_path, indexed_split, monkeypatch):
    spec = dict(itertools.islice(EARLY_STOP.items(), 4))  # no step_size
    with pytest.raises(ValueError, match="schedule.early_stop: missing key 'step_size'"):
        EarlyStop.from_schedule({"early_stop": spec})
    monkeypatch.setattr(distributed_module, "rank_and_world", lambda processes: (0, 2))
    with pytest.raises(ValueError, match="schedule.early_stop: not supported with schedule.proc"):
        train(experiment(), indexed_split, tmp_path / "ddp", progress=False)
