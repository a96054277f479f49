"""Training step time of input-gradient regularization by finite differences (FD) and by
double backpropagation (DBP), against plain training, on the same model and batch.

Finlay & Oberman (Section 4, Table 1) report FD training about 50% faster than DBP on
CIFAR-10 (5.2 vs 9.9 hours) and 7-step adversarial training over twice as slow as either.
This script measures one optimizer step (zero_grad, the objective's loss, backward, SGD
step) of each through the training loop's own objectives (``robustreg.objectives``):
``standard``, ``gradient_norm`` with ``method: fd`` and ``method: dbp`` (squared l2 norm,
lam 1, h 0.01) and, for scale, 7-step linf PGD-AT at 8/255. Model: ``--arch`` (default the
paper's ``resnext34_2x32_cifar``) with random weights in train mode, synthetic CIFAR-shaped
images. Objectives run interleaved, ``--reps`` times after a warm-up step each; times are
medians, each ratio the median of the per-repetition ratios to plain training. The script
reports; it always exits 0.

    .venv/bin/python benchmarks/gradreg_step.py [--arch cifar_resnet20] [--batch 32] [--reps 5]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from robustreg.models import create_model
from robustreg.objectives import build_objective
from robustreg.objectives.base import StepContext

NUM_CLASSES = 10
OBJECTIVES = {
    "plain (standard)": ("standard", {}),
    "FD, squared l2": ("gradient_norm", {"norm": "l2", "lam": 1.0, "method": "fd", "h": 0.01}),
    "DBP, squared l2": ("gradient_norm", {"norm": "l2", "lam": 1.0, "method": "dbp"}),
    "7-step PGD-AT, linf 8/255": (
        "pgd_at",
        {"norm": "linf", "eps": 8 / 255, "steps": 7, "step_size": 2 / 255},
    ),
}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", default="resnext34_2x32_cifar")
    parser.add_argument("--batch", type=int, default=32, help="images per training step")
    parser.add_argument("--reps", type=int, default=5, help="timed repetitions (median)")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)  # the script's own process; the library never does this
    device = torch.device(args.device)
    torch.manual_seed(0)
    model = create_model(args.arch, NUM_CLASSES).to(device).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    x = torch.rand((args.batch, 3, 32, 32), device=device)
    y = torch.randint(0, NUM_CLASSES, (args.batch,), device=device)
    objectives = {name: build_objective(m, None, p) for name, (m, p) in OBJECTIVES.items()}
    ctx = StepContext(epoch=0, epochs=1)

    def step(objective) -> float:
        sync(device)
        t0 = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        loss, _ = objective(model, x, y, ctx)
        loss.backward()
        optimizer.step()
        sync(device)
        return time.perf_counter() - t0

    for objective in objectives.values():  # warm-up: allocator, oneDNN / cuDNN kernels
        step(objective)
    # interleaved, so that load from other processes hits every objective alike
    seconds: dict[str, list[float]] = {name: [] for name in objectives}
    for _ in range(args.reps):
        for name, objective in objectives.items():
            seconds[name].append(step(objective))

    plain = seconds["plain (standard)"]
    print(
        f"device {device}, threads {torch.get_num_threads()}, {args.arch} (random weights, "
        f"train mode), batch {args.batch}, reps {args.reps} (median)"
    )
    print(f"{'objective':<28}{'ms/step':>10}{'x plain':>10}")
    for name, times in seconds.items():
        ratio = statistics.median(t / p for t, p in zip(times, plain, strict=True))
        print(f"{name:<28}{1000 * statistics.median(times):>10.1f}{ratio:>10.2f}")
    dbp_over_fd = statistics.median(
        d / f for d, f in zip(seconds["DBP, squared l2"], seconds["FD, squared l2"], strict=True)
    )
    print(f"ratio DBP/FD = {dbp_over_fd:.2f} (paper, Table 1 training hours: 9.85 / 5.22 = 1.89)")


if __name__ == "__main__":
    main()
