"""Paper architectures, registered by name (``robustreg.models.registry``) and built with
``create_model``.

Every model is ``Normalize`` followed by a backbone, so noise is always added in
[0, 1] pixel space and per-channel normalization happens inside the model
(Cohen et al. 2019; Jeong & Shin 2020, supp. A.2).
"""

from __future__ import annotations

from robustreg.models import (  # noqa: F401  (registers the paper architectures)
    cifar_resnet,
    imagenet,
    lenet,
    lenet5,
    resnext_cifar,
    small_cnn,
    wide_resnet,
)
from robustreg.models.normalize import Normalize
from robustreg.models.registry import architectures, create_model

__all__ = ["Normalize", "architectures", "create_model"]
