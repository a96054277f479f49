"""Free adversarial training (Shafahi et al. 2019, Algorithm 1) in the training loop, and the
training time recorded with every model.

Small synthetic inputs only: a linear model on 2x3x3 "images" whose input gradient is
derived by hand (z = W x + b, d CE / d x = W^T (softmax(z) - onehot(y)) / B), and the
40-image MNIST-shaped split of ``conftest`` for the loop's tests.
"""

from __future__ import annotations

import json
import math
import time

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import lenet_experiment, same_weights, train_killed_then_resumed
from scipy.special import softmax
from torch import nn

import robustreg.checkpoints as checkpoints_module
from robustreg.devices import device_name
from robustreg.model_files import MODEL_FORMAT, training_record
from robustreg.objectives import StepContext, build_objective
from robustreg.schedule import EarlyStop
from robustreg.train import train

EPS = 8 / 255
SHAPE = (2, 3, 3)  # channels, height, width of the linear model's images
DIM, CLASSES = math.prod(SHAPE), 3


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


class Linear(nn.Module):
    """z = W flatten(x) + b, float64, recording every input it sees."""

    def __init__(self, seed: int = 0):
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        self.fc = nn.Linear(DIM, CLASSES).double()
        with torch.no_grad():
            self.fc.weight.copy_(torch.randn(CLASSES, DIM, generator=gen, dtype=torch.float64))
            self.fc.bias.copy_(torch.randn(CLASSES, generator=gen, dtype=torch.float64))
        self.seen: list[torch.Tensor] = []

    def forward(self, x):
        self.seen.append(x.detach().clone())
        return self.fc(x.flatten(1))


def images(num: int, seed: int, low: float = 0.2, high: float = 0.8) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return low + (high - low) * torch.rand((num, *SHAPE), generator=gen, dtype=torch.float64)


def input_grad_sign(model: Linear, x_in: np.ndarray, y: np.ndarray) -> np.ndarray:
    """sign of d mean-CE / d input at ``x_in`` [B, *SHAPE], by hand (numpy)."""
    w = model.fc.weight.detach().numpy()
    b = model.fc.bias.detach().numpy()
    p = softmax(x_in.reshape(len(y), -1) @ w.T + b, axis=1)
    p[np.arange(len(y)), y] -= 1.0
    return np.sign(p @ w).reshape(x_in.shape)


def ctx_with(state: dict) -> StepContext:
    return StepContext(
        epoch=0, epochs=1, indices=torch.zeros(1, dtype=torch.long), num_examples=1, state=state
    )


def replay(objective, model, x, y, state) -> torch.Tensor:
    """One replay as the loop runs it: call, backward, after_backward; the loss."""
    ctx = ctx_with(state)
    loss, _ = objective(model, x, y, ctx)
    model.zero_grad()
    loss.backward()
    objective.after_backward(ctx)
    return loss


def test_delta_follows_algorithm_1_across_replays_and_batches():
    model = Linear()
    step = EPS / 4  # below eps, so two steps of one sign stay inside the ball
    objective = build_objective("free_at", None, {"eps": EPS, "m": 2, "step_size": step})
    x, y = images(3, seed=1), torch.tensor([0, 1, 2])
    state: dict = {}

    replay(objective, model, x, y, state)
    # first replay: delta starts at zero, so it is clip(step * sign(grad at x))
    s1 = input_grad_sign(model, x.numpy(), y.numpy())
    assert np.abs(s1).min() == 1  # no zero gradient entry: the check below sees every pixel
    np.testing.assert_array_equal(state["delta"].numpy(), step * s1)
    # second replay: from the kept delta, with the gradient at x + delta
    replay(objective, model, x, y, state)
    s2 = input_grad_sign(model, x.numpy() + step * s1, y.numpy())
    after_batch = np.clip(step * s1 + step * s2, -EPS, EPS)
    np.testing.assert_allclose(state["delta"].numpy(), after_batch, rtol=0, atol=1e-15)
    assert len(state) == 1 and state["delta"].shape == (3, *SHAPE)

    # the next, smaller batch starts from the first rows of the same delta, not from zero
    x2, y2 = images(2, seed=2), torch.tensor([2, 0])
    replay(objective, model, x2, y2, state)
    np.testing.assert_allclose(model.seen[-1].numpy(), x2.numpy() + after_batch[:2], atol=1e-15)
    s3 = input_grad_sign(model, x2.numpy() + after_batch[:2], y2.numpy())
    expected = after_batch.copy()
    expected[:2] = np.clip(after_batch[:2] + step * s3, -EPS, EPS)
    np.testing.assert_allclose(state["delta"].numpy(), expected, rtol=0, atol=1e-15)
    assert np.array_equal(state["delta"][2].numpy(), after_batch[2])  # the unused row


def test_default_step_is_eps_and_delta_stays_in_the_ball_and_inputs_in_the_box():
    model = Linear()
    objective = build_objective("free_at", None, {"eps": EPS, "m": 4})
    # pixels at and near both ends of [0, 1], where x + delta leaves the box
    x = images(4, seed=3, low=-0.2, high=1.2).clamp(0.0, 1.0)
    y = torch.tensor([0, 1, 2, 0])
    state: dict = {}
    replay(objective, model, x, y, state)
    # the gradient passes at the box's edges too (TensorFlow's clip_by_value, not torch.clamp)
    assert ((x == 0).any() and (x == 1).any()).item()
    s1 = input_grad_sign(model, x.numpy(), y.numpy())
    np.testing.assert_array_equal(state["delta"].numpy(), EPS * s1)
    for _ in range(4):
        replay(objective, model, x, y, state)
    before = state["delta"].clone()
    replay(objective, model, x, y, state)
    assert ((x + before).min() < 0) and ((x + before).max() > 1)  # the clip has work to do
    assert torch.equal(model.seen[-1], (x + before).clamp(0.0, 1.0))
    assert all(seen.min() >= 0 and seen.max() <= 1 for seen in model.seen)
    assert state["delta"].abs().max() == EPS  # steps of eps end on the ball's faces


def test_outside_the_loop_delta_is_zero_and_the_loss_plain_cross_entropy():
    model = Linear()
    objective = build_objective("free_at", None, {"eps": EPS, "m": 2})
    x, y = images(3, seed=1), torch.tensor([0, 1, 2])
    ctx = StepContext(epoch=0, epochs=1)
    loss, logs = objective(model, x, y, ctx)
    logits = model.fc(x.flatten(1)).detach().numpy()
    expected = -np.log(softmax(logits, axis=1)[np.arange(3), y.numpy()]).mean()
    assert loss.item() == pytest.approx(expected, rel=1e-6)  # float32 loss
    assert set(logs) == {"loss", "xent", "adv_acc"} and ctx.scratch == {}
    objective.after_backward(ctx)  # nothing to move


@pytest.mark.parametrize(
    ("params", "key"),
    [
        ({"eps": 0.0, "m": 2}, "eps"),
        ({"eps": "8/255", "m": 2}, "eps"),
        ({"eps": EPS, "m": 0}, "m"),
        ({"eps": EPS, "m": 2.0}, "m"),
        ({"eps": EPS, "m": True}, "m"),
        ({"eps": EPS, "m": 2, "step_size": -1.0}, "step_size"),
        ({"eps": EPS, "m": 2, "step_size": False}, "step_size"),
    ],
)
def test_bad_params_give_one_line_errors_naming_the_key(params, key):
    with pytest.raises(ValueError, match=f"^{key}: ") as err:
        build_objective("free_at", None, params)
    assert "\n" not in str(err.value)


def test_missing_params_and_sigma_are_refused():
    with pytest.raises(ValueError, match="missing parameter 'm' for method 'free_at'"):
        build_objective("free_at", None, {"eps": EPS})
    with pytest.raises(ValueError, match="missing parameter 'eps'"):
        build_objective("free_at", None, {"m": 2})
    with pytest.raises(ValueError, match="trains without Gaussian noise"):
        build_objective("free_at", 0.25, {"eps": EPS, "m": 2})


# --- the training loop ---------------------------------------------------------------------


def experiment(m: int = 3, **schedule) -> dict:
    return lenet_experiment(**schedule) | {
        "method": "free_at",
        "params": {"eps": EPS, "m": m},
        "sigma": None,
    }


def test_the_loop_takes_m_optimizer_steps_per_batch(tmp_path, synthetic_split, monkeypatch):
    step, calls = torch.optim.SGD.step, []

    def counted(self, *args, **kwargs):
        calls.append(1)
        return step(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.SGD, "step", counted)
    train(experiment(m=3), synthetic_split, tmp_path / "run", progress=False)
    history = pd.read_csv(tmp_path / "run" / "history.csv")
    # 40 images in batches of 16: 3 batches, 3 replays each, 2 epochs
    assert history["steps"].tolist() == [9, 9] and len(calls) == 18
    assert {"loss", "xent", "adv_acc"} <= set(history.columns)


def test_a_resumed_run_goes_on_from_the_checkpointed_delta(tmp_path, synthetic_split, monkeypatch):
    config = experiment(m=2, epochs=3)
    full = train(config, synthetic_split, tmp_path / "full", progress=False)
    save, kept = checkpoints_module.atomic_save, []

    def recording(obj, path):
        if path.name == "checkpoint.pt":
            kept.append(obj["objective_state"]["delta"].clone())
        save(obj, path)

    monkeypatch.setattr(checkpoints_module, "atomic_save", recording)
    resumed = train_killed_then_resumed(config, synthetic_split, tmp_path / "resumed", monkeypatch)
    # the delta of the first epoch: one batch-shaped tensor, in the ball, not zero, so a
    # resumed run that started it from zero again would train other weights
    assert kept[0].shape == (16, 1, 28, 28) and 0 < kept[0].abs().max() <= EPS
    assert same_weights(full, resumed)
    a = pd.read_csv(tmp_path / "full" / "history.csv").drop(columns="seconds")
    b = pd.read_csv(tmp_path / "resumed" / "history.csv")
    pd.testing.assert_frame_equal(a, b.drop(columns="seconds"))
    # the resumed run's training time counts the epoch done before the kill
    record = training_record(resumed)
    assert record["train_seconds"] == pytest.approx(b["seconds"].sum(), rel=1e-12)
    assert record["epochs"] == 3


def test_model_records_training_time_and_device(tmp_path, synthetic_split):
    path = train(experiment(m=1), synthetic_split, tmp_path / "run", progress=False)
    saved = torch.load(path, weights_only=True)
    history = pd.read_csv(tmp_path / "run" / "history.csv")
    assert saved["train_seconds"] > 0
    assert saved["train_seconds"] == pytest.approx(history["seconds"].sum(), rel=1e-12)
    assert saved["device"] == device_name(torch.device("cpu"))
    assert saved["device"].startswith("cpu (") and saved["device"].endswith(", 1 thread)")
    assert training_record(path) == {
        "train_seconds": saved["train_seconds"],
        "device": saved["device"],
        "epochs": 2,
    }


def test_epoch_seconds_include_early_stopping_validation(tmp_path, synthetic_split, monkeypatch):
    def slow_evaluate(self, model, x, y, batch_size, device):
        time.sleep(0.3)
        return 0.5, 0.5

    monkeypatch.setattr(EarlyStop, "evaluate", slow_evaluate)
    early_stop = {"val_images": 10, "norm": "linf", "eps": 0.1, "steps": 1, "step_size": 0.1}
    path = train(experiment(m=1, early_stop=early_stop), synthetic_split, tmp_path / "run",
                 progress=False)  # fmt: skip
    history = pd.read_csv(tmp_path / "run" / "history.csv")
    assert (history["seconds"] >= 0.3).all()
    assert training_record(path)["train_seconds"] >= 0.6


def test_device_names_and_records_of_other_files(tmp_path):
    assert device_name(torch.device("cpu"), 4).startswith("4 x cpu (")
    old = tmp_path / "old.pt"
    torch.save(
        {"format": MODEL_FORMAT, "arch": "lenet_mnist", "num_classes": 10,
         "config": json.dumps({"schedule": {"epochs": 1}}), "state_dict": {}},
        old,
    )  # fmt: skip
    with pytest.raises(ValueError, match=r"old.pt: no train_seconds \(written before"):
        training_record(old)
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="corrupt.pt: not a readable robustreg model"):
        training_record(corrupt)
    with pytest.raises(ValueError, match="missing.pt: model file does not exist"):
        training_record(tmp_path / "missing.pt")
