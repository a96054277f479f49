"""Files a job reads, checked before they are trusted: their content's digest, and what
becomes of one found corrupt.

A result file that cannot be read (a checkpoint, a model, stored counts) is *set aside*:
renamed beside itself, never deleted, since it may be the only trace of a fault. Its job
then sees it missing and computes it again on the next run, instead of failing on it on
every run until someone deletes it by hand.
"""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path


def file_sha256(path: str | os.PathLike) -> str:
    """The hex SHA-256 of a file's content."""
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def set_aside(path: str | os.PathLike) -> Path | None:
    """Rename the corrupt file ``path`` to ``<name>.corrupt-<UTC time>`` beside it (a counter
    is added when that name is taken) and return the new path; None when ``path`` is already
    gone (another job reading it set it aside first)."""
    path = Path(path)
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    target = path.with_name(f"{path.name}.corrupt-{stamp}")
    number = 1
    while target.exists():
        number += 1
        target = path.with_name(f"{path.name}.corrupt-{stamp}-{number}")
    try:
        os.replace(path, target)
    except FileNotFoundError:
        return None
    return target


def set_aside_note(path: str | os.PathLike) -> str:
    """Set the corrupt result ``path`` aside (``set_aside``) and say so, for the end of the
    error line of the job that found it."""
    moved = set_aside(path)
    where = f"set aside as {moved.name}" if moved else "already set aside by another job"
    return f"{where}; rerun to recompute it"


def first_line(err: BaseException) -> str:
    """An exception's message in one line (its first), or its type's name if it has none:
    why a file could not be read, for a one-line error."""
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__
