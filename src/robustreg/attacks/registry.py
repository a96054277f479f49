"""The attack kinds: each kind's name and declared settings, torch-free, so that planning
resolves every attack job's settings (and so its id) without importing torch or any attack
library (issue 19).

Tables 1-6 of the ATENT paper (Jagatap et al., section 4 and appendix A) report robust accuracy
under PGD, Carlini-Wagner (l2 and linf), DeepFool and ATENT attacks, run with Foolbox and the
Adversarial Robustness Toolbox (section 4, "Attacks"); AutoAttack (Croce & Hein 2020) is
added as the reference evaluation. Finlay & Oberman's tables (section 4) report per-image
minimum adversarial distances from a suite of minimum-distance ("minimal") attacks:
Carlini-Wagner, Boundary, LogBarrier and PGD (``pgd_min``, ``cw_l2_min``, ``boundary_min``,
``logbarrier``; ``robustreg.attacks.min_distance``).

A kind is declared here as a frozen dataclass whose fields are its settings (``setting``, from
``robustreg.settings``), registered under its ``kind`` (``REGISTRY``, the one list of
the allowed names). ``resolve_attack`` reads a dict such as ``{"kind": "pgd", "norm": "l2",
"eps": 2.0, "steps": 40, "step_size": 0.25, "restarts": 10}`` against it. The code that runs a
kind is a subclass of its declaration adding ``perturb`` (``implements``), in the module of the
library it runs on (``IMPLEMENTED_IN``): ``robustreg.attacks.ours`` for our attacks,
``robustreg.attacks.adapters.*`` for Foolbox's, ART's and AutoAttack's. ``build_attack``
imports that one module, so an attack job imports torch and its own library only.

Every attack but ``none`` and the minimal ones has a threat model, ``norm`` (l2 or linf) and
``eps``, in [0, 1] pixel units. ``Attack.perturb`` returns one point per image, in [0, 1] and
within the threat model up to ``threat_tolerance``; minimum-norm attacks (CW, DeepFool) are
cut to the threat model as Foolbox's ``epsilons=`` does (the perturbation is scaled or clipped
into the eps ball, and the image counts as broken only if that point fools the model) and
return the clean image where that point does not fool the model. The runner
(``robustreg.attacks.runner``) checks each point again and keeps the clean image in place of
any point outside the threat model, so a broken image is always broken by a point inside it.

Minimal attacks (``Attack.minimal``) have a ``norm`` and a ``top_k`` (default 1) but no eps:
their threat model is (norm, inf), so the runner checks only that a point lies in [0, 1].
``perturb`` returns, per image, the closest adversarial point the attack found (closest in its
``norm``), or the clean image where it found none. "Correct" and "robust" are top-k (Finlay &
Oberman's ImageNet rows are top-5, footnote 1): an image is attacked if its label is among the
``top_k`` largest clean logits, and is robust if its label is also among the ``top_k`` largest
logits at the point kept (every other kind has top_k = 1: the prediction).
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.metadata
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from robustreg.attacks.threat import NORMS
from robustreg.settings import (
    BOOL,
    INT,
    INT_0,
    INT_1,
    INT_2,
    NORM,
    NUMBER,
    NUMBER_0,
    NUMBER_POSITIVE,
    OPTIONAL_INT_1,
    OPTIONAL_POSITIVE,
    Need,
    is_int,
    is_number,
    one_of,
    only,
    read_settings,
    setting,
)

if TYPE_CHECKING:
    from torch import Tensor, nn

__all__ = [
    "AUTOATTACK_ATTACKS",
    "IMPLEMENTED_IN",
    "MADRY_STEP_RATIO",
    "REGISTRY",
    "ATENTSettings",
    "Attack",
    "AutoAttackSettings",
    "BoundarySettings",
    "CarliniWagnerL2MinSettings",
    "CarliniWagnerL2Settings",
    "CarliniWagnerLinfSettings",
    "DeepFoolLinfSettings",
    "FoolboxPGDSettings",
    "LogBarrierConfig",
    "LogBarrierSettings",
    "NoAttackSettings",
    "PGDMinSettings",
    "PGDSettings",
    "build_attack",
    "implementation",
    "implements",
    "register",
    "resolve_attack",
]

AUTOATTACK_ATTACKS = ("apgd-ce", "apgd-dlr", "apgd-t", "fab", "fab-t", "square")
# Madry et al.'s step size 2.5 eps / steps: the steps together can cross the ball's diameter
# with room to spare, so PGD can reach any point of the ball from any random start.
MADRY_STEP_RATIO = 2.5

# The module holding the kinds each library runs (``Attack.distribution``), imported only when
# one of them is built.
IMPLEMENTED_IN = {
    "robustreg": "robustreg.attacks.ours",
    "foolbox": "robustreg.attacks.adapters.foolbox",
    "adversarial-robustness-toolbox": "robustreg.attacks.adapters.art",
    "pyautoattack": "robustreg.attacks.adapters.autoattack",
}


@dataclass(frozen=True, kw_only=True)
class Attack:
    """Base class: subclasses add their settings as dataclass fields (``norm`` and ``eps``
    among them, for every kind with a threat model).

    ``perturb`` gets correctly classified (top ``top_k``) images [B, ...] in [0, 1] on the
    model's device, the model in eval mode with its parameters frozen
    (``robustreg.attacks.runner.attack_mode``), and torch's global RNG seeded by the runner; it
    returns one point per image, in [0, 1] and within the threat model.
    ``distribution`` names the installed package whose code runs the attack; ``minimal`` is
    True for minimum-distance attacks (``_Minimal``). ``revision`` counts the changes to what a
    kind's points mean with the same settings: above 1 it is part of its jobs' ids
    (``robustreg.plan``), so that outcomes of the earlier code are computed again, not reused.
    """

    kind: ClassVar[str] = ""
    distribution: ClassVar[str] = "robustreg"
    minimal: ClassVar[bool] = False
    revision: ClassVar[int] = 1
    # distribution version -> the source it repackages, where that is not its own authors'
    upstream: ClassVar[dict[str, str]] = {}

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
        """The package that runs the attack and its version, and the code it repackages
        where that is known (``upstream``): what attack.json records."""
        version = importlib.metadata.version(self.distribution)
        record = {"library": self.distribution, "library_version": version}
        if version in self.upstream:
            record["upstream"] = self.upstream[version]
        return record

    def perturb(self, model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
        """The kind's points (see above): run by the subclass in its library's module
        (``implements``), which ``build_attack`` returns."""
        raise NotImplementedError(f"attack {self.kind}: only build_attack's attacks run")

    def perturb_parts(self, model: nn.Module, x: Tensor, y: Tensor) -> tuple[Tensor, list | None]:
        """``perturb``'s points, and for a kind made of several attacks (AutoAttack's cascade)
        the name of the part whose point each image got ("" where none broke it); None for a
        kind of one part."""
        return self.perturb(model, x, y), None


@dataclass(frozen=True, kw_only=True)
class _Threat(Attack):
    """An attack within an l2 or linf ball of radius ``eps`` around the image."""

    norm: str = setting(need=NORM)
    eps: float = setting(need=NUMBER_0)

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
    norm: str = setting(need=NORM)
    top_k: int = setting(1, need=INT_1)

    @property
    def threat(self) -> tuple[str, float]:
        return self.norm, math.inf


REGISTRY: dict[str, type[Attack]] = {}
_IMPLEMENTATIONS: dict[str, type[Attack]] = {}


def register(cls: type[Attack]) -> type[Attack]:
    """Class decorator: declare an attack kind, buildable by its ``kind``."""
    if not cls.kind or cls.kind in REGISTRY:
        raise ValueError(f"attack kind missing or taken: {cls.kind!r}")
    REGISTRY[cls.kind] = cls
    return cls


def implements(cls: type[Attack]) -> type[Attack]:
    """Class decorator: ``cls``, a subclass of a registered declaration adding ``perturb``, is
    the code that runs that kind."""
    declared = REGISTRY.get(cls.kind)
    if declared is None or cls is declared or not issubclass(cls, declared):
        raise ValueError(f"{cls.__name__}: not a subclass of a declared attack kind")
    if cls.kind in _IMPLEMENTATIONS:
        raise ValueError(f"attack kind {cls.kind!r}: implemented twice")
    _IMPLEMENTATIONS[cls.kind] = cls
    return cls


def implementation(kind: str) -> type[Attack]:
    """The class that runs ``kind``, its library's module (``IMPLEMENTED_IN``) imported."""
    importlib.import_module(IMPLEMENTED_IN[REGISTRY[kind].distribution])
    return _IMPLEMENTATIONS[kind]


def resolve_attack(spec: Mapping, name: str | None = None) -> dict:
    """``spec`` completed with its kind's defaults, numbers as floats: what ``attack.json``
    records. One-line ValueErrors name the attack and the unknown, missing or bad key
    (``name`` is the attack's name in the config; the kind stands in for it)."""
    attack, _ = _declared(spec, name)
    return attack.settings()


def build_attack(spec: Mapping, name: str | None = None) -> Attack:
    """The attack ``spec`` describes, ready to run; the single entry point of the attack
    stage. Its settings are checked before its library is imported."""
    attack, values = _declared(spec, name)
    return implementation(attack.kind)(**values)


def _declared(spec: Mapping, name: str | None) -> tuple[Attack, dict[str, Any]]:
    """The declaration ``spec`` describes, checked, and its settings' values."""
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
    values = read_settings(cls, spec, where, of=f" for kind {kind!r}", ignore=("kind",))
    attack = cls(**values)
    attack.check(where)
    return attack, values


# --- the kinds ----------------------------------------------------------------------------------


@register
@dataclass(frozen=True, kw_only=True)
class NoAttackSettings(Attack):
    """Benign accuracy: the clean image is the point."""

    kind: ClassVar[str] = "none"


@register
@dataclass(frozen=True, kw_only=True)
class PGDSettings(_Threat):
    """Our PGD (``robustreg.attacks.pgd``; Madry et al. 2018), random start by default; with
    restarts an image keeps the first restart's point that fools the model."""

    kind: ClassVar[str] = "pgd"
    steps: int = setting(need=INT_1)
    step_size: float = setting(need=NUMBER_POSITIVE)
    restarts: int = setting(1, need=INT_1)
    random_start: bool = setting(True, need=BOOL)


@register
@dataclass(frozen=True, kw_only=True)
class FoolboxPGDSettings(_Threat):
    """Foolbox's ``LinfPGD`` / ``L2PGD`` with our PGD's settings (``abs_stepsize=step_size``):
    the reference our PGD is checked against."""

    kind: ClassVar[str] = "foolbox_pgd"
    distribution: ClassVar[str] = "foolbox"
    steps: int = setting(need=INT_1)
    step_size: float = setting(need=NUMBER_POSITIVE)
    random_start: bool = setting(True, need=BOOL)


@dataclass(frozen=True, kw_only=True)
class _CarliniWagner:
    """The settings of Foolbox's ``L2CarliniWagnerAttack`` (Carlini & Wagner 2017), shared by
    ``cw_l2`` and ``cw_l2_min``. Defaults are Foolbox 3.3.4's: 9 binary search steps of 10000
    Adam steps of size 0.01, confidence 0, initial constant 0.001 (and its ``abort_early``)."""

    binary_search_steps: int = setting(9, need=INT_1)
    steps: int = setting(10000, need=INT_1)
    stepsize: float = setting(0.01, need=NUMBER_POSITIVE)
    confidence: float = setting(0.0, need=NUMBER_0)
    initial_const: float = setting(0.001, need=NUMBER_POSITIVE)


@register
@dataclass(frozen=True, kw_only=True)
class CarliniWagnerL2Settings(_CarliniWagner, _Threat):
    """Foolbox's ``L2CarliniWagnerAttack``, a minimum-norm attack cut to the eps ball
    (``epsilons=eps``), with ``_CarliniWagner``'s settings."""

    kind: ClassVar[str] = "cw_l2"
    distribution: ClassVar[str] = "foolbox"
    norm: str = setting("l2", need=only("l2"))


@register
@dataclass(frozen=True, kw_only=True)
class DeepFoolLinfSettings(_Threat):
    """Foolbox's ``LinfDeepFoolAttack`` (Moosavi-Dezfooli et al. 2016), a minimum-norm attack
    cut to the eps ball. Defaults are Foolbox's: 50 steps, the top 10 classes, overshoot 0.02."""

    kind: ClassVar[str] = "deepfool_linf"
    distribution: ClassVar[str] = "foolbox"
    norm: str = setting("linf", need=only("linf"))
    steps: int = setting(50, need=INT_1)
    candidates: int = setting(10, need=INT_2)
    overshoot: float = setting(0.02, need=NUMBER_0)


@register
@dataclass(frozen=True, kw_only=True)
class CarliniWagnerLinfSettings(_Threat):
    """ART's ``CarliniLInfMethod`` (Carlini & Wagner 2017's linf attack, shrinking tau): a
    minimum-norm attack, its point clipped into the eps ball and kept only if it then fools the
    model. Defaults are ART 1.20.1's: confidence 0, learning rate 0.01, 10 Adam iterations per
    (tau, c), c from 1e-5 up to 20 by factors of 2, tau shrinking by 0.9 from 1 to 1/256. ART
    attacks one image at a time: at these defaults an image it breaks costs up to 53 x 21 x 10
    Adam iterations of a few forward and backward passes each."""

    kind: ClassVar[str] = "cw_linf"
    distribution: ClassVar[str] = "adversarial-robustness-toolbox"
    norm: str = setting("linf", need=only("linf"))
    confidence: float = setting(0.0, need=NUMBER_0)
    learning_rate: float = setting(0.01, need=NUMBER_POSITIVE)
    max_iter: int = setting(10, need=INT_1)
    initial_const: float = setting(1e-5, need=NUMBER_POSITIVE)
    largest_const: float = setting(20.0, need=NUMBER_POSITIVE)
    const_factor: float = setting(
        2.0, need=Need(lambda v: is_number(v) and v > 1, "a number > 1", float)
    )
    decrease_factor: float = setting(
        0.9, need=Need(lambda v: is_number(v) and 0 < v < 1, "a number in (0, 1)", float)
    )


@register
@dataclass(frozen=True, kw_only=True)
class AutoAttackSettings(_Threat):
    """Croce & Hein's AutoAttack, run by their own package ``autoattack`` when it is installed,
    else by ``pyautoattack``: a third-party repackaging of the authors' fra31/auto-attack, not a
    release of theirs (pyautoattack 0.2.0's attack files equal that repository's at commit
    a392200 apart from imports; attack.json records it as ``upstream``). The outcome log
    names, per image, the sub-attack that broke it. ``version`` standard (APGD-CE, APGD-T,
    FAB-T, Square), plus, rand, or custom with ``attacks`` (and optionally ``n_iter``, the
    iterations of APGD and FAB, default 100). Seeded from torch's RNG, which the runner seeds
    per batch."""

    kind: ClassVar[str] = "autoattack"
    distribution: ClassVar[str] = "pyautoattack"
    # 2: run one sub-attack at a time, each image credited to the one that broke it
    revision: ClassVar[int] = 2
    upstream: ClassVar[dict[str, str]] = {"0.2.0": "fra31/auto-attack@a392200"}
    version: str = setting("standard", need=one_of("standard", "plus", "rand", "custom"))
    attacks: tuple[str, ...] = setting(
        (),
        need=Need(
            lambda v: isinstance(v, list | tuple) and all(a in AUTOATTACK_ATTACKS for a in v),
            f"a list of names from {', '.join(AUTOATTACK_ATTACKS)}",
            tuple,
        ),
    )
    n_iter: int | None = setting(None, need=OPTIONAL_INT_1)

    def check(self, where: str) -> None:
        if self.version == "custom" and not self.attacks:
            raise ValueError(f"{where}.attacks: version custom needs a non-empty list")
        if self.version != "custom" and (self.attacks or self.n_iter is not None):
            key = "attacks" if self.attacks else "n_iter"
            raise ValueError(f"{where}.{key}: only version custom takes it")


@register
@dataclass(frozen=True, kw_only=True)
class ATENTSettings(_Threat):
    """ATENT's Langevin sampler as an attack (appendix A.3, Table 6; ``robustreg.attacks.atent``):
    the PGD-20 configuration plus Gaussian noise of scale ``noise * sqrt(2 step_size)``."""

    kind: ClassVar[str] = "atent"
    steps: int = setting(need=INT_1)
    step_size: float = setting(need=NUMBER_POSITIVE)
    noise: float = setting(0.001, need=NUMBER_0)


# --- minimum-distance attacks (Finlay & Oberman, section 4) -------------------------------------
# The paper states no attack settings; the defaults below are ours, each justified.


@register
@dataclass(frozen=True, kw_only=True)
class PGDMinSettings(_Minimal):
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
    eps_max: float = setting(need=NUMBER_POSITIVE)
    search_steps: int = setting(10, need=INT_0)
    steps: int = setting(20, need=INT_1)
    step_ratio: float | None = setting(None, need=OPTIONAL_POSITIVE)
    restarts: int = setting(1, need=INT_1)

    def __post_init__(self) -> None:
        if self.step_ratio is None:  # recorded as the number it stands for
            object.__setattr__(self, "step_ratio", MADRY_STEP_RATIO / self.steps)


@register
@dataclass(frozen=True, kw_only=True)
class CarliniWagnerL2MinSettings(_CarliniWagner, _Minimal):
    """Foolbox's ``L2CarliniWagnerAttack`` uncut (``epsilons=None``): per image the closest
    adversarial point of its search, with ``cw_l2``'s settings and defaults
    (``_CarliniWagner``). Foolbox's CW knows only top-1 misclassification (it needs its own
    ``Misclassification`` criterion), so top_k must be 1."""

    kind: ClassVar[str] = "cw_l2_min"
    distribution: ClassVar[str] = "foolbox"
    # 2: Foolbox's unreached all-zero start is "not found", no longer broken at distance ||x||
    revision: ClassVar[int] = 2
    norm: str = setting("l2", need=only("l2"))

    def check(self, where: str) -> None:
        if self.top_k != 1:
            raise ValueError(
                f"{where}.top_k: Foolbox's Carlini-Wagner attack is top-1 only, got {self.top_k}"
            )


@register
@dataclass(frozen=True, kw_only=True)
class BoundarySettings(_Minimal):
    """Foolbox's ``BoundaryAttack`` (Brendel et al. 2018), the suite's gradient-free l2 attack,
    with top-k misclassification as its criterion.

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
    norm: str = setting("l2", need=only("l2"))
    steps: int = setting(5000, need=INT_1)
    spherical_step: float = setting(0.01, need=NUMBER_POSITIVE)
    source_step: float = setting(0.01, need=NUMBER_POSITIVE)
    step_adaptation: float = setting(
        1.5, need=Need(lambda v: is_number(v) and v > 1, "a number > 1", float)
    )


@dataclass(frozen=True)
class LogBarrierConfig:
    """The LogBarrier attack's arguments (``robustreg.attacks.logbarrier.logbarrier``), checked
    once: one-line ValueErrors naming the argument. The ``logbarrier`` kind checks its settings
    with it, so planning rejects what the attack would."""

    norm: str
    top_k: int
    dt: float
    alpha: float
    beta: float
    gamma: float
    max_outer: int
    max_inner: int
    tol: float
    T: float
    init_scale: float
    init_growth: float
    init_tries: int

    def __post_init__(self) -> None:
        if self.norm not in NORMS:
            raise ValueError(f"norm: {self.norm!r} is not one of {', '.join(NORMS)}")
        for name in ("dt", "alpha", "T", "init_scale"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name}: must be > 0, got {getattr(self, name)}")
        if not 0 < self.beta <= 1:
            raise ValueError(f"beta: must be in (0, 1], got {self.beta}")
        if not 0 < self.gamma < 1:
            raise ValueError(f"gamma: must be in (0, 1), got {self.gamma}")
        if not self.init_growth >= 1:
            raise ValueError(f"init_growth: must be >= 1, got {self.init_growth}")
        if not self.tol >= 0:
            raise ValueError(f"tol: must be >= 0, got {self.tol}")
        for name, least in (("top_k", 1), ("max_outer", 0), ("max_inner", 1), ("init_tries", 0)):
            value = getattr(self, name)
            if not is_int(value) or value < least:
                raise ValueError(f"{name}: must be an integer >= {least}, got {value!r}")


@register
@dataclass(frozen=True, kw_only=True)
class LogBarrierSettings(_Minimal):
    """Our LogBarrier attack (Finlay, Pooladian & Oberman 2019; ``attacks.logbarrier``), the
    suite's non-local attack, in l2 or linf, top-k. Its settings and their defaults are the
    authors' (cfinlay/logbarrier, the same for both norms): step ``dt`` 0.01, barrier weight
    ``alpha`` 0.1 shrunk by ``beta`` 0.75 over ``max_outer`` 15 rounds of at most ``max_inner``
    500 steps (stopped at a step below ``tol`` 1e-6), backtracking ``gamma`` 0.5, linf smooth
    max temperature ``T`` 500, Gaussian start ``init_scale`` 0.01 grown by ``init_growth``
    1.01 over up to ``init_tries`` 1000 draws (torch's global RNG, seeded by the runner).
    Ranges are checked by ``LogBarrierConfig``, as the attack itself checks them."""

    kind: ClassVar[str] = "logbarrier"
    dt: float = setting(0.01, need=NUMBER)
    alpha: float = setting(0.1, need=NUMBER)
    beta: float = setting(0.75, need=NUMBER)
    gamma: float = setting(0.5, need=NUMBER)
    max_outer: int = setting(15, need=INT)
    max_inner: int = setting(500, need=INT)
    tol: float = setting(1e-6, need=NUMBER)
    T: float = setting(500.0, need=NUMBER)
    init_scale: float = setting(0.01, need=NUMBER)
    init_growth: float = setting(1.01, need=NUMBER)
    init_tries: int = setting(1000, need=INT)

    def check(self, where: str) -> None:
        try:
            LogBarrierConfig(**dataclasses.asdict(self))
        except ValueError as err:  # "key: must be ...", about one of our fields
            raise ValueError(f"{where}.{err}") from None
