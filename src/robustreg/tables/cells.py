"""The cells file: where a table's numbers come from.

A **cells file** (YAML) maps (row, group value) to where our numbers come from. It has the
same format whether the workflow wrote it or a user wrote it by hand for logs made
elsewhere::

    table: table2_mnist                 # spec name (robustreg/tables/specs/<name>.yaml)
    banner: "Reduced scale: ..."        # optional; shown above the table and in the caption
    notes: ["Checkpoint selection ..."] # optional; shown under the table with its own notes
    cells:
      - {row: gaussian, sigma: 0.25, log: ../certify/abc/certify.tsv}
      # a table whose columns all have ``aggregate: mean_std``: one log per training seed
      - {row: macer, sigma: 0.25, log: [../certify/s0/certify.tsv, ../certify/s1/certify.tsv]}

The group key (``sigma`` here) is the spec's ``group_by.key``; relative ``log`` paths are
relative to the cells file's folder. Every path (``log``, ``outcomes``, ``files``) must lead,
symlinks followed, into the logs root: the cells file's folder unless the caller names
another (``--logs-root``; the workflow's cells files in results/tables/ name ``results``), so
that a cells file cannot have the table stage read files elsewhere.

A cell of a settings table (columns with metric ``setting``) has no log but the training
settings its columns show, and optionally the id of the experiment that trains with them::

      - {row: cifar10, sigma: 0.25, settings: {method: smoothadv, attack: PGD, steps: 10,
         eps: 0.996, m: 4}, experiment: cifar10-cifar_resnet110-smoothadv-s0.25-abc123}

A cell of an attack table (columns with metric ``robust_accuracy``) gives, per column, the
per-image outcome file of the attack that column reports (``robustreg attack`` writes them);
a column left out renders as missing::

      - {row: trades, eps: 0.3, outcomes: {benign: ../attacks/abc/none-1a2b/outcomes.tsv,
         pgd20: ../attacks/abc/pgd20-3c4d/outcomes.tsv}}

A row the spec marks ``cited`` has no cell; a column a row marks ``not_evaluated`` has no
outcome file.

The whole file is validated before any log is read.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from robustreg.tables.spec import RowSpec, TableSpec, load_spec
from robustreg.tables.vocabulary import ATTACKS, OUTCOME_LOGS, ROBUSTNESS, file_kind

__all__ = ["Cell", "CellsFile", "load_cells"]

_CELLS_KEYS = {"table", "banner", "notes", "cells"}


@dataclass(frozen=True)
class Cell:
    row: str
    group: Any  # the spec's own group value
    logs: tuple[Path, ...] = ()  # resolved, one per training seed; results tables
    log_texts: tuple[str, ...] = ()  # as written in the cells file
    settings: dict[str, Any] = field(default_factory=dict)  # settings tables
    experiment: str | None = None  # settings tables: the model these settings train
    outcomes: dict[str, Path] = field(default_factory=dict)  # attack tables: column -> file
    # robustness tables: column -> the files its metric reads (robustreg.tables.robustness)
    files: dict[str, tuple[Path, ...]] = field(default_factory=dict)


@dataclass(frozen=True)
class CellsFile:
    path: Path
    spec: TableSpec
    banner: str | None
    cells: tuple[Cell, ...]
    notes: tuple[str, ...] = ()


def load_cells(
    cells_path: str | os.PathLike,
    spec_dir: str | os.PathLike | None = None,
    logs_root: str | os.PathLike | None = None,
) -> CellsFile:
    """Read and validate a cells file; reads no log. Its table spec comes from ``spec_dir``
    (default: the package's specs folder); its paths must lead into ``logs_root`` (default:
    the cells file's folder). Errors are one-line ValueErrors naming the cells file and the
    bad key or value."""
    path = Path(cells_path)
    root = Path(os.path.realpath(path.parent if logs_root is None else Path(logs_root)))

    def fail(msg: str) -> ValueError:
        return ValueError(f"{path}: {msg}")

    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as err:
        raise fail(f"cannot read cells file ({err.strerror})") from None
    except UnicodeDecodeError:
        raise fail("not a cells file (not UTF-8 text)") from None
    except yaml.YAMLError as err:
        raise fail(f"not valid YAML ({_yaml_problem(err)})") from None
    if not isinstance(raw, dict):
        raise fail("expected a mapping with keys table, cells (and optional banner)")
    unknown = sorted(str(k) for k in raw if k not in _CELLS_KEYS)
    if unknown:
        raise fail(f"unknown key {unknown[0]!r} (allowed: banner, cells, notes, table)")
    if "table" not in raw:
        raise fail("missing key 'table'")
    try:
        spec = load_spec(raw["table"], spec_dir)
    except ValueError as err:
        raise fail(f"table: {err}") from None
    banner = raw.get("banner")
    if banner is not None and (not isinstance(banner, str) or not banner.strip()):
        raise fail(f"banner: expected a non-empty string, got {banner!r}")
    notes = raw.get("notes", [])
    if not isinstance(notes, list) or not all(isinstance(n, str) and n.strip() for n in notes):
        raise fail(f"notes: expected a list of non-empty strings, got {notes!r}")

    def locate(text: str, where: str) -> Path:
        """The path ``text`` of the cells file names, relative to its folder; refused unless
        it leads into the logs root (symlinks followed, so no link leads out)."""
        log = Path(os.path.normpath(path.parent / Path(text).expanduser()))
        if not Path(os.path.realpath(log)).is_relative_to(root):
            raise fail(
                f"{where}: {text!r} leads outside {root}, the folder logs are read from "
                "(--logs-root names another)"
            )
        return log

    gkey = spec.group.key
    source = {"settings": "settings", ATTACKS: "outcomes", ROBUSTNESS: "files"}.get(
        spec.values_from, "log"
    )
    entries = raw.get("cells")
    if not isinstance(entries, list):
        raise fail(f"cells: expected a list of {{row, {gkey}, {source}}} mappings")
    required = ("row", gkey, source)
    allowed = {*required, "experiment"} if spec.settings else set(required)
    expected = ", ".join([*required, "experiment"] if spec.settings else required)
    seen: dict[tuple[str, Any], int] = {}
    cells: list[Cell] = []
    for i, entry in enumerate(entries):
        where = f"cells[{i}]"
        if not isinstance(entry, dict):
            raise fail(f"{where}: expected a mapping with keys {expected}")
        extra = sorted(str(k) for k in entry if k not in allowed)
        if extra:
            raise fail(f"{where}: unknown key {extra[0]!r} (expected {expected})")
        for key in required:
            if key not in entry:
                raise fail(f"{where}: missing key {key!r}")
        row = entry["row"]
        row_spec = spec.row(str(row))
        if row_spec is None:
            known = ", ".join(r.key for r in spec.rows)
            raise fail(f"{where}: unknown row {row!r} for table {spec.name} (rows: {known})")
        if row_spec.cited:
            raise fail(f"{where}: row {row!r} is cited from {row_spec.cited}; it has no cell")
        group = spec.group.match(entry[gkey])
        if group is None:
            known = ", ".join(spec.group.text(v) for v in spec.group.values)
            raise fail(
                f"{where}: unknown {gkey} {entry[gkey]!r} for table {spec.name} ({gkey}: {known})"
            )
        if not row_spec.in_group(group):
            known = ", ".join(spec.group.text(v) for v in row_spec.groups)
            raise fail(
                f"{where}: row {row!r} has no {gkey} {spec.group.text(group)} in table "
                f"{spec.name} (its {gkey}: {known})"
            )
        if (row, group) in seen:
            raise fail(
                f"{where}: duplicate cell row {row!r} {gkey} {spec.group.text(group)} "
                f"(already cells[{seen[(row, group)]}])"
            )
        seen[(row, group)] = i
        if spec.settings:
            cells.append(
                _settings_cell(entry, row, group, spec, lambda m, w=where: fail(f"{w}: {m}"))
            )
        elif spec.values_from == ATTACKS:
            w = f"{where}: outcomes"
            outcomes = _outcome_texts(
                entry["outcomes"], row_spec, spec, lambda m, w=w: fail(f"{w}: {m}")
            )
            located = {k: locate(t, f"{w}: {k}") for k, t in outcomes.items()}
            cells.append(
                Cell(
                    row=row,
                    group=group,
                    logs=tuple(located.values()),
                    log_texts=tuple(outcomes.values()),
                    outcomes=located,
                )
            )
        elif spec.values_from == ROBUSTNESS:
            w = f"{where}: files"
            files = _file_texts(entry["files"], row_spec, spec, lambda m, w=w: fail(f"{w}: {m}"))
            texts = tuple(t for column in files.values() for t in column)
            located = {k: tuple(locate(t, f"{w}: {k}") for t in c) for k, c in files.items()}
            cells.append(
                Cell(
                    row=row,
                    group=group,
                    logs=tuple(p for column in located.values() for p in column),
                    log_texts=texts,
                    files=located,
                )
            )
        else:
            texts = _log_texts(entry["log"], spec, lambda m, w=where: fail(f"{w}: log: {m}"))
            logs = tuple(locate(t, f"{where}: log") for t in texts)
            cells.append(Cell(row=row, group=group, logs=logs, log_texts=texts))
    return CellsFile(path=path, spec=spec, banner=banner, cells=tuple(cells), notes=tuple(notes))


def _log_texts(value: Any, spec: TableSpec, fail: Callable[[str], ValueError]) -> tuple[str, ...]:
    if isinstance(value, list):
        plain = next((c.key for c in spec.columns if not c.aggregate), None)
        if plain is not None:
            raise fail(
                f"a list of logs (one per seed) needs aggregate: mean_std on every column; "
                f"column {plain!r} has none"
            )
        if not value:
            raise fail("expected a non-empty list of paths")
        texts = value
    else:
        texts = [value]
    for text in texts:
        if not isinstance(text, str) or not text.strip():
            raise fail(f"expected a path, got {text!r}")
    return tuple(texts)


def _outcome_texts(
    value: Any, row: RowSpec, spec: TableSpec, fail: Callable[[str], ValueError]
) -> dict[str, str]:
    if not isinstance(value, dict) or not value:
        raise fail("expected a mapping column -> outcome file")
    for key, text in value.items():
        if spec.column(str(key)) is None:
            known = ", ".join(c.key for c in spec.columns)
            raise fail(f"unknown column {key!r} (columns: {known})")
        if key in row.not_evaluated:
            raise fail(f"column {key!r} is not evaluated for row {row.key!r}, as in the paper")
        if spec.column(str(key)).of:
            raise fail(f"column {key!r} is a worst case over other columns; it has no file")
        if not isinstance(text, str) or not text.strip():
            raise fail(f"{key}: expected a path, got {text!r}")
    return {str(k): v for k, v in value.items()}


def _file_texts(
    value: Any, row: RowSpec, spec: TableSpec, fail: Callable[[str], ValueError]
) -> dict[str, tuple[str, ...]]:
    """A robustness cell's files: column -> its outcome logs (a list), its bounds.json or its
    model.pt (one path)."""

    if not isinstance(value, dict) or not value:
        raise fail("expected a mapping column -> file(s)")
    out = {}
    for key, given in value.items():
        column = spec.column(str(key))
        if column is None:
            known = ", ".join(c.key for c in spec.columns)
            raise fail(f"unknown column {key!r} (columns: {known})")
        if key in row.not_evaluated:
            raise fail(f"column {key!r} is not evaluated for row {row.key!r}, as in the paper")
        several = file_kind(column.metric) == OUTCOME_LOGS
        texts = given if several and isinstance(given, list) else [given]
        if not texts or (not several and isinstance(given, list)):
            want = "a non-empty list of outcome logs" if several else "one path"
            raise fail(f"{key}: expected {want}, got {given!r}")
        for text in texts:
            if not isinstance(text, str) or not text.strip():
                raise fail(f"{key}: expected a path, got {text!r}")
        out[str(key)] = tuple(texts)
    return out


def _yaml_problem(err: yaml.YAMLError) -> str:
    """What YAML found wrong, and where, without the text it quotes from the file."""
    mark = getattr(err, "problem_mark", None)
    problem = getattr(err, "problem", None) or type(err).__name__
    return problem if mark is None else f"line {mark.line + 1}, column {mark.column + 1}: {problem}"


def _settings_cell(
    entry: dict, row: str, group: Any, spec: TableSpec, fail: Callable[[str], ValueError]
) -> Cell:
    settings = entry["settings"]
    if not isinstance(settings, dict):
        raise fail(f"settings: expected a mapping param -> value, got {settings!r}")
    for column in spec.columns:
        if column.param not in settings:
            raise fail(f"settings: no {column.param!r} (shown in column {column.key!r})")
        value = settings[column.param]
        if isinstance(value, bool) or not isinstance(value, int | float | str):
            raise fail(f"settings.{column.param}: expected a number or string, got {value!r}")
    experiment = entry.get("experiment")
    if experiment is not None and (not isinstance(experiment, str) or not experiment.strip()):
        raise fail(f"experiment: expected an experiment id, got {experiment!r}")
    return Cell(row=row, group=group, settings=dict(settings), experiment=experiment)
