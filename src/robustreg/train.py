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

The files of an experiment's folder, beside ``model.pt`` and ``history.csv``:
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

import csv
import json
import os
import pickle
import platform
import sys
import time
import warnings
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from tqdm import tqdm

from robustreg.data import open_training_images, to_device
from robustreg.integrity import file_sha256, first_line, set_aside, set_aside_note
from robustreg.io import atomic_path
from robustreg.models import create_model
from robustreg.objectives import StepContext, build_objective, keeps_state
from robustreg.optim import EntropySGD, build_optimizer, lr_schedule
from robustreg.schedule import EarlyStop, holdout_positions, single_process_only

MODEL_FORMAT = "robustreg-model/1"
# what a model.pt holds beside its format, and a final checkpoint's copy of it
MODEL_KEYS = ("arch", "num_classes", "config", "state_dict", "train_seconds", "device")
CHECKPOINT = "checkpoint.pt"
PREVIOUS_CHECKPOINT = "checkpoint.prev.pt"
FINAL_CHECKPOINT = "checkpoint.final.pt"


class TrainingDiverged(RuntimeError):
    """The loss stopped being finite; no model is written."""


class NoUsableGpu(ValueError):
    """A job that was given a GPU finds none it can use. A ValueError, so that the CLI stops
    with one line (exit status 2) instead of training on the CPU for weeks."""


def gpu_assignment(gpus: int | None, env: Mapping[str, str] | None = None) -> str | None:
    """Why this job should run on a GPU, in words, or None if nothing gave it one.

    ``gpus`` is the job's ``gpu`` resource as the rules pass it (``--gpus``); None when the
    CLI runs by hand, where a SLURM GPU allocation or a ``CUDA_VISIBLE_DEVICES`` naming
    devices says the same. ``gpus == 0`` asks for the CPU whatever the environment holds.
    """
    from robustreg.gpus import SLURM_GPU_ENVS

    env = os.environ if env is None else env
    if gpus is not None:
        return f"its gpu resource is {gpus}" if gpus > 0 else None
    if env.get("SLURM_JOB_ID"):
        for name in SLURM_GPU_ENVS:
            if env.get(name):
                return f"SLURM allocated it GPUs ({name}={env[name]})"
    visible = env.get("CUDA_VISIBLE_DEVICES", "").strip()
    if visible and not visible.startswith("-"):
        return f"CUDA_VISIBLE_DEVICES={visible}"
    return None


def _no_usable_gpu(why: str) -> str | None:
    """What keeps CUDA from running here, or None if a visible device can run this torch.

    torch.cuda.is_available() is True on a GPU this build has no kernels for (the PyPI
    wheels of recent releases dropped Volta, the papers' V100s): such a job would die at its
    first kernel, so the device's compute capability is checked against the build's too.
    """
    build = f"torch {torch.__version__}, built for CUDA {torch.version.cuda or 'none'}"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        available = torch.cuda.is_available()
    if not available:
        said = next((str(w.message).strip().splitlines()[0] for w in caught), "")
        return f"{why}, but {build}, finds no usable CUDA device" + (f" ({said})" if said else "")
    archs = torch.cuda.get_arch_list()
    for index in range(torch.cuda.device_count() if archs else 0):
        major, minor = torch.cuda.get_device_capability(index)
        # a build runs a device whose sm it ships, or compiles its PTX for a newer one
        if f"sm_{major}{minor}" not in archs and not any(
            arch.startswith("compute_") and int(arch[8:]) <= major * 10 + minor for arch in archs
        ):
            name = torch.cuda.get_device_name(index)
            return (
                f"{why}, but GPU {index} ({name}, compute capability {major}.{minor}) has no "
                f"kernels in {build} (it has {' '.join(archs)}); install a torch build for it "
                "(README: Hardware and cost)"
            )
    return None


def pick_device(requested: str | None = None, gpus: int | None = None) -> torch.device:
    """The caller's device if it names one; else a GPU of this process's own; else the CPU.

    Several GPU jobs may run at once on one machine (``snakemake --resources gpu=4``), and
    nothing tells each which GPU is its own: the GPU comes from ``robustreg.gpus``' pool,
    held until the process ends. ``cuda:1`` is the caller's pick and bypasses the pool;
    plain ``cuda`` means "a GPU" and draws from it. CPU runs never touch the pool.

    The CPU is used only when asked for (``cpu``, ``gpus=0``) or when nothing gave the job a
    GPU (``gpu_assignment``): a job given one that finds no usable CUDA device raises
    ``NoUsableGpu`` rather than run a paper-scale training on the CPU.
    """
    from robustreg import gpus as pool

    device = torch.device(requested) if requested else None
    if device is not None and device.type not in ("cuda", "cpu"):
        return device
    if device is None and gpus == 0:
        return torch.device("cpu")
    if device is not None and device.type == "cpu":
        return device
    why = "--device " + requested if device is not None else gpu_assignment(gpus)
    if why is None:
        if not torch.cuda.is_available():
            return torch.device("cpu")
        why = "CUDA is present"
    problem = _no_usable_gpu(why)
    if problem is not None:
        raise NoUsableGpu(problem + "; to run on the CPU set the stage's gpu: 0 or --device cpu")
    if device is not None and device.index is not None:
        return device
    claim = pool.process_claim(torch.cuda.device_count())
    # Make it the current device too, so what runs on "the current GPU" (cuDNN and cuBLAS
    # handles, torch.cuda calls without a device) does not open a context on GPU 0,
    # another job's, at a few hundred MiB each.
    torch.cuda.set_device(claim.position)
    return torch.device("cuda", claim.position)


def atomic_save(obj, path: str | Path) -> None:
    """``torch.save`` to ``path`` atomically. Through a file object: torch names the archive
    inside after a path's file name, the temporary one's here, so that the same ``obj``
    would give other bytes each time (and another ``model_sha256``, see
    ``robustreg.cli``)."""
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        torch.save(obj, fh)


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
    # what every checkpoint of this run holds, and is checked against before it is used
    run = {"config": json.dumps(config, sort_keys=True), "data_sha256": file_sha256(train_split)}
    resume_keys = _resume_keys(world, early_stop is not None, keeps_state(config["method"]))
    start, ckpt = _load_checkpoint(out_dir, run, resume_keys, rank, world)
    if start == FINAL_CHECKPOINT:
        if rank == 0:
            _write_results(out_dir, ckpt)
            print(
                f"{out_dir / start}: restored model.pt and history.csv from the final "
                "checkpoint, no epoch trained (delete the folder to train again)",
                file=sys.stderr,
            )
        if world > 1:
            dist.barrier()  # every rank returns the path once the model is there
        return out_dir / "model.pt"
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
        torch.manual_seed(_rank_seed(config["seed"], rank))
    history: list[dict] = []
    start_epoch = 0
    # what the objective keeps of each example across steps (on the device), if anything
    state: dict[str, torch.Tensor] | None = {} if keeps_state(config["method"]) else None
    # early stopping: the best epoch so far (from 1), its score and its weights (CPU)
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
    epoch_report = getattr(objective, "epoch_report", None)
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
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            indices = to_device(chunk, device)
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
                # the others waiting for it in backward's all-reduce. Reading the flag waits
                # for the device to finish the forward pass, the step's one wait, which the
                # objective's logs (floats, fetched as its forward pass ends) share; so the
                # run ends at the step whose loss is not finite, before any weight changes.
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
        bad = _first_non_finite(model.state_dict())
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
        report = epoch_report(row) if epoch_report is not None and rank == 0 else None
        if report:
            bar.write(report, file=sys.stderr)
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
            _save_checkpoint(
                {
                    **run,
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
                out_dir,
            )
        if world > 1:
            dist.barrier()  # a rank killed from here on leaves a checkpoint of this epoch
        bar.set_postfix({k: f"{v:.3g}" for k, v in row.items() if k in ("loss", "acc")})
        bar.update()
    bar.close()

    if rank == 0:
        weights = model.state_dict() if best is None else best["state_dict"]
        model_file = {
            "format": MODEL_FORMAT,
            "arch": config["arch"],
            "num_classes": config["num_classes"],
            "config": run["config"],
            "state_dict": {k: v.cpu() for k, v in weights.items()},
            **({"selected_epoch": best["epoch"]} if best is not None else {}),
            "train_seconds": float(sum(row["seconds"] for row in history)),
            "device": device_name(device, world),
        }
        final = {**run, "history": json.dumps(history), "model_file": model_file}
        atomic_save(final, out_dir / FINAL_CHECKPOINT)
        _write_results(out_dir, final)
    if world > 1:
        dist.barrier()  # every rank returns the path once the model is there
    return out_dir / "model.pt"


def _resume_keys(world: int, early_stop: bool, keeps_state: bool) -> tuple[str, ...]:
    """The keys a checkpoint needs for this run to resume from it."""
    keys = ["epoch", "history", "model", "optimizer", "scheduler", "shuffle_rng"]
    keys += ["rank_rng"] if world > 1 else ["torch_rng", "cuda_rng"]
    keys += ["best"] if early_stop else []
    keys += ["objective_state"] if keeps_state else []
    return tuple(keys)


def _load_checkpoint(
    out_dir: Path, run: dict, resume_keys: tuple[str, ...], rank: int, world: int
) -> tuple[str | None, dict | None]:
    """Where this run starts: ``(FINAL_CHECKPOINT, final)`` when it finished before, else
    ``(name, checkpoint)`` of the newest checkpoint to resume from, else ``(None, None)``.

    A file of another run (``run``'s config or training data differ) is passed over, and
    this run's checkpoints replace it; a corrupt one (unreadable, not a dict, without a key
    it needs) is set aside. Each says so in a line on stderr.

    Rank 0 alone reads and judges the files, and tells the other ranks which it chose;
    they load it themselves (but not a final one: they have nothing to do then). Ranks
    judging for themselves could disagree: one might find gone a file the other has just
    set aside.
    """
    name, ckpt = None, None
    if rank == 0:
        passed_over = False
        for candidate in (FINAL_CHECKPOINT, CHECKPOINT, PREVIOUS_CHECKPOINT):
            path = out_dir / candidate
            passed_over |= path.exists()
            ckpt = _usable_checkpoint(path, run, resume_keys)
            if ckpt is not None:
                name = candidate
                break
        epochs = json.loads(run["config"])["schedule"]["epochs"]
        if name in (CHECKPOINT, PREVIOUS_CHECKPOINT):
            print(
                f"{out_dir}: resuming from {name} after epoch {ckpt['epoch'] + 1} of {epochs}",
                file=sys.stderr,
            )
        elif name is None and passed_over:
            print(f"{out_dir}: no usable checkpoint, training from scratch", file=sys.stderr)
    if world > 1:
        chosen = [name]
        dist.broadcast_object_list(chosen, src=0)
        name = chosen[0]
        if rank > 0 and name not in (None, FINAL_CHECKPOINT):
            # On the CPU, as rank 0 read it: see _usable_checkpoint.
            ckpt = torch.load(out_dir / name, map_location="cpu", weights_only=True)
    return name, ckpt


def _usable_checkpoint(path: Path, run: dict, resume_keys: tuple[str, ...]) -> dict | None:
    """The checkpoint at ``path`` if this run can go on from it; None if there is none, if
    it is another run's (said on stderr), or if it is corrupt (set aside, said on stderr).

    Read onto the CPU: RNG states must be CPU tensors, and load_state_dict moves the
    weights and the optimizer's state to the model's device.
    """
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        return None
    except Exception as err:  # torch raises many types for a corrupt file, OSError among them
        return _set_checkpoint_aside(path, first_line(err))
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("config"), str):
        return _set_checkpoint_aside(path, "not a checkpoint of a robustreg training")
    # A missing data_sha256 passes: checkpoints written before it was recorded resume as
    # they did then.
    differ = [key for key, value in run.items() if ckpt.get(key, value) != value]
    if differ:
        print(
            f"{path}: of another run ({' and '.join(differ)} differ), not resumed; this "
            "run's checkpoints replace it",
            file=sys.stderr,
        )
        return None
    if path.name == FINAL_CHECKPOINT:
        problem = _final_problem(ckpt)
    else:
        problem = _resume_problem(ckpt, resume_keys)
    return ckpt if problem is None else _set_checkpoint_aside(path, problem)


def _resume_problem(ckpt: dict, keys: tuple[str, ...]) -> str | None:
    """Why this run cannot resume from ``ckpt``, a checkpoint of its config, if it cannot."""
    missing = [key for key in keys if key not in ckpt]
    if missing:
        return f"no {', '.join(missing)}"
    if not isinstance(ckpt["epoch"], int):
        return "no epoch number"
    return _history_problem(ckpt["history"], ckpt["epoch"] + 1)


def _final_problem(final: dict) -> str | None:
    """Why ``model.pt`` and ``history.csv`` cannot be written from ``final``, a final
    checkpoint of this run's config, if they cannot."""
    record = final.get("model_file")
    if not isinstance(record, dict) or record.get("format") != MODEL_FORMAT:
        return "no model file record"
    missing = [key for key in MODEL_KEYS if key not in record]
    if missing:
        return f"its model file record has no {', '.join(missing)}"
    if record["config"] != final["config"]:
        return "its model file record is of another config"
    epochs = json.loads(final["config"])["schedule"]["epochs"]
    return _history_problem(final.get("history"), epochs)


def _history_problem(history, epochs: int) -> str | None:
    """Why ``history`` is not the JSON history of ``epochs`` epochs, if it is not."""
    try:
        rows = json.loads(history)
    except (TypeError, ValueError):
        return "unreadable history"
    if not isinstance(rows, list) or len(rows) != epochs:
        return f"its history is not of the {epochs} epochs it should hold"
    return None


def _set_checkpoint_aside(path: Path, reason: str) -> None:
    """Set the corrupt checkpoint ``path`` aside and say so on stderr; None: nothing to use."""
    moved = set_aside(path)
    where = f"set aside as {moved.name}" if moved else "already gone"
    print(f"{path}: corrupt checkpoint ({reason}); {where}", file=sys.stderr)


def _save_checkpoint(checkpoint: dict, out_dir: Path) -> None:
    """Write this epoch's checkpoint atomically, keeping the one it replaces as the
    previous: the one resumed from if the newer is found corrupt. A run killed between the
    two renames leaves the previous alone, which is resumed from too."""
    path = out_dir / CHECKPOINT
    if path.exists():
        os.replace(path, out_dir / PREVIOUS_CHECKPOINT)
    atomic_save(checkpoint, path)


def _write_results(out_dir: Path, final: dict) -> None:
    """``model.pt`` and ``history.csv`` from a final checkpoint, which makes the resumable
    ones of no further use. The same files whenever they are written from the same final."""
    rows = json.loads(final["history"])
    # csv, not pandas: the same bytes as DataFrame.to_csv for these rows (every epoch has the
    # same keys), without pandas' import in every training job.
    with (
        atomic_path(out_dir / "history.csv") as tmp,
        open(tmp, "w", newline="", encoding="utf-8") as fh,
    ):
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    atomic_save(final["model_file"], out_dir / "model.pt")
    for name in (CHECKPOINT, PREVIOUS_CHECKPOINT):
        (out_dir / name).unlink(missing_ok=True)


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


def _first_non_finite(tensors: Mapping[str, torch.Tensor]) -> str | None:
    """The name of the first floating-point tensor holding a non-finite value, or None;
    one read from the device for all of them."""
    floats = {k: v for k, v in tensors.items() if v.is_floating_point()}
    if not floats:
        return None
    finite = torch.stack([torch.isfinite(v).all() for v in floats.values()]).tolist()
    return next((k for k, ok in zip(floats, finite, strict=True) if not ok), None)


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
    ckpt = _read_model_file(path, mmap=True, set_aside=False)
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


def _read_model_file(path: str | Path, mmap: bool = False, set_aside: bool = True) -> dict:
    """The dict of a ``model.pt`` (CPU tensors); a one-line ValueError for anything else.

    A file that torch cannot read is set aside (``robustreg.integrity``), so that the next
    run of the workflow trains it again, in seconds from the experiment's final checkpoint;
    a readable one of another format is left alone (it is not ours to move). ``set_aside``
    False leaves it in place too: a table reading a path a cells file names may be pointed at
    any file, which is never its to rename.
    """
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except FileNotFoundError:
        raise ValueError(f"{path}: model file does not exist") from None
    except Exception as err:  # torch raises many types for corrupt files, OSError among them
        # an unpickler's message quotes the file's bytes; name the kind of fault only
        why = "not a torch file" if isinstance(err, pickle.UnpicklingError) else first_line(err)
        note = f"; {set_aside_note(path)}" if set_aside else ""
        raise ValueError(
            f"{path}: not a readable robustreg model checkpoint ({why}){note}"
        ) from err
    if not isinstance(ckpt, dict) or ckpt.get("format") != MODEL_FORMAT:
        raise ValueError(
            f"{path}: not a robustreg model checkpoint (expected format {MODEL_FORMAT})"
        )
    return ckpt
