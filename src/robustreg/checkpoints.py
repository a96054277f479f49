"""A training's checkpoints: what it resumes from, and what a finished one is kept as.

``checkpoint.pt`` is the last epoch's state, resumed from; ``checkpoint.prev.pt`` the epoch's
before, resumed from when the last is found corrupt (a corrupt checkpoint is set aside, see
``robustreg.integrity``, never deleted). A finished training replaces both by
``checkpoint.final.pt``, which ``model.pt`` and ``history.csv`` are written from
(``write_results``). ``robustreg.train`` says why each file exists; this module reads,
judges and writes them. A checkpoint is used only by a run of its config and training data
(``run``: the config's JSON and the split file's SHA-256); one of another run is passed over.
"""

from __future__ import annotations

import csv
import json
import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist

from robustreg.integrity import first_line, set_aside
from robustreg.io import atomic_path
from robustreg.model_files import MODEL_FORMAT, MODEL_KEYS, atomic_save

__all__ = [
    "CHECKPOINT",
    "FINAL_CHECKPOINT",
    "PREVIOUS_CHECKPOINT",
    "load_checkpoint",
    "resume_keys",
    "save_checkpoint",
    "save_final",
    "write_results",
]

CHECKPOINT = "checkpoint.pt"
PREVIOUS_CHECKPOINT = "checkpoint.prev.pt"
FINAL_CHECKPOINT = "checkpoint.final.pt"


def resume_keys(world: int, early_stop: bool, keeps_state: bool) -> tuple[str, ...]:
    """The keys a checkpoint needs for this run to resume from it."""
    keys = ["epoch", "history", "model", "optimizer", "scheduler", "shuffle_rng"]
    keys += ["rank_rng"] if world > 1 else ["torch_rng", "cuda_rng"]
    keys += ["best"] if early_stop else []
    keys += ["objective_state"] if keeps_state else []
    return tuple(keys)


def load_checkpoint(
    out_dir: Path, run: dict, resume_keys: tuple[str, ...], rank: int, world: int
) -> tuple[str | None, dict | None]:
    """Where this run starts: ``(FINAL_CHECKPOINT, final)`` when it finished before, else
    ``(name, checkpoint)`` of the newest checkpoint to resume from, else ``(None, None)``.

    A file of another run (``run``'s config or training data differ) is passed over, and
    this run's checkpoints replace it; a corrupt one (unreadable, not a dict, without a key
    it needs) is set aside. Each says so in a line on stderr.

    Rank 0 alone reads and judges the files, and tells the other ranks which it chose;
    they load it themselves (but not a final one: they have nothing to do then). Ranks
    judging for themselves could disagree: one might find gone a file the other has just
    set aside.
    """
    name, ckpt = None, None
    if rank == 0:
        passed_over = False
        for candidate in (FINAL_CHECKPOINT, CHECKPOINT, PREVIOUS_CHECKPOINT):
            path = out_dir / candidate
            passed_over |= path.exists()
            ckpt = _usable_checkpoint(path, run, resume_keys)
            if ckpt is not None:
                name = candidate
                break
        epochs = json.loads(run["config"])["schedule"]["epochs"]
        if name in (CHECKPOINT, PREVIOUS_CHECKPOINT):
            print(
                f"{out_dir}: resuming from {name} after epoch {ckpt['epoch'] + 1} of {epochs}",
                file=sys.stderr,
            )
        elif name is None and passed_over:
            print(f"{out_dir}: no usable checkpoint, training from scratch", file=sys.stderr)
    if world > 1:
        chosen = [name]
        dist.broadcast_object_list(chosen, src=0)
        name = chosen[0]
        if rank > 0 and name not in (None, FINAL_CHECKPOINT):
            # On the CPU, as rank 0 read it: see _usable_checkpoint.
            ckpt = torch.load(out_dir / name, map_location="cpu", weights_only=True)
    return name, ckpt


def _usable_checkpoint(path: Path, run: dict, resume_keys: tuple[str, ...]) -> dict | None:
    """The checkpoint at ``path`` if this run can go on from it; None if there is none, if
    it is another run's (said on stderr), or if it is corrupt (set aside, said on stderr).

    Read onto the CPU: RNG states must be CPU tensors, and load_state_dict moves the
    weights and the optimizer's state to the model's device.
    """
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        return None
    except Exception as err:  # torch raises many types for a corrupt file, OSError among them
        return _set_checkpoint_aside(path, first_line(err))
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("config"), str):
        return _set_checkpoint_aside(path, "not a checkpoint of a robustreg training")
    # A missing data_sha256 passes: checkpoints written before it was recorded resume as
    # they did then.
    differ = [key for key, value in run.items() if ckpt.get(key, value) != value]
    if differ:
        print(
            f"{path}: of another run ({' and '.join(differ)} differ), not resumed; this "
            "run's checkpoints replace it",
            file=sys.stderr,
        )
        return None
    if path.name == FINAL_CHECKPOINT:
        problem = _final_problem(ckpt)
    else:
        problem = _resume_problem(ckpt, resume_keys)
    return ckpt if problem is None else _set_checkpoint_aside(path, problem)


def _resume_problem(ckpt: dict, keys: tuple[str, ...]) -> str | None:
    """Why this run cannot resume from ``ckpt``, a checkpoint of its config, if it cannot."""
    missing = [key for key in keys if key not in ckpt]
    if missing:
        return f"no {', '.join(missing)}"
    if not isinstance(ckpt["epoch"], int):
        return "no epoch number"
    return _history_problem(ckpt["history"], ckpt["epoch"] + 1)


def _final_problem(final: dict) -> str | None:
    """Why ``model.pt`` and ``history.csv`` cannot be written from ``final``, a final
    checkpoint of this run's config, if they cannot."""
    record = final.get("model_file")
    if not isinstance(record, dict) or record.get("format") != MODEL_FORMAT:
        return "no model file record"
    missing = [key for key in MODEL_KEYS if key not in record]
    if missing:
        return f"its model file record has no {', '.join(missing)}"
    if record["config"] != final["config"]:
        return "its model file record is of another config"
    epochs = json.loads(final["config"])["schedule"]["epochs"]
    return _history_problem(final.get("history"), epochs)


def _history_problem(history, epochs: int) -> str | None:
    """Why ``history`` is not the JSON history of ``epochs`` epochs, if it is not."""
    try:
        rows = json.loads(history)
    except (TypeError, ValueError):
        return "unreadable history"
    if not isinstance(rows, list) or len(rows) != epochs:
        return f"its history is not of the {epochs} epochs it should hold"
    return None


def _set_checkpoint_aside(path: Path, reason: str) -> None:
    """Set the corrupt checkpoint ``path`` aside and say so on stderr; None: nothing to use."""
    moved = set_aside(path)
    where = f"set aside as {moved.name}" if moved else "already gone"
    print(f"{path}: corrupt checkpoint ({reason}); {where}", file=sys.stderr)


def save_checkpoint(checkpoint: dict, out_dir: Path) -> None:
    """Write this epoch's checkpoint atomically, keeping the one it replaces as the
    previous: the one resumed from if the newer is found corrupt. A run killed between the
    two renames leaves the previous alone, which is resumed from too."""
    path = out_dir / CHECKPOINT
    if path.exists():
        os.replace(path, out_dir / PREVIOUS_CHECKPOINT)
    atomic_save(checkpoint, path)


def write_results(out_dir: Path, final: dict) -> None:
    """``model.pt`` and ``history.csv`` from a final checkpoint, which makes the resumable
    ones of no further use. The same files whenever they are written from the same final."""
    rows = json.loads(final["history"])
    # csv, not pandas: the same bytes as DataFrame.to_csv for these rows (every epoch has the
    # same keys), without pandas' import in every training job.
    with (
        atomic_path(out_dir / "history.csv") as tmp,
        open(tmp, "w", newline="", encoding="utf-8") as fh,
    ):
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    atomic_save(final["model_file"], out_dir / "model.pt")
    for name in (CHECKPOINT, PREVIOUS_CHECKPOINT):
        (out_dir / name).unlink(missing_ok=True)


def save_final(out_dir: Path, final: dict) -> None:
    """Keep a finished training as its final checkpoint, then write ``model.pt`` and
    ``history.csv`` from it."""
    atomic_save(final, out_dir / FINAL_CHECKPOINT)
    write_results(out_dir, final)
