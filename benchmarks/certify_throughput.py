"""Sampling throughput of ``robustreg.smoothing`` against the model's bare forward pass and a
Cohen-style sampler, side by side in one run (samples per second).

  (a) the bare forward pass on a preallocated batch, in the layout and (on the CPU) the slices
      our sampler uses, in each precision measured;
  (b) ``certify_counts`` (n0 = 100 plus ``--num`` draws per image) in each precision: fp32 is
      IEEE single precision (no TF32), bf16 autocast (``robustreg.smoothing.evaluated_in``);
  (c) a per-image fp32 sampler in the style of Cohen et al. (2019)'s ``Smooth._sample_noise``
      (github.com/locuslab/smoothing, code/core.py): the image repeated into a batch, fresh
      ``randn_like`` noise, contiguous layout, ``no_grad``, counts via ``.cpu().numpy()``;
  (a') on the CPU, the bare forward pass in the contiguous layout that (c) runs: (b)/(c)
      cannot exceed about (a)/(a') however cheap the sampling.
Also the agreement of bf16 and fp32 predictions on the same noisy samples (the certificate is
for the classifier as evaluated; the model here is randomly initialised, whose small logit
margins make this a pessimistic figure), and the GPU-hours of a paper-scale certification
(10,000 images, n0 = 100, n = 100,000) at (b)'s rate.

Targets: on the CPU (b)/(a) >= 0.90 and (b)/(c) >= 2.0 (LeNet, MNIST shapes); on a GPU,
ResNet-110 on 32x32 images at >= 280,000 samples/s (a paper-scale CIFAR-10 certification in
at most one GPU-hour) and (b)/(c) >= 5. Methods run interleaved, ``--repeats`` times after a
warm-up; rates are medians, ratios the median of the per-repetition ratios. The script
reports; it always exits 0.

    .venv/bin/python benchmarks/certify_throughput.py [--arch lenet_mnist] [--json out.json]
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from robustreg.models import create_model
from robustreg.smoothing import CPU_SLICE, certify_counts, evaluated_in

SIGMA = 0.25
NUM_CLASSES = 10
PAPER_IMAGES, PAPER_N0, PAPER_N = 10_000, 100, 100_000
SHAPES = {"mnist": (1, 28, 28), "cifar": (3, 32, 32)}


def cohen_style_counts(model, image, sigma, num, num_classes, batch_size):
    """One image at a time, a fresh noisy batch per forward pass (Cohen et al.'s sampler)."""
    counts = np.zeros(num_classes, dtype=np.int64)
    remaining = num
    with torch.no_grad():
        while remaining > 0:
            this_batch = min(batch_size, remaining)
            remaining -= this_batch
            batch = image.repeat((this_batch, 1, 1, 1))
            noise = torch.randn_like(batch) * sigma
            predictions = model(batch + noise).argmax(1)
            counts += np.bincount(predictions.cpu().numpy(), minlength=num_classes)
    return counts


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def shape_of(arch: str) -> tuple[int, int, int]:
    return SHAPES["mnist" if "mnist" in arch else "cifar"]


def agreement(model, images, batch_size, device, batches: int = 8) -> float:
    """Fraction of noisy samples on which bf16 and fp32 evaluation predict the same class."""
    gen = torch.Generator(device=device).manual_seed(0)
    same = total = 0
    layout = torch.channels_last
    fast = copy.deepcopy(model).to(memory_format=layout)
    with torch.inference_mode():
        for b in range(batches):
            image = images[b % len(images)]
            noisy = image + SIGMA * torch.randn(
                (batch_size, *image.shape), device=device, generator=gen
            )
            with evaluated_in("fp32", device):
                first = model(noisy).argmax(1)
            with evaluated_in("bf16", device):
                second = fast(noisy.contiguous(memory_format=layout)).argmax(1)
            same += int((first == second).sum())
            total += batch_size
    return same / total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    cuda = torch.cuda.is_available()
    parser.add_argument("--arch", default="cifar_resnet110" if cuda else "lenet_mnist")
    parser.add_argument("--batch-size", type=int, default=400 if cuda else 1000)
    parser.add_argument("--num", type=int, default=20000 if cuda else 10000)
    parser.add_argument("--images", type=int, default=2 if cuda else 3)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--device", default="cuda" if cuda else "cpu")
    parser.add_argument("--repeats", type=int, default=5, help="timed repetitions (median)")
    parser.add_argument(
        "--precisions",
        nargs="+",
        default=None,
        choices=["fp32", "bf16"],
        help="of (a) and (b); default: fp32 and bf16 on a GPU, fp32 on the CPU",
    )
    parser.add_argument("--smoke", action="store_true", help="tiny sizes: checks the script runs")
    parser.add_argument("--json", type=Path, default=None, help="also write every figure here")
    args = parser.parse_args()
    if args.smoke:
        args.num, args.images, args.repeats, args.batch_size = 200, 2, 1, 100

    torch.set_num_threads(args.threads)  # the script's own process; the library never does this
    device = torch.device(args.device)
    precisions = args.precisions or (["fp32", "bf16"] if device.type == "cuda" else ["fp32"])
    torch.manual_seed(0)
    shape = shape_of(args.arch)
    model = create_model(args.arch, NUM_CLASSES).to(device).eval()
    cohen_model = copy.deepcopy(model)  # Cohen's sampler runs the model as built
    images = torch.rand((args.images, *shape), device=device)
    bs, num = args.batch_size, args.num
    forward_passes = max(1, (args.images * num) // bs)

    def forward_run(precision: str, channels_last: bool, sliced: bool = True):
        net = copy.deepcopy(model)
        batch = torch.rand((bs, *shape), device=device)
        if channels_last:
            net = net.to(memory_format=torch.channels_last)
            batch = batch.contiguous(memory_format=torch.channels_last)

        # on the CPU in the sampler's slices (robustreg.smoothing.CPU_SLICE)
        step = CPU_SLICE if device.type == "cpu" and sliced else bs

        def run():
            with torch.inference_mode(), evaluated_in(precision, device):
                for _ in range(forward_passes):
                    for start in range(0, bs, step):
                        net(batch[start : start + step])
            sync(device)
            return forward_passes * bs

        return run

    def certify_run(precision: str):
        cpu_images = images.cpu()
        labels = np.zeros(args.images, dtype=np.int64)

        def run():
            certify_counts(
                model,
                cpu_images,
                labels,
                sigma=SIGMA,
                n0=PAPER_N0,
                n=num,
                batch_size=bs,
                seed=0,
                device=device,
                num_classes=NUM_CLASSES,
                progress=False,
                precision=precision,
            )
            return args.images * (PAPER_N0 + num)

        return run

    def cohen_run():
        with evaluated_in("fp32", device):
            for i in range(args.images):
                cohen_style_counts(cohen_model, images[i], SIGMA, num, NUM_CLASSES, bs)
        return args.images * num

    runs = {}
    for precision in precisions:
        # the layout the sampler picks: NHWC on the CPU and for bf16
        channels_last = device.type == "cpu" or precision == "bf16"
        runs[f"forward_{precision}"] = forward_run(precision, channels_last)
    if device.type == "cpu":
        runs["forward_contiguous"] = forward_run("fp32", False, sliced=False)
    for precision in precisions:
        runs[f"certify_{precision}"] = certify_run(precision)
    runs["cohen_fp32"] = cohen_run

    for run in runs.values():  # warm-up: allocator, cuDNN/oneDNN choices, CUDA graph capture
        run()
    rates: dict[str, list[float]] = {name: [] for name in runs}
    # interleaved, so that load from other processes hits every method alike
    for _ in range(args.repeats):
        for name, run in runs.items():
            sync(device)
            t0 = time.perf_counter()
            samples = run()
            sync(device)
            rates[name].append(samples / (time.perf_counter() - t0))
    med = {name: statistics.median(r) for name, r in rates.items()}

    def ratio(top: str, bottom: str) -> float:
        # per repetition, then the median: the runs compared were seconds apart
        return statistics.median(a / b for a, b in zip(rates[top], rates[bottom], strict=True))

    best = precisions[-1]
    figures = {
        "device": str(device),
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "torch": torch.__version__,
        "arch": args.arch,
        "batch_size": bs,
        "num": num,
        "images": args.images,
        "repeats": args.repeats,
        "threads": torch.get_num_threads(),
        "samples_per_s": {name: round(rate, 1) for name, rate in med.items()},
        "ratios": {
            f"certify_{p}/forward_{p}": round(ratio(f"certify_{p}", f"forward_{p}"), 3)
            for p in precisions
        }
        | {
            f"certify_{p}/cohen_fp32": round(ratio(f"certify_{p}", "cohen_fp32"), 3)
            for p in precisions
        },  # fmt: skip
        "paper_certification_hours": {
            p: round(PAPER_IMAGES * (PAPER_N0 + PAPER_N) / med[f"certify_{p}"] / 3600, 3)
            for p in precisions
        },
    }
    if {"fp32", "bf16"} <= set(precisions):
        figures["agreement_bf16_fp32"] = round(agreement(model, images, bs, device), 5)

    print(
        f"device {device} ({figures['gpu'] or 'CPU'}), arch {args.arch}, threads "
        f"{figures['threads']}, batch size {bs}, num {num}, images {args.images}, "
        f"repeats {args.repeats} (median), torch {torch.__version__}"
    )
    labels = {
        "forward_contiguous": "(a') bare forward pass, fp32, contiguous (as (c) runs)",
        "cohen_fp32": "(c) Cohen-style per-image sampler, fp32",
    }
    for p in precisions:
        labels[f"forward_{p}"] = f"(a) bare forward pass, {p}"
        labels[f"certify_{p}"] = f"(b) certify_counts, {p} (n0=100, n={num})"
    for name in runs:
        print(f"{labels[name]:<56}{med[name]:>12.0f} samples/s")
    for name, value in figures["ratios"].items():
        print(f"ratio {name} = {value:.2f}")
    if device.type == "cpu":
        print("targets (CPU): certify/forward >= 0.90, certify/cohen >= 2.0")
    else:
        print(f"targets (GPU): certify_{best} >= 280000 samples/s, certify/cohen >= 5.0")
    for p, hours in figures["paper_certification_hours"].items():
        print(f"paper-scale certification (10,000 images, n = 100,000), {p}: {hours:.2f} h here")
    if "agreement_bf16_fp32" in figures:
        print(f"bf16/fp32 prediction agreement on noisy samples: {figures['agreement_bf16_fp32']}")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main()
