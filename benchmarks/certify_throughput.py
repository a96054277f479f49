"""Sampling throughput of ``robustreg.smoothing`` against the model's bare forward pass.

Prints, side by side on the same LeNet and batch size (samples per second):
  (a) the bare forward pass on a preallocated batch, in the layout our sampler uses;
  (b) ``sample_counts`` and ``certify_counts``;
  (c) a straightforward per-image sampler in the style of Cohen et al. (2019)'s
      ``Smooth._sample_noise``: fresh ``randn_like`` noise per batch, contiguous layout,
      ``no_grad`` rather than ``inference_mode``, counts via ``.cpu().numpy()``.
  (a') on CPU, the bare forward pass in the contiguous layout that (c) runs: (a')/(c) near 1
      means (b)/(c) cannot exceed about (a)/(a'), however cheap the sampling.
Targets: (b)/(a) >= 0.90 (noise, counting and bookkeeping cost at most 10%) and
(b)/(c) >= 2.0. Methods run interleaved, ``--repeats`` times after a warm-up; rates are
medians, ratios the median of the per-repetition ratios. The script reports; it always
exits 0.

    .venv/bin/python benchmarks/certify_throughput.py [--batch-size 1000] [--num 10000]
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import numpy as np
import torch

from robustreg.models import create_model
from robustreg.smoothing import certify_counts, image_generator, sample_counts

SIGMA = 0.25
NUM_CLASSES = 10
SHAPE = (1, 28, 28)


def straightforward_counts(model, image, sigma, num, num_classes, batch_size):
    """One image at a time, a fresh noisy batch per forward pass (the usual first version)."""
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch-size", type=int, default=1000)
    parser.add_argument("--num", type=int, default=10000, help="noise samples per image")
    parser.add_argument("--images", type=int, default=3)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--repeats", type=int, default=7, help="timed repetitions (median)")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)  # the script's own process; the library never does this
    device = torch.device(args.device)
    torch.manual_seed(0)
    model = create_model("lenet_mnist", NUM_CLASSES).to(device).eval()
    # Cohen's sampler runs the model as built: contiguous weights
    reference_model = copy.deepcopy(model)
    images = torch.rand((args.images, *SHAPE), device=device)
    bs, num = args.batch_size, args.num

    # (a) what the sampler's forward passes cost on their own: same layout, same batch
    channels_last = device.type == "cpu"
    fwd_model = copy.deepcopy(model)
    fwd_batch = torch.rand((bs, *SHAPE), device=device)
    if channels_last:
        fwd_model = fwd_model.to(memory_format=torch.channels_last)
        fwd_batch = fwd_batch.contiguous(memory_format=torch.channels_last)
    forward_passes = max(1, (args.images * num) // bs)

    def run_forward():
        with torch.inference_mode():
            for _ in range(forward_passes):
                fwd_model(fwd_batch)
        sync(device)
        return forward_passes * bs

    contiguous_model = copy.deepcopy(model)
    contiguous_batch = torch.rand((bs, *SHAPE), device=device)

    def run_forward_contiguous():
        # the forward pass (c) pays for: the ceiling of any speedup over (c) in layout alone
        with torch.inference_mode():
            for _ in range(forward_passes):
                contiguous_model(contiguous_batch)
        sync(device)
        return forward_passes * bs

    def run_sample_counts():
        gens = [image_generator(0, i, device) for i in range(args.images)]
        sample_counts(model, images, SIGMA, num, NUM_CLASSES, bs, gens)
        return args.images * num

    cpu_images = images.cpu()
    labels = np.zeros(args.images, dtype=np.int64)

    def run_certify_counts():
        certify_counts(
            model,
            cpu_images,
            labels,
            sigma=SIGMA,
            n0=100,
            n=num,
            batch_size=bs,
            seed=0,
            device=device,
            num_classes=NUM_CLASSES,
            progress=False,
        )
        return args.images * (100 + num)

    def run_straightforward():
        for i in range(args.images):
            straightforward_counts(reference_model, images[i], SIGMA, num, NUM_CLASSES, bs)
        return args.images * num

    runs = {"forward": run_forward}
    if channels_last:
        runs["forward_contiguous"] = run_forward_contiguous
    runs |= {
        "sample_counts": run_sample_counts,
        "certify_counts": run_certify_counts,
        "straightforward": run_straightforward,
    }
    for run in runs.values():  # warm-up: allocator, oneDNN primitive cache, lazy init
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
    # ratios within each repetition, then their median: the runs compared were seconds
    # apart, so slow changes in load from other processes cancel
    vs_forward = statistics.median(
        b / a for a, b in zip(rates["forward"], rates["sample_counts"], strict=True)
    )
    vs_straightforward = statistics.median(
        b / c for b, c in zip(rates["sample_counts"], rates["straightforward"], strict=True)
    )

    print(
        f"device {device}, threads {torch.get_num_threads()}, batch size {bs}, "
        f"num {num}, images {args.images}, repeats {args.repeats} (median)"
    )
    layout = "channels-last" if channels_last else "contiguous"
    rows = [(f"(a) bare forward pass ({layout})", "forward")]
    if channels_last:
        rows.append(("(a') bare forward pass (contiguous, as (c) runs)", "forward_contiguous"))
    rows += [
        ("(b) sample_counts", "sample_counts"),
        (f"(b) certify_counts (n0=100, n={num})", "certify_counts"),
        ("(c) straightforward per-image (Cohen-style)", "straightforward"),
    ]
    for label, name in rows:
        print(f"{label:<50}{med[name]:>10.0f} samples/s")
    print(f"ratio sampling/forward = {vs_forward:.2f} (target >= 0.90)")
    print(f"speedup vs straightforward = {vs_straightforward:.2f} (target >= 2.0)")


if __name__ == "__main__":
    main()
