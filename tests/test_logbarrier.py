"""Tests for robustreg.attacks.logbarrier (the LogBarrier minimum-distance attack).

All data are synthetic: tiny random MLPs on random 1x4x4 "images", and linear binary
classifiers whose exact minimum adversarial distances are known in closed form.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from robustreg.attacks.logbarrier import logbarrier, misclassified
from robustreg.attacks.pgd import flat_norms

SHAPE = (1, 4, 4)
N = 16  # pixels per synthetic image


def _mlp(seed: int, classes: int = 4) -> nn.Module:
    """A synthetic random MLP whose hidden units are centred on the box's centre and steep
    enough for every class to own part of the box."""
    torch.manual_seed(seed)
    model = nn.Sequential(
        nn.Flatten(), nn.Linear(N, 12), nn.Tanh(), nn.Dropout(0.5), nn.Linear(12, classes)
    ).double()
    with torch.no_grad():
        model[1].weight.mul_(3.0)
        model[1].bias.copy_(-0.5 * model[1].weight.sum(dim=1))
    return model


def _images(seed: int, batch: int) -> torch.Tensor:
    return torch.rand(batch, *SHAPE, generator=torch.Generator().manual_seed(seed)).double()


def _ranked_labels(model: nn.Module, x: torch.Tensor, rank: int) -> torch.Tensor:
    """Labels that the model ranks ``rank``-th (0 = its prediction) on each synthetic image."""
    with torch.no_grad():
        return model.eval()(x).argsort(dim=1, descending=True)[:, rank]


def _linear_problem(distance: float, norm: str, batch: int = 4):
    """A synthetic two-logit linear model f = Wx + b and images that it classifies as class 0,
    each at exactly ``distance`` (in ``norm``) from the decision hyperplane w.x + c = 0,
    w = W[1] - W[0], c = b[1] - b[0]: |w.x + c| / ||w||_2 for l2, / ||w||_1 for linf."""
    gen = torch.Generator().manual_seed(3)
    signs = torch.where(torch.rand(N, generator=gen) < 0.5, -1.0, 1.0).double()
    w = signs * (0.5 + torch.rand(N, generator=gen).double())
    model = nn.Sequential(nn.Flatten(), nn.Linear(N, 2)).double()
    x = 0.5 + 0.05 * (2 * torch.rand(batch, N, generator=gen).double() - 1)
    level = 0.5 * w.sum().item()
    x = x - torch.outer(x @ w - level, w) / (w @ w)  # all on one plane through the box's centre
    dual = w.norm() if norm == "l2" else w.abs().sum()
    with torch.no_grad():
        model[1].weight.copy_(torch.stack([torch.zeros(N).double(), w]))
        model[1].bias.copy_(torch.tensor([0.0, -level - distance * dual.item()]).double())
    # the closest point on the plane, x - d w/||w|| (l2) or x - d sign(w) (linf), is in the box,
    # so the box constraint does not move the exact answer
    closest = x - distance * (w / w.norm() if norm == "l2" else signs)
    assert closest.min() > 0.05 and closest.max() < 0.95
    return model, x.view(batch, *SHAPE), torch.zeros(batch, dtype=torch.long), w, dual


@pytest.mark.parametrize("norm", ["l2", "linf"])
@pytest.mark.parametrize("top_k", [1, 2])
def test_returned_points_are_misclassified_and_in_the_box(norm: str, top_k: int) -> None:
    model = _mlp(1)
    x = _images(1, 8)
    y = _ranked_labels(model, x, 0)
    x_adv, found = logbarrier(
        model, x, y, norm, top_k=top_k, max_outer=3, max_inner=20,
        generator=torch.Generator().manual_seed(0),
    )  # fmt: skip
    assert found.all()
    assert x_adv.min() >= 0 and x_adv.max() <= 1
    with torch.no_grad():
        logits = model.eval()(x_adv)
    assert not (logits.topk(top_k, dim=1).indices == y.view(-1, 1)).any()
    # the attack moved every image, and by less than the distance to the box's far corner
    dist = flat_norms(x_adv - x, norm)
    assert (dist > 0).all() and (dist < flat_norms(torch.maximum(x, 1 - x), norm)).all()


@pytest.mark.parametrize(
    ("norm", "distance", "settings"),
    [
        ("l2", 0.6, {"max_outer": 15, "max_inner": 40}),
        ("linf", 0.25, {"max_outer": 12, "max_inner": 200}),
    ],
)
def test_distance_to_a_linear_boundary(norm: str, distance: float, settings: dict) -> None:
    model, x, y, w, dual = _linear_problem(distance, norm)
    with torch.no_grad():
        exact = (x.flatten(1) @ w + model[1].bias[1]).abs() / dual
    torch.testing.assert_close(exact, torch.full_like(exact, distance))
    x_adv, found = logbarrier(
        model, x, y, norm, generator=torch.Generator().manual_seed(0), **settings
    )
    assert found.all()
    dist = flat_norms(x_adv - x, norm)
    # every misclassified point is at least the exact distance away ...
    assert (dist >= exact * (1 - 1e-9)).all()
    # ... and the barrier leaves it about alpha_final / d (l2: / d^2) beyond the boundary
    assert (dist <= 1.03 * exact).all()


def test_already_misclassified_images_come_back_unchanged() -> None:
    model = _mlp(2)
    x = _images(3, 6)
    y = _ranked_labels(model, x, 0)
    y[::2] = _ranked_labels(model, x, 3)[::2]  # wrong labels on half the batch
    x_adv, found = logbarrier(
        model, x, y, "l2", max_outer=2, max_inner=5, generator=torch.Generator().manual_seed(0)
    )
    assert found.all()
    assert torch.equal(x_adv[::2], x[::2])
    assert (flat_norms(x_adv[::2] - x[::2], "l2") == 0).all()
    assert (flat_norms(x_adv[1::2] - x[1::2], "l2") > 0).all()


def test_not_found_without_a_misclassified_start() -> None:
    model = _mlp(4)
    with torch.no_grad():  # synthetic model that always predicts class 0
        model[-1].weight.zero_()
        model[-1].bias.copy_(torch.tensor([5.0, 0.0, 0.0, 0.0]))
    x = _images(5, 3)
    y = torch.tensor([0, 1, 0])
    x_adv, found = logbarrier(model, x, y, "linf", init_tries=5)
    assert found.tolist() == [False, True, False]
    assert torch.equal(x_adv, x)
    _, found = logbarrier(_mlp(4), x, _ranked_labels(_mlp(4), x, 0), "l2", init_tries=0)
    assert not found.any()


def test_misclassified_counts_ties_as_correct() -> None:
    logits = torch.tensor([[1.0, 1.0, 0.0], [0.0, 2.0, 1.0], [0.0, 2.0, 1.0]])
    y = torch.tensor([0, 0, 2])
    assert misclassified(logits, y).tolist() == [False, True, True]
    assert misclassified(logits, y, top_k=2).tolist() == [False, True, False]


def test_deterministic_and_leaves_the_model_as_it_was() -> None:
    model = _mlp(6)
    x = _images(7, 4)
    y = _ranked_labels(model, x, 0)
    model.train()
    model[1].weight.requires_grad_(False)
    rng = torch.get_rng_state()
    kwargs = {"max_outer": 2, "max_inner": 10}
    first = logbarrier(model, x, y, "linf", generator=torch.Generator().manual_seed(9), **kwargs)
    again = logbarrier(model, x, y, "linf", generator=torch.Generator().manual_seed(9), **kwargs)
    other = logbarrier(model, x, y, "linf", generator=torch.Generator().manual_seed(10), **kwargs)
    assert torch.equal(first[0], again[0]) and torch.equal(first[1], again[1])
    assert not torch.equal(first[0], other[0])
    assert torch.equal(torch.get_rng_state(), rng)  # only the generator was drawn from
    assert all(module.training for module in model.modules())
    assert [p.requires_grad for p in model.parameters()] == [False, True, True, True]
    assert all(p.grad is None for p in model.parameters())
    assert not first[0].requires_grad


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"norm": "l1"}, "norm"),
        ({"top_k": 0}, "top_k"),
        ({"top_k": 4}, "top_k"),
        ({"dt": 0.0}, "dt"),
        ({"alpha": -1.0}, "alpha"),
        ({"beta": 1.5}, "beta"),
        ({"gamma": 1.0}, "gamma"),
        ({"max_outer": -1}, "max_outer"),
        ({"max_inner": 0}, "max_inner"),
        ({"tol": -1.0}, "tol"),
        ({"T": 0.0}, "T"),
        ({"init_scale": 0.0}, "init_scale"),
        ({"init_growth": 0.5}, "init_growth"),
        ({"init_tries": 2.5}, "init_tries"),
        ({"x": 2 * _images(0, 2)}, "x"),
        ({"y": torch.tensor([0, 7])}, "y"),
        ({"y": torch.tensor([0])}, "x, y"),
    ],
)
def test_bad_arguments(kwargs: dict, name: str) -> None:
    call = {"model": _mlp(0), "x": _images(0, 2), "y": torch.tensor([0, 1]), **kwargs}
    with pytest.raises(ValueError, match=rf"^{name}: [^\n]*$"):
        logbarrier(**call)
