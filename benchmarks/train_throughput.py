"""Training throughput: the training loop against a plain float32 DataLoader loop, and the
images per second of every method family.

Side by side in one run on ``--device`` (default CUDA if there is one), on synthetic
CIFAR-shaped uint8 images (uniform noise, not CIFAR-10; labels cycle through the classes),
Cohen et al.'s ResNet-110 (``cifar_resnet110``), batch 256, config.yaml's ``cifar10``
schedule, Gaussian noise sigma 0.25:

  (a) ``dataloader_fp32``: a plain float32 loop in the usual style (Cohen et al.'s
      ``code/train.py``): a ``DataLoader`` over the uint8 images in CPU memory, each decoded as
      torchvision's CIFAR10 does (a PIL image) and transformed by ``RandomCrop(32,
      padding=4)``, ``RandomHorizontalFlip()``, ``ToTensor()`` in min(8, CPUs) worker
      processes, shuffled, pinned memory; the noise added on the device; a contiguous model in
      torch's default precision settings; ``loss.item()`` logged every step. Its workers are
      persistent, so their start is left out of the timed epochs, in the baseline's favour.
  (b) ``robustreg``: ``robustreg.train.train`` itself, method ``gaussian``, on a prepared
      split of the same images: the split held on the device, crop and flip on the device,
      and, on CUDA, ``schedule.amp`` (bfloat16 autocast, channels-last). Its rate comes from
      the history's per-epoch ``seconds``, which leave out building the model and writing
      the checkpoints.
  (b') ``robustreg_fp32``: the same without ``amp``.
  (c) ``methods``: ``robustreg.train.train`` for each method family on a smaller split, the
      params of a config.yaml paper row (named in ``--json``'s ``settings``; MACER's
      ``deferred_epochs`` set to 0, so that its robustness term runs), with ``amp`` on CUDA
      unless the method refuses bfloat16 (``bf16_problem``; ``method_precision`` says which).
      Images/s counts each training image once per epoch, so free adversarial training's m
      replays of a batch are all in its time.
  (d) ``model_step``, a diagnostic: the bare model step (noise, forward, loss, backward, SGD)
      on one batch on the device, float32 and, on CUDA, bfloat16 channels-last eager, with
      ``cudnn.benchmark``, and replayed as CUDA graphs: what (b) could reach without the loop,
      and what launching the kernels one by one from Python costs.

Every rate is the median over the timed epochs, after one warm-up epoch each (cuDNN's
first calls, the workers' start); a CUDA epoch's time ends with ``torch.cuda.synchronize``
(the training loop's end-of-epoch check reads from the device). Targets: (b)/(a) >= 3, and
150 epochs of 50,000 images at (b)'s rate (``gpu_hours_150_epochs``) under 1 GPU-hour.
``--smoke``: LeNet on MNIST-shaped images, a few hundred images, attacks of 2 steps, for CI
on the CPU (under a minute, one thread); its figures are no paper-scale rates. A part that
fails records its first error line under ``errors`` and the run goes on; the exit status is 1
if any did. Methods not begun within ``--budget`` seconds of the start are listed under
``skipped``.

    .venv/bin/python benchmarks/train_throughput.py [--device cuda] [--json out.json]
    .venv/bin/python benchmarks/train_throughput.py --smoke --device cpu --json /tmp/t.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
import yaml

from robustreg.architectures import has_batch_statistics
from robustreg.data import save_split
from robustreg.devices import device_name
from robustreg.integrity import first_line
from robustreg.models import create_model
from robustreg.objectives import build_objective, for_experiment, uses_sigma
from robustreg.optim import build_optimizer
from robustreg.train import train

CONFIG = Path(__file__).resolve().parents[1] / "config.yaml"
SIGMA = 0.25
CLASSES = 10
TARGET_RATIO = 3.0
PAPER_EPOCHS, PAPER_IMAGES = 150, 50_000
# method family -> (config.yaml table, row); the params and sigma come from that row
ROWS = {
    "gaussian": ("table7_cifar10", "gaussian"),
    "consistency": ("table7_cifar10", "consistency"),
    "smoothadv": ("table1_smoothadv", "cifar10"),
    "macer": ("table2_mnist", "macer"),
    "stability": ("table7_cifar10", "stability1"),
    "adre_reg": ("table1_adre", "cifar_adre_s012_l01"),
    "adre_adv": ("figure1_adre_models", "cifar_adre_adv"),
    "pgd_at": ("table3_atent", "pgd_at"),
    "trades": ("table3_atent", "trades"),
    "mart": ("table3_atent", "mart"),
    "mma": ("table4_atent", "mma"),
    "atent": ("table3_atent", "atent"),
    "gradient_norm_fd": ("table2_gradreg", "l2_fd_01"),
    "gradient_norm_dbp": ("table2_gradreg", "l2_dbp_01"),
    "free_at": ("table1_gradreg", "free8"),
}
FULL = {
    "arch": "cifar_resnet110",
    "shape": (3, 32, 32),
    "schedule": "cifar10",
    "batch": 256,
    "loop_images": 10_240,
    "method_images": 512,
    "epochs": 4,
    "method_epochs": 3,
}
SMOKE = {
    "arch": "lenet_mnist",
    "shape": (1, 28, 28),
    "schedule": "mnist",
    "batch": 64,
    "loop_images": 256,
    "method_images": 64,
    "epochs": 2,
    "method_epochs": 2,
    "attack_steps": 2,
}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def synthetic_images(n: int, shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Synthetic uint8 images [n, C, H, W] (uniform noise, not CIFAR-10) and cycling labels."""
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, size=(n, *shape), dtype=np.uint8)
    return x, np.arange(n, dtype=np.int64) % CLASSES


class CifarStyleImages(torch.utils.data.Dataset):
    """torchvision's ``CIFAR10.__getitem__``: an HWC uint8 array, a PIL image, the transform
    (MNIST's ``L`` images for one channel)."""

    def __init__(self, x: np.ndarray, y: np.ndarray, transform):
        self.x = np.ascontiguousarray(x.transpose(0, 2, 3, 1))
        if self.x.shape[-1] == 1:
            self.x = self.x[..., 0]
        self.y = y
        self.transform = transform

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int):
        from PIL import Image

        return self.transform(Image.fromarray(self.x[i])), int(self.y[i])


def dataloader_rate(x, y, sizes: dict, schedule: dict, device: torch.device) -> float:
    """(a): images/s of the plain float32 DataLoader loop, median over the timed epochs."""
    from torchvision import transforms

    side = x.shape[-1]
    transform = transforms.Compose(
        [
            transforms.RandomCrop(side, padding=4),
            transforms.RandomHorizontalFlip(),
            transforms.ToTensor(),
        ]
    )
    loader = torch.utils.data.DataLoader(
        CifarStyleImages(x, y, transform),
        batch_size=sizes["batch"],
        shuffle=True,
        num_workers=min(8, os.cpu_count() or 1),
        pin_memory=device.type == "cuda",
        persistent_workers=True,
    )
    torch.manual_seed(0)
    model = create_model(sizes["arch"], CLASSES).to(device).train()
    optimizer = build_optimizer(model, schedule)
    rates = []
    for _ in range(sizes["epochs"]):
        sync(device)
        started = time.perf_counter()
        logged = 0.0
        for images, labels in loader:
            images = images.to(device, non_blocking=True)
            labels = labels.to(device, non_blocking=True)
            images = images + torch.randn_like(images) * SIGMA
            loss = F.cross_entropy(model(images), labels)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            logged += loss.item()
        sync(device)
        rates.append(len(y) / (time.perf_counter() - started))
    return statistics.median(rates[1:])


# (d)'s variants: name -> (bfloat16 autocast and channels-last, cudnn.benchmark, CUDA graphs)
MODEL_STEPS = {
    "eager_fp32": (False, False, False),
    "eager_bf16": (True, False, False),
    "eager_bf16_cudnn_benchmark": (True, True, False),
    "graphed_bf16": (True, False, True),
}


def model_step_rate(variant: str, sizes: dict, schedule: dict, device: torch.device) -> float:
    """(d): images/s of the bare model step on one batch already on the device: noise,
    forward, cross-entropy, backward, the schedule's SGD step; no data, no loop. ``variant``
    (``MODEL_STEPS``): float32 as (a), or bfloat16 autocast with channels-last as (b); eager,
    eager with ``cudnn.benchmark`` (cuDNN times its algorithms for each shape), or with
    forward and backward replayed as CUDA graphs (``torch.cuda.make_graphed_callables``),
    which launch ResNet-110's ~1,500 kernels of a step at once instead of one by one from
    Python. Median over 3 timings of 20 steps (CPU: one of 3), after 3 warm-up steps."""
    amp, benchmark, graphed = MODEL_STEPS[variant]
    steps, repeats = (3, 1) if device.type == "cpu" else (20, 3)
    chosen = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = benchmark
    try:
        torch.manual_seed(0)
        model = create_model(sizes["arch"], CLASSES).to(device).train()
        images = torch.rand((sizes["batch"], *sizes["shape"]), device=device)
        labels = torch.arange(sizes["batch"], device=device) % CLASSES
        if amp:
            model = model.to(memory_format=torch.channels_last)
            images = images.contiguous(memory_format=torch.channels_last)
        optimizer = build_optimizer(model, schedule)
        # make_graphed_callables needs the autocast cache off, when capturing and replaying
        autocast = partial(
            torch.autocast, device.type, dtype=torch.bfloat16, enabled=amp, cache_enabled=False
        )
        net = model
        if graphed:
            with autocast():
                net = torch.cuda.make_graphed_callables(model, (images,))

        def step() -> None:
            noisy = images + torch.randn_like(images) * SIGMA
            with autocast():
                loss = F.cross_entropy(net(noisy).float(), labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

        for _ in range(3):
            step()
        rates = []
        for _ in range(repeats):
            sync(device)
            begun = time.perf_counter()
            for _ in range(steps):
                step()
            sync(device)
            rates.append(steps * sizes["batch"] / (time.perf_counter() - begun))
        return statistics.median(rates)
    finally:
        torch.backends.cudnn.benchmark = chosen


def train_rate(
    split: Path,
    out_dir: Path,
    sizes: dict,
    schedule: dict,
    device: torch.device,
    method: str,
    sigma: float | None,
    params: dict,
    amp: bool,
) -> float:
    """Images/s of ``robustreg.train.train`` on ``split``: the median over the epochs after
    the first of the history's per-epoch seconds."""
    config = {
        "data": {"dataset": "synthetic", "train_limit": None, "augment": "crop_flip"},
        "arch": sizes["arch"],
        "num_classes": CLASSES,
        "method": method,
        "params": params,
        "sigma": sigma,
        "schedule": schedule | {"epochs": sizes["epochs"], "amp": amp},
        "seed": 0,
    }
    train(config, split, out_dir, device=device, progress=False)
    seconds = pd.read_csv(out_dir / "history.csv")["seconds"].iloc[1:]
    images = len(np.load(split)["y"])
    return statistics.median(images / seconds)


def paper_rows(smoke: bool) -> dict[str, tuple[str, float | None, dict, str]]:
    """method family -> (method, sigma, params, where from) of its config.yaml row."""
    config = yaml.safe_load(CONFIG.read_text())
    tables = config["tables"]
    rows = {}
    for family, (table, name) in ROWS.items():
        row = tables[table]["rows"][name]
        method = row["method"]
        sigma = (row.get("sigmas") or tables[table]["sigmas"])[0] if uses_sigma(method) else None
        # epoch counts tied to the row's schedule (SmoothAdv's "10/150" warm-up) as numbers
        schedule = config["schedules"][row.get("schedule", tables[table]["schedule"])]
        arch = row.get("arch", tables[table]["arch"])
        params, _ = for_experiment(
            method,
            dict(row.get("params", {})),
            sigma,
            schedule,
            batch_statistics=has_batch_statistics(arch),
        )
        where = f"config.yaml tables.{table}.rows.{name}"
        if method == "macer":
            params["deferred_epochs"] = 0
            where += ", deferred_epochs 0"
        if smoke and "steps" in params:
            params["steps"] = SMOKE["attack_steps"]
            where += f", steps {SMOKE['attack_steps']} (smoke)"
        rows[family] = (method, sigma, params, where)
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--smoke", action="store_true", help="tiny LeNet run for CI (CPU)")
    parser.add_argument("--json", type=Path, help="write every figure to this JSON file")
    parser.add_argument("--methods", nargs="*", choices=sorted(ROWS), help="default: all")
    parser.add_argument(
        "--budget", type=float, default=150.0, help="seconds; methods not begun by then are skipped"
    )
    parser.add_argument(
        "--threads", type=int, help="CPU threads of this process (default: torch's; smoke: 1)"
    )
    args = parser.parse_args()
    started = time.perf_counter()
    # The script's own process (the library never does this): on a shared CI machine one
    # thread keeps the smoke run's time steady, where spinning OpenMP threads can stall.
    torch.set_num_threads(args.threads or (1 if args.smoke else torch.get_num_threads()))

    device = torch.device(args.device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    sizes = dict(SMOKE if args.smoke else FULL)
    schedules = yaml.safe_load(CONFIG.read_text())["schedules"]
    # lr 0.01: at the paper's 0.1, ResNet-110 on random synthetic images diverges within a
    # few steps under consistency and gradient-norm regularization (He et al. 2016 warm
    # ResNet-110 up at 0.01); the rate of a step does not depend on its learning rate
    schedule = dict(schedules[sizes["schedule"]]) | {"batch_size": sizes["batch"], "lr": 0.01}
    amp = device.type == "cuda"
    x, y = synthetic_images(sizes["loop_images"], sizes["shape"])
    errors: dict[str, str] = {}
    loop: dict[str, float] = {}
    methods: dict[str, float] = {}
    precision: dict[str, str] = {}
    skipped: list[str] = []
    model_step: dict[str, float] = {}
    rows = paper_rows(args.smoke)
    print(
        f"{device_name(device)}, torch {torch.__version__}: {sizes['arch']}, batch "
        f"{sizes['batch']}, synthetic {'x'.join(map(str, sizes['shape']))} uint8 images "
        f"(not CIFAR-10){' [smoke: not paper-scale figures]' if args.smoke else ''}",
        flush=True,
    )

    def attempt(key: str, run) -> float | None:
        try:
            return run()
        except Exception as err:  # a part that fails is recorded; the others still run
            errors[key] = f"{type(err).__name__}: {first_line(err)}"
            print(f"  {key}: failed: {errors[key]}", flush=True)
            return None
        finally:
            if device.type == "cuda":
                torch.cuda.empty_cache()

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        split = tmp / "loop.npz"
        save_split(split, x, y)
        gaussian = ("gaussian", SIGMA, {})
        parts = {
            "dataloader_fp32": lambda: dataloader_rate(x, y, sizes, schedule, device),
            "robustreg": lambda: train_rate(
                split, tmp / "b", sizes, schedule, device, *gaussian, amp=amp
            ),
            "robustreg_fp32": lambda: train_rate(
                split, tmp / "b32", sizes, schedule, device, *gaussian, amp=False
            ),
        }
        for key, run in parts.items():
            rate = attempt(key, run)
            if rate is not None:
                loop[key] = rate
                print(f"  {key:16s} {rate:10.1f} images/s", flush=True)
        if "dataloader_fp32" in loop and "robustreg" in loop:
            loop["ratio"] = loop["robustreg"] / loop["dataloader_fp32"]
            print(f"  (b)/(a) = {loop['ratio']:.2f} (target >= {TARGET_RATIO:g})")
        if "robustreg" in loop:
            loop["gpu_hours_150_epochs"] = PAPER_EPOCHS * PAPER_IMAGES / loop["robustreg"] / 3600
            where = "GPU-hours" if device.type == "cuda" else f"hours on the {device.type}"
            print(
                f"  {PAPER_EPOCHS} epochs x {PAPER_IMAGES:,} images at (b)'s rate: "
                f"{loop['gpu_hours_150_epochs']:.3f} {where} (target < 1 GPU-hour)"
            )

        for variant in MODEL_STEPS if device.type == "cuda" else ["eager_fp32"]:
            run = partial(model_step_rate, variant, sizes, schedule, device)
            rate = attempt(f"model_step/{variant}", run)
            if rate is not None:
                model_step[variant] = rate
                print(f"  model step, {variant:26s} {rate:10.1f} images/s", flush=True)

        mx, my = synthetic_images(sizes["method_images"], sizes["shape"])
        method_split = tmp / "methods.npz"
        save_split(method_split, mx, my)
        method_sizes = sizes | {"epochs": sizes["method_epochs"]}
        print(f"per method, {len(my)} images, {sizes['method_epochs'] - 1} timed epochs:")
        for family in args.methods or ROWS:
            if time.perf_counter() - started > args.budget:
                skipped.append(family)
                continue
            method, sigma, params, _ = rows[family]
            refused = build_objective(method, sigma, params).bf16_problem is not None
            precision[family] = "bf16" if amp and not refused else "fp32"
            run = partial(
                train_rate,
                method_split,
                tmp / family,
                method_sizes,
                schedule,
                device,
                method,
                sigma,
                params,
                amp=amp and not refused,
            )
            rate = attempt(family, run)
            if rate is not None:
                methods[family] = rate
                print(f"  {family:18s} {rate:10.1f} images/s ({precision[family]})", flush=True)

    if skipped:
        print(f"  skipped after the {args.budget:g} s budget: {', '.join(skipped)}")
    if args.json:
        figures = {
            "device": device_name(device),
            "torch": torch.__version__,
            "smoke": args.smoke,
            "data": f"synthetic {'x'.join(map(str, sizes['shape']))} uint8 images, not CIFAR-10",
            "arch": sizes["arch"],
            "batch_size": sizes["batch"],
            "amp": amp,
            "cudnn_allow_tf32": torch.backends.cudnn.allow_tf32,
            "loop": loop,
            "model_step": model_step,
            "target_ratio": TARGET_RATIO,
            "methods": methods,
            "method_precision": precision,
            "settings": {
                family: {"params": row[2], "sigma": row[1], "from": row[3]}
                for family, row in rows.items()
            },
            "errors": errors,
            "skipped": skipped,
            "command": " ".join([Path(sys.executable).name, *sys.argv]),
        }
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(figures, indent=2) + "\n")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
