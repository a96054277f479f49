"""LeNet5 of Madry et al.'s MNIST challenge as advertorch ships it: the ATENT paper's l2 MNIST
network (Table 1; appendix A.1, "the LeNet5 model from the Advertorch library (same as
[11])", [11] being MMA).

MMA (BorealisAI/mma_training ``train.py``, ``get_model``) trains
``advertorch_examples.models.LeNet5Madry`` (BorealisAI/advertorch), and so do we: 5x5
convolutions with padding 2, 32 then 64 channels, each followed by ReLU and a 2x2 max-pool
(28 -> 14 -> 7), then fully connected 7 * 7 * 64 = 3136 -> 1024, ReLU, 1024 -> 10; PyTorch's
default initialization. (advertorch's ``test_utils.LeNet5`` is a different, smaller network:
3x3 convolutions and 200 hidden units; it does not match A.1's 3136 x 1024 layer.)

MMA feeds [0, 1] MNIST pixels without normalization, so ``Normalize`` is the identity.
"""

from __future__ import annotations

import torch
from torch import nn

from robustreg.models.normalize import Normalize
from robustreg.models.registry import register_model


class LeNet5Madry(nn.Module):
    """conv 32@5x5, pool, conv 64@5x5, pool, fc 1024, fc classes; 28x28 single-channel inputs."""

    def __init__(self, num_classes: int = 10, in_chans: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_chans, 32, kernel_size=5, padding=2)
        self.conv2 = nn.Conv2d(32, 64, kernel_size=5, padding=2)
        self.linear1 = nn.Linear(7 * 7 * 64, 1024)
        self.linear2 = nn.Linear(1024, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.max_pool2d(torch.relu(self.conv1(x)), 2)
        x = torch.max_pool2d(torch.relu(self.conv2(x)), 2)
        return self.linear2(torch.relu(self.linear1(torch.flatten(x, 1))))


@register_model
def lenet5_madry_mnist(num_classes: int) -> nn.Sequential:
    """advertorch's LeNet5Madry (3.27M parameters) behind an identity ``Normalize``."""
    return nn.Sequential(Normalize((0.0,), (1.0,)), LeNet5Madry(num_classes=num_classes))
