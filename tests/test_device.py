"""Which device a job runs on: the CPU only when asked for, a GPU when one was given, and one
line instead of a CPU run when a GPU was given but none is usable."""

from __future__ import annotations

import pytest
import torch

from robustreg import cli, gpus
from robustreg.devices import NoUsableGpu, gpu_assignment, pick_device


@pytest.fixture
def no_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for name in ("CUDA_VISIBLE_DEVICES", "SLURM_JOB_ID", *gpus.SLURM_GPU_ENVS):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def one_gpu(monkeypatch, tmp_path):
    """torch sees one device of compute capability 7.0 (a V100); no claim is held yet."""
    monkeypatch.setenv(gpus.LOCK_DIR_ENV, str(tmp_path / "locks"))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda index: (7, 0))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda index: "Tesla V100-SXM2-32GB")
    monkeypatch.setattr(torch.cuda, "set_device", lambda index: None)
    monkeypatch.setattr(gpus, "_PROCESS_CLAIM", None)
    yield monkeypatch
    if gpus._PROCESS_CLAIM is not None:
        gpus._PROCESS_CLAIM.release()


@pytest.mark.parametrize(
    ("given", "env", "why"),
    [
        (1, {}, "its gpu resource is 1"),
        (4, {"CUDA_VISIBLE_DEVICES": ""}, "its gpu resource is 4"),
        (0, {"CUDA_VISIBLE_DEVICES": "0", "SLURM_JOB_ID": "7", "SLURM_JOB_GPUS": "0"}, None),
        (None, {"SLURM_JOB_ID": "7", "SLURM_JOB_GPUS": "2"}, "SLURM allocated it GPUs"),
        (None, {"SLURM_JOB_GPUS": "2"}, None),  # not inside a SLURM job
        (None, {"CUDA_VISIBLE_DEVICES": "GPU-1234,1"}, "CUDA_VISIBLE_DEVICES=GPU-1234,1"),
        (None, {"CUDA_VISIBLE_DEVICES": ""}, None),
        (None, {"CUDA_VISIBLE_DEVICES": "-1"}, None),
        (None, {}, None),
    ],
)
def test_what_gives_a_job_a_gpu(given, env, why):
    said = gpu_assignment(given, env)
    assert said == why if why is None else said.startswith(why)


def test_the_cpu_only_when_asked_for_or_nothing_gave_a_gpu(no_cuda):
    assert pick_device("cpu") == torch.device("cpu")
    assert pick_device(None, gpus=0) == torch.device("cpu")
    assert pick_device(None) == torch.device("cpu")  # the CLI by hand, on a machine without one


@pytest.mark.parametrize(
    ("requested", "given", "env", "why"),
    [
        (None, 1, {}, "its gpu resource is 1"),
        (None, None, {"SLURM_JOB_ID": "7", "SLURM_STEP_GPUS": "0"}, "SLURM allocated it GPUs"),
        (None, None, {"CUDA_VISIBLE_DEVICES": "0"}, "CUDA_VISIBLE_DEVICES=0"),
        ("cuda", None, {}, "--device cuda"),
        ("cuda:1", 0, {}, "--device cuda:1"),
    ],
)
def test_a_job_given_a_gpu_without_cuda_stops(no_cuda, monkeypatch, requested, given, env, why):
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(NoUsableGpu, match="finds no usable CUDA device") as err:
        pick_device(requested, gpus=given)
    message = str(err.value)
    assert message.startswith(why) and "\n" not in message
    assert message.endswith("to run on the CPU set the stage's gpu: 0 or --device cpu")


def test_a_gpu_this_torch_has_no_kernels_for_stops(one_gpu):
    one_gpu.setattr(torch.cuda, "get_arch_list", lambda: ["sm_80", "sm_90", "sm_120"])
    with pytest.raises(
        NoUsableGpu, match=r"GPU 0 \(Tesla V100-SXM2-32GB, compute capability 7.0\)"
    ):
        pick_device(None, gpus=1)


@pytest.mark.parametrize("archs", [["sm_70", "sm_80"], ["sm_80", "compute_70"]])
def test_a_gpu_with_kernels_or_ptx_is_claimed(one_gpu, archs):
    one_gpu.setattr(torch.cuda, "get_arch_list", lambda: archs)
    assert pick_device(None, gpus=1) == torch.device("cuda", 0)


def test_cli_says_so_in_one_line_before_reading_anything(no_cuda, tmp_path, capsys):
    # Neither the model nor the data exists: the device is checked first.
    status = cli.main(
        ["certify", "--model", str(tmp_path / "none.pt"), "--data", str(tmp_path / "none.npz")]
        + ["--sigma", "0.5", "--out-dir", str(tmp_path / "out"), "--gpus", "1"]
    )
    err = capsys.readouterr().err.strip()
    assert status == 2
    assert err.startswith("robustreg certify: error: its gpu resource is 1, but torch ")
    assert len(err.splitlines()) == 1
    assert not (tmp_path / "out").exists()
