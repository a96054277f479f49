"""The one table renderer: cells file -> pandas frame -> jinja2 templates (Markdown, LaTeX).

A **cells file** (YAML) maps (row, group value) to a certification log. It has the same
format whether the workflow wrote it or a user wrote it by hand for logs made elsewhere::

    table: table2_mnist                 # spec name (robustreg/tables/specs/<name>.yaml)
    banner: "Reduced scale: ..."        # optional; shown above the table and in the caption
    cells:
      - {row: gaussian, sigma: 0.25, log: ../certify/abc/certify.tsv}

The group key (``sigma`` here) is the spec's ``group_by.key``; relative ``log`` paths are
relative to the cells file's folder. The whole file is validated before any log is read.
A (row, group) pair without a cell renders as missing; the paper's value is only ever
shown in its own slot, in parentheses after ours.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jinja2
import numpy as np
import pandas as pd
import yaml

from robustreg.certify import average_certified_radius, certified_accuracy, read_certify_log
from robustreg.io import write_text_atomic
from robustreg.tables.spec import RULES, ColumnSpec, RuleSpec, TableSpec, load_spec

__all__ = ["Cell", "CellsFile", "build_frame", "load_cells", "render_table"]

FRAME_COLUMNS = ["row", "group", "column", "ours", "paper", "bold", "underline"]
_CELLS_KEYS = {"table", "banner", "cells"}


@dataclass(frozen=True)
class Cell:
    row: str
    group: Any  # the spec's own group value
    log: Path  # resolved
    log_text: str  # as written in the cells file


@dataclass(frozen=True)
class CellsFile:
    path: Path
    spec: TableSpec
    banner: str | None
    cells: tuple[Cell, ...]


# ------------------------------------------------------------------------------ cells file


def load_cells(cells_path: str | os.PathLike) -> CellsFile:
    """Read and validate a cells file; reads no log. Errors are one-line ValueErrors
    naming the cells file and the bad key or value."""
    path = Path(cells_path)

    def fail(msg: str) -> ValueError:
        return ValueError(f"{path}: {msg}")

    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as err:
        raise fail(f"cannot read cells file ({err.strerror})") from None
    except yaml.YAMLError as err:
        raise fail(f"not valid YAML: {' '.join(str(err).split())}") from None
    if not isinstance(raw, dict):
        raise fail("expected a mapping with keys table, cells (and optional banner)")
    unknown = sorted(str(k) for k in raw if k not in _CELLS_KEYS)
    if unknown:
        raise fail(f"unknown key {unknown[0]!r} (allowed: banner, cells, table)")
    if "table" not in raw:
        raise fail("missing key 'table'")
    try:
        spec = load_spec(raw["table"])
    except ValueError as err:
        raise fail(f"table: {err}") from None
    banner = raw.get("banner")
    if banner is not None and (not isinstance(banner, str) or not banner.strip()):
        raise fail(f"banner: expected a non-empty string, got {banner!r}")
    entries = raw.get("cells")
    if not isinstance(entries, list):
        raise fail("cells: expected a list of {row, " + spec.group.key + ", log} mappings")

    gkey = spec.group.key
    allowed = {"row", gkey, "log"}
    seen: dict[tuple[str, Any], int] = {}
    cells: list[Cell] = []
    for i, entry in enumerate(entries):
        where = f"cells[{i}]"
        if not isinstance(entry, dict):
            raise fail(f"{where}: expected a mapping with keys row, {gkey}, log")
        extra = sorted(str(k) for k in entry if k not in allowed)
        if extra:
            raise fail(f"{where}: unknown key {extra[0]!r} (expected row, {gkey}, log)")
        for key in ("row", gkey, "log"):
            if key not in entry:
                raise fail(f"{where}: missing key {key!r}")
        row = entry["row"]
        if spec.row(str(row)) is None:
            known = ", ".join(r.key for r in spec.rows)
            raise fail(f"{where}: unknown row {row!r} for table {spec.name} (rows: {known})")
        group = spec.group.match(entry[gkey])
        if group is None:
            known = ", ".join(spec.group.text(v) for v in spec.group.values)
            raise fail(
                f"{where}: unknown {gkey} {entry[gkey]!r} for table {spec.name} ({gkey}: {known})"
            )
        if (row, group) in seen:
            raise fail(
                f"{where}: duplicate cell row {row!r} {gkey} {spec.group.text(group)} "
                f"(already cells[{seen[(row, group)]}])"
            )
        seen[(row, group)] = i
        log_text = entry["log"]
        if not isinstance(log_text, str) or not log_text.strip():
            raise fail(f"{where}: log: expected a path, got {log_text!r}")
        log = Path(log_text).expanduser()
        if not log.is_absolute():
            log = path.parent / log
        cells.append(Cell(row=row, group=group, log=log, log_text=log_text))
    return CellsFile(path=path, spec=spec, banner=banner, cells=tuple(cells))


# ------------------------------------------------------------------------------ metrics


def _metric_acr(radius: np.ndarray, correct: np.ndarray, column: ColumnSpec) -> float:
    return average_certified_radius(radius, correct)


def _metric_certified_accuracy(
    radius: np.ndarray, correct: np.ndarray, column: ColumnSpec
) -> float:
    return float(certified_accuracy(radius, correct, [column.radius])[0])


METRIC_FUNCS: dict[str, Callable[[np.ndarray, np.ndarray, ColumnSpec], float]] = {
    "acr": _metric_acr,
    "certified_accuracy": _metric_certified_accuracy,
}


def _our_values(cells: CellsFile) -> pd.DataFrame:
    """One record per (cell, column): our value, scaled as printed (percent where asked)."""
    logs: dict[Path, pd.DataFrame] = {}
    records = []
    for cell in cells.cells:
        if cell.log not in logs:
            logs[cell.log] = read_certify_log(cell.log)  # ValueError naming the file
        log = logs[cell.log]
        radius = log["radius"].to_numpy(dtype=np.float64)
        correct = log["correct"].to_numpy()
        for column in cells.spec.columns:
            try:
                value = METRIC_FUNCS[column.metric](radius, correct, column)
            except ValueError as err:
                raise ValueError(f"{cell.log}: {column.metric}: {err}") from None
            records.append(
                {
                    "row": cell.row,
                    "group": cell.group,
                    "column": column.key,
                    "ours": value * 100.0 if column.percent else value,
                }
            )
    return pd.DataFrame.from_records(records, columns=["row", "group", "column", "ours"])


# ------------------------------------------------------------------------------ highlight rules


def _shown(values: pd.Series, decimals: pd.Series) -> pd.Series:
    """Values as printed (rounded like the table shows them), so rules compare what
    a reader sees: 0.9281 vs 0.9279 both print 0.928 and count as equal."""
    return pd.Series(
        [
            float(f"{v:.{d}f}") if pd.notna(v) else np.nan
            for v, d in zip(values, decimals, strict=True)
        ],
        index=values.index,
        dtype="float64",
    )


def _rule_improves_baseline(frame: pd.DataFrame, spec: TableSpec, rule: RuleSpec) -> pd.Series:
    """Ours strictly better than ours for the row's baseline, same group and column."""
    baseline_of = {r.key: r.baseline for r in spec.rows if r.baseline}
    cols = rule.columns or tuple(c.key for c in spec.columns)
    base = frame[["row", "group", "column", "_shown"]].rename(
        columns={"row": "_baseline", "_shown": "_base_shown"}
    )
    merged = frame.assign(_baseline=frame["row"].map(baseline_of)).merge(
        base, on=["_baseline", "group", "column"], how="left"
    )
    higher = merged["_better"] == "higher"
    better = np.where(
        higher, merged["_shown"] > merged["_base_shown"], merged["_shown"] < merged["_base_shown"]
    )
    flag = pd.Series(better, index=frame.index) & frame["column"].isin(cols)
    return flag & frame["_shown"].notna()


def _rule_best_per_group(frame: pd.DataFrame, spec: TableSpec, rule: RuleSpec) -> pd.Series:
    """Best of ours in each (group, column), ties all marked; rows without a value never."""
    cols = rule.columns or tuple(c.key for c in spec.columns)
    signed = frame["_shown"].where(frame["_better"] == "higher", -frame["_shown"])
    best = signed.groupby([frame["group"], frame["column"]], sort=False).transform("max")
    return (signed == best) & frame["column"].isin(cols) & frame["_shown"].notna()


def _rule_best_acr_per_group(frame: pd.DataFrame, spec: TableSpec, rule: RuleSpec) -> pd.Series:
    acr = tuple(c.key for c in spec.columns if c.metric == "acr")
    return _rule_best_per_group(frame, spec, RuleSpec(rule.style, rule.rule, rule.columns or acr))


RULE_FUNCS: dict[str, Callable[[pd.DataFrame, TableSpec, RuleSpec], pd.Series]] = {
    "improves_baseline": _rule_improves_baseline,
    "best_per_group": _rule_best_per_group,
    "best_acr_per_group": _rule_best_acr_per_group,
}


# ------------------------------------------------------------------------------ the frame


def build_frame(cells: CellsFile) -> pd.DataFrame:
    """Long frame in spec order: row, group, column, ours, paper, bold, underline.

    ``ours`` is NaN where no cell was given; ``paper`` is NaN where the paper prints
    nothing. Highlights are computed on our values only."""
    spec = cells.spec
    skeleton = pd.DataFrame.from_records(
        [
            {
                "row": row.key,
                "group": group,
                "column": col.key,
                "paper": (row.paper.get(group) or (None,) * len(spec.columns))[j],
                "_decimals": col.decimals,
                "_better": col.better,
            }
            for group in spec.group.values
            for row in spec.rows
            for j, col in enumerate(spec.columns)
        ]
    )
    skeleton["paper"] = skeleton["paper"].astype("float64")
    frame = skeleton.merge(_our_values(cells), on=["row", "group", "column"], how="left")
    frame["ours"] = frame["ours"].astype("float64")
    frame["_shown"] = _shown(frame["ours"], frame["_decimals"])
    for style in ("bold", "underline"):
        frame[style] = False
    for rule in spec.highlight:
        frame[rule.style] = frame[rule.style] | RULE_FUNCS[rule.rule](frame, spec, rule)
    frame.attrs["group_by"] = spec.group.key
    frame.attrs["table"] = spec.name
    return frame[FRAME_COLUMNS].reset_index(drop=True)


# ------------------------------------------------------------------------------ rendering

_GREEK_LOWER = dict(
    zip(
        "αβγδζηθικλμνξπρστυφχψω",
        [
            "alpha",
            "beta",
            "gamma",
            "delta",
            "zeta",
            "eta",
            "theta",
            "iota",
            "kappa",
            "lambda",
            "mu",
            "nu",
            "xi",
            "pi",
            "rho",
            "sigma",
            "tau",
            "upsilon",
            "phi",
            "chi",
            "psi",
            "omega",
        ],
        strict=True,
    )
)
_GREEK_UPPER = dict(
    zip(
        "ΓΔΘΛΞΠΣΦΨΩ",
        ["Gamma", "Delta", "Theta", "Lambda", "Xi", "Pi", "Sigma", "Phi", "Psi", "Omega"],
        strict=True,
    )
)
_TEX_CHARS: dict[int, str] = {
    **{ord(c): "\\" + c for c in "&%$#_{}"},
    ord("\\"): r"\textbackslash{}",
    ord("~"): r"\textasciitilde{}",
    ord("^"): r"\textasciicircum{}",
    ord("<"): r"\textless{}",
    ord(">"): r"\textgreater{}",
    ord("|"): r"\textbar{}",
    ord("–"): "--",
    ord("—"): "---",
    ord("ℓ"): r"$\ell$",
    ord("×"): r"$\times$",
    ord("±"): r"$\pm$",
    ord("≤"): r"$\leq$",
    ord("≥"): r"$\geq$",
    ord("∞"): r"$\infty$",
    ord("·"): r"$\cdot$",
    ord("²"): r"$^2$",
    ord("ε"): r"$\varepsilon$",
    **{ord(ch): f"$\\{name}$" for ch, name in (_GREEK_LOWER | _GREEK_UPPER).items()},
}


def tex_escape(text: Any) -> str:
    """Escape LaTeX specials and map Greek/math symbols (λ -> $\\lambda$)."""
    return str(text).translate(_TEX_CHARS)


_MD_SPECIALS = "\\`*_|<[]"


def md_escape(text: Any) -> str:
    """Escape Markdown inline specials (incl. the table pipe)."""
    return "".join("\\" + ch if ch in _MD_SPECIALS else ch for ch in str(text))


def md_code(text: Any) -> str:
    """A Markdown code span that survives backticks in ``text``."""
    text = str(text)
    fence = "`" * (max((len(r) for r in re.findall(r"`+", text)), default=0) + 1)
    pad = " " if text.startswith("`") or text.endswith("`") else ""
    return f"{fence}{pad}{text}{pad}{fence}"


def _number(value: Any, decimals: int) -> str | None:
    if value is None or pd.isna(value):
        return None
    return f"{value:.{decimals}f}"


def _environment(kind: str) -> jinja2.Environment:
    common = dict(
        loader=jinja2.PackageLoader("robustreg.tables", "templates"),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
        autoescape=False,
    )
    if kind == "tex":  # LaTeX braces clash with {{ }}; use << >> and <% %>
        env = jinja2.Environment(
            block_start_string="<%",
            block_end_string="%>",
            variable_start_string="<<",
            variable_end_string=">>",
            comment_start_string="<#",
            comment_end_string="#>",
            **common,
        )
    else:
        env = jinja2.Environment(**common)
    env.filters.update(tex=tex_escape, md=md_escape, mdcode=md_code, num=_number)
    return env


def _context(cells: CellsFile, frame: pd.DataFrame) -> dict[str, Any]:
    spec = cells.spec
    decimals = {c.key: c.decimals for c in spec.columns}
    groups = []
    for group, gframe in frame.groupby("group", sort=False):
        rows = [
            {
                "key": row,
                "label": spec.row(row).labels[group],
                "cells": [
                    {
                        "column": rec["column"],
                        "ours": _number(rec["ours"], decimals[rec["column"]]),
                        "paper": _number(rec["paper"], decimals[rec["column"]]),
                        "bold": bool(rec["bold"]),
                        "underline": bool(rec["underline"]),
                    }
                    for rec in rframe.to_dict("records")
                ],
            }
            for row, rframe in gframe.groupby("row", sort=False)
        ]
        groups.append({"value": group, "text": spec.group.text(group), "rows": rows})
    labels = {r.key: r for r in spec.rows}
    sources = [
        {
            "row": c.row,
            "label": labels[c.row].labels[c.group],
            "group": spec.group.text(c.group),
            "log": c.log_text,
        }
        for c in cells.cells
    ]
    rules = [
        {"style": r.style, "text": RULES[r.rule].format(group=spec.group.label)}
        for r in spec.highlight
    ]
    banner = cells.banner
    return {
        "spec": spec,
        "name": spec.name,
        "title": spec.title,
        "caption": spec.caption,
        "source": spec.source,
        "group": spec.group,
        "columns": spec.columns,
        "groups": groups,
        "rules": rules,
        "banner": banner,
        "default_banner": (
            None
            if banner
            else f"Our rows come from the certification logs listed in {cells.path.name}; "
            "their scale (training and certification settings) is not stated."
        ),
        "sources": sources,
        "cells_file": cells.path.name,
    }


def render_table(
    cells_path: str | os.PathLike, md_path: str | os.PathLike, tex_path: str | os.PathLike
) -> pd.DataFrame:
    """Render the table a cells file names to Markdown and LaTeX (each written atomically).

    Returns the long frame of our and the paper's values (see ``build_frame``)."""
    cells = load_cells(cells_path)
    frame = build_frame(cells)
    context = _context(cells, frame)
    md = _environment("md").get_template("table.md.j2").render(**context)
    tex = _environment("tex").get_template("table.tex.j2").render(**context)
    write_text_atomic(Path(md_path), md)
    write_text_atomic(Path(tex_path), tex)
    return frame
