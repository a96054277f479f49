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

import json
import platform
import time
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
from robustreg.objectives import StepContext, build_objective, keeps_state
from robustreg.optim import EntropySGD
from robustreg.schedule import (
    EarlyStop,
    build_optimizer,
    holdout_positions,
    lr_schedule,
    single_process_only,
)

MODEL_FORMAT = "robustreg-model/1"


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
    schedule = config["schedule"]
    rank, world = _rank_and_world(schedule.get("processes", 1))
    early_stop = EarlyStop.from_schedule(schedule)
    single_process_only(schedule, early_stop, world)
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
    # The loop needs only a callable with a batch_split; these hooks of ``Objective`` are
    # optional, so a wrapper that lacks them (as tests use) trains one step per chunk.
    replays = getattr(objective, "replays", 1)
    after_backward = getattr(objective, "after_backward", None)
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
            indices = chunk.to(device)
            for _ in range(replays):
                ctx = StepContext(
                    epoch=epoch,
                    epochs=epochs,
                    indices=indices,
                    num_examples=len(images),
                    state=state,
                )
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                    loss, logs = objective(net, x, y, ctx)
                # Every rank must stop at the same step: one that raised alone would leave
                # the others waiting for it in backward's all-reduce.
                seen = _mean_over_ranks(loss.detach(), world)
                if not torch.isfinite(seen):
                    raise TrainingDiverged(
                        f"loss became {seen.item()}{over} at epoch {epoch + 1}/{epochs}, "
                        f"step {steps + 1} {where}"
                    )
                optimizer.zero_grad(set_to_none=True)
                (loss * weight if world > 1 else loss).backward()
                if after_backward is not None:
                    # before the step: Entropy-SGD's closure runs more backward passes
                    after_backward(ctx)
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
                "train_seconds": float(sum(row["seconds"] for row in history)),
                "device": device_name(device, world),
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


def device_name(device: torch.device, world: int = 1) -> str:
    """The hardware of a run in words, for a "training time" column: the GPU's name; for the
    CPU, ``cpu`` with the processor's model name (Linux's /proc/cpuinfo, else ``platform``)
    and torch's thread count; ``"<P> x <name>"`` for P processes."""
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
    elif device.type == "cpu":
        threads = torch.get_num_threads()
        name = f"cpu ({_processor()}, {threads} thread{'s' if threads != 1 else ''})"
    else:
        name = str(device)
    return f"{world} x {name}" if world > 1 else name


def _processor() -> str:
    """The CPU's model name; ``platform.processor()`` is often empty or just "x86_64" on Linux."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                key, _, value = line.partition(":")
                if key.strip() == "model name" and value.strip():
                    return value.strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown processor"


def training_record(path: str | Path) -> dict:
    """What a trained model's ``model.pt`` says of its training: ``train_seconds`` (float,
    the sum of the history's per-epoch ``seconds``), ``device`` (str, ``device_name``) and
    ``epochs`` (int, the schedule's). One-line ValueError for a file that is no model or
    was written before training time was recorded.

    Memory-maps the file, so the weights are not read.
    """
    ckpt = _read_model_file(path, mmap=True)
    missing = next((k for k in ("train_seconds", "device") if k not in ckpt), None)
    if missing is not None:
        raise ValueError(f"{path}: no {missing} (written before training time was recorded)")
    return {
        "train_seconds": float(ckpt["train_seconds"]),
        "device": str(ckpt["device"]),
        "epochs": int(json.loads(ckpt["config"])["schedule"]["epochs"]),
    }


def load_model(path: str | Path, device: torch.device) -> tuple[nn.Module, dict]:
    """A trained model in eval mode and its experiment config; a clear error for anything else."""
    ckpt = _read_model_file(path)
    model = create_model(ckpt["arch"], ckpt["num_classes"])
    try:
        model.load_state_dict(ckpt["state_dict"])
    except RuntimeError as err:
        raise ValueError(f"{path}: weights do not fit architecture {ckpt['arch']!r}") from err
    if not all(_finite(v) for v in ckpt["state_dict"].values()):
        raise ValueError(f"{path}: checkpoint holds non-finite weights")
    return model.to(device).eval(), json.loads(ckpt["config"])


def _read_model_file(path: str | Path, mmap: bool = False) -> dict:
    """The dict of a ``model.pt`` (CPU tensors); a one-line ValueError for anything else."""
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except FileNotFoundError:
        raise ValueError(f"{path}: model file does not exist") from None
    except Exception as err:  # torch raises many types for corrupt or foreign pickles
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ValueError(f"{path}: not a readable robustreg model checkpoint ({reason})") from err
    if not isinstance(ckpt, dict) or ckpt.get("format") != MODEL_FORMAT:
        raise ValueError(
            f"{path}: not a robustreg model checkpoint (expected format {MODEL_FORMAT})"
        )
    return ckpt
