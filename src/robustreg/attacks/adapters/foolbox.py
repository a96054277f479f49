"""The Foolbox kinds (Rauber et al. 2020; ``Attack.distribution`` "foolbox"): ``foolbox_pgd``,
``cw_l2``, ``deepfool_linf``, ``cw_l2_min`` and ``boundary_min``, each the kind's declaration
(``robustreg.attacks.registry``) with its ``perturb``, and ``TopKMisclassification``, the
criterion for top-k misclassification the Boundary attack needs (Foolbox 3 ships only top-1
``Misclassification``)."""

from __future__ import annotations

import warnings
from typing import Any, TypeVar

import eagerpy as ep
import foolbox
import torch
from foolbox.attacks import (
    L2PGD,
    BoundaryAttack,
    L2CarliniWagnerAttack,
    LinearSearchBlendedUniformNoiseAttack,
    LinfDeepFoolAttack,
    LinfPGD,
)
from foolbox.criteria import Criterion
from torch import Tensor, nn

from robustreg.attacks.adapters import fooling
from robustreg.attacks.registry import (
    BoundarySettings,
    CarliniWagnerL2MinSettings,
    CarliniWagnerL2Settings,
    DeepFoolLinfSettings,
    FoolboxPGDSettings,
    implements,
)
from robustreg.attacks.runner import in_top_k

__all__ = [
    "BoundaryMin",
    "CarliniWagnerL2",
    "CarliniWagnerL2Min",
    "DeepFoolLinf",
    "FoolboxPGD",
    "TopKMisclassification",
]

T = TypeVar("T")


class TopKMisclassification(Criterion):
    """Foolbox criterion: adversarial where the label is outside the top ``top_k`` outputs
    (``in_top_k``; Foolbox's ``Misclassification`` for top_k = 1). PyTorch models only."""

    def __init__(self, labels: Any, top_k: int):
        super().__init__()
        self.labels: ep.Tensor = ep.astensor(labels)
        self.top_k = top_k

    def __repr__(self) -> str:
        return f"{self.__class__.__name__}({self.labels!r}, top_k={self.top_k})"

    def __call__(self, perturbed: T, outputs: T) -> T:
        outputs_, restore_type = ep.astensor_(outputs)
        wrong = ~in_top_k(outputs_.raw, self.labels.raw, self.top_k)
        return restore_type(ep.astensor(wrong))


def _model(model: nn.Module, x: Tensor) -> foolbox.PyTorchModel:
    return foolbox.PyTorchModel(model, bounds=(0.0, 1.0), device=x.device)


def _carlini_wagner(attack: CarliniWagnerL2Settings | CarliniWagnerL2MinSettings):
    return L2CarliniWagnerAttack(
        binary_search_steps=attack.binary_search_steps,
        steps=attack.steps,
        stepsize=attack.stepsize,
        confidence=attack.confidence,
        initial_const=attack.initial_const,
    )


@implements
class FoolboxPGD(FoolboxPGDSettings):
    def perturb(self, model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
        cls = LinfPGD if self.norm == "linf" else L2PGD
        attack = cls(abs_stepsize=self.step_size, steps=self.steps, random_start=self.random_start)
        _, clipped, _ = attack(_model(model, x), x, y, epsilons=self.eps)
        return clipped


@implements
class CarliniWagnerL2(CarliniWagnerL2Settings):
    def perturb(self, model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
        _, clipped, success = _carlini_wagner(self)(_model(model, x), x, y, epsilons=self.eps)
        return fooling(x, clipped, success)


@implements
class DeepFoolLinf(DeepFoolLinfSettings):
    def perturb(self, model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
        attack = LinfDeepFoolAttack(
            steps=self.steps, candidates=self.candidates, overshoot=self.overshoot
        )
        _, clipped, success = attack(_model(model, x), x, y, epsilons=self.eps)
        return fooling(x, clipped, success)


@implements
class CarliniWagnerL2Min(CarliniWagnerL2MinSettings):
    def perturb(self, model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
        found, _, success = _carlini_wagner(self)(_model(model, x), x, y, epsilons=None)
        # Foolbox 3.3.4 starts CW's best points at zeros (carlini_wagner.py, best_advs) and
        # returns them where it found nothing; its success then only says whether the black
        # image is misclassified. A point still all zeros is not one CW found (its points
        # stay near x): not found, not broken at distance ||x||.
        untouched = (found == 0).flatten(1).all(dim=1) & (x != 0).flatten(1).any(dim=1)
        return fooling(x, found, success & ~untouched)


@implements
class BoundaryMin(BoundarySettings):
    def perturb(self, model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
        fmodel = _model(model, x)
        with warnings.catch_warnings():
            # it warns when some image gets no start; those count as not found below
            warnings.simplefilter("ignore")
            starts = LinearSearchBlendedUniformNoiseAttack(steps=50).run(
                fmodel, x, TopKMisclassification(y, self.top_k)
            )
        # BoundaryAttack raises unless every start is adversarial, checked on the very batch
        # it gets: drop the others until that batch checks out
        idx = torch.arange(x.shape[0], device=x.device)
        while idx.numel():
            with torch.no_grad():
                ok = ~in_top_k(model(starts[idx]), y[idx], self.top_k)
            if bool(ok.all()):
                break
            idx = idx[ok]
        points = x.clone()
        if idx.numel():
            attack = BoundaryAttack(
                steps=self.steps,
                spherical_step=self.spherical_step,
                source_step=self.source_step,
                step_adaptation=self.step_adaptation,
            )
            found, _, success = attack(
                fmodel,
                x[idx],
                TopKMisclassification(y[idx], self.top_k),
                epsilons=None,
                starting_points=starts[idx],
            )
            points[idx] = fooling(x[idx], found, success)
        return points
