"""Monte Carlo class counts of a Gaussian-smoothed classifier, for certification.

Randomized smoothing (Cohen, Rosenfeld & Kolter, "Certified Adversarial Robustness via
Randomized Smoothing", ICML 2019) certifies g(x) = argmax_c P(f(x + delta) = c) with
delta ~ N(0, sigma^2 I). Their CERTIFY draws n0 samples of f(x + delta) to select the top
class and n further samples to estimate its probability. This module only produces those
counts; the statistics on them live in ``robustreg.certify``.

Noise is added in [0, 1] pixel space and the model normalizes inside (see
``robustreg.models``), as in Cohen et al.

Every image draws its noise from its own generator, seeded from (seed, dataset index), and
always in the same chunk sizes (``batch_size`` samples, then the remainder, per phase). So an
image's counts depend only on its seed, index and ``batch_size``, not on which other images
share a forward pass, how many images are packed together, or where a run was resumed.

A long run is resumable: ``ProgressLog`` appends each image's counts as they are sampled and
``certify_counts(done=...)`` skips the images an interrupted run finished.
"""

from __future__ import annotations

import contextlib
import math
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence

import numpy as np
import torch
from torch import Tensor, nn
from tqdm import tqdm

from robustreg.integrity import first_line
from robustreg.io import Expected, ResumableLog, image_ids

__all__ = [
    "PRECISIONS",
    "ProgressLog",
    "certify_counts",
    "evaluated_in",
    "image_generator",
    "indexed_device",
    "sample_counts",
]

# How the base classifier f is evaluated on the noisy samples. A certificate holds for the
# classifier as evaluated: bf16 (autocast) is a slightly different f from fp32's, so the
# precision is part of every certification's identity, and fp32 stays the default.
PRECISIONS = ("fp32", "bf16")


def indexed_device(device: torch.device | str) -> torch.device:
    """``device`` with its index: a bare ``cuda`` becomes the current CUDA device (the one the
    job claimed), so that noise generators, RNG forks (which need an index) and
    ``torch.cuda.device`` scopes all name that one GPU."""
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    return device


def image_generator(seed: int, index: int, device: torch.device | str) -> torch.Generator:
    """The generator of the image at dataset position ``index`` in a run seeded with ``seed``.

    SeedSequence mixes (seed, index) so neighbouring indices get unrelated streams and
    resuming at any image reproduces its noise. The CPU Mersenne Twister keeps only the low
    32 bits of the seed (CUDA's Philox keeps all 64); a rare collision merely gives two
    images the same noise, which leaves each image's certificate valid.
    """
    state = np.random.SeedSequence([int(seed), int(index)]).generate_state(1, dtype=np.uint64)
    gen = torch.Generator(device=torch.device(device))
    gen.manual_seed(int(state[0]))
    return gen


@contextlib.contextmanager
def evaluated_in(precision: str, device: torch.device | str) -> Iterator[None]:
    """Run the model calls inside in ``precision`` (``PRECISIONS``) on ``device``.

    ``fp32`` is IEEE single precision throughout: PyTorch lets cuDNN run fp32 convolutions in
    TF32 (10-bit mantissa) by default on Ampere and later GPUs, which would make "fp32"
    depend on the GPU, so TF32 is switched off for the duration. ``bf16`` autocasts
    convolutions and matrix products to bfloat16 (inputs and noise stay fp32 until the
    first layer), the GPU's fast path.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision: {precision!r} is not one of {', '.join(PRECISIONS)}")
    device = torch.device(device)
    if precision == "bf16":
        # no cast cache: it only pays when weights are reused within one autograd graph, and
        # CUDA graph capture (``_captured``) must not keep casts made outside it
        with torch.autocast(device.type, dtype=torch.bfloat16, cache_enabled=False):
            yield
        return
    conv, matmul = torch.backends.cudnn.conv, torch.backends.cuda.matmul
    saved = conv.fp32_precision, matmul.fp32_precision
    conv.fp32_precision = matmul.fp32_precision = "ieee"
    try:
        yield
    finally:
        conv.fp32_precision, matmul.fp32_precision = saved


def _uses_channels_last(
    model: nn.Module, device: torch.device, shape: Sequence[int], precision: str = "fp32"
) -> bool:
    # oneDNN convolutions on CPU run ~1.8x faster on NHWC (LeNet, measured), and cuDNN's
    # bf16 tensor-core convolutions take NHWC natively; fp32 on a GPU keeps the layout the
    # caller built.
    return (
        (device.type == "cpu" or precision == "bf16")
        and len(shape) == 3
        and any(isinstance(m, nn.Conv2d) for m in model.modules())
    )


@contextlib.contextmanager
def prepared_for_inference(
    model: nn.Module, device: torch.device, channels_last: bool
) -> Iterator[None]:
    """Eval mode on ``device`` (NHWC if asked) for the duration; the caller's model is restored.

    ``Module.to`` swaps ``param.data`` and replaces buffer objects, so keeping the old ones
    and putting them back undoes it without copying anything a second time.
    """
    params = [(p, p.data) for p in model.parameters()]
    buffers = [
        (mod, name, buf)
        for mod in model.modules()
        for name, buf in mod.named_buffers(recurse=False)
    ]
    was_training = model.training
    try:
        if channels_last:
            model.to(device=device, memory_format=torch.channels_last)
        else:
            model.to(device=device)
        model.eval()
        yield
    finally:
        for p, data in params:
            p.data = data
        for mod, name, buf in buffers:
            setattr(mod, name, buf)
        model.train(was_training)


# Samples per forward call on the CPU. A few hundred samples' activations stay in the cache:
# LeNet ran 1.4x faster per sample in 500-sample calls than in 1000-sample ones (2 cores,
# measured beside Cohen et al.'s Smooth.certify, issue 21). A call is a run of whole
# samples, so the counts are the same.
CPU_SLICE = 500


def _chunks(num: int, batch_size: int) -> list[int]:
    full, rest = divmod(num, batch_size)
    return [batch_size] * full + ([rest] if rest else [])


class _Sampler:
    """Preallocated noisy batch plus the per-sample count index, reused for every forward pass."""

    def __init__(
        self,
        sample_shape: Sequence[int],
        batch_size: int,
        device: torch.device,
        dtype: torch.dtype,
        channels_last: bool,
    ):
        if batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        self.batch_size = batch_size
        self.device = device
        self.dtype = dtype
        self.channels_last = channels_last
        if channels_last:
            c, h, w = sample_shape
            # normal_ takes its fast vectorized path only on a contiguous tensor, so the noise
            # is drawn into an NHWC-contiguous block and the model sees its NCHW permutation.
            self.flat = torch.empty((batch_size, h, w, c), device=device, dtype=dtype)
            self.view = self.flat.permute(0, 3, 1, 2)
        else:
            self.flat = torch.empty((batch_size, *sample_shape), device=device, dtype=dtype)
            self.view = self.flat
        # count index (slot * K) of each sample in the batch; + prediction gives its bin
        self.bins = torch.empty(batch_size, device=device, dtype=torch.int64)
        self.ones = torch.ones(batch_size, device=device, dtype=torch.int64)
        # the full-batch forward pass as a CUDA graph, captured at its first use
        self.graphs = device.type == "cuda"
        self._graph: torch.cuda.CUDAGraph | None = None
        self._graph_predictions: Tensor | None = None

    def prepare_images(self, images: Tensor) -> Tensor:
        images = images.to(device=self.device, dtype=self.dtype)
        if self.channels_last:
            # same layout as the buffer, so the broadcast add walks both in memory order
            images = images.contiguous(memory_format=torch.channels_last)
        return images

    def counts(
        self,
        model: nn.Module,
        images: Tensor,
        generators: Sequence[torch.Generator],
        sigma: float,
        nums: Sequence[int],
        num_classes: int,
    ) -> Tensor:
        """Counts [len(nums), P, K] (int64, CPU) for P prepared images, phases drawn in order.

        Work items (image, phase, chunk) are ordered phase by phase and chunk by chunk across
        images, which keeps each generator's call sequence fixed, and are packed first-fit
        into forward passes so that small chunks (n0, remainders) share a batch.
        """
        num_images = len(generators)
        if images.shape[0] != num_images:
            raise ValueError(f"{images.shape[0]} images but {num_images} generators")
        if sigma < 0:
            raise ValueError("sigma must be >= 0")
        k = num_classes
        totals = torch.zeros(len(nums) * num_images * k, device=self.device, dtype=torch.int64)
        items = []
        for phase, num in enumerate(nums):
            if num < 0:
                raise ValueError("number of samples must be >= 0")
            for size in _chunks(num, self.batch_size):
                items.extend((phase * num_images + i, i, size) for i in range(num_images))

        batch: list[tuple[int, int, int, int]] = []
        used = 0
        for slot, image, size in items:
            if used + size > self.batch_size:
                self._forward(model, images, generators, sigma, batch, used, totals, k)
                batch, used = [], 0
            batch.append((slot, image, used, size))
            used += size
        if batch:
            self._forward(model, images, generators, sigma, batch, used, totals, k)
        # the one device-to-host transfer for these images
        return totals.view(len(nums), num_images, k).cpu()

    def _forward(self, model, images, generators, sigma, batch, used, totals, k) -> None:
        for slot, image, start, size in batch:
            stop = start + size
            # std folded into the draw: one pass over the noise instead of normal_ then mul_
            self.flat[start:stop].normal_(0.0, sigma, generator=generators[image])
            self.view[start:stop].add_(images[image : image + 1])
            self.bins[start:stop].fill_(slot * k)
        if used == self.batch_size and self.graphs:
            predictions = self._replayed(model, k)
        elif self.device.type == "cpu" and used > CPU_SLICE:
            predictions = torch.cat(
                [
                    _predictions(model(self.view[start : min(start + CPU_SLICE, used)]), k)
                    for start in range(0, used, CPU_SLICE)
                ]
            )
        else:
            predictions = _predictions(model(self.view[:used]), k)
        # scatter_add_ into a preallocated tensor; bincount would sync CUDA to size its output
        totals.scatter_add_(0, self.bins[:used] + predictions, self.ones[:used])

    def _replayed(self, model: nn.Module, k: int) -> Tensor:
        """argmax f of the whole batch, through a CUDA graph of the forward pass.

        At certification batch sizes (400 images on CIFAR-10) a ResNet-110's forward pass on
        a current GPU computes in less time than it takes the CPU to launch its ~300 kernels
        one by one (Cohen et al.'s sampler launches them for every batch). Captured once and
        replayed, the same kernels run on the same buffer with no launches in between. A
        model that cannot be captured is sampled eagerly, with a one-line note.
        """
        if self._graph is None:
            try:
                self._graph, self._graph_predictions = _captured(model, self.view, k)
            except RuntimeError as err:
                self.graphs = False
                print(
                    f"CUDA graph capture failed ({first_line(err)}); sampling eagerly",
                    file=sys.stderr,
                )
                return _predictions(model(self.view), k)
        self._graph.replay()
        return self._graph_predictions


def _predictions(logits: Tensor, k: int) -> Tensor:
    if logits.dim() != 2 or logits.shape[1] != k:
        raise ValueError(f"model returned logits of shape {tuple(logits.shape)}, want [*, {k}]")
    return logits.argmax(1)


def _captured(model: nn.Module, batch: Tensor, k: int) -> tuple[torch.cuda.CUDAGraph, Tensor]:
    """A CUDA graph of ``argmax model(batch)`` and the tensor its replays write to.

    Warm-up passes run on a side stream first, as CUDA graph capture requires (cuDNN and
    cuBLAS pick and initialise their kernels outside the capture); ``batch``'s contents are
    whatever the buffer holds, and the outputs are discarded.
    """
    side = torch.cuda.Stream(device=batch.device)
    side.wait_stream(torch.cuda.current_stream(batch.device))
    with torch.cuda.stream(side):
        for _ in range(2):
            _predictions(model(batch), k)
    torch.cuda.current_stream(batch.device).wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        predictions = _predictions(model(batch), k)
    return graph, predictions


def _model_dtype(model: nn.Module) -> torch.dtype:
    return next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)


def _as_unit_float(images: Tensor) -> Tensor:
    if images.dtype == torch.uint8:
        return images.float().div_(255.0)
    if not images.is_floating_point():
        raise TypeError(f"images must be uint8 or float, got {images.dtype}")
    return images


def sample_counts(
    model: nn.Module,
    images: Tensor,
    sigma: float,
    num: int,
    num_classes: int,
    batch_size: int,
    generators: Sequence[torch.Generator],
    precision: str = "fp32",
) -> Tensor:
    """Class counts [N, num_classes] (int64, CPU) of argmax f(x + delta) over ``num`` draws.

    ``images`` [N, C, H, W] in [0, 1] on the device to sample on (the model is moved there and
    back). Image i's noise comes from ``generators[i]`` (on that device), advanced by exactly
    its own draws, so its counts do not depend on the other images. Images are packed into
    shared forward passes of at most ``batch_size`` samples when ``num`` is small. f is
    evaluated in ``precision`` (``evaluated_in``).
    """
    if images.dim() < 2:
        raise ValueError("images must be [N, ...] with one image per row")
    device = images.device
    images = _as_unit_float(images)
    channels_last = _uses_channels_last(model, device, images.shape[1:], precision)
    sampler = _Sampler(images.shape[1:], batch_size, device, _model_dtype(model), channels_last)
    with (
        prepared_for_inference(model, device, channels_last),
        torch.inference_mode(),
        evaluated_in(precision, device),
    ):
        counts = sampler.counts(
            model, sampler.prepare_images(images), generators, sigma, (num,), num_classes
        )
    return counts[0]


def _default_images_per_batch(n0: int, n: int, batch_size: int) -> int:
    # Packing only helps with the chunks smaller than a batch (n0 and the remainders): pack
    # enough images that the smallest of them fills a forward pass.
    rests = [m % batch_size for m in (n0, n) if m % batch_size]
    return max(1, batch_size // min(rests)) if rests else 1


def certify_counts(
    model: nn.Module,
    images: Tensor,
    labels: Sequence[int] | Tensor | np.ndarray,
    sigma: float,
    n0: int,
    n: int,
    batch_size: int,
    seed: int,
    device: torch.device | str,
    num_classes: int,
    progress: bool = True,
    images_per_batch: int | None = None,
    indices: Sequence[int] | np.ndarray | None = None,
    done: Mapping[str, np.ndarray] | None = None,
    on_group: Callable[[dict[str, np.ndarray]], None] | None = None,
    precision: str = "fp32",
) -> dict[str, np.ndarray]:
    """Selection (n0) and estimation (n) counts for each image, as CERTIFY needs them.

    ``images`` [N, C, H, W] uint8 (0..255) or float in [0, 1] (tensor or array, CPU); they go to
    ``device`` ``images_per_batch`` at a time (default: enough that the n0 draws of several
    images fill one forward pass). ``indices`` are the images' dataset positions, which seed
    their generators (default 0..N-1); pass them when certifying a slice so that any image's
    counts are reproduced by the same (seed, index, batch_size). Each image's selection draws
    come first in its stream, then its estimation draws.

    Resuming: ``done`` holds results of an earlier run with the same arguments, in the form
    returned here, for any of the images (matched by index; see ``ProgressLog``). A group of
    images that ``done`` covers entirely is taken from it instead of sampled; a group it covers
    in part is sampled again. Groups are always the same slices of ``images``, so a resumed run
    makes exactly the forward passes an uninterrupted one makes, and its counts are equal even
    for a model whose outputs depend on what else is in the batch. ``on_group`` is called with
    the results of each newly sampled group (same keys, the group's rows) as soon as it is done;
    an exception it raises stops the run. f is evaluated in ``precision`` (``evaluated_in``):
    the counts, and so the certificates, are those of the classifier as evaluated.

    Returns numpy arrays: idx [N], label [N], counts0 [N, K], counts [N, K] and seconds [N],
    the wall time of each image's sampling as in Cohen et al.'s logs (a packed group's time is
    split evenly between its images, which all draw the same number of samples).
    """
    images = torch.as_tensor(images)
    device = indexed_device(device)
    num_images = images.shape[0]
    idx, label = image_ids(num_images, indices, labels)
    if images_per_batch is None:
        images_per_batch = _default_images_per_batch(n0, n, batch_size)
    if images_per_batch < 1:
        raise ValueError("images_per_batch must be >= 1")
    per_group = min(images_per_batch, max(num_images, 1))

    result = {
        "idx": idx,
        "label": label,
        "counts0": np.zeros((num_images, num_classes), dtype=np.int64),
        "counts": np.zeros((num_images, num_classes), dtype=np.int64),
        "seconds": np.zeros(num_images, dtype=np.float64),
    }
    known = _fill_done(result, done) if done is not None else np.zeros(num_images, dtype=bool)
    groups = [(a, min(a + per_group, num_images)) for a in range(0, num_images, per_group)]
    todo = [(a, b) for a, b in groups if not known[a:b].all()]

    channels_last = _uses_channels_last(model, device, images.shape[1:], precision)
    sampler = _Sampler(images.shape[1:], batch_size, device, _model_dtype(model), channels_last)
    initial = num_images - sum(b - a for a, b in todo)
    bar = tqdm(total=num_images, initial=initial, disable=not progress, file=sys.stderr, unit="img")
    with (
        bar,
        prepared_for_inference(model, device, channels_last),
        torch.inference_mode(),
        evaluated_in(precision, device),
    ):
        for start, stop in todo:
            t0 = time.perf_counter()
            group = sampler.prepare_images(_as_unit_float(images[start:stop]))
            gens = [image_generator(seed, int(i), device) for i in idx[start:stop]]
            both = sampler.counts(model, group, gens, sigma, (n0, n), num_classes).numpy()
            result["counts0"][start:stop], result["counts"][start:stop] = both[0], both[1]
            # .cpu() in counts() waited for the device, so this is the group's real wall time
            result["seconds"][start:stop] = (time.perf_counter() - t0) / (stop - start)
            if on_group is not None:
                on_group({key: value[start:stop].copy() for key, value in result.items()})
            bar.update(stop - start)
    return result


def _fill_done(result: dict[str, np.ndarray], done: Mapping[str, np.ndarray]) -> np.ndarray:
    """Copy ``done``'s rows into ``result`` by image index; which images it covered."""
    done_idx = np.asarray(done["idx"], dtype=np.int64).reshape(-1)
    row_of = {int(i): row for row, i in enumerate(done_idx)}  # a repeated index: last row
    rows = np.array([row_of.get(int(i), -1) for i in result["idx"]], dtype=np.int64)
    known = rows >= 0
    if not known.any():
        return known
    take = rows[known]
    for key in ("label", "counts0", "counts", "seconds"):
        values = np.asarray(done[key])[take]
        if values.shape != result[key][known].shape:
            raise ValueError(f"earlier results: {key} has shape {values.shape[1:]} per image")
        if key == "label" and not np.array_equal(values, result["label"][known]):
            raise ValueError("earlier results give other labels for the same image indices")
        result[key][known] = values
    return known


class ProgressLog(ResumableLog):
    """Per-image counts appended as they are sampled, so that a killed run resumes.

    Cohen et al.'s code/certify.py (github.com/locuslab/smoothing) prints its log one line per
    image, flushed, as it goes; we follow that, which is what makes a preempted run resumable.
    A ``robustreg.io.ResumableLog``: after ``{"identity": ...}``, which names everything the
    counts depend on, one ``{"idx", "label", "counts0", "counts", "seconds"}`` per image.
    ``resume`` returns the earlier run's complete images for ``certify_counts(done=...)``;
    given an ``Expected`` with ``samples={"counts0": n0, "counts": n}``, only those of selected
    images with their labels, ``num_classes`` counts and n0 and n samples (a record that
    claims more samples than were drawn would certify a radius the draws cannot give).
    ``append`` is its ``on_group``; ``remove`` the file once the results are written.
    """

    FORMAT = "robustreg-certify-progress/1"
    KEYS = ("idx", "label", "counts0", "counts", "seconds")
    DONE, DOING = "sampled", "sampling"

    def _encode(self, row: Sequence) -> dict:
        return _record(*row)

    def _check(self, record: object, previous: dict | None) -> None:
        # every image of a run has as many counts as the first
        _check_record(record, None if previous is None else len(previous["counts"]))

    def _misfit(self, record: dict, expected: Expected) -> str | None:
        why = super()._misfit(record, expected)
        if why is None and len(record["counts"]) != expected.num_classes:
            why = f"not the model's {expected.num_classes} classes"
        for key, total in expected.samples.items():
            if why is None and sum(record[key]) != total:
                why = f"{key} not summing to the {total} samples drawn"
        return why


def _record(idx, label, counts0, counts, seconds) -> dict:
    return {
        "idx": int(idx),
        "label": int(label),
        "counts0": np.asarray(counts0).tolist(),
        "counts": np.asarray(counts).tolist(),
        "seconds": float(seconds),
    }


def _check_record(record: dict, classes: int | None) -> None:
    """Raise ValueError unless ``record`` is an image line (with ``classes`` counts if given)."""
    if not isinstance(record, dict) or sorted(record) != sorted(ProgressLog.KEYS):
        raise ValueError("not an image record")
    # JSON gives exactly int and float; bool, a subclass of int, is not a count
    if not all(type(record[k]) is int for k in ("idx", "label")):
        raise ValueError("idx and label must be integers")
    c0, c = record["counts0"], record["counts"]
    if not (isinstance(c0, list) and isinstance(c, list) and len(c0) == len(c) > 0):
        raise ValueError("counts0 and counts must be lists of equal length")
    if classes is not None and len(c) != classes:
        raise ValueError("every image must have the same number of classes")
    if not all(type(v) is int and v >= 0 for v in c0 + c):
        raise ValueError("counts must be non-negative integers")
    seconds = record["seconds"]
    if not (type(seconds) in (int, float) and math.isfinite(seconds) and seconds >= 0):
        raise ValueError("seconds must be a number >= 0")
