"""Training objectives and the smoothed PGD attack, checked against independent formulas.

Reference values are computed here in numpy/scipy (or by hand), never by calling the code
under test. Objectives send m noisy copies through the model as one [m*B, ...] batch,
copy-major (rows i*B .. (i+1)*B - 1 are copy i); ``FixedLogits`` exploits that layout to
make every loss a function of chosen logits.
"""

from __future__ import annotations

import math
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import FixedLogits
from scipy.special import log_softmax as np_log_softmax
from scipy.special import ndtri as np_ndtri
from scipy.special import softmax as np_softmax
from torch import nn

from robustreg.attacks.smoothed_pgd import smoothed_pgd_l2
from robustreg.models import create_model
from robustreg.objectives import (
    REGISTRY,
    StepContext,
    build_objective,
    parameter_names,
    resolve_params,
    uses_sigma,
)
from robustreg.objectives.base import Objective, implementation
from robustreg.objectives.consistency import Consistency, consistency_regularizer
from robustreg.objectives.gaussian import Gaussian
from robustreg.objectives.macer import Macer, macer_robustness
from robustreg.objectives.settings import epochs_in
from robustreg.objectives.smoothadv import SmoothAdv
from robustreg.objectives.smoothadv_consistency import SmoothAdvConsistency
from robustreg.objectives.stability import Stability

CTX = StepContext(epoch=0, epochs=90)
# Parameters a config must give for each method to build (the rest have defaults).
REQUIRED = {
    "consistency": {"lbd": 10.0},
    "adre_reg": {"lbd": 0.1},
    "adre_adv": {"lbd": 0.1, "eps": 0.5, "steps": 2},
    "pgd_at": {"norm": "linf", "eps": 0.1, "steps": 2, "step_size": 0.05},
    "trades": {"eps": 0.1, "steps": 2, "step_size": 0.05},
    "mart": {"steps": 2},
    "mma": {"norm": "l2", "hinge_max": 0.3, "init_eps": 0.1, "steps": 2, "search_steps": 2},
    "atent": {"norm": "l2", "gamma": 0.05, "steps": 2, "step_size": 0.1, "init_radius": 0.2},
    "gradient_norm": {"norm": "l2", "lam": 0.1, "method": "fd"},
    "free_at": {"eps": 8 / 255, "m": 2},
}


def noise_level(method: str, sigma: float) -> float | None:
    """``sigma`` for a method that trains with Gaussian noise; None for one that does not."""
    return sigma if uses_sigma(method) else None


class Recorder(nn.Module):
    """A small random classifier that records its inputs and its mode at every call."""

    def __init__(self, in_shape=(1, 6, 6), classes: int = 5):
        super().__init__()
        self.net = nn.Sequential(
            nn.Flatten(), nn.Linear(math.prod(in_shape), 16), nn.Tanh(), nn.Linear(16, classes)
        )
        self.calls: list[tuple[torch.Tensor, bool]] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls.append((x.detach().clone(), self.training))
        return self.net(x)


def np_xent(logits: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Per-row cross-entropy, logits [..., B, C], y [B]."""
    lsm = np_log_softmax(logits.astype(np.float64), axis=-1)
    return -np.take_along_axis(lsm, np.broadcast_to(y[:, None], lsm.shape[:-1] + (1,)), -1)[..., 0]


def np_consistency(logits: np.ndarray, lbd: float, eta: float, loss: str) -> float:
    """Jeong & Shin's regularizer written out: KL(mean || p_i) averaged over copies, H(mean)."""
    logits = logits.astype(np.float64)
    p = np_softmax(logits, axis=-1)  # [m, B, C]
    if loss == "mse":
        return float(np.mean(lbd * np.sum((p[1] - p[0]) ** 2, axis=-1)))
    pbar = p.mean(axis=0)
    kl = np.mean([np.sum(pbar * (np.log(pbar) - np.log(pi)), axis=-1) for pi in p], axis=0)
    ent = -np.sum(pbar * np.log(pbar), axis=-1)
    per_example = {
        "default": lbd * kl + eta * ent,
        "xent": lbd * (kl + ent),
        "kl": lbd * kl,
    }[loss]
    return float(np.mean(per_example))


def batch(b: int = 4, shape=(1, 6, 6), classes: int = 5, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand((b, *shape), generator=g), torch.randint(0, classes, (b,), generator=g)


# --------------------------------------------------------------------------- consistency


@pytest.mark.parametrize("m", [2, 3])
@pytest.mark.parametrize("loss", ["default", "xent", "kl", "mse"])
def test_consistency_regularizer_matches_numpy(m, loss):
    logits = np.random.default_rng(m).normal(scale=2.0, size=(m, 5, 4))
    expected = np_consistency(logits, lbd=3.0, eta=0.7, loss=loss)
    as_tensor = consistency_regularizer(torch.tensor(logits), lbd=3.0, eta=0.7, loss=loss)
    as_list = consistency_regularizer(list(torch.tensor(logits)), lbd=3.0, eta=0.7, loss=loss)
    assert as_tensor.item() == pytest.approx(expected, rel=1e-9, abs=1e-12)
    assert as_list.item() == pytest.approx(expected, rel=1e-9, abs=1e-12)


def test_consistency_xent_is_default_with_eta_equal_lbd():
    logits = torch.tensor(np.random.default_rng(1).normal(size=(3, 6, 10)))
    xent = consistency_regularizer(logits, lbd=4.0, eta=0.1, loss="xent")
    default = consistency_regularizer(logits, lbd=4.0, eta=4.0, loss="default")
    assert xent.item() == pytest.approx(default.item(), rel=1e-12)
    assert xent.item() != pytest.approx(
        consistency_regularizer(logits, lbd=4.0, eta=0.1, loss="default").item()
    )


def test_consistency_identical_copies_leave_only_entropy():
    one = np.array([[2.0, 0.0, -1.0]])
    logits = torch.tensor(np.stack([one, one]))
    p = np_softmax(one[0])
    entropy = -np.sum(p * np.log(p))
    assert consistency_regularizer(logits, 5.0, 0.5, "kl").item() == pytest.approx(0.0, abs=1e-12)
    assert consistency_regularizer(logits, 5.0, 0.5, "default").item() == pytest.approx(
        0.5 * entropy
    )


@pytest.mark.parametrize("m", [2, 3])
def test_consistency_objective_value(m):
    b, c = 3, 4
    logits = np.random.default_rng(7).normal(size=(m, b, c)).astype(np.float32)
    y = np.array([0, 3, 1])
    model = FixedLogits(logits.reshape(m * b, c))
    x, _ = batch(b)
    obj = Consistency(sigma=0.25, lbd=10.0, m=m)
    loss, logs = obj(model, x, torch.tensor(y), CTX)
    xent = np_xent(logits, y).mean()
    reg = np_consistency(logits, 10.0, 0.5, "default")
    assert loss.item() == pytest.approx(xent + reg, rel=1e-5)
    assert logs["xent"] == pytest.approx(xent, rel=1e-5)
    assert logs["reg"] == pytest.approx(reg, rel=1e-5)
    assert logs["acc"] == pytest.approx(np.mean(logits.argmax(-1) == y))
    assert all(type(v) is float for v in logs.values())
    # one forward pass over the m copies, each copy x + its own N(0, sigma^2) draw
    assert len(model.inputs) == 1
    noise = (model.inputs[0] - x.repeat(m, 1, 1, 1)).view(m, b, -1)
    assert not torch.allclose(noise[0], noise[1])


def test_consistency_validation_names_the_field():
    with pytest.raises(ValueError, match="^m:"):
        Consistency(sigma=0.5, lbd=1.0, m=1)
    with pytest.raises(ValueError, match="^loss:"):
        Consistency(sigma=0.5, lbd=1.0, loss="l1")
    with pytest.raises(ValueError, match="loss"):
        consistency_regularizer(torch.zeros(2, 1, 3), 1.0, 0.5, "l1")
    with pytest.raises(ValueError, match="^m:"):
        SmoothAdvConsistency(sigma=0.5, m=1)


# --------------------------------------------------------------------------- gaussian


def test_gaussian_constant_logits_is_cross_entropy():
    logits = np.array([[1.0, 2.0, 0.5], [0.0, -1.0, 3.0], [2.0, 2.0, 2.0]], dtype=np.float32)
    y = np.array([1, 0, 2])
    model = FixedLogits(logits)
    x, _ = batch(3)
    loss, logs = Gaussian(sigma=0.5)(model, x, torch.tensor(y), CTX)
    assert loss.item() == pytest.approx(np_xent(logits, y).mean(), rel=1e-6)
    assert logs["acc"] == pytest.approx(1 / 3)


def test_gaussian_noise_is_one_global_rng_draw_per_example():
    model = FixedLogits(np.zeros((4, 5), dtype=np.float32))
    x, y = batch(4)
    torch.manual_seed(123)
    Gaussian(sigma=0.3)(model, x, y, CTX)
    torch.manual_seed(123)
    expected = x + 0.3 * torch.randn_like(x)
    assert torch.allclose(model.inputs[0], expected, atol=1e-6)


# --------------------------------------------------------------------------- stability


class PerPass(nn.Module):
    """Returns its k-th logits parameter at its k-th call (one row per input row), recording
    each input: a loss computed by hand from chosen logits, pass by pass."""

    def __init__(self, *logits: np.ndarray):
        super().__init__()
        self.logits = nn.ParameterList(torch.tensor(z, dtype=torch.float32) for z in logits)
        self.inputs: list[torch.Tensor] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.logits[len(self.inputs)]
        assert x.shape[0] == logits.shape[0], (x.shape, logits.shape)
        self.inputs.append(x.detach().clone())
        return logits


def test_stability_value_and_undetached_target():
    b, c = 3, 4
    clean = np.array([[2.0, 0.0, 1.0, -1.0], [0.5, 0.5, 0.0, 0.0], [-1.0, 3.0, 0.0, 1.0]])
    noisy = np.array([[1.0, 1.0, 0.0, 0.0], [2.0, -2.0, 0.0, 1.0], [0.0, 0.0, 0.0, 0.0]])
    y = np.array([0, 2, 1])
    model = PerPass(clean, noisy)
    x, _ = batch(b)
    loss, logs = Stability(sigma=0.5, lbd=2.0)(model, x, torch.tensor(y), CTX)
    xent = np_xent(clean, y).mean()
    stab = np.mean(-np.sum(np_softmax(clean, -1) * np_log_softmax(noisy, -1), axis=-1))
    assert loss.item() == pytest.approx(xent + 2.0 * stab, rel=1e-6)
    assert logs["xent"] == pytest.approx(xent, rel=1e-6)
    assert logs["reg"] == pytest.approx(stab, rel=1e-6)
    assert logs["acc"] == pytest.approx(np.mean(noisy.argmax(-1) == y))  # on the noisy copy
    # two passes: the clean input first, unperturbed; the noisy one second
    assert len(model.inputs) == 2
    assert torch.equal(model.inputs[0], x)
    assert not torch.allclose(model.inputs[1], x)
    # the clean softmax is a live target: its gradient carries the stability term too.
    loss.backward()
    t = torch.tensor(clean, dtype=torch.float64, requires_grad=True)
    n = torch.tensor(noisy, dtype=torch.float64)
    ref = (
        nn.functional.cross_entropy(t, torch.tensor(y))
        - 2.0 * (torch.softmax(t, -1) * torch.log_softmax(n, -1)).sum(-1).mean()
    )
    ref.backward()
    assert np.allclose(model.logits[0].grad.numpy(), t.grad.numpy(), atol=1e-6)
    detached_grad = torch.softmax(t.detach(), -1) - nn.functional.one_hot(torch.tensor(y), c)
    assert not np.allclose(t.grad.numpy(), detached_grad.numpy() / b, atol=1e-3)


def test_stability_normalizes_clean_and_noisy_inputs_apart_in_a_batchnorm_model():
    """Issue 20: the authors' train_stab.py runs clean and noisy inputs in two passes, so
    BatchNorm normalizes each with its own statistics; one joint batch gives another loss."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 26 * 26, 10)
    )
    x, y = torch.rand(8, 1, 28, 28), torch.arange(8)
    torch.manual_seed(1)
    loss, _ = Stability(sigma=1.0, lbd=2.0)(model, x, y, CTX)
    torch.manual_seed(1)
    noisy_input = x + torch.randn_like(x)

    def stability(clean: torch.Tensor, noisy: torch.Tensor) -> torch.Tensor:
        stab = -(torch.softmax(clean, -1) * torch.log_softmax(noisy, -1)).sum(-1).mean()
        return nn.functional.cross_entropy(clean, y) + 2.0 * stab

    apart = stability(model(x), model(noisy_input))
    joint = stability(*model(torch.cat([x, noisy_input])).split(8))
    assert loss.item() == pytest.approx(apart.item(), rel=1e-5)
    assert abs(loss.item() - joint.item()) > 1e-3


# --------------------------------------------------------------------------- macer

# Tempered (beta) smoothed probabilities, one copy; y = 0 for all four examples.
MACER_P = np.array(
    [
        [0.7, 0.2, 0.1],  # correct, xi = Phi^-1(.7) - Phi^-1(.2) = 1.3660 -> contributes
        [0.5, 0.4, 0.1],  # correct, xi = 0.2533 -> contributes
        [0.2, 0.7, 0.1],  # misclassified -> no robustness term
        [0.999, 0.0009, 0.0001],  # correct, xi = 6.212 > gamma -> no contribution
    ]
)


def test_macer_hand_example():
    sigma, gamma, beta, lbd = 0.5, 3.0, 4.0, 16.0
    logits = (np.log(MACER_P) / beta).astype(np.float32)  # softmax(beta * logits) = MACER_P
    y = np.zeros(4, dtype=np.int64)
    model = FixedLogits(logits)
    x, _ = batch(4)
    obj = Macer(sigma=sigma, m=1, lbd=lbd, gamma=gamma, beta=beta)
    loss, logs = obj(model, x, torch.tensor(y), CTX)
    # classification term without beta: softmax of the raw logits
    p_raw = np_softmax(logits.astype(np.float64), axis=-1)
    cl = -np.log(p_raw[:, 0] + 1e-10).sum()
    xi0 = 0.52440051 - (-0.84162123)  # Phi^-1(0.7) - Phi^-1(0.2), from tables
    xi1 = 0.0 - (-0.25334710)  # Phi^-1(0.5) - Phi^-1(0.4)
    rob = sigma / 2 * ((gamma - xi0) + (gamma - xi1))  # sigma/2 once; examples 2, 3 drop out
    assert logs["xent"] == pytest.approx(cl / 4, rel=1e-5)
    assert logs["reg"] == pytest.approx(rob / 4, rel=1e-4)
    assert loss.item() == pytest.approx((cl + lbd * rob) / 4, rel=1e-4)
    assert logs["robust_frac"] == pytest.approx(0.5)
    assert MACER_P[3, 0] > 0.99 and np_ndtri(0.999) - np_ndtri(0.0009) > gamma


def test_macer_robustness_matches_numpy_over_copies():
    rng = np.random.default_rng(3)
    m, b, c = 3, 32, 5
    logits = rng.normal(scale=0.1, size=(m, b, c))
    sigma, gamma, beta = 0.25, 1.0, 16.0
    p = np_softmax(beta * logits, axis=-1).mean(axis=0)
    order = np.argsort(-p, axis=-1)
    y = np.where(np.arange(b) < 24, order[:, 0], order[:, 1])  # the last 8 misclassified
    p1 = np.take_along_axis(p, order[:, :1], -1)[:, 0]
    p2 = np.take_along_axis(p, order[:, 1:2], -1)[:, 0]
    xi = np_ndtri(p1) - np_ndtri(p2)
    keep = (order[:, 0] == y) & np.isfinite(xi) & (xi <= gamma)
    assert 0 < keep.sum() < (order[:, 0] == y).sum()  # the example exercises both filters
    expected = sigma / 2 * np.sum(gamma - xi[keep])
    got, count = macer_robustness(torch.tensor(logits), torch.tensor(y), sigma, gamma, beta)
    assert got.item() == pytest.approx(expected, rel=1e-9)
    assert count.item() == keep.sum()


def test_macer_saturated_example_has_finite_gradient():
    logits = np.array([[30.0, 0.0, 0.0], [0.3, 0.1, 0.0]], dtype=np.float32)  # first: p1 == 1
    model = FixedLogits(logits)
    x, _ = batch(2)
    loss, _ = Macer(sigma=0.5, m=1)(model, x, torch.tensor([0, 0]), CTX)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(model.logits.grad).all()
    assert model.logits.grad[1].abs().sum() > 0


def test_macer_deferred_start():
    logits = (np.log(MACER_P) / 16.0).astype(np.float32)
    y = torch.zeros(4, dtype=torch.int64)
    x, _ = batch(4)
    obj = Macer(sigma=0.5, m=1, deferred_epochs=5)
    assert [obj.lbd_at(e) for e in (0, 4, 5, 30)] == [0.0, 0.0, 16.0, 16.0]
    before, logs_before = obj(FixedLogits(logits), x, y, StepContext(epoch=4, epochs=90))
    after, logs_after = obj(FixedLogits(logits), x, y, StepContext(epoch=5, epochs=90))
    assert before.item() == pytest.approx(logs_before["xent"], rel=1e-6)
    assert logs_before["lbd"] == 0.0 and logs_after["lbd"] == 16.0
    assert after.item() == pytest.approx(logs_after["xent"] + 16.0 * logs_after["reg"], rel=1e-5)
    assert after.item() > before.item()


# --------------------------------------------------------------------------- smoothed PGD


def _smoothed_loss(model, x, y, noise):
    """-log(mean_i softmax(model(x + noise_i))_y), written independently (loop over copies)."""
    with torch.no_grad():
        probs = sum(torch.softmax(model(x + n), -1) for n in noise) / len(noise)
    return -torch.log(probs[torch.arange(len(y)), y])


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
@pytest.mark.parametrize("eps", [0.3, 2.0])
def test_smoothed_pgd_stays_in_ball_and_box(seed, eps):
    torch.manual_seed(seed)
    model = Recorder((3, 5, 5))
    x = torch.rand(6, 3, 5, 5)
    x[0] = 0.0
    x[1] = 1.0
    y = torch.randint(0, 5, (6,))
    noise = 0.5 * torch.randn(4, *x.shape)
    x_adv = smoothed_pgd_l2(model, x, y, noise, eps=eps, steps=7)
    assert x_adv.shape == x.shape
    assert (x_adv - x).flatten(1).norm(dim=1).max().item() <= eps * (1 + 1e-5)
    assert x_adv.min().item() >= 0.0 and x_adv.max().item() <= 1.0
    assert not x_adv.requires_grad


def test_smoothed_pgd_eps_zero_is_identity():
    model = Recorder()
    x, y = batch(3)
    assert torch.equal(smoothed_pgd_l2(model, x, y, torch.randn(2, *x.shape), 0.0, 10), x)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_smoothed_pgd_increases_smoothed_loss_and_reuses_noise(seed):
    torch.manual_seed(seed)
    model = Recorder()
    x, y = batch(8, seed=seed)
    noise = 0.25 * torch.randn(4, *x.shape)
    x_adv = smoothed_pgd_l2(model, x, y, noise, eps=1.0, steps=10)
    clean, adv = _smoothed_loss(model, x, y, noise), _smoothed_loss(model, x_adv, y, noise)
    assert (adv >= clean - 1e-6).all()
    assert adv.sum() > clean.sum() + 0.1
    again = smoothed_pgd_l2(model, x, y, noise, eps=1.0, steps=10)
    assert torch.equal(again, x_adv)  # no fresh randomness inside: same noise, same output


def test_smoothed_pgd_one_step_on_linear_model_by_hand():
    w = np.random.default_rng(0).normal(size=(3, 8))
    model = nn.Sequential(nn.Flatten(), nn.Linear(8, 3, bias=False)).double()
    model[1].weight.data = torch.tensor(w)
    x = torch.full((1, 2, 4), 0.5, dtype=torch.float64)
    y = torch.tensor([1])
    eps = 0.05  # small enough that the box never clips
    x_adv = smoothed_pgd_l2(model, x, y, torch.zeros(1, *x.shape, dtype=x.dtype), eps, 1)
    # gradient of -log softmax_y(W z) w.r.t. z is W^T (p - e_y); the step 2*eps is renormed to eps
    p = np_softmax(w @ np.full(8, 0.5))
    g = w.T @ (p - np.eye(3)[1])
    assert np.allclose((x_adv - x).numpy().ravel(), eps * g / np.linalg.norm(g), atol=1e-10)


def test_smoothed_pgd_step_size_and_projection_order_by_hand():
    # Two classes, logits (z1 + z2, 0), y = 1: the ascent direction is always (1, 1)/sqrt(2).
    model = nn.Sequential(nn.Flatten(), nn.Linear(2, 2, bias=False)).double()
    model[1].weight.data = torch.tensor([[1.0, 1.0], [0.0, 0.0]], dtype=torch.float64)
    x = torch.tensor([[[[0.5, 0.95]]]], dtype=torch.float64)
    eps = 0.4
    x_adv = smoothed_pgd_l2(model, x, torch.tensor([1]), torch.zeros(1, *x.shape).double(), eps, 1)
    # step 2 * eps = 0.8 along (1, 1)/sqrt(2) -> (0.566, 0.566); clip x + delta into [0, 1]
    # -> delta (0.5, 0.05); norm 0.5025 > eps -> scaled to eps.
    clipped = np.array([0.5, 0.05])
    expected = clipped * eps / np.linalg.norm(clipped)
    assert np.allclose((x_adv - x).numpy().ravel(), expected, atol=1e-12)


def test_smoothed_pgd_zero_gradient_takes_a_random_direction():
    model = FixedLogits(np.zeros((2 * 3, 4), dtype=np.float32))  # output ignores the input
    x = torch.full((3, 1, 4, 4), 0.5)
    x_adv = smoothed_pgd_l2(
        model, x, torch.zeros(3, dtype=torch.int64), torch.zeros(2, *x.shape), 0.1, 1
    )
    norms = (x_adv - x).flatten(1).norm(dim=1)
    assert torch.isfinite(x_adv).all()
    assert torch.allclose(norms, torch.full_like(norms, 0.1), rtol=1e-5)
    assert model.logits.grad is None


def test_smoothed_pgd_restores_modes_and_leaves_parameter_grads_alone():
    model = nn.Sequential(Recorder(), nn.Dropout(0.5))
    model.train()
    model[1].eval()  # a submodule deliberately in eval mode must stay so
    x, y = batch(4)
    smoothed_pgd_l2(model, x, y, 0.1 * torch.randn(3, *x.shape), eps=0.5, steps=3)
    assert model.training and model[0].training and not model[1].training
    assert all(not training for _, training in model[0].calls)  # attacked in eval mode
    assert all(p.grad is None for p in model.parameters())
    assert all(p.requires_grad for p in model.parameters())


# --------------------------------------------------------------------------- smoothadv


def test_smoothadv_eps_warmup():
    obj = SmoothAdv(sigma=0.5, eps=1.0, warmup_epochs=10)
    assert [obj.eps_at(e) for e in (0, 4, 9, 20)] == pytest.approx([0.1, 0.5, 1.0, 1.0])
    assert SmoothAdv(sigma=0.5, eps=1.0, warmup_epochs=0).eps_at(0) == 1.0


def test_smoothadv_reuses_attack_noise_for_outer_loss():
    m, b = 4, 3
    model = Recorder()
    model.train()
    x, y = batch(b)
    obj = SmoothAdv(sigma=0.5, m=m, eps=1.0, steps=5, warmup_epochs=0)
    loss, logs = obj(model, x, y, CTX)
    attack_calls = [c for c, training in model.calls if not training]
    outer_calls = [c for c, training in model.calls if training]
    assert len(attack_calls) == 5 and len(outer_calls) == 1  # one pass per step, m copies each
    first = attack_calls[0].view(m, b, -1)  # x + 0 + noise_i
    outer = outer_calls[0].view(m, b, -1)  # x_adv + noise_i
    shift = outer - first  # x_adv - x, identical for every copy iff the noise is reused
    assert torch.allclose(shift, shift[:1].expand_as(shift), atol=1e-6)
    assert shift[0].norm(dim=1).max() <= 1.0 + 1e-5
    assert shift[0].abs().max() > 0
    ref = nn.functional.cross_entropy(model.net(outer_calls[0]), y.repeat(m))
    assert loss.item() == pytest.approx(ref.item(), rel=1e-6)
    assert logs["eps"] == 1.0


def test_smoothadv_outer_loss_with_fixed_logits():
    m, b, c = 4, 2, 3
    logits = np.random.default_rng(5).normal(size=(m, b, c)).astype(np.float32)
    y = np.array([2, 0])
    model = FixedLogits(logits.reshape(m * b, c))
    x, _ = batch(b)
    loss, logs = SmoothAdv(sigma=0.5)(model, x, torch.tensor(y), CTX)
    assert loss.item() == pytest.approx(np_xent(logits, y).mean(), rel=1e-6)
    assert logs["eps"] == pytest.approx(0.1)
    cons, logs = SmoothAdvConsistency(sigma=0.5, lbd=2.0)(model, x, torch.tensor(y), CTX)
    expected = np_xent(logits, y).mean() + np_consistency(logits, 2.0, 0.5, "default")
    assert cons.item() == pytest.approx(expected, rel=1e-5)
    assert logs["reg"] == pytest.approx(np_consistency(logits, 2.0, 0.5, "default"), rel=1e-5)


# --------------------------------------------------------------------------- registry / base


EXPECTED_PARAMS = {
    "gaussian": ["label_smoothing"],
    "consistency": ["lbd", "m", "eta", "loss"],
    "smoothadv": ["m", "eps", "steps", "warmup_epochs"],
    "smoothadv_consistency": ["m", "eps", "steps", "warmup_epochs", "lbd", "eta", "loss"],
    "stability": ["lbd"],
    "macer": ["m", "lbd", "gamma", "beta", "deferred_epochs"],
    "adre_reg": ["k", "lbd", "per_term", "label_smoothing"],
    "adre_adv": ["k", "eps", "steps", "warmup_epochs", "lbd", "label_smoothing"],
    "standard": [],
    "pgd_at": ["norm", "eps", "steps", "step_size", "attack_mode"],
    "trades": ["norm", "eps", "steps", "step_size", "beta", "noise"],
    "mart": ["norm", "eps", "steps", "step_size", "beta"],
    "mma": [
        "norm",
        "hinge_max",
        "init_eps",
        "steps",
        "step_scale",
        "search_steps",
        "clean_loss_coeff",
    ],  # fmt: skip
    "atent": ["norm", "gamma", "steps", "step_size", "noise", "alpha", "init_radius"],
    "gradient_norm": ["norm", "lam", "method", "h"],
    "free_at": ["eps", "m", "step_size"],
}


def test_registry_and_parameter_names():
    assert set(REGISTRY) == set(EXPECTED_PARAMS)
    for method, names in EXPECTED_PARAMS.items():
        assert parameter_names(method) == names


@pytest.mark.parametrize("method", sorted(EXPECTED_PARAMS))
def test_each_declaration_names_its_implementation(method):
    declared = REGISTRY[method]
    cls = implementation(method)
    assert cls.__module__ == declared.implemented_by.rpartition(".")[0]
    assert issubclass(cls, declared) and issubclass(cls, Objective)
    # the declaration alone holds the hyperparameters
    assert cls.__dataclass_fields__ is declared.__dataclass_fields__


def test_declarations_import_no_torch():
    # what planning imports: every snakemake call pays for it (issue 19)
    code = (
        "import sys\n"
        "from robustreg.objectives import describe, keeps_state, parameter_names\n"
        "from robustreg.objectives import resolve_params, uses_sigma\n"
        "from robustreg.schedule import check_schedule\n"
        "describe('mma', {'norm': 'l2', 'hinge_max': 1.0, 'init_eps': 0.5, 'steps': 2})\n"
        "print(sorted(name for name in ('torch', 'scipy') if name in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_resolve_params_errors():
    with pytest.raises(ValueError, match="'lbdd'"):
        resolve_params("stability", {"lbdd": 1.0})
    with pytest.raises(ValueError, match="'lbd'"):
        resolve_params("consistency", {})
    with pytest.raises(ValueError, match="'nope'"):
        build_objective("nope", 0.5, {})
    assert resolve_params("macer", {"lbd": 6.0}) == {
        "m": 16,
        "lbd": 6.0,
        "gamma": 8.0,
        "beta": 16.0,
        "deferred_epochs": 0,
    }


@pytest.mark.parametrize("sigma", [0.0, -0.25])
def test_build_objective_rejects_nonpositive_sigma(sigma):
    with pytest.raises(ValueError, match="sigma"):
        build_objective("gaussian", sigma, {})


def test_methods_without_noise_take_no_sigma():
    assert not uses_sigma("atent") and uses_sigma("gaussian")
    with pytest.raises(ValueError, match="'atent' trains without Gaussian noise"):
        build_objective("atent", 0.25, REQUIRED["atent"])
    with pytest.raises(ValueError, match="sigma must be > 0 for method 'gaussian'"):
        build_objective("gaussian", None, {})


def test_batch_split():
    splits = {
        method: build_objective(
            method, noise_level(method, 0.5), REQUIRED.get(method, {})
        ).batch_split
        for method in REGISTRY
    }
    assert splits == {
        "gaussian": 1,
        "consistency": 2,
        "smoothadv": 4,
        "smoothadv_consistency": 4,
        "stability": 1,
        "macer": 1,
        "adre_reg": 1,
        "adre_adv": 1,
    } | dict.fromkeys(
        ["standard", "pgd_at", "trades", "mart", "mma", "atent", "gradient_norm", "free_at"], 1
    )
    assert build_objective("consistency", 0.5, {"lbd": 1.0, "m": 3}).batch_split == 3


@pytest.mark.parametrize("method", sorted(EXPECTED_PARAMS))
def test_every_method_trains_a_lenet(method):
    torch.manual_seed(0)
    model = create_model("lenet_mnist", 10)
    model.train()
    x = torch.rand(4, 1, 28, 28)
    y = torch.randint(0, 10, (4,))
    obj = build_objective(method, noise_level(method, 0.5), REQUIRED.get(method, {}))
    loss, logs = obj(model, x, y, StepContext(epoch=3, epochs=90))
    assert loss.dim() == 0 and torch.isfinite(loss)
    assert all(type(v) is float and math.isfinite(v) for v in logs.values())
    assert logs["loss"] == pytest.approx(loss.item())
    loss.backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert sum(g.abs().sum().item() for g in grads) > 0
    assert model.training


DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("method", sorted(EXPECTED_PARAMS))
def test_every_method_any_image_shape_and_device(method, device):
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.LazyLinear(7)
    ).to(device)
    model(torch.zeros(2, 3, 9, 7, device=device))  # materialize the lazy layer
    x = torch.rand(4, 3, 9, 7, device=device).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 7, (4,), device=device)
    params = dict(REQUIRED.get(method, {}))
    if "m" in parameter_names(method):
        params["m"] = 2
    loss, _ = build_objective(method, noise_level(method, 0.25), params)(model, x, y, CTX)
    assert loss.device.type == device and torch.isfinite(loss)


@pytest.mark.parametrize("method", sorted(EXPECTED_PARAMS))
def test_every_method_under_bfloat16_autocast(method):
    torch.manual_seed(0)
    model = Recorder()
    x, y = batch(4)
    params = dict(REQUIRED.get(method, {}))
    if "m" in parameter_names(method):
        params["m"] = 2
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss, logs = build_objective(method, noise_level(method, 0.25), params)(model, x, y, CTX)
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    assert all(math.isfinite(v) for v in logs.values())
    loss.backward()


@pytest.mark.parametrize(
    ("value", "epochs", "expected"),
    [
        (7, 90, 7),
        ("first_lr_drop", 90, 30),
        ("10/90", 90, 10),
        ("10/150", 150, 10),
        ("10/90", 4, 1),
        ("10/90", 45, 5),
        # half an epoch rounds up
        ("1/2", 9, 5),
        ("0/90", 4, 0),
    ],
)
def test_epochs_tied_to_the_schedule(value, epochs, expected):
    schedule = {"epochs": epochs, "lr_milestones": [60, 30]}
    assert epochs_in(value, schedule, "warmup_epochs") == expected
