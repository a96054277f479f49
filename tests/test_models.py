"""Paper architectures from the registry, and CIFAR-10 training through the one loop."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import same_weights, train_killed_then_resumed
from torch import nn

from robustreg.data import prepare_cifar10
from robustreg.models import Normalize, create_model
from robustreg.models.cifar_resnet import CifarResNet, cifar_resnet20
from robustreg.train import load_model, train


def weighted_layers(model: nn.Module) -> int:
    """He et al.'s depth: 3x3 convolutions plus the classifier; 1x1 shortcuts do not count."""
    return sum(
        isinstance(m, nn.Linear) or (isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3))
        for m in model.modules()
    )


def parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_cifar_resnet110_has_110_layers_and_the_published_size():
    model = create_model("cifar_resnet110", 10)
    assert weighted_layers(model) == 1 + 3 * 18 * 2 + 1 == 110
    # plus one 1x1 shortcut convolution where stages 2 and 3 change shape
    assert sum(isinstance(m, nn.Conv2d) for m in model.modules()) == 111
    # 1.7M in He et al., Table 6. Exactly (weights + batch-norm scale and shift):
    stem = 3 * 16 * 9 + 2 * 16
    stage1 = 18 * 2 * (16 * 16 * 9 + 2 * 16)
    stage2 = (16 * 32 * 9 + 2 * 32) + (16 * 32 + 2 * 32) + 35 * (32 * 32 * 9 + 2 * 32)
    stage3 = (32 * 64 * 9 + 2 * 64) + (32 * 64 + 2 * 64) + 35 * (64 * 64 * 9 + 2 * 64)
    classifier = 64 * 10 + 10
    assert (stem, stage1, stage2, stage3, classifier) == (464, 84096, 330048, 1315456, 650)
    assert parameters(model) == stem + stage1 + stage2 + stage3 + classifier == 1_730_714


def test_cifar_resnet20_is_the_small_variant():
    model = create_model("cifar_resnet20", 10)
    assert weighted_layers(model) == 20
    assert parameters(model) == 272_474  # 0.27M in He et al., Table 6


def test_cifar_resnet_forward_and_class_count():
    model = create_model("cifar_resnet110", 10).eval()
    assert model(torch.rand(2, 3, 32, 32)).shape == (2, 10)
    assert create_model("cifar_resnet20", 7).eval()(torch.rand(1, 3, 32, 32)).shape == (1, 7)


def test_cifar_resnet_normalizes_first_with_cohen_constants():
    first = create_model("cifar_resnet20", 10)[0]
    assert isinstance(first, Normalize)
    # Cohen et al.'s code/datasets.py: _CIFAR10_MEAN, _CIFAR10_STDDEV
    assert torch.allclose(first.mean.flatten(), torch.tensor([0.4914, 0.4822, 0.4465]))
    assert torch.allclose(first.std.flatten(), torch.tensor([0.2023, 0.1994, 0.2010]))


def test_cifar_resnet_convolutions_start_from_fan_out_he_init():
    torch.manual_seed(0)
    conv = CifarResNet(20).layer3[1].conv2  # 64 -> 64 channels, 36,864 weights
    assert conv.bias is None
    assert conv.weight.std().item() == pytest.approx(math.sqrt(2 / (3 * 3 * 64)), rel=0.02)


def test_cifar_resnet_rejects_bad_depths_and_pretrained_weights():
    with pytest.raises(ValueError, match=r"6n \+ 2"):
        CifarResNet(21)
    with pytest.raises(ValueError, match="no pretrained weights"):
        cifar_resnet20(pretrained=True)


def test_lenet_still_builds():
    model = create_model("lenet_mnist", 10).eval()
    assert model(torch.rand(2, 1, 28, 28)).shape == (2, 10)


@pytest.fixture
def cifar_split(tmp_path):
    """40 synthetic CIFAR-shaped training images, 4 per class."""
    prepare_cifar10("synthetic", tmp_path / "data", synthetic_train=40, synthetic_test=10)
    return tmp_path / "data" / "train.npz"


def cifar_experiment(augment: str = "crop_flip", epochs: int = 1) -> dict:
    return {
        "data": {"dataset": "cifar10", "train_limit": None, "augment": augment},
        "arch": "cifar_resnet20",
        "num_classes": 10,
        "method": "gaussian",
        "params": {},
        "sigma": 0.25,
        "schedule": {
            "epochs": epochs,
            "batch_size": 16,
            "lr": 0.1,
            "momentum": 0.9,
            "nesterov": True,
            "weight_decay": 1e-4,
            "lr_milestones": [1],
            "lr_gamma": 0.1,
        },
        "seed": 0,
    }


def test_cifar_training_writes_a_loadable_model(tmp_path, cifar_split):
    path = train(cifar_experiment(), cifar_split, tmp_path / "run", progress=False)
    model, config = load_model(path, torch.device("cpu"))
    assert config == cifar_experiment()
    assert model(torch.rand(2, 3, 32, 32)).shape == (2, 10)


def test_training_reads_the_augmentation_key(tmp_path, cifar_split):
    def weights(augment):
        path = train(cifar_experiment(augment), cifar_split, tmp_path / augment, progress=False)
        return torch.load(path, weights_only=True)["state_dict"]

    flipped, plain = weights("crop_flip"), weights("none")
    assert not all(torch.equal(flipped[k], plain[k]) for k in flipped)
    with pytest.raises(ValueError, match="unknown augmentation 'mixup'"):
        weights("mixup")


def test_augmented_training_resumes_exactly(tmp_path, cifar_split, monkeypatch):
    full = train(cifar_experiment(epochs=2), cifar_split, tmp_path / "full", progress=False)
    resumed = train_killed_then_resumed(
        cifar_experiment(epochs=2), cifar_split, tmp_path / "resumed", monkeypatch
    )
    assert same_weights(full, resumed)
