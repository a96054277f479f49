"""Every training method's hyperparameters, declared without torch.

A method is declared here once, as a frozen dataclass registered with ``@declare``: its fields
are the hyperparameters a config may set (an experiment's ``params``; ``sigma`` comes from the
experiment itself) with their defaults, its ``__post_init__`` refuses a bad value with a
one-line ValueError naming it, and its class variables say what a planner needs to know
without building the method (``uses_sigma``, ``keeps_state``, ``traits``). Planning reads
these declarations only, so it never imports torch (issue 19).

The loss is computed by the class a declaration's ``implemented_by`` names, in a module of its
own (``robustreg.objectives.<module>``, with the paper's equations): a subclass of the
declaration and of ``robustreg.objectives.base.Objective`` that adds no field.
``build_objective`` imports it when the training loop asks for the method. Adding a method:
declare it here, implement it in a module of its own.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import ClassVar

from robustreg.attacks.threat import NORMS
from robustreg.settings import is_int


def require(condition: bool, field: str, message: str) -> None:
    """Raise a ValueError naming the offending hyperparameter when ``condition`` fails."""
    if not condition:
        raise ValueError(f"{field}: {message}")


def is_real(value: object) -> bool:
    """A number a config may give for a float hyperparameter (an int or a float, not a bool)."""
    return isinstance(value, int | float) and not isinstance(value, bool)


@dataclass(frozen=True)
class MethodSettings:
    """Base of every declaration: subclasses add their hyperparameters as dataclass fields.

    ``sigma`` is the Gaussian noise level in [0, 1] pixel units. Methods that train without
    Gaussian noise (adversarial training, ATENT: ``uses_sigma = False``) get ``None``; a
    randomized-smoothing certificate of such a model takes its sigma from the certification.
    """

    name: ClassVar[str] = ""
    # "module.Class" of the subclass that computes the loss (see the module docstring).
    implemented_by: ClassVar[str] = ""
    # Fixed traits a settings table prints beside the hyperparameters (SmoothAdv's attack).
    traits: ClassVar[dict[str, str]] = {}
    uses_sigma: ClassVar[bool] = True
    # Whether the method keeps tensors across steps (``base.StepContext.state``).
    keeps_state: ClassVar[bool] = False
    # Epoch counts a config may tie to the experiment's schedule (``epochs_in``).
    schedule_fields: ClassVar[tuple[str, ...]] = ()
    sigma: float | None

    def schedule_problem(self, epochs: int) -> str | None:
        """Why the method's defining term could never act in a training of ``epochs`` epochs,
        as ``"field: reason"``, or None."""
        return None

    def revision(self, batch_statistics: bool) -> int:
        """How many times what the method computes with these settings has changed (1:
        never), on an architecture that does (``batch_statistics``) or does not normalize
        with batch statistics (``robustreg.architectures``). An experiment whose revision is
        above 1 carries it, so its id changed with the computation while the others keep
        theirs."""
        return 1


REGISTRY: dict[str, type[MethodSettings]] = {}


def declare(cls: type[MethodSettings]) -> type[MethodSettings]:
    """Class decorator: make a method known by its ``name``."""
    if not cls.name or cls.name in REGISTRY:
        raise ValueError(f"objective name missing or taken: {cls.name!r}")
    REGISTRY[cls.name] = cls
    return cls


def declaration(method: str) -> type[MethodSettings]:
    """The class registered under ``method``; a ValueError lists the known ones."""
    if method not in REGISTRY:
        raise ValueError(f"unknown method {method!r} (known: {', '.join(sorted(REGISTRY))})")
    return REGISTRY[method]


def parameter_names(method: str) -> list[str]:
    """The hyperparameters a config may set for ``method`` (sigma comes from the experiment)."""
    return [f.name for f in dataclasses.fields(declaration(method)) if f.name != "sigma"]


def resolve_params(method: str, params: dict) -> dict:
    """``params`` completed with the method's defaults; unknown or missing keys raise ValueError."""
    cls = declaration(method)
    known = {f.name: f for f in dataclasses.fields(cls) if f.name != "sigma"}
    unknown = sorted(set(params) - set(known))
    if unknown:
        raise ValueError(
            f"unknown parameter {unknown[0]!r} for method {method!r} (known: {', '.join(known)})"
        )
    resolved = {}
    for key, field in known.items():
        if key in params:
            resolved[key] = params[key]
        elif field.default is not dataclasses.MISSING:
            resolved[key] = field.default
        else:
            raise ValueError(f"missing parameter {key!r} for method {method!r}")
    return resolved


FIRST_LR_DROP = "first_lr_drop"


def epochs_in(value: object, schedule: Mapping, field: str) -> object:
    """An epoch count tied to ``schedule``, as a number (other values are returned as given,
    for the declaration to refuse).

    ``"first_lr_drop"`` is the schedule's first learning-rate milestone; ``"a/b"`` is the
    fraction a/b of its epochs, rounded half up and at least 1 when a > 0, written as the
    paper's count over its schedule's epochs (``"10/90"``: 10 of 90 epochs), so that the paper
    scale plans the paper's number and a shorter schedule keeps the proportion.
    """
    if value == FIRST_LR_DROP:
        milestones = schedule.get("lr_milestones") or []
        require(bool(milestones), field, f"{FIRST_LR_DROP}: the schedule has no lr_milestones")
        return min(milestones)
    if not isinstance(value, str):
        return value
    numerator, _, denominator = value.partition("/")
    require(
        numerator.strip().isdigit() and denominator.strip().isdigit() and int(denominator) > 0,
        field,
        f"need an integer >= 0, {FIRST_LR_DROP!r} or a fraction 'a/b' of the epochs, got {value!r}",
    )
    share = int(numerator) * schedule["epochs"] / int(denominator)
    return max(math.floor(share + 0.5), 1 if int(numerator) > 0 else 0)


def for_experiment(
    method: str, params: dict, sigma: float | None, schedule: Mapping, *, batch_statistics: bool
) -> tuple[dict, int]:
    """``params`` as an experiment trains them, and the method's ``revision`` for them.

    The params are completed (``resolve_params``), every epoch count the method ties to its
    schedule is turned into a number (``epochs_in``), and all are checked against
    ``schedule``: a one-line ValueError names the hyperparameter that is out of range, or
    whose value means that the method's defining term would never act (issue 20: MACER
    starting after the last epoch, SmoothAdv's eps never reached).
    """
    cls = declaration(method)
    resolved = resolve_params(method, params)
    for field in cls.schedule_fields:
        resolved[field] = epochs_in(resolved[field], schedule, field)
    settings = cls(sigma=sigma, **resolved)
    problem = settings.schedule_problem(schedule["epochs"])
    if problem:
        raise ValueError(problem)
    return resolved, settings.revision(batch_statistics)


def describe(method: str, params: dict) -> dict:
    """What a settings table shows for ``method``: its name, fixed traits, resolved params."""
    return {"method": method, **declaration(method).traits, **resolve_params(method, params)}


def uses_sigma(method: str) -> bool:
    """Whether ``method`` trains with Gaussian noise of a level sigma."""
    return declaration(method).uses_sigma


def keeps_state(method: str) -> bool:
    """Whether ``method`` keeps state across steps (``StepContext.state``)."""
    return declaration(method).keeps_state


# --- checks several methods share ----------------------------------------------------------------

# The consistency regularizer's forms (``consistency.consistency_regularizer``).
LOSS_VARIANTS = ("default", "xent", "kl", "mse")
# Where PGD adversarial training runs its attack (``pgd_at``).
ATTACK_MODES = ("train", "eval")
# ADRE_REG's l_per: the mean over the k copies, or one copy (``adre``).
PER_TERMS = ("mean", "single")
# Input-gradient regularization: the dual norm it penalizes, and how it estimates it.
GRADIENT_NORMS = ("l2", "l1")
GRADIENT_METHODS = ("fd", "dbp")


def validate_consistency(m: object, loss: object) -> None:
    """The checks every consistency-regularized method shares (``m`` copies, ``loss`` variant)."""
    require(is_int(m) and m >= 2, "m", f"consistency needs an integer m >= 2 copies, got {m!r}")
    require(
        loss in LOSS_VARIANTS,
        "loss",
        f"unknown variant {loss!r} (known: {', '.join(LOSS_VARIANTS)})",
    )


def validate_attack(norm: object, eps: object, steps: object, step_size: object) -> None:
    """One-line errors naming the field, for the PGD settings of a training objective."""
    require(norm in NORMS, "norm", f"need one of {', '.join(NORMS)}, got {norm!r}")
    require(is_real(eps) and eps > 0, "eps", f"need a number > 0, got {eps!r}")
    require(is_int(steps) and steps >= 1, "steps", f"need an integer >= 1, got {steps!r}")
    require(
        is_real(step_size) and step_size > 0,
        "step_size",
        f"need a number > 0, got {step_size!r}",
    )


def warmup_problem(warmup_epochs: int, epochs: int) -> str | None:
    """The attack radius warms up over ``warmup_epochs`` (SmoothAdv's and ADRE_ADV's
    ``eps_at``): it must reach eps within the ``epochs`` of training."""
    if warmup_epochs > epochs:
        return (
            f"warmup_epochs: eps would still be warming up after the last of {epochs} epochs "
            f"({warmup_epochs} warm-up epochs), so it is never reached"
        )
    return None


def _validate_adre(k: object, lbd: float, label_smoothing: float) -> None:
    require(is_int(k) and k >= 1, "k", f"need an integer >= 1, got {k!r}")
    require(lbd >= 0, "lbd", f"need lbd >= 0, got {lbd!r}")
    require(
        0 <= label_smoothing < 1,
        "label_smoothing",
        f"need 0 <= label_smoothing < 1, got {label_smoothing!r}",
    )


# --- randomized smoothing: Gaussian training and its regularizers --------------------------------


@declare
@dataclass(frozen=True)
class GaussianSettings(MethodSettings):
    """Gaussian data augmentation (Cohen et al. 2019).

    ``label_smoothing`` ls, 0 <= ls < 1 (default 0: plain cross-entropy): the target becomes
    ``(1 - ls) * e_y + ls / C``, as Feng et al. 2020 train their ImageNet models (0.1).
    """

    name: ClassVar[str] = "gaussian"
    implemented_by: ClassVar[str] = "robustreg.objectives.gaussian.Gaussian"
    label_smoothing: float = 0.0

    def __post_init__(self) -> None:
        require(
            0 <= self.label_smoothing < 1,
            "label_smoothing",
            f"need 0 <= label_smoothing < 1, got {self.label_smoothing!r}",
        )


@declare
@dataclass(frozen=True)
class StabilitySettings(MethodSettings):
    """Stability training (Li et al. 2019) as Jeong & Shin 2020 ran it.

    ``lbd`` the weight of the stability term (2, supp. B).
    """

    name: ClassVar[str] = "stability"
    implemented_by: ClassVar[str] = "robustreg.objectives.stability.Stability"
    lbd: float = 2.0

    def revision(self, batch_statistics: bool) -> int:
        # 2: clean and noisy inputs in two passes, not one joint batch (issue 20), which
        # BatchNorm normalizes apart
        return 2 if batch_statistics else 1


@declare
@dataclass(frozen=True)
class ConsistencySettings(MethodSettings):
    """Consistency regularization (Jeong & Shin 2020, Eq. (9)).

    ``lbd`` (lambda) the weight of the KL term, with no default: the paper tunes it per sigma
    (MNIST: 10 / 5 / 5 at sigma 0.25 / 0.5 / 1.0, supp. Table 2), so a config must say which;
    ``m`` >= 2 the noisy copies per example; ``eta`` the weight of the entropy term; ``loss``
    the regularizer's form, one of ``LOSS_VARIANTS`` (``default`` for every number of the
    paper).
    """

    name: ClassVar[str] = "consistency"
    implemented_by: ClassVar[str] = "robustreg.objectives.consistency.Consistency"
    lbd: float
    m: int = 2
    eta: float = 0.5
    loss: str = "default"

    def __post_init__(self) -> None:
        validate_consistency(self.m, self.loss)


@declare
@dataclass(frozen=True)
class MacerSettings(MethodSettings):
    """MACER (Zhai et al. 2020; Jeong & Shin 2020, supp. E.2, Eq. (8)).

    ``m`` the noise copies of F_hat; ``lbd`` (lambda) the weight of the robustness term;
    ``gamma`` the hinge's margin, in units of xi = Phi^-1(p1) - Phi^-1(p2); ``beta`` the
    inverse temperature of the robustness term's softmax; ``deferred_epochs`` the epochs
    (from 0) before the robustness term starts (lbd is 0 while ``epoch < deferred_epochs``),
    which a config may tie to the schedule as ``first_lr_drop`` (``epochs_in``): the authors'
    ``--deferred``. Defaults m = 16, lbd = 16, gamma = 8, beta = 16 are supp. B's (lbd = 6 at
    sigma = 1).
    """

    name: ClassVar[str] = "macer"
    implemented_by: ClassVar[str] = "robustreg.objectives.macer.Macer"
    m: int = 16
    lbd: float = 16.0
    gamma: float = 8.0
    beta: float = 16.0
    deferred_epochs: int = 0
    schedule_fields: ClassVar[tuple[str, ...]] = ("deferred_epochs",)

    def schedule_problem(self, epochs: int) -> str | None:
        if self.lbd > 0 and self.deferred_epochs >= epochs:
            return (
                f"deferred_epochs: MACER's robustness term would start at epoch "
                f"{self.deferred_epochs} (from 0) of a {epochs}-epoch schedule, so never"
            )
        return None

    def __post_init__(self) -> None:
        require(is_int(self.m) and self.m >= 1, "m", f"need an integer >= 1, got {self.m!r}")
        require(self.lbd >= 0, "lbd", f"need lbd >= 0, got {self.lbd!r}")
        require(self.gamma > 0, "gamma", f"need gamma > 0, got {self.gamma!r}")
        require(self.beta > 0, "beta", f"need beta > 0, got {self.beta!r}")
        require(
            is_int(self.deferred_epochs) and self.deferred_epochs >= 0,
            "deferred_epochs",
            f"need an integer >= 0, got {self.deferred_epochs!r}",
        )


@declare
@dataclass(frozen=True)
class SmoothAdvSettings(MethodSettings):
    """SmoothAdv-PGD (Salman et al. 2019; Jeong & Shin 2020, supp. E.1).

    ``m`` the noise draws delta_1..delta_m of Eq. (4), also the chunks each loaded batch is
    cut into; ``eps`` the l2 radius of the attack after the warm-up; ``steps`` its PGD steps;
    ``warmup_epochs`` the epochs of the linear eps warm-up (0: none), which a config may give
    as a fraction of the schedule's epochs (``epochs_in``). Defaults are the MNIST setting of
    supp. B (eps = 1.0, m = 4, 10 steps, 10 warm-up epochs, supp. A.1).
    """

    name: ClassVar[str] = "smoothadv"
    implemented_by: ClassVar[str] = "robustreg.objectives.smoothadv.SmoothAdv"
    # Salman et al. also train with DDN; every model these papers use was PGD-trained.
    traits: ClassVar[dict[str, str]] = {"attack": "PGD"}
    m: int = 4
    eps: float = 1.0
    steps: int = 10
    warmup_epochs: int = 10
    schedule_fields: ClassVar[tuple[str, ...]] = ("warmup_epochs",)

    def schedule_problem(self, epochs: int) -> str | None:
        return warmup_problem(self.warmup_epochs, epochs)

    def __post_init__(self) -> None:
        require(is_int(self.m) and self.m >= 1, "m", f"need an integer >= 1, got {self.m!r}")
        require(self.eps >= 0, "eps", f"need eps >= 0, got {self.eps!r}")
        require(
            is_int(self.steps) and self.steps >= 1,
            "steps",
            f"need an integer >= 1, got {self.steps!r}",
        )
        require(
            is_int(self.warmup_epochs) and self.warmup_epochs >= 0,
            "warmup_epochs",
            f"need an integer >= 0, got {self.warmup_epochs!r}",
        )


@declare
@dataclass(frozen=True)
class SmoothAdvConsistencySettings(SmoothAdvSettings):
    """SmoothAdv + consistency regularization (Jeong & Shin 2020, Sec. 3 and supp. E.1).

    SmoothAdv's settings (``m`` >= 2 here), and the consistency regularizer's ``lbd``,
    ``eta`` and ``loss`` as ``ConsistencySettings``; lbd = 1 is supp. Table 2's MNIST value.
    """

    name: ClassVar[str] = "smoothadv_consistency"
    implemented_by: ClassVar[str] = (
        "robustreg.objectives.smoothadv_consistency.SmoothAdvConsistency"
    )
    lbd: float = 1.0
    eta: float = 0.5
    loss: str = "default"

    def __post_init__(self) -> None:
        super().__post_init__()
        validate_consistency(self.m, self.loss)


# kw_only: the fields keep the paper's order although the required lbd follows defaults.
@declare
@dataclass(frozen=True, kw_only=True)
class AdreRegSettings(MethodSettings):
    """ADRE_REG (Feng et al. 2020, Eqs. 5-8, Algorithm 1).

    ``k`` the noise draws per example; ``lbd`` (lambda) the weight of the ADRE term, required
    (0.05-0.3 in the Experiments); ``per_term`` l_per's form, ``mean`` over the k copies (Eq. 7)
    or ``single``, one copy drawn per example (the CIFAR-10 rows of Table 1);
    ``label_smoothing`` as ``GaussianSettings``', in l_per only (the ImageNet recipe's 0.1).
    """

    name: ClassVar[str] = "adre_reg"
    implemented_by: ClassVar[str] = "robustreg.objectives.adre.AdreReg"
    k: int = 1
    lbd: float
    per_term: str = "mean"
    label_smoothing: float = 0.0

    def __post_init__(self) -> None:
        _validate_adre(self.k, self.lbd, self.label_smoothing)
        require(
            self.per_term in PER_TERMS,
            "per_term",
            f"need one of {', '.join(PER_TERMS)}, got {self.per_term!r}",
        )


@declare
@dataclass(frozen=True, kw_only=True)
class AdreAdvSettings(MethodSettings):
    """ADRE_ADV (Feng et al. 2020, Eqs. 12-13 and Algorithm 1's adversarial branch).

    ``k``, ``lbd`` and ``label_smoothing`` as ``AdreRegSettings``'; ``eps``, ``steps`` (M, the
    attack's l2 PGD steps of size 2 eps / M) and ``warmup_epochs`` as ``SmoothAdvSettings``'
    with m = k, and checked as SmoothAdv checks them.
    """

    name: ClassVar[str] = "adre_adv"
    implemented_by: ClassVar[str] = "robustreg.objectives.adre.AdreAdv"
    traits: ClassVar[dict[str, str]] = {"attack": "PGD"}
    k: int = 1
    eps: float
    steps: int
    warmup_epochs: int = 10
    lbd: float
    label_smoothing: float = 0.0
    schedule_fields: ClassVar[tuple[str, ...]] = ("warmup_epochs",)

    def schedule_problem(self, epochs: int) -> str | None:
        return warmup_problem(self.warmup_epochs, epochs)

    def __post_init__(self) -> None:
        _validate_adre(self.k, self.lbd, self.label_smoothing)
        # eps, steps and warmup_epochs, under their own names
        SmoothAdvSettings(
            sigma=self.sigma,
            m=self.k,
            eps=self.eps,
            steps=self.steps,
            warmup_epochs=self.warmup_epochs,
        )


# --- adversarial training and its baselines (no Gaussian noise) ----------------------------------


@declare
@dataclass(frozen=True)
class StandardSettings(MethodSettings):
    """Standard training: cross-entropy on the clean batch; no hyperparameter."""

    name: ClassVar[str] = "standard"
    implemented_by: ClassVar[str] = "robustreg.objectives.standard.Standard"
    uses_sigma: ClassVar[bool] = False


@declare
@dataclass(frozen=True, kw_only=True)
class PgdAtSettings(MethodSettings):
    """PGD adversarial training (Madry et al. 2018; ATENT appendix B.4, Algorithm 4).

    ``norm`` the threat model (``NORMS``), ``eps`` the ball's radius, ``steps`` and
    ``step_size`` the random-start PGD's, all required (no recipe-wide defaults);
    ``attack_mode`` the model's mode during the attack, ``train`` (Madry et al.'s and Rice et
    al.'s code) or ``eval`` (Ding et al.'s setting).
    """

    name: ClassVar[str] = "pgd_at"
    implemented_by: ClassVar[str] = "robustreg.objectives.pgd_at.PgdAt"
    uses_sigma: ClassVar[bool] = False
    norm: str
    eps: float
    steps: int
    step_size: float
    attack_mode: str = "train"

    def __post_init__(self) -> None:
        validate_attack(self.norm, self.eps, self.steps, self.step_size)
        require(
            self.attack_mode in ATTACK_MODES,
            "attack_mode",
            f"need one of {', '.join(ATTACK_MODES)}, got {self.attack_mode!r}",
        )


@declare
@dataclass(frozen=True, kw_only=True)
class TradesSettings(MethodSettings):
    """TRADES (Zhang et al. 2019), and with ``noise`` > 0 Blum et al.'s TRADES (smooth).

    ``norm``, ``eps``, ``steps`` and ``step_size`` the KL-ascending PGD's, eps, steps and
    step_size required (MNIST: 0.3, 40, 0.01; CIFAR-10: 0.031, 10, 0.007); ``beta`` the KL
    term's weight (1/lambda; 6, Zhang et al.'s benchmark rows); ``noise`` the std of Blum et
    al.'s Gaussian shift eta, 0 for plain TRADES.
    """

    name: ClassVar[str] = "trades"
    implemented_by: ClassVar[str] = "robustreg.objectives.trades.Trades"
    uses_sigma: ClassVar[bool] = False
    norm: str = "linf"
    eps: float
    steps: int
    step_size: float
    beta: float = 6.0
    noise: float = 0.0

    def __post_init__(self) -> None:
        validate_attack(self.norm, self.eps, self.steps, self.step_size)
        require(is_real(self.beta) and self.beta >= 0, "beta", f"need >= 0, got {self.beta!r}")
        require(is_real(self.noise) and self.noise >= 0, "noise", f"need >= 0, got {self.noise!r}")


@declare
@dataclass(frozen=True, kw_only=True)
class MartSettings(MethodSettings):
    """MART (Wang et al. 2020).

    ``norm``, ``eps``, ``steps`` and ``step_size`` the CE-ascending PGD's, ``beta`` the weight
    of the misclassification-weighted KL; the defaults are the authors' single recipe (linf,
    eps = 0.031, 10 steps of 0.007, beta = 6).
    """

    name: ClassVar[str] = "mart"
    implemented_by: ClassVar[str] = "robustreg.objectives.mart.Mart"
    uses_sigma: ClassVar[bool] = False
    norm: str = "linf"
    eps: float = 0.031
    steps: int = 10
    step_size: float = 0.007
    beta: float = 6.0

    def __post_init__(self) -> None:
        validate_attack(self.norm, self.eps, self.steps, self.step_size)
        require(is_real(self.beta) and self.beta >= 0, "beta", f"need >= 0, got {self.beta!r}")


@declare
@dataclass(frozen=True, kw_only=True)
class MMASettings(MethodSettings):
    """MMA training (Ding et al. 2020, Eq. 8 with Eq. 7 and AN-PGD).

    ``norm`` the threat model, ``hinge_max`` d_max, ``init_eps`` the PGD radius of an
    example's first search and the least of the later ones, which start from its last eps
    (the authors' ``attack_mineps``); ``steps`` PGD steps, ``step_scale`` the step size in
    units of the radius over ``steps`` (``eps_iter_scale``), ``search_steps`` bisection
    halvings, ``clean_loss_coeff`` the c of Eq. (8) (1/3 throughout the paper; 0 is OMMA).
    """

    name: ClassVar[str] = "mma"
    implemented_by: ClassVar[str] = "robustreg.objectives.mma.MMA"
    traits: ClassVar[dict[str, str]] = {"attack": "AN-PGD (SLM)"}
    uses_sigma: ClassVar[bool] = False
    keeps_state: ClassVar[bool] = True
    norm: str
    hinge_max: float
    init_eps: float
    steps: int
    step_scale: float = 2.5
    search_steps: int = 10
    clean_loss_coeff: float = 1.0 / 3.0

    def __post_init__(self) -> None:
        require(self.norm in NORMS, "norm", f"need one of {', '.join(NORMS)}, got {self.norm!r}")
        require(self.hinge_max > 0, "hinge_max", f"need hinge_max > 0, got {self.hinge_max!r}")
        require(
            0 < self.init_eps <= self.hinge_max,
            "init_eps",
            f"need 0 < init_eps <= hinge_max = {self.hinge_max}, got {self.init_eps!r}",
        )
        require(
            is_int(self.steps) and self.steps >= 1,
            "steps",
            f"need an integer >= 1, got {self.steps!r}",
        )
        require(self.step_scale > 0, "step_scale", f"need step_scale > 0, got {self.step_scale!r}")
        require(
            is_int(self.search_steps) and self.search_steps >= 0,
            "search_steps",
            f"need an integer >= 0, got {self.search_steps!r}",
        )
        require(
            0 <= self.clean_loss_coeff < 1,
            "clean_loss_coeff",
            f"need 0 <= clean_loss_coeff < 1, got {self.clean_loss_coeff!r}",
        )


@declare
@dataclass(frozen=True, kw_only=True)
class AtentSettings(MethodSettings):
    """l2-ATENT (Jagatap et al., Algorithm 1) or linf-ATENT (Algorithm 2).

    ``norm`` the threat model; ``gamma`` the Gibbs density's gamma (l2: the pull towards x;
    linf: 1/gamma the radius of the last step's projection); ``steps`` K the Langevin steps,
    ``step_size`` eta' their size, ``noise`` eps their noise scale (sqrt(2 eta') eps N(0, I));
    ``alpha`` the exponential average's weight; ``init_radius`` r the start's radius, by
    default 1/gamma for linf, required for l2 (1/gamma is no l2 radius). Defaults alpha = 0.9
    and noise = 0.001 are every ATENT run of the paper's but Table 5's.
    """

    name: ClassVar[str] = "atent"
    implemented_by: ClassVar[str] = "robustreg.objectives.atent.Atent"
    uses_sigma: ClassVar[bool] = False
    norm: str
    gamma: float
    steps: int
    step_size: float
    noise: float = 0.001
    alpha: float = 0.9
    init_radius: float | None = None

    def revision(self, batch_statistics: bool) -> int:
        # 2: the l2 chain's pull towards x is gamma * (x - x'), as in the authors' code, no
        # longer eta' * gamma * (x - x') (issue 20); linf has no pull
        return 2 if self.norm == "l2" else 1

    def __post_init__(self) -> None:
        require(self.norm in NORMS, "norm", f"need one of {', '.join(NORMS)}, got {self.norm!r}")
        require(is_real(self.gamma) and self.gamma > 0, "gamma", f"need > 0, got {self.gamma!r}")
        require(
            is_int(self.steps) and self.steps >= 1,
            "steps",
            f"need an integer >= 1, got {self.steps!r}",
        )
        require(
            is_real(self.step_size) and self.step_size > 0,
            "step_size",
            f"need > 0, got {self.step_size!r}",
        )
        require(is_real(self.noise) and self.noise >= 0, "noise", f"need >= 0, got {self.noise!r}")
        require(
            is_real(self.alpha) and 0 < self.alpha <= 1,
            "alpha",
            f"need 0 < alpha <= 1, got {self.alpha!r}",
        )
        require(
            self.init_radius is None or (is_real(self.init_radius) and self.init_radius >= 0),
            "init_radius",
            f"need a number >= 0 or null, got {self.init_radius!r}",
        )
        require(
            self.norm == "linf" or self.init_radius is not None,
            "init_radius",
            "required for norm l2 (1/gamma is no l2 radius)",
        )


@declare
@dataclass(frozen=True, kw_only=True)
class GradientNormSettings(MethodSettings):
    """Input-gradient regularization (Finlay & Oberman, Eq. 8).

    ``norm`` the dual norm penalized (``l2`` against l2 attacks, ``l1`` against linf ones);
    ``lam`` (lambda) the penalty's weight, which enters as lam / 2 as in Eq. 8 and the authors'
    trainer; ``method`` ``fd`` (finite differences, Algorithm 1) or ``dbp`` (double
    backpropagation); ``h`` the finite difference's step in [0, 1] pixel units.
    """

    name: ClassVar[str] = "gradient_norm"
    implemented_by: ClassVar[str] = "robustreg.objectives.gradient_norm.GradientNorm"
    uses_sigma: ClassVar[bool] = False
    norm: str
    lam: float
    method: str
    h: float = 0.01

    def __post_init__(self) -> None:
        require(
            self.norm in GRADIENT_NORMS,
            "norm",
            f"need one of {', '.join(GRADIENT_NORMS)}, got {self.norm!r}",
        )
        require(is_real(self.lam) and self.lam > 0, "lam", f"need a number > 0, got {self.lam!r}")
        require(
            self.method in GRADIENT_METHODS,
            "method",
            f"need one of {', '.join(GRADIENT_METHODS)}, got {self.method!r}",
        )
        require(is_real(self.h) and self.h > 0, "h", f"need a number > 0, got {self.h!r}")


@declare
@dataclass(frozen=True, kw_only=True)
class FreeAtSettings(MethodSettings):
    """Free adversarial training (Shafahi et al. 2019, Algorithm 1), linf only.

    ``eps`` the linf radius of delta in [0, 1] pixel units (8/255 in Shafahi et al.'s CIFAR-10
    runs); ``m`` the replays of each minibatch (Algorithm 1's m, an integer >= 1; m = 1 is
    FGSM-like training with a carried-over start); ``step_size`` delta's signed step, None
    (the default) for ``eps`` as in the authors' code.
    """

    name: ClassVar[str] = "free_at"
    implemented_by: ClassVar[str] = "robustreg.objectives.free_at.FreeAt"
    traits: ClassVar[dict[str, str]] = {"norm": "linf"}
    uses_sigma: ClassVar[bool] = False
    keeps_state: ClassVar[bool] = True
    eps: float
    m: int
    step_size: float | None = None

    def __post_init__(self) -> None:
        require(is_real(self.eps) and self.eps > 0, "eps", f"need a number > 0, got {self.eps!r}")
        require(is_int(self.m) and self.m >= 1, "m", f"need an integer >= 1, got {self.m!r}")
        require(
            self.step_size is None or (is_real(self.step_size) and self.step_size > 0),
            "step_size",
            f"need a number > 0 or null (for eps), got {self.step_size!r}",
        )
