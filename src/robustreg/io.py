"""The one way files are written: results atomically, progress logs by appending.

Results go to a temporary file beside the target, then are renamed: a job killed mid-write
leaves either the previous file or none, never a truncated one. A long per-image job
(certification counts, attack outcomes) also keeps a ``ResumableLog`` of the images it has
finished, so that a killed job resumes where it stopped.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import ClassVar, Self

import numpy as np


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; it replaces ``path`` when the block succeeds."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    os.close(fd)
    try:
        yield Path(tmp)
        # mkstemp creates mode 0600; results are shared files, so take the umask's default.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, target)
    finally:
        Path(tmp).unlink(missing_ok=True)


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def image_ids(num: int, indices: Sequence[int] | None, labels) -> tuple[np.ndarray, np.ndarray]:
    """The int64 ``idx`` and ``label`` columns of a per-image job over ``num`` images:
    ``indices`` default to 0..num-1; ``labels`` may be a tensor (on any device) or an array."""
    idx = np.arange(num) if indices is None else np.asarray(indices, dtype=np.int64)
    label = np.asarray(labels.cpu() if hasattr(labels, "cpu") else labels, dtype=np.int64)
    if idx.shape != (num,) or label.shape != (num,):
        raise ValueError("need one label and one index per image")
    return idx, label


class ResumableLog:
    """Per-image records appended as they are computed, so that a killed run resumes.

    JSON lines: first ``{"identity": ...}``, which names everything the records depend on
    (with ``"format": FORMAT``), then one object per image with the keys ``KEYS``. Each group
    of images is written with one write, then flushed and fsync'd.

    ``resume`` reads the complete lines of an earlier file whose identity is equal (a torn last
    line from a kill is dropped; a line that fails ``_check`` ends what is kept; a file of
    another run is discarded, with a line on stderr), rewrites the file as exactly those, and
    returns them as one array per key, for the computation's ``done=``; ``append`` is its
    per-group callback. The file is not one of the run's results: ``remove`` it once they are
    written.

    A subclass names its ``FORMAT``, ``KEYS`` and the verb of its messages (``DONE``: "images
    sampled before", ``DOING``: "sampling every image"), and supplies ``_encode`` and ``_check``.
    """

    FORMAT: ClassVar[str]
    KEYS: ClassVar[tuple[str, ...]]
    DONE: ClassVar[str]
    DOING: ClassVar[str]

    def __init__(self, path: str | os.PathLike, identity: Mapping[str, object]):
        self.path = Path(path)
        # through JSON and back, so it compares equal to what a file holds
        self.identity = json.loads(json.dumps({"format": self.FORMAT, **identity}))
        self._file = None

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _encode(self, row: Sequence) -> dict:
        """One image's JSON object from its values, in the order of ``KEYS``."""
        raise NotImplementedError

    def _check(self, record: object, previous: dict | None) -> None:
        """Raise ValueError (or TypeError, KeyError) unless ``record`` is an image line that
        may follow ``previous``, the line kept before it (None for the first)."""
        raise NotImplementedError

    def resume(self) -> dict[str, np.ndarray] | None:
        """The earlier run's complete images (None if none), and the file restarted from them."""
        lines = self._earlier_lines()
        header = json.dumps({"identity": self.identity}, sort_keys=True)
        write_text_atomic(self.path, "".join(f"{line}\n" for line in [header, *lines]))
        # kept open for append(); close() (or leaving the with block) closes it
        self._file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115
        if not lines:
            return None
        print(
            f"{self.path}: resuming after {len(lines)} images {self.DONE} before", file=sys.stderr
        )
        records = [json.loads(line) for line in lines]
        return {key: np.array([r[key] for r in records]) for key in self.KEYS}

    def append(self, group: Mapping[str, np.ndarray]) -> None:
        if self._file is None:
            raise RuntimeError(f"{type(self).__name__}.append before resume")
        rows = zip(*(group[key] for key in self.KEYS), strict=True)
        self._file.write("".join(json.dumps(self._encode(row)) + "\n" for row in rows))
        self._file.flush()
        os.fsync(self._file.fileno())

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def remove(self) -> None:
        self.close()
        self.path.unlink(missing_ok=True)

    def _earlier_lines(self) -> list[str]:
        """The earlier file's complete, well-formed image lines if its identity is ours."""
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return []
        *complete, torn = data.split(b"\n")  # what follows the last newline was cut short
        try:
            header = json.loads(complete[0])["identity"] if complete else None
        except (ValueError, TypeError, KeyError):
            header = None
        if header != self.identity:
            if isinstance(header, dict):
                keys = header.keys() | self.identity.keys()
                differ = sorted(k for k in keys if header.get(k) != self.identity.get(k))
                why = f"it is from a different run ({', '.join(differ)} differ)"
            else:
                why = "it has no readable header"
            print(f"{self.path}: discarded, {why}; {self.DOING} every image", file=sys.stderr)
            return []
        lines: list[str] = []
        previous = None
        for number, line in enumerate(complete[1:], start=2):
            try:
                text = line.decode("utf-8")
                record = json.loads(text)
                self._check(record, previous)
            except (ValueError, TypeError, KeyError):
                print(
                    f"{self.path}: line {number} is unreadable; it and all after it are "
                    f"{self.DONE} again",
                    file=sys.stderr,
                )
                return lines
            previous = record
            lines.append(text)
        if torn:
            print(f"{self.path}: dropped its incomplete last line", file=sys.stderr)
        return lines
