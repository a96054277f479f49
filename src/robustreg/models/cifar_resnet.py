"""CIFAR ResNets of He et al. (2016, sec. 4.2) as used by Cohen et al. (2019) for CIFAR-10.

Jeong & Shin (2020) train ``cifar_resnet110`` for their CIFAR-10 results (Table 7). The
structure follows ``code/archs/cifar_resnet.py`` and ``code/architectures.py`` of
jh-jeong/smoothing-consistency (Cohen et al.'s code, which takes the network from
bearpaw/pytorch-classification): a 3x3 stem convolution with 16 filters, then three
stages of (depth - 2) / 6 basic blocks with 16, 32 and 64 filters (the first block of the
second and third stages halves the resolution with stride 2), 8x8 average pooling and a
linear classifier. Every convolution is 3x3 without bias, followed by batch norm; a block
whose shape changes takes its shortcut through a 1x1 strided convolution and batch norm
(He et al.'s option B). Convolutions start from N(0, 2 / (k * k * out_channels)), batch
norms from weight 1 and bias 0, the classifier from PyTorch's default, as theirs.

The model is ``Normalize`` with Cohen et al.'s CIFAR-10 channel statistics (their
``code/datasets.py``) followed by the network, so noise is added in [0, 1] pixel space.
"""

from __future__ import annotations

import torch
from torch import nn

from robustreg.models.normalize import Normalize
from robustreg.models.registry import register_model

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2023, 0.1994, 0.2010)


def _conv3x3(in_planes: int, planes: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_planes, planes, kernel_size=3, stride=stride, padding=1, bias=False)


class BasicBlock(nn.Module):
    """relu(bn(conv(relu(bn(conv(x))))) + shortcut(x))."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = _conv3x3(in_planes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = _conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = None
        if stride != 1 or in_planes != planes:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_planes, planes, kernel_size=1, stride=stride, bias=False),
                nn.BatchNorm2d(planes),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        shortcut = x if self.downsample is None else self.downsample(x)
        return torch.relu(out + shortcut)


class CifarResNet(nn.Module):
    """The 6n + 2 layer CIFAR ResNet: n basic blocks per stage, 32x32 RGB inputs."""

    def __init__(self, depth: int, num_classes: int = 10):
        super().__init__()
        if depth < 8 or (depth - 2) % 6:
            raise ValueError(f"CIFAR ResNet depth must be 6n + 2 with n >= 1, got {depth}")
        blocks = (depth - 2) // 6
        self.conv1 = _conv3x3(3, 16)
        self.bn1 = nn.BatchNorm2d(16)
        self.layer1 = self._stage(16, 16, blocks, stride=1)
        self.layer2 = self._stage(16, 32, blocks, stride=2)
        self.layer3 = self._stage(32, 64, blocks, stride=2)
        self.avgpool = nn.AvgPool2d(8)
        self.fc = nn.Linear(64, num_classes)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                # fan-out He init: std sqrt(2 / (k * k * out_channels)), as theirs.
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")

    @staticmethod
    def _stage(in_planes: int, planes: int, blocks: int, stride: int) -> nn.Sequential:
        return nn.Sequential(
            BasicBlock(in_planes, planes, stride),
            *(BasicBlock(planes, planes) for _ in range(blocks - 1)),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def _cifar_resnet(depth: int, num_classes: int) -> nn.Sequential:
    return nn.Sequential(
        Normalize(CIFAR10_MEAN, CIFAR10_STD), CifarResNet(depth, num_classes=num_classes)
    )


@register_model
def cifar_resnet20(num_classes: int) -> nn.Sequential:
    """ResNet-20 for CIFAR-10 (0.27M parameters)."""
    return _cifar_resnet(20, num_classes)


@register_model
def cifar_resnet110(num_classes: int) -> nn.Sequential:
    """ResNet-110 for CIFAR-10 (1.7M parameters), Jeong & Shin's Table 7 network."""
    return _cifar_resnet(110, num_classes)
