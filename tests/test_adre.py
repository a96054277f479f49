"""ADRE_REG / ADRE_ADV (Feng et al. 2020) and Gaussian's label smoothing.

Reference values come from numpy/scipy written out here, never from the code under test.
Objectives send k noisy copies through the model as one [k*B, ...] batch, copy-major (rows
j*B .. (j+1)*B - 1 are copy j); ``FixedLogits`` uses that layout to choose every logit.
"""

from __future__ import annotations

import math
from functools import partial

import numpy as np
import pytest
import torch
from conftest import FixedLogits
from scipy.special import log_softmax as np_log_softmax
from scipy.special import softmax as np_softmax
from torch import nn

from robustreg.attacks.smoothed_pgd import smoothed_pgd_l2
from robustreg.objectives import (
    REGISTRY,
    StepContext,
    build_objective,
    parameter_names,
    resolve_params,
)
from robustreg.objectives.adre import (
    AdreAdv,
    AdreReg,
    adre_attack_objective,
    runner_up,
    smoothed_log_probs,
)
from robustreg.objectives.gaussian import Gaussian
from robustreg.objectives.smoothadv import SmoothAdv

CTX = StepContext(epoch=0, epochs=90)

# k = 2 copies of B = 2 examples, 3 classes, both labelled 0. Averaged softmax (Eq. 8):
# example 0: G_hat = (0.512, 0.069, 0.418): right, runner-up class 2 (copy 1 alone says 2);
# example 1: G_hat = (0.219, 0.620, 0.161): wrong, so the "runner-up" is the top class 1.
HAND_LOGITS = np.array(
    [
        [[2.0, 0.0, 1.0], [0.0, 2.0, 1.0]],  # copy 0
        [[1.0, -1.0, 1.5], [0.5, 1.0, -1.0]],  # copy 1
    ]
)
HAND_Y = np.array([0, 0])
HAND_Y_HAT = np.array([2, 1])


class Recorder(nn.Module):
    """A small random classifier (with dropout) recording its inputs and mode at each call."""

    def __init__(self, in_shape=(1, 4, 4), classes: int = 5):
        super().__init__()
        self.net = nn.Sequential(
            nn.Flatten(),
            nn.Linear(math.prod(in_shape), 12),
            nn.Tanh(),
            nn.Dropout(0.2),
            nn.Linear(12, classes),
        )
        self.calls: list[tuple[torch.Tensor, bool]] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls.append((x.detach().clone(), self.training))
        return self.net(x)


def batch(b: int = 4, shape=(1, 4, 4), classes: int = 5, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand((b, *shape), generator=g), torch.randint(0, classes, (b,), generator=g)


def np_xent(logits: np.ndarray, y: np.ndarray, ls: float = 0.0) -> np.ndarray:
    """Per-row CE of logits [..., B, C] against y [B], target (1 - ls) e_y + ls / C."""
    lsm = np_log_softmax(logits.astype(np.float64), axis=-1)
    nll = -np.take_along_axis(lsm, np.broadcast_to(y[:, None], lsm.shape[:-1] + (1,)), -1)[..., 0]
    return (1 - ls) * nll + ls * -lsm.mean(axis=-1)


def np_adre(logits: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-example (y_hat, -log G_hat^{y_hat}) from logits [k, B, C]: Eq. (8) then Eq. (4)."""
    g = np_softmax(logits.astype(np.float64), axis=-1).mean(axis=0)
    others = g.copy()
    others[np.arange(len(y)), y] = -1.0
    y_hat = others.argmax(axis=1)
    return y_hat, -np.log(g[np.arange(len(y)), y_hat])


def fresh(model: nn.Module) -> None:
    for p in model.parameters():
        p.grad = None


def grads(model: nn.Module) -> list[torch.Tensor]:
    return [p.grad.clone() for p in model.parameters()]


# --------------------------------------------------------------------------- building blocks


def test_hand_example_smoothed_probs_and_runner_up():
    g = np_softmax(HAND_LOGITS, axis=-1).mean(axis=0)
    assert g[0].argmax() == 0 and g[1].argmax() == 1  # example 0 right, example 1 wrong
    assert np_softmax(HAND_LOGITS[1, 0]).argmax() == 2  # a single copy disagrees
    log_g = smoothed_log_probs(torch.tensor(HAND_LOGITS))
    assert np.allclose(log_g.numpy(), np.log(g), rtol=0, atol=1e-12)
    assert runner_up(log_g, torch.tensor(HAND_Y)).tolist() == HAND_Y_HAT.tolist()
    assert np_adre(HAND_LOGITS, HAND_Y)[0].tolist() == HAND_Y_HAT.tolist()


def test_runner_up_excludes_the_true_class():
    log_p = torch.log(torch.tensor([[0.5, 0.3, 0.2], [0.5, 0.3, 0.2], [0.1, 0.2, 0.7]]))
    # y = 0 right -> runner-up 1; y = 1 wrong -> top class 0; y = 0 wrong -> top class 2
    assert runner_up(log_p, torch.tensor([0, 1, 0])).tolist() == [1, 0, 2]


def test_stable_log_g_matches_log_mean_softmax_and_never_underflows():
    logits = torch.tensor(np.random.default_rng(0).normal(scale=3.0, size=(4, 6, 7)))
    expected = np.log(np_softmax(logits.numpy(), axis=-1).mean(axis=0))
    assert np.allclose(smoothed_log_probs(logits).numpy(), expected, rtol=1e-12, atol=1e-12)
    # float32: exp(-200) underflows to 0 in both copies, so log(mean softmax) is -inf there
    big = torch.tensor([[[0.0, -200.0, 0.0]], [[0.0, -200.0, 0.0]]])
    naive = torch.log(torch.softmax(big, -1).mean(0))
    assert torch.isinf(naive[0, 1])
    stable = smoothed_log_probs(big)
    assert torch.isfinite(stable).all()
    assert stable[0, 1].item() == pytest.approx(-200.0 - math.log(2.0), rel=1e-6)


def test_adre_loss_stays_finite_when_the_runner_up_underflows():
    # two classes, margin 120: G_hat^1 = e^-120 underflows in float32
    model = FixedLogits(np.array([[60.0, -60.0], [60.0, -60.0]]))
    x, _ = batch(1)
    loss, logs = AdreReg(sigma=0.5, k=2, lbd=0.1)(model, x, torch.tensor([0]), CTX)
    assert logs["adre"] == pytest.approx(120.0, rel=1e-5)
    assert loss.item() == pytest.approx(-0.1 * 120.0, rel=1e-4)
    loss.backward()
    assert torch.isfinite(model.logits.grad).all()


# --------------------------------------------------------------------------- ADRE_REG


def test_adre_reg_hand_example():
    k, b = HAND_LOGITS.shape[:2]
    model = FixedLogits(HAND_LOGITS.reshape(k * b, -1))
    x, _ = batch(b)
    loss, logs = AdreReg(sigma=0.25, k=k, lbd=0.3)(model, x, torch.tensor(HAND_Y), CTX)
    per = np_xent(HAND_LOGITS, HAND_Y).mean(axis=0)  # Eq. (7), one value per example
    g = np_softmax(HAND_LOGITS, axis=-1).mean(axis=0)
    adre = -np.log(g[[0, 1], HAND_Y_HAT])  # the hand-read runner-ups 2 and 1
    assert logs["xent"] == pytest.approx(per.mean(), rel=1e-6)
    assert logs["adre"] == pytest.approx(adre.mean(), rel=1e-6)
    assert loss.item() == pytest.approx(np.mean(per - 0.3 * adre), rel=1e-6)
    assert logs["loss"] == pytest.approx(loss.item())
    assert logs["acc"] == pytest.approx(1 / 4)  # only copy 0 of example 0 says 0
    assert logs["smoothed_acc"] == pytest.approx(1 / 2)
    assert all(type(v) is float for v in logs.values())
    # one forward pass of the k copies, each x plus its own draw
    assert len(model.inputs) == 1
    noise = (model.inputs[0] - x.repeat(k, 1, 1, 1)).view(k, b, -1)
    assert not torch.allclose(noise[0], noise[1])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_adre_reg_single_takes_one_random_copy_per_example(seed):
    k, b, c = 3, 6, 5
    logits = np.random.default_rng(seed).normal(size=(k, b, c))
    y = np.array([0, 1, 2, 3, 4, 0])
    x, _ = batch(b)
    torch.manual_seed(seed)
    loss, logs = AdreReg(sigma=0.5, k=k, lbd=0.2, per_term="single")(
        FixedLogits(logits.reshape(k * b, c)), x, torch.tensor(y), CTX
    )
    torch.manual_seed(seed)  # the draws, in order: the noise, then one copy index per example
    torch.randn((k, *x.shape))
    chosen = torch.randint(k, (b,)).numpy()
    assert len(set(chosen.tolist())) > 1
    per = np_xent(logits[chosen, np.arange(b)], y)
    adre = np_adre(logits, y)[1]  # G_hat still averages all k copies
    assert logs["xent"] == pytest.approx(per.mean(), rel=1e-5)
    assert logs["adre"] == pytest.approx(adre.mean(), rel=1e-5)
    assert loss.item() == pytest.approx(np.mean(per - 0.2 * adre), rel=1e-5)


@pytest.mark.parametrize("ls", [0.0, 0.1])
def test_adre_reg_single_k1_lbd0_is_gaussian_training(ls):
    x, y = batch(8)
    results = []
    for objective in (
        Gaussian(sigma=0.25, label_smoothing=ls),
        AdreReg(sigma=0.25, k=1, lbd=0.0, per_term="single", label_smoothing=ls),
    ):
        torch.manual_seed(0)
        model = Recorder()
        model.train()
        loss, _ = objective(model, x, y, CTX)
        loss.backward()
        results.append((loss.detach(), grads(model), torch.get_rng_state()))
    (g_loss, g_grads, g_rng), (a_loss, a_grads, a_rng) = results
    assert torch.equal(g_loss, a_loss)
    assert all(torch.equal(u, v) for u, v in zip(g_grads, a_grads, strict=True))
    assert torch.equal(g_rng, a_rng)  # no extra draw: the next batch's noise is the same too


def test_label_smoothing_enters_l_per_only():
    k, b = HAND_LOGITS.shape[:2]
    x, _ = batch(b)
    y = torch.tensor(HAND_Y)
    plain = AdreReg(sigma=0.25, k=k, lbd=0.3)
    smooth = AdreReg(sigma=0.25, k=k, lbd=0.3, label_smoothing=0.1)
    _, logs0 = plain(FixedLogits(HAND_LOGITS.reshape(k * b, -1)), x, y, CTX)
    loss, logs = smooth(FixedLogits(HAND_LOGITS.reshape(k * b, -1)), x, y, CTX)
    per = np_xent(HAND_LOGITS, HAND_Y, ls=0.1).mean()
    torch_ls = nn.functional.cross_entropy(
        torch.tensor(HAND_LOGITS).flatten(0, 1), y.repeat(k), label_smoothing=0.1
    )
    assert logs["xent"] == pytest.approx(per, rel=1e-6)
    assert logs["xent"] == pytest.approx(torch_ls.item(), rel=1e-6)
    assert logs["adre"] == pytest.approx(logs0["adre"], rel=1e-7)
    assert loss.item() == pytest.approx(per - 0.3 * logs0["adre"], rel=1e-6)


def test_gaussian_label_smoothing():
    logits = np.array([[1.0, 2.0, 0.5], [0.0, -1.0, 3.0], [2.0, 2.0, 2.0]])
    y = np.array([1, 0, 2])
    x, _ = batch(3)
    loss, logs = Gaussian(sigma=0.5, label_smoothing=0.1)(
        FixedLogits(logits), x, torch.tensor(y), CTX
    )
    assert loss.item() == pytest.approx(np_xent(logits, y, ls=0.1).mean(), rel=1e-6)
    assert logs["xent"] == logs["loss"]
    plain, _ = Gaussian(sigma=0.5)(FixedLogits(logits), x, torch.tensor(y), CTX)
    assert plain.item() == pytest.approx(np_xent(logits, y).mean(), rel=1e-6)
    assert resolve_params("gaussian", {}) == {"label_smoothing": 0.0}


def test_adre_reg_gradient_reaches_parameters_and_carries_the_adre_term():
    x, y = batch(6)
    per_lbd = {}
    for lbd in (0.0, 0.5):
        torch.manual_seed(0)
        model = Recorder()
        loss, _ = AdreReg(sigma=0.25, k=4, lbd=lbd)(model, x, y, CTX)
        loss.backward()
        per_lbd[lbd] = grads(model)
        assert all(torch.isfinite(g).all() and g.abs().sum() > 0 for g in per_lbd[lbd])
    assert not torch.allclose(per_lbd[0.0][-1], per_lbd[0.5][-1])


# --------------------------------------------------------------------------- ADRE_ADV


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("epoch", [0, 7])
def test_adre_adv_with_lbd0_is_smoothadv(seed, epoch):
    x, y = batch(6, seed=seed)
    ctx = StepContext(epoch=epoch, epochs=20)
    adre = AdreAdv(sigma=0.5, k=3, eps=0.5, steps=3, warmup_epochs=4, lbd=0.0)
    salman = SmoothAdv(sigma=0.5, m=3, eps=0.5, steps=3, warmup_epochs=4)
    results = []
    for objective in (adre, salman):
        torch.manual_seed(seed)
        model = Recorder()
        model.train()
        loss, logs = objective(model, x, y, ctx)
        loss.backward()
        results.append((loss.detach(), grads(model), logs["eps"], torch.get_rng_state()))
    (a_loss, a_grads, a_eps, a_rng), (s_loss, s_grads, s_eps, s_rng) = results
    assert torch.equal(a_loss, s_loss)
    assert all(torch.equal(u, v) for u, v in zip(a_grads, s_grads, strict=True))
    assert a_eps == s_eps and torch.equal(a_rng, s_rng)
    assert adre.batch_split == salman.batch_split == 3
    assert [adre.eps_at(e) for e in range(6)] == [salman.eps_at(e) for e in range(6)]


def test_adre_adv_outer_loss_is_adre_reg_with_fixed_logits():
    k, b = HAND_LOGITS.shape[:2]
    model = FixedLogits(HAND_LOGITS.reshape(k * b, -1))
    x, _ = batch(b)
    obj = AdreAdv(sigma=0.25, k=k, eps=1.0, steps=2, lbd=0.3)
    loss, logs = obj(model, x, torch.tensor(HAND_Y), CTX)
    per = np_xent(HAND_LOGITS, HAND_Y).mean(axis=0)
    adre = np_adre(HAND_LOGITS, HAND_Y)[1]
    assert loss.item() == pytest.approx(np.mean(per - 0.3 * adre), rel=1e-6)
    assert logs["eps"] == pytest.approx(0.1)  # epoch 0 of the default 10-epoch warm-up
    assert len(model.inputs) == 3  # two attack steps, then the outer pass


def test_adre_adv_reuses_noise_and_stays_in_ball_and_box():
    k, b, eps = 3, 5, 0.8
    model = Recorder()
    model.train()
    x, y = batch(b)
    x[0] = 0.0
    x[1] = 1.0
    obj = AdreAdv(sigma=0.5, k=k, eps=eps, steps=4, warmup_epochs=0, lbd=0.5)
    obj(model, x, y, CTX)
    attack = [c for c, training in model.calls if not training]
    outer = [c for c, training in model.calls if training]
    assert len(attack) == 4 and len(outer) == 1
    shift = (outer[0] - attack[0]).view(k, b, -1)  # x_adv - x in every copy
    assert torch.allclose(shift, shift[:1].expand_as(shift), atol=1e-6)  # same noise
    x_adv = x + shift[0].view_as(x)
    assert shift[0].norm(dim=1).max().item() <= eps * (1 + 1e-5)
    assert shift[0].abs().max() > 0
    assert x_adv.min().item() >= -1e-6 and x_adv.max().item() <= 1 + 1e-6


def np_attack_objective(model, x, y, noise, lbd):
    """Eq. (12) per example with Eq. (8)'s G_hat, in float64 numpy from per-copy logits."""
    with torch.no_grad():
        logits = np.stack([model(x + n).double().numpy() for n in noise])
    y = y.numpy()
    g = np_softmax(logits, axis=-1).mean(axis=0)
    y_hat, adre = np_adre(logits, y)
    return -np.log(g[np.arange(len(y)), y]) - lbd * adre


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_adre_attack_increases_its_objective_within_the_ball(seed):
    torch.manual_seed(seed)
    model = Recorder().eval()
    x, y = batch(8, seed=seed)
    x[0] = 1.0
    noise = 0.25 * torch.randn(4, *x.shape)
    eps, lbd = 1.0, 0.5
    x_adv = smoothed_pgd_l2(
        model, x, y, noise, eps, 10, loss=partial(adre_attack_objective, lbd=lbd)
    )
    assert (x_adv - x).flatten(1).norm(dim=1).max().item() <= eps * (1 + 1e-5)
    assert x_adv.min().item() >= 0.0 and x_adv.max().item() <= 1.0
    clean = np_attack_objective(model, x, y, noise, lbd)
    adv = np_attack_objective(model, x_adv, y, noise, lbd)
    assert adv.sum() > clean.sum() + 0.1
    assert (adv > clean).mean() >= 0.75
    salman = smoothed_pgd_l2(model, x, y, noise, eps, 10)
    assert not torch.allclose(salman, x_adv)  # the ADRE term changes the attack


# --------------------------------------------------------------------------- config


@pytest.mark.parametrize(
    ("cls", "params", "field"),
    [
        (AdreReg, {"lbd": 0.1, "k": 0}, "k"),
        (AdreReg, {"lbd": 0.1, "k": 2.0}, "k"),
        (AdreReg, {"lbd": -0.1}, "lbd"),
        (AdreReg, {"lbd": 0.1, "per_term": "sum"}, "per_term"),
        (AdreReg, {"lbd": 0.1, "label_smoothing": 1.0}, "label_smoothing"),
        (AdreReg, {"lbd": 0.1, "label_smoothing": -0.1}, "label_smoothing"),
        (AdreAdv, {"lbd": 0.1, "eps": 0.5, "steps": 1, "k": True}, "k"),
        (AdreAdv, {"lbd": -1.0, "eps": 0.5, "steps": 1}, "lbd"),
        (AdreAdv, {"lbd": 0.1, "eps": -0.5, "steps": 1}, "eps"),
        (AdreAdv, {"lbd": 0.1, "eps": 0.5, "steps": 0}, "steps"),
        (AdreAdv, {"lbd": 0.1, "eps": 0.5, "steps": 1, "warmup_epochs": -1}, "warmup_epochs"),
        (AdreAdv, {"lbd": 0.1, "eps": 0.5, "steps": 1, "label_smoothing": 2}, "label_smoothing"),
        (Gaussian, {"label_smoothing": 1.0}, "label_smoothing"),
    ],
)
def test_validation_names_the_field(cls, params, field):
    with pytest.raises(ValueError, match=f"^{field}:"):
        cls(sigma=0.5, **params)


def test_registered_with_their_parameters():
    assert {"adre_reg", "adre_adv"} <= set(REGISTRY)
    assert parameter_names("adre_reg") == ["k", "lbd", "per_term", "label_smoothing"]
    assert parameter_names("adre_adv") == [
        "k", "eps", "steps", "warmup_epochs", "lbd", "label_smoothing"
    ]  # fmt: skip
    assert resolve_params("adre_reg", {"lbd": 0.1}) == {
        "k": 1,
        "lbd": 0.1,
        "per_term": "mean",
        "label_smoothing": 0.0,
    }
    with pytest.raises(ValueError, match="'lbd'"):
        resolve_params("adre_reg", {})
    with pytest.raises(ValueError, match="'eps'"):
        resolve_params("adre_adv", {"lbd": 0.1, "steps": 2})
    assert build_objective("adre_reg", 0.5, {"lbd": 0.1, "k": 8}).batch_split == 1
    adv = build_objective("adre_adv", 0.5, {"lbd": 0.1, "k": 8, "eps": 0.5, "steps": 2})
    assert adv.batch_split == 8


@pytest.mark.parametrize(
    ("method", "params"),
    [
        ("adre_reg", {"lbd": 0.1, "k": 2}),
        ("adre_reg", {"lbd": 0.1, "k": 2, "per_term": "single"}),
        ("adre_adv", {"lbd": 0.1, "k": 2, "eps": 0.5, "steps": 2}),
    ],
)
def test_finite_under_bfloat16_autocast(method, params):
    torch.manual_seed(0)
    model = Recorder()
    x, y = batch(4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss, logs = build_objective(method, 0.25, params)(model, x, y, CTX)
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    assert all(math.isfinite(v) for v in logs.values())
    loss.backward()
