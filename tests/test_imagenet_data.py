"""ImageNet from a folder: index splits, their validation, the synthetic folder, the one
training-data interface for both kinds of split, test images for certification, ResNet-50."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image
from torchvision import transforms

from robustreg.cli import main
from robustreg.data import (
    DataUnavailable,
    augment_batch,
    load_split,
    load_test_images,
    open_training_images,
    prepare_cifar10,
    prepare_imagenet,
    split_size,
)
from robustreg.model_files import MODEL_FORMAT
from robustreg.models import Normalize, create_model

# Created out of order, so that the index must sort them; label = position in sorted order.
CLASSES = ("n03", "n01", "n02")
CROP, RESIZE = 32, 36


def write_image(path, label: int, rng: np.random.Generator) -> None:
    """A 40x48 RGB image whose channel ``label`` is the brightest, with noise for structure."""
    pixels = rng.integers(0, 60, size=(40, 48, 3))
    pixels[..., label] += 180
    Image.fromarray(pixels.astype(np.uint8)).save(path)


@pytest.fixture
def folder(tmp_path):
    """3 classes x 4 training images (PNG and JPEG) and x 2 validation images (JPEG)."""
    rng = np.random.default_rng(0)
    root = tmp_path / "imagenet"
    for name in CLASSES:
        label = sorted(CLASSES).index(name)
        for split, count in (("train", 4), ("val", 2)):
            (root / split / name).mkdir(parents=True)
            for i in range(count):
                suffix = ".png" if split == "train" and i % 2 else ".JPEG"
                write_image(root / split / name / f"{name}_{i}{suffix}", label, rng)
    (root / "train" / "n01" / "README.txt").write_text("not an image")
    return root


@pytest.fixture
def index(tmp_path, folder):
    prepare_imagenet("folder", tmp_path / "data", root=folder, crop=CROP, resize=RESIZE)
    return tmp_path / "data"


def test_folder_becomes_an_index_of_absolute_paths_with_sorted_classes(index, folder):
    for name, per_class in (("train", 4), ("test", 2)):
        with np.load(index / f"{name}.npz") as f:
            assert str(f["kind"]) == "files"
            assert (int(f["crop"]), int(f["resize"])) == (CROP, RESIZE)
            assert f["classes"].tolist() == ["n01", "n02", "n03"]
            files, y = f["files"].tolist(), f["y"]
        assert y.dtype == np.int64 and np.bincount(y).tolist() == [per_class] * 3
        split = "train" if name == "train" else "val"
        for path, label in zip(files, y, strict=True):
            assert path.startswith(str(folder / split / ["n01", "n02", "n03"][label]))
        assert not any(path.endswith(".txt") for path in files)
    assert split_size(index / "train.npz") == 12 and split_size(index / "test.npz") == 6


def _drop(path):
    shutil.rmtree(path)


def _flat_val(root):
    """ILSVRC's validation images as distributed: all in val/, not sorted into classes."""
    for image in list((root / "val").glob("*/*")):
        image.rename(root / "val" / image.name)
    for name in CLASSES:
        (root / "val" / name).rmdir()


def _rename_class(root):
    (root / "val" / "n03").rename(root / "val" / "n04")


def _empty_class(root):
    for image in (root / "train" / "n01").glob("*.*[gG]"):
        image.unlink()


def _file_for_root(root):
    _drop(root)
    root.write_bytes(b"not a folder")


@pytest.mark.parametrize(
    ("breakage", "error", "where", "says"),
    [
        (_drop, DataUnavailable, "", "does not exist"),
        (_file_for_root, DataUnavailable, "", "is not a folder"),
        (lambda root: _drop(root / "train"), DataUnavailable, "train", "no such folder"),
        (lambda root: _drop(root / "val"), DataUnavailable, "val", "no such folder"),
        (_flat_val, ValueError, "val", "sorted into class folders"),
        (_rename_class, ValueError, "", "only in train/: n03; only in val/: n04"),
        (_empty_class, ValueError, "train/n01", "no image file"),
    ],
    ids=["no-root", "root-file", "no-train", "no-val", "flat-val", "class-sets", "empty-class"],
)
def test_bad_folders_are_refused_in_one_line_naming_the_path(
    tmp_path, folder, breakage, error, where, says
):
    breakage(folder)
    with pytest.raises(error) as err:
        prepare_imagenet("folder", tmp_path / "data", root=folder)
    message = str(err.value)
    assert "\n" not in message and says in message
    assert str(folder / where).rstrip("/") in message
    assert not (tmp_path / "data").exists()


def test_unset_root_unknown_source_and_bad_sizes_are_refused(tmp_path):
    with pytest.raises(DataUnavailable, match="not set: set data.imagenet.root"):
        prepare_imagenet("folder", tmp_path)
    with pytest.raises(ValueError, match="unknown ImageNet source 'torchvision'"):
        prepare_imagenet("torchvision", tmp_path)
    with pytest.raises(ValueError, match="crop <= resize"):
        prepare_imagenet("folder", tmp_path, root=tmp_path, crop=256, resize=224)
    with pytest.raises(ValueError, match="unknown synthetic ImageNet key 'colours'"):
        prepare_imagenet("synthetic", tmp_path, synthetic={"colours": 3})
    with pytest.raises(ValueError, match="multiples of classes=4"):
        prepare_imagenet("synthetic", tmp_path, synthetic={"train": 10, "classes": 4})


SYNTHETIC = {"train": 20, "test": 10, "seed": 0, "classes": 5, "size": 16}


def test_synthetic_source_writes_an_imagenet_shaped_folder_and_indexes_it(tmp_path):
    out = tmp_path / "data"
    prepare_imagenet("synthetic", out, synthetic=SYNTHETIC, crop=16, resize=16)
    classes = [f"class_{c:03d}" for c in range(5)]
    for split, per_class in (("train", 4), ("val", 2)):
        assert sorted(p.name for p in (out / "folder" / split).iterdir()) == classes
        for name in classes:
            images = sorted((out / "folder" / split / name).glob("*.png"))
            assert len(images) == per_class
            with Image.open(images[0]) as image:
                assert (image.mode, image.size) == ("RGB", (16, 16))
    with np.load(out / "train.npz") as f:
        assert f["classes"].tolist() == classes
        assert all(path.startswith(str(out / "folder" / "train")) for path in f["files"])
    # Classes tell apart by their textures: images of one class are closer than of two.
    x, y = load_test_images(out / "train.npz", range(20))
    distance = torch.cdist(x.flatten(1), x.flatten(1))
    same = y[:, None] == y[None]
    assert distance[same & ~torch.eye(20, dtype=torch.bool)].mean() < distance[~same].mean()

    # Same seed, same pixels; a smaller rerun leaves no stale files behind to be indexed.
    again = tmp_path / "again"
    prepare_imagenet("synthetic", again, synthetic=SYNTHETIC, crop=16, resize=16)
    assert torch.equal(
        load_test_images(again / "test.npz", range(10))[0],
        load_test_images(out / "test.npz", range(10))[0],
    )
    prepare_imagenet("synthetic", out, synthetic=SYNTHETIC | {"train": 10}, crop=16, resize=16)
    assert len(list((out / "folder" / "train").glob("*/*"))) == 10 == split_size(out / "train.npz")


def test_index_split_batches_are_cropped_flipped_floats_with_their_labels(index):
    images = open_training_images(
        index / "train.npz", augment="resized_crop_flip", device=torch.device("cpu")
    )
    assert len(images) == 12 and images.labels.tolist() == [0] * 4 + [1] * 4 + [2] * 4
    chunks = [torch.tensor([0, 5, 9]), torch.tensor([11, 1])]
    batches = list(images.batches(chunks))
    assert len(batches) == 2
    for (x, y), chunk in zip(batches, chunks, strict=True):
        assert x.shape == (len(chunk), 3, CROP, CROP) and x.dtype == torch.float32
        assert x.min() >= 0.0 and x.max() <= 1.0
        assert torch.equal(y, images.labels[chunk])
        assert torch.equal(x.mean(dim=(2, 3)).argmax(dim=1), y)  # the class's own colour


@pytest.mark.parametrize("workers", [0, 2])
def test_index_split_batches_follow_the_torch_seed(index, workers):
    images = open_training_images(
        index / "train.npz", augment="resized_crop_flip", device="cpu", workers=workers
    )
    chunks = list(torch.randperm(12, generator=torch.Generator().manual_seed(0)).split(4))

    def epoch(seed):
        torch.manual_seed(seed)
        return torch.cat([x for x, _ in images.batches(chunks)])

    first = epoch(0)
    assert torch.equal(first, epoch(0)) and not torch.equal(first, epoch(1))


def test_index_split_crops_do_not_depend_on_the_number_of_workers(index):
    chunks = list(torch.randperm(12, generator=torch.Generator().manual_seed(0)).split(4))
    epochs = {}
    for workers in (0, 1, 2):
        images = open_training_images(
            index / "train.npz", augment="resized_crop_flip", device="cpu", workers=workers
        )
        torch.manual_seed(5)
        epochs[workers] = torch.cat([x for x, _ in images.batches(chunks)])
        # the transforms draw from their own generators: the caller's stream moved by the
        # pass's seed and the DataLoader's, whatever the workers
        epochs[workers, "after"] = torch.rand(3)
    assert torch.equal(epochs[0], epochs[1]) and torch.equal(epochs[0], epochs[2])
    assert torch.equal(epochs[0, "after"], epochs[2, "after"])


def test_limit_keeps_a_class_balanced_prefix_of_an_index_split(index):
    images = open_training_images(index / "train.npz", limit=6, device="cpu")
    assert images.labels.tolist() == [0, 0, 1, 1, 2, 2]
    x, y = next(images.batches([torch.arange(6)]))
    # The first two files of each class; "none" on an index split is the test transform.
    expected, labels = load_test_images(index / "train.npz", [0, 1, 4, 5, 8, 9])
    assert torch.equal(x, expected) and torch.equal(y, labels)


def test_test_images_are_resized_and_centre_cropped_like_cohen_et_al(index):
    x, y = load_test_images(index / "test.npz", [0, 3, 5])
    assert x.shape == (3, 3, CROP, CROP) and y.tolist() == [0, 1, 2]
    torch.manual_seed(1)  # the test transform draws nothing
    assert torch.equal(x, load_test_images(index / "test.npz", [0, 3, 5])[0])
    # Cohen et al.'s code/datasets.py test transform, torchvision's v1 API on the PIL image.
    reference = transforms.Compose(
        [transforms.Resize(RESIZE), transforms.CenterCrop(CROP), transforms.ToTensor()]
    )
    with np.load(index / "test.npz") as f:
        path = f["files"][3]
    with Image.open(path) as image:
        assert torch.equal(x[1], reference(image.convert("RGB")))
    with pytest.raises(ValueError, match=r"indices must lie in 0\.\.5"):
        load_test_images(index / "test.npz", [6])


def test_tensor_split_batches_are_the_direct_augment_batch_calls(tmp_path):
    """The training loop's batches before open_training_images, bit for bit, RNG included."""
    prepare_cifar10("synthetic", tmp_path, synthetic_train=40, synthetic_test=10)
    split = tmp_path / "train.npz"
    images = open_training_images(split, limit=20, augment="crop_flip", device="cpu")
    order = torch.randperm(len(images), generator=torch.Generator().manual_seed(0))
    chunks = [chunk for batch in order.split(8) for chunk in batch.tensor_split(2)]
    torch.manual_seed(3)
    got = list(images.batches(chunks))
    state = torch.get_rng_state()

    torch.manual_seed(3)
    x_all, y_all = load_split(split, limit=20)
    assert torch.equal(images.labels, y_all)
    for (x, y), chunk in zip(got, chunks, strict=True):
        assert torch.equal(x, augment_batch(x_all[chunk], "crop_flip"))
        assert torch.equal(y, y_all[chunk])
    assert torch.equal(state, torch.get_rng_state())

    x, y = load_split(tmp_path / "test.npz")
    keep = np.arange(0, 10, 3)
    assert split_size(tmp_path / "test.npz") == 10
    x_keep, y_keep = load_test_images(tmp_path / "test.npz", keep)
    assert torch.equal(x_keep, x[keep]) and torch.equal(y_keep, y[keep])


def test_augmentations_must_fit_the_kind_of_split(tmp_path, index):
    prepare_cifar10("synthetic", tmp_path / "cifar", synthetic_train=10, synthetic_test=10)
    tensors = tmp_path / "cifar" / "train.npz"
    with pytest.raises(ValueError, match="applies to image-file splits"):
        augment_batch(torch.rand(2, 3, 32, 32), "resized_crop_flip")
    with pytest.raises(ValueError, match="applies to image-file splits"):
        open_training_images(tensors, augment="resized_crop_flip", device="cpu")
    with pytest.raises(ValueError, match=f"{index / 'train.npz'}: augmentation 'crop_flip'"):
        open_training_images(index / "train.npz", augment="crop_flip", device="cpu")
    with pytest.raises(ValueError, match="unknown augmentation 'mixup'"):
        open_training_images(index / "train.npz", augment="mixup", device="cpu")
    with pytest.raises(ValueError, match="index split"):
        load_split(index / "train.npz")


def test_imagenet_resnet50_standardizes_first_and_is_torchvisions_resnet50():
    model = create_model("imagenet_resnet50", 5).eval()
    assert isinstance(model[0], Normalize)
    assert torch.allclose(model[0].mean.flatten(), torch.tensor([0.485, 0.456, 0.406]))
    assert torch.allclose(model[0].std.flatten(), torch.tensor([0.229, 0.224, 0.225]))
    # torchvision's ResNet-50 (v1.5: stride in the 3x3 convolution) under the same names;
    # its weights load unchanged and give the same outputs.
    reference = torchvision.models.resnet50(num_classes=5).eval()
    model[1].load_state_dict(reference.state_dict())
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(model(x), reference(model[0](x)))
    assert model(x).shape == (2, 5)
    # torchvision does not zero-initialize the blocks' last batch norm; neither does this.
    assert torch.equal(
        create_model("imagenet_resnet50", 5)[1].layer1[0].bn3.weight.data, torch.ones(256)
    )


def test_imagenet_resnet50_bn0_starts_every_block_as_the_identity_with_a_small_classifier():
    torch.manual_seed(0)
    model = create_model("imagenet_resnet50_bn0", 1000)
    assert isinstance(model[0], Normalize)
    blocks = [block for stage in (1, 2, 3, 4) for block in getattr(model[1], f"layer{stage}")]
    assert len(blocks) == 16
    assert all(torch.equal(b.bn3.weight.data, torch.zeros_like(b.bn3.weight)) for b in blocks)
    fc = model[1].get_classifier().weight.data
    assert abs(fc.std().item() - 0.01) < 5e-4 and abs(fc.mean().item()) < 5e-4  # 2M draws
    # the same architecture otherwise: torchvision's weights load and give its outputs
    reference = torchvision.models.resnet50(num_classes=1000).eval()
    model[1].load_state_dict(reference.state_dict())
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(model.eval()(x), reference(model[0](x)))


def test_cli_refuses_a_missing_root_in_one_line(tmp_path):
    missing = tmp_path / "missing"
    command = ["data", "--dataset", "imagenet", "--source", "folder"]
    command += ["--root", str(missing), "--out-dir", str(tmp_path / "out")]
    proc = subprocess.run(
        [sys.executable, "-m", "robustreg", *command],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and str(missing) in proc.stderr


def test_cli_prepares_synthetic_imagenet_and_refuses_a_wrong_source(tmp_path, capsys):
    args = ["data", "--dataset", "imagenet", "--out-dir", str(tmp_path)]
    assert main([*args, "--source", "torchvision"]) == 2
    assert "unknown ImageNet source 'torchvision'" in capsys.readouterr().err
    sizes = ["--synthetic-train", "6", "--synthetic-test", "3", "--synthetic-classes", "3"]
    sizes += ["--synthetic-size", "12", "--crop", "8", "--resize", "10"]
    assert main([*args, "--source", "synthetic", *sizes]) == 0
    x, y = load_test_images(tmp_path / "test.npz", [0, 1, 2])
    assert x.shape == (3, 3, 8, 8) and y.tolist() == [0, 1, 2]


def test_cli_certifies_selected_images_of_an_index_split(tmp_path, index):
    """Certification decodes only every skip-th test file, through the test transform."""
    with np.load(index / "test.npz") as f:
        for path in f["files"][1::2]:
            Path(path).unlink()  # not selected, so never read
    model = create_model("cifar_resnet20", 3)  # any 3-class model taking 32x32 images
    torch.save(
        {
            "format": MODEL_FORMAT,
            "arch": "cifar_resnet20",
            "num_classes": 3,
            "config": '{"num_classes": 3}',
            "state_dict": model.state_dict(),
        },
        tmp_path / "model.pt",
    )
    out = tmp_path / "cert"
    code = main(
        ["certify", "--model", str(tmp_path / "model.pt"), "--data", str(index / "test.npz"),
         "--sigma", "0.25", "--n0", "2", "--n", "4", "--batch-size", "4", "--skip", "2",
         "--out-dir", str(out), "--device", "cpu", "--no-progress"]
    )  # fmt: skip
    assert code == 0
    with np.load(out / "counts.npz") as f:
        assert f["idx"].tolist() == [0, 2, 4] and f["label"].tolist() == [0, 1, 2]
