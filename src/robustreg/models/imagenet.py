"""ResNet-50 for ImageNet (He et al. 2016): Feng et al.'s (AAAI 2020) Table 1 network, and
Finlay & Oberman's, initialized as they trained it.

Cohen et al. (2019) and Salman et al. (2019) train torchvision's ``resnet50`` behind a
layer that standardizes each channel with ImageNet's statistics; Feng et al. use "a
centering layer ... channel-wise standardization, as implemented in (Salman et al. 2019)".
Here that is ``Normalize(IMAGENET_MEAN, IMAGENET_STD)`` followed by timm's ``resnet50``,
so noise is added in [0, 1] pixel space.

timm's ``resnet50`` is torchvision's ResNet-50 v1.5: the same 7x7 stem and max-pool,
bottleneck blocks with the stride in the 3x3 convolution, 1x1-convolution shortcuts, and
the same parameter names and shapes (25.6M parameters), so torchvision's weights load into
it unchanged and give the same outputs (tests/test_imagenet_data.py checks this). timm
zero-initializes the last batch norm of every block by default; torchvision, and with it
Cohen et al. and Salman et al., does not, so that is switched off in ``imagenet_resnet50``.

``imagenet_resnet50_bn0`` is the same network initialized as Finlay & Oberman trained theirs:
their DAWNBench-derived trainer runs with ``--init-bn0`` (cfinlay/tulip,
``imagenet/example.sh``), which zeroes the scale of every bottleneck's last batch norm (Goyal
et al. 2017, timm's ``zero_init_last``) and draws the classifier's weights from N(0, 0.01^2)
(``imagenet/resnet.py``, ``init_dist_weights``). At initialization each block is then the
identity, so the logits and the input gradient start small; the squared input-gradient
penalty of a default-initialized ResNet-50 starts orders of magnitude larger.

timm is imported when one of these is built, not with the package: its import takes seconds
and no other architecture needs it (``robustreg.models.registry``).
"""

from __future__ import annotations

import torch
from torch import nn

from robustreg.models.normalize import Normalize
from robustreg.models.registry import register_model

# Salman et al.'s and Cohen et al.'s _IMAGENET_MEAN / _IMAGENET_STDDEV (code/datasets.py).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@register_model
def imagenet_resnet50(num_classes: int) -> nn.Sequential:
    """ResNet-50 for ImageNet behind its channel standardization."""
    import timm

    backbone = timm.create_model("resnet50", num_classes=num_classes, zero_init_last=False)
    return nn.Sequential(Normalize(IMAGENET_MEAN, IMAGENET_STD), backbone)


@register_model
def imagenet_resnet50_bn0(num_classes: int) -> nn.Sequential:
    """``imagenet_resnet50`` with Finlay & Oberman's ``--init-bn0`` initialization: zero scale
    in each block's last batch norm, classifier weights from N(0, 0.01^2)."""
    import timm

    backbone = timm.create_model("resnet50", num_classes=num_classes, zero_init_last=True)
    with torch.no_grad():
        backbone.get_classifier().weight.normal_(0.0, 0.01)
    return nn.Sequential(Normalize(IMAGENET_MEAN, IMAGENET_STD), backbone)
