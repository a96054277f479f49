"""Tests for the bounds job of Finlay & Oberman (section 2.2, Proposition 2.2): the per-image
runner ``bound_statistics``, its GEV summary, bounds.tsv / bounds.json, ``bound_distances``,
``python -m robustreg bounds``, and the seeded random subset (--sample) of the evaluation
commands.

All models and images are synthetic and small: a tiny ReLU conv net and a two-class linear
model on random 8x8 images, and a randomly initialized LeNet saved in the package's model
format on random 28x28 uint8 images for the command.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import killed_after_first_append
from torch import nn

from robustreg.attacks.suite import OutcomeLog, read_outcomes
from robustreg.bounds import (
    BOUND_COLUMNS,
    GEV_P,
    batch_maxima,
    bound_distances,
    bound_statistics,
    bound_summary,
    fit_gev,
    fit_warnings,
    gev_quantile,
    gev_shapes,
    gradient_dual_norms,
    l_bound,
    omega_bound_distance,
    omega_envelope,
    read_bounds,
    resolve_bound_settings,
    write_bounds,
)
from robustreg.cli import _selected_positions, main
from robustreg.data import save_split
from robustreg.model_files import MODEL_FORMAT
from robustreg.models import create_model

K = 5


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _conv(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, K))


def _images(num: int, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Random uint8 images and random labels (some right, most wrong for a random model)."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 256, (num, 1, 8, 8), generator=generator, dtype=torch.uint8)
    return x, torch.randint(0, K, (num,), generator=generator)


def _run(model, x, y, **kwargs) -> dict[str, np.ndarray]:
    settings = {
        "norm": "l2",
        "eps": [0.25, 0.5],
        "samples": 3,
        "batch_size": 7,
        "seed": 0,
        "device": "cpu",
        "progress": False,
    }
    return bound_statistics(model, x, y, **(settings | kwargs))


# --- bound_statistics ---------------------------------------------------------------------------


@pytest.mark.parametrize(("norm", "top_k"), [("l2", 1), ("linf", 2)])
def test_runner_loss_and_gradient_norms_are_gradient_dual_norms(norm, top_k):
    model, (x, y) = _conv(), _images(20)
    result = _run(model, x, y, norm=norm, top_k=top_k, indices=np.arange(100, 120))
    loss, dual = gradient_dual_norms(model, x.float() / 255, y, norm, top_k=top_k)
    np.testing.assert_allclose(result["loss"], loss.numpy(), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(result["grad_norm"], dual.numpy(), rtol=1e-6, atol=1e-7)
    np.testing.assert_array_equal(result["correct"], (loss < 0).numpy())
    assert 0 < result["correct"].sum() < 20
    np.testing.assert_array_equal(result["idx"], np.arange(100, 120))
    np.testing.assert_array_equal(result["label"], y.numpy())
    assert result["modulus"].shape == (20, 2) and (result["seconds"] > 0).all()


@pytest.mark.parametrize("clip", [True, False])
@pytest.mark.parametrize("norm", ["l2", "linf"])
def test_modulus_is_zero_for_a_linear_margin(norm, clip):
    # With two classes and f the logits, l(x) = f_1 - f_0 is linear everywhere, so Eq. 5's
    # bracket vanishes for every v (clipped or not); only float32 rounding is left. The ReLU
    # net's is far from 0.
    torch.manual_seed(0)
    linear = nn.Sequential(nn.Flatten(), nn.Linear(64, 2))
    x, _ = _images(12)
    y = torch.arange(12) % 2
    result = _run(linear, x, y, norm=norm, eps=[0.5, 2.0], clip=clip, outputs="logits")
    assert np.abs(result["modulus"]).max() < 1e-5
    relu = _run(_conv(), x, y % K, norm=norm, eps=[0.5, 2.0], clip=clip)
    assert relu["modulus"].max() > 1e-2


def test_results_depend_on_neither_batch_size_nor_the_other_images():
    model, (x, y) = _conv(), _images(20)
    base = _run(model, x, y, batch_size=20)
    for batch_size in (1, 3, 7):
        other = _run(model, x, y, batch_size=batch_size)
        for key in ("loss", "grad_norm", "modulus"):
            np.testing.assert_allclose(other[key], base[key], rtol=1e-5, atol=1e-6)
    # every third image, in reverse: each image's draws are seeded by its own dataset index
    pick = np.arange(19, -1, -3)
    part = _run(model, x[pick], y[pick], batch_size=4, indices=pick)
    np.testing.assert_allclose(part["modulus"], base["modulus"][pick], rtol=1e-5, atol=1e-6)
    # the seed matters
    reseeded = _run(model, x, y, batch_size=20, seed=1)
    assert np.abs(reseeded["modulus"] - base["modulus"]).max() > 1e-3


class _Quadratic(nn.Module):
    """f(x) = (||x||^2, 0): with label 1, l(x) = ||x||^2 and Eq. 5's bracket is ||v||^2."""

    def forward(self, x):
        energy = x.flatten(1).pow(2).sum(dim=1)
        return torch.stack([energy, torch.zeros_like(energy)], dim=1)


@pytest.mark.parametrize("norm", ["l2", "linf"])
def test_every_eps_scales_the_same_draws(norm):
    # m(eps) = max_s ||eps u_s||^2 = eps^2 max_s ||u_s||^2 with the same unit draws u_s.
    x, _ = _images(10)
    y = torch.ones(10, dtype=torch.long)
    eps = [0.25, 0.5, 2.0]
    result = _run(_Quadratic(), x, y, norm=norm, eps=eps, samples=5, clip=False, outputs="logits")
    ratio = result["modulus"] / np.square(eps)
    np.testing.assert_allclose(ratio, ratio[:, :1].repeat(3, axis=1), rtol=1e-4)
    assert ratio.std(axis=0).min() > 0  # the draws differ between images


# --- bound_summary ------------------------------------------------------------------------------


def _synthetic_per_image(num: int = 200, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    loss = rng.normal(-1.0, 1.0, num)
    return {
        "idx": np.arange(num) * 3,
        "label": rng.integers(0, 10, num),
        "correct": (loss < 0).astype(np.int64),
        "loss": loss,
        "grad_norm": rng.lognormal(0.0, 0.5, num),
        "modulus": np.column_stack([rng.gamma(2.0, 1e-3, num), rng.gamma(2.0, 4e-3, num)]),
        "seconds": np.full(num, 0.01),
    }


def test_summary_fits_the_maxima_of_random_blocks():
    per_image = _synthetic_per_image()
    summary = bound_summary(per_image, eps=[0.5, 1.0], block=10, seed=4)
    order = np.random.default_rng(4).permutation(200)
    grad_maxima = batch_maxima(per_image["grad_norm"][order], 10)
    assert summary["lipschitz"] == gev_quantile(grad_maxima, GEV_P)
    c, loc, scale = fit_gev(grad_maxima)
    assert summary["gev"]["lipschitz"] == {"c": c, "loc": loc, "scale": scale}
    for j in range(2):
        maxima = batch_maxima(per_image["modulus"][order, j], 10)
        assert summary["omega"][j] == gev_quantile(maxima)
    assert summary["lipschitz"] > per_image["grad_norm"].max() * 0.9
    assert summary["grad_norm_mean"] == pytest.approx(per_image["grad_norm"].mean(), rel=1e-12)
    assert summary["grad_norm_max"] == per_image["grad_norm"].max()
    assert (summary["blocks"], summary["images"], summary["p"]) == (20, 200, 1e-3)
    # another seed, other blocks: the fit changes
    assert bound_summary(per_image, eps=[0.5, 1.0], block=10, seed=5)["lipschitz"] != pytest.approx(
        summary["lipschitz"], rel=1e-9
    )


@pytest.mark.parametrize("block", [0, 7, 40])
def test_summary_rejects_blocks_that_do_not_fit(block):
    # 7 leaves a ragged block; 40 gives 5 maxima, too few for a fit
    with pytest.raises(ValueError, match="block"):
        bound_summary(_synthetic_per_image(), eps=[0.5, 1.0], block=block)


def test_summary_names_the_fit_that_fails():
    per_image = _synthetic_per_image()
    per_image["modulus"][:, 1] = 0.0
    with pytest.raises(ValueError, match="GEV fit of the modulus at eps 1.0: maxima are all equal"):
        bound_summary(per_image, eps=[0.5, 1.0], block=10)


# --- files ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def job() -> tuple[dict, dict]:
    """Synthetic per-image values and the summary a job would write for them (fitted once)."""
    per_image = _synthetic_per_image()
    settings = resolve_bound_settings({"norm": "l2", "eps": [0.5, 1], "samples": 4, "block": 10})
    summary = {**settings, "seed": 0, **bound_summary(per_image, eps=settings["eps"], block=10)}
    return per_image, summary


def test_files_round_trip(tmp_path, job):
    per_image, summary = job
    write_bounds(tmp_path, per_image, summary)
    frame, read = read_bounds(tmp_path)
    assert list(frame.columns) == [*BOUND_COLUMNS, "modulus_0", "modulus_1"]
    for key in BOUND_COLUMNS:
        np.testing.assert_array_equal(frame[key].to_numpy(), per_image[key])
    np.testing.assert_array_equal(frame[["modulus_0", "modulus_1"]], per_image["modulus"])
    assert read == {"format": "robustreg-bounds/1", **summary}
    # the frame is enough to fit again
    assert bound_summary(frame, eps=read["eps"], block=10) == bound_summary(
        per_image, eps=read["eps"], block=10
    )


def _corrupt(tmp_path: Path, how: str) -> None:
    tsv, doc = tmp_path / "bounds.tsv", tmp_path / "bounds.json"
    if how == "no-json":
        doc.unlink()
    elif how == "omega":
        summary = json.loads(doc.read_text())
        doc.write_text(json.dumps(summary | {"omega": [0.1]}))
    elif how == "format":
        summary = json.loads(doc.read_text())
        doc.write_text(json.dumps(summary | {"format": "other"}))
    elif how == "gev":
        summary = json.loads(doc.read_text())
        summary["gev"]["omega"][1].pop("c")
        doc.write_text(json.dumps(summary))
    elif how == "column":
        frame = pd.read_csv(tsv, sep="\t", dtype=str).drop(columns="modulus_1")
        frame.to_csv(tsv, sep="\t", index=False)
    elif how == "rows":
        tsv.write_text("".join(tsv.read_text().splitlines(keepends=True)[:-1]))
    else:
        tsv.write_text(tsv.read_text().replace("\t-", "\tx-", 1))


@pytest.mark.parametrize(
    ("how", "file", "match"),
    [
        ("no-json", "bounds.json", "not a readable bounds summary"),
        ("omega", "bounds.json", "omega must hold one number per eps"),
        ("format", "bounds.json", "not a bounds summary"),
        ("gev", "bounds.json", "gev must hold the fits of lipschitz and of each omega"),
        ("column", "bounds.tsv", "columns must be"),
        ("rows", "bounds.tsv", "199 rows, but bounds.json counts 200 images"),
        ("number", "bounds.tsv", "column 'loss' holds a value that is not a number"),
    ],
)
def test_read_bounds_names_the_file_and_the_problem(tmp_path, job, how, file, match):
    write_bounds(tmp_path, *job)
    _corrupt(tmp_path, how)
    with pytest.raises(ValueError, match=match) as err:
        read_bounds(tmp_path)
    assert str(err.value).startswith(str(tmp_path / file)) and "\n" not in str(err.value)


def test_bound_distances_by_hand():
    frame = pd.DataFrame({"loss": [-1.0, -0.5, 0.25], "grad_norm": [1.0, 2.0, 1.0]})
    summary = {"lipschitz": 2.0, "omega": [0.0, 0.25], "eps": [0.25, 0.5]}
    # L-bound: -loss / 2; omega-bound: image 0 gaps 1, 0.75 vs 0.25, 0.5 -> 0.5; image 1 gaps
    # 0.5, 0.25 vs 0.5, 1 -> 0.25; image 2 misclassified -> 0
    distance_l = bound_distances(frame, summary, "l")
    distance_omega = bound_distances(frame, summary, "omega")
    np.testing.assert_array_equal(distance_l, [0.5, 0.25, 0.0])
    np.testing.assert_array_equal(distance_omega, [0.5, 0.25, 0.0])
    np.testing.assert_array_equal(distance_l, l_bound(frame["loss"], 2.0))
    np.testing.assert_array_equal(
        distance_omega,
        omega_bound_distance(frame["loss"], frame["grad_norm"], [0.0, 0.25], [0.25, 0.5]),
    )
    with pytest.raises(ValueError, match="which"):
        bound_distances(frame, summary, "L")


# --- the bounds command -------------------------------------------------------------------------


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


def _split(path: Path, num: int) -> Path:
    rng = np.random.default_rng(1)
    x = rng.integers(0, 256, size=(num, 1, 28, 28), dtype=np.uint8)
    save_split(path, x, rng.integers(0, 10, num))
    return path


BOUNDS_JSON = {"norm": "l2", "eps": [0.25, 0.5], "samples": 2, "block": 4}


def _bounds_args(model: Path, data: Path, out: Path, *extra: str, spec=None) -> list[str]:
    return [
        "bounds", "--model", str(model), "--data", str(data), "--out-dir", str(out),
        "--bounds-json", json.dumps(BOUNDS_JSON if spec is None else spec),
        "--batch-size", "16", "--seed", "3", "--threads", "1", "--no-progress", *extra,
    ]  # fmt: skip


def test_cli_writes_both_files_for_a_random_sample(tmp_path):
    model_path, lenet = _save_lenet(tmp_path / "model.pt")
    data = _split(tmp_path / "test.npz", 90)
    out = tmp_path / "out"
    extra = ("--skip", "2", "--sample", "40", "--sample-seed", "5")
    assert main(_bounds_args(model_path, data, out, *extra)) == 0
    frame, summary = read_bounds(out)
    args = argparse.Namespace(data=data, skip=2, max_images=None, sample=40, sample_seed=5)
    positions = _selected_positions(args)
    np.testing.assert_array_equal(frame["idx"], positions)
    assert sorted(summary) == sorted(
        ["format", "norm", "eps", "samples", "block", "top_k", "outputs", "clip", "seed",
         "batch_size", "skip", "max_images", "sample", "sample_seed", "lipschitz", "omega", "p",
         "gev", "grad_norm_mean", "grad_norm_max", "blocks", "images", "idx", "seconds",
         "model_sha256", "data_sha256", "device", "torch"]
    )  # fmt: skip
    assert (summary["images"], summary["blocks"], summary["sample"]) == (40, 10, 40)
    assert summary["idx"] == positions.tolist()  # what the table stage checks bounds.tsv by
    assert summary["eps"] == [0.25, 0.5] and len(summary["omega"]) == 2
    assert len(summary["model_sha256"]) == 64 and summary["torch"] == torch.__version__
    # the command's numbers are the runner's and the summary's on the same images
    x = torch.from_numpy(np.load(data)["x"][positions])
    y = torch.from_numpy(np.load(data)["y"][positions])
    settings = resolve_bound_settings(BOUNDS_JSON)
    sampling = {key: value for key, value in settings.items() if key != "block"}
    direct = bound_statistics(
        lenet, x, y, **sampling, batch_size=16, seed=3, device="cpu", progress=False,
        indices=positions,
    )  # fmt: skip
    np.testing.assert_array_equal(frame["grad_norm"], direct["grad_norm"])
    np.testing.assert_array_equal(frame[["modulus_0", "modulus_1"]], direct["modulus"])
    fitted = bound_summary(direct, eps=settings["eps"], block=4, seed=3)
    assert summary["lipschitz"] == fitted["lipschitz"] and summary["omega"] == fitted["omega"]


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (BOUNDS_JSON | {"blocks": 4}, "bounds: unknown key 'blocks'"),
        ({"eps": [0.5], "samples": 2, "block": 4}, "bounds: missing key 'norm'"),
        (BOUNDS_JSON | {"norm": "l1"}, "bounds.norm: need one of l2, linf, got 'l1'"),
        (BOUNDS_JSON | {"eps": [0.5, 0.25]}, "bounds.eps: need a non-empty, strictly increasing"),
        (BOUNDS_JSON | {"eps": [0.0, 0.25]}, "bounds.eps: need"),
        (BOUNDS_JSON | {"eps": 0.5}, "bounds.eps: need"),
        (BOUNDS_JSON | {"samples": 0}, "bounds.samples: need an integer >= 1, got 0"),
        (BOUNDS_JSON | {"block": 1.5}, "bounds.block: need an integer >= 1, got 1.5"),
        (BOUNDS_JSON | {"top_k": 0}, "bounds.top_k: need an integer >= 1, got 0"),
        (BOUNDS_JSON | {"outputs": "probs"}, "bounds.outputs: need one of logits, softmax"),
        (BOUNDS_JSON | {"clip": 1}, "bounds.clip: need true or false, got 1"),
        ("{", "--bounds-json: not valid JSON"),
    ],
)
def test_cli_bad_bounds_json_fails_first_in_one_line(tmp_path, capsys, spec, message):
    args = _bounds_args(tmp_path / "no-model.pt", tmp_path / "no-data.npz", tmp_path / "out")
    if isinstance(spec, str):
        args[args.index("--bounds-json") + 1] = spec
    else:
        args[args.index("--bounds-json") + 1] = json.dumps(spec)
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"robustreg bounds: error: {message}") and err.count("\n") == 1
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (("--sample", "46"), "--sample 46: more than the 45 images --skip 2 leaves"),
        (("--sample", "0"), "argument --sample: need 1 to 2147483647, got 0"),
        (("--sample", "8", "--sample-seed", "-1"), "argument --sample-seed: need 0 to 4294967295"),
        (("--max-images", "30"), "block: 4 images per block must split the 30 images"),
    ],
)
def test_cli_bad_selection_fails_before_the_model_is_read(tmp_path, capsys, extra, message):
    data = _split(tmp_path / "test.npz", 90)
    args = _bounds_args(tmp_path / "no-model.pt", data, tmp_path / "out", "--skip", "2", *extra)
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"robustreg bounds: error: {message}") and err.count("\n") == 1


# --- --sample -----------------------------------------------------------------------------------


def _positions(data: Path, sample: int | None, seed: int = 0, **kwargs) -> np.ndarray:
    values = {"skip": 1, "max_images": None} | kwargs
    return _selected_positions(
        argparse.Namespace(data=data, sample=sample, sample_seed=seed, **values)
    )


def test_sample_is_a_seeded_sorted_subset(tmp_path):
    data = _split(tmp_path / "test.npz", 100)
    first = _positions(data, 20, seed=7, skip=3)
    assert np.array_equal(first, _positions(data, 20, seed=7, skip=3))
    assert not np.array_equal(first, _positions(data, 20, seed=8, skip=3))
    assert first.size == 20 and np.all(np.diff(first) > 0) and np.all(first % 3 == 0)
    assert set(first) < set(range(0, 100, 3))
    # all of them, in order
    np.testing.assert_array_equal(_positions(data, 34, skip=3), np.arange(0, 100, 3))
    # --max-images M: the first M drawn, a subset of the sample (and the sample of size M)
    few = _positions(data, 20, seed=7, skip=3, max_images=5)
    assert few.size == 5 and set(few) < set(first)
    np.testing.assert_array_equal(few, _positions(data, 5, seed=7, skip=3))
    # without --sample, --skip and --max-images as before
    np.testing.assert_array_equal(_positions(data, None, skip=3, max_images=4), [0, 3, 6, 9])
    with pytest.raises(ValueError, match="--sample 35"):
        _positions(data, 35, skip=3)


def test_attack_progress_identity_holds_the_sample(tmp_path, capsys):
    model_path, _ = _save_lenet(tmp_path / "model.pt")
    data = _split(tmp_path / "test.npz", 30)
    out = tmp_path / "attack"

    def args(seed: str) -> list[str]:
        return [
            "attack", "--model", str(model_path), "--data", str(data), "--out-dir", str(out),
            "--attack-json", '{"kind": "none"}', "--batch-size", "2", "--sample", "6",
            "--sample-seed", seed, "--threads", "1", "--no-progress",
        ]  # fmt: skip

    with killed_after_first_append(OutcomeLog):
        main(args("0"))
    header = json.loads((out / "partial.jsonl").read_text().splitlines()[0])["identity"]
    assert (header["sample"], header["sample_seed"], header["max_images"]) == (6, 0, None)
    capsys.readouterr()
    assert main(args("1")) == 0
    assert "discarded, it is from a different run (sample_seed differ)" in capsys.readouterr().err
    np.testing.assert_array_equal(
        read_outcomes(out / "outcomes.tsv")["idx"], _positions(data, 6, seed=1)
    )
    summary = json.loads((out / "attack.json").read_text())
    assert (summary["sample"], summary["sample_seed"], summary["images"]) == (6, 1, 6)


def test_the_omega_bound_uses_omega_made_nondecreasing_in_eps():
    """Issue 20: omega(eps) is a supremum over the eps-ball, so a larger eps cannot have a
    smaller one; the separate estimates can (0.6 at eps 0.5, 0.1 at eps 1). Image 0 (gap 1,
    gradient norm 0.5) would be certified at eps 1 with the raw 0.1 (0.9 >= 0.5); with the
    envelope's 0.6 only at eps 0.5 (0.4 >= 0.25, 0.4 < 0.5)."""
    frame = pd.DataFrame({"loss": [-1.0], "grad_norm": [0.5]})
    summary = {"lipschitz": 2.0, "omega": [0.6, 0.1], "eps": [0.5, 1.0]}
    np.testing.assert_array_equal(bound_distances(frame, summary, "omega"), [0.5])
    np.testing.assert_array_equal(omega_envelope([0.1, 0.05, 0.2, 0.15]), [0.1, 0.1, 0.2, 0.2])
    with pytest.raises(ValueError, match="omegas"):
        omega_envelope([])


def test_fit_warnings_flag_heavy_tails_and_raised_omegas():
    fit = {"loc": 0.0, "scale": 1.0}
    summary = {
        "eps": [0.5, 1.0],
        "omega": [0.6, 0.1],
        "gev": {"lipschitz": fit | {"c": -0.25}, "omega": [fit | {"c": 0.1}, fit | {"c": -0.5}]},
    }
    assert gev_shapes(summary) == [("L", 0.25), ("ω at ε = 0.5", -0.1), ("ω at ε = 1", 0.5)]
    assert fit_warnings(summary) == [
        "the GEV fit of L is heavy-tailed (shape ξ = 0.25 > 0)",
        "the GEV fit of ω at ε = 1 is heavy-tailed (shape ξ = 0.50 > 0)",
        "ω at ε = 1 is raised from 0.1 to 0.6, its estimate at a smaller ε (ω cannot decrease "
        "with ε)",
    ]
    summary["gev"]["lipschitz"]["c"] = 0.2
    summary["gev"]["omega"][1]["c"] = 0.0
    summary["omega"] = [0.1, 0.6]
    assert fit_warnings(summary) == []
