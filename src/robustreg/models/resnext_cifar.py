"""ResNeXt-34 (2x32), the CIFAR-10 network of Finlay & Oberman ("Scaleable input gradient
regularization for adversarial robustness", section 4), as their code builds it:
cfinlay/tulip ``cifar10/models/resnet.py`` (``ResNeXt34_2x32`` = ``ResNet([5, 5, 5],
block='BranchBlock', base_channels=32)``, l.93-96) with the units of
``cifar10/models/blocks.py``. The paper names the network but does not describe it.

- Unit (``Conv``, blocks.py:80-147): convolution without bias, ``BatchNorm2d(affine=False)``,
  then a learned per-channel bias, then ReLU where asked.
- Stem (resnet.py:52): a 3x3 unit 3 -> 32, stride 1, no pooling.
- Three stages of five ``BranchBlock`` at 32, 64 and 128 channels (32x32, 16x16, 8x8).
  Stages 2 and 3 open with a transition (resnet.py:34-47): a 1x1 unit C -> 2C with ReLU at
  full resolution, then ``AvgPool2d(2)``. No block changes shape, so every shortcut is the
  identity.
- ``BranchBlock`` (blocks.py:247-309): relu(x + mean of the two halves of
  bn1(conv1(relu(bn0(conv0(x)))))), where conv0 is a 3x3 C -> 2C convolution, conv1 a 3x3
  2C -> 2C convolution with two groups, both without bias, and bn0, bn1 are affine batch
  norms. It is two parallel 3x3-3x3 branches of width C, averaged (no learned 1x1
  aggregation, unlike ResNeXt).
- Head (resnet.py:70-73; ``Linear``, blocks.py:13-67): global average pooling, then a linear
  map 128 -> classes without bias, ``BatchNorm1d(affine=False)``, a learned bias and a ReLU.
  The ReLU acts on the logits, so **outputs are non-negative**, as in the authors' model
  (``nonlinear='relu'`` reaches the final ``Linear``); ties at 0 can happen.

Depth 34 = stem 1 + 15 blocks x 2 convolutions + 2 transitions + head 1 (a block's two
branches run side by side in one grouped convolution per layer). 3,892,298 parameters for
10 classes.

Initialization as theirs: the units' weights and biases from U(-1/sqrt(fan_in),
1/sqrt(fan_in)) (blocks.py:45-50, 122-129); the block convolutions keep PyTorch's default,
which is the same distribution; the affine batch norms start at weight 1, bias 0.

Submodule and parameter names follow theirs (``layer0``, ``layers.i.j``, ``fc``; ``weight``,
``bias``, ``bn``, ``conv0``, ``bn0``, ...), so the state-dict keys equal those of their
``ResNeXt34_2x32`` and their published checkpoints (``cifar10/fetch_model.py``) should load
into the backbone, ``model[1]``. Outputs matched theirs exactly once weights were copied
across (checked while writing this file). Their smooth variant (``SmoothResNeXt34_2x32``)
is not built.

tulip feeds [0, 1] images without standardization (``cifar10/dataloader.py``), so
``Normalize`` is the identity (mean 0, std 1).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from robustreg.models.normalize import Normalize
from robustreg.models.registry import register_model


def _uniform_fan_in_(tensor: torch.Tensor, fan_in: int) -> None:
    bound = 1.0 / math.sqrt(fan_in)
    nn.init.uniform_(tensor, -bound, bound)


class ConvUnit(nn.Module):
    """Bias-free k x k convolution (stride 1, same padding), non-affine batch norm, bias,
    optional ReLU.

    The bias is added after the batch norm (which would cancel a convolution bias), and
    there is no learned scale: tulip's ``Conv``, which ``nn.Conv2d`` plus ``BatchNorm2d``
    cannot express with these parameters and names.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, relu: bool):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.empty(out_channels))
        self.bn = nn.BatchNorm2d(out_channels, affine=False)
        self.padding = kernel_size // 2
        self.relu = relu
        fan_in = in_channels * kernel_size * kernel_size
        _uniform_fan_in_(self.weight, fan_in)
        _uniform_fan_in_(self.bias, fan_in)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.bn(F.conv2d(x, self.weight, padding=self.padding)) + self.bias.view(1, -1, 1, 1)
        return F.relu(y) if self.relu else y


class BranchBlock(nn.Module):
    """relu(x + (b_1(x) + b_2(x)) / 2), each branch b_i = bn(conv3x3(relu(bn(conv3x3(x))))) of
    width C; both branches run in one C -> 2C convolution and one two-group 2C -> 2C one."""

    def __init__(self, channels: int, branches: int = 2):
        super().__init__()
        width = channels * branches
        self.branches = branches
        self.conv0 = nn.Conv2d(channels, width, 3, padding=1, bias=False)
        self.bn0 = nn.BatchNorm2d(width)
        self.conv1 = nn.Conv2d(width, width, 3, padding=1, groups=branches, bias=False)
        self.bn1 = nn.BatchNorm2d(width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.bn1(self.conv1(F.relu(self.bn0(self.conv0(x)))))
        # channel block i is branch i (group i of conv1); blocks.py:297-300 averages them
        y = y.unflatten(1, (self.branches, -1)).mean(dim=1)
        return F.relu(x + y)


class LinearUnit(nn.Module):
    """Bias-free linear map, non-affine ``BatchNorm1d``, bias, ReLU: tulip's ``Linear``."""

    def __init__(self, in_features: int, out_features: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(out_features, in_features))
        self.bias = nn.Parameter(torch.empty(out_features))
        self.bn = nn.BatchNorm1d(out_features, affine=False)
        _uniform_fan_in_(self.weight, in_features)
        _uniform_fan_in_(self.bias, in_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(F.linear(x, self.weight)) + self.bias)


class ResNeXtCifar(nn.Module):
    """tulip's ``ResNet`` with ``BranchBlock``: ``blocks`` per stage, widths doubling from
    ``base_channels``, for 32x32 RGB inputs in [0, 1]."""

    def __init__(
        self,
        blocks: tuple[int, ...] = (5, 5, 5),
        base_channels: int = 32,
        num_classes: int = 10,
        in_chans: int = 3,
    ):
        super().__init__()
        if not blocks or any(n < 1 for n in blocks):
            raise ValueError(f"blocks needs at least one stage, each with >= 1 block: {blocks}")
        self.layer0 = ConvUnit(in_chans, base_channels, 3, relu=True)
        stages = []
        for i, n in enumerate(blocks):
            width = base_channels * 2**i
            opening: list[nn.Module] = []
            if i > 0:
                opening = [ConvUnit(width // 2, width, 1, relu=True), nn.AvgPool2d(2)]
            stages.append(nn.Sequential(*opening, *(BranchBlock(width) for _ in range(n))))
        self.layers = nn.Sequential(*stages)
        self.fc = LinearUnit(width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.layers(self.layer0(x)).mean(dim=(2, 3)))


@register_model
def resnext34_2x32_cifar(num_classes: int) -> nn.Sequential:
    """Finlay & Oberman's ResNeXt-34 (2x32) (3.89M parameters, non-negative outputs) behind an
    identity ``Normalize``."""
    return nn.Sequential(
        Normalize((0.0, 0.0, 0.0), (1.0, 1.0, 1.0)), ResNeXtCifar(num_classes=num_classes)
    )
