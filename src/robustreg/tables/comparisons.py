"""Paired comparisons in results tables (issue 22): each row with a ``baseline`` against it, by
ACR, with the standard error the pairing gives, and which of the paper's orderings ours
reproduce.

Our cells are paired: a row and its baseline are certified on the same test images (and train
with the same seeds), so the difference of their ACRs has the standard error of the per-image
differences of ACR's terms (radius where correct, else 0), far smaller than the two ACRs'
own errors would suggest (``robustreg.certify.paired_difference``). With several seeds (Table
3) the pairs are the seeds' ACRs. A difference is resolved only beyond 2 SE.

An ordering of the paper (row above or below its baseline in ACR, in the paper's own values)
is then *reproduced* (ours resolved, the same way), *reversed* (resolved, the other way) or
*not resolved* (within 2 SE): computed here, never written by hand.
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
    delta: float  # our ACR minus the baseline's
    se: float
    pairs: int
    unit: str  # "images" or "seeds"
    paper: float | None  # the paper's ACR difference, where it prints both

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
    return pd.Series(certified_terms(log["radius"], log["correct"]), index=log["idx"].to_numpy())


def _pair(ours: list[Path], base: list[Path], logs: dict[Path, pd.DataFrame]):
    """(delta, se, pairs, unit), or None where the two cells cannot be paired."""
    if len(ours) != len(base):
        return None
    if len(ours) > 1:  # seeds: each seed's ACR, paired by seed
        acr = [[float(_terms(logs[p]).mean()) for p in paths] for paths in (ours, base)]
        return (*paired_difference(acr[0], acr[1]), len(ours), "seeds")
    a, b = _terms(logs[ours[0]]), _terms(logs[base[0]])
    if a.index.size != b.index.size or set(a.index) != set(b.index):
        return None
    return (*paired_difference(a.to_numpy(), b.loc[a.index].to_numpy()), a.size, "images")


def _paper_acr(row, group: Any, position: int) -> float | None:
    values = row.paper.get(group)
    if values is None:
        return None
    value = values[position]
    if isinstance(value, tuple | list):  # [mean, std] of an aggregated column
        value = value[0]
    return float(value) if isinstance(value, int | float) else None


def paired_comparisons(cells, logs: dict[Path, pd.DataFrame]) -> list[Comparison]:
    """Every (row with a baseline, group) of a results table with an ACR column whose cell
    and its baseline's can be paired (same images, or as many seeds), in the spec's order."""
    spec = cells.spec
    position = next((i for i, c in enumerate(spec.columns) if c.metric == "acr"), None)
    if position is None:
        return []
    by_key = {(c.row, c.group): list(c.logs) for c in cells.cells if c.logs}
    out = []
    for row in spec.rows:
        if row.baseline is None:
            continue
        base_row = spec.row(row.baseline)
        for group in spec.group.values:
            ours, base = by_key.get((row.key, group)), by_key.get((row.baseline, group))
            if not ours or not base:
                continue
            paired = _pair(ours, base, logs)
            if paired is None:
                continue
            paper_row, paper_base = (_paper_acr(r, group, position) for r in (row, base_row))
            paper = None if None in (paper_row, paper_base) else paper_row - paper_base
            out.append(Comparison(row.key, row.baseline, group, *paired, paper))
    return out


def _labels(spec, comparison: Comparison) -> tuple[str, str, str]:
    row, base = spec.row(comparison.row), spec.row(comparison.baseline)
    group = f"{spec.group.label} = {spec.group.text(comparison.group)}"
    return row.labels[comparison.group], base.labels[comparison.group], group


def comparison_notes(spec, comparisons: list[Comparison]) -> list[str]:
    """One note per comparison: our ACR difference, its paired SE and whether it is beyond
    2 SE."""
    notes = []
    for c in comparisons:
        row, base, group = _labels(spec, c)
        # one decimal more than the tables' ACRs, so that "within 2 SE" reads off the text
        se = "no SE" if not math.isfinite(c.se) else f"± {c.se:.4f}"
        where = "beyond" if c.resolved else "within"
        notes.append(
            f"{row} against {base}, {group}: ΔACR = {c.delta:+.4f} {se} (paired over "
            f"{c.pairs} {c.unit}), {where} 2 SE."
        )
    return notes


def ordering_summary(spec, comparisons: list[Comparison]) -> str | None:
    """The paper's ACR orderings of each row against its baseline, grouped by how ours stand
    to them (``Comparison.verdict``), in one sentence; None where the paper has none."""
    by_verdict: dict[str, list[str]] = {v: [] for v in VERDICTS}
    for c in comparisons:
        if c.verdict is None:
            continue
        row, base, group = _labels(spec, c)
        sign = ">" if c.paper > 0 else "<"
        by_verdict[c.verdict].append(f"{row} {sign} {base} at {group}")
    if not any(by_verdict.values()):
        return None
    parts = [f"{v}: {'; '.join(items)}" for v, items in by_verdict.items() if items]
    count = sum(len(items) for items in by_verdict.values())
    return (
        f"The paper's ACR orderings of each row against its baseline ({count}), by our paired "
        f"differences (resolved beyond 2 SE): {'. '.join(parts)}."
    )
