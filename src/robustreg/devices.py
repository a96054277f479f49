"""Which device a job runs on, and what to call it.

A job runs on the device its caller names; else on a GPU of its own when something gave it
one (its ``gpu`` resource, a SLURM allocation, ``CUDA_VISIBLE_DEVICES``), drawn from the
machine's pool (``robustreg.gpus``); else on the CPU. A job given a GPU that finds no usable
CUDA device stops with one line rather than run a paper-scale job on the CPU. Training,
certify, attack and bounds jobs all choose here.
"""

from __future__ import annotations

import os
import platform
import warnings
from collections.abc import Mapping

import torch

__all__ = ["NoUsableGpu", "device_name", "gpu_assignment", "pick_device"]


class NoUsableGpu(ValueError):
    """A job that was given a GPU finds none it can use. A ValueError, so that the CLI stops
    with one line (exit status 2) instead of training on the CPU for weeks."""


def gpu_assignment(gpus: int | None, env: Mapping[str, str] | None = None) -> str | None:
    """Why this job should run on a GPU, in words, or None if nothing gave it one.

    ``gpus`` is the job's ``gpu`` resource as the rules pass it (``--gpus``); None when the
    CLI runs by hand, where a SLURM GPU allocation or a ``CUDA_VISIBLE_DEVICES`` naming
    devices says the same. ``gpus == 0`` asks for the CPU whatever the environment holds.
    """
    from robustreg.gpus import SLURM_GPU_ENVS

    env = os.environ if env is None else env
    if gpus is not None:
        return f"its gpu resource is {gpus}" if gpus > 0 else None
    if env.get("SLURM_JOB_ID"):
        for name in SLURM_GPU_ENVS:
            if env.get(name):
                return f"SLURM allocated it GPUs ({name}={env[name]})"
    visible = env.get("CUDA_VISIBLE_DEVICES", "").strip()
    if visible and not visible.startswith("-"):
        return f"CUDA_VISIBLE_DEVICES={visible}"
    return None


def _no_usable_gpu(why: str) -> str | None:
    """What keeps CUDA from running here, or None if a visible device can run this torch.

    torch.cuda.is_available() is True on a GPU this build has no kernels for (the PyPI
    wheels of recent releases dropped Volta, the papers' V100s): such a job would die at its
    first kernel, so the device's compute capability is checked against the build's too.
    """
    build = f"torch {torch.__version__}, built for CUDA {torch.version.cuda or 'none'}"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        available = torch.cuda.is_available()
    if not available:
        said = next((str(w.message).strip().splitlines()[0] for w in caught), "")
        return f"{why}, but {build}, finds no usable CUDA device" + (f" ({said})" if said else "")
    archs = torch.cuda.get_arch_list()
    for index in range(torch.cuda.device_count() if archs else 0):
        major, minor = torch.cuda.get_device_capability(index)
        # a build runs a device whose sm it ships, or compiles its PTX for a newer one
        if f"sm_{major}{minor}" not in archs and not any(
            arch.startswith("compute_") and int(arch[8:]) <= major * 10 + minor for arch in archs
        ):
            name = torch.cuda.get_device_name(index)
            return (
                f"{why}, but GPU {index} ({name}, compute capability {major}.{minor}) has no "
                f"kernels in {build} (it has {' '.join(archs)}); install a torch build for it "
                "(README: Hardware and cost)"
            )
    return None


def pick_device(requested: str | None = None, gpus: int | None = None) -> torch.device:
    """The caller's device if it names one; else a GPU of this process's own; else the CPU.

    Several GPU jobs may run at once on one machine (``snakemake --resources gpu=4``), and
    nothing tells each which GPU is its own: the GPU comes from ``robustreg.gpus``' pool,
    held until the process ends. ``cuda:1`` is the caller's pick and bypasses the pool;
    plain ``cuda`` means "a GPU" and draws from it. CPU runs never touch the pool.

    The CPU is used only when asked for (``cpu``, ``gpus=0``) or when nothing gave the job a
    GPU (``gpu_assignment``): a job given one that finds no usable CUDA device raises
    ``NoUsableGpu`` rather than run a paper-scale training on the CPU.
    """
    from robustreg import gpus as pool

    device = torch.device(requested) if requested else None
    if device is not None and device.type not in ("cuda", "cpu"):
        return device
    if device is None and gpus == 0:
        return torch.device("cpu")
    if device is not None and device.type == "cpu":
        return device
    why = "--device " + requested if device is not None else gpu_assignment(gpus)
    if why is None:
        if not torch.cuda.is_available():
            return torch.device("cpu")
        why = "CUDA is present"
    problem = _no_usable_gpu(why)
    if problem is not None:
        raise NoUsableGpu(problem + "; to run on the CPU set the stage's gpu: 0 or --device cpu")
    if device is not None and device.index is not None:
        return device
    claim = pool.process_claim(torch.cuda.device_count())
    # Make it the current device too, so what runs on "the current GPU" (cuDNN and cuBLAS
    # handles, torch.cuda calls without a device) does not open a context on GPU 0,
    # another job's, at a few hundred MiB each.
    torch.cuda.set_device(claim.position)
    return torch.device("cuda", claim.position)


def device_name(device: torch.device, world: int = 1) -> str:
    """The hardware of a run in words, for a "training time" column: the GPU's name; for the
    CPU, ``cpu`` with the processor's model name (Linux's /proc/cpuinfo, else ``platform``)
    and torch's thread count; ``"<P> x <name>"`` for P processes."""
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
    elif device.type == "cpu":
        threads = torch.get_num_threads()
        name = f"cpu ({_processor()}, {threads} thread{'s' if threads != 1 else ''})"
    else:
        name = str(device)
    return f"{world} x {name}" if world > 1 else name


def _processor() -> str:
    """The CPU's model name; ``platform.processor()`` is often empty or just "x86_64" on Linux."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                key, _, value = line.partition(":")
                if key.strip() == "model name" and value.strip():
                    return value.strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown processor"
