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

The locks are only as good as the folder that holds them: whoever can write to it can delete
a held lock file (and a third process then locks a new file of that name: two holders of
one GPU), or plant a ``0.lock`` symlink to a file of the victim's, which opening the lock
would truncate. So the default folder is the user's own, ``<tmp>/robustreg-gpu-locks-<uid>``,
made 0700; an existing one is used only when it is a real directory (not a symlink), owned
by this user and writable by nobody else. Lock files are opened without following symlinks,
and only a regular file of this user's, with no other link to it, is ever written to.

Jobs of one user exclude each other through it. Users who share a workstation's GPUs must
share a folder deliberately: ``ROBUSTREG_GPU_LOCK_DIR`` naming a folder of their common group
with the sticky bit (``chmod 3770``: members create lock files, none deletes another's),
never a folder every user can write to. Only a folder named that way may be group-writable
or another user's.

This module does not import torch, so it stays cheap and testable without CUDA.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import re
import socket
import stat
import sys
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

LOCK_DIR_ENV = "ROBUSTREG_GPU_LOCK_DIR"
_REMEDY = f"remove it, or set {LOCK_DIR_ENV} to a folder of your own or a group's (chmod 3770)"
# Set by SLURM in a job (or step) that was allocated GPUs (GPU_DEVICE_ORDINAL on AMD nodes).
SLURM_GPU_ENVS = ("SLURM_STEP_GPUS", "SLURM_JOB_GPUS", "GPU_DEVICE_ORDINAL")


class NoGpuVisible(RuntimeError):
    """The pool is empty: ``CUDA_VISIBLE_DEVICES`` hides every GPU, or there is none."""


class UnsafeLockDir(ValueError):
    """The lock folder, or a file in it, is one another user could have planted or could
    change; the message names it and says why."""


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
    """``ROBUSTREG_GPU_LOCK_DIR`` if set, else this user's ``<tmp>/robustreg-gpu-locks-<uid>``."""
    env = os.environ if env is None else env
    own = Path(tempfile.gettempdir()) / f"robustreg-gpu-locks-{os.getuid()}"
    return Path(env.get(LOCK_DIR_ENV) or own)


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
    ``NoGpuVisible`` when there is no device to wait for, and ``UnsafeLockDir`` when the lock
    folder or a lock file fails the checks of the module docstring (a folder named by
    ``lock_dir`` or ``ROBUSTREG_GPU_LOCK_DIR`` may be a group's). The lock's descriptor stays
    open until ``claim.release()`` or the end of the process, even if the claim object is
    dropped: a device must not go back to the pool while this process may still use it.
    """
    env = os.environ if env is None else env
    keys = visible_devices(device_count, env)
    if not keys:
        raw = env.get("CUDA_VISIBLE_DEVICES")
        why = f"CUDA_VISIBLE_DEVICES={raw!r} hides every GPU" if raw is not None else "no GPU"
        raise NoGpuVisible(f"no GPU to claim: {why}")
    named = lock_dir is not None or bool(env.get(LOCK_DIR_ENV))
    lock_dir = Path(lock_dir) if lock_dir is not None else default_lock_dir(env)
    dir_fd = _open_lock_dir(lock_dir, named)
    try:
        return _claim_in(dir_fd, lock_dir, keys, timeout, poll)
    finally:
        os.close(dir_fd)  # a claim holds its lock file's descriptor, not the folder's


def _claim_in(
    dir_fd: int, lock_dir: Path, keys: list[str], timeout: float | None, poll: float
) -> GpuClaim:
    """``claim_device``'s loop over the devices ``keys``, in the open lock folder ``dir_fd``."""
    deadline = None if timeout is None else time.monotonic() + timeout
    said_waiting = False
    while True:
        for position, key in enumerate(keys):
            claim = _try_lock(dir_fd, lock_dir, position, key)
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


def _open_lock_dir(path: Path, named: bool) -> int:
    """A descriptor of the lock folder ``path``, made 0700 if missing, once it passed the
    checks of the module docstring; lock files are then opened relative to it, so the checked
    folder is the one used even if its path is replaced meanwhile. ``named``: the folder was
    chosen by the user (``ROBUSTREG_GPU_LOCK_DIR``), so a group may share it."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        os.mkdir(path, 0o700)
    except FileExistsError:
        pass
    except OSError as err:
        raise UnsafeLockDir(
            f"{path}: the GPU lock folder cannot be made ({err.strerror}); {_REMEDY}"
        ) from None
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        # O_NOFOLLOW with O_DIRECTORY refuses a symlink as ENOTDIR, like a file: tell them apart
        what = "a symbolic link" if path.is_symlink() else "not a folder"
        raise UnsafeLockDir(f"{path}: the GPU lock folder is {what}; {_REMEDY}") from None
    info = os.fstat(fd)
    problem = _lock_dir_problem(info, named)
    if problem:
        os.close(fd)
        raise UnsafeLockDir(f"{path}: the GPU lock folder is {problem}; {_REMEDY}")
    return fd


def _lock_dir_problem(info: os.stat_result, named: bool) -> str | None:
    """Why a folder with ``info`` (fstat) is not safe for this user's locks; None if it is."""
    mode = stat.S_IMODE(info.st_mode)
    group = bool(mode & stat.S_IWGRP)
    shared = named and group and bool(mode & stat.S_ISVTX)
    if mode & stat.S_IWOTH:
        return f"writable by every user (mode {mode:o})"
    if group and not named:
        return f"group-writable (mode {mode:o}), and not named by {LOCK_DIR_ENV}"
    if group and not shared:
        return f"group-writable but not sticky (mode {mode:o}): members could delete held locks"
    if info.st_uid != os.getuid() and not shared:
        return f"owned by uid {info.st_uid}, not by this user (uid {os.getuid()})"
    return None


def _try_lock(dir_fd: int, lock_dir: Path, position: int, key: str) -> GpuClaim | None:
    name = re.sub(r"[^A-Za-z0-9_.-]", "_", key) + ".lock"
    path = lock_dir / name
    fd = _open_lock_file(dir_fd, name, path)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    except BaseException:
        os.close(fd)
        raise
    # For a human wondering who holds a GPU: `cat <tmp>/robustreg-gpu-locks-$(id -u)/*.lock`.
    # Lock files are never deleted: unlinking one while another process waits on it
    # would let two processes lock two different files of the same name. Only a file that
    # is this user's alone is written to: another's is locked as it is.
    info = os.fstat(fd)
    if info.st_uid == os.getuid() and info.st_nlink == 1:
        with contextlib.suppress(OSError):  # a read-only descriptor
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode(), 0)
    return GpuClaim(position=position, key=key, path=path, _fd=fd)


def _open_lock_file(dir_fd: int, name: str, path: Path) -> int:
    """A descriptor of the regular file ``name`` in the folder ``dir_fd`` (``path``, for
    messages), created if missing; a symlink or anything else there is ``UnsafeLockDir``.

    O_NONBLOCK: opening a planted FIFO would otherwise wait for a writer for ever; it changes
    nothing for a regular file. An existing file is opened without O_CREAT first: with
    fs.protected_regular, O_CREAT on another user's file in a sticky group-writable folder is
    refused even when its mode allows it, and flock works on a read-only descriptor.
    """
    flags = os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
    while True:
        try:
            fd = _open_existing(name, flags, dir_fd)
            if fd is None:
                fd = os.open(name, os.O_RDWR | os.O_CREAT | os.O_EXCL | flags, 0o644, dir_fd=dir_fd)
        except FileExistsError:
            continue  # another job created it between the two opens: open theirs
        except OSError as err:
            what = "a symbolic link" if err.errno == errno.ELOOP else f"not usable ({err.strerror})"
            raise UnsafeLockDir(f"{path}: the GPU lock file is {what}; {_REMEDY}") from None
        if stat.S_ISREG(os.fstat(fd).st_mode):
            return fd
        os.close(fd)
        raise UnsafeLockDir(f"{path}: the GPU lock file is not a regular file; {_REMEDY}")


def _open_existing(name: str, flags: int, dir_fd: int) -> int | None:
    """``name`` in ``dir_fd`` opened read-write, else read-only; None if it does not exist."""
    try:
        return os.open(name, os.O_RDWR | flags, dir_fd=dir_fd)
    except FileNotFoundError:
        return None
    except PermissionError:
        return os.open(name, os.O_RDONLY | flags, dir_fd=dir_fd)
