"""Paper architectures from the registry, and CIFAR-10 training through the one loop."""

from __future__ import annotations

import functools
import math

import pytest
import torch
from conftest import same_weights, train_killed_then_resumed
from torch import nn

from robustreg.architectures import BATCH_STATISTICS
from robustreg.data import prepare_cifar10
from robustreg.model_files import load_model
from robustreg.models import Normalize, architectures, create_model
from robustreg.models.cifar_resnet import CifarResNet
from robustreg.models.registry import register_model
from robustreg.train import train


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


def test_cifar_resnet_rejects_bad_depths():
    with pytest.raises(ValueError, match=r"6n \+ 2"):
        CifarResNet(21)


def test_lenet_still_builds():
    model = create_model("lenet_mnist", 10).eval()
    assert model(torch.rand(2, 1, 28, 28)).shape == (2, 10)


def test_the_registry_lists_every_paper_architecture_and_refuses_others():
    assert architectures() == [
        "cifar_resnet110",
        "cifar_resnet20",
        "imagenet_resnet50",
        "imagenet_resnet50_bn0",
        "lenet5_madry_mnist",
        "lenet_mnist",
        "resnext34_2x32_cifar",
        "small_cnn_mnist",
        "wrn28_4",
        "wrn34_10",
    ]
    with pytest.raises(ValueError, match="unknown architecture 'resnet50'"):
        create_model("resnet50", 10)  # timm's, not one of ours


def test_an_architecture_name_is_registered_once():
    def lenet_mnist(num_classes: int) -> nn.Module:
        return nn.Linear(784, num_classes)

    with pytest.raises(ValueError, match="'lenet_mnist' is registered twice"):
        register_model(lenet_mnist)
    assert isinstance(create_model("lenet_mnist", 10), nn.Sequential)


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


# --- ATENT paper networks (appendix A.1) ----------------------------------------------------------


def wrn_parameters(depth: int, widen: int, classes: int = 10) -> int:
    """A WideResNet's parameters by hand: bias-free convolutions, batch norms' scale and shift."""
    n, widths = (depth - 4) // 6, (16 * widen, 32 * widen, 64 * widen)
    total, c_in = 3 * 16 * 9, 16
    for width in widths:
        # first block: bn(c_in), conv c_in -> width, bn(width), conv width -> width, 1x1 shortcut
        total += 2 * c_in + c_in * width * 9 + 2 * width + width * width * 9 + c_in * width
        total += (n - 1) * 2 * (2 * width + width * width * 9)
        c_in = width
    return total + 2 * c_in + c_in * classes + classes


@functools.cache
def atent_network(arch: str) -> nn.Module:
    """One instance per architecture for the tests that only read it (WRN-34-10 is large)."""
    torch.manual_seed(0)
    return create_model(arch, 10)


def test_atent_networks_have_the_published_sizes():
    assert wrn_parameters(34, 10) == 46_160_474  # 46.16M, WRN-34-10 of TRADES and MART
    assert parameters(atent_network("wrn34_10")) == wrn_parameters(34, 10)
    assert parameters(create_model("wrn28_4", 10)) == wrn_parameters(28, 4) == 5_849_050
    # SmallCNN: convolutions 1->32->32->64->64 (3x3, with bias), fc 1024->200->200->10
    small = (9 * 32 + 32) + (9 * 32 * 32 + 32) + (9 * 32 * 64 + 64) + (9 * 64 * 64 + 64)
    small += (1024 * 200 + 200) + (200 * 200 + 200) + (200 * 10 + 10)
    assert parameters(create_model("small_cnn_mnist", 10)) == small == 312_202
    # LeNet5 (Madry): 5x5 convolutions 1->32->64, fc 3136->1024->10
    lenet5 = (25 * 32 + 32) + (25 * 32 * 64 + 64) + (3136 * 1024 + 1024) + (1024 * 10 + 10)
    assert parameters(create_model("lenet5_madry_mnist", 10)) == lenet5 == 3_274_634


@pytest.mark.parametrize(
    ("arch", "shape"),
    [
        ("small_cnn_mnist", (2, 1, 28, 28)),
        ("lenet5_madry_mnist", (2, 1, 28, 28)),
        ("wrn28_4", (2, 3, 32, 32)),
        ("wrn34_10", (2, 3, 32, 32)),
    ],
)
def test_atent_networks_classify_and_pass_gradients_to_the_input(arch, shape):
    model = atent_network(arch)
    x = torch.rand(shape, requires_grad=True)
    logits = model(x)
    assert logits.shape == (2, 10)
    if arch == "small_cnn_mnist":
        # TRADES starts the last layer at zero, which blocks every gradient until a step
        logits = model[1].classifier[:-1](model[1].feature_extractor(x).flatten(1))
    logits[:, 3].sum().backward()
    assert x.grad is not None and bool((x.grad.abs().sum(dim=(1, 2, 3)) > 0).all())
    if arch != "wrn34_10":
        assert create_model(arch, 7).eval()(torch.rand(shape)).shape == (2, 7)


@pytest.mark.parametrize("arch", ["small_cnn_mnist", "lenet5_madry_mnist", "wrn34_10"])
def test_atent_networks_take_unnormalized_pixels(arch):
    # TRADES, MART, MMA's MNIST model and ATENT feed [0, 1] pixels: an identity Normalize
    first = atent_network(arch)[0]
    assert isinstance(first, Normalize)
    assert torch.all(first.mean == 0) and torch.all(first.std == 1)


def test_wrn28_4_standardizes_each_image_as_advertorch():
    # advertorch's batch_per_image_standardization: (x - mean) / max(std, 1 / sqrt(numel)),
    # torch's unbiased std. A constant image has std 0 and is divided by the floor.
    first = create_model("wrn28_4", 10)[0]
    x = torch.zeros(2, 3, 32, 32)
    x[0, :, :, :16] = 1.0  # half ones: mean 1/2, unbiased std sqrt(n / (4 (n - 1)))
    x[1] = 0.25
    out = first(x)
    n = 3 * 32 * 32
    std = math.sqrt(n / (4 * (n - 1)))
    assert torch.allclose(out[0, 0, 0, :2], torch.tensor([0.5 / std, 0.5 / std]))
    assert torch.allclose(out[0, 0, 0, 16:18], torch.tensor([-0.5 / std, -0.5 / std]))
    assert torch.equal(out[1], torch.zeros(3, 32, 32))
    assert not list(first.state_dict())  # nothing to save: the state dict is the network's


def test_atent_networks_start_from_the_authors_initialization():
    torch.manual_seed(0)
    small = create_model("small_cnn_mnist", 10)[1]
    conv = small.feature_extractor.conv4  # 64 * 64 * 9 weights, He normal with fan-in 576
    assert conv.weight.std().item() == pytest.approx(math.sqrt(2 / 576), rel=0.02)
    assert torch.all(conv.bias == 0)
    assert torch.all(small.classifier.fc3.weight == 0) and torch.all(small.classifier.fc3.bias == 0)
    wrn = create_model("wrn28_4", 10)[1]
    conv = wrn.block3[1].conv2  # 256 -> 256 channels, fan-out He normal
    assert conv.weight.std().item() == pytest.approx(math.sqrt(2 / (9 * 256)), rel=0.02)
    assert torch.all(wrn.fc.bias == 0)


def test_atent_networks_reject_bad_depths():
    from robustreg.models.wide_resnet import WideResNet

    with pytest.raises(ValueError, match=r"6n \+ 4"):
        WideResNet(30, 10)


def test_every_architecture_declares_whether_it_trains_with_batch_statistics():
    """Planning reads ``robustreg.architectures`` without building a model (issue 20's
    two-pass Stability training changes only the ids of BatchNorm architectures)."""
    assert sorted(BATCH_STATISTICS) == architectures()
    for arch, declared in BATCH_STATISTICS.items():
        model = create_model(arch, 10)
        found = any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
        assert found == declared, arch
