"""The threat models an attack or an adversarial training method may name, checked without
importing torch: planning validates them before any job starts (issue 19: planning imports no
torch)."""

from __future__ import annotations

import math

NORMS = ("l2", "linf")


def check_threat_model(norm: str, eps: float, steps: int, step_size: float, restarts: int) -> None:
    """One-line errors for a PGD configuration that cannot run."""
    if norm not in NORMS:
        raise ValueError(f"norm: {norm!r} is not one of {', '.join(NORMS)}")
    if eps < 0 or steps < 0 or step_size < 0 or restarts < 1:
        raise ValueError(
            f"need eps >= 0, steps >= 0, step_size >= 0 and restarts >= 1, got eps={eps}, "
            f"steps={steps}, step_size={step_size}, restarts={restarts}"
        )


def threat_tolerance(norm: str, eps: float, dim: int) -> float:
    """How far beyond ``eps`` a point may lie and still count as inside the threat model.

    Points are float32: each stored coordinate of x + delta is off by at most half an ulp,
    2^-25 below 1, so a linf norm by 2^-25 and an l2 norm by at most 2^-25 sqrt(dim). We allow
    twice that, plus 1e-6 (1 + eps) for eps and the l2 scale factor held in float32: 4.7e-6 at
    MNIST's l2 eps 2, 4.8e-6 at CIFAR's l2 eps 0.5, 1.1e-6 at linf 8/255.
    """
    rounding = 2.0**-24 * (math.sqrt(dim) if norm == "l2" else 1.0)
    return rounding + 1e-6 * (1.0 + eps)
