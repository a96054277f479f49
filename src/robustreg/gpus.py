"""Give each GPU job on one machine a device of its own.

``snakemake --resources gpu=4`` runs four jobs that each declared ``gpu=1`` at once, but
Snakemake tells none of them which GPU is its own: without help they would all use
``cuda:0``. ``claim_device`` hands each process a distinct device from the visible ones by
taking an exclusive ``flock`` on a file per device and keeping it until the process ends.

Why ``flock`` and not a pid file: the kernel drops the lock when the last descriptor on it
closes, which happens when the process exits however it exits (SIGKILL and the
out-of-memory killer included). A pid file would have to be judged stale by someone, and a
recycled pid would make a dead holder look alive.

Lock files are named by the device's *physical* key (the ``CUDA_VISIBLE_DEVICES`` entry:
an index or a ``GPU-``/``MIG-`` UUID), not by the position the process sees it at, so two
runs with different ``CUDA_VISIBLE_DEVICES`` orderings still exclude each other on the same
GPU. Two runs naming the same GPU once by index and once by UUID do not see each other;
keep to one style on a machine. The lock directory must be local to the machine (the
default, under the temp dir, is): the GPUs it stands for are.

This module does not import torch, so it stays cheap and testable without CUDA.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import socket
import sys
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

LOCK_DIR_ENV = "ROBUSTREG_GPU_LOCK_DIR"
# Set by SLURM in a job (or step) that was allocated GPUs (GPU_DEVICE_ORDINAL on AMD nodes).
SLURM_GPU_ENVS = ("SLURM_STEP_GPUS", "SLURM_JOB_GPUS", "GPU_DEVICE_ORDINAL")


class NoGpuVisible(RuntimeError):
    """The pool is empty: ``CUDA_VISIBLE_DEVICES`` hides every GPU, or there is none."""


@dataclass
class GpuClaim:
    """One device held by this process until ``release`` or the process's end.

    ``position`` is the device's index among the visible ones, as in
    ``torch.device("cuda", position)``; ``key`` its physical name (the lock file's stem).
    """

    position: int
    key: str
    path: Path
    _fd: int | None = field(default=None, repr=False)

    @property
    def device(self) -> str:
        return f"cuda:{self.position}"

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the only descriptor drops the flock
            self._fd = None


def visible_devices(device_count: int, env: Mapping[str, str] | None = None) -> list[str]:
    """Physical keys of the devices this process sees, in the order it numbers them.

    ``device_count`` is ``torch.cuda.device_count()`` (passed in, so this runs without
    CUDA); it caps the list, as CUDA ignores entries it cannot open.
    """
    env = os.environ if env is None else env
    raw = env.get("CUDA_VISIBLE_DEVICES")
    if raw is None:
        keys = [str(i) for i in range(device_count)]
    else:
        keys = []
        for entry in raw.split(","):
            entry = entry.strip()
            # CUDA stops reading the list at the first invalid entry; "-1" is the usual
            # way to hide every GPU, and "" (an empty variable) hides them all too.
            if not entry or entry.startswith("-"):
                break
            keys.append(entry)
        keys = keys[:device_count]
    slurm = _slurm_namespace(env)
    return [f"{slurm}{key}" if slurm else key for key in keys]


def _slurm_namespace(env: Mapping[str, str]) -> str:
    """A lock-name prefix private to a SLURM job step that was allocated GPUs, else "".

    SLURM gives a job its own GPUs, and with cgroup device constraint renumbers them, so
    every job on a node sees its GPU as index 0: locking by index across jobs would
    serialise jobs that run on different GPUs. Processes of one step share one view of
    the devices (as when ``snakemake --resources gpu=4`` runs inside an ``sbatch`` job with
    four GPUs), so within a step the pool still keeps them apart.
    """
    if not env.get("SLURM_JOB_ID") or not any(env.get(name) for name in SLURM_GPU_ENVS):
        return ""
    step = env.get("SLURM_STEP_ID") or env.get("SLURM_STEPID") or "batch"
    return f"slurm-{env['SLURM_JOB_ID']}.{step}-"


def default_lock_dir(env: Mapping[str, str] | None = None) -> Path:
    env = os.environ if env is None else env
    return Path(env.get(LOCK_DIR_ENV) or Path(tempfile.gettempdir()) / "robustreg-gpu-locks")


def claim_device(
    device_count: int,
    *,
    lock_dir: str | Path | None = None,
    timeout: float | None = None,
    poll: float = 2.0,
    env: Mapping[str, str] | None = None,
) -> GpuClaim:
    """Claim a visible device no other process holds; wait while every one is held.

    Tries the visible devices in order and takes the first free one. When all are held it
    prints one line to stderr and tries again every ``poll`` seconds, up to ``timeout``
    seconds (``None``: for ever; ``0``: one try), then raises ``TimeoutError``. Raises
    ``NoGpuVisible`` when there is no device to wait for. The lock's descriptor stays
    open until ``claim.release()`` or the end of the process, even if the claim object is
    dropped: a device must not go back to the pool while this process may still use it.
    """
    keys = visible_devices(device_count, env)
    if not keys:
        raw = (os.environ if env is None else env).get("CUDA_VISIBLE_DEVICES")
        why = f"CUDA_VISIBLE_DEVICES={raw!r} hides every GPU" if raw is not None else "no GPU"
        raise NoGpuVisible(f"no GPU to claim: {why}")
    lock_dir = Path(lock_dir) if lock_dir is not None else default_lock_dir(env)
    _make_shared_dir(lock_dir)
    deadline = None if timeout is None else time.monotonic() + timeout
    said_waiting = False
    while True:
        for position, key in enumerate(keys):
            claim = _try_lock(lock_dir, position, key)
            if claim is not None:
                return claim
        if deadline is not None and time.monotonic() >= deadline:
            raise TimeoutError(
                f"every GPU ({', '.join(keys)}) is still held by other jobs after "
                f"{timeout:g} s (locks in {lock_dir})"
            )
        if not said_waiting:
            print(
                f"robustreg: every GPU ({', '.join(keys)}) is held by another job; "
                f"waiting for one to be freed (locks in {lock_dir})",
                file=sys.stderr,
                flush=True,
            )
            said_waiting = True
        pause = poll if deadline is None else max(0.0, min(poll, deadline - time.monotonic()))
        time.sleep(pause)


# The claim of this process (``process_claim``). Module-level because the device must stay
# ours for the whole run, while any tensor may live on it, and because a second call (as
# when ``train`` falls back to ``pick_device()``) must get the same device, not another.
_PROCESS_CLAIM: GpuClaim | None = None


def process_claim(device_count: int, **kwargs) -> GpuClaim:
    """This process's one device: claimed (``claim_device(device_count, **kwargs)``) on the
    first call, the same one on every later call; held until the process ends."""
    global _PROCESS_CLAIM
    if _PROCESS_CLAIM is None:
        _PROCESS_CLAIM = claim_device(device_count, **kwargs)
        print(
            f"robustreg: claimed GPU {_PROCESS_CLAIM.key} as {_PROCESS_CLAIM.device} "
            f"(lock {_PROCESS_CLAIM.path})",
            file=sys.stderr,
            flush=True,
        )
    return _PROCESS_CLAIM


def _make_shared_dir(path: Path) -> None:
    """Create the lock directory world-writable and sticky, like /tmp itself.

    Several users' jobs share a workstation's GPUs, so they must share the locks; the
    sticky bit stops one user from deleting another's held lock file (which would let a
    third process lock a new file of the same name: two holders of one GPU).
    """
    try:
        path.mkdir(parents=True)
    except FileExistsError:
        return
    with contextlib.suppress(PermissionError):
        path.chmod(0o1777)  # mkdir's mode is cut by the umask; chmod's is not


def _try_lock(lock_dir: Path, position: int, key: str) -> GpuClaim | None:
    path = lock_dir / (re.sub(r"[^A-Za-z0-9_.-]", "_", key) + ".lock")
    fd = _open_lock_file(path)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    except BaseException:
        os.close(fd)
        raise
    # For a human wondering who holds a GPU: `cat /tmp/robustreg-gpu-locks/*.lock`.
    # Lock files are never deleted: unlinking one while another process waits on it
    # would let two processes lock two different files of the same name.
    with contextlib.suppress(OSError):  # a read-only descriptor (another user's file)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode(), 0)
    return GpuClaim(position=position, key=key, path=path, _fd=fd)


def _open_lock_file(path: Path) -> int:
    # Open without O_CREAT first: with fs.protected_regular, O_CREAT on another user's
    # file in a sticky world-writable directory is refused even when its mode allows it.
    # flock works on a read-only descriptor, so another user's 0644 file still locks.
    for flags in (os.O_RDWR, os.O_RDONLY):
        try:
            return os.open(path, flags)
        except FileNotFoundError:
            break
        except PermissionError:
            continue
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    with contextlib.suppress(PermissionError):
        os.fchmod(fd, 0o666)  # let other users' jobs open it read-write too
    return fd
