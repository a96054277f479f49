"""SmallCNN of Zhang et al. (TRADES, 2019) for MNIST: the ATENT paper's linf MNIST network
(Table 2 and its Entropy-SGD baseline; appendix A.1).

Layers as in yaodongyu/TRADES ``models/small_cnn.py`` (``SmallCNN``, copied unchanged into
GauriJagatap/StochAT ``architectures/small_cnn.py``): 3x3 convolutions without padding,
32, 32, max-pool 2, 64, 64, max-pool 2 (28 -> 26 -> 24 -> 12 -> 10 -> 8 -> 4), then fully
connected 1024 -> 200, ReLU, dropout p = 0.5, 200 -> 200, ReLU, 200 -> 10. Their
initialization is kept because it shapes the first epochs: convolutions from He's normal
(fan-in) with zero bias, the hidden fully connected layers from PyTorch's default, the last
layer all zeros (every class starts at logit 0). Submodule names follow theirs
(``feature_extractor.conv1``, ..., ``classifier.fc3``).

TRADES and ATENT feed [0, 1] MNIST pixels without normalization, so ``Normalize`` is the
identity (mean 0, std 1).
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn

from robustreg.models.normalize import Normalize
from robustreg.models.registry import register_model


class SmallCNN(nn.Module):
    """Four 3x3 convolutions and three fully connected layers, 28x28 single-channel inputs."""

    def __init__(self, num_classes: int = 10, in_chans: int = 1, drop: float = 0.5):
        super().__init__()
        self.feature_extractor = nn.Sequential(
            OrderedDict(
                [
                    ("conv1", nn.Conv2d(in_chans, 32, 3)),
                    ("relu1", nn.ReLU(inplace=True)),
                    ("conv2", nn.Conv2d(32, 32, 3)),
                    ("relu2", nn.ReLU(inplace=True)),
                    ("maxpool1", nn.MaxPool2d(2, 2)),
                    ("conv3", nn.Conv2d(32, 64, 3)),
                    ("relu3", nn.ReLU(inplace=True)),
                    ("conv4", nn.Conv2d(64, 64, 3)),
                    ("relu4", nn.ReLU(inplace=True)),
                    ("maxpool2", nn.MaxPool2d(2, 2)),
                ]
            )
        )
        self.classifier = nn.Sequential(
            OrderedDict(
                [
                    ("fc1", nn.Linear(64 * 4 * 4, 200)),
                    ("relu1", nn.ReLU(inplace=True)),
                    ("drop", nn.Dropout(drop)),
                    ("fc2", nn.Linear(200, 200)),
                    ("relu2", nn.ReLU(inplace=True)),
                    ("fc3", nn.Linear(200, num_classes)),
                ]
            )
        )
        for module in self.feature_extractor:
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight)
                nn.init.zeros_(module.bias)
        nn.init.zeros_(self.classifier.fc3.weight)
        nn.init.zeros_(self.classifier.fc3.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.feature_extractor(x), 1))


@register_model
def small_cnn_mnist(num_classes: int) -> nn.Sequential:
    """TRADES' SmallCNN (0.31M parameters) behind an identity ``Normalize``."""
    return nn.Sequential(Normalize((0.0,), (1.0,)), SmallCNN(num_classes=num_classes))
