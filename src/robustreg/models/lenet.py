"""LeNet of Jeong & Shin (2020) for MNIST: conv 20@5x5, pool, conv 50@5x5, pool, fc 500, fc 10.

Layer sizes follow the paper's index and the authors' ``code/archs/lenet.py``
(jh-jeong/smoothing-consistency): 5x5 convolutions without padding, 2x2 max-pooling,
ReLU after every hidden layer. MNIST gets no normalization beyond [0, 1] scaling
(supp. A.2), so the ``Normalize`` layer is the identity (mean 0, std 1).
"""

from __future__ import annotations

from torch import nn

from robustreg.models.normalize import Normalize
from robustreg.models.registry import register_model


class LeNet(nn.Sequential):
    def __init__(self, num_classes: int = 10, in_chans: int = 1):
        super().__init__(
            nn.Conv2d(in_chans, 20, kernel_size=5),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
            nn.Conv2d(20, 50, kernel_size=5),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Linear(4 * 4 * 50, 500),
            nn.ReLU(inplace=True),
            nn.Linear(500, num_classes),
        )


@register_model
def lenet_mnist(num_classes: int) -> nn.Sequential:
    """Jeong & Shin's MNIST LeNet behind an identity ``Normalize``."""
    return nn.Sequential(Normalize((0.0,), (1.0,)), LeNet(num_classes=num_classes))
