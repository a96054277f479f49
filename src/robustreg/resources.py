"""What each job asks the scheduler for: threads, memory, time and GPUs, per stage and dataset.

A LeNet training on MNIST takes minutes where a ResNet-110 certification of CIFAR-10 at
n = 100,000 takes a day, so one request per stage would either waste a cluster's queue or
have SLURM kill the long jobs. ``config["resources"][stage]`` holds the stage's request and,
under a dataset's name, what differs for that dataset::

    train: {threads: 2, mem_mb: 8000, runtime: 240, gpu: 1,
            cifar10: {runtime: 1440}, imagenet: {threads: 8, mem_mb: 32000, runtime: 2880}}

``runtime`` is the first attempt's limit in minutes. Jobs resume from their checkpoints and
progress logs, so a job killed at its time limit is worth running again with more time: the
SLURM profile has Snakemake retry a failed job, and attempt k asks for k times the runtime
(``runtime_for``). Local runs do not retry: without a time limit, a failure there would only
repeat.

Pure functions of the config (no Snakemake, no torch), called by the rules and tested here.
"""

from __future__ import annotations

from collections.abc import Mapping

DATASETS = ("mnist", "cifar10", "imagenet")
REQUESTS = ("threads", "mem_mb", "runtime", "gpu")


def stage_request(resources: Mapping, stage: str, dataset: str) -> dict:
    """The request of one ``stage`` job on ``dataset`` (a dataset name, not its id): the
    stage's own values with the dataset's overrides on top. Keys: those of ``REQUESTS`` the
    config sets (``data`` jobs have no threads or GPU)."""
    if stage not in resources:
        raise KeyError(f"resources.{stage}: not configured")
    if dataset not in DATASETS:
        raise KeyError(f"resources.{stage}: unknown dataset {dataset!r}")
    entry = resources[stage]
    request = {key: entry[key] for key in REQUESTS if key in entry}
    request |= {key: value for key, value in entry.get(dataset, {}).items() if key in REQUESTS}
    return request


def runtime_for(minutes: int, attempt: int) -> int:
    """The time limit of attempt ``attempt`` (1 for the first run): ``attempt`` times the
    first's, so a job SLURM stopped at its limit gets more time to finish what it resumes."""
    return minutes * max(1, attempt)


def scaled(request: Mapping, processes: int) -> dict:
    """A data-parallel training's request: ``processes`` ranks, each with one process's
    threads, memory and GPUs (the time limit is the job's, not multiplied)."""
    return {
        key: value * processes if key in ("threads", "mem_mb", "gpu") else value
        for key, value in request.items()
    }
