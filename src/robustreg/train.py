"""The one training loop: every method trains through ``train`` with its objective.

It owns what the papers share (Jeong & Shin 2020, supp. A.1, A.2): SGD with Nesterov
momentum 0.9 without dampening, weight decay, step decay of the learning rate at
fixed epochs, the dataset's augmentation; plus what a long job needs: explicit seeds, a
checkpoint every epoch written atomically, resume from it, a clear stop when the loss
becomes NaN.

Feng et al. 2020 train ImageNet models with NVIDIA's ResNet-50 recipe, which adds a linear
learning-rate warm-up, a cosine decay (``lr_schedule``) and data-parallel training over
several GPUs. For the latter, ``train`` runs as one rank of a ``torch.distributed`` process
group when one is initialized (``python -m robustreg train`` starts the ranks with torchrun
when the schedule asks for ``processes`` > 1).

The ATENT paper (Jagatap et al.) adds two things, both off unless the schedule asks: the
Entropy-SGD optimizer of its baseline rows (``optimizer: entropy_sgd``, see
``robustreg.optim``), and early stopping by validation robust accuracy (section 4: "We
perform early stopping by tracking robust accuracies of validation set and report the best
accuracy found"; ``early_stop``, see ``EarlyStop``).
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from bisect import bisect_right
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.distributed as dist
from torch import nn
from tqdm import tqdm

from robustreg.attacks.pgd import check_threat_model, pgd
from robustreg.data import open_training_images
from robustreg.io import atomic_path
from robustreg.models import create_model
from robustreg.objectives import StepContext, build_objective, keeps_state
from robustreg.optim import EntropySGD

MODEL_FORMAT = "robustreg-model/1"
LR_DECAYS = ("step", "cosine")
OPTIMIZERS = ("sgd", "entropy_sgd", "adam")
ENTROPY_SGD_KEYS = ("langevin_steps", "gamma", "langevin_lr", "noise", "alpha")


class TrainingDiverged(RuntimeError):
    """The loss stopped being finite; no model is written."""


def pick_device(requested: str | None = None) -> torch.device:
    """The caller's device if it names one; else a GPU of this process's own; else the CPU.

    Several GPU jobs may run at once on one machine (``snakemake --resources gpu=4``), and
    nothing tells each which GPU is its own: the GPU comes from ``robustreg.gpus``' pool,
    held until the process ends. ``cuda:1`` is the caller's pick and bypasses the pool;
    plain ``cuda`` means "a GPU" and draws from it. CPU runs never touch the pool.
    """
    from robustreg import gpus

    device = torch.device(requested) if requested else None
    if device is not None and (device.type != "cuda" or device.index is not None):
        return device
    if not torch.cuda.is_available():
        return device or torch.device("cpu")  # "cuda" without CUDA: torch's own error later
    claim = gpus.process_claim(torch.cuda.device_count())
    # Make it the current device too, so what runs on "the current GPU" (cuDNN and cuBLAS
    # handles, torch.cuda calls without a device) does not open a context on GPU 0,
    # another job's, at a few hundred MiB each.
    torch.cuda.set_device(claim.position)
    return torch.device("cuda", claim.position)


def atomic_save(obj, path: str | Path) -> None:
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


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


def lr_schedule(
    optimizer: torch.optim.Optimizer, schedule: dict
) -> torch.optim.lr_scheduler.LRScheduler:
    """The per-epoch learning-rate scheduler of ``schedule`` (stepped once after each epoch).

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
        # MultiStepLR, not an LrFactor: it multiplies by gamma at each milestone where the
        # factor would take a power, and every run of the schedules before warm-up and
        # cosine existed stays bit-identical (its checkpoints resume, too).
        return torch.optim.lr_scheduler.MultiStepLR(
            optimizer, milestones=schedule["lr_milestones"], gamma=schedule["lr_gamma"]
        )
    factor = LrFactor(
        decay=decay,
        warmup_epochs=warmup,
        epochs=schedule["epochs"],
        milestones=tuple(sorted(schedule["lr_milestones"])),
        gamma=schedule["lr_gamma"],
    )
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def build_optimizer(model: nn.Module, schedule: dict) -> torch.optim.Optimizer:
    """The optimizer of ``schedule``: ``optimizer`` is ``sgd`` (the default), ``entropy_sgd``
    or ``adam``.

    SGD and Entropy-SGD take ``lr``, ``momentum``, ``nesterov`` and ``weight_decay``; SGD runs
    without dampening (Jeong & Shin 2020, supp. A.1). Entropy-SGD reads its Langevin settings
    from the mapping ``entropy_sgd`` (keys ``ENTROPY_SGD_KEYS``; each missing one takes
    ``EntropySGD``'s default). Adam (torch's defaults: betas 0.9, 0.999) is the optimizer of
    Madry et al.'s MNIST PGD-AT and of MMA's MNIST recipe; it takes ``lr`` and
    ``weight_decay``, and a schedule for it must say momentum 0 and nesterov false, so that
    no setting it ignores reads as if it applied.
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
        return torch.optim.Adam(
            model.parameters(), lr=schedule["lr"], weight_decay=schedule["weight_decay"]
        )
    if name == "sgd":
        return torch.optim.SGD(
            model.parameters(),
            lr=schedule["lr"],
            momentum=schedule["momentum"],
            nesterov=schedule["nesterov"],
            dampening=0.0,
            weight_decay=schedule["weight_decay"],
        )
    settings = schedule.get("entropy_sgd") or {}
    if not isinstance(settings, dict):
        raise ValueError(f"schedule.entropy_sgd: need a mapping of settings, got {settings!r}")
    unknown = sorted(set(settings) - set(ENTROPY_SGD_KEYS))
    if unknown:
        raise ValueError(
            f"schedule.entropy_sgd: unknown key {unknown[0]!r} (known: "
            f"{', '.join(ENTROPY_SGD_KEYS)})"
        )
    try:
        return EntropySGD(
            model.parameters(),
            lr=schedule["lr"],
            momentum=schedule["momentum"],
            nesterov=schedule["nesterov"],
            weight_decay=schedule["weight_decay"],
            **settings,
        )
    except ValueError as err:
        raise ValueError(f"schedule.entropy_sgd.{err}") from None


def check_schedule(schedule: dict) -> None:
    """Every setting of ``schedule`` the loop reads, checked without training anything, so
    a planner can refuse a bad one before any job runs (one-line ValueErrors)."""
    probe = nn.Linear(1, 1)
    lr_schedule(build_optimizer(probe, schedule), schedule)
    _single_process_only(schedule, EarlyStop.from_schedule(schedule), schedule.get("processes", 1))


def _single_process_only(schedule: dict, early_stop: EarlyStop | None, world: int) -> None:
    """Neither early stopping nor Entropy-SGD is needed multi-process: Entropy-SGD's Langevin
    noise would differ between ranks (each has its own stream) and so would their weights."""
    langevin = schedule.get("optimizer", "sgd") == "entropy_sgd"
    for key, used in (("early_stop", early_stop is not None), ("optimizer", langevin)):
        if used and world > 1:
            raise ValueError(f"schedule.{key}: not supported with schedule.processes > 1")


def _recompute(objective, net: nn.Module, x, y, ctx: StepContext, optimizer, amp: bool):
    """The closure Entropy-SGD calls: the batch's loss again, at the current weights."""

    def closure() -> torch.Tensor:
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=amp):
            loss, _ = objective(net, x, y, ctx)
        loss.backward()
        return loss

    return closure


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

    val_images: int
    norm: str
    eps: float
    steps: int
    step_size: float
    restarts: int = 1
    seed: int = 0

    @classmethod
    def from_schedule(cls, schedule: dict) -> EarlyStop | None:
        """``schedule.early_stop`` checked; None when it is absent or null (off)."""
        spec = schedule.get("early_stop")
        if spec is None:
            return None
        if not isinstance(spec, dict):
            raise ValueError(f"schedule.early_stop: need a mapping or null, got {spec!r}")
        names = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(spec) - set(names))
        if unknown:
            raise ValueError(
                f"schedule.early_stop: unknown key {unknown[0]!r} (known: {', '.join(names)})"
            )
        required = [f.name for f in dataclasses.fields(cls) if f.default is dataclasses.MISSING]
        missing = [name for name in required if name not in spec]
        if missing:
            raise ValueError(f"schedule.early_stop: missing key {missing[0]!r}")
        early_stop = cls(**spec)
        for name in ("val_images", "steps", "restarts", "seed", "eps", "step_size"):
            value = getattr(early_stop, name)
            kinds = int if name in ("val_images", "steps", "restarts", "seed") else (int, float)
            if not isinstance(value, kinds) or isinstance(value, bool):
                raise ValueError(f"schedule.early_stop.{name}: need a number, got {value!r}")
        if early_stop.val_images < 1 or early_stop.seed < 0:
            raise ValueError(
                f"schedule.early_stop: need val_images >= 1 and seed >= 0, got "
                f"{early_stop.val_images} and {early_stop.seed}"
            )
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


def _validation_images(
    train_split: str | Path, config: dict, positions: np.ndarray, batch_size: int, workers: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """The held-out images (CPU), read as the training split is but without augmentation.

    Decoding an image-file split draws a seed from torch's global generator; this runs
    before the training seeds it, so the training's streams are unchanged.
    """
    plain = open_training_images(
        train_split,
        limit=config["data"].get("train_limit"),
        augment="none",
        device="cpu",
        workers=workers,
    )
    chunks = torch.from_numpy(positions).split(batch_size)
    xs, ys = zip(*plain.batches(chunks), strict=True)
    return torch.cat(xs), torch.cat(ys)


def train(
    config: dict,
    train_split: str | Path,
    out_dir: str | Path,
    *,
    device: torch.device | None = None,
    progress: bool = True,
    workers: int = 0,
) -> Path:
    """Train the experiment ``config`` (a resolved experiment, see ``robustreg.plan``).

    Writes ``model.pt`` and ``history.csv`` into ``out_dir`` and returns the model path.
    ``checkpoint.pt`` there is resumed from when its config matches. ``workers`` is the
    number of processes decoding image files of a folder split (tensor splits ignore it).

    With ``schedule.processes`` P > 1 this is one of P ranks of an initialized process group
    (see ``robustreg.cli``), each on its own ``device``: every global batch of
    ``schedule.batch_size`` images is dealt out to the ranks, ``DistributedDataParallel``
    averages their gradients, and rank 0 alone writes files.

    With ``schedule.early_stop`` (see ``EarlyStop``) ``history.csv`` gains ``val_acc``,
    ``val_robust_acc`` and ``selected_epoch`` (the best epoch so far, from 1), and
    ``model.pt`` holds the weights of the best epoch and its number as ``selected_epoch``.

    Every step tells the objective the batch's positions in the split (``StepContext``); a
    method that ``keeps_state`` (MMA) also gets the run's per-example state, which the
    checkpoint holds and a resumed run restores. It needs a single process: each rank would
    update its own copy with its share of the batches.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    device = device or pick_device()
    schedule = config["schedule"]
    rank, world = _rank_and_world(schedule.get("processes", 1))
    early_stop = EarlyStop.from_schedule(schedule)
    _single_process_only(schedule, early_stop, world)
    if keeps_state(config["method"]) and world > 1:
        raise ValueError(
            f"schedule.processes: method {config['method']!r} keeps per-example state, "
            "not supported with schedule.processes > 1"
        )
    objective = build_objective(config["method"], config["sigma"], config["params"])
    images = open_training_images(
        train_split,
        limit=config["data"].get("train_limit"),
        augment=config["data"].get("augment", "none"),
        device=device,
        workers=workers,
    )
    trained_on = None
    if early_stop is not None:
        if early_stop.val_images >= len(images):
            raise ValueError(
                f"schedule.early_stop.val_images: {early_stop.val_images} leaves no training "
                f"images of the split's {len(images)}"
            )
        held = holdout_positions(images.labels, early_stop.val_images, early_stop.seed)
        trained_on = torch.from_numpy(np.setdiff1d(np.arange(len(images)), held))
        val_x, val_y = _validation_images(
            train_split, config, held, schedule["batch_size"], workers
        )

    torch.manual_seed(config["seed"])
    model = create_model(config["arch"], config["num_classes"]).to(device)
    if device.type == "cpu":
        # channels-last convolutions are about 1.7x faster on this CPU; weights are unchanged.
        model = model.to(memory_format=torch.channels_last)
    optimizer = build_optimizer(model, schedule)
    scheduler = lr_schedule(optimizer, schedule)
    shuffle = torch.Generator().manual_seed(config["seed"])
    if rank > 0:
        # Every rank starts from the same weights, but noise and augmentation must be new
        # draws on each: ranks > 0 get streams of their own; rank 0 keeps the single
        # process's stream.
        torch.manual_seed(_rank_seed(config["seed"], rank))
    history: list[dict] = []
    start_epoch = 0
    # what the objective keeps of each example across steps (on the device), if anything
    state: dict[str, torch.Tensor] | None = {} if keeps_state(config["method"]) else None
    # early stopping: the best epoch so far (from 1), its score and its weights (CPU)
    best: dict | None = None

    ckpt_path = out_dir / "checkpoint.pt"
    config_json = json.dumps(config, sort_keys=True)
    if ckpt_path.exists():
        # On the CPU: RNG states must be CPU tensors, and load_state_dict moves the weights
        # and the optimizer's state to the model's device.
        ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=True)
        if ckpt.get("config") == config_json:
            model.load_state_dict(ckpt["model"])
            optimizer.load_state_dict(ckpt["optimizer"])
            scheduler.load_state_dict(ckpt["scheduler"])
            shuffle.set_state(ckpt["shuffle_rng"])
            rng = ckpt["rank_rng"][rank] if world > 1 else ckpt
            torch.set_rng_state(rng["torch_rng"])
            if device.type == "cuda":
                torch.cuda.set_rng_state(rng["cuda_rng"])
            history = json.loads(ckpt["history"])
            start_epoch = ckpt["epoch"] + 1
            best = ckpt.get("best")
            if state is not None:
                state = {k: v.to(device) for k, v in ckpt["objective_state"].items()}

    # What the objective calls. DDP averages the gradients of the ranks during backward. As
    # in NVIDIA's recipe that Feng et al. follow, batch-norm layers normalize each rank's
    # share of a batch by its own statistics (no SyncBatchNorm); the running statistics are
    # rank 0's, which DDP broadcasts before every forward pass.
    net: nn.Module = model
    if world > 1:
        net = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )

    epochs = schedule["epochs"]
    batch_size = schedule["batch_size"]
    amp = bool(schedule.get("amp")) and device.type == "cuda"
    where = f"({config['method']}, sigma={config['sigma']})"
    over = f", mean over {world} processes" if world > 1 else ""
    bar = tqdm(
        total=epochs,
        initial=start_epoch,
        desc=f"train {out_dir.name}",
        disable=not progress or rank > 0,
    )
    for epoch in range(start_epoch, epochs):
        net.train()
        started = time.perf_counter()
        totals: dict[str, float] = {}
        steps = 0
        if trained_on is None:
            order = torch.randperm(len(images), generator=shuffle)
        else:
            order = trained_on[torch.randperm(len(trained_on), generator=shuffle)]
        plan = _rank_chunks(order, batch_size, objective.batch_split, rank, world)
        batches = images.batches(chunk for chunk, _ in plan)
        for (x, y), (chunk, weight) in zip(batches, plan, strict=True):
            if device.type == "cpu":
                x = x.contiguous(memory_format=torch.channels_last)
            ctx = StepContext(
                epoch=epoch,
                epochs=epochs,
                indices=chunk.to(device),
                num_examples=len(images),
                state=state,
            )
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                loss, logs = objective(net, x, y, ctx)
            # Every rank must stop at the same step: one that raised alone would leave the
            # others waiting for it in backward's all-reduce.
            seen = _mean_over_ranks(loss.detach(), world)
            if not torch.isfinite(seen):
                raise TrainingDiverged(
                    f"loss became {seen.item()}{over} at epoch {epoch + 1}/{epochs}, "
                    f"step {steps + 1} {where}"
                )
            optimizer.zero_grad(set_to_none=True)
            (loss * weight if world > 1 else loss).backward()
            if isinstance(optimizer, EntropySGD):
                optimizer.step(_recompute(objective, net, x, y, ctx, optimizer, amp))
            else:
                optimizer.step()
            steps += 1
            for key, value in logs.items():
                totals[key] = totals.get(key, 0.0) + value
        # A finite loss can still leave non-finite weights or batch-norm statistics behind
        # (the last step's update); such a model could never be certified.
        bad = next((k for k, v in model.state_dict().items() if not _finite(v)), None)
        if _on_any_rank(bad is not None, device, world):
            raise TrainingDiverged(
                f"{bad or 'a weight of another process'} became non-finite in epoch "
                f"{epoch + 1}/{epochs} {where}"
            )
        row = {"epoch": epoch + 1, "lr": optimizer.param_groups[0]["lr"], "steps": steps}
        row |= _means_over_ranks(
            {key: value / max(steps, 1) for key, value in totals.items()}, device, world
        )
        row["seconds"] = time.perf_counter() - started
        if early_stop is not None:
            row["val_acc"], row["val_robust_acc"] = early_stop.evaluate(
                model, val_x, val_y, batch_size, device
            )
            if best is None or row["val_robust_acc"] > best["val_robust_acc"]:
                best = {
                    "epoch": epoch + 1,
                    "val_robust_acc": row["val_robust_acc"],
                    "state_dict": {
                        k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()
                    },
                }
            row["selected_epoch"] = best["epoch"]
        history.append(row)
        scheduler.step()
        rng = {
            "torch_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state() if device.type == "cuda" else torch.zeros(0),
        }
        if world > 1:
            # Each rank resumes its own noise stream; the other fields are alike on every rank.
            every_rank: list[dict | None] = [None] * world
            dist.all_gather_object(every_rank, rng)
            rng = {"rank_rng": every_rank}
        if rank == 0:
            atomic_save(
                {
                    "config": config_json,
                    "epoch": epoch,
                    "model": model.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(),
                    "shuffle_rng": shuffle.get_state(),
                    **rng,
                    "history": json.dumps(history),
                    **({"best": best} if best is not None else {}),
                    **(
                        {"objective_state": {k: v.cpu() for k, v in state.items()}}
                        if state is not None
                        else {}
                    ),
                },
                ckpt_path,
            )
        if world > 1:
            dist.barrier()  # a rank killed from here on leaves a checkpoint of this epoch
        bar.set_postfix({k: f"{v:.3g}" for k, v in row.items() if k in ("loss", "acc")})
        bar.update()
    bar.close()

    model_path = out_dir / "model.pt"
    if rank == 0:
        with atomic_path(out_dir / "history.csv") as tmp:
            pd.DataFrame(history).to_csv(tmp, index=False)
        weights = model.state_dict() if best is None else best["state_dict"]
        atomic_save(
            {
                "format": MODEL_FORMAT,
                "arch": config["arch"],
                "num_classes": config["num_classes"],
                "config": config_json,
                "state_dict": {k: v.cpu() for k, v in weights.items()},
                **({"selected_epoch": best["epoch"]} if best is not None else {}),
            },
            model_path,
        )
        ckpt_path.unlink(missing_ok=True)
    if world > 1:
        dist.barrier()  # every rank returns the path once the model is there
    return model_path


def _rank_and_world(processes) -> tuple[int, int]:
    """This process's rank and the number of ranks; (0, 1) without a process group.

    Refuses a schedule whose ``processes`` differs from the process group's size: ranks
    would take the wrong shares of each batch.
    """
    if not isinstance(processes, int) or isinstance(processes, bool) or processes < 1:
        raise ValueError(f"schedule.processes: need an integer >= 1, got {processes!r}")
    rank, world = (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)
    if world != processes:
        raise ValueError(
            f"schedule.processes is {processes} but this process is one of {world} "
            "(python -m robustreg train starts the processes a schedule asks for)"
        )
    return rank, world


def _rank_seed(seed: int, rank: int) -> int:
    """A seed of torch's global generator for rank ``rank`` > 0, independent of the others."""
    return int(np.random.SeedSequence([seed, rank]).generate_state(1, np.uint64)[0])


def _rank_chunks(
    order: torch.Tensor, batch_size: int, batch_split: int, rank: int, world: int
) -> list[tuple[torch.Tensor, float]]:
    """This rank's steps of an epoch: the chunk of ``order`` each trains on, and its weight.

    Each global batch of ``batch_size`` indices is dealt out to the ``world`` ranks
    (``batch[rank::world]``) and each rank cuts its share into ``batch_split`` chunks, one
    optimizer step per chunk, so step j of every rank belongs to the same global chunk. A
    step is taken only where no rank's chunk is empty: a rank that skipped it would leave
    the others waiting in backward's all-reduce. DDP averages the ranks' gradients of their
    mean losses; when the shares differ in size (the last batch), ``weight`` scales a rank's
    loss by its share of the global chunk, so the step still follows the mean loss over the
    global chunk, as a single process's would. With one rank this is ``order``'s batches
    cut as before, weights 1.
    """
    plan = []
    for batch in order.split(batch_size):
        shares = [batch[r::world].tensor_split(batch_split) for r in range(world)]
        for parts in zip(*shares, strict=True):
            sizes = [len(part) for part in parts]
            if min(sizes) > 0:
                plan.append((parts[rank], sizes[rank] * world / sum(sizes)))
    return plan


def _mean_over_ranks(value: torch.Tensor, world: int) -> torch.Tensor:
    """The mean of a scalar over the ranks (collective); the value itself with one rank."""
    if world == 1:
        return value
    total = value.float().clone()
    dist.all_reduce(total)
    return total / world


def _on_any_rank(flag: bool, device: torch.device, world: int) -> bool:
    """Whether ``flag`` holds on some rank (collective); ``flag`` itself with one rank."""
    if world == 1:
        return flag
    anywhere = torch.tensor([int(flag)], device=device)
    dist.all_reduce(anywhere, op=dist.ReduceOp.MAX)
    return bool(anywhere.item())


def _means_over_ranks(values: dict[str, float], device: torch.device, world: int) -> dict:
    """Each value averaged over the ranks, in one all-reduce; ``values`` with one rank."""
    if world == 1:
        return values
    stacked = torch.tensor(list(values.values()), dtype=torch.float64, device=device)
    dist.all_reduce(stacked)
    return dict(zip(values, (stacked / world).tolist(), strict=True))


def _finite(tensor: torch.Tensor) -> bool:
    return not tensor.is_floating_point() or bool(torch.isfinite(tensor).all())


def load_model(path: str | Path, device: torch.device) -> tuple[nn.Module, dict]:
    """A trained model in eval mode and its experiment config; a clear error for anything else."""
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise ValueError(f"{path}: model file does not exist") from None
    except Exception as err:  # torch raises many types for corrupt or foreign pickles
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ValueError(f"{path}: not a readable robustreg model checkpoint ({reason})") from err
    if not isinstance(ckpt, dict) or ckpt.get("format") != MODEL_FORMAT:
        raise ValueError(
            f"{path}: not a robustreg model checkpoint (expected format {MODEL_FORMAT})"
        )
    model = create_model(ckpt["arch"], ckpt["num_classes"])
    try:
        model.load_state_dict(ckpt["state_dict"])
    except RuntimeError as err:
        raise ValueError(f"{path}: weights do not fit architecture {ckpt['arch']!r}") from err
    if not all(_finite(v) for v in ckpt["state_dict"].values()):
        raise ValueError(f"{path}: checkpoint holds non-finite weights")
    return model.to(device).eval(), json.loads(ckpt["config"])
