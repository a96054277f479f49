"""Input-gradient regularization (Finlay & Oberman Eq. 8, Proposition 3.2 / Eq. 9, Algorithm 1).

All inputs are synthetic: uniform [0, 1] "images" with random labels. Reference values are
computed here, per example and from the definitions (a linear model's input gradient written
out by hand, or ``torch.autograd.grad`` of one example's CE at a time), never by calling the
code under test. Models are tiny and run in float64 where precision matters.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.special import softmax as np_softmax
from torch import nn
from torch.autograd.function import once_differentiable

from robustreg.objectives import StepContext, build_objective, parameter_names, resolve_params
from robustreg.objectives.gradient_norm import GradientNorm

CTX = StepContext(epoch=0, epochs=1)
SHAPE = (2, 3, 3)
N = math.prod(SHAPE)
CLASSES = 4


def synthetic_batch(b: int = 6, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Synthetic data: uniform [0, 1] float64 images and random labels."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand((b, *SHAPE), generator=g, dtype=torch.float64)
    return x, torch.randint(0, CLASSES, (b,), generator=g)


def smooth_mlp(seed: int = 0, act: nn.Module | None = None) -> nn.Sequential:
    """A smooth float64 MLP (tanh unless ``act`` says otherwise)."""
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Flatten(),
        nn.Linear(N, 16),
        act if act is not None else nn.Tanh(),
        nn.Linear(16, CLASSES),
    ).double()


def per_example_grad(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """grad_x CE(f(x_i), y_i), one example at a time, without any graph kept."""
    rows = []
    for xi, yi in zip(x, y, strict=True):
        xi = xi.unsqueeze(0).clone().requires_grad_(True)
        ce = F.cross_entropy(model(xi), yi.unsqueeze(0))
        rows.append(torch.autograd.grad(ce, xi)[0][0])
    return torch.stack(rows)


def squared_norm(g: torch.Tensor, norm: str) -> torch.Tensor:
    flat = g.flatten(1)
    if norm == "l2":
        return (flat**2).sum(1)
    return flat.abs().sum(1) ** 2 / flat.shape[1]


def objective(norm: str, method: str, lam: float = 0.5, h: float = 0.01) -> GradientNorm:
    return build_objective(
        "gradient_norm", None, {"norm": norm, "lam": lam, "method": method, "h": h}
    )


# --------------------------------------------------------------------------- FD vs DBP


@pytest.mark.parametrize("norm", ["l2", "l1"])
def test_fd_converges_to_dbp_as_h_shrinks(norm):
    model = smooth_mlp()
    x, y = synthetic_batch()
    _, _, exact = objective(norm, "dbp").penalty_terms(model, x, y)
    errors = []
    for h in (1e-2, 1e-3, 1e-4, 1e-5):
        _, _, fd = objective(norm, "fd", h=h).penalty_terms(model, x, y)
        errors.append(((fd - exact).abs() / exact).max().item())
    assert all(a > b for a, b in zip(errors, errors[1:], strict=False)), errors
    # First-order differences: the error shrinks about tenfold per decade of h.
    assert errors[-1] < 1e-4 and errors[-1] < errors[0] / 100, errors


# --------------------------------------------------------------------------- exact values


@pytest.mark.parametrize("norm", ["l2", "l1"])
def test_dbp_penalty_is_squared_dual_norm(norm):
    model = smooth_mlp(seed=1, act=nn.Softplus())
    x, y = synthetic_batch(seed=1)
    _, xent, reg = objective(norm, "dbp").penalty_terms(model, x, y)
    expected = squared_norm(per_example_grad(model, x, y), norm)
    torch.testing.assert_close(reg.detach(), expected, rtol=1e-12, atol=0)
    loss, logs = objective(norm, "dbp", lam=0.3)(model, x, y, CTX)
    assert logs["penalty"] == pytest.approx(expected.mean().item(), rel=1e-12)
    assert logs["xent"] == pytest.approx(xent.mean().item(), rel=1e-12)


@pytest.mark.parametrize("norm", ["l2", "l1"])
def test_penalty_of_a_linear_model_by_hand(norm):
    """f(x) = W x + b: grad_x CE_i = W^T (softmax(f(x_i)) - e_{y_i}), written out in numpy."""
    rng = np.random.default_rng(2)
    weight, bias = rng.normal(size=(CLASSES, N)), rng.normal(size=CLASSES)
    model = nn.Sequential(nn.Flatten(), nn.Linear(N, CLASSES)).double()
    with torch.no_grad():
        model[1].weight.copy_(torch.tensor(weight))
        model[1].bias.copy_(torch.tensor(bias))
    x, y = synthetic_batch(seed=2)
    flat = x.flatten(1).numpy()
    probs = np_softmax(flat @ weight.T + bias, axis=1)
    g = (probs - np.eye(CLASSES)[y.numpy()]) @ weight
    expected = (g**2).sum(1) if norm == "l2" else np.abs(g).sum(1) ** 2 / N
    _, logs = objective(norm, "dbp")(model, x, y, CTX)
    assert logs["penalty"] == pytest.approx(expected.mean(), rel=1e-12)


# --------------------------------------------------------------------------- no second order


class OnceSoftplus(torch.autograd.Function):
    """softplus whose backward cannot itself be differentiated."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return F.softplus(x)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return grad * torch.sigmoid(x)


class OnceAct(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return OnceSoftplus.apply(x)


@pytest.mark.parametrize("norm", ["l2", "l1"])
def test_fd_needs_no_second_order_graph(norm):
    x, y = synthetic_batch(seed=3)
    model = smooth_mlp(seed=3, act=OnceAct())
    loss, _ = objective(norm, "fd")(model, x, y, CTX)
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())
    model.zero_grad()
    loss, _ = objective(norm, "dbp")(model, x, y, CTX)
    with pytest.raises(RuntimeError, match="once_differentiable"):
        loss.backward()


@pytest.mark.parametrize("norm", ["l2", "l1"])
def test_fd_parameter_gradient_holds_d_constant(norm):
    lam, h = 0.7, 0.05
    model = smooth_mlp(seed=4)
    x, y = synthetic_batch(seed=4)
    loss, logs = objective(norm, "fd", lam=lam, h=h)(model, x, y, CTX)
    got = torch.autograd.grad(loss, list(model.parameters()))

    g = per_example_grad(model, x, y).flatten(1)
    d = g / g.norm(dim=1, keepdim=True) if norm == "l2" else g.sign() / math.sqrt(N)
    clean = F.cross_entropy(model(x), y, reduction="none")
    shifted = F.cross_entropy(model(x + h * d.view_as(x)), y, reduction="none")
    reg = ((shifted - clean) / h) ** 2
    by_hand = clean.mean() + lam / 2 * reg.mean()
    want = torch.autograd.grad(by_hand, list(model.parameters()))
    assert loss.item() == pytest.approx(by_hand.item(), rel=1e-12)
    assert logs["penalty"] == pytest.approx(reg.mean().item(), rel=1e-12)
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-14)


class Recorder(nn.Module):
    """A linear model that records each input it is given and the mode it ran in."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(5)
        self.linear = nn.Linear(N, CLASSES).double()
        self.calls: list[tuple[torch.Tensor, bool]] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls.append((x.detach().clone(), self.training))
        return self.linear(x.flatten(1))


def test_fd_shifted_input_is_unclamped_and_in_train_mode():
    model = Recorder().train()
    x, y = synthetic_batch(seed=5)
    x[0] = 1.0  # every pixel at the top of [0, 1]: a step along d leaves the box
    h = 0.5
    objective("l1", "fd", h=h)(model, x, y, CTX)
    assert [mode for _, mode in model.calls] == [True, True]
    g = per_example_grad(model.linear, x.flatten(1), y)
    expected = x + h * (g.sign() / math.sqrt(N)).view_as(x)
    torch.testing.assert_close(model.calls[1][0], expected, rtol=0, atol=1e-15)
    assert model.calls[1][0].max() > 1


# --------------------------------------------------------------------------- zero gradient


class Constant(nn.Module):
    """Logits that are learned constants: the output ignores x."""

    def __init__(self):
        super().__init__()
        self.logits = nn.Parameter(torch.arange(CLASSES, dtype=torch.float64))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits.expand(x.shape[0], -1)


def zero_weight_linear() -> nn.Sequential:
    """A linear model with zero weights: x is in the graph but its gradient is exactly 0."""
    model = nn.Sequential(nn.Flatten(), nn.Linear(N, CLASSES)).double()
    with torch.no_grad():
        model[1].weight.zero_()
    return model


@pytest.mark.parametrize("make", [Constant, zero_weight_linear], ids=["ignores_x", "zero_weight"])
@pytest.mark.parametrize("norm", ["l2", "l1"])
@pytest.mark.parametrize("method", ["fd", "dbp"])
def test_zero_input_gradient_gives_zero_penalty(make, norm, method):
    model = make()
    x, y = synthetic_batch(seed=6)
    obj = objective(norm, method)
    _, xent, reg = obj.penalty_terms(model, x, y)
    assert torch.equal(reg, torch.zeros_like(reg))
    loss, logs = obj(model, x, y, CTX)
    assert logs["penalty"] == 0.0 and logs["loss"] == logs["xent"]
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())


# --------------------------------------------------------------------------- registry, validation


@pytest.mark.parametrize("method", ["fd", "dbp"])
def test_loss_is_xent_plus_half_lambda_penalty(method):
    lam = 1.3
    model = smooth_mlp(seed=7)
    x, y = synthetic_batch(seed=7)
    loss, logs = objective("l2", method, lam=lam)(model, x, y, CTX)
    assert set(logs) == {"loss", "xent", "penalty", "acc"}
    assert logs["loss"] == pytest.approx(logs["xent"] + lam / 2 * logs["penalty"], rel=1e-12)
    assert loss.item() == pytest.approx(logs["loss"], rel=1e-12)
    with torch.no_grad():
        logits = model(x)
    assert logs["xent"] == pytest.approx(F.cross_entropy(logits, y).item(), rel=1e-12)
    assert logs["acc"] == pytest.approx((logits.argmax(1) == y).double().mean().item())


def test_registry_defaults_and_sigma():
    assert parameter_names("gradient_norm") == ["norm", "lam", "method", "h"]
    params = {"norm": "l1", "lam": 1, "method": "fd"}
    assert resolve_params("gradient_norm", params) == params | {"h": 0.01}
    with pytest.raises(ValueError, match="trains without Gaussian noise: sigma must be unset"):
        build_objective("gradient_norm", 0.25, params)
    with pytest.raises(ValueError, match="missing parameter 'lam'"):
        build_objective("gradient_norm", None, {"norm": "l2", "method": "fd"})


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("norm", "linf"),
        ("norm", "L2"),
        ("lam", 0),
        ("lam", -0.1),
        ("lam", True),
        ("lam", "1"),
        ("method", "exact"),
        ("h", 0.0),
        ("h", -1e-3),
        ("h", None),
    ],
)
def test_bad_params_raise_one_line_errors(field, value):
    params = {"norm": "l2", "lam": 0.1, "method": "fd"} | {field: value}
    with pytest.raises(ValueError, match=rf"^{field}: ") as err:
        build_objective("gradient_norm", None, params)
    assert "\n" not in str(err.value)
