"""A trained model's file, ``model.pt``, which every stage after training reads: written
atomically, loaded with its experiment config, checked before it is trusted.

The file is a dict: ``format`` (``MODEL_FORMAT``), ``arch``, ``num_classes``, the experiment
``config`` (JSON), the ``state_dict`` (CPU tensors), ``train_seconds`` and ``device`` (see
``training_record``), and, for an early-stopped model, ``selected_epoch``.
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import torch
from torch import nn

from robustreg.integrity import first_line, set_aside_note
from robustreg.io import atomic_path
from robustreg.models import create_model

__all__ = [
    "MODEL_FORMAT",
    "MODEL_KEYS",
    "atomic_save",
    "load_model",
    "read_model_file",
    "training_record",
]

MODEL_FORMAT = "robustreg-model/1"
# what a model.pt holds beside its format, and a final checkpoint's copy of it
MODEL_KEYS = ("arch", "num_classes", "config", "state_dict", "train_seconds", "device")


def atomic_save(obj, path: str | Path) -> None:
    """``torch.save`` to ``path`` atomically. Through a file object: torch names the archive
    inside after a path's file name, the temporary one's here, so that the same ``obj``
    would give other bytes each time (and another ``model_sha256``, see
    ``robustreg.cli``)."""
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        torch.save(obj, fh)


def training_record(path: str | Path) -> dict:
    """What a trained model's ``model.pt`` says of its training: ``train_seconds`` (float,
    the sum of the history's per-epoch ``seconds``), ``device`` (str, ``device_name``) and
    ``epochs`` (int, the schedule's). One-line ValueError for a file that is no model or
    was written before training time was recorded.

    Memory-maps the file, so the weights are not read.
    """
    ckpt = read_model_file(path, mmap=True, set_aside=False)
    missing = next((k for k in ("train_seconds", "device") if k not in ckpt), None)
    if missing is not None:
        raise ValueError(f"{path}: no {missing} (written before training time was recorded)")
    return {
        "train_seconds": float(ckpt["train_seconds"]),
        "device": str(ckpt["device"]),
        "epochs": int(json.loads(ckpt["config"])["schedule"]["epochs"]),
    }


def load_model(path: str | Path, device: torch.device) -> tuple[nn.Module, dict]:
    """A trained model in eval mode and its experiment config; a clear error for anything else."""
    ckpt = read_model_file(path)
    model = create_model(ckpt["arch"], ckpt["num_classes"])
    try:
        model.load_state_dict(ckpt["state_dict"])
    except RuntimeError as err:
        raise ValueError(f"{path}: weights do not fit architecture {ckpt['arch']!r}") from err
    if not all(_finite(v) for v in ckpt["state_dict"].values()):
        raise ValueError(f"{path}: checkpoint holds non-finite weights")
    return model.to(device).eval(), json.loads(ckpt["config"])


def read_model_file(path: str | Path, mmap: bool = False, set_aside: bool = True) -> dict:
    """The dict of a ``model.pt`` (CPU tensors); a one-line ValueError for anything else.

    A file that torch cannot read is set aside (``robustreg.integrity``), so that the next
    run of the workflow trains it again, in seconds from the experiment's final checkpoint;
    a readable one of another format is left alone (it is not ours to move). ``set_aside``
    False leaves it in place too: a table reading a path a cells file names may be pointed at
    any file, which is never its to rename.
    """
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except FileNotFoundError:
        raise ValueError(f"{path}: model file does not exist") from None
    except Exception as err:  # torch raises many types for corrupt files, OSError among them
        # an unpickler's message quotes the file's bytes; name the kind of fault only
        why = "not a torch file" if isinstance(err, pickle.UnpicklingError) else first_line(err)
        note = f"; {set_aside_note(path)}" if set_aside else ""
        raise ValueError(
            f"{path}: not a readable robustreg model checkpoint ({why}){note}"
        ) from err
    if not isinstance(ckpt, dict) or ckpt.get("format") != MODEL_FORMAT:
        raise ValueError(
            f"{path}: not a robustreg model checkpoint (expected format {MODEL_FORMAT})"
        )
    return ckpt


def _finite(tensor: torch.Tensor) -> bool:
    return not tensor.is_floating_point() or bool(torch.isfinite(tensor).all())
