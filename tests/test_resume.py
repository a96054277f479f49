"""Killed, preempted, resumed: training and certification pick up where a killed run stopped.

The library tests interrupt a run from its per-group callback; the subprocess tests SIGKILL a
real ``python -m robustreg`` part-way and run the same command again, which must give the
results of an uninterrupted run.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import killed_after_first_append, same_weights

from robustreg.cli import main
from robustreg.data import save_split
from robustreg.io import Expected
from robustreg.model_files import MODEL_FORMAT
from robustreg.models import create_model
from robustreg.smoothing import ProgressLog, certify_counts

K = 10
IDENTITY = {"model_sha256": "ab12", "sigma": 0.5, "n0": 20, "n": 130, "batch_size": 64}
ARRAYS = ("idx", "label", "counts0", "counts")


@pytest.fixture(autouse=True)
def one_thread():
    """One torch thread, as the ``--threads 1`` runs here use, so that this process and the
    runs it starts do not crowd each other's cores; restored after (``main`` changes it too)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


class Interrupted(Exception):
    pass


def _lenet(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return create_model("lenet_mnist", K)


def _images(num: int) -> torch.Tensor:
    return torch.rand((num, 1, 28, 28), generator=torch.Generator().manual_seed(0))


def _certify(images, **kwargs) -> dict[str, np.ndarray]:
    num = images.shape[0]
    return certify_counts(
        _lenet(), images, np.arange(num) % K, sigma=0.5, n0=20, n=130, batch_size=64, seed=3,
        device="cpu", num_classes=K, progress=False, images_per_batch=2,
        indices=3 * np.arange(num), **kwargs,
    )  # fmt: skip


def _interrupted(images, path: Path, after: int) -> None:
    """A run that records its progress in ``path`` and is stopped once ``after`` images are."""
    written = []

    def stop_after(group):
        log.append(group)
        written.extend(group["idx"])
        if len(written) >= after:
            raise Interrupted

    with ProgressLog(path, IDENTITY) as log, pytest.raises(Interrupted):
        _certify(images, done=log.resume(), on_group=stop_after)


def _resumed(images, path: Path) -> tuple[dict[str, np.ndarray], list[list[int]]]:
    """The run again from ``path``; its results and the indices of the groups it sampled."""
    sampled = []

    def record(group):
        sampled.append(group["idx"].tolist())
        log.append(group)

    with ProgressLog(path, IDENTITY) as log:
        return _certify(images, done=log.resume(), on_group=record), sampled


def _records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()[1:]]


def _assert_same_counts(a: dict, b: dict) -> None:
    for key in ARRAYS:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)


# --- library: certify_counts(done=..., on_group=...) and ProgressLog -----------------------------


def test_interrupted_certification_resumes_after_its_last_complete_image(tmp_path):
    images, path = _images(7), tmp_path / "partial.jsonl"
    full = _certify(images)
    assert (full["counts"] > 0).sum() > 7  # the noise moves the model's prediction

    _interrupted(images, path, after=4)
    before = _records(path)
    assert [r["idx"] for r in before] == [0, 3, 6, 9]
    resumed, sampled = _resumed(images, path)

    assert sampled == [[12, 15], [18]]  # groups of 2 as in the uninterrupted run
    _assert_same_counts(resumed, full)
    np.testing.assert_array_equal(resumed["seconds"][:4], [r["seconds"] for r in before])
    assert [r["idx"] for r in _records(path)] == full["idx"].tolist()


def test_a_partly_recorded_group_is_sampled_again(tmp_path):
    # Packing is fixed by position, so a resumed run repeats the uninterrupted run's forward
    # passes exactly: a group that was only partly written is redone as a whole.
    images, path = _images(7), tmp_path / "partial.jsonl"
    full = _certify(images)
    _interrupted(images, path, after=4)
    lines = path.read_text().splitlines(keepends=True)
    path.write_text("".join(lines[:4]))  # header and images 0, 3, 6: the group (6, 9) is torn
    resumed, sampled = _resumed(images, path)
    assert sampled == [[6, 9], [12, 15], [18]]
    _assert_same_counts(resumed, full)


def test_resuming_at_any_image_gives_its_counts_whatever_the_packing():
    # The claim that makes resuming sound: an image's counts depend only on (seed, index,
    # batch_size), even when the groups of a resumed run start at another image.
    images = _images(7)
    full = _certify(images)
    for start in (1, 3, 4):
        tail = certify_counts(
            _lenet(), images[start:], (np.arange(7) % K)[start:], sigma=0.5, n0=20, n=130,
            batch_size=64, seed=3, device="cpu", num_classes=K, progress=False,
            images_per_batch=3, indices=3 * np.arange(start, 7),
        )  # fmt: skip
        for key in ARRAYS:
            np.testing.assert_array_equal(tail[key], full[key][start:], err_msg=key)


def test_a_torn_last_line_is_dropped(tmp_path, capsys):
    images, path = _images(7), tmp_path / "partial.jsonl"
    full = _certify(images)
    _interrupted(images, path, after=4)
    complete = path.read_text()
    fifth = json.dumps({"idx": 12, "label": 4, "counts0": [20] + [0] * 9, "counts": [130] * 10})
    path.write_text(complete + fifth[: len(fifth) // 2])  # killed in the middle of a write

    resumed, sampled = _resumed(images, path)
    assert "dropped its incomplete last line" in capsys.readouterr().err
    assert sampled == [[12, 15], [18]]
    _assert_same_counts(resumed, full)
    assert path.read_text().startswith(complete)  # the fragment is gone, not glued to a line
    assert len(_records(path)) == 7


def test_an_unreadable_line_and_all_after_it_are_sampled_again(tmp_path, capsys):
    images, path = _images(7), tmp_path / "partial.jsonl"
    full = _certify(images)
    _interrupted(images, path, after=4)
    lines = path.read_text().splitlines(keepends=True)
    lines[3] = '{"idx": 6, "label": "six"}\n'
    path.write_text("".join(lines))
    resumed, sampled = _resumed(images, path)
    assert "line 4 is unreadable" in capsys.readouterr().err
    assert sampled == [[6, 9], [12, 15], [18]]
    _assert_same_counts(resumed, full)


@pytest.mark.parametrize(
    ("header", "message"),
    [
        (
            json.dumps({"identity": {"format": ProgressLog.FORMAT, **IDENTITY, "sigma": 0.25}}),
            "different run (sigma differ)",
        ),
        ('{"identity": {"model_sha256": "ab1', "no readable header"),
        ("", "no readable header"),
    ],
    ids=["other-sigma", "torn-header", "empty-header"],
)
def test_a_progress_file_of_another_run_is_discarded(tmp_path, capsys, header, message):
    images, path = _images(4), tmp_path / "partial.jsonl"
    full = _certify(images)
    record = {"idx": 0, "label": 0, "counts0": [20] + [0] * 9, "counts": [130] + [0] * 9}
    path.write_text(f"{header}\n{json.dumps(record | {'seconds': 1.0})}\n")

    resumed, sampled = _resumed(images, path)
    err = capsys.readouterr().err
    assert "discarded" in err and message in err
    assert sampled == [[0, 3], [6, 9]]  # nothing of the foreign file was used
    _assert_same_counts(resumed, full)
    assert json.loads(path.read_text().splitlines()[0])["identity"]["sigma"] == 0.5


def test_records_that_do_not_fit_the_job_are_discarded_alone(tmp_path, capsys):
    # Forged or foreign records, each with a well-formed line: a bad one is discarded on its
    # own (one stderr line per reason, naming lines, not contents) and the lines after it kept.
    images, path = _images(7), tmp_path / "partial.jsonl"
    full = _certify(images)
    _interrupted(images, path, after=4)
    lines = path.read_text().splitlines(keepends=True)
    records = [json.loads(line) for line in lines[1:]]
    assert [r["idx"] for r in records] == [0, 3, 6, 9]
    # image 3 claims 10x the samples drawn: all in its top class, an impossible radius
    records[1]["counts"] = [0] * K
    records[1]["counts"][records[1]["label"]] = 1300
    extra = [
        {**records[0], "idx": 1000},  # not an image of the selection
        {**records[3], "idx": 12, "label": (4 + 1) % K},  # image 12 has label 4
        {**records[3], "idx": 15, "counts0": [20] + [0] * 8, "counts": [130] + [0] * 8},
        # image 18 as the full run sampled it: its group (18 alone) is not sampled again
        {"idx": 18, "label": 6, "counts0": full["counts0"][6].tolist(),
         "counts": full["counts"][6].tolist(), "seconds": 0.5},
    ]  # fmt: skip
    path.write_text(lines[0] + "".join(json.dumps(r) + "\n" for r in records + extra))
    expected = Expected.images(
        3 * np.arange(7), np.arange(7) % K, K, {"counts0": 20, "counts": 130}
    )

    sampled = []

    def record(group):
        sampled.append(group["idx"].tolist())
        log.append(group)

    with ProgressLog(path, IDENTITY) as log:
        resumed = _certify(images, done=log.resume(expected), on_group=record)
    err = capsys.readouterr().err.splitlines()
    assert err[:4] == [
        f"{path}: line 3 does not fit this job (counts not summing to the 130 samples drawn); "
        "discarded",
        f"{path}: line 6 does not fit this job (image outside its selection); discarded",
        f"{path}: line 7 does not fit this job (label other than the selected image's); discarded",
        f"{path}: line 8 is unreadable (every image must have the same number of classes); "
        "discarded",
    ]
    assert f"{path}: resuming after 4 images sampled before" in err
    assert sampled == [[0, 3], [12, 15]]
    _assert_same_counts(resumed, full)


def test_progress_lines_with_one_fault_are_named_in_one_message(tmp_path, capsys):
    path = tmp_path / "partial.jsonl"
    with ProgressLog(path, IDENTITY) as log:
        log.resume()
    header = path.read_text()
    good = {"idx": 0, "label": 0, "counts0": [20] + [0] * 9, "counts": [130] + [0] * 9}
    nine = json.dumps(good | {"counts0": [20] + [0] * 8, "counts": [130] + [0] * 8, "seconds": 1})
    outside = [json.dumps(good | {"idx": 100 + i, "seconds": 1.0}) for i in range(7)]
    path.write_text(header + "\n".join([nine, *outside, "not json", "{}"]) + "\n")
    with ProgressLog(path, IDENTITY) as log:
        assert log.resume(Expected.images([0], [0], K)) is None
    assert capsys.readouterr().err.splitlines() == [
        f"{path}: line 2 does not fit this job (not the model's 10 classes); discarded",
        f"{path}: lines 3, 4, 5, 6, 7 and 2 more do not fit this job (image outside its "
        "selection); discarded",
        f"{path}: line 10 is unreadable (not a JSON line); discarded",
        f"{path}: line 11 is unreadable (not an image record); discarded",
    ]
    assert path.read_text() == header  # the file restarts from what was kept


# --- the certify command -------------------------------------------------------------------------


def _save_model(path: Path, seed: int) -> Path:
    state = {k: v.clone() for k, v in _lenet(seed).state_dict().items()}
    torch.save(
        {"format": MODEL_FORMAT, "arch": "lenet_mnist", "num_classes": K,
         "config": json.dumps({"num_classes": K}), "state_dict": state},
        path,
    )  # fmt: skip
    return path


def _test_split(path: Path, num: int) -> Path:
    rng = np.random.default_rng(1)
    x = rng.integers(0, 256, size=(num, 1, 28, 28), dtype=np.uint8)
    save_split(path, x, (np.arange(num) % K).astype(np.int64))
    return path


def _certify_args(model: Path, data: Path, out: Path, *extra: str) -> list[str]:
    return [
        "certify", "--model", str(model), "--data", str(data), "--out-dir", str(out),
        "--sigma", "0.5", "--threads", "1", "--no-progress", *extra,
    ]  # fmt: skip


def test_cli_resumes_with_another_alpha_and_discards_progress_of_another_model(tmp_path, capsys):
    model, data = _save_model(tmp_path / "model.pt", 0), _test_split(tmp_path / "test.npz", 8)
    out = tmp_path / "c"
    args = _certify_args(model, data, out, "--n0", "20", "--n", "100", "--batch-size", "40")
    with killed_after_first_append(ProgressLog):
        main(args)
    assert len(_records(out / "partial.jsonl")) == 2  # groups of 40 // (100 % 40) = 2 images
    assert not (out / "counts.npz").exists()

    # alpha does not change any count: the recorded images are kept
    assert main([*args, "--alpha", "0.01"]) == 0
    assert "resuming after 2 images" in capsys.readouterr().err
    assert not (out / "partial.jsonl").exists()
    with np.load(out / "counts.npz") as f:
        assert f["idx"].tolist() == list(range(8))

    # another model in the same file: the progress of the first is not mixed in
    with killed_after_first_append(ProgressLog):
        main(args)
    _save_model(model, 1)
    capsys.readouterr()
    assert main(args) == 0
    err = capsys.readouterr().err
    assert "discarded, it is from a different run (model_sha256 differ)" in err
    assert "resuming" not in err


def test_cli_precision_is_part_of_the_certification_identity(tmp_path, capsys):
    model, data = _save_model(tmp_path / "model.pt", 0), _test_split(tmp_path / "test.npz", 8)
    out = tmp_path / "c"
    args = _certify_args(model, data, out, "--n0", "20", "--n", "100", "--batch-size", "40")
    with killed_after_first_append(ProgressLog):
        main(args)
    capsys.readouterr()
    # bf16 evaluates another classifier: fp32's sampled images are not reused
    assert main([*args, "--precision", "bf16"]) == 0
    err = capsys.readouterr().err
    assert "discarded, it is from a different run (precision differ)" in err
    with np.load(out / "counts.npz") as f:
        assert str(f["precision"]) == "bf16"
    assert main([*args, "--precision", "fp16"]) == 2
    assert "argument --precision: invalid choice: 'fp16'" in capsys.readouterr().err


def test_cli_certifies_no_radius_from_a_forged_progress_record(tmp_path, capsys):
    model, data = _save_model(tmp_path / "model.pt", 0), _test_split(tmp_path / "test.npz", 8)
    args = _certify_args(model, data, tmp_path / "c", "--n0", "20", "--n", "100")
    full = tmp_path / "full"
    assert main(_certify_args(model, data, full, "--n0", "20", "--n", "100")) == 0
    with killed_after_first_append(ProgressLog):
        main(args)
    partial = tmp_path / "c" / "partial.jsonl"
    header, first, *rest = partial.read_text().splitlines(keepends=True)
    forged = json.loads(first)
    forged["counts"] = [0] * K
    forged["counts"][forged["label"]] = 10**6  # "a million draws, all right": radius ~ 2.2
    partial.write_text(header + json.dumps(forged) + "\n" + "".join(rest))
    capsys.readouterr()

    assert main(args) == 0
    assert "(counts not summing to the 100 samples drawn); discarded" in capsys.readouterr().err

    def without_time(path: Path) -> list[str]:
        return [line.rsplit("\t", 1)[0] for line in path.read_text().splitlines()]

    assert without_time(tmp_path / "c" / "certify.tsv") == without_time(full / "certify.tsv")


# --- SIGKILL of a real process -------------------------------------------------------------------


def _start(args: list[str], log: Path) -> subprocess.Popen:
    with open(log, "wb") as fh:
        return subprocess.Popen(
            [sys.executable, "-m", "robustreg", *args], stdout=fh, stderr=subprocess.STDOUT
        )


def _finish(proc: subprocess.Popen, log: Path, timeout: float = 120) -> None:
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        pytest.fail(f"{proc.args} still running after {timeout} s:\n{log.read_text()}")
    assert proc.returncode == 0, f"{proc.args} failed:\n{log.read_text()}"


def _wait_until(condition, proc: subprocess.Popen, log: Path, what: str, timeout: float = 60):
    deadline = time.monotonic() + timeout
    while not condition():
        if proc.poll() is not None:
            pytest.fail(f"the run ended before {what}:\n{log.read_text()}")
        if time.monotonic() > deadline:
            proc.kill()
            proc.wait()
            pytest.fail(f"no {what} within {timeout} s:\n{log.read_text()}")
        time.sleep(0.01)


def _sigkill(proc: subprocess.Popen, log: Path, what: str) -> None:
    if proc.poll() is not None:
        pytest.fail(f"the run finished before it could be killed {what}; make it longer")
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL


def _training_config(epochs: int) -> dict:
    return {
        "data": {"dataset": "synthetic", "train_limit": None},
        "arch": "lenet_mnist",
        "num_classes": K,
        "method": "gaussian",
        "params": {},
        "sigma": 0.25,
        "schedule": {
            "epochs": epochs,
            "batch_size": 32,
            "lr": 0.01,
            "momentum": 0.9,
            "nesterov": True,
            "weight_decay": 1e-4,
            "lr_milestones": [2],
            "lr_gamma": 0.1,
        },
        "seed": 0,
    }


def test_training_killed_by_sigkill_mid_epoch_resumes_to_the_same_model(tmp_path):
    # 480 MNIST-shaped images: an epoch takes about 0.4 s on one thread; the kill comes half
    # an epoch after the first checkpoint, with 2.5 epochs left to do.
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, size=(480, 1, 28, 28), dtype=np.uint8)
    split = tmp_path / "train.npz"
    save_split(split, x, (np.arange(480) % K).astype(np.int64))
    config = json.dumps(_training_config(epochs=4))

    def args(out):
        return ["train", "--config-json", config, "--data", str(split), "--out-dir", str(out),
                "--threads", "1", "--no-progress"]  # fmt: skip

    full, killed = tmp_path / "full", tmp_path / "killed"
    uninterrupted, proc = _start(args(full), tmp_path / "full.log"), None
    try:
        proc = _start(args(killed), tmp_path / "killed.log")
        ckpt_path = killed / "checkpoint.pt"
        _wait_until(ckpt_path.exists, proc, tmp_path / "killed.log", "first checkpoint")
        first = json.loads(torch.load(ckpt_path, weights_only=True)["history"])
        time.sleep(first[0]["seconds"] / 2)  # into the next epoch
        _sigkill(proc, tmp_path / "killed.log", "mid-training")
        # a kill between the two renames of a checkpoint write leaves only the previous one
        if not ckpt_path.exists():
            ckpt_path = killed / "checkpoint.prev.pt"
        ckpt = torch.load(ckpt_path, weights_only=True)
        assert ckpt["epoch"] < 3 and not (killed / "model.pt").exists()

        again = _start(args(killed), tmp_path / "again.log")
        _finish(again, tmp_path / "again.log")
        _finish(uninterrupted, tmp_path / "full.log")
    finally:
        for p in (uninterrupted, proc):
            if p is not None and p.poll() is None:
                p.kill()
                p.wait()

    assert same_weights(full / "model.pt", killed / "model.pt")
    assert not (killed / "checkpoint.pt").exists()
    history = pd.read_csv(killed / "history.csv")
    expected = pd.read_csv(full / "history.csv")
    assert len(history) == 4
    pd.testing.assert_frame_equal(history.drop(columns="seconds"), expected.drop(columns="seconds"))
    # the epochs done before the kill were not trained again: their timings are the killed run's
    killed_history = json.loads(ckpt["history"])
    assert history["seconds"][: len(killed_history)].tolist() == pytest.approx(
        [row["seconds"] for row in killed_history], rel=1e-12
    )


def test_certification_killed_by_sigkill_resumes_to_the_same_counts(tmp_path):
    # 16 images (every second of 32), 1100 samples each in batches of 100: about 0.15 s per
    # image on one thread, two images per group. The kill comes once one group is recorded.
    model, data = _save_model(tmp_path / "model.pt", 0), _test_split(tmp_path / "test.npz", 32)
    extra = ("--n0", "50", "--n", "1050", "--batch-size", "100", "--skip", "2")
    full, killed = tmp_path / "full", tmp_path / "killed"
    partial = killed / "partial.jsonl"

    def recorded() -> list[dict]:
        lines = partial.read_bytes().split(b"\n")[1:-1] if partial.exists() else []
        return [json.loads(line) for line in lines]

    proc = _start(_certify_args(model, data, killed, *extra), tmp_path / "killed.log")
    try:
        _wait_until(lambda: recorded(), proc, tmp_path / "killed.log", "recorded image")
        _sigkill(proc, tmp_path / "killed.log", "mid-certification")
        before = recorded()
        assert 1 <= len(before) < 16 and not (killed / "counts.npz").exists()

        proc = _start(_certify_args(model, data, killed, *extra), tmp_path / "again.log")
        # meanwhile the uninterrupted run, in this process (no second start-up of torch)
        assert main(_certify_args(model, data, full, *extra)) == 0
        _finish(proc, tmp_path / "again.log")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()

    assert f"resuming after {len(before)} images" in (tmp_path / "again.log").read_text()
    assert not partial.exists()
    with np.load(full / "counts.npz") as a, np.load(killed / "counts.npz") as b:
        assert b["idx"].tolist() == list(range(0, 32, 2))
        _assert_same_counts(a, b)
        assert (a["counts"] > 0).sum() > 16  # the noise moves the model's prediction
        # the images recorded before the kill were not sampled again
        assert b["seconds"][: len(before)].tolist() == [r["seconds"] for r in before]

    def without_time(path: Path) -> list[str]:
        return [line.rsplit("\t", 1)[0] for line in path.read_text().splitlines()]

    assert without_time(killed / "certify.tsv") == without_time(full / "certify.tsv")
