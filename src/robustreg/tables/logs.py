"""The table stage's readers: every per-image log a table or figure reads, one reader per kind,
each log checked against what its job was asked to evaluate.

A job writes beside its log which images it evaluated: a certify job's ``counts.npz`` (the
``idx`` of every image it sampled) beside its certify.tsv and the tcertify.tsv made from it,
an attack job's ``attack.json`` (``idx``; files written before that key was added have only
``images``, their number) beside outcomes.tsv, a bounds job's ``bounds.json`` (``idx``, and
``images``) beside bounds.tsv. A log cut at a line end (a copy stopped part-way, a full disk)
still parses and would give a table of other numbers under a banner that names the full
count, so a log whose images are not its job's is refused, naming the file. A log with no
such file beside it was made elsewhere (say by Cohen et al.'s code, for a cells file a user
wrote): it is read as it is.
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd

from robustreg.certify import read_certify_log

__all__ = ["check_images", "read_attack_outcomes", "read_bound_files", "read_certification"]


def check_images(path: Path, idx: np.ndarray, evaluated: np.ndarray | int, sidecar: str) -> None:
    """Refuse ``path``, a log of the images ``idx``, unless they are the images its job
    evaluated: ``evaluated``, their dataset positions (in any order) or only their number, as
    the job wrote them to ``sidecar`` (a file name) beside the log."""
    idx = np.asarray(idx)
    count = evaluated if isinstance(evaluated, int) else len(evaluated)
    if len(idx) != count:
        raise ValueError(
            f"{path}: holds {len(idx)} images but its job evaluated {count} ({sidecar}); "
            "rerun that job"
        )
    if not isinstance(evaluated, int) and not np.array_equal(np.sort(idx), np.sort(evaluated)):
        raise ValueError(
            f"{path}: holds other images than the {count} its job evaluated ({sidecar}); "
            "rerun that job"
        )


def _positions(value: object) -> np.ndarray | None:
    """A list of dataset positions (non-negative integers) as an array; None if it is not."""
    if not isinstance(value, list) or not all(type(v) is int and v >= 0 for v in value):
        return None
    return np.asarray(value, dtype=np.int64)


def read_certification(path: Path) -> pd.DataFrame:
    """A certification log (``read_certify_log``): CERTIFY's certify.tsv or T-CERTIFY's
    tcertify.tsv, checked against the counts.npz of the certify job beside it, if any."""
    frame = read_certify_log(path)
    sidecar = path.parent / "counts.npz"
    if sidecar.exists():
        try:
            with np.load(sidecar) as counts:
                evaluated = counts["idx"]
        except (OSError, EOFError, KeyError, ValueError, zipfile.BadZipFile):
            raise ValueError(
                f"{sidecar}: not the counts.npz of a certify run (no readable idx); rerun that job"
            ) from None
        if evaluated.ndim != 1 or not np.issubdtype(evaluated.dtype, np.integer):
            raise ValueError(f"{sidecar}: idx is not a list of image positions; rerun that job")
        check_images(path, frame["idx"].to_numpy(), evaluated, sidecar.name)
    return frame


def read_attack_outcomes(path: Path) -> pd.DataFrame:
    """An attack outcome log (``robustreg.attacks.outcomes.read_outcomes``), checked against the
    attack.json of the attack job beside it, if any."""
    from robustreg.attacks.outcomes import read_outcomes

    frame = read_outcomes(path)
    sidecar = path.parent / "attack.json"
    if sidecar.exists():
        try:
            summary = json.loads(sidecar.read_text(encoding="utf-8"))
        except (OSError, ValueError):  # UnicodeDecodeError and JSONDecodeError both
            raise ValueError(f"{sidecar}: not a readable attack summary; rerun that job") from None
        summary = summary if isinstance(summary, dict) else {}
        evaluated = _positions(summary.get("idx"))
        if evaluated is None and "idx" not in summary and type(summary.get("images")) is int:
            evaluated = summary["images"]  # written before attack.json named the images
        if evaluated is None:
            raise ValueError(
                f"{sidecar}: names neither the images the attack evaluated (idx) nor their "
                "number (images); rerun that job"
            )
        check_images(path, frame["idx"].to_numpy(), evaluated, sidecar.name)
    return frame


def read_bound_files(path: Path) -> tuple[pd.DataFrame, dict]:
    """A bounds job's files (``robustreg.bound_estimates.read_bounds``) from its bounds.json
    ``path``: bounds.tsv checked against the images bounds.json names (its number of rows
    already is)."""
    from robustreg.bound_estimates import read_bounds

    frame, summary = read_bounds(path.parent)
    if "idx" in summary:
        evaluated = _positions(summary["idx"])
        if evaluated is None:
            raise ValueError(f"{path}: idx is not a list of image positions; rerun that job")
        check_images(path.parent / "bounds.tsv", frame["idx"].to_numpy(), evaluated, path.name)
    return frame, summary
