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
"""

from __future__ import annotations

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

from robustreg.data import open_training_images
from robustreg.io import atomic_path
from robustreg.models import create_model
from robustreg.objectives import StepContext, build_objective

MODEL_FORMAT = "robustreg-model/1"
LR_DECAYS = ("step", "cosine")


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
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    device = device or pick_device()
    schedule = config["schedule"]
    rank, world = _rank_and_world(schedule.get("processes", 1))
    objective = build_objective(config["method"], config["sigma"], config["params"])
    images = open_training_images(
        train_split,
        limit=config["data"].get("train_limit"),
        augment=config["data"].get("augment", "none"),
        device=device,
        workers=workers,
    )

    torch.manual_seed(config["seed"])
    model = create_model(config["arch"], config["num_classes"]).to(device)
    if device.type == "cpu":
        # channels-last convolutions are about 1.7x faster on this CPU; weights are unchanged.
        model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(
        model.parameters(),
        lr=schedule["lr"],
        momentum=schedule["momentum"],
        nesterov=schedule["nesterov"],
        dampening=0.0,
        weight_decay=schedule["weight_decay"],
    )
    scheduler = lr_schedule(optimizer, schedule)
    shuffle = torch.Generator().manual_seed(config["seed"])
    if rank > 0:
        # Every rank starts from the same weights, but noise and augmentation must be new
        # draws on each: ranks > 0 get streams of their own; rank 0 keeps the single
        # process's stream.
        torch.manual_seed(_rank_seed(config["seed"], rank))
    history: list[dict] = []
    start_epoch = 0

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
        ctx = StepContext(epoch=epoch, epochs=epochs)
        started = time.perf_counter()
        totals: dict[str, float] = {}
        steps = 0
        order = torch.randperm(len(images), generator=shuffle)
        plan = _rank_chunks(order, batch_size, objective.batch_split, rank, world)
        batches = images.batches(chunk for chunk, _ in plan)
        for (x, y), (_, weight) in zip(batches, plan, strict=True):
            if device.type == "cpu":
                x = x.contiguous(memory_format=torch.channels_last)
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
        atomic_save(
            {
                "format": MODEL_FORMAT,
                "arch": config["arch"],
                "num_classes": config["num_classes"],
                "config": config_json,
                "state_dict": {k: v.cpu() for k, v in model.state_dict().items()},
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
