"""Wide residual networks (Zagoruyko & Komodakis 2016) of the adversarial-training baselines
that the ATENT paper compares with on CIFAR-10.

- ``wrn34_10``: depth 34, widening 10, the network of TRADES, MART and l_inf ATENT
  (Table 3; appendix A.1), as yaodongyu/TRADES ``models/wideresnet.py`` builds it
  (``WideResNet(depth=34, widen_factor=10, dropRate=0.0)``; YisenWang/MART
  ``wideresnet.py`` and GauriJagatap/StochAT ``architectures/wideresnet.py`` are the same
  file). TRADES, MART and ATENT feed [0, 1] images without normalization, so ``Normalize``
  is the identity (mean 0, std 1).
- ``wrn28_4``: depth 28, widening 4, the network of MMA and its PGD-AT baseline, which the
  ATENT paper takes for its l2 CIFAR-10 rows (Table 4): BorealisAI/mma_training
  ``train.py`` builds ``get_cifar10_wrn28_widen_factor(4)`` of advertorch
  (``advertorch_examples/models.py``), i.e. the same WideResNet behind advertorch's
  ``PerImageStandardize``, which standardizes each image by its own mean and standard
  deviation (``PerImageStandardize`` below) instead of per-channel dataset statistics.

Both files describe one network (xternalz/WideResNet-pytorch): a 3x3 stem convolution with
16 filters, three groups of (depth - 4) / 6 pre-activation blocks with 16k, 32k and 64k
filters (k the widening; the first block of groups 2 and 3 has stride 2), then batch norm,
ReLU, global average pooling and a linear classifier. A block computes
conv(relu(bn(conv(relu(bn(x)))))) plus a shortcut: x itself, or, where the shape changes, a
strided 1x1 convolution of relu(bn(x)). Every convolution is bias-free and starts from
N(0, 2 / (k * k * out_channels)); batch norms from weight 1, bias 0; the classifier's bias
from 0. Both recipes use dropout 0, so no dropout layer is built (the "dropout" of A.1's
block description has p = 0).

TRADES' module also holds a ``sub_block1``, a copy of the first group that ``forward``
never calls; it is left out here: it changes no output, and its 2.10M parameters are why
TRADES' module counts 48.26M parameters against the 46.16M of the network it computes.
TRADES' published weights would load after dropping the ``sub_block1.*`` keys and renaming
the rest. The networks match the authors' modules output for output once weights are
copied across (checked against both files while writing this one).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from robustreg.models.normalize import Normalize
from robustreg.models.registry import register_model


class PerImageStandardize(nn.Module):
    """(x - mean(x)) / max(std(x), 1 / sqrt(C * H * W)) over each image's own pixels.

    advertorch's ``batch_per_image_standardization`` (``advertorch/utils.py``), a batched
    ``tf.image.per_image_standardization``; as advertorch's, the standard deviation is
    torch's default unbiased one (TensorFlow's divides by n, not n - 1). No parameters or
    buffers: the state dict is the backbone's alone.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.flatten(1)
        shape = (-1,) + (1,) * (x.dim() - 1)
        floor = 1.0 / math.sqrt(flat.shape[1])
        return (x - flat.mean(dim=1).view(shape)) / flat.std(dim=1).clamp(min=floor).view(shape)


def _conv3x3(in_planes: int, planes: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_planes, planes, kernel_size=3, stride=stride, padding=1, bias=False)


class WideBlock(nn.Module):
    """conv2(relu(bn2(conv1(relu(bn1(x)))))) + shortcut, the shortcut from relu(bn1(x)) when
    the shape changes (as TRADES' and advertorch's ``BasicBlock``)."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = _conv3x3(in_planes, planes, stride)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = _conv3x3(planes, planes)
        self.shortcut = None
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Conv2d(in_planes, planes, kernel_size=1, stride=stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(x))
        shortcut = x if self.shortcut is None else self.shortcut(out)
        out = self.conv2(torch.relu(self.bn2(self.conv1(out))))
        return out + shortcut


class WideResNet(nn.Module):
    """WRN-depth-widen for 32x32 RGB inputs: depth = 6n + 4 with n blocks per group."""

    def __init__(self, depth: int, widen: int, num_classes: int = 10, in_chans: int = 3):
        super().__init__()
        if depth < 10 or (depth - 4) % 6:
            raise ValueError(f"WideResNet depth must be 6n + 4 with n >= 1, got {depth}")
        blocks = (depth - 4) // 6
        widths = (16 * widen, 32 * widen, 64 * widen)
        self.conv1 = _conv3x3(in_chans, 16)
        self.block1 = self._group(16, widths[0], blocks, stride=1)
        self.block2 = self._group(widths[0], widths[1], blocks, stride=2)
        self.block3 = self._group(widths[1], widths[2], blocks, stride=2)
        self.bn1 = nn.BatchNorm2d(widths[2])
        self.fc = nn.Linear(widths[2], num_classes)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
        nn.init.zeros_(self.fc.bias)

    @staticmethod
    def _group(in_planes: int, planes: int, blocks: int, stride: int) -> nn.Sequential:
        return nn.Sequential(
            WideBlock(in_planes, planes, stride),
            *(WideBlock(planes, planes) for _ in range(blocks - 1)),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.block3(self.block2(self.block1(self.conv1(x))))
        x = torch.relu(self.bn1(x))
        # the global mean: TRADES' avg_pool2d(8) and advertorch's mean over both axes on 8x8
        return self.fc(x.mean(dim=(2, 3)))


@register_model
def wrn34_10(num_classes: int) -> nn.Sequential:
    """WRN-34-10 of TRADES and MART (46.16M parameters) behind an identity ``Normalize``."""
    return nn.Sequential(
        Normalize((0.0, 0.0, 0.0), (1.0, 1.0, 1.0)), WideResNet(34, 10, num_classes=num_classes)
    )


@register_model
def wrn28_4(num_classes: int) -> nn.Sequential:
    """WRN-28-4 of MMA (5.85M parameters) behind advertorch's per-image standardization."""
    return nn.Sequential(PerImageStandardize(), WideResNet(28, 4, num_classes=num_classes))
