"""The fixed cost of a job: ``python -m robustreg <command>`` from process start to the end of
work so small that start-up is nearly all of it, next to a bare ``python -c "import torch"``.

Issue 19's target is at most 2.5 s per job on the 2-core machine when idle. Each job runs on
trivial input, with the arguments its Snakemake rule passes (workflow/rules/*.smk): a LeNet
trained for one step on 16 MNIST-shaped images, one image certified with n = 100 or attacked
with one PGD step or one Foolbox Carlini-Wagner step, ten images' bounds with two noise
samples each, and the cells, table, figure and index of that certification. Per job: the
median wall clock of ``--repeats`` runs and its ratio to the bare torch import's; the total
import time of one more run under ``python -X importtime``, and the packages that took most of
it (the self times of a package's modules, summed; torch._dynamo counts apart from torch,
with everything it imports).

``--baseline SRC`` runs every job also against another checkout's ``src/`` folder (e.g.
``git archive <commit> src | tar -x -C /tmp/old``), interleaved with this one, and prints
the two side by side. A loaded machine inflates every figure; the ratios move less.

    .venv/bin/python benchmarks/job_start.py [--repeats 3] [--baseline /tmp/old/src]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np

from robustreg.data import save_split

TARGET_S = 2.5
TOP_PACKAGES = 8
# counted with what it imports (sympy, triton, torch.fx, ...): timm pulled it in, and
# torch.optim imports it in every training
WHOLE = ("torch._dynamo",)
REFERENCES = {"python -c pass": ["-c", "pass"], "import torch": ["-c", "import torch"]}
EXPERIMENT = {
    "data": {"dataset": "synthetic", "train_limit": None},
    "arch": "lenet_mnist",
    "num_classes": 10,
    "method": "gaussian",
    "params": {},
    "sigma": 0.25,
    "schedule": {
        "epochs": 1,
        "batch_size": 16,
        "lr": 0.01,
        "momentum": 0.9,
        "nesterov": True,
        "weight_decay": 1e-4,
        "lr_milestones": [1],
        "lr_gamma": 0.1,
    },
    "seed": 0,
}
PGD = {"kind": "pgd", "norm": "l2", "eps": 2.0, "steps": 1, "step_size": 0.25}
CW = {"kind": "cw_l2", "eps": 2.0, "binary_search_steps": 1, "steps": 1, "stepsize": 0.01}
BOUNDS = {"norm": "l2", "eps": [0.5], "samples": 2, "block": 1}
DEVICE = ["--threads", "1", "--gpus", "0"]
ONE_IMAGE = ["--skip", "1", "--max-images", "1", "--seed", "0"]


class Inputs:
    """The files of a run: MNIST-shaped splits, a trained model, a certification of one image,
    its table's cells file and rendered table."""

    def __init__(self, tmp: Path):
        self.tmp = tmp
        self.train, self.test = tmp / "mnist" / "train.npz", tmp / "mnist" / "test.npz"
        self.model = tmp / "model" / "model.pt"
        self.certified = tmp / "certified"
        self.cells = tmp / "tables" / "table2_mnist.cells.yaml"
        self.report = tmp / "reports" / "table2_mnist.md"

    def document(self) -> str:
        cell = {"row": "gaussian", "sigma": 0.25, "log": str(self.certified / "certify.tsv")}
        return json.dumps({"table": "table2_mnist", "cells": [cell]})

    def train_job(self, out: str) -> list[str]:
        config = json.dumps(EXPERIMENT, sort_keys=True)
        return ["train", "--config-json", config, "--data", str(self.train), "--out-dir", out]

    def certify_job(self, out: str) -> list[str]:
        return ["certify", "--model", str(self.model), "--data", str(self.test)] + [
            *("--sigma", "0.25", "--n0", "10", "--n", "100", "--alpha", "0.001"),
            *("--batch-size", "100", *ONE_IMAGE, "--out-dir", out),
        ]

    def table_job(self, out: str) -> list[str]:
        return ["table", "--cells", str(self.cells), "--logs-root", str(self.tmp)] + [
            *("--md", f"{out}.md", "--tex", f"{out}.tex", "--html", f"{out}.html")
        ]

    def jobs(self) -> dict[str, list[str]]:
        """Each job's command line after ``python -m robustreg``; ``{run}`` in it becomes a
        fresh name per run, so that no run finds another's outputs (a training would not train
        again)."""
        out = str(self.tmp / "runs" / "{run}")
        model, test = ["--model", str(self.model)], ["--data", str(self.test)]
        return {
            "data (synthetic)": ["data", "--dataset", "cifar10", "--source", "synthetic"]
            + ["--synthetic-train", "10", "--synthetic-test", "10", "--out-dir", out],
            "train": self.train_job(out) + DEVICE,
            "certify": self.certify_job(out) + DEVICE,
            "tcertify": ["tcertify", "--counts", str(self.certified / "counts.npz")]
            + ["--alpha", "0.001", "--out", f"{out}.tsv"],
            "attack (pgd)": ["attack", *model, *test, "--attack-json", json.dumps(PGD)]
            + ["--batch-size", "100", *ONE_IMAGE, "--out-dir", out, *DEVICE],
            "attack (foolbox cw_l2)": ["attack", *model, *test, "--attack-json", json.dumps(CW)]
            + ["--batch-size", "100", *ONE_IMAGE, "--out-dir", out, *DEVICE],
            # the fewest images that make the 10 GEV blocks bounds asks for
            "bounds": ["bounds", *model, *test, "--bounds-json", json.dumps(BOUNDS)]
            + ["--batch-size", "100", "--max-images", "10", "--out-dir", out, *DEVICE],
            "cells": ["cells", "--json", self.document(), "--out", f"{out}.yaml"],
            "table": self.table_job(out),
            "figure": ["figure", "--spec", "figure1_mnist", "--cells", str(self.cells)]
            + ["--logs-root", str(self.tmp)]
            + [f"--{kind}={out}.{kind}" for kind in ("md", "tex", "pdf", "png")],
            "index": ["index", "--title", "Start-up", "--out", f"{out}.md", str(self.report)],
        }

    def prepare(self) -> None:
        rng = np.random.default_rng(0)
        for path, size in ((self.train, 16), (self.test, 10)):
            x = rng.integers(0, 256, size=(size, 1, 28, 28), dtype=np.uint8)
            save_split(path, x, np.arange(size) % 10)
        for command in (
            self.train_job(str(self.model.parent)),
            self.certify_job(str(self.certified)),
            ["cells", "--json", self.document(), "--out", str(self.cells)],
            self.table_job(str(self.report.with_suffix(""))),
        ):
            run([sys.executable, "-m", "robustreg", *command])


def run(command: list[str], source: str | None = None) -> subprocess.CompletedProcess:
    env = os.environ | ({"PYTHONPATH": source} if source else {})
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"failed ({done.returncode}): {' '.join(command)}\n{done.stderr[-3000:]}")
    return done


def wall_clock(command: list[str], source: str | None) -> float:
    start = time.perf_counter()
    run([sys.executable, *command], source)
    return time.perf_counter() - start


def imports(command: list[str], source: str | None) -> tuple[float, Counter]:
    """Seconds of the imports under ``-X importtime``, in all and by package: a module's self
    time counts for its top-level package, or for the one of ``WHOLE`` it was imported under
    (but the parent packages of that one, imported on the way, for their own)."""
    lines = run([sys.executable, "-X", "importtime", *command], source).stderr.splitlines()
    # importtime lists a module after the modules it imported, one level deeper: children
    # come before their parent, which collects them from the stack.
    stack: list[tuple[int, str, float, list]] = []
    for line in lines:
        fields = line.removeprefix("import time:").split("|")
        if not line.startswith("import time:") or not fields[0].strip().isdigit():
            continue
        depth = len(fields[2]) - len(fields[2].lstrip())
        children = []
        while stack and stack[-1][0] > depth:
            children.append(stack.pop())
        stack.append((depth, fields[2].strip(), int(fields[0]) / 1e6, children))
    by_package: Counter = Counter()

    def count(node: tuple[int, str, float, list], whole: str | None) -> None:
        _, module, seconds, children = node
        if whole and whole.startswith(f"{module}."):
            whole = None
        whole = whole or next((w for w in WHOLE if f"{module}.".startswith(f"{w}.")), None)
        by_package[whole or module.split(".")[0]] += seconds
        for child in children:
            count(child, whole)

    for root in stack:
        count(root, None)
    return sum(by_package.values()), by_package


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--baseline", default=None, help="another checkout's src/ folder")
    args = parser.parse_args()
    sources = {"now": None} | ({"before": args.baseline} if args.baseline else {})
    walls: dict[tuple[str, str], list[float]] = {}
    with tempfile.TemporaryDirectory() as folder:
        inputs = Inputs(Path(folder))
        inputs.prepare()
        commands = REFERENCES | {
            job: ["-m", "robustreg", *command] for job, command in inputs.jobs().items()
        }

        def fresh(job: str, label: str, run: str) -> list[str]:
            run_id = f"{label}-{run}-{list(commands).index(job)}"
            return [part.replace("{run}", run_id) for part in commands[job]]

        for repeat in range(args.repeats):
            for job in commands:
                for label, source in sources.items():
                    seconds = wall_clock(fresh(job, label, str(repeat)), source)
                    walls.setdefault((job, label), []).append(seconds)
        breakdown = {
            (job, label): imports(fresh(job, label, "importtime"), source)
            for job in commands
            for label, source in sources.items()
        }
    median = {key: statistics.median(values) for key, values in walls.items()}
    torch_s = median[("import torch", "now")]
    print(f"Median wall clock of {args.repeats} runs; x torch: over the bare 'import torch'.")
    before = f"{'before s':>8} {'now s':>7} {'ratio':>6}" if args.baseline else f"{'now s':>7}"
    print(f"{'job':23} {before} {'x torch':>7} {'imports s':>9}  top packages (s)")
    for job in commands:
        for label in sources:
            total, by_package = breakdown[(job, label)]
            top = ", ".join(f"{p} {s:.2f}" for p, s in by_package.most_common(TOP_PACKAGES))
            wall = median[(job, "now")]
            if label == "before":
                print(f"{'  before':23} {'':8} {'':7} {'':6} {'':7} {total:9.2f}  {top}")
                continue
            if args.baseline:
                old = median[(job, "before")]
                columns = f"{old:8.2f} {wall:7.2f} {wall / old:6.2f}"
            else:
                columns = f"{wall:7.2f}"
            print(f"{job:23} {columns} {wall / torch_s:7.2f} {total:9.2f}  {top}")
    jobs = [job for job in commands if job not in REFERENCES]
    slowest = max(jobs, key=lambda job: median[(job, "now")])
    over = [job for job in jobs if median[(job, "now")] > TARGET_S]
    print(
        f"Slowest job: {slowest}, {median[(slowest, 'now')]:.2f} s "
        f"({median[(slowest, 'now')] / torch_s:.2f} x import torch); "
        f"over {TARGET_S} s: {', '.join(over) or 'none'}."
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
