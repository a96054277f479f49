"""Table specs: one YAML file per paper table in ``robustreg/tables/specs/``.

A spec says what a table looks like and what the paper printed; it knows nothing
about where our numbers come from (that is the cells file, see ``render.py``).

Schema (``<name>.yaml``)::

    name: table2_mnist                 # must equal the file's stem
    source: {paper: "...", table: 2, where: "supplement, section B"}   # free-form mapping
    title: "..."                       # heading of the rendered table
    caption: "..."                     # paragraph under the heading / LaTeX caption
    group_by:                          # the key that splits the table into row blocks
      key: sigma                       #   name used by cells files (``sigma: 0.25``)
      label: "σ"                       #   header of the group column
      format: "{:.2f}"                 #   optional str.format for printing a value
      values: [0.25, 0.50, 1.00]       #   ordered; numbers or strings
    columns:                           # ordered metric columns
      - key: acr                       #   unique within the spec
        label: ACR                     #   header text
        metric: acr                    #   one of METRICS
        decimals: 3                    #   printed decimals (ours and paper alike)
        # radius: 0.25                 #   metric parameter (certified_accuracy)
        # percent: true                #   print fractions as percent (x100)
        # better: higher               #   higher | lower, used by highlight rules
    highlight:                         # style -> named rule (see RULES), or
      bold: improves_baseline          #   {rule: <name>, columns: [<column key>, ...]}
      underline: best_acr_per_group
    rows:                              # ordered, the paper's order
      - key: gaussian                  #   unique; what cells files name
        label: Gaussian                #   str, or {<group value>: str} for every group
        baseline: gaussian             #   optional: row key this row improves on
        paper:                         #   optional: {<group value>: [one value per column]}
          0.25: [0.911, 99.2, ...]     #   null for a value the paper does not print

Paper values are stored as printed (percent for accuracies), never scaled.
Highlight rules apply to OUR numbers only; their meaning is in ``RULES``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

# metric name -> required column parameters. Implemented in render.METRIC_FUNCS.
METRICS: dict[str, tuple[str, ...]] = {
    "acr": (),
    "certified_accuracy": ("radius",),
}

# rule name -> footnote text ({group} is the group label). Implemented in render.RULE_FUNCS.
RULES: dict[str, str] = {
    "improves_baseline": (
        "our value strictly exceeds our value for the row's baseline (same {group}, same column)"
    ),
    "best_per_group": "best of our values in the column per {group} (ties all marked)",
    "best_acr_per_group": "best of our ACRs per {group} (ties all marked)",
}

STYLES = ("bold", "underline")

_TOP_KEYS = {"name", "source", "title", "caption", "group_by", "columns", "highlight", "rows"}
_GROUP_KEYS = {"key", "label", "format", "values"}
_COLUMN_KEYS = {"key", "label", "metric", "decimals", "radius", "percent", "better"}
_ROW_KEYS = {"key", "label", "baseline", "paper"}
_RULE_KEYS = {"rule", "columns"}


@dataclass(frozen=True)
class GroupSpec:
    key: str
    label: str
    values: tuple[Any, ...]
    format: str = "{}"

    def match(self, value: Any) -> Any:
        """The spec's own group value equal to ``value`` (0.5 == "0.50" == 0.50), or None."""
        for v in self.values:
            if _same_group_value(v, value):
                return v
        return None

    def text(self, value: Any) -> str:
        return self.format.format(value)


@dataclass(frozen=True)
class ColumnSpec:
    key: str
    label: str
    metric: str
    decimals: int
    radius: float | None = None
    percent: bool = False
    better: str = "higher"


@dataclass(frozen=True)
class RuleSpec:
    style: str
    rule: str
    columns: tuple[str, ...] | None = None  # None: the rule's default columns


@dataclass(frozen=True)
class RowSpec:
    key: str
    labels: dict[Any, str]  # group value -> label
    baseline: str | None = None
    paper: dict[Any, tuple[float | None, ...]] = field(default_factory=dict)


@dataclass(frozen=True)
class TableSpec:
    name: str
    path: Path
    source: dict[str, Any]
    title: str
    caption: str
    group: GroupSpec
    columns: tuple[ColumnSpec, ...]
    rows: tuple[RowSpec, ...]
    highlight: tuple[RuleSpec, ...]

    def row(self, key: str) -> RowSpec | None:
        return next((r for r in self.rows if r.key == key), None)

    def column(self, key: str) -> ColumnSpec | None:
        return next((c for c in self.columns if c.key == key), None)


def specs_dir() -> Path:
    """The package's ``tables/specs`` folder."""
    return Path(str(resources.files("robustreg.tables") / "specs"))


def available_specs(directory: Path | None = None) -> list[str]:
    directory = Path(directory) if directory is not None else specs_dir()
    return sorted(p.stem for p in directory.glob("*.yaml"))


def load_spec(name: str, directory: str | Path | None = None) -> TableSpec:
    """Load and validate spec ``name`` (file ``<name>.yaml``) from ``directory``
    (default: the package's specs folder). Problems raise a one-line ValueError
    naming the file and the offending key."""
    directory = Path(directory) if directory is not None else specs_dir()
    if not isinstance(name, str) or not name or "/" in name or "\\" in name:
        raise ValueError(f"invalid table spec name {name!r}")
    path = directory / f"{name}.yaml"
    if not path.is_file():
        known = ", ".join(available_specs(directory)) or "none"
        raise ValueError(f"unknown table spec {name!r}: no {path} (known: {known})")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        raise ValueError(f"{path}: not valid YAML: {_one_line(err)}") from None
    return _parse(raw, path)


# --------------------------------------------------------------------------- parsing


class _Checker:
    def __init__(self, path: Path):
        self.path = path

    def fail(self, where: str, msg: str) -> ValueError:
        return ValueError(f"{self.path}: {where}: {msg}")

    def mapping(self, obj: Any, where: str, allowed: set[str], required: set[str]) -> dict:
        if not isinstance(obj, dict):
            raise self.fail(where, f"expected a mapping, got {type(obj).__name__}")
        unknown = sorted(str(k) for k in obj if k not in allowed)
        if unknown:
            raise self.fail(
                where, f"unknown key {unknown[0]!r} (allowed: {', '.join(sorted(allowed))})"
            )
        missing = sorted(required - obj.keys())
        if missing:
            raise self.fail(where, f"missing key {missing[0]!r}")
        return obj

    def string(self, obj: Any, where: str) -> str:
        if not isinstance(obj, str) or not obj.strip():
            raise self.fail(where, f"expected a non-empty string, got {obj!r}")
        return obj

    def number(self, obj: Any, where: str) -> float:
        if isinstance(obj, bool) or not isinstance(obj, int | float) or not math.isfinite(obj):
            raise self.fail(where, f"expected a finite number, got {obj!r}")
        return float(obj)


def _parse(raw: Any, path: Path) -> TableSpec:
    c = _Checker(path)
    top = c.mapping(raw, "top level", _TOP_KEYS, _TOP_KEYS - {"highlight", "source"})
    name = c.string(top["name"], "name")
    if name != path.stem:
        raise c.fail("name", f"{name!r} differs from the file name {path.stem!r}")
    source = top.get("source") or {}
    if not isinstance(source, dict):
        raise c.fail("source", "expected a mapping")

    group = _parse_group(c, top["group_by"])
    columns = _parse_columns(c, top["columns"])
    rows = _parse_rows(c, top["rows"], group, len(columns))
    highlight = _parse_highlight(c, top.get("highlight") or {}, columns)
    return TableSpec(
        name=name,
        path=path,
        source=source,
        title=c.string(top["title"], "title"),
        caption=c.string(top["caption"], "caption"),
        group=group,
        columns=columns,
        rows=rows,
        highlight=highlight,
    )


def _parse_group(c: _Checker, obj: Any) -> GroupSpec:
    g = c.mapping(obj, "group_by", _GROUP_KEYS, {"key", "values"})
    key = c.string(g["key"], "group_by.key")
    if key in {"row", "log"}:
        raise c.fail("group_by.key", f"{key!r} is reserved in cells files")
    values = g["values"]
    if not isinstance(values, list) or not values:
        raise c.fail("group_by.values", "expected a non-empty list")
    for i, v in enumerate(values):
        if isinstance(v, bool) or not isinstance(v, int | float | str):
            raise c.fail(f"group_by.values[{i}]", f"expected a number or string, got {v!r}")
        if any(_same_group_value(v, w) for w in values[:i]):
            raise c.fail(f"group_by.values[{i}]", f"duplicate value {v!r}")
    fmt = g.get("format", "{}")
    try:
        for v in values:
            c.string(fmt, "group_by.format").format(v)
    except (ValueError, IndexError, KeyError) as err:
        raise c.fail("group_by.format", f"{fmt!r} cannot format {v!r}: {err}") from None
    label = c.string(g.get("label", key), "group_by.label")
    return GroupSpec(key=key, label=label, values=tuple(values), format=fmt)


def _parse_columns(c: _Checker, obj: Any) -> tuple[ColumnSpec, ...]:
    if not isinstance(obj, list) or not obj:
        raise c.fail("columns", "expected a non-empty list")
    out: list[ColumnSpec] = []
    for i, col in enumerate(obj):
        where = f"columns[{i}]"
        col = c.mapping(col, where, _COLUMN_KEYS, {"key", "label", "metric", "decimals"})
        key = c.string(str(col["key"]), f"{where}.key")
        if any(o.key == key for o in out):
            raise c.fail(f"{where}.key", f"duplicate column key {key!r}")
        metric = col["metric"]
        if metric not in METRICS:
            raise c.fail(
                f"{where}.metric", f"unknown metric {metric!r} (known: {', '.join(METRICS)})"
            )
        for param in METRICS[metric]:
            if param not in col:
                raise c.fail(where, f"metric {metric!r} needs key {param!r}")
        radius = c.number(col["radius"], f"{where}.radius") if "radius" in col else None
        decimals = col["decimals"]
        if isinstance(decimals, bool) or not isinstance(decimals, int) or not 0 <= decimals <= 6:
            raise c.fail(f"{where}.decimals", f"expected an integer 0..6, got {decimals!r}")
        percent = col.get("percent", False)
        if not isinstance(percent, bool):
            raise c.fail(f"{where}.percent", f"expected true/false, got {percent!r}")
        better = col.get("better", "higher")
        if better not in ("higher", "lower"):
            raise c.fail(f"{where}.better", f"expected 'higher' or 'lower', got {better!r}")
        out.append(
            ColumnSpec(
                key=key,
                label=c.string(str(col["label"]), f"{where}.label"),
                metric=metric,
                decimals=decimals,
                radius=radius,
                percent=percent,
                better=better,
            )
        )
    return tuple(out)


def _parse_rows(c: _Checker, obj: Any, group: GroupSpec, n_columns: int) -> tuple[RowSpec, ...]:
    if not isinstance(obj, list) or not obj:
        raise c.fail("rows", "expected a non-empty list")
    rows: list[RowSpec] = []
    for i, row in enumerate(obj):
        where = f"rows[{i}]"
        row = c.mapping(row, where, _ROW_KEYS, {"key", "label"})
        key = c.string(row["key"], f"{where}.key")
        where = f"rows[{key}]"
        if any(r.key == key for r in rows):
            raise c.fail(f"{where}.key", f"duplicate row key {key!r}")
        labels = _per_group(c, row["label"], f"{where}.label", group, all_required=True)
        if isinstance(labels, str):
            labels = dict.fromkeys(group.values, labels)
        for g, text in labels.items():
            c.string(text, f"{where}.label[{g}]")
        paper: dict[Any, tuple[float | None, ...]] = {}
        for g, values in _per_group(c, row.get("paper") or {}, f"{where}.paper", group).items():
            w = f"{where}.paper[{g}]"
            if not isinstance(values, list) or len(values) != n_columns:
                got = len(values) if isinstance(values, list) else type(values).__name__
                raise c.fail(
                    w, f"expected a list of {n_columns} values (one per column), got {got}"
                )
            paper[g] = tuple(
                None if v is None else c.number(v, f"{w}[{j}]") for j, v in enumerate(values)
            )
        baseline = row.get("baseline")
        if baseline is not None:
            baseline = c.string(baseline, f"{where}.baseline")
        rows.append(RowSpec(key=key, labels=labels, baseline=baseline, paper=paper))
    keys = {r.key for r in rows}
    for r in rows:
        if r.baseline is not None and (r.baseline not in keys or r.baseline == r.key):
            raise c.fail(f"rows[{r.key}].baseline", f"{r.baseline!r} is not another row's key")
    return tuple(rows)


def _per_group(c: _Checker, obj: Any, where: str, group: GroupSpec, all_required: bool = False):
    """A str passes through; a mapping gets its keys matched to the group values."""
    if isinstance(obj, str) and all_required:
        return obj
    if not isinstance(obj, dict):
        raise c.fail(
            where, "expected a mapping from group values" + (" or a string" if all_required else "")
        )
    out: dict[Any, Any] = {}
    for k, v in obj.items():
        g = group.match(k)
        if g is None:
            raise c.fail(where, f"unknown {group.key} {k!r} (known: {_values_text(group)})")
        if g in out:
            raise c.fail(where, f"duplicate {group.key} {k!r}")
        out[g] = v
    if all_required:
        missing = [g for g in group.values if g not in out]
        if missing:
            raise c.fail(where, f"no entry for {group.key} {missing[0]!r}")
    return {g: out[g] for g in group.values if g in out}


def _parse_highlight(
    c: _Checker, obj: Any, columns: tuple[ColumnSpec, ...]
) -> tuple[RuleSpec, ...]:
    if not isinstance(obj, dict):
        raise c.fail("highlight", "expected a mapping style -> rule")
    keys = {col.key for col in columns}
    out: list[RuleSpec] = []
    for style, rule in obj.items():
        where = f"highlight.{style}"
        if style not in STYLES:
            raise c.fail(where, f"unknown style {style!r} (known: {', '.join(STYLES)})")
        cols = None
        if isinstance(rule, dict):
            rule_map = c.mapping(rule, where, _RULE_KEYS, {"rule"})
            rule = rule_map["rule"]
            if "columns" in rule_map:
                cols = rule_map["columns"]
                if not isinstance(cols, list) or not cols:
                    raise c.fail(f"{where}.columns", "expected a non-empty list of column keys")
                for k in cols:
                    if str(k) not in keys:
                        raise c.fail(f"{where}.columns", f"unknown column {k!r}")
                cols = tuple(str(k) for k in cols)
        if rule not in RULES:
            raise c.fail(where, f"unknown rule {rule!r} (known: {', '.join(RULES)})")
        if rule == "best_acr_per_group" and not any(col.metric == "acr" for col in columns):
            raise c.fail(where, "rule 'best_acr_per_group' needs a column with metric 'acr'")
        out.append(RuleSpec(style=style, rule=rule, columns=cols))
    return tuple(out)


def _same_group_value(a: Any, b: Any) -> bool:
    fa, fb = _as_float(a), _as_float(b)
    if fa is not None and fb is not None:
        return math.isclose(fa, fb, rel_tol=1e-9, abs_tol=1e-12)
    return isinstance(a, str) and isinstance(b, str) and a == b


def _as_float(x: Any) -> float | None:
    if isinstance(x, bool):
        return None
    if isinstance(x, int | float):
        return float(x)
    if isinstance(x, str):
        try:
            return float(x)
        except ValueError:
            return None
    return None


def _values_text(group: GroupSpec) -> str:
    return ", ".join(group.text(v) for v in group.values)


def _one_line(err: Exception) -> str:
    return " ".join(str(err).split())
