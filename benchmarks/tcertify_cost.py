"""Cost of T-CERTIFY (Feng et al. 2020, Algorithm 2) against CERTIFY on the same counts.

T-CERTIFY runs on the counts a certify job stored, so its whole cost is the statistics: for
every image and every alpha' of the grid, a Clopper-Pearson bound and the root of Eq. 14's
sum over the C - 1 other classes. Prints, side by side on the same synthetic counts (N images,
n = 100,000 samples each, as at paper scale; 10 and 1,000 classes): milliseconds per image of
``certify`` and of ``t_certify`` with the paper's 10-point grid, and their ratio. Medians
over ``--repeats``. The script reports; it always exits 0.

    .venv/bin/python benchmarks/tcertify_cost.py [--images 500] [--repeats 5]
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

from robustreg.certify import TCERTIFY_GRID, certify, t_certify


def synthetic_counts(images: int, classes: int, n: int, seed: int = 0):
    """Counts of smoothed classifiers with a random top class of probability 0.5-0.95 (a
    certification mix of confident and borderline images)."""
    rng = np.random.default_rng(seed)
    top = rng.uniform(0.5, 0.95, size=images)
    rest = rng.dirichlet(np.ones(classes - 1), size=images) * (1 - top)[:, None]
    p = np.concatenate([top[:, None], rest], axis=1)
    counts0 = np.stack([rng.multinomial(100, row) for row in p])
    counts = np.stack([rng.multinomial(n, row) for row in p])
    return counts0, counts


def timed(fn, args: tuple, repeats: int) -> float:
    seconds = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn(*args)
        seconds.append(time.perf_counter() - started)
    return statistics.median(seconds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=500)
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    print(f"{args.images} images, n = {args.n:,}, alpha = 0.001, grid of {len(TCERTIFY_GRID)}")
    print(f"{'classes':>8} {'CERTIFY ms/img':>15} {'T-CERTIFY ms/img':>17} {'ratio':>7}")
    for classes in (10, 1000):
        counts0, counts = synthetic_counts(args.images, classes, args.n)
        inputs = (counts0, counts, 0.5, 0.001)
        base = timed(certify, inputs, args.repeats)
        tight = timed(t_certify, inputs, args.repeats)
        print(
            f"{classes:>8} {1e3 * base / args.images:>15.3f} "
            f"{1e3 * tight / args.images:>17.3f} {tight / base:>7.1f}"
        )


if __name__ == "__main__":
    main()
