"""The attack kinds this package runs itself (``Attack.distribution`` "robustreg"): each the
kind's declaration (``robustreg.attacks.registry``) with its ``perturb``. No attack library is
imported here."""

from __future__ import annotations

import dataclasses

from torch import Tensor, nn

from robustreg.attacks.atent import atent_attack
from robustreg.attacks.logbarrier import logbarrier
from robustreg.attacks.min_distance import pgd_min_distance
from robustreg.attacks.pgd import pgd
from robustreg.attacks.registry import (
    ATENTSettings,
    LogBarrierSettings,
    NoAttackSettings,
    PGDMinSettings,
    PGDSettings,
    implements,
)

__all__ = ["ATENT", "PGD", "LogBarrierAttack", "NoAttack", "PGDMin"]


@implements
class NoAttack(NoAttackSettings):
    def perturb(self, model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
        return x


@implements
class PGD(PGDSettings):
    def perturb(self, model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
        return pgd(
            model,
            x,
            y,
            norm=self.norm,
            eps=self.eps,
            steps=self.steps,
            step_size=self.step_size,
            restarts=self.restarts,
            random_start=self.random_start,
        )


@implements
class ATENT(ATENTSettings):
    def perturb(self, model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
        return atent_attack(
            model,
            x,
            y,
            norm=self.norm,
            eps=self.eps,
            steps=self.steps,
            step_size=self.step_size,
            noise=self.noise,
        )


@implements
class PGDMin(PGDMinSettings):
    def perturb(self, model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
        points, _ = pgd_min_distance(
            model,
            x,
            y,
            norm=self.norm,
            eps_max=self.eps_max,
            search_steps=self.search_steps,
            steps=self.steps,
            step_ratio=self.step_ratio,
            restarts=self.restarts,
            top_k=self.top_k,
        )
        return points


@implements
class LogBarrierAttack(LogBarrierSettings):
    def perturb(self, model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
        points, _ = logbarrier(model, x, y, **dataclasses.asdict(self))
        return points
