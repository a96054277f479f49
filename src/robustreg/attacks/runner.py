"""The attack runner: ``run_attack`` evaluates a model on a test split one batch at a time
against an attack (``robustreg.attacks.registry.build_attack``), each image's outcome recorded
(``robustreg.attacks.outcomes``), so a killed job resumes and tables compute any accuracy from
the outcome log. Also what the bounds job (``robustreg.bounds.bound_statistics``) shares with
it: the model frozen in eval mode (``attack_mode``), images as floats in [0, 1]
(``as_unit_float``) and per-batch seeds (``batch_seed``)."""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence

import numpy as np
import torch
from torch import Tensor, nn
from tqdm import tqdm

from robustreg.attacks.outcomes import NOT_BROKEN, PART_COLUMN, RESULT_KEYS
from robustreg.attacks.registry import Attack
from robustreg.attacks.threat import threat_tolerance
from robustreg.io import image_ids
from robustreg.smoothing import indexed_device

__all__ = [
    "as_unit_float",
    "attack_mode",
    "batch_seed",
    "current_device",
    "in_top_k",
    "run_attack",
]


def in_top_k(logits: Tensor, y: Tensor, top_k: int) -> Tensor:
    """True [B] where the label ``y`` is among the model's top ``top_k`` classes: the
    prediction (argmax) for top-1, one of ``logits.topk(top_k)``'s indices otherwise. The one
    definition of "correct" and "robust" that the runner and the minimal attacks share."""
    if top_k == 1:
        return logits.argmax(dim=1) == y
    return (logits.topk(top_k, dim=1).indices == y.view(-1, 1)).any(dim=1)


@contextlib.contextmanager
def attack_mode(model: nn.Module, device: torch.device | str) -> Iterator[nn.Module]:
    """The model on ``device`` in eval mode, parameters frozen, for the duration; restored after.

    Frozen because Foolbox and ART take input gradients with ``backward()``, which would
    otherwise compute (and accumulate) every weight's gradient as well.
    """
    from robustreg.smoothing import prepared_for_inference

    flags = [(p, p.requires_grad) for p in model.parameters()]
    with prepared_for_inference(model, torch.device(device), channels_last=False):
        try:
            for p, _ in flags:
                p.requires_grad_(False)
            yield model
        finally:
            for p, flag in flags:
                p.requires_grad_(flag)


@contextlib.contextmanager
def current_device(device: torch.device) -> Iterator[None]:
    """``device`` as the current CUDA device for the duration, if it is a GPU: ART and
    AutoAttack work on "the current GPU", which must be ours, not GPU 0."""
    if device.type == "cuda":
        with torch.cuda.device(device):
            yield
    else:
        yield


def batch_seed(seed: int, index: int) -> int:
    """Torch's seed for the batch whose first image is at dataset position ``index``."""
    state = np.random.SeedSequence([int(seed), int(index)]).generate_state(1, dtype=np.uint64)
    return int(state[0])


def as_unit_float(images: Tensor) -> Tensor:
    """uint8 images scaled into [0, 1], float images as float32."""
    if images.dtype == torch.uint8:
        return images.float().div_(255.0)
    if not images.is_floating_point():
        raise TypeError(f"images must be uint8 or float, got {images.dtype}")
    return images.float()


@contextlib.contextmanager
def _seeded(seed: int, device: torch.device) -> Iterator[None]:
    """Torch's global RNG (CPU, and ``device``'s when a GPU) seeded for the duration, then
    restored, so that attacks drawing from it (ours, Foolbox's random starts) repeat."""
    cuda = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=cuda, device_type="cuda"), current_device(device):
        torch.random.default_generator.manual_seed(seed)
        if cuda:
            torch.cuda.manual_seed(seed)
        yield


def _inside(x: Tensor, points: Tensor, threat: tuple[str, float]) -> Tensor:
    """Which points lie in [0, 1] and within the threat model (tolerance included)."""
    in_box = (points >= 0).flatten(1).all(1) & (points <= 1).flatten(1).all(1)
    norm, eps = threat
    diff = (points.double() - x.double()).flatten(1)
    size = diff.abs().amax(1) if norm == "linf" else diff.norm(dim=1)
    return in_box & (size <= eps + threat_tolerance(norm, eps, diff.shape[1]))


def _attack_batch(
    model: nn.Module, attack: Attack, x: Tensor, y: Tensor, seed: int
) -> tuple[dict[str, Tensor], Tensor, np.ndarray]:
    """Outcomes of one batch on the model's device, the points kept, and what broke each image
    (``PART_COLUMN``: the part of the attack that ``Attack.perturb_parts`` names, else the
    kind; ``NOT_BROKEN`` for an image not broken)."""
    with torch.no_grad():
        logits = model(x)
    classes = logits.shape[1]
    if attack.top_k >= classes:
        raise ValueError(
            f"attack {attack.kind}.top_k: must be below the model's {classes} classes, "
            f"got {attack.top_k}"
        )
    clean = logits.argmax(1)
    correct = in_top_k(logits, y, attack.top_k)
    robust = correct
    kept = x.clone()
    adversarial = clean.clone()
    named = np.full(x.shape[0], attack.kind, dtype=object)
    if attack.threat is not None and bool(correct.any()):
        with _seeded(seed, x.device):
            points, parts = attack.perturb_parts(model, x[correct], y[correct])
        points = points.detach().to(x.dtype)
        if parts is not None:
            at = correct.nonzero().flatten().cpu().numpy()
            named[at] = [part or attack.kind for part in parts]
        inside = _inside(x[correct], points, attack.threat)
        if not bool(inside.all()):
            print(
                f"{attack.kind}: {int((~inside).sum())} points outside [0, 1] or the threat "
                "model; their images count as not broken",
                file=sys.stderr,
            )
            points[~inside] = x[correct][~inside]
        kept[correct] = points
        with torch.no_grad():
            logits = model(kept)
        adversarial = torch.where(correct, logits.argmax(1), clean)
        robust = correct & in_top_k(logits, y, attack.top_k)
        if attack.minimal:
            # a minimal attack's row is a distance only where the point is adversarial
            kept[robust] = x[robust]
            adversarial = torch.where(robust, clean, adversarial)
    diff = (kept.double() - x.double()).flatten(1)
    outcome = {
        "clean": clean,
        "adversarial": adversarial,
        "robust": robust.long(),
        "l2": diff.norm(dim=1),
        "linf": diff.abs().amax(1),
    }
    broken = (correct & ~robust).cpu().numpy()
    return outcome, kept, np.where(broken, named, NOT_BROKEN)


def run_attack(
    model: nn.Module,
    x: Tensor | np.ndarray,
    y: Sequence[int] | Tensor | np.ndarray,
    attack: Attack,
    *,
    batch_size: int,
    seed: int,
    device: torch.device | str,
    progress: bool = True,
    indices: Sequence[int] | np.ndarray | None = None,
    done: Mapping[str, np.ndarray] | None = None,
    on_batch: Callable[[dict[str, np.ndarray]], None] | None = None,
    return_points: bool = False,
) -> dict[str, np.ndarray]:
    """Per-image outcomes of ``attack`` on ``model``: the attack stage of the ATENT tables.

    ``x`` [N, C, H, W] uint8 or float in [0, 1] (CPU), ``y`` its labels, ``indices`` the images'
    dataset positions (default 0..N-1). The model runs in eval mode on ``device``
    (``attack_mode``). Images go through in batches, always the same slices of ``x``; an image
    the model already misclassifies is not attacked. Torch's RNG is seeded per batch from
    (``seed``, dataset position of the batch's first image) and restored after, so a batch's
    outcomes do not depend on the batches before it.

    Resuming as in ``robustreg.smoothing.certify_counts``: ``done`` holds an earlier run's
    outcomes (this function's keys) for any images; a batch it covers entirely is taken from it,
    any other batch is attacked. ``on_batch`` gets each newly attacked batch's outcomes as soon
    as they are known.

    Returns numpy arrays, one row per image: idx, label, clean (clean prediction), adversarial
    (prediction at the kept point, = clean where nothing was attacked), robust (1 if the label
    is among the ``attack.top_k`` largest logits at both; for top_k = 1 both predictions are
    the label), l2 and linf (norms of kept point - x, float64), seconds (the batch's wall time
    shared evenly), broken_by (``PART_COLUMN``, strings: what broke the image). A minimal
    attack's rows read as ``robustreg.attacks.outcomes`` says.
    ``return_points`` adds ``points`` [N, C, H, W] float32, the kept points (only without
    ``done``).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if return_points and done is not None:
        raise ValueError("return_points needs every batch attacked: pass no done")
    images = torch.as_tensor(x)
    device = indexed_device(device)
    num = images.shape[0]
    idx, label = image_ids(num, indices, y)
    result = {
        "idx": idx,
        "label": label,
        **{key: np.zeros(num, dtype=np.int64) for key in ("clean", "adversarial", "robust")},
        **{key: np.zeros(num, dtype=np.float64) for key in ("l2", "linf", "seconds")},
        PART_COLUMN: np.full(num, NOT_BROKEN, dtype=object),
    }
    known = _fill_done(result, done) if done is not None else np.zeros(num, dtype=bool)
    batches = [(a, min(a + batch_size, num)) for a in range(0, num, batch_size)]
    todo = [(a, b) for a, b in batches if not known[a:b].all()]
    points = np.zeros((num, *images.shape[1:]), dtype=np.float32) if return_points else None
    initial = num - sum(b - a for a, b in todo)
    bar = tqdm(total=num, initial=initial, disable=not progress, file=sys.stderr, unit="img")
    with bar, attack_mode(model, device):
        for start, stop in todo:
            t0 = time.perf_counter()
            batch = as_unit_float(images[start:stop]).to(device)
            labels = torch.as_tensor(label[start:stop], device=device)
            outcome, kept, parts = _attack_batch(
                model, attack, batch, labels, batch_seed(seed, idx[start])
            )
            for key, value in outcome.items():
                result[key][start:stop] = value.cpu().numpy()
            result[PART_COLUMN][start:stop] = parts
            if points is not None:
                points[start:stop] = kept.cpu().numpy()
            # .cpu() waited for the device, so this is the batch's real wall time
            result["seconds"][start:stop] = (time.perf_counter() - t0) / (stop - start)
            if on_batch is not None:
                on_batch({key: value[start:stop].copy() for key, value in result.items()})
            bar.update(stop - start)
    if points is not None:
        result["points"] = points
    return result


def _fill_done(result: dict[str, np.ndarray], done: Mapping[str, np.ndarray]) -> np.ndarray:
    """Copy ``done``'s rows into ``result`` by image index; which images it covered."""
    row_of = {int(i): row for row, i in enumerate(np.asarray(done["idx"]).reshape(-1))}
    rows = np.array([row_of.get(int(i), -1) for i in result["idx"]], dtype=np.int64)
    known = rows >= 0
    if not known.any():
        return known
    if not np.array_equal(np.asarray(done["label"])[rows[known]], result["label"][known]):
        raise ValueError("earlier results give other labels for the same image indices")
    for key in RESULT_KEYS[2:]:
        result[key][known] = np.asarray(done[key])[rows[known]]
    return known
