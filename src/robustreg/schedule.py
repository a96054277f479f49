"""A training's schedule: the ``schedules.<name>`` mapping of the config, what each of its
settings means and the checks that refuse a bad one.

``check_schedule`` checks every setting the training loop reads without importing torch, so
the planner refuses a bad schedule before any job starts and every ``snakemake`` call stays
quick (issue 19). What a schedule builds, the optimizer and the learning-rate scheduler, is in
``robustreg.optim``; early stopping's PGD runs in ``EarlyStop.evaluate``, which imports torch
when it runs.
"""

from __future__ import annotations

import dataclasses
import math
from bisect import bisect_right
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from robustreg.attacks.threat import NORMS, check_threat_model
from robustreg.settings import (
    BATCH_SIZE,
    BOOL,
    COUNT,
    MAX_COUNT,
    NATURAL,
    NUMBER_0,
    NUMBER_POSITIVE,
    SEED,
    Need,
    is_int,
    is_number,
    json_schema,
    one_of,
    read_settings,
    setting,
)

if TYPE_CHECKING:
    import torch
    from torch import nn

LR_DECAYS = ("step", "cosine")
OPTIMIZERS = ("sgd", "entropy_sgd", "adam")


def _named(choices: tuple[str, ...]) -> Need:
    return one_of(*choices, explain=lambda v: f"{v!r} is not one of {', '.join(choices)}")


@dataclass(frozen=True)
class EntropySgdSettings:
    """``schedule.entropy_sgd``: Entropy-SGD's Langevin settings (``robustreg.optim.EntropySGD``,
    Chaudhari et al. 2017, Algorithm 1); each key a schedule leaves out takes its default."""

    langevin_steps: int = setting(5, need=COUNT, doc="L, Langevin steps per weight update")
    gamma: float = setting(
        1e-3, need=NUMBER_0, doc="the scope: coupling of the Langevin chain to the weights"
    )
    langevin_lr: float = setting(0.1, need=NUMBER_POSITIVE, doc="the Langevin step size")
    noise: float = setting(1e-4, need=NUMBER_0, doc="epsilon, the Langevin noise's scale")
    alpha: float = setting(
        0.25,
        need=Need(
            lambda v: is_number(v) and 0 < v <= 1,
            "0 < alpha <= 1",
            schema={"type": "number", "exclusiveMinimum": 0, "maximum": 1},
        ),
        doc="the exponential average's weight on the newest Langevin sample",
    )


ENTROPY_SGD_DEFAULTS = {f.name: f.default for f in dataclasses.fields(EntropySgdSettings)}


@dataclass(frozen=True)
class LrFactor:
    """The learning rate of epoch ``e`` (from 0) as a multiple of ``schedule.lr``.

    A callable object rather than a closure so that ``LambdaLR.state_dict`` saves it and a
    resumed run continues the same schedule. ``warmup_epochs`` w > 0 ramps linearly:
    (e + 1) / w for e < w. Afterwards ``step`` multiplies by ``gamma`` at each of the
    ``milestones`` passed (epochs counted from the start, warm-up included), and ``cosine``
    follows 0.5 * (1 + cos(pi * (e - w) / (epochs - w))), from 1 down towards 0.
    """

    decay: str
    warmup_epochs: int
    epochs: int
    milestones: tuple[int, ...]
    gamma: float

    def __call__(self, epoch: int) -> float:
        if epoch < self.warmup_epochs:
            return (epoch + 1) / self.warmup_epochs
        if self.decay == "cosine":
            # The scheduler also steps once after the last epoch, which may end the warm-up.
            span = max(self.epochs - self.warmup_epochs, 1)
            return 0.5 * (1.0 + math.cos(math.pi * (epoch - self.warmup_epochs) / span))
        return self.gamma ** bisect_right(self.milestones, epoch)


def lr_factor(schedule: dict) -> LrFactor | None:
    """The learning rate of each epoch as a multiple of ``lr``, checked; None for a step decay
    without warm-up, which ``torch.optim.lr_scheduler.MultiStepLR`` runs (``optim.lr_schedule``).

    ``lr_decay`` is ``step`` (the default: ``lr_gamma`` at ``lr_milestones``) or ``cosine``;
    ``warmup_epochs`` (default 0) adds a linear warm-up to either. ``cosine`` with a warm-up
    is Feng et al. 2020's ImageNet schedule, "0.1 * epoch/8 for warm-up and
    0.05 * (1 + cos(pi * epoch / (50 - 8))) afterwards", read as the ``lr_cosine_policy`` of
    NVIDIA DeepLearningExamples' ResNet-50 (PyTorch/Classification/ConvNets/
    image_classification/training.py), whose recipe their ImageNet settings are (momentum
    0.875, weight decay 1/32768, label smoothing 0.1, 50 epochs, 8 of warm-up): per epoch,
    lr * (e + 1) / w while e < w, then lr * 0.5 * (1 + cos(pi * (e - w) / (epochs - w))).
    """
    decay = schedule.get("lr_decay", "step")
    warmup = schedule.get("warmup_epochs", 0)
    if decay not in LR_DECAYS:
        raise ValueError(f"schedule.lr_decay: {decay!r} is not one of {', '.join(LR_DECAYS)}")
    if not isinstance(warmup, int) or isinstance(warmup, bool) or warmup < 0:
        raise ValueError(f"schedule.warmup_epochs: need an integer >= 0, got {warmup!r}")
    if decay == "step" and warmup == 0:
        return None
    return LrFactor(
        decay=decay,
        warmup_epochs=warmup,
        epochs=schedule["epochs"],
        milestones=tuple(sorted(schedule["lr_milestones"])),
        gamma=schedule["lr_gamma"],
    )


def check_optimizer(schedule: dict) -> str:
    """The name of ``schedule``'s optimizer, ``optimizer``: ``sgd`` (the default),
    ``entropy_sgd`` or ``adam``; every setting it takes checked, with one-line ValueErrors
    naming the key for whatever the optimizer would refuse.

    SGD and Entropy-SGD take ``lr``, ``momentum``, ``nesterov`` and ``weight_decay``; SGD runs
    without dampening (Jeong & Shin 2020, supp. A.1), so Nesterov momentum needs momentum > 0.
    Entropy-SGD reads its Langevin settings from the mapping ``entropy_sgd``, declared by
    ``EntropySgdSettings`` (each missing one takes its default, ``ENTROPY_SGD_DEFAULTS``).
    Adam (torch's defaults: betas 0.9, 0.999) is the optimizer of Madry et al.'s MNIST PGD-AT
    and of MMA's MNIST recipe; it takes ``lr`` and ``weight_decay``, and a schedule for it must
    say momentum 0 and nesterov false, so that no setting it ignores reads as if it applied.
    """
    name = schedule.get("optimizer", "sgd")
    if name not in OPTIMIZERS:
        raise ValueError(f"schedule.optimizer: {name!r} is not one of {', '.join(OPTIMIZERS)}")
    if name == "adam":
        if schedule["momentum"] != 0 or schedule["nesterov"]:
            raise ValueError(
                "schedule.momentum: Adam has no momentum setting; give momentum 0 and "
                "nesterov false"
            )
        _check_rates(schedule, ("lr", "weight_decay"))
    elif name == "sgd":
        _check_rates(schedule, ("lr", "momentum", "weight_decay"))
        if schedule["nesterov"] and schedule["momentum"] == 0:
            raise ValueError("schedule.nesterov: Nesterov momentum needs momentum > 0")
    else:
        settings = entropy_sgd_settings(schedule)
        try:
            check_entropy_sgd(
                lr=schedule["lr"],
                momentum=schedule["momentum"],
                nesterov=schedule["nesterov"],
                weight_decay=schedule["weight_decay"],
                **(ENTROPY_SGD_DEFAULTS | settings),
            )
        except ValueError as err:
            raise ValueError(f"schedule.entropy_sgd.{err}") from None
    return name


def entropy_sgd_settings(schedule: dict) -> dict:
    """``schedule.entropy_sgd``, the Langevin settings it gives (none when absent or null)."""
    settings = schedule.get("entropy_sgd") or {}
    if not isinstance(settings, dict):
        raise ValueError(f"schedule.entropy_sgd: need a mapping of settings, got {settings!r}")
    read_settings(EntropySgdSettings, settings, "schedule.entropy_sgd")
    return settings


def check_entropy_sgd(
    *,
    lr: float,
    momentum: float,
    nesterov: bool,
    weight_decay: float,
    langevin_steps: int,
    gamma: float,
    langevin_lr: float,
    noise: float,
    alpha: float,
) -> None:
    """One-line errors naming the setting of ``robustreg.optim.EntropySGD`` that cannot run."""
    rates = {"lr": lr, "weight_decay": weight_decay, "gamma": gamma, "noise": noise}
    for name, value in rates.items():
        if not value >= 0:  # also refuses NaN
            raise ValueError(f"{name}: need a number >= 0, got {value!r}")
    if not langevin_lr > 0:
        raise ValueError(f"langevin_lr: need a number > 0, got {langevin_lr!r}")
    if not 0 <= momentum < 1:
        raise ValueError(f"momentum: need 0 <= momentum < 1, got {momentum!r}")
    if nesterov and momentum == 0:
        raise ValueError("nesterov: Nesterov momentum needs momentum > 0")
    if not 0 < alpha <= 1:
        raise ValueError(f"alpha: need 0 < alpha <= 1, got {alpha!r}")
    if not isinstance(langevin_steps, int) or isinstance(langevin_steps, bool):
        raise ValueError(f"langevin_steps: need an integer >= 1, got {langevin_steps!r}")
    if langevin_steps < 1:
        raise ValueError(f"langevin_steps: need an integer >= 1, got {langevin_steps!r}")


def _check_rates(schedule: dict, keys: tuple[str, ...]) -> None:
    """What torch's SGD and Adam refuse: a negative learning rate, momentum or weight decay."""
    for key in keys:
        value = schedule[key]
        if not (isinstance(value, int | float) and not isinstance(value, bool) and value >= 0):
            raise ValueError(f"schedule.{key}: need a number >= 0, got {value!r}")


def check_schedule(schedule: dict) -> None:
    """Every setting of ``schedule`` the loop reads, checked without torch, so a planner can
    refuse a bad one before any job runs (one-line ValueErrors): each against its declaration
    (``ScheduleSettings``), then what the optimizer, the learning-rate schedule and the
    processes need together."""
    read_settings(ScheduleSettings, schedule, "schedule")
    check_optimizer(schedule)
    lr_factor(schedule)
    single_process_only(schedule, EarlyStop.from_schedule(schedule), schedule.get("processes", 1))


def single_process_only(schedule: dict, early_stop: EarlyStop | None, world: int) -> None:
    """Neither early stopping nor Entropy-SGD is needed multi-process: Entropy-SGD's Langevin
    noise would differ between ranks (each has its own stream) and so would their weights."""
    langevin = schedule.get("optimizer", "sgd") == "entropy_sgd"
    for key, used in (("early_stop", early_stop is not None), ("optimizer", langevin)):
        if used and world > 1:
            raise ValueError(f"schedule.{key}: not supported with schedule.processes > 1")


@dataclass(frozen=True)
class EarlyStop:
    """Model selection by robust accuracy on images held out of the training split.

    The ATENT paper early-stops every model it trains "by tracking robust accuracies of
    validation set" (section 4), and its Table 3 row PGD-AT(E) is Rice et al.'s (2020)
    early-stopped PGD-AT. ``val_images`` images of the training split (``holdout_positions``
    with ``seed``, class-balanced, the same for every training seed) are never trained on.
    After each epoch the model, in eval mode, is scored on them without augmentation: clean
    accuracy, and accuracy on the PGD examples of ``robustreg.attacks.pgd`` (``norm``,
    ``eps``, ``steps``, ``step_size``, ``restarts``; random start drawn from ``seed``, so the
    score of given weights is reproducible), as Rice et al.'s ``train_cifar.py`` and TRADES'
    ``eval_adv_test_whitebox`` count it. The epoch of the highest robust accuracy (the
    earlier one on ties) gives the weights of ``model.pt``.
    """

    val_images: int = setting(need=COUNT, doc="training images held out to score each epoch")
    # checked with eps, steps and step_size as one threat model (check_threat_model)
    norm: str = setting(
        need=Need(lambda v: True, f"one of {', '.join(NORMS)}", schema={"enum": list(NORMS)}),
        doc="the PGD attack's norm",
    )
    eps: float = setting(need=NUMBER_0, doc="its radius")
    steps: int = setting(need=NATURAL, doc="its steps")
    step_size: float = setting(need=NUMBER_0, doc="its step size")
    restarts: int = setting(1, need=COUNT, doc="its random restarts")
    seed: int = setting(0, need=SEED, doc="the seed of the held-out images and of its start")

    @classmethod
    def from_schedule(cls, schedule: dict) -> EarlyStop | None:
        """``schedule.early_stop`` checked; None when it is absent or null (off)."""
        spec = schedule.get("early_stop")
        if spec is None:
            return None
        if not isinstance(spec, dict):
            raise ValueError(f"schedule.early_stop: need a mapping or null, got {spec!r}")
        early_stop = cls(**read_settings(cls, spec, "schedule.early_stop"))
        try:
            check_threat_model(
                early_stop.norm,
                early_stop.eps,
                early_stop.steps,
                early_stop.step_size,
                early_stop.restarts,
            )
        except ValueError as err:
            raise ValueError(f"schedule.early_stop: {err}") from None
        return early_stop

    def evaluate(
        self,
        model: nn.Module,
        x: torch.Tensor,
        y: torch.Tensor,
        batch_size: int,
        device: torch.device,
    ) -> tuple[float, float]:
        """Clean and PGD robust accuracy of ``model`` on ``x``, ``y`` (any device).

        Leaves the model in eval mode. PGD draws from its own seed inside a forked RNG, so
        the training's random streams (and so a resumed run) are untouched.
        """
        # here, not at the top: planning reads this module and must not import torch
        import torch

        from robustreg.attacks.pgd import pgd

        model.eval()
        clean = robust = 0
        forked = [device] if device.type == "cuda" else []
        with torch.random.fork_rng(devices=forked):
            torch.manual_seed(self.seed)
            for xb, yb in zip(x.split(batch_size), y.split(batch_size), strict=True):
                xb, yb = xb.to(device), yb.to(device)
                if device.type == "cpu":
                    xb = xb.contiguous(memory_format=torch.channels_last)
                with torch.no_grad():
                    clean += int((model(xb).argmax(dim=1) == yb).sum())
                adv = pgd(
                    model,
                    xb,
                    yb,
                    norm=self.norm,
                    eps=self.eps,
                    steps=self.steps,
                    step_size=self.step_size,
                    restarts=self.restarts,
                )
                with torch.no_grad():
                    robust += int((model(adv).argmax(dim=1) == yb).sum())
        return clean / len(y), robust / len(y)


def holdout_positions(labels: torch.Tensor | np.ndarray, count: int, seed: int) -> np.ndarray:
    """``count`` positions of a split with ``labels``, sorted: a seeded, class-balanced choice.

    Classes are dealt round-robin, each in a random order of its images, and the classes of
    a round in a random order, so class counts differ by at most one (until a class runs
    out). It depends on ``seed`` and the labels only, not on the training seed.
    """
    y = np.asarray(labels)
    rng = np.random.default_rng(seed)
    rank = np.empty(len(y), dtype=np.int64)
    for label in np.unique(y):
        members = np.flatnonzero(y == label)
        rank[rng.permutation(members)] = np.arange(len(members))
    order = np.lexsort((rng.permutation(len(y)), rank))
    return np.sort(order[:count])


def _mapping_of(declared: type, says: str) -> Need:
    """A mapping the declaration ``declared`` reads (by its own reader, which names its keys),
    or null."""
    return Need(
        lambda v: v is None or isinstance(v, dict),
        says,
        schema=json_schema(declared) | {"type": ["object", "null"]},
    )


@dataclass(frozen=True)
class ScheduleSettings:
    """A schedule, ``schedules.<name>`` of the config: what the training loop reads. The
    config schema's ``schedules`` is generated from this declaration (``json_schema``)."""

    epochs: int = setting(need=COUNT, doc="training epochs")
    batch_size: int = setting(need=BATCH_SIZE, doc="training images per step")
    lr: float = setting(need=NUMBER_0, doc="the learning rate (after any warm-up)")
    momentum: float = setting(need=NUMBER_0, doc="SGD's momentum, without dampening")
    nesterov: bool = setting(need=BOOL, doc="Nesterov momentum (needs momentum > 0)")
    weight_decay: float = setting(need=NUMBER_0, doc="L2 weight decay")
    lr_milestones: list = setting(
        need=Need(
            lambda v: isinstance(v, list) and all(is_int(e) and 1 <= e <= MAX_COUNT for e in v),
            "a list of epochs >= 1",
            schema={"type": "array", "items": {"$ref": "#/$defs/count"}},
        ),
        doc="lr_decay step: the epochs (counted from 0, warm-up included) at which the "
        "learning rate is multiplied by lr_gamma",
    )
    lr_gamma: float = setting(need=NUMBER_POSITIVE, doc="lr_decay step: the factor")
    amp: bool = setting(False, need=BOOL, doc="mixed precision on GPUs")
    lr_decay: str = setting(
        "step",
        need=_named(LR_DECAYS),
        doc="step: x lr_gamma at lr_milestones; cosine: to 0 after the warm-up",
    )
    warmup_epochs: int = setting(0, need=NATURAL, doc="linear warm-up epochs")
    processes: int = setting(
        1, need=COUNT, doc="data-parallel training processes (torchrun), one GPU each"
    )
    optimizer: str = setting(
        "sgd",
        need=_named(OPTIMIZERS),
        doc="sgd; entropy_sgd: Chaudhari et al.'s, settings under entropy_sgd; adam: momentum "
        "0, nesterov false",
    )
    entropy_sgd: dict | None = setting(
        None,
        need=_mapping_of(EntropySgdSettings, "a mapping of settings"),
        doc="optimizer entropy_sgd only: its Langevin settings; missing keys take their defaults",
    )
    early_stop: dict | None = setting(
        None,
        need=_mapping_of(EarlyStop, "a mapping or null"),
        doc="keep the epoch of best PGD robust accuracy on val_images training images held out "
        "of training (EarlyStop); null or absent: the last epoch",
    )
