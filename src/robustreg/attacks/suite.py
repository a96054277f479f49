"""The attack stage: a registry of attacks and the runner that evaluates one model against one.

Tables 1-6 of the ATENT paper (Jagatap et al., section 4 and appendix A) report robust accuracy
under PGD, Carlini-Wagner (l2 and linf), DeepFool and ATENT attacks, run with Foolbox and the
Adversarial Robustness Toolbox (section 4, "Attacks"); AutoAttack (Croce & Hein 2020) is
added as the reference evaluation. Finlay & Oberman's tables (section 4) report per-image
minimum adversarial distances from a suite of minimum-distance ("minimal") attacks:
Carlini-Wagner, Boundary, LogBarrier and PGD (``pgd_min``, ``cw_l2_min``, ``boundary_min``,
``logbarrier``; ``robustreg.attacks.min_distance``). An attack is a frozen dataclass whose
fields are its settings, built from a dict such as ``{"kind": "pgd", "norm": "l2", "eps": 2.0,
"steps": 40, "step_size": 0.25, "restarts": 10}`` by ``build_attack``.

Every attack but ``none`` and the minimal ones has a threat model, ``norm`` (l2 or linf) and
``eps``, in [0, 1] pixel units. ``Attack.perturb`` returns one point per image, in [0, 1] and
within the threat model up to ``threat_tolerance``; minimum-norm attacks (CW, DeepFool) are
cut to the threat model as Foolbox's ``epsilons=`` does (the perturbation is scaled or clipped
into the eps ball, and the image counts as broken only if that point fools the model) and
return the clean image where that point does not fool the model. The runner checks each point
again and keeps the clean image in place of any point outside the threat model, so a broken
image is always broken by a point inside it.

Minimal attacks (``Attack.minimal``) have a ``norm`` and a ``top_k`` (default 1) but no eps:
their threat model is (norm, inf), so the runner checks only that a point lies in [0, 1].
``perturb`` returns, per image, the closest adversarial point the attack found (closest in its
``norm``), or the clean image where it found none. "Correct" and "robust" are top-k (Finlay &
Oberman's ImageNet rows are top-5, footnote 1): an image is attacked if its label is among the
``top_k`` largest clean logits, and is robust if its label is also among the ``top_k`` largest
logits at the point kept (every other kind has top_k = 1: the prediction). An outcome row of a
minimal attack means:

* robust 0, l2 = linf = 0: the clean image is misclassified (top-k), not attacked;
* robust 0, distance > 0: broken at that point; l2 and linf are both its distances, so an l2
  attack's point also bounds the image's linf distance, and vice versa;
* robust 1: no adversarial point found (the runner keeps the clean image, l2 = linf = 0, even
  where the attack's point fails the runner's own check).

The ``clean`` and ``adversarial`` columns stay argmax predictions whatever top_k.

``run_attack`` evaluates a model on a test split one batch at a time, and each image's outcome
is recorded (``OUTCOME_COLUMNS``), so a killed job resumes (``OutcomeLog``) and tables compute
any accuracy from the outcome log (``read_outcomes``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import importlib.metadata
import math
import os
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import pandas as pd
import torch
from torch import Tensor, nn
from tqdm import tqdm

from robustreg.attacks.atent import atent_attack
from robustreg.attacks.logbarrier import _Settings as LogBarrierSettings
from robustreg.attacks.logbarrier import logbarrier
from robustreg.attacks.min_distance import (
    MADRY_STEP_RATIO,
    TopKMisclassification,
    in_top_k,
    pgd_min_distance,
)
from robustreg.attacks.pgd import NORMS, pgd, project
from robustreg.io import Expected, ResumableLog, image_ids, write_text_atomic
from robustreg.smoothing import indexed_device

__all__ = [
    "OUTCOME_COLUMNS",
    "REGISTRY",
    "Attack",
    "OutcomeLog",
    "attack_mode",
    "build_attack",
    "read_outcomes",
    "register",
    "resolve_attack",
    "run_attack",
    "threat_tolerance",
    "write_outcomes",
]

OUTCOME_COLUMNS: tuple[str, ...] = (
    "idx", "label", "clean", "adversarial", "robust", "l2", "linf", "time",
)  # fmt: skip
_INT_COLUMNS = ("idx", "label", "clean", "adversarial", "robust")
_FLOAT_COLUMNS = ("l2", "linf")
# what run_attack returns and OutcomeLog records, per image
_RESULT_KEYS = ("idx", "label", "clean", "adversarial", "robust", "l2", "linf", "seconds")
AUTOATTACK_ATTACKS = ("apgd-ce", "apgd-dlr", "apgd-t", "fab", "fab-t", "square")


def threat_tolerance(norm: str, eps: float, dim: int) -> float:
    """How far beyond ``eps`` a point may lie and still count as inside the threat model.

    Points are float32: each stored coordinate of x + delta is off by at most half an ulp,
    2^-25 below 1, so a linf norm by 2^-25 and an l2 norm by at most 2^-25 sqrt(dim). We allow
    twice that, plus 1e-6 (1 + eps) for eps and the l2 scale factor held in float32: 4.7e-6 at
    MNIST's l2 eps 2, 4.8e-6 at CIFAR's l2 eps 0.5, 1.1e-6 at linf 8/255.
    """
    rounding = 2.0**-24 * (math.sqrt(dim) if norm == "l2" else 1.0)
    return rounding + 1e-6 * (1.0 + eps)


# --- settings ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Need:
    """What a setting accepts: ``test`` on the JSON value, ``says`` for the error, ``cast`` to
    the stored type."""

    test: Callable[[Any], bool]
    says: str
    cast: Callable[[Any], Any] = lambda value: value


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _one_of(*choices: str) -> _Need:
    return _Need(lambda v: isinstance(v, str) and v in choices, f"one of {', '.join(choices)}")


_INT = _Need(_is_int, "an integer")
_INT_0 = _Need(lambda v: _is_int(v) and v >= 0, "an integer >= 0")
_INT_1 = _Need(lambda v: _is_int(v) and v >= 1, "an integer >= 1")
_INT_2 = _Need(lambda v: _is_int(v) and v >= 2, "an integer >= 2")
_OPTIONAL_INT_1 = _Need(lambda v: v is None or (_is_int(v) and v >= 1), "null or an integer >= 1")
_NUMBER = _Need(_is_number, "a number", float)
_NUMBER_0 = _Need(lambda v: _is_number(v) and v >= 0, "a number >= 0", float)
_NUMBER_POSITIVE = _Need(lambda v: _is_number(v) and v > 0, "a number > 0", float)
_OPTIONAL_POSITIVE = _Need(
    lambda v: v is None or (_is_number(v) and v > 0),
    "null or a number > 0",
    lambda v: None if v is None else float(v),
)
_BOOL = _Need(lambda v: isinstance(v, bool), "true or false")
_NORM = _one_of(*NORMS)
_AUTOATTACK_LIST = _Need(
    lambda v: isinstance(v, list | tuple) and all(a in AUTOATTACK_ATTACKS for a in v),
    f"a list of names from {', '.join(AUTOATTACK_ATTACKS)}",
    tuple,
)


def _setting(default: Any = dataclasses.MISSING, *, need: _Need) -> Any:
    return field(default=default, metadata={"need": need})


# --- the registry ---------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class Attack:
    """Base class: subclasses add their settings as dataclass fields (``norm`` and ``eps``
    among them, for every kind with a threat model).

    ``perturb`` gets correctly classified (top ``top_k``) images [B, ...] in [0, 1] on the
    model's device, the model in eval mode with its parameters frozen (``attack_mode``), and
    torch's global RNG seeded by the runner; it returns one point per image, in [0, 1] and
    within the threat model.
    ``distribution`` names the installed package whose code runs the attack; ``minimal`` is
    True for minimum-distance attacks (``_Minimal``).
    """

    kind: ClassVar[str] = ""
    distribution: ClassVar[str] = "robustreg"
    minimal: ClassVar[bool] = False

    @property
    def threat(self) -> tuple[str, float] | None:
        """(norm, eps), or None for an attack that perturbs nothing."""
        return None

    @property
    def top_k(self) -> int:
        """Images count as correct and robust with the label among the top ``top_k`` logits:
        1 (the prediction) but for minimal attacks, where it is a setting. Not a setting here,
        so the other kinds' settings (and ``attack.json``) do not name it."""
        return 1

    def check(self, where: str) -> None:
        """One-line ValueErrors for settings that are each valid but do not go together."""

    def settings(self) -> dict:
        """The kind and every setting, as JSON holds them (lists for tuples)."""
        values = dataclasses.asdict(self)
        return {
            "kind": self.kind,
            **{k: list(v) if isinstance(v, tuple) else v for k, v in values.items()},
        }

    def library(self) -> dict[str, str]:
        return {
            "library": self.distribution,
            "library_version": importlib.metadata.version(self.distribution),
        }

    def perturb(self, model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
        raise NotImplementedError


@dataclass(frozen=True, kw_only=True)
class _Threat(Attack):
    """An attack within an l2 or linf ball of radius ``eps`` around the image."""

    norm: str = _setting(need=_NORM)
    eps: float = _setting(need=_NUMBER_0)

    @property
    def threat(self) -> tuple[str, float]:
        return self.norm, self.eps


@dataclass(frozen=True, kw_only=True)
class _Minimal(Attack):
    """A minimum-distance attack (Finlay & Oberman, section 4): per image the closest point
    it finds, in ``norm``, whose label is outside the model's top ``top_k`` (footnote 1:
    top-5 on ImageNet), or the clean image where it finds none. No eps: the threat model is
    (norm, inf), only the [0, 1] box is checked."""

    minimal: ClassVar[bool] = True
    norm: str = _setting(need=_NORM)
    top_k: int = _setting(1, need=_INT_1)

    @property
    def threat(self) -> tuple[str, float]:
        return self.norm, math.inf


REGISTRY: dict[str, type[Attack]] = {}


def register(cls: type[Attack]) -> type[Attack]:
    """Class decorator: make an attack buildable by its ``kind``."""
    if not cls.kind or cls.kind in REGISTRY:
        raise ValueError(f"attack kind missing or taken: {cls.kind!r}")
    REGISTRY[cls.kind] = cls
    return cls


def resolve_attack(spec: Mapping, name: str | None = None) -> dict:
    """``spec`` completed with its kind's defaults, numbers as floats: what ``attack.json``
    records. One-line ValueErrors name the attack and the unknown, missing or bad key
    (``name`` is the attack's name in the config; the kind stands in for it)."""
    return build_attack(spec, name).settings()


def build_attack(spec: Mapping, name: str | None = None) -> Attack:
    """The attack ``spec`` describes; the single entry point of the attack stage."""
    where = f"attack {name}" if name else "attack"
    if not isinstance(spec, Mapping):
        raise ValueError(f"{where}: need a mapping with a 'kind', got {spec!r}")
    kind = spec.get("kind")
    if kind is None:
        raise ValueError(f"{where}: missing key 'kind' (one of {', '.join(REGISTRY)})")
    if not isinstance(kind, str) or kind not in REGISTRY:
        raise ValueError(f"{where}.kind: unknown kind {kind!r} (known: {', '.join(REGISTRY)})")
    where = f"attack {name or kind}"
    cls = REGISTRY[kind]
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(spec) - set(fields) - {"kind"})
    if unknown:
        known = f"known: {', '.join(fields)}" if fields else "it takes none"
        raise ValueError(f"{where}: unknown key {unknown[0]!r} for kind {kind!r} ({known})")
    values = {}
    for key, f in fields.items():
        need: _Need = f.metadata["need"]
        if key in spec:
            value = spec[key]
            if not need.test(value):
                raise ValueError(f"{where}.{key}: need {need.says}, got {value!r}")
            values[key] = need.cast(value)
        elif f.default is not dataclasses.MISSING:
            values[key] = f.default
        else:
            raise ValueError(f"{where}: missing key {key!r} for kind {kind!r}")
    attack = cls(**values)
    attack.check(where)
    return attack


def _only(norm: str) -> _Need:
    return _Need(lambda v: v == norm, f"{norm!r} (the only norm of this attack)")


# --- the kinds ----------------------------------------------------------------------------------


@register
@dataclass(frozen=True, kw_only=True)
class NoAttack(Attack):
    """Benign accuracy: the clean image is the point."""

    kind: ClassVar[str] = "none"

    def perturb(self, model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
        return x


@register
@dataclass(frozen=True, kw_only=True)
class PGD(_Threat):
    """Our PGD (``robustreg.attacks.pgd``; Madry et al. 2018), random start by default; with
    restarts an image keeps the first restart's point that fools the model."""

    kind: ClassVar[str] = "pgd"
    steps: int = _setting(need=_INT_1)
    step_size: float = _setting(need=_NUMBER_POSITIVE)
    restarts: int = _setting(1, need=_INT_1)
    random_start: bool = _setting(True, need=_BOOL)

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


def _foolbox_model(model: nn.Module, x: Tensor):
    import foolbox

    return foolbox.PyTorchModel(model, bounds=(0.0, 1.0), device=x.device)


@register
@dataclass(frozen=True, kw_only=True)
class FoolboxPGD(_Threat):
    """Foolbox's ``LinfPGD`` / ``L2PGD`` with our PGD's settings (``abs_stepsize=step_size``):
    the reference our PGD is checked against."""

    kind: ClassVar[str] = "foolbox_pgd"
    distribution: ClassVar[str] = "foolbox"
    steps: int = _setting(need=_INT_1)
    step_size: float = _setting(need=_NUMBER_POSITIVE)
    random_start: bool = _setting(True, need=_BOOL)

    def perturb(self, model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
        from foolbox.attacks import L2PGD, LinfPGD

        cls = LinfPGD if self.norm == "linf" else L2PGD
        attack = cls(abs_stepsize=self.step_size, steps=self.steps, random_start=self.random_start)
        _, clipped, _ = attack(_foolbox_model(model, x), x, y, epsilons=self.eps)
        return clipped


def _fooling(x: Tensor, points: Tensor, fooled: Tensor) -> Tensor:
    """``points`` where ``fooled``, else the clean images."""
    return torch.where(fooled.view(-1, *([1] * (x.dim() - 1))), points, x)


@dataclass(frozen=True, kw_only=True)
class _CarliniWagnerSettings:
    """The settings of Foolbox's ``L2CarliniWagnerAttack`` (Carlini & Wagner 2017), shared by
    ``cw_l2`` and ``cw_l2_min``. Defaults are Foolbox 3.3.4's: 9 binary search steps of 10000
    Adam steps of size 0.01, confidence 0, initial constant 0.001 (and its ``abort_early``)."""

    binary_search_steps: int = _setting(9, need=_INT_1)
    steps: int = _setting(10000, need=_INT_1)
    stepsize: float = _setting(0.01, need=_NUMBER_POSITIVE)
    confidence: float = _setting(0.0, need=_NUMBER_0)
    initial_const: float = _setting(0.001, need=_NUMBER_POSITIVE)

    def _foolbox_attack(self):
        from foolbox.attacks import L2CarliniWagnerAttack

        return L2CarliniWagnerAttack(
            binary_search_steps=self.binary_search_steps,
            steps=self.steps,
            stepsize=self.stepsize,
            confidence=self.confidence,
            initial_const=self.initial_const,
        )


@register
@dataclass(frozen=True, kw_only=True)
class CarliniWagnerL2(_CarliniWagnerSettings, _Threat):
    """Foolbox's ``L2CarliniWagnerAttack``, a minimum-norm attack cut to the eps ball
    (``epsilons=eps``), with ``_CarliniWagnerSettings``."""

    kind: ClassVar[str] = "cw_l2"
    distribution: ClassVar[str] = "foolbox"
    norm: str = _setting("l2", need=_only("l2"))

    def perturb(self, model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
        attack = self._foolbox_attack()
        _, clipped, success = attack(_foolbox_model(model, x), x, y, epsilons=self.eps)
        return _fooling(x, clipped, success)


@register
@dataclass(frozen=True, kw_only=True)
class DeepFoolLinf(_Threat):
    """Foolbox's ``LinfDeepFoolAttack`` (Moosavi-Dezfooli et al. 2016), a minimum-norm attack
    cut to the eps ball. Defaults are Foolbox's: 50 steps, the top 10 classes, overshoot 0.02."""

    kind: ClassVar[str] = "deepfool_linf"
    distribution: ClassVar[str] = "foolbox"
    norm: str = _setting("linf", need=_only("linf"))
    steps: int = _setting(50, need=_INT_1)
    candidates: int = _setting(10, need=_INT_2)
    overshoot: float = _setting(0.02, need=_NUMBER_0)

    def perturb(self, model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
        from foolbox.attacks import LinfDeepFoolAttack

        attack = LinfDeepFoolAttack(
            steps=self.steps, candidates=self.candidates, overshoot=self.overshoot
        )
        _, clipped, success = attack(_foolbox_model(model, x), x, y, epsilons=self.eps)
        return _fooling(x, clipped, success)


@contextlib.contextmanager
def _current_device(device: torch.device) -> Iterator[None]:
    # ART and AutoAttack work on "the current GPU": make it ours, not GPU 0.
    if device.type == "cuda":
        with torch.cuda.device(device):
            yield
    else:
        yield


@register
@dataclass(frozen=True, kw_only=True)
class CarliniWagnerLinf(_Threat):
    """ART's ``CarliniLInfMethod`` (Carlini & Wagner 2017's linf attack, shrinking tau): a
    minimum-norm attack, its point clipped into the eps ball and kept only if it then fools the
    model. Defaults are ART 1.20.1's: confidence 0, learning rate 0.01, 10 Adam iterations per
    (tau, c), c from 1e-5 up to 20 by factors of 2, tau shrinking by 0.9 from 1 to 1/256. ART
    attacks one image at a time: at these defaults an image it breaks costs up to 53 x 21 x 10
    Adam iterations of a few forward and backward passes each."""

    kind: ClassVar[str] = "cw_linf"
    distribution: ClassVar[str] = "adversarial-robustness-toolbox"
    norm: str = _setting("linf", need=_only("linf"))
    confidence: float = _setting(0.0, need=_NUMBER_0)
    learning_rate: float = _setting(0.01, need=_NUMBER_POSITIVE)
    max_iter: int = _setting(10, need=_INT_1)
    initial_const: float = _setting(1e-5, need=_NUMBER_POSITIVE)
    largest_const: float = _setting(20.0, need=_NUMBER_POSITIVE)
    const_factor: float = _setting(
        2.0, need=_Need(lambda v: _is_number(v) and v > 1, "a number > 1", float)
    )
    decrease_factor: float = _setting(
        0.9, need=_Need(lambda v: _is_number(v) and 0 < v < 1, "a number in (0, 1)", float)
    )

    def perturb(self, model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
        from art.attacks.evasion import CarliniLInfMethod
        from art.estimators.classification import PyTorchClassifier

        with _current_device(x.device):
            with torch.no_grad():
                classes = model(x[:1]).shape[1]
            classifier = PyTorchClassifier(
                model=model,
                loss=nn.CrossEntropyLoss(),
                input_shape=tuple(x.shape[1:]),
                nb_classes=classes,
                clip_values=(0.0, 1.0),
                device_type="gpu" if x.device.type == "cuda" else "cpu",
            )
            attack = CarliniLInfMethod(
                classifier,
                confidence=self.confidence,
                learning_rate=self.learning_rate,
                max_iter=self.max_iter,
                initial_const=self.initial_const,
                largest_const=self.largest_const,
                const_factor=self.const_factor,
                decrease_factor=self.decrease_factor,
                batch_size=x.shape[0],
                verbose=False,
            )
            found = attack.generate(x.cpu().numpy(), y.cpu().numpy())
        points = project(x, torch.from_numpy(found).to(x), "linf", self.eps)
        with torch.no_grad():
            fooled = model(points).argmax(1) != y
        return _fooling(x, points, fooled)


@register
@dataclass(frozen=True, kw_only=True)
class AutoAttackSuite(_Threat):
    """Croce & Hein's AutoAttack (``pyautoattack``). ``version`` standard (APGD-CE, APGD-T,
    FAB-T, Square), plus, rand, or custom with ``attacks`` (and optionally ``n_iter``, the
    iterations of APGD and FAB, default 100). Seeded from torch's RNG, which the runner seeds
    per batch."""

    kind: ClassVar[str] = "autoattack"
    distribution: ClassVar[str] = "pyautoattack"
    version: str = _setting("standard", need=_one_of("standard", "plus", "rand", "custom"))
    attacks: tuple[str, ...] = _setting((), need=_AUTOATTACK_LIST)
    n_iter: int | None = _setting(None, need=_OPTIONAL_INT_1)

    def check(self, where: str) -> None:
        if self.version == "custom" and not self.attacks:
            raise ValueError(f"{where}.attacks: version custom needs a non-empty list")
        if self.version != "custom" and (self.attacks or self.n_iter is not None):
            key = "attacks" if self.attacks else "n_iter"
            raise ValueError(f"{where}.{key}: only version custom takes it")

    def perturb(self, model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
        from pyautoattack import AutoAttack

        seed = int(torch.randint(0, 2**31 - 1, ()).item())
        custom = list(self.attacks) if self.version == "custom" else None
        with _current_device(x.device):
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


@register
@dataclass(frozen=True, kw_only=True)
class ATENT(_Threat):
    """ATENT's Langevin sampler as an attack (appendix A.3, Table 6; ``robustreg.attacks.atent``):
    the PGD-20 configuration plus Gaussian noise of scale ``noise * sqrt(2 step_size)``."""

    kind: ClassVar[str] = "atent"
    steps: int = _setting(need=_INT_1)
    step_size: float = _setting(need=_NUMBER_POSITIVE)
    noise: float = _setting(0.001, need=_NUMBER_0)

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


# --- minimum-distance attacks (Finlay & Oberman, section 4) -------------------------------------
# The paper states no attack settings; the defaults below are ours, each justified.


@register
@dataclass(frozen=True, kw_only=True)
class PGDMin(_Minimal):
    """PGD as a minimum-distance attack (``min_distance.pgd_min_distance``): PGD on the
    modified Carlini-Wagner loss (section 2.2, top-k by footnote 1) at ``eps_max``, then
    ``search_steps`` bisection steps per image over eps in [0, eps_max].

    ``eps_max`` has no default: the range worth searching depends on the data and the norm
    (Table 1 reads linf errors at 2/255 and 8/255; Table 2's mean l2 distances run from 0.12
    to 1.75). It bounds the distances found: an image PGD does not break at eps_max counts as
    not found, so for a mean distance eps_max must exceed nearly every image's. The bisection
    resolves distances to eps_max / 2^search_steps (default 10 steps: 0.1% of eps_max).
    ``steps`` 20 per radius with step size ``step_ratio * eps``, ``step_ratio`` default (null)
    Madry et al.'s 2.5 / steps, so the steps can cross the ball; one restart, random start."""

    kind: ClassVar[str] = "pgd_min"
    eps_max: float = _setting(need=_NUMBER_POSITIVE)
    search_steps: int = _setting(10, need=_INT_0)
    steps: int = _setting(20, need=_INT_1)
    step_ratio: float | None = _setting(None, need=_OPTIONAL_POSITIVE)
    restarts: int = _setting(1, need=_INT_1)

    def __post_init__(self) -> None:
        if self.step_ratio is None:  # recorded as the number it stands for
            object.__setattr__(self, "step_ratio", MADRY_STEP_RATIO / self.steps)

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


@register
@dataclass(frozen=True, kw_only=True)
class CarliniWagnerL2Min(_CarliniWagnerSettings, _Minimal):
    """Foolbox's ``L2CarliniWagnerAttack`` uncut (``epsilons=None``): per image the closest
    adversarial point of its search, with ``cw_l2``'s settings and defaults
    (``_CarliniWagnerSettings``). Foolbox's CW knows only top-1 misclassification (it needs
    its own ``Misclassification`` criterion), so top_k must be 1."""

    kind: ClassVar[str] = "cw_l2_min"
    distribution: ClassVar[str] = "foolbox"
    norm: str = _setting("l2", need=_only("l2"))

    def check(self, where: str) -> None:
        if self.top_k != 1:
            raise ValueError(
                f"{where}.top_k: Foolbox's Carlini-Wagner attack is top-1 only, got {self.top_k}"
            )

    def perturb(self, model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
        # where it finds nothing Foolbox returns zeros, which success marks as not adversarial
        found, _, success = self._foolbox_attack()(_foolbox_model(model, x), x, y, epsilons=None)
        return _fooling(x, found, success)


@register
@dataclass(frozen=True, kw_only=True)
class BoundaryMin(_Minimal):
    """Foolbox's ``BoundaryAttack`` (Brendel et al. 2018), the suite's gradient-free l2 attack,
    with ``min_distance.TopKMisclassification`` as its criterion.

    It starts from Foolbox's own fallback, ``LinearSearchBlendedUniformNoiseAttack(steps=50)``
    (up to 1000 uniform noise images, then the closest adversarial blend with the clean image),
    which draws from torch's global RNG, seeded by the runner; an image with no adversarial
    start counts as not found. Foolbox draws one Gaussian direction per step for the whole
    batch, so an image's result depends on its batch (and so on the batch size).
    ``steps`` default 5000 where Foolbox's is 25000: each step costs one batched forward pass
    (two every 10th), and 5000 keeps the attack's cost of the order of the others'; the step
    settings are Foolbox's defaults (spherical and source steps 0.01, adapted by a factor
    1.5)."""

    kind: ClassVar[str] = "boundary_min"
    distribution: ClassVar[str] = "foolbox"
    norm: str = _setting("l2", need=_only("l2"))
    steps: int = _setting(5000, need=_INT_1)
    spherical_step: float = _setting(0.01, need=_NUMBER_POSITIVE)
    source_step: float = _setting(0.01, need=_NUMBER_POSITIVE)
    step_adaptation: float = _setting(
        1.5, need=_Need(lambda v: _is_number(v) and v > 1, "a number > 1", float)
    )

    def perturb(self, model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
        import warnings

        from foolbox.attacks import BoundaryAttack, LinearSearchBlendedUniformNoiseAttack

        fmodel = _foolbox_model(model, x)
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
            points[idx] = _fooling(x[idx], found, success)
        return points


@register
@dataclass(frozen=True, kw_only=True)
class LogBarrierAttack(_Minimal):
    """Our LogBarrier attack (Finlay, Pooladian & Oberman 2019; ``attacks.logbarrier``), the
    suite's non-local attack, in l2 or linf, top-k. Its settings and their defaults are the
    authors' (cfinlay/logbarrier, the same for both norms): step ``dt`` 0.01, barrier weight
    ``alpha`` 0.1 shrunk by ``beta`` 0.75 over ``max_outer`` 15 rounds of at most ``max_inner``
    500 steps (stopped at a step below ``tol`` 1e-6), backtracking ``gamma`` 0.5, linf smooth
    max temperature ``T`` 500, Gaussian start ``init_scale`` 0.01 grown by ``init_growth``
    1.01 over up to ``init_tries`` 1000 draws (torch's global RNG, seeded by the runner).
    Ranges are checked by ``attacks.logbarrier``'s own settings."""

    kind: ClassVar[str] = "logbarrier"
    dt: float = _setting(0.01, need=_NUMBER)
    alpha: float = _setting(0.1, need=_NUMBER)
    beta: float = _setting(0.75, need=_NUMBER)
    gamma: float = _setting(0.5, need=_NUMBER)
    max_outer: int = _setting(15, need=_INT)
    max_inner: int = _setting(500, need=_INT)
    tol: float = _setting(1e-6, need=_NUMBER)
    T: float = _setting(500.0, need=_NUMBER)
    init_scale: float = _setting(0.01, need=_NUMBER)
    init_growth: float = _setting(1.01, need=_NUMBER)
    init_tries: int = _setting(1000, need=_INT)

    def check(self, where: str) -> None:
        try:
            LogBarrierSettings(**dataclasses.asdict(self))
        except ValueError as err:  # "key: must be ...", about one of our fields
            raise ValueError(f"{where}.{err}") from None

    def perturb(self, model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
        points, _ = logbarrier(model, x, y, **dataclasses.asdict(self))
        return points


# --- the runner ---------------------------------------------------------------------------------


@contextlib.contextmanager
def attack_mode(model: nn.Module, device: torch.device | str) -> Iterator[nn.Module]:
    """The model on ``device`` in eval mode, parameters frozen, for the duration; restored after.

    Frozen because Foolbox and ART take input gradients with ``backward()``, which would
    otherwise compute (and accumulate) every weight's gradient as well.
    """
    from robustreg.smoothing import _prepared

    flags = [(p, p.requires_grad) for p in model.parameters()]
    with _prepared(model, torch.device(device), channels_last=False):
        try:
            for p, _ in flags:
                p.requires_grad_(False)
            yield model
        finally:
            for p, flag in flags:
                p.requires_grad_(flag)


def _batch_seed(seed: int, index: int) -> int:
    """Torch's seed for the batch whose first image is at dataset position ``index``."""
    state = np.random.SeedSequence([int(seed), int(index)]).generate_state(1, dtype=np.uint64)
    return int(state[0])


@contextlib.contextmanager
def _seeded(seed: int, device: torch.device) -> Iterator[None]:
    """Torch's global RNG (CPU, and ``device``'s when a GPU) seeded for the duration, then
    restored, so that attacks drawing from it (ours, Foolbox's random starts) repeat."""
    cuda = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=cuda, device_type="cuda"), _current_device(device):
        torch.random.default_generator.manual_seed(seed)
        if cuda:
            torch.cuda.manual_seed(seed)
        yield


def _inside(x: Tensor, points: Tensor, threat: tuple[str, float]) -> Tensor:
    """Which points lie in [0, 1] and within the threat model (tolerance included)."""
    in_box = (points >= 0).flatten(1).all(1) & (points <= 1).flatten(1).all(1)
    norm, eps = threat
    diff = (points.double() - x.double()).flatten(1)
    size = diff.abs().amax(1) if norm == "linf" else diff.norm(dim=1)
    return in_box & (size <= eps + threat_tolerance(norm, eps, diff.shape[1]))


def _attack_batch(
    model: nn.Module, attack: Attack, x: Tensor, y: Tensor, seed: int
) -> tuple[dict[str, Tensor], Tensor]:
    """Outcomes of one batch on the model's device, and the points kept."""
    with torch.no_grad():
        logits = model(x)
    classes = logits.shape[1]
    if attack.top_k >= classes:
        raise ValueError(
            f"attack {attack.kind}.top_k: must be below the model's {classes} classes, "
            f"got {attack.top_k}"
        )
    clean = logits.argmax(1)
    correct = in_top_k(logits, y, attack.top_k)
    robust = correct
    kept = x.clone()
    adversarial = clean.clone()
    if attack.threat is not None and bool(correct.any()):
        with _seeded(seed, x.device):
            points = attack.perturb(model, x[correct], y[correct]).detach().to(x.dtype)
        inside = _inside(x[correct], points, attack.threat)
        if not bool(inside.all()):
            print(
                f"{attack.kind}: {int((~inside).sum())} points outside [0, 1] or the threat "
                "model; their images count as not broken",
                file=sys.stderr,
            )
            points[~inside] = x[correct][~inside]
        kept[correct] = points
        with torch.no_grad():
            logits = model(kept)
        adversarial = torch.where(correct, logits.argmax(1), clean)
        robust = correct & in_top_k(logits, y, attack.top_k)
        if attack.minimal:
            # a minimal attack's row is a distance only where the point is adversarial
            kept[robust] = x[robust]
            adversarial = torch.where(robust, clean, adversarial)
    diff = (kept.double() - x.double()).flatten(1)
    outcome = {
        "clean": clean,
        "adversarial": adversarial,
        "robust": robust.long(),
        "l2": diff.norm(dim=1),
        "linf": diff.abs().amax(1),
    }
    return outcome, kept


def _as_unit_float(images: Tensor) -> Tensor:
    if images.dtype == torch.uint8:
        return images.float().div_(255.0)
    if not images.is_floating_point():
        raise TypeError(f"images must be uint8 or float, got {images.dtype}")
    return images.float()


def run_attack(
    model: nn.Module,
    x: Tensor | np.ndarray,
    y: Sequence[int] | Tensor | np.ndarray,
    attack: Attack,
    *,
    batch_size: int,
    seed: int,
    device: torch.device | str,
    progress: bool = True,
    indices: Sequence[int] | np.ndarray | None = None,
    done: Mapping[str, np.ndarray] | None = None,
    on_batch: Callable[[dict[str, np.ndarray]], None] | None = None,
    return_points: bool = False,
) -> dict[str, np.ndarray]:
    """Per-image outcomes of ``attack`` on ``model``: the attack stage of the ATENT tables.

    ``x`` [N, C, H, W] uint8 or float in [0, 1] (CPU), ``y`` its labels, ``indices`` the images'
    dataset positions (default 0..N-1). The model runs in eval mode on ``device``
    (``attack_mode``). Images go through in batches, always the same slices of ``x``; an image
    the model already misclassifies is not attacked. Torch's RNG is seeded per batch from
    (``seed``, dataset position of the batch's first image) and restored after, so a batch's
    outcomes do not depend on the batches before it.

    Resuming as in ``robustreg.smoothing.certify_counts``: ``done`` holds an earlier run's
    outcomes (this function's keys) for any images; a batch it covers entirely is taken from it,
    any other batch is attacked. ``on_batch`` gets each newly attacked batch's outcomes as soon
    as they are known.

    Returns numpy arrays, one row per image: idx, label, clean (clean prediction), adversarial
    (prediction at the kept point, = clean where nothing was attacked), robust (1 if the label
    is among the ``attack.top_k`` largest logits at both; for top_k = 1 both predictions are
    the label), l2 and linf (norms of kept point - x, float64), seconds (the batch's wall time
    shared evenly). A minimal attack's rows read as the module docstring says.
    ``return_points`` adds ``points`` [N, C, H, W] float32, the kept points (only without
    ``done``).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if return_points and done is not None:
        raise ValueError("return_points needs every batch attacked: pass no done")
    images = torch.as_tensor(x)
    device = indexed_device(device)
    num = images.shape[0]
    idx, label = image_ids(num, indices, y)
    result = {
        "idx": idx,
        "label": label,
        **{key: np.zeros(num, dtype=np.int64) for key in ("clean", "adversarial", "robust")},
        **{key: np.zeros(num, dtype=np.float64) for key in ("l2", "linf", "seconds")},
    }
    known = _fill_done(result, done) if done is not None else np.zeros(num, dtype=bool)
    batches = [(a, min(a + batch_size, num)) for a in range(0, num, batch_size)]
    todo = [(a, b) for a, b in batches if not known[a:b].all()]
    points = np.zeros((num, *images.shape[1:]), dtype=np.float32) if return_points else None
    initial = num - sum(b - a for a, b in todo)
    bar = tqdm(total=num, initial=initial, disable=not progress, file=sys.stderr, unit="img")
    with bar, attack_mode(model, device):
        for start, stop in todo:
            t0 = time.perf_counter()
            batch = _as_unit_float(images[start:stop]).to(device)
            labels = torch.as_tensor(label[start:stop], device=device)
            outcome, kept = _attack_batch(
                model, attack, batch, labels, _batch_seed(seed, idx[start])
            )
            for key, value in outcome.items():
                result[key][start:stop] = value.cpu().numpy()
            if points is not None:
                points[start:stop] = kept.cpu().numpy()
            # .cpu() waited for the device, so this is the batch's real wall time
            result["seconds"][start:stop] = (time.perf_counter() - t0) / (stop - start)
            if on_batch is not None:
                on_batch({key: value[start:stop].copy() for key, value in result.items()})
            bar.update(stop - start)
    if points is not None:
        result["points"] = points
    return result


def _fill_done(result: dict[str, np.ndarray], done: Mapping[str, np.ndarray]) -> np.ndarray:
    """Copy ``done``'s rows into ``result`` by image index; which images it covered."""
    row_of = {int(i): row for row, i in enumerate(np.asarray(done["idx"]).reshape(-1))}
    rows = np.array([row_of.get(int(i), -1) for i in result["idx"]], dtype=np.int64)
    known = rows >= 0
    if not known.any():
        return known
    if not np.array_equal(np.asarray(done["label"])[rows[known]], result["label"][known]):
        raise ValueError("earlier results give other labels for the same image indices")
    for key in _RESULT_KEYS[2:]:
        result[key][known] = np.asarray(done[key])[rows[known]]
    return known


# --- files ----------------------------------------------------------------------------------------


class OutcomeLog(ResumableLog):
    """Per-image outcomes appended batch by batch, so that a killed attack job resumes: the
    attack stage's counterpart of ``robustreg.smoothing.ProgressLog``, both a
    ``robustreg.io.ResumableLog`` (same behaviour, other records).

    JSON lines: first ``{"identity": ...}``, naming everything the outcomes depend on, then one
    object per image with ``run_attack``'s keys. ``resume`` returns the earlier run's complete
    images for ``run_attack(done=...)``; given an ``Expected``, only those of selected images
    with their labels and predictions among the model's classes. ``append`` is its
    ``on_batch``; ``remove`` once the outcome log is written.
    """

    FORMAT = "robustreg-attack-progress/1"
    KEYS = _RESULT_KEYS
    DONE, DOING = "attacked", "attacking"

    def _encode(self, row: Sequence) -> dict:
        return _record(row)

    def _check(self, record: object, previous: dict | None) -> None:
        _check_record(record)

    def _misfit(self, record: dict, expected: Expected) -> str | None:
        why = super()._misfit(record, expected)
        if why is None and not all(
            0 <= record[key] < expected.num_classes for key in ("clean", "adversarial")
        ):
            why = f"a prediction outside the model's {expected.num_classes} classes"
        return why


def _record(row: Sequence) -> dict:
    return {
        key: int(value) if key in _INT_COLUMNS else float(value)
        for key, value in zip(_RESULT_KEYS, row, strict=True)
    }


def _check_record(record: object) -> None:
    if not isinstance(record, dict) or sorted(record) != sorted(_RESULT_KEYS):
        raise ValueError("not an image record")
    if not all(_is_int(record[key]) for key in _INT_COLUMNS) or record["robust"] not in (0, 1):
        raise ValueError("idx, label, clean, adversarial and robust must be integers")
    if not all(_is_number(record[key]) and record[key] >= 0 for key in ("l2", "linf", "seconds")):
        raise ValueError("l2, linf and seconds must be numbers >= 0")


def write_outcomes(path: str | os.PathLike, result: Mapping[str, np.ndarray]) -> None:
    """The outcome log: tab-separated ``OUTCOME_COLUMNS``, one row per image, floats written
    with ``repr`` (they read back exactly), time as certify.tsv's str(datetime.timedelta)."""
    lines = ["\t".join(OUTCOME_COLUMNS)]
    for row in zip(*(result[key] for key in _RESULT_KEYS), strict=True):
        *ints, l2, linf, seconds = row
        elapsed = str(datetime.timedelta(seconds=float(seconds)))
        fields = [str(int(v)) for v in ints] + [repr(float(l2)), repr(float(linf)), elapsed]
        lines.append("\t".join(fields))
    write_text_atomic(path, "\n".join(lines) + "\n")


def read_outcomes(path: str | os.PathLike) -> pd.DataFrame:
    """An outcome log as a frame: ``OUTCOME_COLUMNS``, the integers as int64, l2, linf and time
    (seconds) as float64. One-line ValueErrors name the file (and the column)."""
    from robustreg.certify import _parse_seconds

    name = os.fspath(path)
    try:
        frame = pd.read_csv(name, sep="\t", dtype=str, keep_default_na=False)
    except OSError as err:
        reason = err.strerror or type(err).__name__
        raise ValueError(f"{name}: not a readable attack outcome log ({reason})") from None
    except UnicodeDecodeError:
        raise ValueError(f"{name}: not a readable attack outcome log (not UTF-8 text)") from None
    except (pd.errors.ParserError, pd.errors.EmptyDataError) as err:
        # pandas says where the table breaks (line, number of fields), not what the line holds
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ValueError(f"{name}: not a readable attack outcome log ({reason})") from None
    missing = [c for c in OUTCOME_COLUMNS if c not in frame.columns]
    if missing:
        raise ValueError(
            f"{name}: missing columns {', '.join(missing)} "
            f"(an outcome log has {' '.join(OUTCOME_COLUMNS)})"
        )
    columns = {}
    for column in OUTCOME_COLUMNS:
        try:
            if column in _INT_COLUMNS:
                columns[column] = frame[column].astype(np.int64)
            elif column in _FLOAT_COLUMNS:
                columns[column] = frame[column].astype(np.float64)
            else:
                columns[column] = frame[column].map(_parse_seconds).astype(np.float64)
        except ValueError:
            raise ValueError(
                f"{name}: column {column!r} holds a value that is not a number"
            ) from None
    if not columns["robust"].isin([0, 1]).all():
        raise ValueError(f"{name}: column 'robust' must be 0 or 1")
    return pd.DataFrame(columns)
