"""Paired comparisons (issue 22): each row with a ``baseline`` against it, with the standard
error the pairing gives, and which of the paper's orderings ours reproduce.

Our cells are paired: a row and its baseline are evaluated on the same test images (and train
with the same seeds), so the difference of their values has the standard error of the
per-image differences, far smaller than the two values' own errors would suggest
(``robustreg.certify.paired_difference``):

- results tables: the ACR, whose per-image terms are the radius where correct, else 0; with
  several seeds (Table 3) the pairs are the seeds' ACRs;
- attacks tables: the robust accuracy under each column's attack, whose per-image terms are
  0 or 1 (in percentage points where the column prints percent).

A difference is resolved only beyond 2 SE. An ordering of the paper (the row above or below its
baseline, in the paper's own values) is then *reproduced* (ours resolved, the same way),
*reversed* (resolved, the other way) or *not resolved* (within 2 SE): computed here, never
written by hand.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from robustreg.certify import certified_terms, paired_difference

__all__ = ["Comparison", "comparison_notes", "ordering_summary", "paired_comparisons"]

RESOLVED_SE = 2.0
VERDICTS = ("reproduced", "not resolved", "reversed")


@dataclass(frozen=True)
class Comparison:
    row: str
    baseline: str
    group: Any
    column: str  # the compared column's key
    delta: float  # ours minus the baseline's, in the column's printed unit
    se: float
    pairs: int
    unit: str  # "images" or "seeds"
    paper: float | None  # the paper's difference, where it prints both values

    @property
    def resolved(self) -> bool:
        return math.isfinite(self.se) and abs(self.delta) > RESOLVED_SE * self.se

    @property
    def verdict(self) -> str | None:
        """How ours stand to the paper's ordering (``VERDICTS``), None where it has none."""
        if self.paper is None or self.paper == 0:
            return None
        if not self.resolved:
            return "not resolved"
        return "reproduced" if (self.delta > 0) == (self.paper > 0) else "reversed"


def _terms(log: pd.DataFrame) -> pd.Series:
    """Per image (by idx), its term of the table's value: ACR's (certification logs) or
    robustness (attack outcome logs)."""
    if "robust" in log:
        return pd.Series(log["robust"].to_numpy(dtype=float), index=log["idx"].to_numpy())
    return pd.Series(certified_terms(log["radius"], log["correct"]), index=log["idx"].to_numpy())


def _pair(ours: list[Path], base: list[Path], logs: dict[Path, pd.DataFrame]):
    """(delta, se, pairs, unit), or None where the two cells cannot be paired."""
    if len(ours) != len(base):
        return None
    if len(ours) > 1:  # seeds: each seed's value, paired by seed
        means = [[float(_terms(logs[p]).mean()) for p in paths] for paths in (ours, base)]
        return (*paired_difference(means[0], means[1]), len(ours), "seeds")
    a, b = _terms(logs[ours[0]]), _terms(logs[base[0]])
    if a.index.size != b.index.size or set(a.index) != set(b.index):
        return None
    return (*paired_difference(a.to_numpy(), b.loc[a.index].to_numpy()), a.size, "images")


def _paper_value(row, group: Any, position: int) -> float | None:
    values = row.paper.get(group)
    if values is None:
        return None
    value = values[position]
    if isinstance(value, tuple | list):  # [mean, std] of an aggregated column
        value = value[0]
    return float(value) if isinstance(value, int | float) else None


def _compared(spec) -> list[tuple[int, Any]]:
    """(position, column) of the columns compared: a results table's ACR, an attacks table's
    attack columns (a worst case's images are not one log's)."""
    return [(i, c) for i, c in enumerate(spec.columns) if c.metric in ("acr", "robust_accuracy")]


def paired_comparisons(cells, logs: dict[Path, pd.DataFrame]) -> list[Comparison]:
    """Every (row with a baseline, group, compared column) whose cell and its baseline's can
    be paired (same images, or as many seeds), in the spec's order."""
    spec = cells.spec
    by_cell = {(c.row, c.group): c for c in cells.cells}
    out = []
    for row in spec.rows:
        if row.baseline is None:
            continue
        base_row = spec.row(row.baseline)
        for group in spec.group.values:
            for position, column in _compared(spec):
                ours, base = (
                    _logs(by_cell.get((k, group)), column) for k in (row.key, row.baseline)
                )
                paired = _pair(ours, base, logs) if ours and base else None
                if paired is None:
                    continue
                delta, se, pairs, unit = paired
                scale = 100.0 if column.percent else 1.0
                paper_row, paper_base = (_paper_value(r, group, position) for r in (row, base_row))
                paper = None if None in (paper_row, paper_base) else paper_row - paper_base
                out.append(
                    Comparison(
                        row.key, base_row.key, group, column.key, delta * scale, se * scale,
                        pairs, unit, paper,
                    )
                )  # fmt: skip
    return out


def _logs(cell, column) -> list[Path]:
    """The logs ``column`` reads in ``cell`` (None: no cell): its outcome log in an attacks
    table, the certification logs (one per seed) in a results table."""
    if cell is None:
        return []
    if column.metric == "acr":
        return list(cell.logs)
    return [cell.outcomes[column.key]] if column.key in cell.outcomes else []


def _labels(spec, c: Comparison) -> tuple[str, str, str, str]:
    """The row's and the baseline's labels, and where they are compared, as a note and as an
    ordering say it ("σ = 0.50" and "at σ = 0.50"; "ℓ2 PGD-40" and "under ℓ2 PGD-40")."""
    column = spec.column(c.column)
    if column.metric == "acr":
        where = f"{spec.group.label} = {spec.group.text(c.group)}"
        ordered = f"at {where}"
    else:
        where, ordered = column.label, f"under {column.label}"
    return _name(spec, c.row, c.group), _name(spec, c.baseline, c.group), where, ordered


def _name(spec, row: str, group: Any) -> str:
    """The row's label, named by its label column where it is a bare number (Table 6's λ)."""
    label = spec.row(row).labels[group]
    try:
        float(label)
    except ValueError:
        return label
    return f"{spec.label_columns[0]} = {label}"


def comparison_notes(spec, comparisons: list[Comparison]) -> list[str]:
    """One note per comparison: our difference, its paired SE and whether it is beyond
    2 SE."""
    notes = []
    for c in comparisons:
        row, base, where, _ = _labels(spec, c)
        acr = spec.column(c.column).metric == "acr"
        # one decimal more than the table prints, so that "within 2 SE" reads off the text
        digits = spec.column(c.column).decimals + 1
        se = "no SE" if not math.isfinite(c.se) else f"± {c.se:.{digits}f}"
        what = "ΔACR" if acr else "Δ robust accuracy"
        unit = " points" if spec.column(c.column).percent else ""
        resolved = "beyond" if c.resolved else "within"
        notes.append(
            f"{row} against {base}, {where}: {what} = {c.delta:+.{digits}f} {se}{unit} "
            f"(paired over {c.pairs} {c.unit}), {resolved} 2 SE."
        )
    return notes


def ordering_summary(spec, comparisons: list[Comparison]) -> str | None:
    """The paper's orderings of each row against its baseline, grouped by how ours stand to
    them (``Comparison.verdict``), in one sentence; None where the paper has none."""
    by_verdict: dict[str, list[str]] = {v: [] for v in VERDICTS}
    for c in comparisons:
        if c.verdict is None:
            continue
        row, base, _, ordered = _labels(spec, c)
        sign = ">" if c.paper > 0 else "<"
        by_verdict[c.verdict].append(f"{row} {sign} {base} {ordered}")
    if not any(by_verdict.values()):
        return None
    parts = [f"{v}: {'; '.join(items)}" for v, items in by_verdict.items() if items]
    count = sum(len(items) for items in by_verdict.values())
    acr = any(spec.column(c.column).metric == "acr" for c in comparisons)
    what = "ACR orderings" if acr else "orderings"
    return (
        f"The paper's {what} of each row against its baseline ({count}), by our paired "
        f"differences (resolved beyond 2 SE): {'. '.join(parts)}."
    )
