"""The one training loop: every method trains through ``train`` with its objective, in the
steps ``_prepare`` (the run, resumed or new), ``_epoch`` and its ``_step``s, ``_checkpoint``
and ``_finish``. Data-parallel ranks are ``robustreg.distributed``'s, devices
``robustreg.devices``', and files ``robustreg.checkpoints``' and ``robustreg.model_files``'.

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

The files of an experiment's folder (``robustreg.checkpoints`` reads and writes them),
beside ``model.pt`` and ``history.csv`` (``robustreg.model_files``):
``checkpoint.pt`` is the last epoch's state, resumed from; ``checkpoint.prev.pt`` the
epoch's before, resumed from when the last is found corrupt (a corrupt checkpoint is set
aside, see ``robustreg.integrity``, never deleted). A finished training replaces both by
``checkpoint.final.pt``, which ``model.pt`` and ``history.csv`` are written from, so that a
rerun of the experiment finds them again in seconds, without training, when they were
deleted (``snakemake --rerun-incomplete`` deletes a training's outputs when Snakemake was
killed while it ran, even if it had finished), and, when nothing was deleted, writes the
same files again. It is slim: the model file's record and the history, no optimizer state,
no last-epoch weights beside an early-stopped model's, so about the size of ``model.pt``;
and a copy, not a hard link, so that whatever overwrites ``model.pt`` in place cannot take
it along. A checkpoint is used only by a run of its config and training data (the split
file's SHA-256); one of another run is passed over. To train an experiment again, delete
its folder.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from tqdm import tqdm

from robustreg import distributed
from robustreg.checkpoints import (
    FINAL_CHECKPOINT,
    load_checkpoint,
    resume_keys,
    save_checkpoint,
    save_final,
    write_results,
)
from robustreg.data import open_training_images, to_device
from robustreg.devices import device_name, pick_device
from robustreg.integrity import file_sha256
from robustreg.model_files import MODEL_FORMAT
from robustreg.models import create_model
from robustreg.objectives import StepContext, build_objective, keeps_state
from robustreg.optim import EntropySGD, build_optimizer, lr_schedule
from robustreg.schedule import EarlyStop, holdout_positions, single_process_only

__all__ = ["TrainingDiverged", "train"]


class TrainingDiverged(RuntimeError):
    """The loss stopped being finite; no model is written."""


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
    A checkpoint there of this config and training data (see the module's docstring) is
    resumed from, or, if final, gives both files without training. ``workers`` is the
    number of processes decoding image files of a folder split (tensor splits ignore it).

    With ``schedule.processes`` P > 1 this is one of P ranks of an initialized process group
    (see ``robustreg.cli``), each on its own ``device``: every global batch of
    ``schedule.batch_size`` images is dealt out to the ranks, ``DistributedDataParallel``
    averages their gradients, and rank 0 alone writes files.

    With ``schedule.early_stop`` (see ``EarlyStop``) ``history.csv`` gains ``val_acc``,
    ``val_robust_acc`` and ``selected_epoch`` (the best epoch so far, from 1), and
    ``model.pt`` holds the weights of the best epoch and its number as ``selected_epoch``.

    Every step tells the objective the batch's positions in the split (``StepContext``); a
    method that ``keeps_state`` (MMA, free adversarial training) also gets the run's state,
    which the checkpoint holds and a resumed run restores. It needs a single process: each
    rank would update its own copy with its share of the batches. An objective with
    ``replays`` m > 1 trains m optimizer steps on each chunk, calling ``after_backward``
    between each backward pass and its step; ``steps`` in the history counts optimizer
    steps, and the logged values are means over them.

    ``history.csv``'s ``seconds`` is an epoch's wall time from its first step to the end of
    its early-stopping validation, if any (what the user pays for the epoch; the checkpoint
    write after it is not counted). ``model.pt`` records their sum as ``train_seconds``, the
    epochs done before a resume included, and the hardware as ``device`` (``device_name``,
    of the run that finished; see ``training_record``).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    device = device or pick_device()
    rank, world = distributed.rank_and_world(config["schedule"].get("processes", 1))
    run = _prepare(config, train_split, out_dir, device, rank, world, workers)
    if run is not None:
        epochs = config["schedule"]["epochs"]
        bar = tqdm(
            total=epochs,
            initial=run.start_epoch,
            desc=f"train {out_dir.name}",
            disable=not progress or rank > 0,
        )
        for epoch in range(run.start_epoch, epochs):
            row = _epoch(run, epoch)
            report = run.epoch_report(row) if run.epoch_report is not None and rank == 0 else None
            if report:
                bar.write(report, file=sys.stderr)
            _checkpoint(run, epoch)
            bar.set_postfix({k: f"{v:.3g}" for k, v in row.items() if k in ("loss", "acc")})
            bar.update()
        bar.close()
        _finish(run)
    if world > 1:
        dist.barrier()  # every rank returns the path once the model is there
    return out_dir / "model.pt"


@dataclass
class _Run:
    """A training between its steps: what ``_prepare`` built or resumed, and its progress."""

    config: dict
    out_dir: Path
    device: torch.device
    rank: int
    world: int
    identity: dict  # what every checkpoint of this run holds, and is checked against
    objective: Any
    images: Any
    amp: bool
    channels_last: bool
    model: nn.Module
    net: nn.Module  # what the objective calls: the model, or its DDP wrapper
    optimizer: torch.optim.Optimizer
    scheduler: Any
    shuffle: torch.Generator
    early_stop: EarlyStop | None
    trained_on: torch.Tensor | None  # early stopping: the positions not held out
    validation: tuple[torch.Tensor, torch.Tensor] | None  # early stopping: the held-out images
    history: list[dict]
    start_epoch: int
    # what the objective keeps of each example across steps (on the device), if anything
    state: dict[str, torch.Tensor] | None
    # early stopping: the best epoch so far (from 1), its score and its weights (CPU)
    best: dict | None
    # The loop needs only a callable with a batch_split; these hooks of ``Objective`` are
    # optional, so a wrapper that lacks them (as tests use) trains one step per chunk.
    replays: int
    after_backward: Any
    epoch_report: Any

    @property
    def where(self) -> str:
        return f"({self.config['method']}, sigma={self.config['sigma']})"


def _prepare(
    config: dict,
    train_split: str | Path,
    out_dir: Path,
    device: torch.device,
    rank: int,
    world: int,
    workers: int,
) -> _Run | None:
    """The run, new or resumed from its checkpoint; None when its final checkpoint gave
    ``model.pt`` and ``history.csv`` without training. Every setting is checked before the
    data is read."""
    schedule = config["schedule"]
    early_stop = EarlyStop.from_schedule(schedule)
    single_process_only(schedule, early_stop, world)
    if keeps_state(config["method"]) and world > 1:
        raise ValueError(
            f"schedule.processes: method {config['method']!r} keeps per-example state, "
            "not supported with schedule.processes > 1"
        )
    objective = build_objective(config["method"], config["sigma"], config["params"])
    # Judged on every device, although only CUDA runs autocast: a schedule is refused alike
    # wherever it is tried.
    problem = getattr(objective, "bf16_problem", None) if schedule.get("amp") else None
    if problem:
        raise ValueError(
            f"schedule.amp: method {config['method']!r} cannot train in bfloat16: {problem}"
        )
    images = open_training_images(
        train_split,
        limit=config["data"].get("train_limit"),
        augment=config["data"].get("augment", "none"),
        device=device,
        workers=workers,
    )
    identity = {
        "config": json.dumps(config, sort_keys=True),
        "data_sha256": file_sha256(train_split),
    }
    keys = resume_keys(world, early_stop is not None, keeps_state(config["method"]))
    start, ckpt = load_checkpoint(out_dir, identity, keys, rank, world)
    if start == FINAL_CHECKPOINT:
        if rank == 0:
            write_results(out_dir, ckpt)
            print(
                f"{out_dir / start}: restored model.pt and history.csv from the final "
                "checkpoint, no epoch trained (delete the folder to train again)",
                file=sys.stderr,
            )
        return None
    trained_on, validation = None, None
    if early_stop is not None:
        if early_stop.val_images >= len(images):
            raise ValueError(
                f"schedule.early_stop.val_images: {early_stop.val_images} leaves no training "
                f"images of the split's {len(images)}"
            )
        held = holdout_positions(images.labels, early_stop.val_images, early_stop.seed)
        trained_on = torch.from_numpy(np.setdiff1d(np.arange(len(images)), held))
        validation = _validation_images(train_split, config, held, schedule["batch_size"], workers)

    amp = bool(schedule.get("amp")) and device.type == "cuda"
    # Channels-last convolutions are about 1.7x faster on the CPU, and cuDNN's bfloat16
    # tensor-core convolutions run channels-last (it transposes contiguous NCHW tensors
    # around each one); float32 CUDA runs keep the contiguous layout. Weights are unchanged.
    channels_last = device.type == "cpu" or amp
    torch.manual_seed(config["seed"])
    model = create_model(config["arch"], config["num_classes"]).to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = build_optimizer(model, schedule)
    scheduler = lr_schedule(optimizer, schedule)
    shuffle = torch.Generator().manual_seed(config["seed"])
    if rank > 0:
        # Every rank starts from the same weights, but noise and augmentation must be new
        # draws on each: ranks > 0 get streams of their own; rank 0 keeps the single
        # process's stream.
        torch.manual_seed(distributed.rank_seed(config["seed"], rank))
    history: list[dict] = []
    start_epoch = 0
    state: dict[str, torch.Tensor] | None = {} if keeps_state(config["method"]) else None
    best: dict | None = None

    if ckpt is not None:
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
        del ckpt  # host memory the run no longer needs: its state was copied above

    # DDP averages the gradients of the ranks during backward. As in NVIDIA's recipe that
    # Feng et al. follow, batch-norm layers normalize each rank's share of a batch by its
    # own statistics (no SyncBatchNorm); the running statistics are rank 0's, which DDP
    # broadcasts before every forward pass.
    net: nn.Module = model
    if world > 1:
        net = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )
    return _Run(
        config=config,
        out_dir=out_dir,
        device=device,
        rank=rank,
        world=world,
        identity=identity,
        objective=objective,
        images=images,
        amp=amp,
        channels_last=channels_last,
        model=model,
        net=net,
        optimizer=optimizer,
        scheduler=scheduler,
        shuffle=shuffle,
        early_stop=early_stop,
        trained_on=trained_on,
        validation=validation,
        history=history,
        start_epoch=start_epoch,
        state=state,
        best=best,
        replays=getattr(objective, "replays", 1),
        after_backward=getattr(objective, "after_backward", None),
        epoch_report=getattr(objective, "epoch_report", None),
    )


def _epoch(run: _Run, epoch: int) -> dict:
    """Train one epoch; its history row (appended), the learning rate stepped after it."""
    schedule = run.config["schedule"]
    epochs, batch_size = schedule["epochs"], schedule["batch_size"]
    run.net.train()
    started = time.perf_counter()
    totals: dict[str, float] = {}
    steps = 0
    if run.trained_on is None:
        order = torch.randperm(len(run.images), generator=run.shuffle)
    else:
        order = run.trained_on[torch.randperm(len(run.trained_on), generator=run.shuffle)]
    plan = distributed.rank_chunks(
        order, batch_size, run.objective.batch_split, run.rank, run.world
    )
    batches = run.images.batches(chunk for chunk, _ in plan)
    for (x, y), (chunk, weight) in zip(batches, plan, strict=True):
        if run.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        indices = to_device(chunk, run.device)
        for _ in range(run.replays):
            ctx = StepContext(
                epoch=epoch,
                epochs=epochs,
                indices=indices,
                num_examples=len(run.images),
                state=run.state,
            )
            logs = _step(run, x, y, ctx, weight, steps)
            steps += 1
            for key, value in logs.items():
                totals[key] = totals.get(key, 0.0) + value
    # A finite loss can still leave non-finite weights or batch-norm statistics behind
    # (the last step's update); such a model could never be certified.
    bad = _first_non_finite(run.model.state_dict())
    if distributed.on_any_rank(bad is not None, run.device, run.world):
        raise TrainingDiverged(
            f"{bad or 'a weight of another process'} became non-finite in epoch "
            f"{epoch + 1}/{epochs} {run.where}"
        )
    row = {"epoch": epoch + 1, "lr": run.optimizer.param_groups[0]["lr"], "steps": steps}
    row |= distributed.means_over_ranks(
        {key: value / max(steps, 1) for key, value in totals.items()}, run.device, run.world
    )
    if run.early_stop is not None:
        val_x, val_y = run.validation
        row["val_acc"], row["val_robust_acc"] = run.early_stop.evaluate(
            run.model, val_x, val_y, batch_size, run.device
        )
        if run.best is None or row["val_robust_acc"] > run.best["val_robust_acc"]:
            run.best = {
                "epoch": epoch + 1,
                "val_robust_acc": row["val_robust_acc"],
                "state_dict": {
                    k: v.detach().to("cpu", copy=True) for k, v in run.model.state_dict().items()
                },
            }
        row["selected_epoch"] = run.best["epoch"]
    row["seconds"] = time.perf_counter() - started
    run.history.append(row)
    run.scheduler.step()
    return row


def _step(
    run: _Run, x: torch.Tensor, y: torch.Tensor, ctx: StepContext, weight: float, done: int
) -> dict[str, float]:
    """One optimizer step on a chunk (``done`` steps of the epoch before it); its logs."""
    with torch.autocast(run.device.type, dtype=torch.bfloat16, enabled=run.amp):
        loss, logs = run.objective(run.net, x, y, ctx)
    # Every rank must stop at the same step: one that raised alone would leave the others
    # waiting for it in backward's all-reduce. Reading the flag waits for the device to
    # finish the forward pass, the step's one wait, which the objective's logs (floats,
    # fetched as its forward pass ends) share; so the run ends at the step whose loss is not
    # finite, before any weight changes.
    seen = distributed.mean_over_ranks(loss.detach(), run.world)
    if not torch.isfinite(seen):
        over = f", mean over {run.world} processes" if run.world > 1 else ""
        raise TrainingDiverged(
            f"loss became {seen.item()}{over} at epoch {ctx.epoch + 1}/{ctx.epochs}, "
            f"step {done + 1} {run.where}"
        )
    run.optimizer.zero_grad(set_to_none=True)
    (loss * weight if run.world > 1 else loss).backward()
    if run.after_backward is not None:
        # before the step: Entropy-SGD's closure runs more backward passes
        run.after_backward(ctx)
    if isinstance(run.optimizer, EntropySGD):
        run.optimizer.step(_recompute(run.objective, run.net, x, y, ctx, run.optimizer, run.amp))
    else:
        run.optimizer.step()
    return logs


def _checkpoint(run: _Run, epoch: int) -> None:
    """Keep the state after ``epoch`` (rank 0 writes it; every rank's noise stream in it)."""
    rng = {
        "torch_rng": torch.get_rng_state(),
        "cuda_rng": torch.cuda.get_rng_state() if run.device.type == "cuda" else torch.zeros(0),
    }
    if run.world > 1:
        # Each rank resumes its own noise stream; the other fields are alike on every rank.
        every_rank: list[dict | None] = [None] * run.world
        dist.all_gather_object(every_rank, rng)
        rng = {"rank_rng": every_rank}
    if run.rank == 0:
        save_checkpoint(
            {
                **run.identity,
                "epoch": epoch,
                "model": run.model.state_dict(),
                "optimizer": run.optimizer.state_dict(),
                "scheduler": run.scheduler.state_dict(),
                "shuffle_rng": run.shuffle.get_state(),
                **rng,
                "history": json.dumps(run.history),
                **({"best": run.best} if run.best is not None else {}),
                **(
                    {"objective_state": {k: v.cpu() for k, v in run.state.items()}}
                    if run.state is not None
                    else {}
                ),
            },
            run.out_dir,
        )
    if run.world > 1:
        dist.barrier()  # a rank killed from here on leaves a checkpoint of this epoch


def _finish(run: _Run) -> None:
    """Rank 0 keeps the trained model (the best epoch's, when early stopping chose one) as
    the final checkpoint, and writes ``model.pt`` and ``history.csv`` from it."""
    if run.rank > 0:
        return
    weights = run.model.state_dict() if run.best is None else run.best["state_dict"]
    model_file = {
        "format": MODEL_FORMAT,
        "arch": run.config["arch"],
        "num_classes": run.config["num_classes"],
        "config": run.identity["config"],
        "state_dict": {k: v.cpu() for k, v in weights.items()},
        **({"selected_epoch": run.best["epoch"]} if run.best is not None else {}),
        "train_seconds": float(sum(row["seconds"] for row in run.history)),
        "device": device_name(run.device, run.world),
    }
    save_final(
        run.out_dir, {**run.identity, "history": json.dumps(run.history), "model_file": model_file}
    )


def _recompute(objective, net: nn.Module, x, y, ctx: StepContext, optimizer, amp: bool):
    """The closure Entropy-SGD calls: the batch's loss again, at the current weights."""

    def closure() -> torch.Tensor:
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=amp):
            loss, _ = objective(net, x, y, ctx)
        loss.backward()
        return loss

    return closure


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


def _first_non_finite(tensors: Mapping[str, torch.Tensor]) -> str | None:
    """The name of the first floating-point tensor holding a non-finite value, or None;
    one read from the device for all of them."""
    floats = {k: v for k, v in tensors.items() if v.is_floating_point()}
    if not floats:
        return None
    finite = torch.stack([torch.isfinite(v).all() for v in floats.values()]).tolist()
    return next((k for k, ok in zip(floats, finite, strict=True) if not ok), None)
