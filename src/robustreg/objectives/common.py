"""Noisy-copy helpers every objective uses.

Layout shared by all objectives: m noisy copies of a batch [B, ...] are stacked
copy-major into [m, B, ...] and sent through the model as one [m*B, ...] batch; logits come
back as [m, B, C].
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def gaussian_noise(x: torch.Tensor, m: int, sigma: float) -> torch.Tensor:
    """m i.i.d. N(0, sigma^2 I) draws shaped [m, *x.shape], from torch's global RNG.

    Same draw as ``torch.randn_like`` on an [m, *x.shape] tensor like ``x`` (dtype, device),
    without materialising m copies of ``x`` first.
    """
    return torch.randn((m, *x.shape), dtype=x.dtype, device=x.device) * sigma


def copy_logits(model: nn.Module, x: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """Logits [m, B, C] of ``x + noise_i`` for the m copies in ``noise`` [m, B, ...], one pass.

    Half-precision logits (a model run under autocast) are promoted to float32, so every loss
    term is computed in float32 whatever precision the forward pass used.
    """
    m, batch = noise.shape[0], x.shape[0]
    logits = model((x.unsqueeze(0) + noise).flatten(0, 1)).view(m, batch, -1)
    return logits.float() if logits.dtype in (torch.float16, torch.bfloat16) else logits


def copies_xent(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy over all m*B noisy copies (= mean over copies of each copy's CE)."""
    m = logits.shape[0]
    return F.cross_entropy(logits.flatten(0, 1), y.repeat(m))


def accuracy(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Fraction of rows of ``logits`` [..., B, C] whose argmax is ``y`` [B] (all copies pooled)."""
    return (logits.argmax(dim=-1) == y).float().mean()


def as_floats(**values: torch.Tensor | float) -> dict[str, float]:
    """Scalars as python floats; all tensors are fetched with a single device synchronisation."""
    tensors = {k: v for k, v in values.items() if isinstance(v, torch.Tensor)}
    fetched = {}
    if tensors:
        # on one device: torch.stack refuses a CPU scalar among CUDA ones
        device = next(iter(tensors.values())).device
        stacked = torch.stack(
            [v.detach().reshape(()).to(device, torch.float64) for v in tensors.values()]
        )
        fetched = dict(zip(tensors, stacked.tolist(), strict=True))
    return {k: fetched[k] if k in fetched else float(v) for k, v in values.items()}
