"""Tests for robustreg.bounds: the L-bound and omega-bound of Finlay & Oberman (Proposition 2.2)
and their extreme-value estimates of L and omega(eps). All data here are synthetic."""

import numpy as np
import pytest
import torch
from scipy.stats import genextreme
from torch import nn

from robustreg.bounds import (
    batch_maxima,
    bound_error,
    fit_gev,
    gev_quantile,
    gradient_dual_norms,
    l_bound,
    margin_loss,
    modulus_samples,
    omega_bound_distance,
    omega_bound_holds,
    uniform_ball,
)

# --- fit_gev / gev_quantile ------------------------------------------------------------------

# (c, loc, scale): a bounded upper tail, a heavy tail, and omega-sized maxima of order 1e-3.
GEV_CASES = [(0.2, 1.0, 0.5), (-0.1, 3.0, 2.0), (0.3, 1e-3, 1e-4)]


def _synthetic_maxima(c, loc, scale, seed=0, size=2000):
    return genextreme.rvs(c, loc, scale, size=size, random_state=np.random.default_rng(seed))


@pytest.mark.parametrize(("c", "loc", "scale"), GEV_CASES)
def test_fit_gev_recovers_known_parameters(c, loc, scale):
    fit_c, fit_loc, fit_scale = fit_gev(_synthetic_maxima(c, loc, scale))
    assert fit_c == pytest.approx(c, abs=0.05)
    assert fit_loc == pytest.approx(loc, abs=0.05 * scale)
    assert fit_scale == pytest.approx(scale, rel=0.05)


@pytest.mark.parametrize(("c", "loc", "scale"), GEV_CASES)
def test_fit_gev_is_a_likelihood_maximum(c, loc, scale):
    # The MLE beats the true parameters and scipy's own single-start fit of the raw data
    # (which, on these seeds, stops far off for the 1e-3-sized maxima).
    maxima = _synthetic_maxima(c, loc, scale)
    nnlf = genextreme.nnlf(fit_gev(maxima), maxima)
    assert nnlf <= genextreme.nnlf((c, loc, scale), maxima)
    assert nnlf <= genextreme.nnlf(genextreme.fit(maxima), maxima) + 1e-6


@pytest.mark.parametrize(("c", "loc", "scale"), GEV_CASES)
def test_gev_quantile_reads_the_fit_at_p(c, loc, scale):
    maxima = _synthetic_maxima(c, loc, scale)
    value = gev_quantile(maxima, 1e-3)
    assert value == genextreme.isf(1e-3, *fit_gev(maxima))
    truth = genextreme.isf(1e-3, c, loc, scale)
    assert value == pytest.approx(truth, rel=0.1)


def test_fit_gev_is_location_scale_equivariant():
    maxima = _synthetic_maxima(0.1, 0.0, 1.0, seed=3)
    c, loc, scale = fit_gev(maxima)
    c2, loc2, scale2 = fit_gev(5.0 + 1e-3 * maxima)
    assert c2 == pytest.approx(c, abs=1e-3)
    assert loc2 == pytest.approx(5.0 + 1e-3 * loc, abs=1e-5)
    assert scale2 == pytest.approx(1e-3 * scale, rel=1e-3)


@pytest.mark.parametrize(
    "maxima",
    [np.arange(5.0), np.ones(20), np.r_[np.arange(19.0), np.nan], np.ones((4, 5))],
    ids=["too-few", "constant", "nan", "2-d"],
)
def test_fit_gev_rejects_bad_maxima(maxima):
    with pytest.raises(ValueError, match="maxima"):
        fit_gev(maxima)


@pytest.mark.parametrize("p", [0.0, 1.0, -0.1])
def test_gev_quantile_rejects_bad_p(p):
    with pytest.raises(ValueError, match="p must"):
        gev_quantile(np.arange(20.0), p)


# --- batch_maxima ----------------------------------------------------------------------------


def test_batch_maxima_of_consecutive_batches():
    values = [1.0, 5.0, 2.0, 3.0, 9.0, 0.0]
    np.testing.assert_array_equal(batch_maxima(values, 2), [5.0, 3.0, 9.0])
    np.testing.assert_array_equal(batch_maxima(values, 3), [5.0, 9.0])
    np.testing.assert_array_equal(batch_maxima(values, 1), values)


@pytest.mark.parametrize(
    ("values", "batch_size"),
    [(np.arange(6.0), 4), (np.arange(6.0), 6), (np.arange(6.0), 0), (np.ones((2, 3)), 1)],
    ids=["ragged", "one-batch", "zero", "2-d"],
)
def test_batch_maxima_rejects_bad_batches(values, batch_size):
    with pytest.raises(ValueError):
        batch_maxima(values, batch_size)


def test_batch_maxima_rejects_nan():
    with pytest.raises(ValueError, match="finite"):
        batch_maxima([1.0, np.nan], 1)


# --- margin_loss -----------------------------------------------------------------------------

LOGITS = torch.tensor([[3.0, 1.0, 2.0]] * 3)
LABELS = torch.tensor([0, 1, 2])


def test_margin_loss_top1_by_hand():
    # on the outputs as given (outputs="logits"); the default takes them to probabilities
    # class 0 wins (2 - 3), class 1 loses to 3, class 2 loses to 3
    expected = torch.tensor([-1.0, 2.0, 1.0])
    torch.testing.assert_close(margin_loss(LOGITS, LABELS, outputs="logits"), expected)


def test_margin_loss_top2_by_hand():
    # 2nd largest of the others: {1, 2} -> 1, {3, 2} -> 2, {3, 1} -> 1
    expected = torch.tensor([1.0 - 3.0, 2.0 - 1.0, 1.0 - 2.0])
    torch.testing.assert_close(margin_loss(LOGITS, LABELS, top_k=2, outputs="logits"), expected)


def test_margin_loss_softmax_by_hand():
    p = torch.exp(LOGITS[0]) / torch.exp(LOGITS[0]).sum()
    expected = torch.stack([p[2] - p[0], p[0] - p[1], p[0] - p[2]])
    torch.testing.assert_close(margin_loss(LOGITS, LABELS, outputs="softmax"), expected)


def test_margin_loss_tie_counts_as_error():
    loss = margin_loss(torch.tensor([[1.0, 1.0, 0.0]]), torch.tensor([0]))
    assert loss.item() == 0.0  # not < 0: a tie for first is not a correct top-1 prediction


@pytest.mark.parametrize("top_k", [1, 2, 5])
@pytest.mark.parametrize("outputs", ["logits", "softmax"])
def test_margin_loss_sign_is_top_k_correctness(top_k, outputs):
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(200, 10, generator=generator, dtype=torch.float64)
    labels = torch.randint(0, 10, (200,), generator=generator)
    in_top_k = (logits.topk(top_k, dim=1).indices == labels[:, None]).any(dim=1)
    loss = margin_loss(logits, labels, top_k=top_k, outputs=outputs)
    assert torch.equal(loss < 0, in_top_k)
    assert 0 < in_top_k.sum() < 200


@pytest.mark.parametrize(
    ("logits", "labels", "top_k", "outputs", "match"),
    [
        (torch.zeros(3), torch.zeros(3, dtype=torch.long), 1, "logits", "logits"),
        (torch.zeros(2, 1), torch.zeros(2, dtype=torch.long), 1, "logits", "logits"),
        (torch.zeros(2, 3), torch.zeros(3, dtype=torch.long), 1, "logits", "labels"),
        (torch.zeros(2, 3), torch.zeros(2), 1, "logits", "labels"),
        (torch.zeros(2, 3), torch.tensor([0, 3]), 1, "logits", "labels"),
        (torch.zeros(2, 3), torch.tensor([0, 1]), 3, "logits", "top_k"),
        (torch.zeros(2, 3), torch.tensor([0, 1]), 0, "logits", "top_k"),
        (torch.zeros(2, 3), torch.tensor([0, 1]), 1, "probs", "outputs"),
    ],
)
def test_margin_loss_rejects_bad_input(logits, labels, top_k, outputs, match):
    with pytest.raises(ValueError, match=match):
        margin_loss(logits, labels, top_k=top_k, outputs=outputs)


# --- gradient_dual_norms ---------------------------------------------------------------------


def _linear_model(seed=0):
    torch.manual_seed(seed)
    # Dropout (identity in eval mode) checks that the statistics run with the model in eval mode.
    return nn.Sequential(nn.Flatten(), nn.Dropout(0.5), nn.Linear(4, 3)).double()


def _images(n=6, seed=1):
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(n, 1, 2, 2, generator=generator, dtype=torch.float64)


@pytest.mark.parametrize("top_k", [1, 2])
@pytest.mark.parametrize(("norm", "p"), [("l2", 2), ("linf", 1)])
def test_gradient_dual_norms_closed_form_on_linear_model(norm, p, top_k):
    model = _linear_model()
    x, y = _images(), torch.tensor([0, 1, 2, 0, 1, 2])
    weight, bias = model[2].weight.detach(), model[2].bias.detach()
    logits = x.flatten(1) @ weight.T + bias
    # For f = Wx + b, grad l = W_j - W_c with j the class attaining the k-th largest other output.
    others = logits.masked_fill(nn.functional.one_hot(y, 3).bool(), float("-inf"))
    j = others.topk(top_k, dim=1).indices[:, -1]
    expected_norm = torch.linalg.vector_norm(weight[j] - weight[y], ord=p, dim=1)
    expected_loss = logits.gather(1, j[:, None]).squeeze(1) - logits.gather(1, y[:, None]).squeeze(
        1
    )

    model.train()
    loss, dual = gradient_dual_norms(model, x, y, norm, top_k=top_k, outputs="logits")
    assert model.training and model[1].training  # modes given back
    torch.testing.assert_close(loss, expected_loss)
    torch.testing.assert_close(dual, expected_norm)


def test_gradient_dual_norms_works_under_no_grad():
    model, x, y = _linear_model(), _images(), torch.zeros(6, dtype=torch.long)
    expected = gradient_dual_norms(model, x, y, "l2")
    with torch.no_grad():
        got = gradient_dual_norms(model, x, y, "l2")
    torch.testing.assert_close(got, expected)


def test_gradient_dual_norms_rejects_bad_norm():
    with pytest.raises(ValueError, match="norm"):
        gradient_dual_norms(_linear_model(), _images(), torch.zeros(6, dtype=torch.long), "l1")


# --- uniform_ball / modulus_samples ----------------------------------------------------------


@pytest.mark.parametrize("norm", ["l2", "linf"])
def test_uniform_ball_stays_in_the_ball(norm):
    v = uniform_ball((500, 3, 2), 0.5, norm, torch.Generator().manual_seed(0), torch.float64)
    ord_ = 2 if norm == "l2" else float("inf")
    sizes = torch.linalg.vector_norm(v.flatten(1), ord=ord_, dim=1)
    assert sizes.max() <= 0.5 + 1e-12
    assert sizes.max() > 0.45


def test_uniform_ball_l2_is_uniform_in_the_disc():
    # In d = 2 a uniform point lies within half the radius with probability 1/4.
    v = uniform_ball((20_000, 2), 1.0, "l2", torch.Generator().manual_seed(0), torch.float64)
    inner = (v.norm(dim=1) < 0.5).double().mean().item()
    assert inner == pytest.approx(0.25, abs=0.015)
    angle_mean = torch.atan2(v[:, 1], v[:, 0]).mean().item()
    assert angle_mean == pytest.approx(0.0, abs=0.05)


def test_uniform_ball_linf_is_uniform_in_the_cube():
    v = uniform_ball((20_000, 3), 0.25, "linf", torch.Generator().manual_seed(0), torch.float64)
    assert v.abs().max() <= 0.25
    # each coordinate uniform on [-eps, eps]: mean 0, variance eps^2 / 3
    torch.testing.assert_close(v.mean(0), torch.zeros(3, dtype=torch.float64), atol=0.005, rtol=0)
    torch.testing.assert_close(
        v.var(0), torch.full((3,), 0.25**2 / 3, dtype=torch.float64), atol=0.001, rtol=0
    )


@pytest.mark.parametrize("clip", [True, False])
@pytest.mark.parametrize("norm", ["l2", "linf"])
def test_modulus_is_zero_for_a_linear_model(norm, clip):
    # The first-order approximation of a linear model is exact wherever the argmax-other class
    # does not change; eps is small enough here that it never does.
    model, x = _linear_model(), _images()
    y = torch.tensor([0, 1, 2, 0, 1, 2])
    logits = model.eval()(x)
    top2 = logits.topk(3, dim=1).values
    assert (top2[:, 0] - top2[:, 1]).min() > 1e-3 and (top2[:, 1] - top2[:, 2]).min() > 1e-3
    generator = torch.Generator().manual_seed(0)
    m = modulus_samples(model, x, y, 1e-5, norm, 16, generator, clip=clip, outputs="logits")
    assert m.shape == (6,)
    assert m.abs().max() < 1e-12


class _Quadratic(nn.Module):
    """f(x) = (||x||^2, 0): with label 1, l(x) = ||x||^2 and Eq. 5's bracket is exactly ||v||^2."""

    def forward(self, x):
        energy = x.flatten(1).pow(2).sum(dim=1)
        return torch.stack([energy, torch.zeros_like(energy)], dim=1)


@pytest.mark.parametrize("norm", ["l2", "linf"])
def test_modulus_is_the_curvature_term_for_a_quadratic(norm):
    x, y, eps, samples = _images(4), torch.ones(4, dtype=torch.long), 0.5, 32
    m = modulus_samples(
        _Quadratic(),
        x,
        y,
        eps,
        norm,
        samples,
        torch.Generator().manual_seed(7),
        clip=False,
        outputs="logits",
    )
    replay = torch.Generator().manual_seed(7)
    draws = torch.stack(
        [uniform_ball(tuple(x.shape), eps, norm, replay, x.dtype) for _ in range(samples)]
    )
    expected = draws.flatten(2).pow(2).sum(dim=2).amax(dim=0)
    torch.testing.assert_close(m, expected, atol=1e-12, rtol=1e-12)
    assert m.min() > 0
    if norm == "l2":
        assert m.max() <= eps**2 + 1e-12 and m.min() > 0.8 * eps**2


def test_modulus_clip_keeps_images_in_the_box():
    # At the corner x = 0 clipping zeroes the negative coordinates of every v, so each sampled
    # ||v||^2 shrinks: the clipped maxima are smaller, same draws.
    x, y = torch.zeros(3, 1, 2, 2, dtype=torch.float64), torch.ones(3, dtype=torch.long)
    clipped = modulus_samples(_Quadratic(), x, y, 0.5, "l2", 8, torch.Generator().manual_seed(0))
    free = modulus_samples(
        _Quadratic(), x, y, 0.5, "l2", 8, torch.Generator().manual_seed(0), clip=False
    )
    assert (clipped > 0).all() and (clipped < free).all()


def test_modulus_samples_is_reproducible():
    model, x, y = _Quadratic(), _images(), torch.ones(6, dtype=torch.long)
    first = modulus_samples(model, x, y, 0.1, "linf", 4, torch.Generator().manual_seed(3))
    second = modulus_samples(model, x, y, 0.1, "linf", 4, torch.Generator().manual_seed(3))
    assert torch.equal(first, second)


@pytest.mark.parametrize(
    ("x", "norm", "samples", "match"),
    [
        (_images(), "l1", 4, "norm"),
        (_images(), "l2", 0, "samples"),
        (_images() + 1.0, "l2", 4, r"\[0, 1\]"),
    ],
)
def test_modulus_samples_rejects_bad_input(x, norm, samples, match):
    with pytest.raises(ValueError, match=match):
        modulus_samples(
            _Quadratic(), x, torch.ones(6, dtype=torch.long), 0.1, norm, samples, torch.Generator()
        )


# --- l_bound / omega_bound -------------------------------------------------------------------


def test_l_bound_by_hand():
    bound = l_bound([-0.5, 0.25, 0.0, -2.0], 2.0)
    np.testing.assert_array_equal(bound, [0.25, 0.0, 0.0, 1.0])


@pytest.mark.parametrize("lipschitz", [0.0, -1.0, np.inf, np.nan])
def test_l_bound_rejects_bad_lipschitz(lipschitz):
    with pytest.raises(ValueError, match="lipschitz"):
        l_bound([-1.0], lipschitz)


def test_omega_bound_holds_by_hand():
    # omega = 1/4, eps = 3/8 (dyadic, so the boundary case is exact); gap = -loss - 1/4.
    loss = [-1.0, -1.0, -1.0, 0.5, -0.5, -0.25, 0.0]
    grad = [2.0, 2.125, 0.0, 1.0, 0.0, 0.0, 0.0]
    # gap 0.75 >= 0.75 | 0.75 < 0.797 | zero gradient, gap 0.75 > 0 | misclassified |
    # zero gradient, gap 0.25 > 0 | zero gradient, gap 0 (l may reach 0) | misclassified
    expected = [True, False, True, False, True, False, False]
    np.testing.assert_array_equal(omega_bound_holds(loss, grad, 0.25, 0.375), expected)


def test_omega_bound_at_eps_zero_is_correctness():
    loss, grad = [-0.5, 0.0, 0.25], [1.0, 0.0, 1.0]
    np.testing.assert_array_equal(omega_bound_holds(loss, grad, 0.0, 0.0), [True, False, False])


def test_omega_bound_floors_negative_omega_at_zero():
    # omega(eps) >= 0 by Eq. 5; a negative estimate must not widen the gap.
    assert omega_bound_holds([-0.25], [1.0], -0.5, 0.25).item()
    assert not omega_bound_holds([-0.25], [1.0], -0.5, 0.5).item()


@pytest.mark.parametrize(
    ("loss", "grad", "omega", "eps", "match"),
    [
        ([-1.0, -1.0], [1.0], 0.1, 0.1, "equal length"),
        ([], [], 0.1, 0.1, "non-empty"),
        ([-1.0], [-1.0], 0.1, 0.1, "grad_norm"),
        ([np.nan], [1.0], 0.1, 0.1, "finite"),
        ([-1.0], [1.0], np.nan, 0.1, "omega"),
        ([-1.0], [1.0], 0.1, -0.1, "eps"),
    ],
)
def test_omega_bound_holds_rejects_bad_input(loss, grad, omega, eps, match):
    with pytest.raises(ValueError, match=match):
        omega_bound_holds(loss, grad, omega, eps)


def test_omega_bound_distance_by_hand():
    loss = [-1.0, -1.0, 0.5, -0.25]
    grad = [1.0, 0.0, 0.0, 2.0]
    # eps 0.25 / 0.5 / 1.0 with omega 0 / 0.25 / 0.5:
    # gaps 1, 0.75, 0.5 vs 0.25, 0.5, 1 | zero gradient, gaps all > 0 | misclassified |
    # gaps 0.25, 0, -0.25 vs 0.5, 1, 2
    distance = omega_bound_distance(loss, grad, [0.0, 0.25, 0.5], [0.25, 0.5, 1.0])
    np.testing.assert_array_equal(distance, [0.5, 1.0, 0.0, 0.0])


def test_omega_bound_distance_takes_the_largest_certified_eps():
    # With separate omega estimates, eps = 0.25 can fail (gap 0.25 < 0.375) while eps = 0.5
    # holds (gap 1 >= 0.75); the larger certificate implies the smaller.
    distance = omega_bound_distance([-1.0], [1.5], [0.75, 0.0], [0.25, 0.5])
    np.testing.assert_array_equal(distance, [0.5])


@pytest.mark.parametrize(
    ("omegas", "grid"),
    [([0.0, 0.0], [0.5, 0.25]), ([0.0, 0.0], [0.25, 0.25]), ([0.0], [0.25, 0.5]), ([], [])],
)
def test_omega_bound_distance_rejects_bad_grid(omegas, grid):
    with pytest.raises(ValueError, match="eps_grid"):
        omega_bound_distance([-1.0], [1.0], omegas, grid)


def test_bound_error_by_hand():
    error = bound_error([0.0, 0.25, 0.5, 1.0], [0.25, 0.5, 1.0, 2.0])
    np.testing.assert_array_equal(error, [0.25, 0.5, 0.75, 1.0])


def test_bound_error_rejects_negative_distance():
    with pytest.raises(ValueError, match="distance"):
        bound_error([-0.1], [0.5])
