"""MMA training (Ding et al. 2020): the SLM, AN-PGD's margin search and the loss of Eqs. 7-8.

All data are synthetic tensors. On a two-class linear model f(x) = W x + b the margin is known
in closed form: with w = W[1] - W[0] and c = b[1] - b[0], the distance from x to the decision
boundary is |w.x + c| / ||w||_2 in l2 and |w.x + c| / ||w||_1 in linf (the dual norms), and
with two classes the soft logit margin is the logit margin, so the search must land on it.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.special import log_softmax as np_log_softmax
from scipy.special import logsumexp as np_logsumexp
from torch import nn

import robustreg.objectives.mma as mma_module
from robustreg.objectives.base import StepContext, build_objective, resolve_params
from robustreg.objectives.mma import (
    MMA,
    SEARCH_HEADROOM,
    margin_search,
    mma_loss,
    soft_logit_margin,
)

CTX = StepContext(epoch=0, epochs=10)
REQUIRED = {"norm": "l2", "hinge_max": 0.3, "init_eps": 0.1, "steps": 10}
SHAPE = (1, 4, 4)
DIM = math.prod(SHAPE)


def linear_model(w: torch.Tensor, c: float) -> nn.Module:
    """Two-class linear classifier with logit difference z_1 - z_0 = w.x + c."""
    layer = nn.Linear(w.numel(), 2)
    with torch.no_grad():
        layer.weight.copy_(torch.stack([torch.zeros_like(w), w]))
        layer.bias.copy_(torch.tensor([0.0, c]))
    return nn.Sequential(nn.Flatten(), layer)


def true_margins(w: torch.Tensor, c: float, x: torch.Tensor, norm: str) -> torch.Tensor:
    dual = w.norm(p=2) if norm == "l2" else w.abs().sum()
    return (x.flatten(1) @ w + c).abs() / dual


def linear_case(seed: int, batch: int = 12):
    """Synthetic points in [0.35, 0.65]^16 around a boundary through the cube's centre, each
    labelled with its side (all correctly classified), plus one far corner point."""
    gen = torch.Generator().manual_seed(seed)
    w = torch.randn(DIM, generator=gen)
    c = -0.5 * w.sum().item()
    x = 0.35 + 0.3 * torch.rand(batch, *SHAPE, generator=gen)
    x[-1] = (0.5 + 0.45 * w.sign()).view(SHAPE)  # far from the boundary
    y = ((x.flatten(1) @ w + c) > 0).long()
    return linear_model(w, c), w, c, x, y


SEARCH = {"steps": 40, "step_scale": 2.5, "search_steps": 10}


@pytest.mark.parametrize("per_example", [False, True])
@pytest.mark.parametrize("norm", ["l2", "linf"])
@pytest.mark.parametrize("seed", [0, 1])
def test_margin_search_finds_the_linear_margin_from_above(norm, seed, per_example):
    torch.manual_seed(seed)
    model, w, c, x, y = linear_case(seed)
    init_eps, max_eps = (0.1, 0.5) if norm == "l2" else (0.02, 0.1)
    if per_example:  # starts anywhere in [init_eps, max_eps], as MMA's memory gives them
        init_eps = init_eps + (max_eps - init_eps) * torch.rand(x.shape[0], dtype=torch.float64)
    eps, x_adv = margin_search(model, x, y, norm=norm, init_eps=init_eps, max_eps=max_eps, **SEARCH)
    margin = true_margins(w, c, x, norm)
    inside = margin < max_eps
    assert inside[:-1].all() and not inside[-1]
    # A point closer than the margin cannot fool the model: never below it (up to rounding).
    assert (eps[inside] >= margin[inside] * (1 - 1e-5)).all()
    # Above it by the bisection's width, max_eps / 2^10, and in l2 by the direction: 40 PGD
    # steps from a random start in the ball leave a little of the start across w (up to 6%
    # longer over 20 seeds); in linf the sign steps reach the ball's corner sign(w) exactly.
    slack = 1.08 if norm == "l2" else 1.0
    assert (eps[inside] <= margin[inside] * slack + max_eps / 2**10).all()
    assert eps[-1] == max_eps
    dist = (x_adv - x).flatten(1).norm(p=2 if norm == "l2" else math.inf, dim=1)
    assert (dist <= eps + 1e-6).all()
    assert ((x_adv >= 0) & (x_adv <= 1)).all()
    fooled = model(x_adv).argmax(dim=1) != y
    assert fooled[inside].all() and not fooled[-1]


def test_margin_search_points_succeed_on_a_multiclass_net():
    """With C > 2 a point is successful when its SLM is >= 0; every one returned short of
    max_eps is, and lies within its eps (synthetic random network and inputs)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(DIM, 16), nn.Tanh(), nn.Linear(16, 5))
    x = torch.rand(16, *SHAPE)
    y = model(x).argmax(dim=1)
    eps, x_adv = margin_search(model, x, y, norm="l2", init_eps=0.3, max_eps=2.0, **SEARCH)
    found = eps < 2.0
    assert found.sum() >= 8
    with torch.no_grad():
        assert (soft_logit_margin(model(x_adv[found]), y[found]) >= 0).all()
    assert ((x_adv - x).flatten(1).norm(dim=1) <= eps + 1e-6).all()


def test_margin_search_runs_each_example_at_its_own_radius(monkeypatch):
    """A per-example init_eps: one PGD with each example's radius and step 2.5 eps / steps
    (MMA's ANPGD.perturb), whose points stay in each example's own ball."""
    calls = []
    real = mma_module.pgd

    def spy(model, x, y, **kwargs):
        out = real(model, x, y, **kwargs)
        calls.append((kwargs["eps"], kwargs["step_size"], out))
        return out

    monkeypatch.setattr(mma_module, "pgd", spy)
    torch.manual_seed(0)
    model, _, _, x, y = linear_case(0, batch=6)
    start = torch.tensor([0.1, 0.3, 0.1, 0.2, 0.3, 0.1], dtype=torch.float64)
    margin_search(model, x, y, norm="l2", init_eps=start, max_eps=0.5, **{**SEARCH, "steps": 4})
    ((eps, step_size, points),) = calls
    assert torch.equal(eps, start.float()) and torch.allclose(step_size, 2.5 * start.float() / 4)
    assert ((points - x).flatten(1).norm(dim=1) <= start.float() + 1e-6).all()


def test_margin_search_with_equal_radii_is_the_float_search():
    model, _, _, x, y = linear_case(1)
    results = []
    for init_eps in (0.1, torch.full((x.shape[0],), 0.1, dtype=torch.float64)):
        torch.manual_seed(0)
        results.append(
            margin_search(model, x, y, norm="l2", init_eps=init_eps, max_eps=0.5, **SEARCH)
        )
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(*results, strict=True))


@pytest.mark.parametrize("bad", [0.0, 0.6])
def test_margin_search_refuses_a_radius_outside_0_max_eps(bad):
    model, _, _, x, y = linear_case(0, batch=3)
    start = torch.tensor([0.1, bad, 0.2])
    with pytest.raises(ValueError, match="^init_eps: need 0 < init_eps <= 0.5") as err:
        margin_search(model, x, y, norm="l2", init_eps=start, max_eps=0.5, **SEARCH)
    assert "\n" not in str(err.value)


class ModeRecorder(nn.Module):
    """A linear two-class model that records its mode and grad state at every call."""

    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(DIM, 2))
        self.calls: list[tuple[bool, bool]] = []

    def forward(self, x):
        self.calls.append((self.training, torch.is_grad_enabled()))
        return self.net(x)


def test_margin_search_attacks_in_eval_mode_and_searches_in_the_callers_mode():
    torch.manual_seed(0)
    model = ModeRecorder()
    model.train()
    x = torch.rand(3, *SHAPE)
    y = model(x).argmax(dim=1)
    model.calls.clear()
    margin_search(
        model,
        x,
        y,
        norm="linf",
        init_eps=0.05,
        max_eps=0.2,
        steps=4,
        step_scale=2.5,
        search_steps=3,
    )
    # 4 PGD steps in eval mode with gradients, then the PGD point and 3 halvings in train mode
    # without (MMA's ANPGD.perturb: only the PGD runs inside ctx_noparamgrad_and_eval).
    assert model.calls == [(False, True)] * 4 + [(True, False)] * 4
    assert model.training
    assert all(p.grad is None for p in model.parameters())


def test_soft_logit_margin_by_hand():
    logits = torch.tensor([[1.0, 2.0, 3.0], [4.0, -1.0, 0.5]])
    y = torch.tensor([0, 0])
    expected = [np_logsumexp([2.0, 3.0]) - 1.0, np_logsumexp([-1.0, 0.5]) - 4.0]
    assert soft_logit_margin(logits, y).tolist() == pytest.approx(expected, rel=1e-6)
    two = torch.tensor([[0.3, -0.2]])
    assert soft_logit_margin(two, torch.tensor([1])).item() == pytest.approx(0.5)


def test_mma_loss_by_hand():
    logits = np.array([[2.0, 0.0, -1.0], [0.5, 1.5, 0.0], [3.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    y = np.array([0, 1, 0, 0])
    correct = np.array([True, True, True, False])
    eps = np.array([0.2, 0.35, 0.29, 0.0])
    ce = -np_log_softmax(logits, axis=1)[np.arange(4), y]
    # hinge_max 0.3: example 1 (eps 0.35) has left the hinge; 3 is wrong and counts clean.
    expected = (ce[0] + ce[2] + ce[3]) / 4
    got = mma_loss(
        torch.tensor(logits), torch.tensor(y), torch.tensor(correct), torch.tensor(eps), 0.3
    )
    assert got.item() == pytest.approx(expected, rel=1e-6)


def test_objective_value_by_hand_on_a_linear_model():
    """Three synthetic examples: one wrong (clean CE), one with margin 0.1 < d_max = 0.3 (CE
    at its boundary point, log 2 up to the search's precision), one with margin 0.5 > 1.05
    d_max (out of the hinge)."""
    torch.manual_seed(0)
    w = torch.zeros(DIM)
    w[:2] = torch.tensor([3.0, 4.0])  # ||w||_2 = 5
    c = -3.5  # w.x + c = 0 at x = 0.5
    model = linear_model(w, c)
    x = torch.full((3, *SHAPE), 0.5)
    x[0, 0, 0, 0] += 0.02  # w.x + c = 0.06 > 0 but labelled 0: wrong
    x[1, 0, 0, :2] += 0.1 * torch.tensor([0.6, 0.8])  # margin 0.1 on side 1
    x[2, 0, 0, :2] -= 0.5 * torch.tensor([0.6, 0.8])  # margin 0.5 on side 0
    y = torch.tensor([0, 1, 0])
    obj = MMA(sigma=None, **REQUIRED)
    loss, logs = obj(model, x, y, CTX)
    diff = np.array([0.06, 0.5, -2.5])  # z_1 - z_0 at the clean points
    logits = np.stack([np.zeros(3), diff], axis=1)
    clean_ce = -np_log_softmax(logits, axis=1)[np.arange(3), y.numpy()]
    coeff = 1 / 3
    expected = coeff * clean_ce.mean() + (1 - coeff) * (clean_ce[0] + math.log(2)) / 3
    # The boundary point lies past the boundary by at most 0.315/2^10 in l2: |dz| <= 5 * that.
    assert loss.item() == pytest.approx(expected, abs=(1 - coeff) / 3 * 5 * 0.4 / 2**10)
    assert logs["loss"] == pytest.approx(loss.item())
    assert logs["xent"] == pytest.approx(clean_ce.mean(), rel=1e-6)
    assert logs["acc"] == pytest.approx(2 / 3)
    # Example 1 is fooled at its boundary point, example 2 stays right at 1.05 d_max.
    assert logs["adv_acc"] == pytest.approx(1 / 3)
    assert logs["eps"] == pytest.approx((0.1 + 1.05 * 0.3) / 3, abs=1e-3)


def test_all_wrong_batch_is_plain_cross_entropy():
    torch.manual_seed(0)
    model, _, _, x, y = linear_case(3, batch=6)
    loss, logs = MMA(sigma=None, **REQUIRED)(model, x, 1 - y, CTX)
    assert logs["eps"] == 0.0
    expected = nn.functional.cross_entropy(model(x), 1 - y)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)


def confident_net() -> nn.Module:
    net = nn.Sequential(
        nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.Tanh(), nn.Flatten(), nn.Linear(64, 3)
    )
    with torch.no_grad():
        net[-1].weight.mul_(20.0)  # confident enough that S+ (SLM < 0) is not empty
    return net


def test_gradients_reach_every_weight_and_logs_are_floats():
    torch.manual_seed(0)
    model = confident_net()
    model.train()
    x = torch.rand(8, 1, 6, 6)
    with torch.no_grad():
        y = model(x).argmax(dim=1)
    y[:2] = (y[:2] + 1) % 3  # two wrong examples
    obj = build_objective("mma", None, {**REQUIRED, "steps": 3, "search_steps": 4})
    loss, logs = obj(model, x, y, CTX)
    assert logs["eps"] > 0
    assert all(p.grad is None for p in model.parameters())  # the attack left them alone
    loss.backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and torch.isfinite(g).all() and g.abs().sum() > 0 for g in grads)
    assert set(logs) == {"loss", "xent", "mma", "acc", "adv_acc", "eps"}
    assert all(type(v) is float and math.isfinite(v) for v in logs.values())
    assert model.training


def test_under_bfloat16_autocast():
    torch.manual_seed(0)
    model = confident_net()
    x = torch.rand(6, 1, 6, 6)
    with torch.no_grad():
        y = model(x).argmax(dim=1)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss, logs = MMA(sigma=None, **{**REQUIRED, "steps": 2, "search_steps": 3})(
            model, x, y, CTX
        )
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    loss.backward()


def recorded_searches(monkeypatch) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(init_eps as a tensor, eps found) of every margin_search MMA runs from now on."""
    searches, real = [], mma_module.margin_search

    def spy(model, x, y, **kwargs):
        eps, x_adv = real(model, x, y, **kwargs)
        start = torch.as_tensor(kwargs["init_eps"], dtype=torch.float64).expand(x.shape[0])
        searches.append((start.clone(), eps.clone()))
        return eps, x_adv

    monkeypatch.setattr(mma_module, "margin_search", spy)
    return searches


def memory_case():
    """confident_net on 8 synthetic examples, 2 of them wrong, at positions ``INDICES`` of a
    split of 12."""
    torch.manual_seed(0)
    model = confident_net()
    x = torch.rand(8, 1, 6, 6)
    with torch.no_grad():
        y = model(x).argmax(dim=1)
    y[:2] = (y[:2] + 1) % 3
    return model, x, y


INDICES = torch.tensor([5, 0, 9, 3, 7, 1, 11, 2])
MEMORY_PARAMS = {**REQUIRED, "steps": 3, "search_steps": 4}


def test_memory_starts_at_init_eps_and_takes_the_batchs_eps(monkeypatch):
    """mma_training's get_eps / update_eps: a first search starts at attack_mineps; after the
    step every example of the batch holds its eps, 0 for the misclassified; others keep theirs."""
    searches = recorded_searches(monkeypatch)
    model, x, y = memory_case()
    state = {}
    ctx = StepContext(epoch=0, epochs=10, indices=INDICES, num_examples=12, state=state)
    _, logs = build_objective("mma", None, MEMORY_PARAMS)(model, x, y, ctx)
    ((start, found),) = searches
    assert torch.equal(start, torch.full_like(start, 0.1))  # init_eps exactly
    memory = state["eps"]
    assert memory.shape == (12,) and memory.dtype == torch.float64
    correct = torch.ones(8, dtype=torch.bool)
    correct[:2] = False
    assert len(found) == int(correct.sum())
    assert torch.equal(memory[INDICES[correct]], found.double())
    assert memory[INDICES[~correct]].tolist() == [0.0, 0.0]
    untouched = [4, 6, 8, 10]
    assert memory[untouched].tolist() == [0.1] * 4
    assert logs["eps"] == pytest.approx(memory[INDICES].mean().item())


def test_memory_gives_each_search_its_examples_last_eps(monkeypatch):
    """The start is max(init_eps, last eps), capped at the search's 1.05 d_max; a misclassified
    example's 0 restarts at init_eps."""
    searches = recorded_searches(monkeypatch)
    model, x, y = memory_case()
    memory = torch.full((12,), 0.25, dtype=torch.float64)
    max_eps = SEARCH_HEADROOM * REQUIRED["hinge_max"]
    last = torch.tensor([0.2, 0.2, 0.0, 0.05, 0.17, 0.3, max_eps + 1e-7, 0.12], dtype=torch.float64)
    memory[INDICES] = last
    state = {"eps": memory}
    ctx = StepContext(epoch=3, epochs=10, indices=INDICES, num_examples=12, state=state)
    MMA(sigma=None, **MEMORY_PARAMS)(model, x, y, ctx)
    ((start, _),) = searches
    assert start.tolist() == pytest.approx([0.1, 0.1, 0.17, 0.3, max_eps, 0.12], abs=1e-12)
    assert state["eps"] is memory and memory[[4, 6, 8, 10]].tolist() == [0.25] * 4


def test_without_state_every_search_starts_at_init_eps(monkeypatch):
    searches = recorded_searches(monkeypatch)
    model, x, y = memory_case()
    ctx = StepContext(epoch=3, epochs=10, indices=INDICES, num_examples=12)
    MMA(sigma=None, **MEMORY_PARAMS)(model, x, y, ctx)
    ((start, _),) = searches
    assert start.tolist() == [0.1] * 6


def test_state_without_indices_is_refused():
    with pytest.raises(ValueError, match="^state: needs the batch's indices"):
        StepContext(epoch=0, epochs=1, state={})


def test_defaults_and_required_params():
    assert resolve_params("mma", REQUIRED) == {
        **REQUIRED,
        "step_scale": 2.5,
        "search_steps": 10,
        "clean_loss_coeff": 1 / 3,
    }
    with pytest.raises(ValueError, match="'norm'"):
        resolve_params("mma", {})
    with pytest.raises(ValueError, match="sigma must be unset"):
        build_objective("mma", 0.5, REQUIRED)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("norm", "l1"),
        ("hinge_max", 0.0),
        ("init_eps", 0.0),
        ("init_eps", 0.5),  # above hinge_max
        ("steps", 0),
        ("steps", 2.0),
        ("step_scale", -1.0),
        ("search_steps", -1),
        ("clean_loss_coeff", 1.0),
        ("clean_loss_coeff", -0.1),
    ],
)
def test_bad_params_one_line_error_naming_the_field(field, value):
    with pytest.raises(ValueError, match=f"^{field}: ") as err:
        MMA(sigma=None, **{**REQUIRED, field: value})
    assert "\n" not in str(err.value)


def test_training_a_linear_model_widens_its_margins():
    """Full-batch SGD with MMA on two separable synthetic clusters: the mean l2 margin,
    counted 0 when wrong and capped at d_max, grows (closed form for a linear model)."""
    gen = torch.Generator().manual_seed(0)
    n = 100
    centres = torch.tensor([[0.3, 0.5], [0.7, 0.5]])
    y = torch.arange(2).repeat_interleave(n)
    x = (centres[y] + 0.05 * torch.randn(2 * n, 2, generator=gen)).clamp(0, 1).view(-1, 1, 1, 2)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(2, 2))
    hinge = 0.3

    def capped_margin() -> float:
        layer = model[1]
        w = (layer.weight[1] - layer.weight[0]).detach()
        c = (layer.bias[1] - layer.bias[0]).item()
        signed = (x.flatten(1) @ w + c) * (2 * y - 1) / w.norm()
        return signed.clamp(0, hinge).mean().item()

    obj = MMA(sigma=None, norm="l2", hinge_max=hinge, init_eps=0.05, steps=10, search_steps=8)
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    before = capped_margin()
    for _ in range(60):
        loss, _ = obj(model, x, y, CTX)
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = capped_margin()
    assert after > before + 0.05
    assert after > 0.15  # the clusters' centres are 0.2 from the best boundary
