"""What planning knows of each paper architecture without building it (no torch, issue 19).

``BATCH_STATISTICS``: whether the architecture normalizes with the statistics of its batch
(BatchNorm) when training. A method that sends different kinds of inputs through the model
changes meaning with it: the authors' code runs clean and noisy inputs in separate passes,
so each is normalized with its own statistics (issue 20), and the jobs of such a method on
such an architecture carry the method's ``revision``.

tests/test_models.py checks every entry against the built model, and that every registered
architecture has one.
"""

from __future__ import annotations

BATCH_STATISTICS: dict[str, bool] = {
    "cifar_resnet20": True,
    "cifar_resnet110": True,
    "imagenet_resnet50": True,
    "imagenet_resnet50_bn0": True,
    "lenet5_madry_mnist": False,
    "lenet_mnist": False,
    "resnext34_2x32_cifar": True,
    "small_cnn_mnist": False,
    "wrn28_4": True,
    "wrn34_10": True,
}


def has_batch_statistics(arch: str) -> bool:
    """Whether ``arch`` trains with BatchNorm; a ValueError names an unknown one."""
    if arch not in BATCH_STATISTICS:
        raise ValueError(f"unknown architecture {arch!r} (known: {', '.join(BATCH_STATISTICS)})")
    return BATCH_STATISTICS[arch]
