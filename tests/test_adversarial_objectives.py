"""Adversarial-training objectives (standard, PGD-AT, TRADES, MART, ATENT) on synthetic tensors.

Reference values are computed here in numpy (float64) from the formulas of the papers and
the authors' code, never by calling the code under test. Most checks use a linear model
f(x) = W x + b that records every input and the mode it ran in: its input gradient of the
per-example CE is W^T (softmax(f(x)) - e_y), so attack and Langevin iterates can be written
out by hand; a 2-class one makes a linf PGD with step >= 2 eps land on x + eps * sign(w_other
- w_y) whatever its start.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.special import log_softmax as np_log_softmax
from scipy.special import softmax as np_softmax
from torch import nn

from robustreg.models import create_model
from robustreg.objectives import (
    REGISTRY,
    StepContext,
    build_objective,
    describe,
    parameter_names,
    resolve_params,
    uses_sigma,
)
from robustreg.objectives.atent import Atent
from robustreg.objectives.mart import Mart, mart_terms
from robustreg.objectives.pgd_at import PgdAt
from robustreg.objectives.standard import Standard
from robustreg.objectives.trades import Trades, trades_terms

CTX = StepContext(epoch=0, epochs=10)
METHODS = ("standard", "pgd_at", "trades", "mart", "atent")
# Parameters a config must give for each method (the rest have defaults).
REQUIRED = {
    "standard": {},
    "pgd_at": {"norm": "linf", "eps": 0.1, "steps": 3, "step_size": 0.05},
    "trades": {"eps": 0.1, "steps": 3, "step_size": 0.05},
    "mart": {},
    "atent": {"norm": "linf", "gamma": 10.0, "steps": 3, "step_size": 0.05},
}


class LinearRecorder(nn.Module):
    """``W x + b`` on the flattened input; records each input and the mode it ran in."""

    def __init__(self, weight: np.ndarray, bias: np.ndarray):
        super().__init__()
        self.linear = nn.Linear(weight.shape[1], weight.shape[0])
        with torch.no_grad():
            self.linear.weight.copy_(torch.tensor(weight))
            self.linear.bias.copy_(torch.tensor(bias))
        self.calls: list[tuple[torch.Tensor, bool]] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls.append((x.detach().clone(), self.training))
        return self.linear(x.flatten(1))

    def numpy_params(self) -> tuple[np.ndarray, np.ndarray]:
        return (
            self.linear.weight.detach().double().numpy(),
            self.linear.bias.detach().double().numpy(),
        )


def linear_model(d: int, classes: int, seed: int = 0) -> LinearRecorder:
    rng = np.random.default_rng(seed)
    return LinearRecorder(rng.normal(size=(classes, d)), rng.normal(size=classes))


def synthetic_batch(b: int, shape=(1, 4, 4), classes: int = 3, seed: int = 0):
    """Uniform [0, 1] images (synthetic) with random labels."""
    g = torch.Generator().manual_seed(seed)
    return torch.rand((b, *shape), generator=g), torch.randint(0, classes, (b,), generator=g)


def np_xent(logits: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Per-row cross-entropy of [B, C] logits."""
    return -np_log_softmax(logits, axis=-1)[np.arange(len(y)), y]


def np_flat(x: torch.Tensor) -> np.ndarray:
    return x.double().flatten(1).numpy()


def assert_no_param_grad(model: nn.Module) -> None:
    assert all(p.grad is None for p in model.parameters())


# --------------------------------------------------------------------------- registry


@pytest.mark.parametrize("method", METHODS)
def test_registered_without_sigma(method):
    assert method in REGISTRY and not uses_sigma(method)
    params = REQUIRED[method]
    obj = build_objective(method, None, params)
    assert obj.sigma is None and obj.name == method
    assert set(resolve_params(method, params)) == set(parameter_names(method))
    assert describe(method, params)["method"] == method
    with pytest.raises(ValueError, match="sigma must be unset"):
        build_objective(method, 0.5, params)


def test_defaults_and_required():
    assert resolve_params("atent", REQUIRED["atent"]) == {
        **REQUIRED["atent"],
        "noise": 0.001,
        "alpha": 0.9,
        "init_radius": None,
    }
    assert resolve_params("mart", {}) == {
        "norm": "linf",
        "eps": 0.031,
        "steps": 10,
        "step_size": 0.007,
        "beta": 6.0,
    }
    trades = resolve_params("trades", REQUIRED["trades"])
    assert trades["norm"] == "linf" and trades["beta"] == 6.0 and trades["noise"] == 0.0
    assert resolve_params("pgd_at", REQUIRED["pgd_at"])["attack_mode"] == "train"
    for method, key in [("pgd_at", "norm"), ("trades", "eps"), ("atent", "gamma")]:
        params = {k: v for k, v in REQUIRED[method].items() if k != key}
        with pytest.raises(ValueError, match=f"missing parameter '{key}'"):
            build_objective(method, None, params)


BAD = [
    ("pgd_at", {"norm": "l1"}, "norm"),
    ("pgd_at", {"eps": 0.0}, "eps"),
    ("pgd_at", {"eps": "8/255"}, "eps"),
    ("pgd_at", {"steps": 2.0}, "steps"),
    ("pgd_at", {"step_size": -0.1}, "step_size"),
    ("pgd_at", {"attack_mode": "test"}, "attack_mode"),
    ("trades", {"beta": -1.0}, "beta"),
    ("trades", {"noise": -0.1}, "noise"),
    ("trades", {"norm": "l3"}, "norm"),
    ("mart", {"steps": 0}, "steps"),
    ("mart", {"beta": True}, "beta"),
    ("atent", {"gamma": 0.0}, "gamma"),
    ("atent", {"alpha": 0.0}, "alpha"),
    ("atent", {"alpha": 1.5}, "alpha"),
    ("atent", {"noise": -1e-3}, "noise"),
    ("atent", {"steps": 0}, "steps"),
    ("atent", {"step_size": 0}, "step_size"),
    ("atent", {"init_radius": -0.1}, "init_radius"),
    ("atent", {"norm": "l2"}, "init_radius"),  # l2 needs an explicit start radius
]


@pytest.mark.parametrize(("method", "change", "field"), BAD)
def test_bad_params_one_line_error_naming_the_field(method, change, field):
    with pytest.raises(ValueError, match=f"^{field}: ") as info:
        build_objective(method, None, {**REQUIRED[method], **change})
    assert "\n" not in str(info.value)


# --------------------------------------------------------------------------- loss formulas


def test_standard_is_clean_cross_entropy():
    model = linear_model(16, 3)
    x, y = synthetic_batch(5)
    loss, logs = Standard(sigma=None)(model, x, y, CTX)
    w, b = model.numpy_params()
    logits = np_flat(x) @ w.T + b
    assert loss.item() == pytest.approx(np_xent(logits, y.numpy()).mean(), rel=1e-6)
    assert logs["acc"] == pytest.approx(np.mean(logits.argmax(-1) == y.numpy()))
    assert len(model.calls) == 1 and torch.equal(model.calls[0][0], x)


def test_trades_terms_value_and_gradients():
    rng = np.random.default_rng(1)
    clean, adv = rng.normal(size=(2, 4, 5))
    y = np.array([0, 3, 1, 4])
    c = torch.tensor(clean, requires_grad=True)
    a = torch.tensor(adv, requires_grad=True)
    xent, kl = trades_terms(c, a, torch.tensor(y))
    p, log_p, log_q = np_softmax(clean, -1), np_log_softmax(clean, -1), np_log_softmax(adv, -1)
    kl_rows = np.sum(p * (log_p - log_q), axis=-1)
    assert xent.item() == pytest.approx(np_xent(clean, y).mean(), rel=1e-12)
    assert kl.item() == pytest.approx(kl_rows.mean(), rel=1e-12)
    (xent + 6.0 * kl).backward()
    # d KL(p||q) / d clean_j = p_j (log p_j - log q_j - KL); d KL / d adv = q - p (per row)
    onehot = np.eye(5)[y]
    d_clean = (p - onehot + 6.0 * p * (log_p - log_q - kl_rows[:, None])) / 4
    d_adv = 6.0 * (np_softmax(adv, -1) - p) / 4
    assert np.allclose(c.grad.numpy(), d_clean, atol=1e-12)
    assert np.allclose(a.grad.numpy(), d_adv, atol=1e-12)


def np_mart(clean: np.ndarray, adv: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """Wang et al.'s mart_loss written out (BCE and the weighted KL), batch means."""
    p, q = np_softmax(clean, -1), np_softmax(adv, -1)
    rows = np.arange(len(y))
    q_masked = q.copy()
    q_masked[rows, y] = -1.0
    wrong = q_masked.argmax(-1)
    bce = np_xent(adv, y) - np.log(1.0001 - q[rows, wrong] + 1e-12)
    kl = np.sum(p * (np.log(p) - np.log(q + 1e-12)), axis=-1)
    return float(bce.mean()), float(np.mean(kl * (1.0000001 - p[rows, y])))


def test_mart_terms_hand_example():
    # row 0: the adversarial top class is y, so y' is the runner-up (class 2);
    # row 1: the adversarial top class (1) is wrong, so y' = 1.
    clean = np.log(np.array([[0.7, 0.2, 0.1], [0.5, 0.3, 0.2]]))
    adv = np.log(np.array([[0.6, 0.1, 0.3], [0.2, 0.7, 0.1]]))
    y = np.array([0, 0])
    bce0 = -np.log(0.6) - np.log(1.0001 - 0.3 + 1e-12)
    bce1 = -np.log(0.2) - np.log(1.0001 - 0.7 + 1e-12)
    kl0 = 0.7 * np.log(0.7 / 0.6) + 0.2 * np.log(0.2 / 0.1) + 0.1 * np.log(0.1 / 0.3)
    kl1 = 0.5 * np.log(0.5 / 0.2) + 0.3 * np.log(0.3 / 0.7) + 0.2 * np.log(0.2 / 0.1)
    bce, robust = mart_terms(torch.tensor(clean), torch.tensor(adv), torch.tensor(y))
    assert bce.item() == pytest.approx((bce0 + bce1) / 2, rel=1e-9)
    assert robust.item() == pytest.approx((kl0 * 0.3 + kl1 * 0.5) / 2, rel=1e-6)


def test_mart_terms_random_and_clean_side_gradient():
    rng = np.random.default_rng(2)
    clean, adv = rng.normal(scale=2.0, size=(2, 8, 4))
    y = rng.integers(0, 4, size=8)
    c = torch.tensor(clean, requires_grad=True)
    bce, robust = mart_terms(c, torch.tensor(adv), torch.tensor(y))
    ref_bce, ref_robust = np_mart(clean, adv, y)
    assert bce.item() == pytest.approx(ref_bce, rel=1e-9)
    assert robust.item() == pytest.approx(ref_robust, rel=1e-9)
    robust.backward()  # the clean prediction is not detached: KL and weight both carry it
    p, log_q = np_softmax(clean, -1), np.log(np_softmax(adv, -1) + 1e-12)
    rows = np.arange(len(y))
    kl = np.sum(p * (np.log(p) - log_q), -1, keepdims=True)
    weight = 1.0000001 - p[rows, y][:, None]
    d_kl = p * (np.log(p) - log_q - kl)  # d KL_i / d clean_ij
    d_weight = -p[rows, y][:, None] * (np.eye(4)[y] - p)  # d (1 - p_iy) / d clean_ij
    assert np.allclose(c.grad.numpy(), (d_kl * weight + kl * d_weight) / len(y), atol=1e-12)


# --------------------------------------------------------------------------- PGD-AT


def two_class_setup(b: int = 6, eps: float = 0.1):
    model = linear_model(16, 2, seed=3)
    x, y = synthetic_batch(b, classes=2, seed=4)
    w, bias = model.numpy_params()
    sign = np.sign(w[1 - y.numpy()] - w[y.numpy()])  # direction that raises CE, per example
    x_adv = np.clip(np_flat(x) + eps * sign, 0.0, 1.0)
    return model, x, y, x_adv, w, bias


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_pgd_at_hand_example_and_attack_mode(mode):
    model, x, y, x_adv, w, bias = two_class_setup()
    obj = PgdAt(sigma=None, norm="linf", eps=0.1, steps=3, step_size=0.25, attack_mode=mode)
    model.train()
    loss, logs = obj(model, x, y, CTX)
    assert_no_param_grad(model)
    inputs, modes = zip(*model.calls, strict=True)
    assert len(inputs) == 3 + 2  # attack steps, loss pass, clean-accuracy pass
    assert modes == (mode == "train",) * 3 + (True, False)
    assert np.allclose(np_flat(inputs[3]), x_adv, atol=1e-6)
    assert torch.equal(inputs[4], x)
    logits = x_adv @ w.T + bias
    assert loss.item() == pytest.approx(np_xent(logits, y.numpy()).mean(), rel=1e-5)
    assert logs["adv_acc"] == pytest.approx(np.mean(logits.argmax(-1) == y.numpy()))
    clean = np_flat(x) @ w.T + bias
    assert logs["acc"] == pytest.approx(np.mean(clean.argmax(-1) == y.numpy()))
    assert model.training


def test_pgd_at_l2_stays_in_ball():
    model = linear_model(16, 3)
    x, y = synthetic_batch(6)
    PgdAt(sigma=None, norm="l2", eps=0.5, steps=4, step_size=0.2)(model, x, y, CTX)
    x_adv = model.calls[4][0]
    assert (x_adv - x).flatten(1).norm(dim=1).max() <= 0.5 + 1e-5
    assert x_adv.min() >= 0 and x_adv.max() <= 1
    assert (x_adv - x).flatten(1).norm(dim=1).min() > 0.1


# --------------------------------------------------------------------------- TRADES / MART


@pytest.mark.parametrize("beta", [1.0, 6.0])
def test_trades_loss_modes_and_ball(beta):
    model = linear_model(16, 3)
    x, y = synthetic_batch(5)
    model.train()
    loss, logs = Trades(sigma=None, eps=0.1, steps=3, step_size=0.05, beta=beta)(model, x, y, CTX)
    assert_no_param_grad(model)
    inputs, modes = zip(*model.calls, strict=True)
    # clean prediction and 3 attack steps in eval mode, then clean and adversarial in train mode
    assert modes == (False,) * 4 + (True, True)
    assert torch.equal(inputs[0], x) and torch.equal(inputs[4], x)
    start = inputs[1] - x
    assert 0 < start.abs().max() < 0.01  # x + 0.001 * N(0, I)
    x_adv = inputs[5]
    assert (x_adv - x).abs().max() <= 0.1 + 1e-6 and x_adv.min() >= 0 and x_adv.max() <= 1
    w, b = model.numpy_params()
    clean, adv = np_flat(x) @ w.T + b, np_flat(x_adv) @ w.T + b
    kl = np.sum(np_softmax(clean, -1) * (np_log_softmax(clean, -1) - np_log_softmax(adv, -1)), -1)
    xent = np_xent(clean, y.numpy()).mean()
    assert loss.item() == pytest.approx(xent + beta * kl.mean(), rel=1e-5)
    assert logs["kl"] == pytest.approx(kl.mean(), rel=1e-4)
    assert kl.mean() > 1e-4  # the attack moved the prediction


def test_trades_ascends_the_kl():
    model = linear_model(16, 3)
    x, y = synthetic_batch(8)
    obj = Trades(sigma=None, eps=0.1, steps=5, step_size=0.03)
    obj(model, x, y, CTX)
    w, b = model.numpy_params()
    p = np_softmax(np_flat(x) @ w.T + b, -1)

    def kl(inp):
        q = np_log_softmax(np_flat(inp) @ w.T + b, -1)
        return np.sum(p * (np.log(p) - q), -1).mean()

    attack_inputs = [inp for inp, _ in model.calls[1:6]]
    values = [kl(inp) for inp in attack_inputs] + [kl(model.calls[7][0])]
    assert values[-1] > 10 * values[0]


def test_trades_noise_is_one_draw_added_to_clean_and_adversarial():
    model = linear_model(16 * 4, 3)
    x, y = synthetic_batch(32, shape=(1, 8, 8))
    Trades(sigma=None, eps=0.2, steps=2, step_size=0.1, noise=0.12)(model, x, y, CTX)
    inputs = [inp for inp, _ in model.calls]
    assert len(inputs) == 1 + 2 + 2
    eta = inputs[3] - x  # train-mode clean pass: x + eta
    assert eta.std().item() == pytest.approx(0.12, rel=0.1)
    assert torch.equal(inputs[0], inputs[3])  # the attack's clean prediction sees x + eta
    for adv in inputs[1:3] + [inputs[4]]:  # attack steps and the adversarial pass
        x_adv = adv - eta
        assert (x_adv - x).abs().max() <= 0.2 + 1e-5
        assert x_adv.min() >= -1e-6 and x_adv.max() <= 1 + 1e-6  # the ball around x in [0, 1]


def test_mart_loss_and_modes():
    model = linear_model(16, 4, seed=5)
    x, y = synthetic_batch(6, classes=4, seed=6)
    model.train()
    loss, logs = Mart(sigma=None, eps=0.1, steps=3, step_size=0.05, beta=6.0)(model, x, y, CTX)
    assert_no_param_grad(model)
    inputs, modes = zip(*model.calls, strict=True)
    assert modes == (False,) * 3 + (True, True)
    assert 0 < (inputs[0] - x).abs().max() < 0.01
    assert torch.equal(inputs[3], x)
    w, b = model.numpy_params()
    clean, adv = np_flat(x) @ w.T + b, np_flat(inputs[4]) @ w.T + b
    bce, robust = np_mart(clean, adv, y.numpy())
    assert loss.item() == pytest.approx(bce + 6.0 * robust, rel=1e-5)
    assert logs["bce"] == pytest.approx(bce, rel=1e-5)
    assert logs["acc"] == pytest.approx(np.mean(clean.argmax(-1) == y.numpy()))


# --------------------------------------------------------------------------- ATENT


def hand_atent(x, y, w, b, *, norm, gamma, steps, eta, eps, alpha, radius, draws):
    """Algorithms 1/2 with our reading, in numpy: iterates x'^0..x'^K, mu, d mu / d(W, b),
    and the largest |x'^K - x| before the last step's projection and clipping.

    ``draws`` are the N(0, I) draws the objective makes, in order: the start, then one per
    Langevin step (none when eps = 0).
    """
    x, onehot = np_flat(x), np.eye(w.shape[0])[y]
    if norm == "linf":
        delta = radius * np.sign(draws[0])
    else:
        delta = radius * draws[0] / np.linalg.norm(draws[0], axis=1, keepdims=True)
    xs = [np.clip(x + delta, 0, 1)]
    for k in range(steps):
        xk = xs[-1]
        grad = (np_softmax(xk @ w.T + b, -1) - onehot) @ w  # d CE_i / d x_i, per row
        if norm == "l2":
            unit = grad / np.linalg.norm(grad, axis=1, keepdims=True)
            nxt = xk + eta * unit + gamma * (x - xk)  # the authors' code: no eta' on the pull
        else:
            nxt = xk + eta * np.sign(grad)
        if eps > 0:
            nxt = nxt + math.sqrt(2 * eta) * eps * draws[1 + k]
        overshoot = np.abs(nxt - x).max()
        if norm == "linf" and k == steps - 1:
            nxt = x + np.clip(nxt - x, -1 / gamma, 1 / gamma)
        xs.append(np.clip(nxt, 0, 1))
    mu, d_w, d_b = 0.0, np.zeros_like(w), np.zeros_like(b)
    for xk in xs[1:]:
        p = np_softmax(xk @ w.T + b, -1)
        mu = (1 - alpha) * mu + alpha * np_xent(xk @ w.T + b, y).mean()
        d_w = (1 - alpha) * d_w + alpha * (p - onehot).T @ xk / len(y)
        d_b = (1 - alpha) * d_b + alpha * (p - onehot).mean(0)
    return xs, mu, d_w, d_b, overshoot


@pytest.mark.parametrize(
    ("norm", "params"),
    [
        ("l2", {"gamma": 0.5, "step_size": 0.3, "noise": 0.0, "init_radius": 0.4}),
        ("l2", {"gamma": 0.5, "step_size": 0.3, "noise": 0.05, "init_radius": 0.4}),
        ("linf", {"gamma": 10.0, "step_size": 0.08, "noise": 0.0}),  # r = 1/gamma = 0.1
        ("linf", {"gamma": 10.0, "step_size": 0.08, "noise": 0.02}),
    ],
)
def test_atent_inner_loop_matches_algorithm_by_hand(norm, params):
    k, alpha = 2, 0.7
    model = linear_model(16, 3, seed=7)
    x, y = synthetic_batch(4, seed=8)
    x[0, 0, 0, :2] = torch.tensor([0.0, 1.0])  # pixels on the box edges: clipping binds
    obj = Atent(sigma=None, norm=norm, steps=k, alpha=alpha, **params)
    torch.manual_seed(11)
    draws = [torch.randn(x.shape).flatten(1).double().numpy() for _ in range(1 + k)]
    torch.manual_seed(11)
    model.train()
    loss, logs = obj(model, x, y, CTX)
    assert_no_param_grad(model)  # the input gradients left no trace on the weights
    w, b = model.numpy_params()
    radius = params.get("init_radius", 1 / params["gamma"])
    xs, mu, d_w, d_b, overshoot = hand_atent(
        x,
        y.numpy(),
        w,
        b,
        norm=norm,
        steps=k,
        eta=params["step_size"],
        eps=params["noise"],
        alpha=alpha,
        radius=radius,
        gamma=params["gamma"],
        draws=draws,
    )
    inputs, modes = zip(*model.calls, strict=True)
    assert modes == (True,) * (k + 1) + (False,)  # K + 1 train-mode passes, clean accuracy
    for got, want in zip(inputs[: k + 1], xs, strict=True):
        assert np.allclose(np_flat(got), want, atol=1e-5)
    assert torch.equal(inputs[-1], x)
    assert loss.item() == pytest.approx(mu, rel=1e-5)
    loss.backward()
    assert np.allclose(model.linear.weight.grad.double().numpy(), d_w, atol=1e-5)
    assert np.allclose(model.linear.bias.grad.double().numpy(), d_b, atol=1e-5)
    final = xs[-1] - np_flat(x)
    norms = np.abs(final).max(1) if norm == "linf" else np.linalg.norm(final, axis=1)
    assert logs["radius"] == pytest.approx(norms.mean(), rel=1e-4)
    assert (xs[0] == 0).any() and (xs[0] == 1).any()  # the start was clipped
    if norm == "linf":
        # the last-step projection binds: the steps overshoot 1/gamma, the result is on it
        assert overshoot > 0.1 + 0.01
        assert np.abs(final).max() == pytest.approx(0.1, abs=1e-6)


def test_atent_l2_chain_settles_where_unit_step_and_pull_balance():
    """Issue 20: with the authors' updates a constant unit direction and the pull
    gamma * (x - x') balance at radius eta'/gamma (0.1 here); with the pull scaled by eta'
    as Algorithm 1 writes it, at 1/gamma (2)."""
    model = linear_model(16, 2, seed=3)  # two classes: the CE gradient keeps its direction
    x, y = torch.full((4, 1, 4, 4), 0.5), torch.tensor([0, 1, 0, 1])
    obj = Atent(
        sigma=None, norm="l2", gamma=0.5, steps=60, step_size=0.05, noise=0.0, init_radius=0.3
    )
    _, logs = obj(model, x, y, CTX)
    assert logs["radius"] == pytest.approx(0.1, abs=1e-4)
    report = obj.epoch_report({"epoch": 3, "radius": logs["radius"]})
    assert report == (
        "l2-ATENT epoch 3: the Langevin chain ends at mean radius 0.1, against the eps = 0.3 "
        "it starts on (appendix A.2 tunes gamma so that the two agree)"
    )
    linf = Atent(sigma=None, norm="linf", gamma=4.0, steps=1, step_size=0.1)
    assert linf.epoch_report({"epoch": 1, "radius": 0.25}) is None


def test_atent_l2_start_on_sphere_and_linf_default_radius():
    x = torch.full((3, 1, 8, 8), 0.5)
    torch.manual_seed(0)
    start = Atent(sigma=None, norm="l2", gamma=0.05, steps=1, step_size=0.1, init_radius=0.3)
    delta = start.sampler.start(x) - x
    assert torch.allclose(delta.flatten(1).norm(dim=1), torch.full((3,), 0.3), atol=1e-6)
    linf = Atent(sigma=None, norm="linf", gamma=4.0, steps=1, step_size=0.1)
    assert torch.allclose((linf.sampler.start(x) - x).abs(), torch.full_like(x, 0.25))


# --------------------------------------------------------------------------- all methods


class SmallNet(nn.Module):
    def __init__(self, d: int = 16, classes: int = 3):
        super().__init__()
        self.net = nn.Sequential(
            nn.Flatten(), nn.Linear(d, 8), nn.BatchNorm1d(8), nn.Tanh(), nn.Linear(8, classes)
        )

    def forward(self, x):
        return self.net(x)


def l2_params(method: str) -> dict:
    return {
        "pgd_at": {"norm": "l2", "eps": 0.5, "steps": 2, "step_size": 0.3},
        "trades": {"norm": "l2", "eps": 0.5, "steps": 2, "step_size": 0.3, "noise": 0.1},
        "mart": {"norm": "l2", "eps": 0.5, "steps": 2, "step_size": 0.3},
        "atent": {"norm": "l2", "gamma": 0.05, "steps": 2, "step_size": 0.3, "init_radius": 0.5},
    }.get(method, {})


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("variant", ["linf", "l2"])
def test_gradients_reach_the_weights_only_through_the_loss(method, variant):
    torch.manual_seed(0)
    model = SmallNet()
    model.train()
    x, y = synthetic_batch(8)
    params = REQUIRED[method] if variant == "linf" else l2_params(method)
    loss, logs = build_objective(method, None, params)(model, x, y, CTX)
    assert_no_param_grad(model)
    assert model.training and all(m.training for m in model.modules())
    assert loss.dim() == 0 and torch.isfinite(loss)
    assert {"loss", "acc"} <= set(logs) and all(type(v) is float for v in logs.values())
    assert method == "standard" or "adv_acc" in logs
    loss.backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert sum(g.abs().sum() for g in grads) > 0


def test_lenet_channels_last_batchnorm_and_bfloat16_autocast():
    """Every method on the paper's MNIST LeNet, on a channels-last conv net with batch norm and
    an odd image shape, and under CPU bfloat16 autocast (the training loop's AMP)."""
    torch.manual_seed(0)
    lenet = create_model("lenet_mnist", 10)
    conv = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten())
    conv.append(nn.Linear(4 * 7 * 5, 7))
    cases = [
        (lenet, torch.rand(4, 1, 28, 28), torch.randint(0, 10, (4,)), False),
        (
            conv,
            torch.rand(4, 3, 9, 7).contiguous(memory_format=torch.channels_last),
            torch.randint(0, 7, (4,)),
            False,
        ),
        (SmallNet(), *synthetic_batch(4), True),
    ]
    for method in METHODS:
        obj = build_objective(method, None, REQUIRED[method])
        assert obj.batch_split == 1
        for model, x, y, amp in cases:
            model.train()
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
                loss, logs = obj(model, x, y, CTX)
            assert loss.dtype == torch.float32 and torch.isfinite(loss), method
            assert all(math.isfinite(v) for v in logs.values())
            assert logs["loss"] == pytest.approx(loss.item())
            loss.backward()
            assert all(torch.isfinite(p.grad).all() for p in model.parameters())
            model.zero_grad(set_to_none=True)
            assert model.training


def separable_problem(n: int = 64, seed: int = 0):
    """Two synthetic classes of 4x4 images: pixels near 0.2 for class 0, near 0.8 for class 1."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 2
    noise = 0.1 * (torch.rand((n, 1, 4, 4), generator=g) - 0.5)
    x = 0.2 + 0.6 * y.view(-1, 1, 1, 1).float() + noise
    return x, y


@pytest.mark.parametrize("method", METHODS)
def test_sgd_steps_reduce_the_loss(method):
    params = {**REQUIRED[method], **({"eps": 0.1} if method in ("pgd_at", "trades") else {})}
    if method == "mart":
        params = {"eps": 0.1, "steps": 3, "step_size": 0.05}
    obj = build_objective(method, None, params)
    x, y = separable_problem()
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 2))
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)

    def loss_now() -> float:
        torch.manual_seed(1)
        return obj(model, x, y, CTX)[0].item()

    before = loss_now()
    for step in range(30):
        torch.manual_seed(100 + step)
        loss, _ = obj(model, x, y, CTX)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    after = loss_now()
    assert after < 0.5 * before, (before, after)
