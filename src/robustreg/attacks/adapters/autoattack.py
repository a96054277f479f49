"""AutoAttack's kind (Croce & Hein 2020): ``autoattack``, its declaration
(``robustreg.attacks.registry``) with its ``perturb``.

The code is Croce & Hein's own package (``autoattack``, from fra31/auto-attack) when it is
installed, else ``pyautoattack``, a third-party repackaging of it on PyPI (what
constraints.txt installs; ``Attack.distribution``). attack.json records which ran
(``AutoAttackSuite.library``). The two differ only in their call signatures, which
``_adversary`` and ``_evaluate`` absorb.
"""

from __future__ import annotations

import importlib.metadata

import torch
from torch import Tensor, nn

from robustreg.attacks.pgd import project
from robustreg.attacks.registry import AutoAttackSettings, implements
from robustreg.attacks.runner import current_device

try:  # Croce & Hein's package: pip install git+https://github.com/fra31/auto-attack
    from autoattack import AutoAttack
    from autoattack.autopgd_base import APGDAttack, APGDAttack_targeted

    PACKAGE = "autoattack"
except ImportError:
    from pyautoattack import AutoAttack
    from pyautoattack.autopgd_base import APGDAttack, APGDAttack_targeted

    PACKAGE = "pyautoattack"

__all__ = ["PACKAGE", "AutoAttackSuite", "with_iterations"]


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


def _adversary(model: nn.Module, settings: AutoAttackSettings, device, seed: int) -> AutoAttack:
    custom = list(settings.attacks) if settings.version == "custom" else None
    common = {
        "device": device,
        "eps": settings.eps,
        "norm": "Linf" if settings.norm == "linf" else "L2",
        "seed": seed,
        "version": settings.version,
    }
    if PACKAGE == "autoattack":
        return AutoAttack(model, attacks_to_run=custom or [], verbose=False, **common)
    return AutoAttack(model, attacks=custom, **common)


def _evaluate(adversary: AutoAttack, x: Tensor, y: Tensor) -> Tensor:
    """AutoAttack's points for ``x``: the images its attacks broke, the others unchanged."""
    if PACKAGE == "autoattack":
        return adversary.run_standard_evaluation(x, y, bs=x.shape[0])
    found, _ = adversary.run_standard_evaluation(x, y, batch_size=x.shape[0])
    return found


@implements
class AutoAttackSuite(AutoAttackSettings):
    def library(self) -> dict[str, str]:
        if PACKAGE == "autoattack":
            version = importlib.metadata.version("autoattack")
            return {"library": "autoattack", "library_version": version}
        return super().library()

    def perturb(self, model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
        return self.perturb_parts(model, x, y)[0]

    def perturb_parts(self, model: nn.Module, x: Tensor, y: Tensor) -> tuple[Tensor, list]:
        """AutoAttack's cascade, run one sub-attack at a time: each runs, as in
        ``run_standard_evaluation``, on the images the ones before it left robust, with the
        same seed, and each image broken is credited to the sub-attack that broke it (which
        AutoAttack itself does not report, so Square breaking what the gradient attacks missed,
        its sign of gradient masking, would go unseen)."""
        seed = int(torch.randint(0, 2**31 - 1, ()).item())
        found, parts = x.clone(), [""] * x.shape[0]
        with current_device(x.device):
            adversary = _adversary(model, self, x.device, seed)
            if self.n_iter is not None:
                adversary.apgd = with_iterations(adversary.apgd, self.n_iter)
                adversary.apgd_targeted = with_iterations(adversary.apgd_targeted, self.n_iter)
                adversary.fab.n_iter = self.n_iter  # FAB reads n_iter only as its loop bound
            left = torch.arange(x.shape[0], device=x.device)
            for name in list(adversary.attacks_to_run):
                if not len(left):
                    break
                adversary.attacks_to_run = [name]
                points = _evaluate(adversary, x[left], y[left])
                with torch.no_grad():
                    broke = model(points).argmax(1) != y[left]
                found[left[broke]] = points[broke]
                for i in left[broke].tolist():
                    parts[i] = name
                left = left[~broke]
        # float32 rounding in its projections: back into the ball (a no-op up to rounding)
        return project(x, found, self.norm, self.eps), parts
