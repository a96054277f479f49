"""AutoAttack's kind (Croce & Hein 2020; ``Attack.distribution`` "pyautoattack"):
``autoattack``, its declaration (``robustreg.attacks.registry``) with its ``perturb``."""

from __future__ import annotations

import torch
from pyautoattack import AutoAttack
from torch import Tensor, nn

from robustreg.attacks.pgd import project
from robustreg.attacks.registry import AutoAttackSettings, implements
from robustreg.attacks.runner import current_device

__all__ = ["AutoAttackSuite"]


@implements
class AutoAttackSuite(AutoAttackSettings):
    def perturb(self, model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
        seed = int(torch.randint(0, 2**31 - 1, ()).item())
        custom = list(self.attacks) if self.version == "custom" else None
        with current_device(x.device):
            adversary = AutoAttack(
                model,
                attacks=custom,
                device=x.device,
                eps=self.eps,
                norm="Linf" if self.norm == "linf" else "L2",
                seed=seed,
                version=self.version,
            )
            if self.n_iter is not None:
                for part in (adversary.apgd, adversary.apgd_targeted, adversary.fab):
                    part.n_iter = self.n_iter
            found, _ = adversary.run_standard_evaluation(x, y, batch_size=x.shape[0])
        # float32 rounding in its projections: back into the ball (a no-op up to rounding)
        return project(x, found, self.norm, self.eps)
