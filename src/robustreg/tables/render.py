"""The one table renderer: cells file -> pandas frame -> jinja2 templates (Markdown, LaTeX).

The cells file, which says where a table's numbers come from, is read by
``robustreg.tables.cells``. A (row, group) pair without a cell renders as missing; the paper's
value is only ever shown in its own slot, in parentheses after ours.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jinja2
import numpy as np
import pandas as pd

from robustreg.certify import average_certified_radius, certified_accuracy
from robustreg.io import write_text_atomic
from robustreg.tables.cells import Cell, CellsFile, load_cells
from robustreg.tables.comparisons import comparison_notes, ordering_summary, paired_comparisons
from robustreg.tables.robustness import Reader
from robustreg.tables.spec import ColumnSpec, RuleSpec, TableSpec
from robustreg.tables.vocabulary import ATTACKS, ROBUSTNESS, RULES

__all__ = ["build_frame", "render_table"]

FRAME_COLUMNS = [
    "row",
    "group",
    "column",
    "ours",
    "paper",
    "ours_std",
    "paper_std",
    "bold",
    "underline",
]


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
    "certified_error": lambda radius, correct, column: (
        1.0 - _metric_certified_accuracy(radius, correct, column)
    ),
}


def _read_logs(cells: CellsFile, reader: Reader) -> dict[Path, pd.DataFrame]:
    """Every log the cells file lists, checked against its job (``robustreg.tables.logs``;
    a ValueError names a bad file), each read once for the whole table by ``reader``."""
    if cells.spec.values_from == ROBUSTNESS:
        return {}  # read per column by robustness.Reader
    read = reader.outcomes if cells.spec.values_from == ATTACKS else reader.certification
    return {path: read(path) for cell in cells.cells for path in cell.logs}


def _our_values(cells: CellsFile, reader: Reader) -> pd.DataFrame:
    """One record per (cell, column): our value as printed (percent where asked), and for
    several logs (seeds) their mean and sample standard deviation."""
    spec = cells.spec
    logs = _read_logs(cells, reader)
    records = []
    for cell in cells.cells:
        if spec.settings:
            values = [[cell.settings[c.param] for c in spec.columns]]
        elif spec.values_from == ATTACKS:
            values = [_outcome_values(cell, logs, spec)]
        elif spec.values_from == ROBUSTNESS:
            values = [
                [
                    math.nan
                    if c.key not in cell.files
                    else reader.value(c, cell.files[c.key]) * (100.0 if c.percent else 1.0)
                    for c in spec.columns
                ]
            ]
        else:
            values = [_log_values(logs[path], path, spec) for path in cell.logs]
        for j, column in enumerate(spec.columns):
            seeds = [v[j] for v in values]
            ours, std = seeds[0], math.nan
            if len(seeds) > 1:
                ours, std = float(np.mean(seeds)), float(np.std(seeds, ddof=1))
            records.append(
                {
                    "row": cell.row,
                    "group": cell.group,
                    "column": column.key,
                    "ours": ours,
                    "ours_std": std,
                }
            )
    return pd.DataFrame.from_records(
        records, columns=["row", "group", "column", "ours", "ours_std"]
    )


def _log_values(log: pd.DataFrame, path: Path, spec: TableSpec) -> list[float]:
    radius = log["radius"].to_numpy(dtype=np.float64)
    correct = log["correct"].to_numpy()
    out = []
    for column in spec.columns:
        try:
            value = METRIC_FUNCS[column.metric](radius, correct, column)
        except ValueError as err:
            raise ValueError(f"{path}: {column.metric}: {err}") from None
        out.append(value * 100.0 if column.percent else value)
    return out


def _outcome_values(cell: Cell, logs: dict[Path, pd.DataFrame], spec: TableSpec) -> list[float]:
    """Robust accuracy per column: the fraction of attacked images still classified
    correctly (``robust`` of the column's outcome file); NaN for a column without one. A
    worst-case column: the fraction robust under every attack of its columns (``worst_case``)."""
    out = []
    for column in spec.columns:
        if column.of:
            paths = [cell.outcomes[k] for k in column.of if k in cell.outcomes]
            value = worst_case(paths, [logs[p] for p in paths]) if paths else math.nan
        else:
            path = cell.outcomes.get(column.key)
            value = math.nan if path is None else float(logs[path]["robust"].mean())
        out.append(value * 100.0 if column.percent else value)
    return out


def worst_case(paths: list[Path], logs: list[pd.DataFrame]) -> float:
    """The fraction of images robust under every one of ``logs`` (outcome logs of the same
    images, matched by idx): an image counts only if it survives each attack."""
    order = np.sort(logs[0]["idx"].to_numpy())
    robust = np.ones(order.size, dtype=bool)
    for path, log in zip(paths, logs, strict=True):
        by_idx = log.set_index("idx")["robust"]
        if by_idx.index.size != order.size or not np.array_equal(np.sort(by_idx.index), order):
            raise ValueError(
                f"{path}: holds other images than {paths[0]}; a worst case needs the same ones"
            )
        robust &= by_idx.loc[order].to_numpy() == 1
    return float(robust.mean())


def _attack_notes(cells: CellsFile, reader: Reader) -> list[str]:
    """What the outcome logs of an attacks table say beyond its numbers: the rows whose
    worst-case columns leave out a column (not evaluated, or no file), and each cell where
    AutoAttack's Square broke images (``PART_COLUMN``), which its gradient-based attacks had
    left robust before it in the cascade: the sign of gradient masking AutoAttack exists to
    show (Croce & Hein 2020, section 5)."""
    from robustreg.attacks.outcomes import PART_COLUMN

    spec = cells.spec
    notes = []
    for cell in cells.cells:
        label = spec.row(cell.row).labels[cell.group]
        for column in spec.columns:
            left_out = [spec.column(k).label for k in column.of if k not in cell.outcomes]
            if left_out and len(left_out) < len(column.of):
                notes.append(
                    f"{label}, {column.label}: over the attacks evaluated, without "
                    f"{', '.join(left_out)}."
                )
            path = cell.outcomes.get(column.key)
            if path is None:
                continue
            log = reader.outcomes(path)
            square = int((log[PART_COLUMN] == "square").sum()) if PART_COLUMN in log else 0
            if square:
                notes.append(
                    f"{label}, {column.label}: Square, AutoAttack's gradient-free attack, broke "
                    f"{square} of {len(log)} images that its gradient-based attacks had left "
                    "robust, a sign of gradient masking."
                )
    return notes


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


def _rule_second_best_per_group(frame: pd.DataFrame, spec: TableSpec, rule: RuleSpec) -> pd.Series:
    """The second highest distinct value of ours in each (group, column), as printed: the
    ATENT paper's "best and second best" highlight (section 4, Defenses)."""
    cols = rule.columns or tuple(c.key for c in spec.columns)
    signed = frame["_shown"].where(frame["_better"] == "higher", -frame["_shown"])
    rank = signed.groupby([frame["group"], frame["column"]], sort=False).rank(
        method="dense", ascending=False
    )
    return (rank == 2) & frame["column"].isin(cols) & frame["_shown"].notna()


def _rule_best_acr_per_group(frame: pd.DataFrame, spec: TableSpec, rule: RuleSpec) -> pd.Series:
    acr = tuple(c.key for c in spec.columns if c.metric == "acr")
    return _rule_best_per_group(frame, spec, RuleSpec(rule.style, rule.rule, rule.columns or acr))


RULE_FUNCS: dict[str, Callable[[pd.DataFrame, TableSpec, RuleSpec], pd.Series]] = {
    "improves_baseline": _rule_improves_baseline,
    "best_per_group": _rule_best_per_group,
    "best_acr_per_group": _rule_best_acr_per_group,
    "second_best_per_group": _rule_second_best_per_group,
}


# ------------------------------------------------------------------------------ the frame


def build_frame(cells: CellsFile, reader: Reader | None = None) -> pd.DataFrame:
    """Long frame in spec order, one record per column for each (group, row) the row
    exists in: row, group, column, ours, paper, ours_std, paper_std, bold, underline.

    ``ours`` is NaN where no cell was given; ``paper`` is NaN where the paper prints
    nothing. ``ours_std`` (two or more logs) and ``paper_std`` are NaN outside aggregate
    columns. In a settings table ``ours`` and ``paper`` hold numbers and strings, and a
    paper value with ``paper_divide_by`` is converted (printed / divisor). Highlights are
    computed on our values only. ``reader`` keeps the files of a robustness table read (one
    is made if not given)."""
    spec = cells.spec
    records = []
    for group in spec.group.values:
        for row in spec.rows:
            if not row.in_group(group):
                continue
            paper = row.paper.get(group) or (None,) * len(spec.columns)
            for column, value in zip(spec.columns, paper, strict=True):
                mean, std = _paper_number(column, value)
                records.append(
                    {
                        "row": row.key,
                        "group": group,
                        "column": column.key,
                        "paper": mean,
                        "paper_std": std,
                        "_decimals": column.decimals,
                        "_better": column.better,
                    }
                )
    frame = pd.DataFrame.from_records(records).merge(
        _our_values(cells, reader or Reader()), on=["row", "group", "column"], how="left"
    )
    # a settings table's values mix strings and numbers
    numeric = ["ours_std", "paper_std"] + ([] if spec.settings else ["ours", "paper"])
    frame = frame.astype(dict.fromkeys(numeric, "float64"))
    for style in ("bold", "underline"):
        frame[style] = False
    if spec.highlight:
        frame["_shown"] = _shown(frame["ours"], frame["_decimals"])
        for rule in spec.highlight:
            frame[rule.style] = frame[rule.style] | RULE_FUNCS[rule.rule](frame, spec, rule)
    frame.attrs["group_by"] = spec.group.key
    frame.attrs["table"] = spec.name
    return frame[FRAME_COLUMNS].reset_index(drop=True)


def _paper_number(column: ColumnSpec, value: Any) -> tuple[Any, float]:
    """(value, std) in our units: [mean, std] pairs split, divided settings converted."""
    if value is None:
        return math.nan, math.nan
    if isinstance(value, tuple):
        return value
    if column.paper_divide_by is not None:
        return value / column.paper_divide_by, math.nan
    return value, math.nan


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


def _plain(x: float) -> str:
    """A number as the paper printed it: 255, not 255.0."""
    return str(int(x)) if float(x).is_integer() else repr(float(x))


def _ours_text(column: ColumnSpec, value: Any, std: float) -> str | None:
    if isinstance(value, str):
        return value
    if pd.isna(value):
        return None
    text = f"{value:.{column.decimals}f}"
    if column.aggregate:
        text += " ± " + ("–" if pd.isna(std) else f"{std:.{column.decimals}f}")
    return text


def _paper_text(column: ColumnSpec, value: Any) -> str | None:
    """The paper's value as stored in the spec, printed like ours."""
    d = column.decimals
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, tuple):
        return f"{value[0]:.{d}f} ± {value[1]:.{d}f}"
    if column.paper_divide_by is not None:
        divisor = column.paper_divide_by
        return f"{value / divisor:.{d}f} = {_plain(value)}/{_plain(divisor)}"
    return f"{value:.{d}f}"


def environment(kind: str) -> jinja2.Environment:
    """The jinja2 environment for ``templates/*.<kind>.j2`` (kind: md, tex or html)."""
    common = dict(
        loader=jinja2.PackageLoader("robustreg.tables", "templates"),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
        autoescape=kind == "html",
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
    env.filters.update(tex=tex_escape, md=md_escape, mdcode=md_code)
    return env


def _file_origins(cell: Cell) -> list[str]:
    """A robustness cell's files as written in the cells file, each set once: columns that
    read the same files (a suite's outcome logs serve every error column of its norm) share
    one line, ``"clean, emp2, emp8: a.tsv, b.tsv"``."""
    as_written = dict(zip(cell.logs, cell.log_texts, strict=True))
    columns: dict[tuple[Path, ...], list[str]] = {}
    for key, paths in cell.files.items():
        columns.setdefault(paths, []).append(key)
    return [
        f"{', '.join(keys)}: {', '.join(as_written[p] for p in paths)}"
        for paths, keys in columns.items()
    ]


def sources(cells: CellsFile, rows: tuple[str, ...] | None = None) -> list[dict[str, Any]]:
    """Where each cell's values come from (its logs, or the experiment a settings row
    trains), labelled like the table; only ``rows`` if given."""
    spec = cells.spec
    order = {row.key: i for i, row in enumerate(spec.rows)}
    return [
        {
            "row": c.row,
            "label": spec.row(c.row).labels[c.group],
            "group": spec.group.text(c.group),
            "origins": (
                [c.experiment]
                if c.experiment
                else [f"{key}: {text}" for key, text in zip(c.outcomes, c.log_texts, strict=True)]
                if c.outcomes
                else _file_origins(c)
                if c.files
                else list(c.log_texts)
            ),
        }
        for c in sorted(cells.cells, key=lambda c: order[c.row])
        if rows is None or c.row in rows
    ]


# ------------------------------------------------------------------------------ layouts


def _text(text: str) -> dict[str, Any]:
    return {"kind": "text", "text": text, "span": 1}


_NOT_APPLICABLE = {"kind": "empty"}
# a (row, column) the paper printed as "-": never evaluated, there or here
_NOT_EVALUATED = {"kind": "dash"}
_CITED = "cited"  # what a cited row prints in place of our value


def _value_cells(spec: TableSpec, frame: pd.DataFrame) -> dict[tuple[str, Any], list[dict]]:
    """(row, group) -> one printable cell per column: ours, the paper's, highlights."""
    index = {c.key: (j, c) for j, c in enumerate(spec.columns)}
    out: dict[tuple[str, Any], list[dict]] = {}
    for rec in frame.to_dict("records"):
        j, column = index[rec["column"]]
        row = spec.row(rec["row"])
        paper = row.paper.get(rec["group"])
        if column.key in row.not_evaluated:
            out.setdefault((rec["row"], rec["group"]), []).append(_NOT_EVALUATED)
            continue
        out.setdefault((rec["row"], rec["group"]), []).append(
            {
                "kind": "value",
                "ours": _CITED if row.cited else _ours_text(column, rec["ours"], rec["ours_std"]),
                "paper": _paper_text(column, None if paper is None else paper[j]),
                "bold": bool(rec["bold"]),
                "underline": bool(rec["underline"]),
            }
        )
    return out


def _merge_decisions(
    spec: TableSpec, values: dict[tuple[str, Any], list[dict]]
) -> tuple[dict[str, tuple[Any, set]], list[str]]:
    """Member row key -> (its merge, the groups where the members print as one line),
    and a note for each merge whose members' values differ somewhere."""
    decisions: dict[str, tuple[Any, set]] = {}
    notes = []
    for merge in spec.merges:
        first = spec.row(merge.rows[0])
        own = [g for g in spec.group.values if first.in_group(g)]
        differ = [
            g
            for g in own
            if len({tuple(c["ours"] for c in values[(key, g)]) for key in merge.rows}) > 1
        ]
        # a blocks line shows one group; in the other layouts a row's line or block shows
        # all its groups, so one difference anywhere keeps the members apart
        merged = (
            set(own) - set(differ) if spec.layout == "blocks" else set() if differ else set(own)
        )
        for key in merge.rows:
            decisions[key] = (merge, merged)
        if differ:
            g = differ[0]
            members = [spec.row(key).labels[g] for key in merge.rows]
            where = ", ".join(spec.group.text(v) for v in differ)
            notes.append(
                f"The paper prints {', '.join(members[:-1])} and {members[-1]} as one row, "
                f"“{merge.labels[g]}”, since its values coincide; ours differ at "
                f"{spec.group.label} = {where}, so they are shown separately, each beside the "
                "paper's values."
            )
    return decisions, notes


def _entries(spec: TableSpec, decisions: dict, group: Any = None):
    """(row whose values print, its label cells by group) in spec order: merged members
    once, as their first member with the merge's label; only rows of ``group`` if given."""
    for row in spec.rows:
        if group is not None and not row.in_group(group):
            continue
        merge, merged = decisions.get(row.key, (None, set()))
        if merged and (group is None or group in merged):
            if row.key == merge.rows[0]:
                yield row, merge.label_cells
            continue
        yield row, row.label_cells


def _print_repeats_once(lines: list[list[dict]], pos: int) -> None:
    """Consecutive lines repeating the text at ``pos`` print it once, spanning them."""
    start = 0
    for i in range(1, len(lines) + 1):
        if i == len(lines) or lines[i][pos]["text"] != lines[start][pos]["text"]:
            lines[start][pos]["span"] = i - start
            for k in range(start + 1, i):
                lines[k][pos]["span"] = 0
            start = i


def _grid(spec: TableSpec, frame: pd.DataFrame) -> dict[str, Any]:
    """Header and blocks of lines of cells for the spec's layout, and notes on merges."""
    values = _value_cells(spec, frame)
    decisions, notes = _merge_decisions(spec, values)
    group = spec.group
    shown_group = [group.label] if group.show else []
    labels = list(spec.label_columns)
    note = "ours (paper)"
    super_header = None
    blocks: list[list[list[dict]]] = []
    if spec.layout == "blocks":
        text_header, label_pos = shown_group + labels, len(shown_group)
        value_header = [c.label for c in spec.columns]
        for g in group.values:
            lead = [group.text(g)] if group.show else []
            blocks.append(
                [
                    [_text(t) for t in (*lead, *cells[g])] + values[(row.key, g)]
                    for row, cells in _entries(spec, decisions, g)
                ]
            )
    elif spec.layout == "rows_first":
        text_header, label_pos = labels + shown_group, 0
        value_header = [c.label for c in spec.columns]
        for row, cells in _entries(spec, decisions):
            blocks.append(
                [
                    [_text(t) for t in (*cells[g], *([group.text(g)] if group.show else []))]
                    + values[(row.key, g)]
                    for g in group.values
                    if row.in_group(g)
                ]
            )
    elif spec.layout == "columns_as_rows":
        (g,) = group.values
        text_header, label_pos = labels, 0
        entries = list(_entries(spec, decisions, g))
        value_header = [cells[g][0] for _, cells in entries]
        blocks.append(
            [
                [_text(column.label)] + [values[(row.key, g)][j] for row, _ in entries]
                for j, column in enumerate(spec.columns)
            ]
        )
    else:  # groups_as_columns: the one column's label heads the group columns
        text_header, label_pos = labels, 0
        value_header = [f"{group.label} = {group.text(g)}" for g in group.values]
        metric = spec.columns[0].label
        note = f"{metric}, {note}"
        super_header = {"text": metric, "skip": len(labels), "span": len(group.values)}
        lines = []
        for row, cells in _entries(spec, decisions):
            first = next(g for g in group.values if row.in_group(g))
            lines.append(
                [_text(t) for t in cells[first]]
                + [
                    values[(row.key, g)][0] if row.in_group(g) else _NOT_APPLICABLE
                    for g in group.values
                ]
            )
        blocks.append(lines)
    for lines in blocks:
        if spec.layout == "blocks" and group.show:
            _print_repeats_once(lines, 0)
        _print_repeats_once(lines, label_pos)
    # the note heads the values: it goes on the header just left of them
    return {
        "header": [
            {"text": text, "align": "l", "note": note if i == len(text_header) - 1 else None}
            for i, text in enumerate(text_header)
        ]
        + [{"text": text, "align": "r", "note": None} for text in value_header],
        "super_header": super_header,
        "blocks": blocks,
        "notes": notes,
    }


def _context(cells: CellsFile, frame: pd.DataFrame, reader: Reader) -> dict[str, Any]:
    spec = cells.spec
    rules = [
        {
            "style": r.style,
            "text": RULES[r.rule].format(
                group=spec.group.label,
                along="line" if spec.layout == "columns_as_rows" else "column",
            ),
        }
        for r in spec.highlight
    ]
    divided = [
        f"{c.label}: the paper prints {c.label} × {d}; its values are shown divided by {d}, "
        f"as value = printed/{d}."
        for c in spec.columns
        if c.paper_divide_by is not None
        for d in [_plain(c.paper_divide_by)]
    ]
    grid = _grid(spec, frame)
    cited = [
        f"{row.labels[next(iter(row.labels))]}: the paper's values are cited from "
        f"{row.cited}, a method outside this project; nothing of ours is computed for it."
        for row in spec.rows
        if row.cited
    ]
    measured = []
    banner = cells.banner
    if spec.values_from == ROBUSTNESS:
        measured = reader.notes(spec, cells.cells)
    elif not spec.settings:
        comparisons = paired_comparisons(cells, _read_logs(cells, reader))
        measured = comparison_notes(spec, comparisons)
        if spec.values_from == ATTACKS:
            measured += _attack_notes(cells, reader)
        orderings = ordering_summary(spec, comparisons)
        if orderings and banner:
            banner = f"{banner} {orderings}"
        elif orderings:
            measured.insert(0, orderings)
    if spec.settings:
        default_banner = (
            f"Our rows are the training settings listed in {cells.path.name}; the scale "
            "they were run at is not stated."
        )
    elif spec.values_from == ATTACKS:
        default_banner = (
            f"Our rows come from the attack outcome files listed in {cells.path.name}; "
            "their scale (training and attack settings) is not stated."
        )
    elif spec.values_from == ROBUSTNESS:
        default_banner = (
            f"Our rows come from the attack outcome, bounds and model files listed in "
            f"{cells.path.name}; their scale (training, attack and bound settings) is not "
            "stated."
        )
    else:
        default_banner = (
            f"Our rows come from the certification logs listed in {cells.path.name}; "
            "their scale (training and certification settings) is not stated."
        )
    return {
        "spec": spec,
        "name": spec.name,
        "title": spec.title,
        "caption": spec.caption,
        "source": spec.source,
        "group": spec.group,
        **grid,
        "notes": [*cells.notes, *divided, *grid["notes"], *cited, *measured],
        "rules": rules,
        "banner": banner,
        "default_banner": None if banner else default_banner,
        "settings": spec.settings,
        "origin": {
            "settings": "the training settings",
            ATTACKS: "these attack outcome files",
            ROBUSTNESS: "these attack outcome, bounds and model files",
        }.get(spec.values_from, "these certification logs"),
        "not_applicable": any(
            c["kind"] == "empty" for lines in grid["blocks"] for line in lines for c in line
        ),
        "not_evaluated": any(
            c["kind"] == "dash" for lines in grid["blocks"] for line in lines for c in line
        ),
        "sources": sources(cells),
        "cells_file": cells.path.name,
    }


def render_table(
    cells_path: str | os.PathLike,
    md_path: str | os.PathLike,
    tex_path: str | os.PathLike,
    spec_dir: str | os.PathLike | None = None,
    html_path: str | os.PathLike | None = None,
    logs_root: str | os.PathLike | None = None,
) -> pd.DataFrame:
    """Render the table a cells file names to Markdown and LaTeX, and to HTML if
    ``html_path`` is given (each written atomically). The table spec comes from ``spec_dir``
    (default: the package's specs folder); the logs from ``logs_root`` (``load_cells``).

    Returns the long frame of our and the paper's values (see ``build_frame``)."""
    cells = load_cells(cells_path, spec_dir, logs_root)
    reader = Reader()
    frame = build_frame(cells, reader)
    context = _context(cells, frame, reader)
    md = environment("md").get_template("table.md.j2").render(**context)
    tex = environment("tex").get_template("table.tex.j2").render(**context)
    write_text_atomic(Path(md_path), md)
    write_text_atomic(Path(tex_path), tex)
    if html_path is not None:
        html = environment("html").get_template("table.html.j2").render(**context)
        write_text_atomic(Path(html_path), html)
    return frame
