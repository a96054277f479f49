"""Tests for the minimum-distance ("minimal") attacks of Finlay & Oberman's suite (section 4):
``robustreg.attacks.min_distance`` and the ``pgd_min``, ``cw_l2_min``, ``boundary_min`` and
``logbarrier`` kinds of ``robustreg.attacks.suite``, run through ``run_attack``.

All data are synthetic: a tiny random MLP on random 1x4x4 images in [0, 1] labelled with its own
ranking, and linear classifiers whose exact minimum adversarial distances are derived by hand
(distance to a hyperplane w.x + c = 0: |w.x + c| / ||w||_2 in l2, / ||w||_1 in linf).
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch
from torch import nn

from robustreg.attacks.min_distance import pgd_min_distance
from robustreg.attacks.ours import PGDMin
from robustreg.attacks.suite import REGISTRY, build_attack, resolve_attack, run_attack

N = 16  # pixels of a synthetic 1x4x4 image
K = 4  # classes of the synthetic MLP
MINIMAL = {"pgd_min", "cw_l2_min", "boundary_min", "logbarrier"}


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _mlp() -> nn.Module:
    """A synthetic random MLP whose hidden units are centred on the box's centre, so that every
    class owns part of the box (as in test_logbarrier)."""
    torch.manual_seed(1)
    model = nn.Sequential(nn.Flatten(), nn.Linear(N, 12), nn.Tanh(), nn.Linear(12, K))
    with torch.no_grad():
        model[1].weight.mul_(3.0)
        model[1].bias.copy_(-0.5 * model[1].weight.sum(dim=1))
    return model.eval()


def _mlp_data(model: nn.Module, num: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    """Random images labelled with the model's prediction, except image 0 (labelled with its
    second-ranked class: wrong top-1, right top-2) and image 1 (its last-ranked class: wrong
    for both)."""
    x = torch.rand((num, 1, 4, 4), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ranked = model(x).argsort(dim=1, descending=True)
    y = ranked[:, 0].clone()
    y[0], y[1] = ranked[0, 1], ranked[1, -1]
    return x, y


def _outside_top_k(model: nn.Module, points: torch.Tensor, y: torch.Tensor, k: int) -> np.ndarray:
    """Label outside the top k: at least k classes score above it (written independently of
    the package's in_top_k)."""
    with torch.no_grad():
        logits = model(points)
    above = (logits > logits.gather(1, y.view(-1, 1))).sum(dim=1)
    return (above >= k).numpy()


def _run(model, x, y, spec, batch_size=4, seed=0):
    return run_attack(
        model, x, y, build_attack(spec), batch_size=batch_size, seed=seed, device="cpu",
        progress=False, return_points=True,
    )  # fmt: skip


# Settings small enough for a second or so each on one core.
FAST = [
    {"kind": "pgd_min", "norm": "l2", "eps_max": 2.0, "steps": 10},
    {"kind": "pgd_min", "norm": "linf", "eps_max": 0.5, "steps": 10, "restarts": 2},
    {"kind": "pgd_min", "norm": "l2", "eps_max": 2.0, "steps": 10, "top_k": 2},
    {"kind": "pgd_min", "norm": "linf", "eps_max": 0.5, "steps": 10, "top_k": 2},
    {"kind": "cw_l2_min", "binary_search_steps": 3, "steps": 50, "stepsize": 0.05,
     "initial_const": 1.0},
    {"kind": "boundary_min", "steps": 100},
    {"kind": "boundary_min", "steps": 100, "top_k": 2},
    {"kind": "logbarrier", "norm": "l2", "max_outer": 3, "max_inner": 30},
    {"kind": "logbarrier", "norm": "linf", "max_outer": 3, "max_inner": 30, "top_k": 2},
]  # fmt: skip


def _name(spec: dict) -> str:
    return f"{spec['kind']}-{spec.get('norm', 'l2')}-top{spec.get('top_k', 1)}"


@pytest.mark.parametrize("spec", FAST, ids=_name)
def test_outcome_rows_of_every_minimal_kind_mean_what_the_suite_says(spec):
    model = _mlp()
    x, y = _mlp_data(model)
    k = spec.get("top_k", 1)
    result = _run(model, x, y, spec)
    points = torch.from_numpy(result["points"])
    assert points.min() >= 0 and points.max() <= 1
    diff = (points.double() - x.double()).flatten(1)
    np.testing.assert_array_equal(result["l2"], diff.norm(dim=1).numpy())
    np.testing.assert_array_equal(result["linf"], diff.abs().amax(1).numpy())
    with torch.no_grad():
        np.testing.assert_array_equal(result["clean"], model(x).argmax(1).numpy())
        np.testing.assert_array_equal(result["adversarial"], model(points).argmax(1).numpy())
    wrong = _outside_top_k(model, x, y, k)
    # image 0 is attacked top-2 but not top-1, image 1 never
    assert wrong[:2].tolist() == [k == 1, True] and not wrong[2:].any()
    robust, moved = result["robust"] == 1, result["l2"] > 0
    # misclassified clean (top-k): robust 0, distance 0, the clean image kept
    assert not robust[wrong].any() and not moved[wrong].any()
    # broken: the kept point, classified again, has its label outside the top k
    broken = ~robust & ~wrong
    assert broken.sum() >= 3, "the attack broke almost nothing"
    assert moved[broken].all() and (result["linf"][broken] > 0).all()
    assert _outside_top_k(model, points, y, k)[broken].all()
    # robust: nothing found, the clean image kept
    assert not moved[robust].any() and result["linf"][robust].max(initial=0) == 0


def _hyperplane(num: int = 8):
    """A synthetic two-class linear model, f_1 - f_0 = w.x + c < 0 on images near the box's
    centre (label 0), at hand-derived distances margin / ||w||_2 (l2) and margin / ||w||_1
    (linf) from the decision boundary."""
    gen = torch.Generator().manual_seed(3)
    signs = torch.where(torch.rand(N, generator=gen) < 0.5, -1.0, 1.0)
    w = signs * (0.5 + torch.rand(N, generator=gen))
    x = 0.5 + 0.05 * (2 * torch.rand(num, N, generator=gen) - 1)
    c = -(x @ w).max().item() - 0.02
    model = nn.Sequential(nn.Flatten(), nn.Linear(N, 2))
    with torch.no_grad():
        model[1].weight.copy_(torch.stack([torch.zeros(N), w]))
        model[1].bias.copy_(torch.tensor([0.0, c]))
    margin = -(x @ w + c).double()
    exact = {"l2": margin / w.double().norm(), "linf": margin / w.double().abs().sum()}
    # the closest points x + d w / ||w||_2 and x + d sign(w) stay inside [0.4, 0.6]: the box
    # does not bind, so these are the exact minimum distances
    assert exact["l2"].max() * w.abs().max() / w.norm() < 0.05 and exact["linf"].max() < 0.05
    return model.eval(), x.view(num, 1, 4, 4), torch.zeros(num, dtype=torch.int64), exact


@pytest.mark.parametrize(
    ("norm", "eps_max", "step_ratio", "slack"),
    [("linf", 0.25, None, 0.0), ("l2", 1.0, 0.5, 0.0), ("l2", 1.0, None, 0.06)],
)
def test_pgd_min_finds_the_hyperplane_distance_to_the_bisection_resolution(
    norm, eps_max, step_ratio, slack
):
    model, x, y, exact = _hyperplane()
    search_steps = 10
    spec = {"kind": "pgd_min", "norm": norm, "eps_max": eps_max, "search_steps": search_steps,
            "step_ratio": step_ratio}  # fmt: skip
    result = _run(model, x, y, spec, batch_size=8)
    assert result["robust"].tolist() == [0] * 8
    # no adversarial point lies closer than the hyperplane, in either norm (float32 rounding)
    for size in ("l2", "linf"):
        assert (result[size] >= exact[size].numpy() - 1e-6).all(), size
    # Where PGD succeeds at every radius beyond the distance, the bisection ends within one
    # step eps_max / 2^search_steps above it. On this model linf PGD does at Madry's ratio (its
    # 2.5 eps of steps reach the corner x + eps sign(w) from any start); l2 PGD turns its random
    # start towards w only by an angle theta with tan(theta/2) shrinking by about
    # exp(-step_ratio * steps), exp(-2.5) at Madry's ratio: cos(theta) >= 0.98 from a start at
    # right angles, so it needs a radius up to a few percent beyond the distance (slack).
    resolution = eps_max / 2**search_steps
    assert (result[norm] <= exact[norm].numpy() * (1 + slack) + resolution + 1e-6).all()


def test_pgd_min_leaves_images_it_cannot_break_within_eps_max_unfound():
    model, x, y, exact = _hyperplane()
    eps_max = float(exact["linf"].median())
    points, found = pgd_min_distance(
        model, x, y, norm="linf", eps_max=eps_max, search_steps=4, steps=10,
        step_ratio=0.25, restarts=1, top_k=1,
    )  # fmt: skip
    far = (exact["linf"] > eps_max * (1 + 1e-4)).numpy()
    assert far.any() and (~far).any()
    assert not found.numpy()[far].any()
    assert torch.equal(points[torch.from_numpy(far)], x[torch.from_numpy(far)])


def _two_rivals(num: int = 6):
    """A synthetic three-class linear model, f = (0, w1.x + c1, w2.x + c2), with w1 and w2 on
    disjoint halves of the pixels; label 0 is top-1 on every image. Top-1 needs one rival
    above 0, top-2 both: with d_i class i's hyperplane distance, the exact distances are
    min(d1, d2) top-1 in both norms; top-2, max(d1, d2) in linf and sqrt(d1^2 + d2^2) in l2
    (the two moves are independent and orthogonal)."""
    gen = torch.Generator().manual_seed(4)
    signs = torch.where(torch.rand(N, generator=gen) < 0.5, -1.0, 1.0)
    w = signs * (0.5 + torch.rand(N, generator=gen))
    w1, w2 = torch.cat([w[:8], torch.zeros(8)]), torch.cat([torch.zeros(8), w[8:]])
    x = 0.5 + 0.05 * (2 * torch.rand(num, N, generator=gen) - 1)
    c1, c2 = -(x @ w1).max().item() - 0.02, -(x @ w2).max().item() - 0.06
    model = nn.Sequential(nn.Flatten(), nn.Linear(N, 3))
    with torch.no_grad():
        model[1].weight.copy_(torch.stack([torch.zeros(N), w1, w2]))
        model[1].bias.copy_(torch.tensor([0.0, c1, c2]))
    m1, m2 = -(x @ w1 + c1).double(), -(x @ w2 + c2).double()
    d = {"l2": (m1 / w1.double().norm(), m2 / w2.double().norm()),
         "linf": (m1 / w1.double().abs().sum(), m2 / w2.double().abs().sum())}  # fmt: skip
    exact = {(norm, 1): torch.minimum(*d[norm]) for norm in ("l2", "linf")} | {
        ("l2", 2): torch.hypot(*d["l2"]),
        ("linf", 2): torch.maximum(*d["linf"]),
    }
    return model.eval(), x.view(num, 1, 4, 4), torch.zeros(num, dtype=torch.int64), exact


@pytest.mark.parametrize(("norm", "eps_max"), [("l2", 1.0), ("linf", 0.25)])
def test_top_2_distances_need_two_classes_above_the_label(norm, eps_max):
    model, x, y, exact = _two_rivals()
    found = {}
    for k in (1, 2):
        spec = {"kind": "pgd_min", "norm": norm, "eps_max": eps_max, "top_k": k}
        found[k] = _run(model, x, y, spec, batch_size=6)
        assert found[k]["robust"].tolist() == [0] * 6
        assert (found[k][norm] >= exact[norm, k].numpy() - 1e-6).all()
        # PGD's steps zigzag on the kink of min(f1, f2) at top-2: a loose upper bound
        assert (found[k][norm] <= exact[norm, k].numpy() * 1.25 + 1e-3).all()
    # the top-1 points are closer than any top-2 adversarial point can be
    assert (found[1][norm] < exact[norm, 2].numpy()).all()
    assert not _outside_top_k(model, torch.from_numpy(found[1]["points"]), y, 2).any()


def test_the_runner_does_not_count_a_point_broken_top_1_but_not_top_2(monkeypatch):
    model, x, y, exact = _two_rivals()
    top_1 = _run(model, x, y, {"kind": "pgd_min", "norm": "linf", "eps_max": 0.25})
    points = torch.from_numpy(top_1["points"])
    assert (top_1["linf"] > 0).all() and _outside_top_k(model, points, y, 1).all()
    # the same points handed to the runner by a top-2 attack
    monkeypatch.setattr(PGDMin, "perturb", lambda self, model, x_, y_: points)
    spec = {"kind": "pgd_min", "norm": "linf", "eps_max": 0.25, "top_k": 2}
    result = _run(model, x, y, spec, batch_size=6)
    assert result["robust"].tolist() == [1] * 6
    assert result["l2"].max() == 0 and result["linf"].max() == 0
    np.testing.assert_array_equal(result["adversarial"], result["clean"])
    spec["top_k"] = 1
    again = _run(model, x, y, spec, batch_size=6)
    assert again["robust"].tolist() == [0] * 6
    np.testing.assert_array_equal(again["linf"], top_1["linf"])


def test_top_k_must_be_below_the_number_of_classes():
    model, x, y, _ = _hyperplane()
    with pytest.raises(ValueError) as err:
        _run(model, x, y, {"kind": "logbarrier", "norm": "l2", "top_k": 2})
    assert str(err.value) == "attack logbarrier.top_k: must be below the model's 2 classes, got 2"


@pytest.mark.parametrize(
    "spec",
    [
        {"kind": "pgd_min", "norm": "l2", "eps_max": 1.0, "steps": 5},
        {"kind": "boundary_min", "steps": 50},
    ],
)
def test_minimal_attacks_repeat_with_a_seed(spec):
    model = _mlp()
    x, y = _mlp_data(model)
    first, second = _run(model, x, y, spec, seed=3), _run(model, x, y, spec, seed=3)
    np.testing.assert_array_equal(first["points"], second["points"])
    assert not np.array_equal(_run(model, x, y, spec, seed=4)["l2"], first["l2"])


# --- the registry -------------------------------------------------------------------------------


def test_minimal_kinds_resolve_to_these_settings():
    assert resolve_attack({"kind": "pgd_min", "norm": "linf", "eps_max": 0.1}) == {
        "kind": "pgd_min", "norm": "linf", "top_k": 1, "eps_max": 0.1, "search_steps": 10,
        "steps": 20, "step_ratio": 2.5 / 20, "restarts": 1,
    }  # fmt: skip
    assert resolve_attack({"kind": "pgd_min", "norm": "l2", "eps_max": 3, "steps": 50})[
        "step_ratio"
    ] == pytest.approx(0.05)
    assert resolve_attack({"kind": "cw_l2_min"}) == {
        "kind": "cw_l2_min", "norm": "l2", "top_k": 1, "binary_search_steps": 9,
        "steps": 10000, "stepsize": 0.01, "confidence": 0.0, "initial_const": 0.001,
    }  # fmt: skip
    assert resolve_attack({"kind": "boundary_min", "top_k": 5}) == {
        "kind": "boundary_min", "norm": "l2", "top_k": 5, "steps": 5000, "spherical_step": 0.01,
        "source_step": 0.01, "step_adaptation": 1.5,
    }  # fmt: skip
    assert resolve_attack({"kind": "logbarrier", "norm": "linf"}) == {
        "kind": "logbarrier", "norm": "linf", "top_k": 1, "dt": 0.01, "alpha": 0.1,
        "beta": 0.75, "gamma": 0.5, "max_outer": 15, "max_inner": 500, "tol": 1e-6, "T": 500.0,
        "init_scale": 0.01, "init_growth": 1.01, "init_tries": 1000,
    }  # fmt: skip
    attack = build_attack({"kind": "logbarrier", "norm": "linf", "top_k": 5})
    assert attack.threat == ("linf", math.inf) and attack.top_k == 5 and attack.minimal


def test_other_kinds_have_no_top_k_setting_and_are_top_1():
    assert {kind for kind, cls in REGISTRY.items() if cls.minimal} == MINIMAL
    for kind, cls in REGISTRY.items():
        if kind not in MINIMAL:
            assert "top_k" not in {f.name for f in dataclasses.fields(cls)}, kind
    pgd = build_attack({"kind": "pgd", "norm": "l2", "eps": 2, "steps": 40, "step_size": 0.25})
    assert pgd.top_k == 1 and not pgd.minimal and "top_k" not in pgd.settings()
    assert "top_k" not in resolve_attack({"kind": "cw_l2", "eps": 2})


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"kind": "pgd_min", "norm": "l2", "eps_max": 1, "eps": 0.5},
         "attack fo_min: unknown key 'eps' for kind 'pgd_min'"),
        ({"kind": "pgd_min", "norm": "l2"}, "attack fo_min: missing key 'eps_max' for kind"),
        ({"kind": "pgd_min", "norm": "l2", "eps_max": 1, "top_k": 0},
         "attack fo_min.top_k: need an integer >= 1, got 0"),
        ({"kind": "logbarrier", "norm": "l2", "top_k": 1.5},
         "attack fo_min.top_k: need an integer >= 1, got 1.5"),
        ({"kind": "pgd_min", "norm": "l2", "eps_max": 1, "step_ratio": 0},
         "attack fo_min.step_ratio: need null or a number > 0, got 0"),
        ({"kind": "cw_l2_min", "top_k": 2},
         "attack fo_min.top_k: Foolbox's Carlini-Wagner attack is top-1 only, got 2"),
        ({"kind": "boundary_min", "norm": "linf"}, "attack fo_min.norm: need 'l2'"),
        ({"kind": "boundary_min", "step_adaptation": 1},
         "attack fo_min.step_adaptation: need a number > 1, got 1"),
        ({"kind": "logbarrier", "norm": "l2", "beta": 1.5},
         "attack fo_min.beta: must be in (0, 1], got 1.5"),
        ({"kind": "logbarrier", "norm": "l2", "max_inner": 0},
         "attack fo_min.max_inner: must be an integer >= 1, got 0"),
        ({"kind": "logbarrier", "norm": "l2", "dt": "x"}, "attack fo_min.dt: need a number, got"),
        ({"kind": "pgd_minimal", "norm": "l2"}, "attack fo_min.kind: unknown kind 'pgd_minimal'"),
    ],
)  # fmt: skip
def test_bad_minimal_specs_fail_with_one_line_naming_the_key(spec, message):
    with pytest.raises(ValueError) as err:
        build_attack(spec, "fo_min")
    assert str(err.value).startswith(message)
    assert "\n" not in str(err.value)


def test_pgd_min_distance_checks_its_arguments():
    model, x, y, _ = _hyperplane()
    settings = {"norm": "l2", "eps_max": 1.0, "search_steps": 2, "steps": 2, "step_ratio": 0.5,
                "restarts": 1, "top_k": 1}  # fmt: skip
    with pytest.raises(ValueError, match=r"^eps_max: must be > 0, got 0$"):
        pgd_min_distance(model, x, y, **(settings | {"eps_max": 0}))
    with pytest.raises(ValueError, match=r"^restarts: must be an integer >= 1, got 0$"):
        pgd_min_distance(model, x, y, **(settings | {"restarts": 0}))


class _DarkIsOne(nn.Module):
    """Class 1 for an image darker than 1e-3 on average, else class 0, by a wide margin: no
    small perturbation of a bright image changes its class, the black image is class 1."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        score = 1e3 * (x.flatten(1).mean(dim=1) - 1e-3)
        return torch.stack([score, -score], dim=1)


def test_carlini_wagner_min_does_not_count_its_unreached_start_as_found():
    # Foolbox's CW returns zeros where it found nothing; the black image fools this model, so
    # Foolbox calls it a success at distance ||x|| though CW never went there
    torch.manual_seed(0)
    x = 0.5 + 0.1 * torch.rand(3, 1, 4, 4)
    y = torch.zeros(3, dtype=torch.int64)
    spec = {"kind": "cw_l2_min", "binary_search_steps": 1, "steps": 2}
    points = build_attack(spec).perturb(_DarkIsOne(), x, y)
    assert torch.equal(points, x)  # the clean images: nothing found
