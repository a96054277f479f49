"""Attack throughput of our PGD (``robustreg.attacks.pgd``) against Foolbox's ``LinfPGD``.

Both run the same attack on the same model and batch: ``cifar_resnet20`` with random weights,
synthetic CIFAR-shaped images, linf eps 8/255, ``--steps`` steps of 2/255 from a random
start, each through its ``robustreg.attacks.suite`` entry (``pgd`` and ``foolbox_pgd``) in
the runner's ``attack_mode`` (eval mode, parameters frozen). Prints images per second of each
and their ratio (ours / Foolbox's). Methods run interleaved, ``--reps`` times after a warm-up;
rates are medians, the ratio the median of the per-repetition ratios. The script reports; it
always exits 0.

    .venv/bin/python benchmarks/attack_throughput.py [--batch 128] [--reps 5] [--threads 2]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from robustreg.attacks.suite import attack_mode, build_attack
from robustreg.models import create_model

EPS = 8 / 255
NUM_CLASSES = 10


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=128, help="images per attack call")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--reps", type=int, default=5, help="timed repetitions (median)")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)  # the script's own process; the library never does this
    device = torch.device(args.device)
    torch.manual_seed(0)
    model = create_model("cifar_resnet20", NUM_CLASSES)
    x = torch.rand((args.batch, 3, 32, 32), device=device)
    settings = {"norm": "linf", "eps": EPS, "steps": args.steps, "step_size": 2 / 255}
    attacks = {
        "ours": build_attack({"kind": "pgd", **settings}),
        "foolbox": build_attack({"kind": "foolbox_pgd", **settings}),
    }
    rates: dict[str, list[float]] = {name: [] for name in attacks}
    with attack_mode(model, device):
        with torch.no_grad():
            y = model(x).argmax(1)  # every image correctly classified: all are attacked
        for attack in attacks.values():  # warm-up: allocator, oneDNN / cuDNN, Foolbox's import
            attack.perturb(model, x, y)
        # interleaved, so that load from other processes hits both alike
        for _ in range(args.reps):
            for name, attack in attacks.items():
                sync(device)
                t0 = time.perf_counter()
                attack.perturb(model, x, y)
                sync(device)
                rates[name].append(args.batch / (time.perf_counter() - t0))
    med = {name: statistics.median(r) for name, r in rates.items()}
    ratio = statistics.median(a / b for a, b in zip(rates["ours"], rates["foolbox"], strict=True))

    print(
        f"device {device}, threads {torch.get_num_threads()}, cifar_resnet20 (random weights), "
        f"batch {args.batch}, linf eps 8/255, {args.steps} steps, reps {args.reps} (median)"
    )
    print(f"{'ours (robustreg.attacks.pgd)':<36}{med['ours']:>10.1f} images/s")
    print(f"{'Foolbox LinfPGD':<36}{med['foolbox']:>10.1f} images/s")
    print(f"ratio ours/Foolbox = {ratio:.2f}")


if __name__ == "__main__":
    main()
