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
from dataclasses import dataclass, field
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


@dataclass(frozen=True)
class Expected:
    """What a resuming job was asked to do, which its earlier records must fit: the images
    it selected (dataset position -> label), the number of classes of its model, and for
    per-image counts the number of samples each count vector holds (key -> total, e.g.
    ``{"counts0": n0, "counts": n}``).

    Not part of a log's identity, so that a run over more or fewer images keeps the records
    of the images both select."""

    labels: Mapping[int, int]
    num_classes: int
    samples: Mapping[str, int] = field(default_factory=dict)

    @classmethod
    def images(
        cls,
        indices: Sequence[int],
        labels,
        num_classes: int,
        samples: Mapping[str, int] | None = None,
    ) -> Expected:
        """From the selected images' dataset positions and their labels (as ``image_ids``
        takes them)."""
        idx, label = image_ids(len(indices), indices, labels)
        return cls(dict(zip(idx.tolist(), label.tolist(), strict=True)), num_classes, samples or {})


class ResumableLog:
    """Per-image records appended as they are computed, so that a killed run resumes.

    JSON lines: first ``{"identity": ...}``, which names everything the records depend on
    (with ``"format": FORMAT``), then one object per image with the keys ``KEYS``. Each group
    of images is written with one write, then flushed and fsync'd.

    ``resume`` reads the complete lines of an earlier file whose identity is equal (a torn last
    line from a kill is dropped; a file of another run is discarded), rewrites the file as
    exactly those, and returns them as one array per key, for the computation's ``done=``;
    ``append`` is its per-group callback. The file is not one of the run's results: ``remove``
    it once they are written.

    Every line is checked on its own: its form (``_check``) and, given what the resuming job
    was asked to do (``Expected``), that it fits it (``_misfit``: an image of the selection with
    its label, within the model's classes, counts summing to the samples drawn). A line that
    fails is discarded alone and the lines after it are kept: an image's record depends only
    on the identity and that image, so one bad line says nothing about the others, and the
    computation redoes any group or batch it no longer covers whole. Each kind of discard is
    one line on stderr, naming the file's lines and the reason, never their contents.

    A subclass names its ``FORMAT``, ``KEYS`` and the verb of its messages (``DONE``: "images
    sampled before", ``DOING``: "sampling every image"), and supplies ``_encode`` and ``_check``
    (and extends ``_misfit`` for its own keys).
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
        may follow ``previous``, the line kept before it (None for the first). The message is
        the same for every line with the same fault (it names no value of the line)."""
        raise NotImplementedError

    def _misfit(self, record: dict, expected: Expected) -> str | None:
        """Why a well-formed ``record`` does not fit the job ``expected`` describes (a reason
        that names no value of the record), or None if it fits."""
        if record["idx"] not in expected.labels:
            return "image outside its selection"
        if record["label"] != expected.labels[record["idx"]]:
            return "label other than the selected image's"
        return None

    def resume(self, expected: Expected | None = None) -> dict[str, np.ndarray] | None:
        """The earlier run's complete images (None if none), and the file restarted from them;
        given ``expected``, only the records that fit it."""
        lines = self._earlier_lines(expected)
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

    def _earlier_lines(self, expected: Expected | None) -> list[str]:
        """The earlier file's complete, well-formed image lines if its identity is ours (that
        fit ``expected`` if given)."""
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
        # (is the line unreadable, why) -> the numbers of the lines discarded for it
        discarded: dict[tuple[bool, str], list[int]] = {}
        for number, line in enumerate(complete[1:], start=2):
            try:
                text = line.decode("utf-8")
                record = json.loads(text)
            except ValueError:  # UnicodeDecodeError and JSONDecodeError both
                discarded.setdefault((True, "not a JSON line"), []).append(number)
                continue
            try:
                self._check(record, previous)
            except ValueError as err:
                discarded.setdefault((True, str(err)), []).append(number)
                continue
            except (TypeError, KeyError):
                discarded.setdefault((True, "not an image record"), []).append(number)
                continue
            why = None if expected is None else self._misfit(record, expected)
            if why is not None:
                discarded.setdefault((False, why), []).append(number)
                continue
            previous = record
            lines.append(text)
        for (unreadable, why), numbers in discarded.items():
            one = len(numbers) == 1
            if unreadable:
                fault = "is unreadable" if one else "are unreadable"
            else:
                fault = "does not fit this job" if one else "do not fit this job"
            lines_text = _line_numbers(numbers)
            print(f"{self.path}: {lines_text} {fault} ({why}); discarded", file=sys.stderr)
        if torn:
            print(f"{self.path}: dropped its incomplete last line", file=sys.stderr)
        return lines


def _line_numbers(numbers: list[int], shown: int = 5) -> str:
    """Line numbers as a message names them: line 4; lines 4, 7, 9; lines 4, 5, 6, 7, 8 and
    12 more."""
    if len(numbers) == 1:
        return f"line {numbers[0]}"
    text = ", ".join(map(str, numbers[:shown]))
    more = len(numbers) - shown
    return f"lines {text}" + (f" and {more} more" if more > 0 else "")
