"""Every training method's hyperparameters, declared without torch.

A method is declared here once, as a frozen dataclass registered with ``@declare``: its fields
are the hyperparameters a config may set (an experiment's ``params``; ``sigma`` comes from the
experiment itself), each declared with ``robustreg.settings.setting``, its default and the
``Need`` its value must meet, as attack kinds and bounds jobs declare theirs; ``check``
relates several of them (a field checked only there is a plain one). A bad value is refused
with a one-line ValueError naming it. Its class variables say what a planner needs to know
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

from robustreg.settings import (
    INT_0,
    INT_1,
    NORM,
    NUMBER,
    NUMBER_0,
    NUMBER_POSITIVE,
    Need,
    check_settings,
    is_int,
    is_number,
    one_of,
    setting,
)


def require(condition: bool, field: str, message: str) -> None:
    """Raise a ValueError naming the offending hyperparameter when ``condition`` fails."""
    if not condition:
        raise ValueError(f"{field}: {message}")


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

    def __post_init__(self) -> None:
        check_settings(self)
        self.check()

    def check(self) -> None:
        """Refuse, with ``require``, values that are bad together; each field's own range is
        its ``need``, checked before."""

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


def number(says: str, test=lambda value: True) -> Need:
    """A finite number (not a bool) that passes ``test``; the error says "need <says>"."""
    return Need(lambda value: is_number(value) and test(value), says)


LBD = number("lbd >= 0", lambda v: v >= 0)
AT_LEAST_0 = number(">= 0", lambda v: v >= 0)
ABOVE_0 = number("> 0", lambda v: v > 0)
LABEL_SMOOTHING = number("0 <= label_smoothing < 1", lambda v: 0 <= v < 1)
EPS = number("eps >= 0", lambda v: v >= 0)


def validate_consistency(m: object, loss: object) -> None:
    """The checks every consistency-regularized method shares (``m`` copies, ``loss`` variant)."""
    require(is_int(m) and m >= 2, "m", f"consistency needs an integer m >= 2 copies, got {m!r}")
    require(
        loss in LOSS_VARIANTS,
        "loss",
        f"unknown variant {loss!r} (known: {', '.join(LOSS_VARIANTS)})",
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
    label_smoothing: float = setting(0.0, need=LABEL_SMOOTHING)


@declare
@dataclass(frozen=True)
class StabilitySettings(MethodSettings):
    """Stability training (Li et al. 2019) as Jeong & Shin 2020 ran it.

    ``lbd`` the weight of the stability term (2, supp. B).
    """

    name: ClassVar[str] = "stability"
    implemented_by: ClassVar[str] = "robustreg.objectives.stability.Stability"
    lbd: float = setting(2.0, need=LBD)

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
    lbd: float = setting(need=LBD)
    m: int = 2  # m and loss: checked together (validate_consistency)
    eta: float = setting(0.5, need=NUMBER_0)
    loss: str = "default"

    def check(self) -> None:
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
    m: int = setting(16, need=INT_1)
    lbd: float = setting(16.0, need=LBD)
    gamma: float = setting(8.0, need=number("gamma > 0", lambda v: v > 0))
    beta: float = setting(16.0, need=number("beta > 0", lambda v: v > 0))
    deferred_epochs: int = setting(0, need=INT_0)
    schedule_fields: ClassVar[tuple[str, ...]] = ("deferred_epochs",)

    def schedule_problem(self, epochs: int) -> str | None:
        if self.lbd > 0 and self.deferred_epochs >= epochs:
            return (
                f"deferred_epochs: MACER's robustness term would start at epoch "
                f"{self.deferred_epochs} (from 0) of a {epochs}-epoch schedule, so never"
            )
        return None


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
    m: int = setting(4, need=INT_1)
    eps: float = setting(1.0, need=EPS)
    steps: int = setting(10, need=INT_1)
    warmup_epochs: int = setting(10, need=INT_0)
    schedule_fields: ClassVar[tuple[str, ...]] = ("warmup_epochs",)

    def schedule_problem(self, epochs: int) -> str | None:
        return warmup_problem(self.warmup_epochs, epochs)


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
    lbd: float = setting(1.0, need=LBD)
    eta: float = setting(0.5, need=NUMBER_0)
    loss: str = "default"

    def check(self) -> None:
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
    k: int = setting(1, need=INT_1)
    lbd: float = setting(need=LBD)
    per_term: str = setting("mean", need=one_of(*PER_TERMS))
    label_smoothing: float = setting(0.0, need=LABEL_SMOOTHING)


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
    k: int = setting(1, need=INT_1)
    eps: float = setting(need=EPS)
    steps: int = setting(need=INT_1)
    warmup_epochs: int = setting(10, need=INT_0)
    lbd: float = setting(need=LBD)
    label_smoothing: float = setting(0.0, need=LABEL_SMOOTHING)
    schedule_fields: ClassVar[tuple[str, ...]] = ("warmup_epochs",)

    def schedule_problem(self, epochs: int) -> str | None:
        return warmup_problem(self.warmup_epochs, epochs)


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
    norm: str = setting(need=NORM)
    eps: float = setting(need=NUMBER_POSITIVE)
    steps: int = setting(need=INT_1)
    step_size: float = setting(need=NUMBER_POSITIVE)
    attack_mode: str = setting("train", need=one_of(*ATTACK_MODES))


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
    norm: str = setting("linf", need=NORM)
    eps: float = setting(need=NUMBER_POSITIVE)
    steps: int = setting(need=INT_1)
    step_size: float = setting(need=NUMBER_POSITIVE)
    beta: float = setting(6.0, need=AT_LEAST_0)
    noise: float = setting(0.0, need=AT_LEAST_0)


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
    norm: str = setting("linf", need=NORM)
    eps: float = setting(0.031, need=NUMBER_POSITIVE)
    steps: int = setting(10, need=INT_1)
    step_size: float = setting(0.007, need=NUMBER_POSITIVE)
    beta: float = setting(6.0, need=AT_LEAST_0)


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
    norm: str = setting(need=NORM)
    hinge_max: float = setting(need=number("hinge_max > 0", lambda v: v > 0))
    init_eps: float = setting(need=NUMBER)  # its range depends on hinge_max
    steps: int = setting(need=INT_1)
    step_scale: float = setting(2.5, need=number("step_scale > 0", lambda v: v > 0))
    search_steps: int = setting(10, need=INT_0)
    clean_loss_coeff: float = setting(
        1.0 / 3.0, need=number("0 <= clean_loss_coeff < 1", lambda v: 0 <= v < 1)
    )

    def check(self) -> None:
        require(
            0 < self.init_eps <= self.hinge_max,
            "init_eps",
            f"need 0 < init_eps <= hinge_max = {self.hinge_max}, got {self.init_eps!r}",
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
    norm: str = setting(need=NORM)
    gamma: float = setting(need=ABOVE_0)
    steps: int = setting(need=INT_1)
    step_size: float = setting(need=ABOVE_0)
    noise: float = setting(0.001, need=AT_LEAST_0)
    alpha: float = setting(0.9, need=number("0 < alpha <= 1", lambda v: 0 < v <= 1))
    init_radius: float | None = setting(
        None,
        need=Need(lambda v: v is None or (is_number(v) and v >= 0), "a number >= 0 or null"),
    )

    def revision(self, batch_statistics: bool) -> int:
        # 2: the l2 chain's pull towards x is gamma * (x - x'), as in the authors' code, no
        # longer eta' * gamma * (x - x') (issue 20); linf has no pull
        return 2 if self.norm == "l2" else 1

    def check(self) -> None:
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
    norm: str = setting(need=one_of(*GRADIENT_NORMS))
    lam: float = setting(need=NUMBER_POSITIVE)
    method: str = setting(need=one_of(*GRADIENT_METHODS))
    h: float = setting(0.01, need=NUMBER_POSITIVE)


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
    eps: float = setting(need=NUMBER_POSITIVE)
    m: int = setting(need=INT_1)
    step_size: float | None = setting(
        None,
        need=Need(
            lambda v: v is None or (is_number(v) and v > 0), "a number > 0 or null (for eps)"
        ),
    )
