"""Entropy-SGD (robustreg.optim, ATENT Algorithm 3) by hand, and through the training loop."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from conftest import same_weights, train_killed_then_resumed

import robustreg.distributed as distributed_module
import robustreg.train as train_module
from robustreg.model_files import load_model
from robustreg.optim import EntropySGD, build_optimizer
from robustreg.schedule import check_schedule
from robustreg.train import TrainingDiverged, train


def quadratic(w: torch.Tensor, h: float = 2.0) -> torch.Tensor:
    """f(w) = h/2 * sum(w^2), gradient h * w."""
    return 0.5 * h * (w**2).sum()


def run_step(optimizer: EntropySGD, w: torch.Tensor, loss_fn=quadratic) -> list[float]:
    """One Entropy-SGD step as the training loop takes it; the weights each closure saw."""
    seen = []

    def closure():
        optimizer.zero_grad()
        seen.append(w.detach().clone().tolist())
        loss = loss_fn(w)
        loss.backward()
        return loss

    optimizer.zero_grad()
    loss_fn(w).backward()
    optimizer.step(closure)
    return seen


def test_one_step_without_momentum_matches_the_hand_computation():
    # f = w^2 (h = 2), w = 1, K = 2, gamma = 0.5, eta' = 0.1, alpha = 0.25, lr = 0.4, no noise:
    # k = 0: grad 2,   w' = 1 - 0.1 * 2 = 0.8,                      mu = 0.75 + 0.25 * 0.8 = 0.95
    # k = 1: grad 1.6, w' = 0.8 - 0.1 * (1.6 + 0.5 * (0.8 - 1)) = 0.65, mu = 0.75 * 0.95
    #        + 0.25 * 0.65 = 0.875
    # outer: w = 1 - 0.4 * (1 - 0.875) = 0.95
    w = torch.tensor([1.0], dtype=torch.float64, requires_grad=True)
    optimizer = EntropySGD(
        [w], lr=0.4, langevin_steps=2, gamma=0.5, langevin_lr=0.1, noise=0.0, alpha=0.25
    )
    seen = run_step(optimizer, w)
    assert seen == [[pytest.approx(0.8)]]  # the closure runs K - 1 times, at w'
    assert w.item() == pytest.approx(0.95, abs=1e-12)


def test_one_step_with_nesterov_momentum_and_weight_decay_matches_the_hand_computation():
    # As above with momentum 0.5 (Nesterov) and weight decay 0.1 in both loops:
    # k = 0: d = 2 + 0.1 = 2.1, buf = 2.1, d = 2.1 + 0.5 * 2.1 = 3.15, w' = 0.685,
    #        mu = 0.75 + 0.25 * 0.685 = 0.92125
    # k = 1: d = 1.37 + 0.0685 = 1.4385, buf = 1.05 + 1.4385 = 2.4885,
    #        d = 1.4385 + 1.24425 - 0.5 * 0.315 = 2.52525, w' = 0.432475,
    #        mu = 0.75 * 0.92125 + 0.25 * 0.432475 = 0.79905625
    # outer: d = (1 - 0.79905625) + 0.1 = 0.30094375 = buf, d = 1.5 * 0.30094375,
    #        w = 1 - 0.4 * 0.451415625 = 0.81943375
    w = torch.tensor([1.0], dtype=torch.float64, requires_grad=True)
    optimizer = EntropySGD(
        [w], lr=0.4, momentum=0.5, nesterov=True, weight_decay=0.1, langevin_steps=2,
        gamma=0.5, langevin_lr=0.1, noise=0.0, alpha=0.25,
    )  # fmt: skip
    run_step(optimizer, w)
    assert w.item() == pytest.approx(0.81943375, abs=1e-12)
    buffer = optimizer.state[w]["momentum_buffer"]
    assert buffer.item() == pytest.approx(0.30094375, abs=1e-12)


def reference_steps(w: float, steps: int, *, h, lr, mom, wd, K, gamma, llr, alpha) -> float:
    """Algorithm 3 with Chaudhari et al.'s momentum (heavy ball here), in plain floats."""
    outer_buf = None
    for _ in range(steps):
        wp, mu, buf = w, w, None
        for _ in range(K):
            d = h * wp + wd * wp
            buf = d if buf is None else mom * buf + d
            wp = wp - llr * (buf + gamma * (wp - w))
            mu = (1 - alpha) * mu + alpha * wp
        d = (w - mu) + wd * w
        outer_buf = d if outer_buf is None else mom * outer_buf + d
        w = w - lr * outer_buf
    return w


def test_heavy_ball_momentum_over_several_steps_follows_the_reference_recursion():
    settings = dict(lr=0.3, mom=0.9, wd=0.01, K=3, gamma=0.2, llr=0.05, alpha=0.4)
    w = torch.tensor([1.5, -0.5], dtype=torch.float64, requires_grad=True)
    optimizer = EntropySGD(
        [w], lr=0.3, momentum=0.9, nesterov=False, weight_decay=0.01, langevin_steps=3,
        gamma=0.2, langevin_lr=0.05, noise=0.0, alpha=0.4,
    )  # fmt: skip
    for _ in range(4):
        run_step(optimizer, w, lambda v: quadratic(v, h=3.0))
    expected = [reference_steps(v, 4, h=3.0, **settings) for v in (1.5, -0.5)]
    assert w.tolist() == pytest.approx(expected, abs=1e-12)


def test_langevin_noise_has_the_size_of_line_7():
    # K = 1 on a flat loss: w' = w + sqrt(2 eta') eps N(0, 1), mu = (1 - alpha) w + alpha w',
    # so the step moves w by lr * alpha * sqrt(2 eta') * eps * N(0, 1).
    torch.manual_seed(0)
    w = torch.zeros(200_000, dtype=torch.float64, requires_grad=True)
    optimizer = EntropySGD(
        [w], lr=0.5, langevin_steps=1, gamma=1.0, langevin_lr=0.02, noise=0.1, alpha=0.25
    )
    run_step(optimizer, w, lambda v: 0.0 * v.sum())
    expected = 0.5 * 0.25 * math.sqrt(2 * 0.02) * 0.1
    assert w.std().item() == pytest.approx(expected, rel=0.01)
    assert abs(w.mean().item()) < 4 * expected / math.sqrt(len(w))


def regression_problem():
    """Synthetic least squares: y = X a + small noise, 64 examples, 5 features."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(64, 5, generator=gen)
    y = x @ torch.tensor([1.0, -2.0, 0.5, 0.0, 3.0]) + 0.01 * torch.randn(64, generator=gen)
    return x, y


def train_regression(model, optimizer, epochs: int) -> list[float]:
    """Full passes of batch 16 over the problem; the mean loss of each epoch."""
    x, y = regression_problem()
    losses = []
    for _ in range(epochs):
        total = 0.0
        for xb, yb in zip(x.split(16), y.split(16), strict=True):

            def closure(xb=xb, yb=yb):
                optimizer.zero_grad()
                loss = ((model(xb).squeeze(1) - yb) ** 2).mean()
                loss.backward()
                return loss

            loss = closure()
            total += loss.item()
            optimizer.step(closure)
        losses.append(total / 4)
    return losses


def entropy_sgd(model) -> EntropySGD:
    return EntropySGD(
        model.parameters(), lr=0.5, momentum=0.9, nesterov=True, weight_decay=1e-4,
        langevin_steps=5, gamma=0.03, langevin_lr=0.05, noise=1e-3, alpha=0.25,
    )  # fmt: skip


def test_a_few_epochs_reduce_the_loss():
    torch.manual_seed(0)
    model = torch.nn.Linear(5, 1)
    losses = train_regression(model, entropy_sgd(model), epochs=6)
    assert losses[-1] < 0.05 * losses[0], losses
    assert all(b < a for a, b in zip(losses, losses[1:], strict=False)), losses


def test_state_dict_resumes_identically():
    torch.manual_seed(0)
    model = torch.nn.Linear(5, 1)
    optimizer = entropy_sgd(model)
    train_regression(model, optimizer, epochs=2)
    saved_model = {k: v.clone() for k, v in model.state_dict().items()}
    saved_optimizer = copy.deepcopy(optimizer.state_dict())  # it holds the live buffers
    rng = torch.get_rng_state()
    assert all("momentum_buffer" in s for s in saved_optimizer["state"].values())
    assert saved_optimizer["param_groups"][0]["langevin_steps"] == 5
    train_regression(model, optimizer, epochs=2)

    resumed = torch.nn.Linear(5, 1)
    resumed.load_state_dict(saved_model)
    again = entropy_sgd(resumed)
    again.load_state_dict(saved_optimizer)
    torch.set_rng_state(rng)
    train_regression(resumed, again, epochs=2)
    for key, value in model.state_dict().items():
        assert torch.equal(value, resumed.state_dict()[key]), key


def test_bad_settings_are_refused_naming_the_key():
    w = torch.zeros(1, requires_grad=True)
    with pytest.raises(ValueError, match="langevin_steps: need an integer >= 1"):
        EntropySGD([w], lr=0.1, langevin_steps=0)
    with pytest.raises(ValueError, match="alpha: need 0 < alpha <= 1"):
        EntropySGD([w], lr=0.1, alpha=0.0)
    with pytest.raises(ValueError, match="noise: need a number >= 0"):
        EntropySGD([w], lr=0.1, noise=-1.0)


# --- through the training loop ------------------------------------------------------------------


def experiment(**schedule) -> dict:
    return {
        "data": {"dataset": "synthetic", "train_limit": None},
        "arch": "lenet_mnist",
        "num_classes": 10,
        "method": "gaussian",
        "params": {},
        "sigma": 0.25,
        "schedule": {
            "epochs": 2,
            "batch_size": 16,
            "lr": 0.1,
            "momentum": 0.9,
            "nesterov": True,
            "weight_decay": 1e-4,
            "lr_milestones": [1],
            "lr_gamma": 0.1,
            "optimizer": "entropy_sgd",
            "entropy_sgd": {"langevin_steps": 3, "gamma": 0.03, "noise": 1e-4},
        }
        | schedule,
        "seed": 0,
    }


def test_training_with_entropy_sgd_calls_the_closure_and_writes_a_model(
    tmp_path, synthetic_split, monkeypatch
):
    calls = []
    closure_of = train_module._recompute

    def counting(*args):
        closure = closure_of(*args)

        def counted():
            calls.append(1)
            return closure()

        return counted

    monkeypatch.setattr(train_module, "_recompute", counting)
    path = train(experiment(), synthetic_split, tmp_path / "run", progress=False)
    assert len(calls) == 2 * 3 * 2  # epochs x steps (40 images, batch 16) x (K - 1)
    model, _ = load_model(path, torch.device("cpu"))
    assert model(torch.rand(2, 1, 28, 28)).shape == (2, 10)
    sgd = train(experiment(optimizer="sgd"), synthetic_split, tmp_path / "sgd", progress=False)
    assert not same_weights(path, sgd)


def test_entropy_sgd_training_resumes_exactly(tmp_path, synthetic_split, monkeypatch):
    # killed after epoch 1 of 2: epoch 2 needs the momentum buffers and the noise stream
    config = experiment()
    full = train(config, synthetic_split, tmp_path / "full", progress=False)
    resumed = train_killed_then_resumed(config, synthetic_split, tmp_path / "resumed", monkeypatch)
    assert same_weights(full, resumed)


def test_nan_loss_still_stops_an_entropy_sgd_run(tmp_path, synthetic_split):
    with pytest.raises(TrainingDiverged, match="loss became"):
        train(experiment(lr=1e30), synthetic_split, tmp_path / "nan", progress=False)
    assert not (tmp_path / "nan" / "model.pt").exists()


def test_schedule_errors_name_the_key(tmp_path, synthetic_split, monkeypatch):
    def run(**schedule):
        train(experiment(**schedule), synthetic_split, tmp_path / "bad", progress=False)

    with pytest.raises(ValueError, match="schedule.optimizer: 'rmsprop' is not one of"):
        run(optimizer="rmsprop")
    with pytest.raises(ValueError, match="schedule.momentum: Adam has no momentum setting"):
        run(optimizer="adam")
    with pytest.raises(ValueError, match="schedule.entropy_sgd: unknown key 'L'"):
        run(entropy_sgd={"L": 5})
    with pytest.raises(ValueError, match=r"schedule.entropy_sgd.langevin_steps: need"):
        run(entropy_sgd={"langevin_steps": 0})
    monkeypatch.setattr(distributed_module, "rank_and_world", lambda processes: (0, 2))
    with pytest.raises(ValueError, match="schedule.optimizer: not supported with schedule.proc"):
        run()


SGD = {"optimizer": "sgd", "entropy_sgd": None}
ADAM = {"optimizer": "adam", "momentum": 0.0, "nesterov": False, "entropy_sgd": None}


def _torch_optimizer(schedule: dict) -> torch.optim.Optimizer:
    """The optimizer of ``schedule`` as torch (or EntropySGD) builds it, unchecked by us."""
    params = torch.nn.Linear(1, 1).parameters()
    rates = {key: schedule[key] for key in ("lr", "weight_decay")}
    if schedule["optimizer"] == "adam":
        return torch.optim.Adam(params, **rates)
    rates |= {key: schedule[key] for key in ("momentum", "nesterov")}
    if schedule["optimizer"] == "sgd":
        return torch.optim.SGD(params, dampening=0.0, **rates)
    return EntropySGD(params, **rates, **schedule["entropy_sgd"])


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        (SGD | {"lr": -0.1}, "schedule.lr: need a number >= 0, got -0.1"),
        (SGD | {"momentum": -0.5}, "schedule.momentum: need a number >= 0"),
        (SGD | {"weight_decay": -1e-4}, "schedule.weight_decay: need a number >= 0"),
        (SGD | {"momentum": 0.0}, "schedule.nesterov: Nesterov momentum needs momentum > 0"),
        (ADAM | {"lr": -0.1}, "schedule.lr: need a number >= 0"),
        (ADAM | {"weight_decay": -1.0}, "schedule.weight_decay: need a number >= 0"),
        ({"momentum": 1.0}, "schedule.entropy_sgd.momentum: need 0 <= momentum < 1"),
    ],
)
def test_planning_refuses_what_the_optimizer_refuses(changes, message):
    # check_schedule (planning, without torch) and the optimizer the job builds agree
    schedule = experiment(**changes)["schedule"]
    with pytest.raises(ValueError, match=message):
        check_schedule(schedule)
    with pytest.raises(ValueError):
        _torch_optimizer(schedule)
    with pytest.raises(ValueError, match=message):
        build_optimizer(torch.nn.Linear(1, 1), schedule)


@pytest.mark.parametrize(
    "changes",
    [{}, SGD, SGD | {"lr": 0.0, "momentum": 0.0, "nesterov": False}, SGD | {"momentum": 1.5}, ADAM],
)
def test_planning_accepts_what_the_optimizer_accepts(changes):
    schedule = experiment(**changes)["schedule"]
    check_schedule(schedule)
    _torch_optimizer(schedule)


def test_adam_trains_with_torch_adam(tmp_path, synthetic_split):
    """Madry et al.'s and MMA's MNIST recipes: Adam; momentum and Nesterov must be off."""
    config = experiment(optimizer="adam", momentum=0.0, nesterov=False, entropy_sgd=None)
    train(config, synthetic_split, tmp_path / "adam", progress=False)
    checkpoint = torch.load(tmp_path / "adam" / "model.pt", weights_only=True)
    assert torch.isfinite(
        torch.cat([v.flatten().float() for v in checkpoint["state_dict"].values()])
    ).all()
    model = torch.nn.Linear(2, 1)
    optimizer = build_optimizer(model, config["schedule"])
    assert isinstance(optimizer, torch.optim.Adam)
    assert optimizer.param_groups[0]["lr"] == 0.1
