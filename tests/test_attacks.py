"""Tests for the attack stage: robustreg.attacks.suite (registry, runner, outcome log), the ATENT
attack and ``python -m robustreg attack``.

Models are tiny synthetic conv / linear nets on random 8x8 images (labelled synthetic), set
up so that most images are classified correctly and some are not.
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import REPO, killed_after_first_append
from torch import nn

from robustreg.attacks.atent import atent_attack
from robustreg.attacks.pgd import pgd
from robustreg.attacks.registry import IMPLEMENTED_IN, REGISTRY, implementation
from robustreg.attacks.suite import (
    OUTCOME_COLUMNS,
    OutcomeLog,
    attack_mode,
    build_attack,
    read_outcomes,
    resolve_attack,
    run_attack,
    threat_tolerance,
    write_outcomes,
)
from robustreg.cli import main
from robustreg.data import save_split
from robustreg.io import Expected
from robustreg.model_files import MODEL_FORMAT
from robustreg.models import create_model

K = 5  # classes of the synthetic models


@pytest.fixture(autouse=True)
def one_thread():
    """One torch thread: small models run ~10x slower with two threads on a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _conv(seed: int, chans: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(chans, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, K)
    ).eval()


def _linear(seed: int, chans: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(chans * 64, K)).eval()


def _data(model: nn.Module, num: int, chans: int, seed: int, wrong: int = 2):
    """Synthetic images in [0, 1] labelled with the model's own predictions, except the first
    ``wrong`` images, whose labels are moved to another class (misclassified on purpose)."""
    x = torch.rand((num, chans, 8, 8), generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        y = model(x).argmax(1)
    y[:wrong] = (y[:wrong] + 1) % K
    return x, y


def _norms(diff: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    flat = diff.double().flatten(1)
    return flat.norm(dim=1).numpy(), flat.abs().amax(1).numpy()


# --- the property every kind must have ---------------------------------------------------------

# Settings small enough for seconds on a CPU; the configs use the libraries' defaults.
FAST = {
    "pgd": lambda eps: {"steps": 5, "step_size": eps / 4, "restarts": 2},
    "foolbox_pgd": lambda eps: {"steps": 5, "step_size": eps / 4},
    "cw_l2": lambda eps: {
        "binary_search_steps": 2, "steps": 20, "stepsize": 0.05, "initial_const": 1.0,
    },
    "deepfool_linf": lambda eps: {"steps": 10},
    "cw_linf": lambda eps: {
        "max_iter": 2, "initial_const": 0.1, "const_factor": 10, "decrease_factor": 0.5,
    },
    "autoattack": lambda eps: {"version": "custom", "attacks": ["apgd-ce"], "n_iter": 5},
    "atent": lambda eps: {"steps": 5, "step_size": eps / 4},
}  # fmt: skip
NORMS_OF = {"cw_l2": ("l2",), "deepfool_linf": ("linf",), "cw_linf": ("linf",)}
# (model, channels, eps by norm): a small radius where most attacks fail, a large one where
# they succeed, so both of the runner's paths are taken.
CASES = [
    (_conv, 1, {"linf": 0.02, "l2": 0.1}, 0),
    (_linear, 3, {"linf": 0.3, "l2": 3.0}, 1),
]
KIND_NORMS = [(kind, norm) for kind in FAST for norm in NORMS_OF.get(kind, ("l2", "linf"))]


def _check_outcomes(model, x, y, result, attack, batch_size):
    points = torch.from_numpy(result["points"])
    assert points.shape == x.shape
    assert points.min() >= 0 and points.max() <= 1
    l2, linf = _norms(points - x)
    np.testing.assert_array_equal(result["l2"], l2)
    np.testing.assert_array_equal(result["linf"], linf)
    if attack.threat is not None:
        norm, eps = attack.threat
        size = linf if norm == "linf" else l2
        assert (size <= eps + threat_tolerance(norm, eps, x[0].numel())).all(), size.max()
    with torch.no_grad():
        clean = model(x).argmax(1).numpy()
        # the runner's batches: the same forward passes, so the same floats
        again = torch.cat([model(p).argmax(1) for p in points.split(batch_size)]).numpy()
    correct = clean == y.numpy()
    np.testing.assert_array_equal(result["clean"], clean)
    np.testing.assert_array_equal(result["adversarial"][correct], again[correct])
    np.testing.assert_array_equal(result["robust"], (correct & (again == y.numpy())).astype(int))
    # an image the model gets wrong is not attacked
    np.testing.assert_array_equal(result["adversarial"][~correct], clean[~correct])
    assert torch.equal(points[torch.from_numpy(~correct)], x[torch.from_numpy(~correct)])
    return correct


@pytest.mark.parametrize(("kind", "norm"), KIND_NORMS)
def test_every_kind_keeps_points_in_the_box_and_the_ball(kind, norm, capsys):
    for make, chans, eps_by_norm, seed in CASES:
        model = make(seed, chans)
        x, y = _data(model, 6, chans, seed)
        eps = eps_by_norm[norm]
        attack = build_attack({"kind": kind, "norm": norm, "eps": eps, **FAST[kind](eps)})
        result = run_attack(
            model, x, y, attack, batch_size=4, seed=seed, device="cpu", progress=False,
            return_points=True,
        )  # fmt: skip
        correct = _check_outcomes(model, x, y, result, attack, batch_size=4)
        if eps_by_norm["linf"] >= 0.3:
            assert result["robust"].sum() < correct.sum(), "nothing broken at a large eps"
    # the runner never had to replace a point the attack returned outside its threat model
    assert "outside" not in capsys.readouterr().err


def test_no_attack_gives_benign_accuracy():
    model = _conv(0, 1)
    x, y = _data(model, 7, 1, 0, wrong=3)
    result = run_attack(
        model, x, y, build_attack({"kind": "none"}), batch_size=3, seed=0, device="cpu",
        progress=False, return_points=True,
    )  # fmt: skip
    _check_outcomes(model, x, y, result, build_attack({"kind": "none"}), batch_size=3)
    assert result["robust"].tolist() == [0, 0, 0, 1, 1, 1, 1]
    assert result["l2"].tolist() == [0.0] * 7


# --- our PGD against Foolbox's -----------------------------------------------------------------


@pytest.mark.parametrize(("norm", "eps", "step"), [("linf", 0.05, 0.01), ("l2", 0.5, 0.1)])
def test_our_pgd_matches_foolbox_pgd_point_for_point(norm, eps, step):
    model = _conv(3, 3)
    x, y = _data(model, 16, 3, 3, wrong=0)
    settings = {"norm": norm, "eps": eps, "steps": 10, "step_size": step, "random_start": False}
    ours = build_attack({"kind": "pgd", **settings})
    reference = build_attack({"kind": "foolbox_pgd", **settings})
    with attack_mode(model, "cpu"):
        a = ours.perturb(model, x, y)
        b = reference.perturb(model, x, y)
        assert (a - b).abs().max() <= 1e-5
        l2, linf = _norms(a - x)
        assert ((linf if norm == "linf" else l2) > eps / 2).all()  # the points did move
        assert torch.equal(model(a).argmax(1), model(b).argmax(1))


# --- an undefended model -----------------------------------------------------------------------


def test_pgd_breaks_an_undefended_model_at_a_large_eps_and_nothing_at_eps_0():
    model = _linear(4, 1)
    x, y = _data(model, 32, 1, 4, wrong=0)
    big = build_attack({"kind": "pgd", "norm": "linf", "eps": 0.5, "steps": 10, "step_size": 0.1})
    broken = run_attack(model, x, y, big, batch_size=16, seed=0, device="cpu", progress=False)
    assert broken["robust"].mean() <= 0.05
    for kind in ("pgd", "atent"):
        zero = build_attack({"kind": kind, "norm": "l2", "eps": 0.0, "steps": 5, "step_size": 0.1})
        kept = run_attack(model, x, y, zero, batch_size=16, seed=0, device="cpu", progress=False)
        assert kept["robust"].tolist() == [1] * 32
        assert kept["l2"].max() == 0.0


# --- the ATENT attack, by hand ----------------------------------------------------------------


def _two_class_linear() -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(5)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 2))
    w = model[1].weight.detach()
    return model.eval(), (w[1] - w[0]).view(1, 1, 4, 4)


def test_atent_linf_ends_on_the_corner_the_gradient_sign_points_to():
    # Two-class linear model, label 0: grad_x CE = p1 (w1 - w0) at every x, so every step moves
    # by step_size * sign(w1 - w0); with step_size > 2 eps the last projection lands exactly on
    # x + eps * sign(w1 - w0), whatever the random start and the noise.
    model, direction = _two_class_linear()
    x = torch.full((3, 1, 4, 4), 0.5)
    y = torch.zeros(3, dtype=torch.int64)
    out = atent_attack(model, x, y, norm="linf", eps=0.1, steps=3, step_size=0.3)
    assert torch.allclose(out, (x + 0.1 * direction.sign()).expand_as(out), atol=1e-7)


def test_atent_l2_ends_near_eps_times_the_unit_gradient():
    model, direction = _two_class_linear()
    x = torch.full((3, 1, 4, 4), 0.5)
    y = torch.zeros(3, dtype=torch.int64)
    # 8 steps of 0.1 along the unit gradient u (|u_i| < 0.52: no pixel leaves [0, 1]) swamp the
    # random start of norm eps = 0.01; the projection then scales the sum to norm eps.
    out = atent_attack(model, x, y, norm="l2", eps=0.01, steps=8, step_size=0.1, noise=0.0)
    delta = (out - x).flatten(1)
    unit = direction.flatten() / direction.norm()
    assert unit.abs().max() < 0.52
    assert torch.allclose(delta.norm(dim=1), torch.full((3,), 0.01), atol=1e-7)
    assert (delta @ unit / 0.01 > 0.999).all()


class ZeroGradient(nn.Module):
    """Logits that do not depend on the input (its gradient is exactly 0): ATENT's steps are
    its noise alone."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.zeros(len(x), 2) + 0.0 * x.flatten(1).sum(1, keepdim=True)


def test_atent_noise_has_scale_noise_times_sqrt_2_step_size():
    # From x = 0.5 the linf start is x +- eps; K steps add N(0, s^2 K) per coordinate with
    # s = noise sqrt(2 step_size) (no clipping: far from 0 and 1). The last projection keeps
    # the inward half of it, z * 1[z points inward], whose mean square is s^2 K / 2.
    noise, step, steps, eps = 0.01, 0.5, 8, 0.3
    torch.manual_seed(0)
    x = torch.full((64, 1, 16, 16), 0.5)
    out = atent_attack(
        ZeroGradient(), x, torch.zeros(64, dtype=torch.int64),
        norm="linf", eps=eps, steps=steps, step_size=step, noise=noise,
    )  # fmt: skip
    inward = (out - x).abs() - eps
    assert (inward <= 1e-6).all()
    sigma = noise * math.sqrt(2 * step * steps)
    estimate = math.sqrt(2 * inward.double().square().mean().item())
    assert estimate == pytest.approx(sigma, rel=0.03)


# --- seeds and resuming ------------------------------------------------------------------------


def test_outcomes_repeat_with_a_seed_and_do_not_depend_on_resuming():
    model = _conv(6, 1)
    x, y = _data(model, 10, 1, 6)
    attack = build_attack({"kind": "pgd", "norm": "l2", "eps": 0.3, "steps": 3, "step_size": 0.1})

    def run(seed, **kwargs):
        return run_attack(
            model, x, y, attack, batch_size=4, seed=seed, device="cpu", progress=False,
            indices=np.arange(100, 110), **kwargs,
        )  # fmt: skip

    full = run(0)
    seen = []

    class Killed(Exception):
        pass

    def killed_after_first_batch(batch):
        seen.append(batch)
        raise Killed

    with pytest.raises(Killed):
        run(0, on_batch=killed_after_first_batch)
    attacked = []
    resumed = run(0, done=seen[0], on_batch=attacked.append)
    assert [b["idx"].tolist() for b in attacked] == [[104, 105, 106, 107], [108, 109]]
    for key in ("idx", "label", "clean", "adversarial", "robust", "l2", "linf"):
        np.testing.assert_array_equal(resumed[key], full[key])
    assert not np.array_equal(run(1)["l2"], full["l2"])  # the random start follows the seed


def test_run_attack_leaves_the_model_and_the_global_rng_as_they_were():
    model = _conv(7, 1).train()
    x, y = _data(model.eval(), 4, 1, 7)
    model.train()
    attack = build_attack(
        {"kind": "atent", "norm": "linf", "eps": 0.1, "steps": 2, "step_size": 0.05}
    )
    torch.manual_seed(11)
    expected = torch.rand(3)
    torch.manual_seed(11)
    run_attack(model, x, y, attack, batch_size=4, seed=0, device="cpu", progress=False)
    assert torch.equal(torch.rand(3), expected)
    assert model.training
    assert all(p.requires_grad and p.grad is None for p in model.parameters())


# --- the registry ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"kind": "pgd", "norm": "l2", "eps": 2, "steps": 0, "step_size": 0.25},
         "attack pgd_l2_mnist.steps: need an integer >= 1, got 0"),
        ({"kind": "pgd", "norm": "l2", "eps": 2, "steps": 1.5, "step_size": 0.25},
         "attack pgd_l2_mnist.steps: need an integer >= 1, got 1.5"),
        ({"kind": "pgd", "norm": "l1", "eps": 2, "steps": 40, "step_size": 0.25},
         "attack pgd_l2_mnist.norm: need one of l2, linf, got 'l1'"),
        ({"kind": "pgd", "norm": "l2", "steps": 40, "step_size": 0.25},
         "attack pgd_l2_mnist: missing key 'eps' for kind 'pgd'"),
        ({"kind": "pgd", "norm": "l2", "eps": 2, "steps": 40, "step_size": 0.25, "stepz": 1},
         "attack pgd_l2_mnist: unknown key 'stepz' for kind 'pgd'"),
        ({"kind": "pgd", "norm": "l2", "eps": -1, "steps": 40, "step_size": 0.25},
         "attack pgd_l2_mnist.eps: need a number >= 0, got -1"),
        ({"kind": "pgd", "norm": "l2", "eps": True, "steps": 40, "step_size": 0.25},
         "attack pgd_l2_mnist.eps: need a number >= 0, got True"),
        ({"kind": "cw_l2", "norm": "linf", "eps": 2}, "attack pgd_l2_mnist.norm: need 'l2'"),
        ({"kind": "autoattack", "norm": "linf", "eps": 0.3, "version": "custom"},
         "attack pgd_l2_mnist.attacks: version custom needs a non-empty list"),
        ({"kind": "autoattack", "norm": "linf", "eps": 0.3, "attacks": ["apgd-ce"]},
         "attack pgd_l2_mnist.attacks: only version custom takes it"),
        ({"kind": "autoattack", "norm": "linf", "eps": 0.3, "version": "custom",
          "attacks": ["pgd"]}, "attack pgd_l2_mnist.attacks: need a list of names from"),
        ({"kind": "none", "eps": 0.3}, "attack pgd_l2_mnist: unknown key 'eps' for kind 'none'"),
        ({"kind": "fgsm"}, "attack pgd_l2_mnist.kind: unknown kind 'fgsm' (known: none, pgd,"),
        ({"norm": "l2"}, "attack pgd_l2_mnist: missing key 'kind'"),
        ([], "attack pgd_l2_mnist: need a mapping with a 'kind'"),
    ],
)  # fmt: skip
def test_bad_attack_specs_fail_with_one_line_naming_the_key(spec, message):
    with pytest.raises(ValueError) as err:
        build_attack(spec, "pgd_l2_mnist")
    assert str(err.value).startswith(message)
    assert "\n" not in str(err.value)


def test_resolve_fills_defaults_and_casts_numbers():
    resolved = resolve_attack({"kind": "cw_l2", "eps": 2})
    assert resolved == {
        "kind": "cw_l2", "norm": "l2", "eps": 2.0, "binary_search_steps": 9, "steps": 10000,
        "stepsize": 0.01, "confidence": 0.0, "initial_const": 0.001,
    }  # fmt: skip
    assert isinstance(resolved["eps"], float)
    pgd = resolve_attack({"kind": "pgd", "norm": "l2", "eps": 2, "steps": 40, "step_size": 0.25})
    assert pgd["restarts"] == 1 and pgd["random_start"] is True


def test_every_kind_runs_as_its_declaration_in_its_librarys_module():
    """The registry declares each kind torch-free; the class that runs it adds only
    ``perturb``, in the one module of its library that ``build_attack`` imports."""
    for kind, declared in REGISTRY.items():
        runs = implementation(kind)
        assert issubclass(runs, declared) and runs.kind == kind
        assert runs.__module__ == IMPLEMENTED_IN[declared.distribution]
        assert dataclasses.fields(runs) == dataclasses.fields(declared)


def test_settings_resolve_without_torch_or_an_attack_library():
    """Planning resolves every attack's and bounds job's settings (issue 19: no torch)."""
    code = (
        "import sys\n"
        "from robustreg.attacks.registry import REGISTRY, resolve_attack\n"
        "from robustreg.bound_settings import resolve_bound_settings\n"
        "resolve_attack({'kind': 'cw_linf', 'eps': 0.1})\n"
        "resolve_attack({'kind': 'logbarrier', 'norm': 'l2'})\n"
        "resolve_attack({'kind': 'autoattack', 'norm': 'l2', 'eps': 0.5})\n"
        "resolve_bound_settings({'norm': 'l2', 'eps': [0.5], 'samples': 2, 'block': 10})\n"
        "heavy = ('torch', 'scipy', 'pandas', 'foolbox', 'art', 'pyautoattack')\n"
        "print(sorted(m for m in heavy if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# --- the outcome log -----------------------------------------------------------------------------


def _result(num: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {
        "idx": np.arange(num) * 3,
        "label": rng.integers(0, 10, num),
        "clean": rng.integers(0, 10, num),
        "adversarial": rng.integers(0, 10, num),
        "robust": rng.integers(0, 2, num),
        "l2": rng.random(num) / 3,
        "linf": rng.random(num) / 7,
        "seconds": rng.random(num) * 4000,
        "broken_by": np.array(["-", "apgd-ce", "square", "-", "pgd"][:num] * (num // 5 + 1))[:num],
    }


def test_outcome_log_round_trip(tmp_path):
    result = _result(5)
    write_outcomes(tmp_path / "outcomes.tsv", result)
    lines = (tmp_path / "outcomes.tsv").read_text().splitlines()
    assert lines[0].split("\t") == [*OUTCOME_COLUMNS, "broken_by"]
    assert lines[1].split("\t")[-2].count(":") == 2  # H:MM:SS.ffffff
    frame = read_outcomes(tmp_path / "outcomes.tsv")
    assert list(frame.columns) == [*OUTCOME_COLUMNS, "broken_by"]
    for key in ("idx", "label", "clean", "adversarial", "robust", "l2", "linf", "broken_by"):
        np.testing.assert_array_equal(frame[key].to_numpy(), result[key])
    np.testing.assert_allclose(frame["time"].to_numpy(), result["seconds"], atol=1e-6)
    assert frame["idx"].dtype == np.int64 and frame["l2"].dtype == np.float64


def test_outcome_logs_without_broken_by_still_read_and_bad_names_are_refused(tmp_path):
    # logs written before the column existed read as they are, without it
    path = tmp_path / "outcomes.tsv"
    path.write_text("\t".join(OUTCOME_COLUMNS) + "\n0\t1\t1\t1\t1\t0.0\t0.0\t0:00:01\n")
    assert list(read_outcomes(path).columns) == list(OUTCOME_COLUMNS)
    path.write_text(
        "\t".join([*OUTCOME_COLUMNS, "broken_by"]) + "\n0\t1\t1\t2\t0\t0.1\t0.1\t0:00:01\tA B\n"
    )
    with pytest.raises(ValueError, match=r"outcomes.tsv: column 'broken_by' must name an attack"):
        read_outcomes(path)


def test_read_outcomes_names_the_file_and_the_missing_column(tmp_path):
    path = tmp_path / "outcomes.tsv"
    path.write_text(
        "idx\tlabel\tclean\tadversarial\tl2\tlinf\ttime\n0\t1\t1\t1\t0.0\t0.0\t0:00:01\n"
    )
    with pytest.raises(ValueError, match=r"outcomes.tsv: missing columns robust"):
        read_outcomes(path)
    path.write_text("\t".join(OUTCOME_COLUMNS) + "\n0\t1\t1\t1\t1\tx\t0.0\t0:00:01\n")
    with pytest.raises(ValueError, match=r"outcomes.tsv: column 'l2'"):
        read_outcomes(path)
    with pytest.raises(ValueError, match=r"nothing.tsv: not a readable attack outcome log"):
        read_outcomes(tmp_path / "nothing.tsv")


def test_a_progress_file_of_another_attack_is_discarded(tmp_path, capsys):
    path = tmp_path / "partial.jsonl"
    with OutcomeLog(path, {"attack": {"kind": "pgd", "eps": 0.1}}) as log:
        assert log.resume() is None
        log.append(_result(2))
    with OutcomeLog(path, {"attack": {"kind": "pgd", "eps": 0.1}}) as log:
        assert log.resume()["idx"].tolist() == [0, 3]
    with OutcomeLog(path, {"attack": {"kind": "pgd", "eps": 0.2}}) as log:
        assert log.resume() is None
    assert "discarded, it is from a different run (attack differ)" in capsys.readouterr().err


def test_outcome_records_that_do_not_fit_the_job_are_discarded(tmp_path, capsys):
    path, result = tmp_path / "partial.jsonl", _result(4)  # images 0, 3, 6, 9
    with OutcomeLog(path, {"attack": {"kind": "pgd", "eps": 0.1}}) as log:
        log.resume()
        log.append(result)
    header, *lines = path.read_text().splitlines()
    records = [json.loads(line) for line in lines]
    records[0]["idx"] = 1  # not a selected image
    records[1]["label"] = (records[1]["label"] + 1) % 10
    records[2]["adversarial"] = 10  # a class the model does not have
    path.write_text("\n".join([header, *map(json.dumps, records)]) + "\n")
    expected = Expected.images(result["idx"], result["label"], 10)
    with OutcomeLog(path, {"attack": {"kind": "pgd", "eps": 0.1}}) as log:
        assert log.resume(expected)["idx"].tolist() == [9]
    assert capsys.readouterr().err.splitlines()[:3] == [
        f"{path}: line 2 does not fit this job (image outside its selection); discarded",
        f"{path}: line 3 does not fit this job (label other than the selected image's); discarded",
        f"{path}: line 4 does not fit this job (a prediction outside the model's 10 classes); "
        "discarded",
    ]


# --- the attack command ------------------------------------------------------------------------


def _save_lenet(path: Path) -> tuple[Path, nn.Module]:
    torch.manual_seed(0)
    model = create_model("lenet_mnist", 10).eval()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    torch.save(
        {"format": MODEL_FORMAT, "arch": "lenet_mnist", "num_classes": 10,
         "config": json.dumps({"num_classes": 10}), "state_dict": state},
        path,
    )  # fmt: skip
    return path, model


def _test_split(path: Path, model: nn.Module, num: int) -> Path:
    """uint8 images labelled with the model's predictions, but for image 1 (misclassified)."""
    x = np.random.default_rng(1).integers(0, 256, size=(num, 1, 28, 28), dtype=np.uint8)
    with torch.no_grad():
        y = model(torch.from_numpy(x).float() / 255).argmax(1).numpy()
    y[1] = (y[1] + 1) % 10
    save_split(path, x, y.astype(np.int64))
    return path


PGD_JSON = json.dumps({"kind": "pgd", "norm": "linf", "eps": 0.1, "steps": 3, "step_size": 0.05})


def _attack_args(model: Path, data: Path, out: Path, *extra: str) -> list[str]:
    return [
        "attack", "--model", str(model), "--data", str(data), "--out-dir", str(out),
        "--attack-json", PGD_JSON, "--batch-size", "4", "--skip", "2", "--threads", "1",
        "--no-progress", *extra,
    ]  # fmt: skip


def test_cli_writes_outcomes_and_resumes_after_a_kill(tmp_path, capsys):
    model, lenet = _save_lenet(tmp_path / "model.pt")
    data = _test_split(tmp_path / "test.npz", lenet, 20)
    full = tmp_path / "full"
    assert main(_attack_args(model, data, full)) == 0
    frame = read_outcomes(full / "outcomes.tsv")
    assert frame["idx"].tolist() == list(range(0, 20, 2))
    assert frame["robust"].sum() < (frame["clean"] == frame["label"]).sum()  # pgd broke some
    assert not (full / "partial.jsonl").exists()
    summary = json.loads((full / "attack.json").read_text())
    assert summary["attack"] == resolve_attack(json.loads(PGD_JSON))
    assert summary["library"] == "robustreg" and summary["images"] == 10
    assert summary["idx"] == list(range(0, 20, 2))  # what the table stage checks the log by
    assert summary["library_version"] == importlib.metadata.version("robustreg")
    assert len(summary["model_sha256"]) == 64

    killed = tmp_path / "killed"
    with killed_after_first_append(OutcomeLog):
        main(_attack_args(model, data, killed))
    assert len((killed / "partial.jsonl").read_text().splitlines()) == 1 + 4
    assert not (killed / "outcomes.tsv").exists()
    capsys.readouterr()
    assert main(_attack_args(model, data, killed)) == 0
    assert "resuming after 4 images" in capsys.readouterr().err
    resumed = read_outcomes(killed / "outcomes.tsv")
    columns = [c for c in OUTCOME_COLUMNS if c != "time"]
    assert resumed[columns].equals(frame[columns])


def test_cli_attacks_again_an_image_whose_record_has_another_label(tmp_path, capsys):
    # A record of a selected image with another label (a forged or foreign line) is discarded
    # and the image attacked again, where run_attack would refuse the whole file every rerun.
    model, lenet = _save_lenet(tmp_path / "model.pt")
    data = _test_split(tmp_path / "test.npz", lenet, 20)
    assert main(_attack_args(model, data, tmp_path / "full")) == 0
    with killed_after_first_append(OutcomeLog):
        main(_attack_args(model, data, tmp_path / "out"))
    partial = tmp_path / "out" / "partial.jsonl"
    header, first, *rest = partial.read_text().splitlines()
    forged = json.loads(first)
    forged["label"] = (forged["label"] + 1) % 10
    partial.write_text("\n".join([header, json.dumps(forged), *rest]) + "\n")
    capsys.readouterr()

    assert main(_attack_args(model, data, tmp_path / "out")) == 0
    assert "line 2 does not fit this job (label other than" in capsys.readouterr().err
    columns = [c for c in OUTCOME_COLUMNS if c != "time"]
    resumed = read_outcomes(tmp_path / "out" / "outcomes.tsv")[columns]
    assert resumed.equals(read_outcomes(tmp_path / "full" / "outcomes.tsv")[columns])


def test_cli_bad_attack_key_fails_before_the_model_is_read(tmp_path, capsys):
    missing = tmp_path / "no-model.pt"
    bad = json.dumps({"kind": "pgd", "norm": "linf", "eps": 0.1, "steps": 0, "step_size": 0.05})
    args = _attack_args(missing, tmp_path / "no-data.npz", tmp_path / "out")
    args[args.index("--attack-json") + 1] = bad
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err == "robustreg attack: error: attack pgd.steps: need an integer >= 1, got 0"
    assert not (tmp_path / "out").exists()
    # with a good attack the same command gets as far as the model
    assert main(_attack_args(missing, tmp_path / "no-data.npz", tmp_path / "out")) == 2
    assert "no-model.pt: model file does not exist" in capsys.readouterr().err


@pytest.mark.parametrize("norm", ["l2", "linf"])
def test_pgd_takes_one_radius_per_example(norm):
    """MMA attacks each example at its own radius: every point stays in its own ball, and an
    example given the batch's float radius gets the same point as with that float."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 3))
    x, y = torch.rand(4, 3, 2, 2), torch.tensor([0, 1, 2, 0])
    eps = torch.tensor([0.05, 0.1, 0.2, 0.4])
    points = pgd(model, x, y, norm=norm, eps=eps, steps=5, step_size=eps / 4, random_start=False)
    diff = (points - x).flatten(1)
    sizes = diff.abs().amax(1) if norm == "linf" else diff.norm(dim=1)
    assert (sizes <= eps + 1e-6).all() and sizes.max() > 0.05
    alone = pgd(model, x, y, norm=norm, eps=0.1, steps=5, step_size=0.025, random_start=False)
    assert torch.allclose(points[1], alone[1], atol=1e-6)


def test_autoattack_builds_apgd_for_its_iterations(monkeypatch):
    # APGD's step-size checkpoints come from n_iter in its constructor: a custom n_iter must
    # reach the constructor, with every other setting AutoAttack gave the part kept
    from pyautoattack import AutoAttack

    from robustreg.attacks.registry import build_attack

    seen = {}

    def evaluation(self, x, y, batch_size):
        seen["adversary"] = self
        return x.clone(), y

    monkeypatch.setattr(AutoAttack, "run_standard_evaluation", evaluation)
    spec = {"kind": "autoattack", "norm": "linf", "eps": 0.3, "version": "custom", "n_iter": 20}
    spec["attacks"] = ["apgd-ce", "apgd-t"]
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 10))
    build_attack(spec).perturb(model, torch.rand(2, 1, 2, 2), torch.tensor([0, 1]))
    adversary = seen["adversary"]
    for part in (adversary.apgd, adversary.apgd_targeted):
        assert (part.n_iter, part.n_iter_orig) == (20, 20)
        assert (part.n_iter_2, part.n_iter_min, part.size_decr) == (4, 1, 1)
        assert part.eps == 0.3 and part.norm == "Linf"
    assert adversary.apgd.loss == "ce" and adversary.apgd_targeted.loss == "dlr-targeted"
    assert adversary.fab.n_iter == 20
    assert adversary.apgd.n_restarts == 5 and adversary.apgd_targeted.n_target_classes == 9


def test_autoattack_records_the_code_its_package_repackages():
    # pyautoattack is not Croce & Hein's release: attack.json names the upstream commit whose
    # attack files the pinned version carries (other kinds record their package only)
    from robustreg.attacks.registry import build_attack

    autoattack = build_attack({"kind": "autoattack", "norm": "linf", "eps": 0.3})
    assert autoattack.library() == {
        "library": "pyautoattack",
        "library_version": "0.2.0",
        "upstream": "fra31/auto-attack@a392200",
    }
    pgd = build_attack({"kind": "pgd", "norm": "l2", "eps": 1.0, "steps": 1, "step_size": 0.5})
    assert "upstream" not in pgd.library()


class _FirstPixel(nn.Module):
    """Class 1 where the first pixel exceeds 0.5, else class 0."""

    def forward(self, x):
        first = x.flatten(1)[:, :1]
        return torch.cat([0.5 - first, first - 0.5], dim=1)


def test_autoattack_credits_each_broken_image_to_the_sub_attack_that_broke_it(monkeypatch):
    """Issue 20: the cascade runs one sub-attack at a time on the images still robust, and
    the outcome log names the one that broke each image (synthetic stand-in for AutoAttack's
    sub-attacks: each breaks the images it is given here)."""
    from pyautoattack import AutoAttack

    breaks = {"apgd-ce": {0}, "apgd-t": set(), "fab-t": {1}, "square": {3}}
    given = {}
    x = torch.full((4, 1, 2, 2), 0.2)
    x[:, 0, 1, 1] = torch.arange(4) / 10  # tells the images apart

    def evaluation(self, xs, ys, batch_size):
        (name,) = self.attacks_to_run
        ids = [int(round(float(v) * 10)) for v in xs[:, 0, 1, 1]]
        given[name] = ids
        points = xs.clone()
        for row, i in enumerate(ids):
            if i in breaks[name]:
                points[row, 0, 0, 0] = 0.55
        return points, ys

    monkeypatch.setattr(AutoAttack, "run_standard_evaluation", evaluation)
    attack = build_attack({"kind": "autoattack", "norm": "linf", "eps": 0.4})
    y = torch.zeros(4, dtype=torch.long)
    result = run_attack(_FirstPixel(), x, y, attack, batch_size=4, seed=0, device="cpu")
    assert given == {
        "apgd-ce": [0, 1, 2, 3],
        "apgd-t": [1, 2, 3],
        "fab-t": [1, 2, 3],
        "square": [2, 3],
    }
    assert list(result["broken_by"]) == ["apgd-ce", "fab-t", "-", "square"]
    assert list(result["robust"]) == [0, 0, 1, 0]


def test_autoattack_runs_croce_and_heins_own_package_when_installed(tmp_path):
    """With the official ``autoattack`` package importable (a stand-in with its call
    signatures here: it is not on this machine's registries), the adapter calls it, not
    pyautoattack, and attack.json says so."""
    package = tmp_path / "autoattack"
    package.mkdir()
    (package / "__init__.py").write_text(
        "CALLS = []\n"
        "class AutoAttack:\n"
        "    def __init__(self, model, norm='Linf', eps=.3, seed=None, verbose=True,\n"
        "                 attacks_to_run=[], version='standard', is_tf_model=False,\n"
        "                 device='cuda', log_path=None):\n"
        "        CALLS.append(('init', norm, eps, version, verbose))\n"
        "        self.attacks_to_run = ['apgd-ce', 'apgd-t', 'fab-t', 'square']\n"
        "    def run_standard_evaluation(self, x_orig, y_orig, bs=250, return_labels=False,\n"
        "                                state_path=None):\n"
        "        CALLS.append(('run', tuple(self.attacks_to_run), bs))\n"
        "        return x_orig.clone()\n"
    )
    (package / "autopgd_base.py").write_text(
        "class APGDAttack: pass\nclass APGDAttack_targeted(APGDAttack): pass\n"
    )
    code = (
        "import importlib.metadata, torch\n"
        "importlib.metadata.version = lambda name: {'autoattack': '0.1'}[name]\n"
        "from robustreg.attacks.registry import build_attack\n"
        "import autoattack\n"
        "a = build_attack({'kind': 'autoattack', 'norm': 'l2', 'eps': 0.5})\n"
        "m = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3))\n"
        "x = torch.rand(2, 1, 2, 2)\n"
        "a.perturb(m, x, m(x).argmax(1))\n"
        "print(a.library(), autoattack.CALLS)\n"
    )
    env = os.environ | {"PYTHONPATH": os.pathsep.join([str(tmp_path), str(REPO / "src")])}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == (
        "{'library': 'autoattack', 'library_version': '0.1'} "
        "[('init', 'L2', 0.5, 'standard', False), ('run', ('apgd-ce',), 2), "
        "('run', ('apgd-t',), 2), ('run', ('fab-t',), 2), ('run', ('square',), 2)]"
    )
