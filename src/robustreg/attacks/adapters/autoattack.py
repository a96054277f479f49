"""AutoAttack's kind (Croce & Hein 2020; ``Attack.distribution`` "pyautoattack", a
third-party repackaging of their fra31/auto-attack): ``autoattack``, its declaration
(``robustreg.attacks.registry``) with its ``perturb``."""

from __future__ import annotations

import torch
from pyautoattack import AutoAttack
from pyautoattack.autopgd_base import APGDAttack, APGDAttack_targeted
from torch import Tensor, nn

from robustreg.attacks.pgd import project
from robustreg.attacks.registry import AutoAttackSettings, implements
from robustreg.attacks.runner import current_device

__all__ = ["AutoAttackSuite", "with_iterations"]


def with_iterations(part: APGDAttack, n_iter: int) -> APGDAttack:
    """``part`` (AutoAttack's APGD-CE or APGD-T, with the settings its version gave it) built
    again for ``n_iter`` iterations.

    AutoAttack builds its APGD attacks for 100 iterations and APGD derives its step-size
    checkpoints from ``n_iter`` in its constructor (the first after 22 % of the iterations, the
    others shrinking by 3 % to at least 6 %: Croce & Hein 2020, section 3.2, and ``n_iter_2``,
    ``n_iter_min``, ``size_decr`` in fra31/auto-attack's autopgd_base.py). Writing ``n_iter``
    afterwards would keep the checkpoints of 100 iterations, so it is passed to the
    constructor with every other setting read back from ``part``.
    """
    settings = {
        "n_iter": n_iter,
        "norm": part.norm,
        "n_restarts": part.n_restarts,
        "eps": part.eps,
        "seed": part.seed,
        "eot_iter": part.eot_iter,
        "rho": part.thr_decr,
        "topk": part.topk,
        "verbose": part.verbose,
        "device": part.device,
        "use_largereps": part.use_largereps,
        "logger": part.logger,
    }
    if isinstance(part, APGDAttack_targeted):
        settings["n_target_classes"] = part.n_target_classes
    else:
        settings["loss"] = part.loss
    return type(part)(part.model, **settings)


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
                adversary.apgd = with_iterations(adversary.apgd, self.n_iter)
                adversary.apgd_targeted = with_iterations(adversary.apgd_targeted, self.n_iter)
                adversary.fab.n_iter = self.n_iter  # FAB reads n_iter only as its loop bound
            found, _ = adversary.run_standard_evaluation(x, y, batch_size=x.shape[0])
        # float32 rounding in its projections: back into the ball (a no-op up to rounding)
        return project(x, found, self.norm, self.eps)
