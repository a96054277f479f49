"""The attack stage's files: the outcome log of an attack job (``write_outcomes``,
``read_outcomes``) and its resumable progress log (``OutcomeLog``). Torch-free, so that tables
read outcome logs without importing it; pandas only when one is read.

One row per image (``OUTCOME_COLUMNS``): idx, label, clean (clean prediction), adversarial
(prediction at the kept point), robust, l2 and linf (distances of the kept point), time, and
``broken_by`` (``PART_COLUMN``): what broke the image, the attack's kind or, for AutoAttack,
the sub-attack of its cascade (apgd-ce, apgd-t, fab-t, square, ...), and "-" for an image not
broken (robust, or misclassified before any attack). Logs written before that column existed
are read without it. A minimal attack's rows mean (``robustreg.attacks.registry``):

* robust 0, l2 = linf = 0: the clean image is misclassified (top-k), not attacked;
* robust 0, distance > 0: broken at that point; l2 and linf are both its distances, so an l2
  attack's point also bounds the image's linf distance, and vice versa;
* robust 1: no adversarial point found (the runner keeps the clean image, l2 = linf = 0, even
  where the attack's point fails the runner's own check).

The ``clean`` and ``adversarial`` columns stay argmax predictions whatever top_k.
"""

from __future__ import annotations

import datetime
import os
import re
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import numpy as np

from robustreg.io import Expected, ResumableLog, write_text_atomic
from robustreg.settings import is_int, is_number

if TYPE_CHECKING:
    import pandas as pd

__all__ = [
    "NOT_BROKEN",
    "OUTCOME_COLUMNS",
    "PART_COLUMN",
    "RESULT_KEYS",
    "OutcomeLog",
    "read_outcomes",
    "write_outcomes",
]

OUTCOME_COLUMNS: tuple[str, ...] = (
    "idx", "label", "clean", "adversarial", "robust", "l2", "linf", "time",
)  # fmt: skip
# after OUTCOME_COLUMNS in every log written now; optional when one is read
PART_COLUMN = "broken_by"
NOT_BROKEN = "-"
_INT_COLUMNS = ("idx", "label", "clean", "adversarial", "robust")
_FLOAT_COLUMNS = ("l2", "linf")
# what ``robustreg.attacks.runner.run_attack`` returns and OutcomeLog records, per image
RESULT_KEYS = (
    "idx",
    "label",
    "clean",
    "adversarial",
    "robust",
    "l2",
    "linf",
    "seconds",
    PART_COLUMN,
)
_PART = re.compile(r"[a-z0-9_-]+")


class OutcomeLog(ResumableLog):
    """Per-image outcomes appended batch by batch, so that a killed attack job resumes: the
    attack stage's counterpart of ``robustreg.smoothing.ProgressLog``, both a
    ``robustreg.io.ResumableLog`` (same behaviour, other records).

    JSON lines: first ``{"identity": ...}``, naming everything the outcomes depend on, then one
    object per image with ``run_attack``'s keys. ``resume`` returns the earlier run's complete
    images for ``run_attack(done=...)``; given an ``Expected``, only those of selected images
    with their labels and predictions among the model's classes. ``append`` is its
    ``on_batch``; ``remove`` once the outcome log is written.
    """

    FORMAT = "robustreg-attack-progress/1"
    KEYS = RESULT_KEYS
    DONE, DOING = "attacked", "attacking"

    def _encode(self, row: Sequence) -> dict:
        return _record(row)

    def _check(self, record: object, previous: dict | None) -> None:
        _check_record(record)

    def _misfit(self, record: dict, expected: Expected) -> str | None:
        why = super()._misfit(record, expected)
        if why is None and not all(
            0 <= record[key] < expected.num_classes for key in ("clean", "adversarial")
        ):
            why = f"a prediction outside the model's {expected.num_classes} classes"
        return why


def _record(row: Sequence) -> dict:
    return {
        key: int(value)
        if key in _INT_COLUMNS
        else str(value)
        if key == PART_COLUMN
        else float(value)
        for key, value in zip(RESULT_KEYS, row, strict=True)
    }


def _check_record(record: object) -> None:
    if not isinstance(record, dict) or sorted(record) != sorted(RESULT_KEYS):
        raise ValueError("not an image record")
    if not all(is_int(record[key]) for key in _INT_COLUMNS) or record["robust"] not in (0, 1):
        raise ValueError("idx, label, clean, adversarial and robust must be integers")
    if not all(is_number(record[key]) and record[key] >= 0 for key in ("l2", "linf", "seconds")):
        raise ValueError("l2, linf and seconds must be numbers >= 0")
    if not isinstance(record[PART_COLUMN], str) or not _PART.fullmatch(record[PART_COLUMN]):
        raise ValueError(f"{PART_COLUMN} must name an attack, or be {NOT_BROKEN}")


def write_outcomes(path: str | os.PathLike, result: Mapping[str, np.ndarray]) -> None:
    """The outcome log: tab-separated ``OUTCOME_COLUMNS`` and ``PART_COLUMN``, one row per
    image, floats written with ``repr`` (they read back exactly), time as certify.tsv's
    str(datetime.timedelta)."""
    lines = ["\t".join([*OUTCOME_COLUMNS, PART_COLUMN])]
    for row in zip(*(result[key] for key in RESULT_KEYS), strict=True):
        *ints, l2, linf, seconds, part = row
        elapsed = str(datetime.timedelta(seconds=float(seconds)))
        fields = [str(int(v)) for v in ints] + [repr(float(l2)), repr(float(linf)), elapsed]
        lines.append("\t".join([*fields, str(part)]))
    write_text_atomic(path, "\n".join(lines) + "\n")


def read_outcomes(path: str | os.PathLike) -> pd.DataFrame:
    """An outcome log as a frame: ``OUTCOME_COLUMNS``, the integers as int64, l2, linf and time
    (seconds) as float64, and ``PART_COLUMN`` (strings) where the log has it. One-line
    ValueErrors name the file (and the column)."""
    import pandas as pd

    from robustreg.certify import parse_seconds

    name = os.fspath(path)
    try:
        frame = pd.read_csv(name, sep="\t", dtype=str, keep_default_na=False)
    except OSError as err:
        reason = err.strerror or type(err).__name__
        raise ValueError(f"{name}: not a readable attack outcome log ({reason})") from None
    except UnicodeDecodeError:
        raise ValueError(f"{name}: not a readable attack outcome log (not UTF-8 text)") from None
    except (pd.errors.ParserError, pd.errors.EmptyDataError) as err:
        # pandas says where the table breaks (line, number of fields), not what the line holds
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ValueError(f"{name}: not a readable attack outcome log ({reason})") from None
    missing = [c for c in OUTCOME_COLUMNS if c not in frame.columns]
    if missing:
        raise ValueError(
            f"{name}: missing columns {', '.join(missing)} "
            f"(an outcome log has {' '.join(OUTCOME_COLUMNS)})"
        )
    columns = {}
    for column in OUTCOME_COLUMNS:
        try:
            if column in _INT_COLUMNS:
                columns[column] = frame[column].astype(np.int64)
            elif column in _FLOAT_COLUMNS:
                columns[column] = frame[column].astype(np.float64)
            else:
                columns[column] = frame[column].map(parse_seconds).astype(np.float64)
        except ValueError:
            raise ValueError(
                f"{name}: column {column!r} holds a value that is not a number"
            ) from None
    if not columns["robust"].isin([0, 1]).all():
        raise ValueError(f"{name}: column 'robust' must be 0 or 1")
    if PART_COLUMN in frame.columns:
        parts = frame[PART_COLUMN]
        if not parts.map(lambda v: bool(_PART.fullmatch(v))).all():
            raise ValueError(f"{name}: column {PART_COLUMN!r} must name an attack, or be -")
        columns[PART_COLUMN] = parts
    return pd.DataFrame(columns)
