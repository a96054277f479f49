"""The GPU pool (robustreg.gpus): one device per process, with real concurrent processes.

No GPU is needed: the device count is passed in, and the locks are plain files in a
scratch directory. Processes synchronise through a start file, their stdout (one JSON line
per claim) and their stdin (closing it ends a holder), never through sleeps.
"""

from __future__ import annotations

import json
import os
import queue
import re
import signal
import stat
import subprocess
import sys
import tempfile
import threading

import pytest
import torch

from robustreg import gpus
from robustreg.devices import pick_device
from robustreg.gpus import NoGpuVisible, UnsafeLockDir, claim_device, visible_devices

# Claims a device (waiting for the start file, if named, so that the claims overlap), prints
# {"position", "key"} or null (none free within TEST_TIMEOUT), then holds it until stdin closes.
CHILD = r"""
import json, os, sys, time
from robustreg.gpus import claim_device
go = os.environ.get("TEST_GO")
while go and not os.path.exists(go):
    time.sleep(0.002)
timeout = os.environ.get("TEST_TIMEOUT")
try:
    claim = claim_device(
        int(os.environ["TEST_COUNT"]), timeout=float(timeout) if timeout else None, poll=0.02
    )
    print(json.dumps({"position": claim.position, "key": claim.key}), flush=True)
except TimeoutError:
    print("null", flush=True)
sys.stdin.read()
"""

WAIT = 15  # seconds: a bound for things that take milliseconds, not a pace


class Child:
    """A claiming process whose stdout and stderr lines are read without blocking the test."""

    def __init__(self, count: int, **env: str):
        self.proc = subprocess.Popen(
            [sys.executable, "-c", CHILD],
            env=os.environ | {"TEST_COUNT": str(count)} | env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.out: queue.Queue[str] = queue.Queue()
        self.err: queue.Queue[str] = queue.Queue()
        self.pumps = [
            threading.Thread(target=_pump, args=(stream, lines), daemon=True)
            for stream, lines in ((self.proc.stdout, self.out), (self.proc.stderr, self.err))
        ]
        for pump in self.pumps:
            pump.start()

    def claim(self) -> dict | None:
        try:
            line = self.out.get(timeout=WAIT)
        except queue.Empty:
            raise AssertionError(f"no claim from pid {self.proc.pid} in {WAIT} s") from None
        return json.loads(line)

    def stderr_line(self) -> str:
        try:
            return self.err.get(timeout=WAIT)
        except queue.Empty:
            raise AssertionError(f"nothing on stderr of pid {self.proc.pid}") from None

    def release(self) -> list[str]:
        """Close stdin: the holder returns from its read and exits normally.

        Returns the stderr lines not read yet, all of them: the process has ended.
        """
        self.proc.stdin.close()
        assert self.proc.wait(timeout=WAIT) == 0
        for pump in self.pumps:
            pump.join(timeout=WAIT)
        return list(self.err.queue)


def _pump(stream, lines: queue.Queue) -> None:
    for line in stream:
        lines.put(line)


@pytest.fixture
def lock_dir(tmp_path, monkeypatch):
    """A scratch lock directory; no CUDA_VISIBLE_DEVICES or SLURM job leaks in from outside."""
    for name in list(os.environ):
        if name in ("CUDA_VISIBLE_DEVICES", "GPU_DEVICE_ORDINAL") or name.startswith("SLURM_"):
            monkeypatch.delenv(name)
    path = tmp_path / "locks"
    monkeypatch.setenv(gpus.LOCK_DIR_ENV, str(path))
    return path


@pytest.fixture
def spawn():
    children: list[Child] = []

    def start(count: int, **env: str) -> Child:
        children.append(Child(count, **env))
        return children[-1]

    yield start
    for child in children:
        if child.proc.poll() is None:
            child.proc.kill()
        child.proc.wait()


@pytest.fixture
def held():
    """Claims made in the test process, released at the end."""
    claims: list[gpus.GpuClaim] = []
    yield claims
    for claim in claims:
        claim.release()


def test_four_concurrent_processes_get_four_distinct_devices(lock_dir, spawn, tmp_path):
    go = tmp_path / "go"
    children = [spawn(4, TEST_GO=str(go)) for _ in range(4)]
    go.touch()  # all four claim at once
    claims = [child.claim() for child in children]
    assert sorted(c["key"] for c in claims) == ["0", "1", "2", "3"]
    assert all(c["position"] == int(c["key"]) for c in claims)
    # Each lock file names its holder, for a human debugging; the folder is this user's alone.
    for child, c in zip(children, claims, strict=True):
        assert (lock_dir / f"{c['key']}.lock").read_text().startswith(f"pid {child.proc.pid} on ")
    assert stat.S_IMODE(lock_dir.stat().st_mode) == 0o700


def test_fifth_process_waits_then_gets_the_freed_device(lock_dir, spawn):
    holders = [spawn(4) for _ in range(4)]
    keys = [holder.claim()["key"] for holder in holders]
    fifth = spawn(4)
    assert "waiting for one to be freed" in fifth.stderr_line()
    assert fifth.out.empty()  # it said it waits, so it holds nothing yet
    freed = keys.index("2")
    holders[freed].release()
    assert fifth.claim() == {"position": 2, "key": "2"}
    assert fifth.release() == []  # one line while waiting, not one per poll


def test_waiting_says_so_once_then_times_out(lock_dir, held, capsys):
    held.append(claim_device(1, timeout=0))
    with pytest.raises(TimeoutError, match=r"every GPU \(0\) is still held .* after 0.2 s"):
        claim_device(1, timeout=0.2, poll=0.01)  # some twenty tries
    assert capsys.readouterr().err.count("\n") == 1


def test_sigkilled_holder_frees_its_device_at_once(lock_dir, spawn, held):
    holders = [spawn(2) for _ in range(2)]
    keys = [holder.claim()["key"] for holder in holders]
    with pytest.raises(TimeoutError, match="still held"):
        claim_device(2, timeout=0)
    victim = holders[keys.index("1")].proc
    victim.send_signal(signal.SIGKILL)  # no handler, no cleanup: only the kernel frees it
    assert victim.wait(timeout=WAIT) == -signal.SIGKILL
    held.append(claim_device(2, timeout=0))  # one try: the lock must be free already
    assert (held[0].position, held[0].key) == (1, "1")


def test_cuda_visible_devices_is_the_pool(lock_dir, monkeypatch, held):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "5,7")
    held += [claim_device(2, timeout=0), claim_device(2, timeout=0)]
    assert [(c.position, c.key, c.device) for c in held] == [(0, "5", "cuda:0"), (1, "7", "cuda:1")]
    with pytest.raises(TimeoutError):
        claim_device(2, timeout=0)
    assert sorted(p.name for p in lock_dir.iterdir()) == ["5.lock", "7.lock"]


def test_gpu_and_mig_uuids_are_keys_with_safe_file_names(lock_dir, monkeypatch, held):
    gpu = "GPU-8f6c2e1a-3b4d-4c5e-9f60-7a8b9c0d1e2f"
    mig = "MIG-GPU-8f6c2e1a-3b4d-4c5e-9f60-7a8b9c0d1e2f/1/0"  # the old MIG form has slashes
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", f"{gpu},{mig}")
    held += [claim_device(2, timeout=0), claim_device(2, timeout=0)]
    assert [(c.position, c.key) for c in held] == [(0, gpu), (1, mig)]
    assert held[1].path == lock_dir / (mig.replace("/", "_") + ".lock")
    assert held[1].path.exists()


@pytest.mark.parametrize("value", ["", "-1"])
def test_no_visible_gpu_is_a_clear_error(lock_dir, monkeypatch, value):
    # torch itself reports no CUDA then, so pick_device runs on the CPU; asked for a GPU
    # directly, the pool says why there is none instead of waiting for ever.
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", value)
    with pytest.raises(NoGpuVisible, match=f"CUDA_VISIBLE_DEVICES='{value}' hides every GPU"):
        claim_device(4, timeout=0)
    assert not lock_dir.exists()


def test_visible_list_follows_cuda_parsing():
    assert visible_devices(4, {"CUDA_VISIBLE_DEVICES": "0, 2,-1,3"}) == ["0", "2"]
    assert visible_devices(1, {"CUDA_VISIBLE_DEVICES": "5,7"}) == ["5"]  # 7 did not open
    assert visible_devices(3, {}) == ["0", "1", "2"]


def test_different_orderings_never_share_a_physical_gpu(lock_dir, monkeypatch, held):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")
    held.append(claim_device(2, timeout=0))
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1,0")
    held.append(claim_device(2, timeout=0))
    # Physical 0 is taken, so "1,0" gets physical 1 at its position 0, not position 1.
    assert [(c.position, c.key) for c in held] == [(0, "0"), (0, "1")]
    with pytest.raises(TimeoutError):
        claim_device(2, timeout=0)


def test_different_orderings_concurrently(lock_dir, spawn, tmp_path):
    go = tmp_path / "go"
    orders = ["0,1", "1,0", "0,1", "1,0"]
    children = [
        spawn(2, TEST_GO=str(go), TEST_TIMEOUT="0", CUDA_VISIBLE_DEVICES=order) for order in orders
    ]
    go.touch()
    claims = [child.claim() for child in children]
    won = [(order, c) for order, c in zip(orders, claims, strict=True) if c is not None]
    assert sorted(c["key"] for _, c in won) == ["0", "1"]  # two GPUs, two holders, no sharing
    assert all(order.split(",")[c["position"]] == c["key"] for order, c in won)


def test_slurm_gpu_allocation_is_its_own_pool(lock_dir, monkeypatch, held):
    # Two SLURM jobs on one node, each allocated one GPU; with cgroup device constraint
    # both see theirs as device 0.
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
    monkeypatch.setenv("SLURM_JOB_ID", "111")
    monkeypatch.setenv("SLURM_JOB_GPUS", "3")
    held.append(claim_device(1, timeout=0))
    monkeypatch.setenv("SLURM_JOB_ID", "222")
    monkeypatch.setenv("SLURM_JOB_GPUS", "5")
    held.append(claim_device(1, timeout=0))  # not kept waiting by job 111's GPU
    assert [(c.position, c.key) for c in held] == [
        (0, "slurm-111.batch-0"),
        (0, "slurm-222.batch-0"),
    ]
    # Jobs that Snakemake runs inside one allocation share its GPUs: there the pool still
    # keeps them apart.
    with pytest.raises(TimeoutError):
        claim_device(1, timeout=0)
    # A job step (srun) has its own cgroup, so its own device numbering and its own pool.
    monkeypatch.setenv("SLURM_STEP_ID", "0")
    held.append(claim_device(1, timeout=0))
    assert held[-1].key == "slurm-222.0-0"


def test_slurm_job_without_gpus_uses_the_machine_pool(lock_dir, monkeypatch):
    monkeypatch.setenv("SLURM_JOB_ID", "111")
    assert visible_devices(2) == ["0", "1"]


# --- a lock folder another user could have prepared ------------------------------------------

OTHER_UID = 54321  # no user of this machine: stands for another user's files


@pytest.fixture
def victim(tmp_path):
    """A file of this user's that a planted lock must not touch."""
    path = tmp_path / "victim.txt"
    path.write_text("precious\n")
    return path


def _refused(pattern: str) -> None:
    with pytest.raises(UnsafeLockDir, match=pattern) as err:
        claim_device(1, timeout=0)
    assert "\n" not in str(err.value)


def test_default_folder_is_this_users_alone(lock_dir, monkeypatch, tmp_path, held):
    monkeypatch.delenv(gpus.LOCK_DIR_ENV)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    held.append(claim_device(1, timeout=0))
    own = tmp_path / f"robustreg-gpu-locks-{os.getuid()}"
    assert held[0].path == own / "0.lock"
    assert stat.S_IMODE(own.stat().st_mode) == 0o700


def test_planted_symlink_lock_file_is_refused_untouched(lock_dir, victim):
    lock_dir.mkdir(mode=0o700)
    (lock_dir / "0.lock").symlink_to(victim)
    _refused(rf"^{re.escape(str(lock_dir / '0.lock'))}: the GPU lock file is a symbolic link")
    assert victim.read_text() == "precious\n"


def test_hard_linked_lock_file_is_locked_but_never_written(lock_dir, victim, held):
    lock_dir.mkdir(mode=0o700)
    os.link(victim, lock_dir / "0.lock")
    held.append(claim_device(1, timeout=0))
    assert victim.read_text() == "precious\n"


def test_fifo_lock_file_is_refused_without_waiting_for_a_writer(lock_dir):
    lock_dir.mkdir(mode=0o700)
    os.mkfifo(lock_dir / "0.lock")
    _refused("0.lock: the GPU lock file is not a regular file")


def test_symlinked_folder_is_refused_untouched(lock_dir, victim):
    elsewhere = victim.parent / "elsewhere"
    elsewhere.mkdir(mode=0o700)
    (elsewhere / "0.lock").symlink_to(victim)
    lock_dir.symlink_to(elsewhere)
    _refused(rf"^{re.escape(str(lock_dir))}: the GPU lock folder is a symbolic link")
    assert victim.read_text() == "precious\n"


@pytest.mark.parametrize(
    ("mode", "owner", "named", "says"),
    [
        (0o700, OTHER_UID, True, f"owned by uid {OTHER_UID}, not by this user"),
        (0o1777, None, True, "writable by every user (mode 1777)"),
        (0o777, OTHER_UID, True, "writable by every user (mode 777)"),
        (0o770, None, False, "group-writable (mode 770), and not named by ROBUSTREG_GPU_LOCK"),
        (0o2770, None, True, "group-writable but not sticky (mode 2770)"),
    ],
)
def test_folder_another_user_can_change_is_refused(
    lock_dir, monkeypatch, tmp_path, mode, owner, named, says
):
    if not named:
        monkeypatch.delenv(gpus.LOCK_DIR_ENV)
        monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
        lock_dir = tmp_path / f"robustreg-gpu-locks-{os.getuid()}"
    lock_dir.mkdir()
    lock_dir.chmod(mode)
    if owner is not None:
        os.chown(lock_dir, owner, -1)
    _refused(rf"^{re.escape(str(lock_dir))}: the GPU lock folder is {re.escape(says)}")
    assert list(lock_dir.iterdir()) == []


def test_group_folder_named_and_sticky_is_shared(lock_dir, held):
    """Two users of one workstation share its GPUs through a folder of their group: another
    member's lock file there is locked as it is, never written."""
    lock_dir.mkdir()
    lock_dir.chmod(0o3770)
    os.chown(lock_dir, OTHER_UID, -1)
    theirs = lock_dir / "0.lock"
    theirs.write_text("pid 1 on elsewhere\n")
    os.chown(theirs, OTHER_UID, -1)
    held.append(claim_device(2, timeout=0))
    assert held[0].key == "0" and theirs.read_text() == "pid 1 on elsewhere\n"
    held.append(claim_device(2, timeout=0))  # a new lock file is ours, and says who holds it
    assert (lock_dir / "1.lock").read_text().startswith(f"pid {os.getpid()} on ")


@pytest.fixture
def fake_cuda(monkeypatch):
    """torch believes in two GPUs; set_device calls are recorded; no process claim yet."""
    calls: list[int] = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "set_device", calls.append)
    monkeypatch.setattr(torch.cuda, "get_arch_list", lambda: [])  # no kernel check
    monkeypatch.setattr(gpus, "_PROCESS_CLAIM", None)
    yield calls
    if gpus._PROCESS_CLAIM is not None:
        gpus._PROCESS_CLAIM.release()


def test_cpu_runs_never_touch_the_pool(lock_dir, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(gpus, "_PROCESS_CLAIM", None)
    assert pick_device("cpu") == torch.device("cpu")
    assert pick_device(None) == torch.device("cpu")
    assert not lock_dir.exists()


def test_explicit_gpu_index_bypasses_the_pool(lock_dir, fake_cuda):
    assert pick_device("cuda:1") == torch.device("cuda", 1)
    assert not lock_dir.exists()
    assert fake_cuda == []


def test_pick_device_claims_one_gpu_per_process(lock_dir, fake_cuda, held, capsys):
    held.append(claim_device(2, timeout=0))  # another job holds GPU 0
    assert pick_device(None) == torch.device("cuda", 1)
    assert fake_cuda == [1]
    assert "claimed GPU 1 as cuda:1" in capsys.readouterr().err
    # Asked again (train() without a device, or plain "cuda"): the same GPU, not another.
    assert pick_device("cuda") == torch.device("cuda", 1)
    assert (lock_dir / "1.lock").read_text().startswith(f"pid {os.getpid()} on ")
