"""CIFAR-10 preparation (synthetic, pre-staged, downloaded), MNIST's pre-staged raw files and
training-time augmentation."""

from __future__ import annotations

import gzip
import os
import pickle
import urllib.error

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from robustreg.cli import main
from robustreg.data import (
    DataUnavailable,
    augment_batch,
    load_split,
    prepare_cifar10,
    prepare_mnist,
    synthetic_cifar10,
)


def test_synthetic_cifar_is_cifar_shaped_and_balanced():
    splits = synthetic_cifar10(200, 50, seed=0)
    for (x, y), n in zip(splits.values(), (200, 50), strict=True):
        assert x.shape == (n, 3, 32, 32) and x.dtype == np.uint8
        assert y.dtype == np.int64
        assert np.bincount(y).tolist() == [n // 10] * 10
        assert 0 < x.mean() < 255 and x.std() > 10  # neither blank nor saturated


def test_synthetic_cifar_is_deterministic_per_seed_and_differs_across_seeds():
    a, b, c = (synthetic_cifar10(100, 20, seed=s) for s in (0, 0, 1))
    for name in ("train", "test"):
        assert np.array_equal(a[name][0], b[name][0]) and np.array_equal(a[name][1], b[name][1])
        assert not np.array_equal(a[name][0], c[name][0])
    # Train and test are separate streams: a bigger training split leaves the test split as is.
    assert np.array_equal(synthetic_cifar10(200, 20, seed=0)["test"][0], a["test"][0])


def test_synthetic_cifar_classes_differ_by_structure_not_mean_colour():
    x, y = synthetic_cifar10(1000, 10, seed=0)["train"]
    class_colour = np.stack([x[y == c].mean(axis=(0, 2, 3)) for c in range(10)]) / 255
    assert np.ptp(class_colour, axis=0).max() < 0.05
    texture = np.stack([x[y == c][0].astype(float) / 255 for c in range(10)])
    rms = np.sqrt(((texture[:, None] - texture[None]) ** 2).mean(axis=(2, 3, 4)))
    assert rms[np.triu_indices(10, 1)].min() > 0.15  # far apart, even for a single image


def test_synthetic_sizes_must_balance_the_classes():
    with pytest.raises(ValueError, match="multiples of 10"):
        synthetic_cifar10(105, 50)


def test_prepare_cifar10_synthetic_writes_loadable_splits(tmp_path):
    prepare_cifar10("synthetic", tmp_path, synthetic_train=40, synthetic_test=20, seed=3)
    x, y = load_split(tmp_path / "train.npz")
    assert x.shape == (40, 3, 32, 32) and x.dtype == torch.float32
    assert x.min() >= 0.0 and x.max() <= 1.0
    assert y.bincount().tolist() == [4] * 10
    assert load_split(tmp_path / "test.npz")[0].shape == (20, 3, 32, 32)


def test_unknown_cifar_source_is_refused(tmp_path):
    with pytest.raises(ValueError, match="unknown CIFAR-10 source 'kaggle'"):
        prepare_cifar10("kaggle", tmp_path)


def test_missing_prestaged_cifar_folder_names_it_and_both_remedies(tmp_path):
    nowhere = tmp_path / "nowhere"
    with pytest.raises(DataUnavailable) as err:
        prepare_cifar10("files", tmp_path / "out", files=nowhere)
    message = str(err.value)
    assert str(nowhere) in message
    assert "connect this machine to the network" in message
    assert "data.cifar10.files" in message and "cifar-10-batches-py" in message
    assert "\n" not in message
    with pytest.raises(DataUnavailable, match="pre-staged folder is not set"):
        prepare_cifar10("files", tmp_path / "out", files=None)


def test_cifar_download_failure_becomes_one_line_with_both_remedies(tmp_path, monkeypatch):
    # Stand-in for torchvision's download offline (urllib's URLError), so the test neither
    # waits on DNS nor downloads 170 MB on a connected machine.
    class Offline:
        def __init__(self, root, train, download):
            assert download
            raise urllib.error.URLError("[Errno -2] Name or service not known")

    monkeypatch.setattr("torchvision.datasets.CIFAR10", Offline)
    with pytest.raises(DataUnavailable) as err:
        prepare_cifar10("torchvision", tmp_path / "out", download_root=tmp_path / "dl")
    message = str(err.value)
    assert "Name or service not known" in message
    assert "connect this machine to the network" in message and "data.cifar10.files" in message
    assert not (tmp_path / "out" / "train.npz").exists()


def test_prestaged_cifar_batches_become_nchw_splits(tmp_path, monkeypatch):
    """A folder in torchvision's layout; its checksums are patched, the reading is not."""
    rng = np.random.default_rng(0)
    folder = tmp_path / "staged" / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    written = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        # CIFAR-10's python batches: rows of 3072 bytes, channel-major (R, G, B planes).
        data = rng.integers(0, 256, size=(3, 3072), dtype=np.uint8)
        labels = rng.integers(0, 10, size=3).tolist()
        written[name] = (data.reshape(3, 3, 32, 32), labels)
        with open(folder / name, "wb") as fh:
            pickle.dump({"data": data, "labels": labels}, fh)
    with open(folder / "batches.meta", "wb") as fh:
        pickle.dump({"label_names": [f"class{i}" for i in range(10)]}, fh)
    monkeypatch.setattr("torchvision.datasets.cifar.check_integrity", lambda *args: True)

    prepare_cifar10("files", tmp_path / "out", files=tmp_path / "staged")
    with np.load(tmp_path / "out" / "train.npz") as f:
        x, y = f["x"], f["y"]
    assert x.dtype == np.uint8 and x.shape == (15, 3, 32, 32) and y.dtype == np.int64
    train = [written[f"data_batch_{i}"] for i in range(1, 6)]
    assert np.array_equal(x, np.concatenate([images for images, _ in train]))
    assert y.tolist() == [label for _, labels in train for label in labels]
    with np.load(tmp_path / "out" / "test.npz") as f:
        assert np.array_equal(f["x"], written["test_batch"][0])


def _crop_flip_candidates(image: torch.Tensor) -> torch.Tensor:
    """All 9 x 9 offsets x 2 flips of a 4-pixel zero-padded crop: [162, C, H, W]."""
    _, height, width = image.shape
    padded = F.pad(image, (4, 4, 4, 4))
    crops = [padded[:, t : t + height, s : s + width] for t in range(9) for s in range(9)]
    return torch.stack(crops + [crop.flip(-1) for crop in crops])


def test_no_augmentation_is_the_identity():
    x = torch.rand(4, 3, 32, 32)
    assert augment_batch(x, "none") is x


def test_crop_flip_outputs_are_shifted_and_maybe_flipped_copies_with_zero_fill():
    x = torch.rand(64, 3, 32, 32) + 0.1  # no zeros inside, so zero fill is unambiguous
    before = x.clone()
    out = augment_batch(x, "crop_flip", generator=torch.Generator().manual_seed(0))
    assert out.shape == x.shape and out.dtype == x.dtype
    assert torch.equal(x, before)  # the input batch is not modified
    chosen = []
    for image, augmented in zip(x, out, strict=True):
        matches = (_crop_flip_candidates(image) == augmented).flatten(1).all(1).nonzero()
        assert len(matches) == 1
        chosen.append(matches.item())
    flipped = [c >= 81 for c in chosen]
    assert any(flipped) and not all(flipped)
    assert len({c % 81 for c in chosen}) > 20  # offsets vary from image to image


def test_crop_flip_is_reproducible_from_a_generator_or_the_global_seed():
    x = torch.rand(16, 3, 32, 32)
    a = augment_batch(x, "crop_flip", generator=torch.Generator().manual_seed(5))
    b = augment_batch(x, "crop_flip", generator=torch.Generator().manual_seed(5))
    c = augment_batch(x, "crop_flip", generator=torch.Generator().manual_seed(6))
    assert torch.equal(a, b) and not torch.equal(a, c)
    torch.manual_seed(7)
    d = augment_batch(x, "crop_flip")
    torch.manual_seed(7)
    assert torch.equal(d, augment_batch(x, "crop_flip"))


def _torchvision_crop_flip(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """The per-image torchvision path ``augment_batch`` replaced, drawing the same offsets and
    flips in the same order: pad, one ``crop`` per image, ``horizontal_flip``."""
    from torchvision.transforms.v2 import functional as TF

    n, _, height, width = x.shape
    tops, lefts = torch.randint(0, 9, (2, n), generator=generator).tolist()
    flips = torch.rand(n, generator=generator) < 0.5
    padded = TF.pad(x, [4])
    crops = torch.stack(
        [TF.crop(img, t, s, height, width) for img, t, s in zip(padded, tops, lefts, strict=True)]
    )
    return torch.where(flips.view(n, 1, 1, 1), TF.horizontal_flip(crops), crops)


@pytest.mark.parametrize(
    "shape, dtype",
    [
        ((256, 3, 32, 32), torch.float32),
        ((33, 1, 28, 28), torch.float32),
        ((9, 2, 5, 7), torch.uint8),
    ],
)
def test_batched_crop_flip_equals_torchvision_per_image_crops(shape, dtype):
    """Same generator state, same pixels, and the generator left in the same state."""
    for seed in range(3):
        x = (torch.rand(shape, generator=torch.Generator().manual_seed(seed)) * 255).to(dtype)
        ours, theirs = torch.Generator().manual_seed(seed), torch.Generator().manual_seed(seed)
        out = augment_batch(x, "crop_flip", generator=ours)
        assert out.dtype == dtype and out.is_contiguous()
        assert torch.equal(out, _torchvision_crop_flip(x, theirs))
        assert torch.equal(ours.get_state(), theirs.get_state())


def test_batched_crop_flip_reads_a_channels_last_batch_alike():
    x = torch.rand(16, 3, 32, 32)
    out = augment_batch(
        x.contiguous(memory_format=torch.channels_last),
        "crop_flip",
        generator=torch.Generator().manual_seed(1),
    )
    assert torch.equal(
        out, augment_batch(x, "crop_flip", generator=torch.Generator().manual_seed(1))
    )


def test_unknown_augmentation_is_named():
    with pytest.raises(ValueError, match="unknown augmentation 'mixup'"):
        augment_batch(torch.rand(2, 3, 32, 32), "mixup")


def test_synthetic_cifar_every_kth_image_mixes_the_classes():
    """The protocols certify or attack every skip-th test image: a skip of 10 must not pick
    one class (it did while the labels cycled 0..9)."""
    _, y = synthetic_cifar10(100, 500, seed=0)["test"]
    assert len(np.unique(y[::10])) == 10


# ------------------------------------------------------------------ pre-staged raw files


def _idx(path, dims, payload=None, magic=None):
    """An idx file of unsigned bytes (MNIST's raw format); ``payload`` replaces its bytes."""
    header = (magic or bytes([0, 0, 8, len(dims)])) + b"".join(d.to_bytes(4, "big") for d in dims)
    if payload is None:
        payload = (np.arange(int(np.prod(dims))) % 10).astype(np.uint8).tobytes()
    data = header + payload
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".gz":
        data = gzip.compress(data)
    path.write_bytes(data)


def _stage_mnist(root, gz=""):
    """torchvision's raw layout: 3 training and 2 test images, of 28 x 28."""
    raw = root / "MNIST" / "raw"
    for prefix, n in (("train", 3), ("t10k", 2)):
        _idx(raw / f"{prefix}-images-idx3-ubyte{gz}", (n, 28, 28))
        _idx(raw / f"{prefix}-labels-idx1-ubyte{gz}", (n,))
    return raw


@pytest.mark.parametrize("gz", ["", ".gz"])
def test_prestaged_mnist_raw_files_become_splits(tmp_path, gz):
    _stage_mnist(tmp_path / "staged", gz)
    prepare_mnist("files", tmp_path / "out", files=tmp_path / "staged")
    with np.load(tmp_path / "out" / "train.npz") as f:
        assert f["x"].shape == (3, 1, 28, 28) and f["x"].dtype == np.uint8
        assert f["y"].tolist() == [0, 1, 2] and f["y"].dtype == np.int64
        assert f["x"][1, 0, 0, :3].tolist() == [4, 5, 6]  # 784 % 10 = 4: the second image
    with np.load(tmp_path / "out" / "test.npz") as f:
        assert f["x"].shape == (2, 1, 28, 28)


@pytest.mark.parametrize(
    ("name", "write", "says"),
    [
        ("train-images-idx3-ubyte", lambda p: p.write_bytes(b"garbage" * 10), "not an MNIST idx"),
        ("train-images-idx3-ubyte", lambda p: p.write_bytes(b""), "magic missing"),
        ("train-labels-idx1-ubyte", lambda p: _idx(p, (3, 28, 28)), "magic 00000803, expected"),
        ("t10k-images-idx3-ubyte", lambda p: _idx(p, (2, 32, 32)), "items of shape (32, 32)"),
        ("t10k-images-idx3-ubyte", lambda p: _idx(p, (2, 28, 28), b"\0" * 1000), "truncated"),
        ("t10k-labels-idx1-ubyte", lambda p: _idx(p, (2,), b"\0" * 3), "bytes after the last"),
        ("train-images-idx3-ubyte", lambda p: _idx(p, (4, 28, 28)), "4 images, but"),
        ("t10k-labels-idx1-ubyte", lambda p: _idx(p, (2,), b"\x01\x0a"), "label 10 is not"),
        ("train-images-idx3-ubyte", lambda p: _idx(p, (9**6, 28, 28), b""), "truncated"),
    ],
)
def test_garbled_mnist_raw_file_is_one_error_naming_it(tmp_path, capsys, name, write, says):
    raw = _stage_mnist(tmp_path / "staged")
    write(raw / name)
    args = ["data", "--dataset", "mnist", "--source", "files", "--out-dir", str(tmp_path / "out")]
    assert main([*args, "--files", str(tmp_path / "staged")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"robustreg data: error: {raw / name}: ") and err.count("\n") == 1
    assert says in err
    assert not (tmp_path / "out" / "train.npz").exists()


def test_corrupt_gz_and_missing_mnist_files_are_named(tmp_path):
    raw = _stage_mnist(tmp_path / "staged", ".gz")
    packed = raw / "t10k-labels-idx1-ubyte.gz"
    packed.write_bytes(packed.read_bytes()[:20])
    with pytest.raises(ValueError, match=f"^{packed}: not readable"):
        prepare_mnist("files", tmp_path / "out", files=tmp_path / "staged")
    packed.unlink()
    with pytest.raises(DataUnavailable) as err:
        prepare_mnist("files", tmp_path / "out", files=tmp_path / "staged")
    message = str(err.value)
    assert str(raw / "t10k-labels-idx1-ubyte") in message and "data.mnist.files" in message


class _Planted:
    """A pickle that makes a folder when it is loaded."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.mkdir, (str(self.marker),)


def test_cifar_batch_that_is_not_the_published_file_is_named_and_never_unpickled(tmp_path):
    folder = tmp_path / "staged" / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    marker = tmp_path / "unpickled"
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch", "batches.meta"]:
        (folder / name).write_bytes(pickle.dumps(_Planted(marker)))
    with pytest.raises(ValueError) as err:
        prepare_cifar10("files", tmp_path / "out", files=tmp_path / "staged")
    assert str(err.value).startswith(f"{folder / 'data_batch_1'}: not the CIFAR-10 file")
    assert not marker.exists()
    (folder / "test_batch").unlink()
    for name in [f"data_batch_{i}" for i in range(1, 6)]:
        (folder / name).unlink()
    with pytest.raises(DataUnavailable, match="data_batch_1"):
        prepare_cifar10("files", tmp_path / "out", files=tmp_path / "staged")
