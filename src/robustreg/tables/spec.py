"""Table and figure specs: one YAML file each in ``robustreg/tables/specs/``.

A table spec says what a table looks like and what the paper printed; it knows nothing about
where our numbers come from (that is the cells file, ``robustreg.tables.cells``). A figure
spec draws a table's logs against the paper's values.

Every mapping of a spec file is declared once, below, as a dataclass whose fields are its keys:
each field a ``robustreg.settings.setting`` with its default (none: the key is required), the
``Need`` its value must meet and what it means. The loaders read each mapping against its
declaration (unknown, missing and bad keys are one-line errors naming the file and the key
path) and then check what spans keys (a metric's parameters, a row's groups, a panel's norm).
docs/table-specs.md is generated from these declarations and ``robustreg.tables.vocabulary``
(``python -m robustreg spec-docs``; tests/test_spec_docs.py fails when it is stale).

Paper values are stored as printed (percent for accuracies), never scaled. Highlight rules
apply to OUR numbers only; their meaning is in ``RULES``.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from robustreg.settings import Need, is_int, is_number, one_of, setting
from robustreg.tables.vocabulary import (
    AGGREGATES,
    ATTACKS,
    BOUNDS,
    CERTIFY,
    DISTANCE_METRICS,
    LAYOUTS,
    LINE_STYLES,
    METRICS,
    NORMS,
    ROBUSTNESS,
    RULES,
    SETTING,
    SOURCES,
    STATISTICS,
    STYLES,
)


def _choice(noun: str, choices) -> Need:
    """One of ``choices``; refused as "unknown <noun> 'x' (known: ...)"."""
    return Need(
        lambda v: isinstance(v, str) and v in choices,
        f"one of {', '.join(choices)}",
        explain=lambda v: f"unknown {noun} {v!r} (known: {', '.join(choices)})",
    )


def _below(says: str) -> Need:
    """A value whose shape its own reader checks (a list of columns, a row's label): the key
    is declared here, its contents where they are read."""
    return Need(lambda v: True, says)


_TEXT = Need(lambda v: isinstance(v, str) and bool(v.strip()), "a non-empty string")
# a column's key and label may be written as numbers in YAML ("0.25"); they are kept as text
_TEXTUAL = Need(lambda v: bool(str(v).strip()), "a non-empty string", str)
_FINITE = Need(is_number, "a finite number", float)
_FLAG = Need(lambda v: isinstance(v, bool), "true/false")
_MAPPING = Need(lambda v: v is None or isinstance(v, dict), "a mapping")
_LINE_STYLE = _choice("line style", LINE_STYLES)
_DECIMALS = Need(lambda v: is_int(v) and 0 <= v <= 6, "an integer 0..6")
# the keys a setting column refuses: it shows a setting, not a result to rank or average
_NOT_FOR_SETTINGS = ("percent", "better", "aggregate")
_NAME_DOC = "the spec's name; must equal the file's stem"
_SOURCE_DOC = 'where in the paper, free-form: {paper: "...", table: 2, where: "supplement"}'


# ------------------------------------------------------------------------- declarations


@dataclass(frozen=True)
class TableFile:
    """The top level of a table spec."""

    name: str = setting(need=_TEXT, doc=_NAME_DOC)
    title: str = setting(need=_TEXT, doc="heading of the rendered table")
    caption: str = setting(need=_TEXT, doc="paragraph under the heading; the LaTeX caption")
    group_by: Any = setting(
        need=_below("a mapping (group_by)"), doc="the key that splits the table into groups"
    )
    columns: Any = setting(
        need=_below("a list of columns"),
        doc="the metric columns, in order; all 'setting' (a settings table), all "
        "robust_accuracy/worst_case_accuracy (an attack table), all robustness metrics (a "
        "robustness table) or all certification metrics",
    )
    rows: Any = setting(need=_below("a list of rows"), doc="the rows, in the paper's order")
    kind: str = setting(
        "table",
        need=Need(lambda v: v == "table", "'table' or 'figure'"),
        doc="'table'; a figure spec says 'figure'",
    )
    source: Any = setting(None, need=_MAPPING, doc=_SOURCE_DOC)
    layout: str = setting(
        "blocks", need=_choice("layout", LAYOUTS), doc="how rows, groups and columns are laid out"
    )
    label_columns: Any = setting(
        None,
        need=Need(lambda v: isinstance(v, list) and bool(v), "a non-empty list of header strings"),
        doc="headers of the row-label columns (default: Method). Within a block, consecutive "
        "lines with the same text in the first label column print it once",
    )
    highlight: Any = setting(
        None,
        need=Need(lambda v: v is None or isinstance(v, dict), "a mapping style -> rule"),
        doc="style (bold, underline) -> a rule name, or {rule, columns}",
    )
    merge_identical: Any = setting(
        None,
        need=_below("a list of {rows, label} mappings"),
        doc="rows the paper prints as one row because their values coincide",
    )


@dataclass(frozen=True)
class GroupSpec:
    """``group_by``: the key that splits a table into groups (σ, ε, a dataset)."""

    key: str = setting(need=_TEXT, doc="the name cells files use (``sigma: 0.25``)")
    values: tuple[Any, ...] = setting(
        need=Need(lambda v: isinstance(v, list) and bool(v), "a non-empty list", tuple),
        doc="the group values, ordered; numbers or strings",
    )
    label: str = setting(None, need=_TEXT, doc="header of the group column (default: the key)")
    format: str = setting("{}", need=_TEXT, doc="str.format for printing a value")
    show: bool = setting(
        True,
        need=_FLAG,
        doc="false prints no group column (only with exactly one value; not with "
        "groups_as_columns)",
    )

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
    """An entry of ``columns``: one metric column. A metric's parameters (``radius``,
    ``param``, ``of``, ``norm``, ``eps``, ``bound``, ``statistic``) are required by it and
    refused by the others."""

    key: str = setting(need=_TEXTUAL, doc="unique within the spec; what cells files name")
    label: str = setting(need=_TEXTUAL, doc="header text")
    metric: str = setting(need=_choice("metric", METRICS), doc="what the column shows")
    decimals: int = setting(need=_DECIMALS, doc="printed decimals, ours and the paper's alike")
    radius: float | None = setting(
        None, need=_FINITE, doc="certified_accuracy, certified_error: the radius"
    )
    percent: bool = setting(False, need=_FLAG, doc="print fractions as percent (x100)")
    better: str = setting(
        "higher", need=one_of("higher", "lower"), doc="which way the highlight rules rank"
    )
    aggregate: str | None = setting(
        None,
        need=_choice("aggregate", AGGREGATES),
        doc="mean_std: a cell has one log per training seed, printed as the mean over logs "
        '"± the sample std" (ddof 1; "± –" for one log); rules compare the means; paper values '
        "are [mean, std] pairs. Certification columns only",
    )
    param: str | None = setting(
        None, need=_TEXT, doc="setting: the training setting it names in the cells file"
    )
    paper_divide_by: float | None = setting(
        None,
        need=_FINITE,
        doc="setting: the paper prints the value multiplied by this positive number; the spec "
        'stores it as printed and the table shows "value = printed/divisor"',
    )
    norm: str | None = setting(None, need=one_of(*NORMS), doc="robustness metrics: the norm")
    eps: float | None = setting(
        None, need=_FINITE, doc="robustness metrics: the distance (>= 0) a rate or ω is read at"
    )
    bound: str | None = setting(
        None, need=one_of(*BOUNDS), doc="bound metrics: l (L-bound) or omega (omega-bound)"
    )
    statistic: str | None = setting(
        None, need=one_of(*STATISTICS), doc="gradient_norm: mean or max over images"
    )
    of: tuple[str, ...] = setting(
        (),
        need=_below("a list of at least two column keys"),
        doc="worst_case_accuracy: the robust_accuracy columns it combines",
    )


@dataclass(frozen=True)
class RowEntry:
    """An entry of ``rows``."""

    key: str = setting(need=_TEXT, doc="unique; what cells files name")
    label: Any = setting(
        need=_below("a string, a list of strings or a mapping group value -> either"),
        doc="one string per label column, as a list; a plain string when there is one label "
        "column; or {group value: that} for each of the row's groups",
    )
    groups: Any = setting(
        None,
        need=_below("a non-empty list of group values"),
        doc="the group values the row exists in (default all); cells and paper values "
        "elsewhere are errors",
    )
    baseline: str | None = setting(None, need=_TEXT, doc="the row key this row improves on")
    not_evaluated: Any = setting(
        None,
        need=Need(lambda v: v is None or isinstance(v, list), "a list of column keys"),
        doc='columns the paper never evaluated for this row (printed "-"); nothing is computed '
        "for them and their paper values are null",
    )
    cited: str | None = setting(
        None,
        need=_TEXT,
        doc="the publication the paper copied this row's values from, for a method outside "
        "this project; the row prints its paper values only",
    )
    paper: Any = setting(
        None,
        need=_below("a mapping group value -> a list of values"),
        doc="{group value: [one value per column]}, as printed; null for a value the paper "
        "does not print",
    )


@dataclass(frozen=True)
class RuleEntry:
    """A value of ``highlight``: a rule name, or this mapping."""

    rule: str = setting(need=_choice("rule", RULES), doc="one of the highlight rules")
    columns: Any = setting(
        None,
        need=Need(lambda v: isinstance(v, list) and bool(v), "a non-empty list of column keys"),
        doc="the columns it marks (default: the rule's own)",
    )


@dataclass(frozen=True)
class MergeEntry:
    """An entry of ``merge_identical``: rows the paper prints as one. Where our printed
    values of the members are identical in every column (or all missing) one row with this
    label is printed, highlighted as the first member; otherwise each member is printed with
    the paper's values and a note names the groups where ours differ. A merged line spans
    one group in the blocks layout and all groups in the others."""

    rows: Any = setting(
        need=Need(lambda v: isinstance(v, list) and len(v) >= 2, "a list of two or more row keys"),
        doc="two or more row keys with the same groups and equal paper values",
    )
    label: Any = setting(need=_below("as a row's label"), doc="as a row's label")


@dataclass(frozen=True)
class FigureFile:
    """The top level of a figure spec."""

    name: str = setting(need=_TEXT, doc=_NAME_DOC)
    kind: str = setting(
        need=Need(lambda v: v == "figure", "'figure'"), doc="'figure': tells it from a table"
    )
    title: str = setting(need=_TEXT, doc="the figure's heading")
    caption: str = setting(need=_TEXT, doc="paragraph under the figure")
    table: str = setting(
        need=_TEXT,
        doc="a table spec in the same folder: its cells file supplies our logs; its rows, "
        "labels, group values and paper values are reused (certification columns without "
        "aggregate, or a robustness table)",
    )
    source: Any = setting(None, need=_MAPPING, doc=_SOURCE_DOC)
    rows: Any = setting(
        None,
        need=_below("a non-empty list of row keys"),
        doc="row keys to plot, in legend order; required without panels (then each group "
        "value gets a panel, one colour per row); with panels, exactly the panels' rows",
    )
    panels: Any = setting(
        None,
        need=_below("a non-empty list of panels"),
        doc="the panels left to right; required for a robustness figure",
    )
    styles: Any = setting(
        None,
        need=Need(lambda v: v is None or isinstance(v, dict), "a mapping row -> line style"),
        doc="plotted row -> line style (default solid)",
    )
    radius_step: float | None = setting(
        None,
        need=_FINITE,
        doc="spacing (> 0) of the radius grid of our curves: required for a figure of "
        "certification logs, refused for a robustness figure",
    )


@dataclass(frozen=True)
class PanelSpec:
    """An entry of ``panels``. A certification figure's panel has a title and rows and draws a
    line per (row, group value), one colour per group value; a row is in one panel only. A
    robustness figure's panel (% error against adversarial distance) also has a norm and
    eps_max and draws a line per row; a row may be in several panels, one per norm."""

    title: str = setting(need=_TEXT, doc='"(a) CIFAR-10"')
    rows: tuple[str, ...] = setting(need=_below("a non-empty list of row keys"), doc="row keys")
    norm: str | None = setting(
        None,
        need=one_of(*NORMS),
        doc="robustness figures: the distance the x axis measures; each row needs an "
        "empirical_error or empirical_distance column in it that it evaluates",
    )
    eps_max: float | None = setting(
        None, need=_FINITE, doc="robustness figures: the x axis runs from 0 to this (> 0)"
    )


# the declarations docs/table-specs.md documents, in its order, under these headings
DECLARATIONS = {
    "Table spec": TableFile,
    "group_by": GroupSpec,
    "columns[]": ColumnSpec,
    "rows[]": RowEntry,
    "highlight.<style>": RuleEntry,
    "merge_identical[]": MergeEntry,
    "Figure spec": FigureFile,
    "panels[]": PanelSpec,
}


# ------------------------------------------------------------------------- parsed specs


@dataclass(frozen=True)
class RuleSpec:
    style: str
    rule: str
    columns: tuple[str, ...] | None = None  # None: the rule's default columns


@dataclass(frozen=True)
class RowSpec:
    key: str
    labels: dict[Any, str]  # group value -> the label as one line of prose
    label_cells: dict[Any, tuple[str, ...]]  # group value -> one text per label column
    baseline: str | None = None
    # group value -> one value per column: None, a number, a string (setting columns) or
    # a (mean, std) pair (aggregate columns)
    paper: dict[Any, tuple[Any, ...]] = field(default_factory=dict)
    groups: tuple[Any, ...] | None = None  # None: every group value of the table
    not_evaluated: tuple[str, ...] = ()  # column keys the paper printed as "-"
    cited: str | None = None  # the publication a cited row's values come from

    def in_group(self, group: Any) -> bool:
        return self.groups is None or group in self.groups


@dataclass(frozen=True)
class MergeSpec:
    rows: tuple[str, ...]
    labels: dict[Any, str]
    label_cells: dict[Any, tuple[str, ...]]


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
    layout: str = "blocks"
    label_columns: tuple[str, ...] = ("Method",)
    merges: tuple[MergeSpec, ...] = ()

    def row(self, key: str) -> RowSpec | None:
        return next((r for r in self.rows if r.key == key), None)

    def column(self, key: str) -> ColumnSpec | None:
        return next((c for c in self.columns if c.key == key), None)

    @property
    def values_from(self) -> str:
        """Where the table's numbers come from: settings, attacks, robustness or certify (its
        logs)."""
        return SOURCES.get(self.columns[0].metric, CERTIFY)

    @property
    def settings(self) -> bool:
        """A settings table: its cells give training settings, not certification logs."""
        return self.values_from == "settings"


@dataclass(frozen=True)
class FigureSpec:
    name: str
    path: Path
    source: dict[str, Any]
    title: str
    caption: str
    table: str  # the table spec whose cells file and paper values the figure uses
    rows: tuple[str, ...]  # every plotted row; with panels, theirs in panel order
    radius_step: float | None  # certify figures; None for robustness figures
    panels: tuple[PanelSpec, ...] = ()  # empty: one panel per group value of the table
    styles: dict[str, str] = field(default_factory=dict)  # row -> line style, as given
    # what the lines draw: CERTIFY (certified accuracy against radius, from certification
    # logs) or ROBUSTNESS (empirical error against distance, from minimum-distance attacks)
    draws: str = CERTIFY

    def style(self, row: str) -> str:
        return self.styles.get(row, "solid")


def specs_dir() -> Path:
    """The package's ``tables/specs`` folder."""
    return Path(str(resources.files("robustreg.tables") / "specs"))


def available_specs(directory: Path | None = None) -> list[str]:
    directory = Path(directory) if directory is not None else specs_dir()
    return sorted(p.stem for p in directory.glob("*.yaml"))


def load_spec(name: str, directory: str | Path | None = None) -> TableSpec:
    """Load and validate table spec ``name`` (file ``<name>.yaml``) from ``directory``
    (default: the package's specs folder). Problems raise a one-line ValueError
    naming the file and the offending key."""
    raw, path = _read(name, directory, "table")
    if isinstance(raw, dict) and raw.get("kind") == "figure":
        raise ValueError(f"{path}: kind: a figure spec, not a table; load it with load_figure_spec")
    return _parse(raw, path)


def load_figure_spec(name: str, directory: str | Path | None = None) -> FigureSpec:
    """Load and validate figure spec ``name`` from ``directory`` (default: the package's
    specs folder), including the table spec it names (from the same folder)."""
    raw, path = _read(name, directory, "figure")
    c = _Checker(path)
    if isinstance(raw, dict) and raw.get("kind", "table") != "figure":
        raise c.fail("kind", "a table spec, not a figure (kind: figure); load it with load_spec")
    top = c.read(raw, "top level", FigureFile)
    if top["name"] != path.stem:
        raise c.fail("name", f"{top['name']!r} differs from the file name {path.stem!r}")
    table_name = top["table"]
    try:
        table = load_spec(table_name, path.parent)
    except ValueError as err:
        raise c.fail("table", _one_line(err)) from None
    draws = table.values_from
    if draws not in (CERTIFY, ROBUSTNESS):
        raise c.fail(
            "table",
            f"{table_name!r} is a {draws} table; figures draw certification logs or the "
            "minimum-distance attack logs of a robustness table",
        )
    if any(col.aggregate for col in table.columns):
        raise c.fail("table", f"{table_name!r} aggregates seeds; figures draw one log per cell")
    if draws == ROBUSTNESS and top["panels"] is None:
        raise c.fail("top level", "missing key 'panels' (required for a robustness figure)")
    rows = _figure_rows(c, top["rows"], "rows", table) if top["rows"] is not None else None
    panels = _parse_panels(c, top["panels"], table, draws) if top["panels"] is not None else ()
    if panels:
        # a robustness figure may draw a row in several panels, one per norm
        plotted = tuple(dict.fromkeys(key for panel in panels for key in panel.rows))
        if rows is not None and set(rows) != set(plotted):
            extra = [key for key in rows if key not in plotted]
            if extra:
                raise c.fail("rows", f"row {extra[0]!r} is in no panel")
            missing = next(key for key in plotted if key not in rows)
            raise c.fail("rows", f"row {missing!r} of the panels is missing")
        rows = plotted
    elif rows is None:
        raise c.fail("top level", "missing key 'rows' (required without panels)")
    styles = _parse_styles(c, top["styles"] or {}, rows)
    step = top["radius_step"]
    if draws == ROBUSTNESS:
        if step is not None:
            raise c.fail(
                "radius_step",
                "only for figures of certification logs; a robustness figure's x axis runs "
                "to each panel's eps_max",
            )
    elif step is None:
        raise c.fail("top level", "missing key 'radius_step'")
    elif step <= 0:
        raise c.fail("radius_step", f"expected a positive number, got {raw['radius_step']!r}")
    return FigureSpec(
        name=top["name"],
        path=path,
        source=top["source"] or {},
        title=top["title"],
        caption=top["caption"],
        table=table_name,
        rows=rows,
        radius_step=step,
        panels=panels,
        styles=styles,
        draws=draws,
    )


def _figure_rows(c: _Checker, obj: Any, where: str, table: TableSpec) -> tuple[str, ...]:
    if not isinstance(obj, list) or not obj:
        raise c.fail(where, "expected a non-empty list of row keys")
    for i, key in enumerate(obj):
        if table.row(str(key)) is None:
            known = ", ".join(r.key for r in table.rows)
            raise c.fail(
                f"{where}[{i}]", f"unknown row {key!r} of table {table.name} (rows: {known})"
            )
        if key in obj[:i]:
            raise c.fail(f"{where}[{i}]", f"duplicate row {key!r}")
    return tuple(str(k) for k in obj)


def _parse_panels(c: _Checker, obj: Any, table: TableSpec, draws: str) -> tuple[PanelSpec, ...]:
    if draws == ROBUSTNESS:
        return tuple(
            _robustness_panel(c, entry, f"panels[{i}]", table)
            for i, entry in enumerate(_panel_list(c, obj, "{title, norm, eps_max, rows}"))
        )
    owner: dict[str, int] = {}  # row -> the panel that draws it
    out: list[PanelSpec] = []
    for i, entry in enumerate(_panel_list(c, obj, "{title, rows}")):
        where = f"panels[{i}]"
        entry = c.read(entry, where, PanelSpec, keys={"title", "rows"})
        rows = _figure_rows(c, entry["rows"], f"{where}.rows", table)
        for j, key in enumerate(rows):
            if key in owner:
                raise c.fail(
                    f"{where}.rows[{j}]", f"row {key!r} is already in panels[{owner[key]}]"
                )
            owner[key] = i
        out.append(PanelSpec(title=entry["title"], rows=rows))
    return tuple(out)


def _panel_list(c: _Checker, obj: Any, keys: str) -> list:
    if not isinstance(obj, list) or not obj:
        raise c.fail("panels", f"expected a non-empty list of {keys} mappings")
    return obj


def _robustness_panel(c: _Checker, entry: Any, where: str, table: TableSpec) -> PanelSpec:
    """A panel of a robustness figure: its rows' error against distance in ``norm`` up to
    ``eps_max``; each row needs outcome logs in that norm, i.e. a column of
    DISTANCE_METRICS in the norm that the row evaluates."""
    entry = c.read(entry, where, PanelSpec, keys={"title", "rows", "norm", "eps_max"})
    norm, eps_max = entry["norm"], entry["eps_max"]
    if eps_max <= 0:
        raise c.fail(f"{where}.eps_max", f"expected a positive number, got {entry['eps_max']!r}")
    rows = _figure_rows(c, entry["rows"], f"{where}.rows", table)
    for j, key in enumerate(rows):
        row = table.row(key)
        if not any(
            col.metric in DISTANCE_METRICS and col.norm == norm and col.key not in row.not_evaluated
            for col in table.columns
        ):
            raise c.fail(
                f"{where}.rows[{j}]",
                f"row {key!r} evaluates no {' or '.join(DISTANCE_METRICS)} column in {norm} "
                f"in table {table.name}, so it has no {norm} distances to draw",
            )
    return PanelSpec(title=entry["title"], rows=rows, norm=norm, eps_max=eps_max)


def _parse_styles(c: _Checker, obj: dict, rows: tuple[str, ...]) -> dict[str, str]:
    for key, style in obj.items():
        where = f"styles.{key}"
        if key not in rows:
            raise c.fail(where, f"row {key!r} is not plotted (rows: {', '.join(rows)})")
        c.check(_LINE_STYLE, style, where)
    return dict(obj)


def _read(name: str, directory: str | Path | None, what: str) -> tuple[Any, Path]:
    directory = Path(directory) if directory is not None else specs_dir()
    if not isinstance(name, str) or not name or "/" in name or "\\" in name:
        raise ValueError(f"invalid {what} spec name {name!r}")
    path = directory / f"{name}.yaml"
    if not path.is_file():
        known = ", ".join(available_specs(directory)) or "none"
        raise ValueError(f"unknown {what} spec {name!r}: no {path} (known: {known})")
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8")), path
    except yaml.YAMLError as err:
        raise ValueError(f"{path}: not valid YAML: {_one_line(err)}") from None


# --------------------------------------------------------------------------- parsing


class _Checker:
    """Reads a spec file's mappings against their declarations; every problem is a one-line
    ValueError "<file>: <key path>: <problem>"."""

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

    def check(self, need: Need, value: Any, where: str) -> Any:
        """``value`` cast by ``need``, which it must meet."""
        if not need.test(value):
            raise self.fail(where, need.problem(value, verb="expected"))
        return need.cast(value)

    def read(
        self, obj: Any, where: str, declared: type, keys: set[str] | None = None
    ) -> dict[str, Any]:
        """The keys of the mapping ``obj`` that the dataclass ``declared`` declares (only
        ``keys`` of them, if given, all required), each checked by its ``Need`` and cast, its
        default where ``obj`` leaves it out. Key paths below the top level are
        "<where>.<key>"."""
        fields = [f for f in dataclasses.fields(declared) if "need" in f.metadata]
        if keys is not None:
            fields = [f for f in fields if f.name in keys]
            self.mapping(obj, where, {f.name for f in fields}, {f.name for f in fields})
        else:
            self.mapping(obj, where, *_keys(declared))
        prefix = "" if where == "top level" else f"{where}."
        return {
            f.name: (
                self.check(f.metadata["need"], obj[f.name], f"{prefix}{f.name}")
                if f.name in obj
                else f.default
            )
            for f in fields
        }

    def string(self, obj: Any, where: str) -> str:
        return self.check(_TEXT, obj, where)

    def number(self, obj: Any, where: str) -> float:
        return self.check(_FINITE, obj, where)


def _keys(declared: type) -> tuple[set[str], set[str]]:
    """The keys the declaration ``declared`` allows, and those of them it requires (no
    default)."""
    fields = [f for f in dataclasses.fields(declared) if "need" in f.metadata]
    required = {
        f.name
        for f in fields
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    }
    return {f.name for f in fields}, required


def need_of(declared: type, key: str) -> Need:
    """The ``Need`` the declaration ``declared`` gives its key ``key``."""
    return next(f.metadata["need"] for f in dataclasses.fields(declared) if f.name == key)


def _parse(raw: Any, path: Path) -> TableSpec:
    c = _Checker(path)
    top = c.read(raw, "top level", TableFile)
    if top["name"] != path.stem:
        raise c.fail("name", f"{top['name']!r} differs from the file name {path.stem!r}")
    layout = top["layout"]
    label_columns = tuple(
        c.string(h, f"label_columns[{i}]") for i, h in enumerate(top["label_columns"] or ["Method"])
    )
    group = _parse_group(c, top["group_by"])
    columns = _parse_columns(c, top["columns"])
    if layout == "groups_as_columns":
        if len(columns) != 1:
            raise c.fail(
                "layout", f"groups_as_columns needs exactly one column, got {len(columns)}"
            )
        if not group.show:
            raise c.fail("group_by.show", "false is not possible with layout groups_as_columns")
    if layout == "columns_as_rows":
        if len(group.values) != 1 or group.show:
            raise c.fail("group_by", "layout columns_as_rows needs one value and show: false")
        if len(label_columns) != 1:
            raise c.fail("label_columns", "layout columns_as_rows needs exactly one (the corner)")
    rows = _parse_rows(c, top["rows"], group, columns, label_columns)
    merges = _parse_merges(c, top["merge_identical"] or [], group, rows, label_columns)
    if layout == "groups_as_columns":
        labelled = [(f"rows[{r.key}]", r.label_cells) for r in rows]
        labelled += [(f"merge_identical[{i}]", m.label_cells) for i, m in enumerate(merges)]
        for where, cells in labelled:
            if len(set(cells.values())) > 1:
                raise c.fail(
                    f"{where}.label",
                    f"layout groups_as_columns prints one label per row; this one differs by "
                    f"{group.key}",
                )
    return TableSpec(
        name=top["name"],
        path=path,
        source=top["source"] or {},
        title=top["title"],
        caption=top["caption"],
        group=group,
        columns=columns,
        rows=rows,
        highlight=_parse_highlight(c, top["highlight"] or {}, columns),
        layout=layout,
        label_columns=label_columns,
        merges=merges,
    )


def _parse_group(c: _Checker, obj: Any) -> GroupSpec:
    g = c.read(obj, "group_by", GroupSpec)
    if g["key"] in {"row", "log", "settings", "experiment"}:
        raise c.fail("group_by.key", f"{g['key']!r} is reserved in cells files")
    values = g["values"]
    for i, v in enumerate(values):
        if isinstance(v, bool) or not isinstance(v, int | float | str):
            raise c.fail(f"group_by.values[{i}]", f"expected a number or string, got {v!r}")
        if any(_same_group_value(v, w) for w in values[:i]):
            raise c.fail(f"group_by.values[{i}]", f"duplicate value {v!r}")
    for v in values:
        try:
            g["format"].format(v)
        except (ValueError, IndexError, KeyError) as err:
            raise c.fail("group_by.format", f"{g['format']!r} cannot format {v!r}: {err}") from None
    if not g["show"] and len(values) != 1:
        raise c.fail("group_by.show", f"false needs exactly one value, got {len(values)}")
    return GroupSpec(**(g | {"label": g["label"] or g["key"]}))


def _parse_columns(c: _Checker, obj: Any) -> tuple[ColumnSpec, ...]:
    if not isinstance(obj, list) or not obj:
        raise c.fail("columns", "expected a non-empty list")
    out: list[ColumnSpec] = []
    for i, entry in enumerate(obj):
        where = f"columns[{i}]"
        col = c.read(entry, where, ColumnSpec)
        key, metric = col["key"], col["metric"]
        if any(o.key == key for o in out):
            raise c.fail(f"{where}.key", f"duplicate column key {key!r}")
        source = SOURCES.get(metric, CERTIFY)
        if out and source != SOURCES.get(out[0].metric, CERTIFY):
            raise c.fail(
                f"{where}.metric",
                f"{metric!r} cannot share a table with {out[0].metric!r} (columns are all "
                f"{SETTING!r}, all 'robust_accuracy', all robustness metrics, or all "
                "certification metrics)",
            )
        for param in METRICS[metric]:
            if param not in entry:
                raise c.fail(where, f"metric {metric!r} needs key {param!r}")
        for other, params in METRICS.items():
            for param in set(params) - set(METRICS[metric]):
                if param in entry:
                    raise c.fail(f"{where}.{param}", f"only applies to metric {other!r}")
        if metric == SETTING:
            for key_ in _NOT_FOR_SETTINGS:
                if key_ in entry:
                    raise c.fail(f"{where}.{key_}", f"does not apply to metric {SETTING!r}")
        elif "paper_divide_by" in entry:
            raise c.fail(f"{where}.paper_divide_by", f"only applies to metric {SETTING!r}")
        divide_by = col["paper_divide_by"]
        if divide_by is not None and divide_by <= 0:
            raise c.fail(
                f"{where}.paper_divide_by", f"expected a positive number, got {divide_by!r}"
            )
        if col["aggregate"] is not None and source in (ATTACKS, ROBUSTNESS):
            raise c.fail(f"{where}.aggregate", f"does not apply to metric {metric!r}")
        if col["eps"] is not None and col["eps"] < 0:
            raise c.fail(f"{where}.eps", f"expected a number >= 0, got {entry['eps']!r}")
        out.append(ColumnSpec(**(col | {"of": _of(c, entry.get("of"), f"{where}.of")})))
    attack_columns = {o.key for o in out if o.metric == "robust_accuracy"}
    for i, column in enumerate(out):
        for key_ in column.of:
            if key_ not in attack_columns:
                raise c.fail(
                    f"columns[{i}].of",
                    f"{key_!r} is not a robust_accuracy column of this table "
                    f"(those: {', '.join(sorted(attack_columns)) or 'none'})",
                )
    return tuple(out)


def _of(c: _Checker, obj: Any, where: str) -> tuple[str, ...]:
    if obj is None:
        return ()
    if not isinstance(obj, list) or len(obj) < 2:
        raise c.fail(where, f"expected a list of at least two column keys, got {obj!r}")
    keys = tuple(c.string(str(k), f"{where}[{i}]") for i, k in enumerate(obj))
    if len(set(keys)) != len(keys):
        raise c.fail(where, f"a column is named twice in {list(keys)}")
    return keys


def _parse_rows(
    c: _Checker,
    obj: Any,
    group: GroupSpec,
    columns: tuple[ColumnSpec, ...],
    label_columns: tuple[str, ...],
) -> tuple[RowSpec, ...]:
    if not isinstance(obj, list) or not obj:
        raise c.fail("rows", "expected a non-empty list")
    rows: list[RowSpec] = []
    for i, entry in enumerate(obj):
        # a row's problems are named by its key, once the key itself is good
        c.mapping(entry, f"rows[{i}]", *_keys(RowEntry))
        key = c.check(need_of(RowEntry, "key"), entry["key"], f"rows[{i}].key")
        where = f"rows[{key}]"
        row = c.read(entry, where, RowEntry)
        if any(r.key == key for r in rows):
            raise c.fail(f"{where}.key", f"duplicate row key {key!r}")
        groups = None
        if row["groups"] is not None:
            groups = _parse_row_groups(c, row["groups"], f"{where}.groups", group)
        own = groups if groups is not None else group.values
        label_cells = _parse_label(c, row["label"], f"{where}.label", group, own, label_columns)
        paper: dict[Any, tuple[Any, ...]] = {}
        for g, values in _per_group(c, row["paper"] or {}, f"{where}.paper", group, own).items():
            w = f"{where}.paper[{g}]"
            if not isinstance(values, list) or len(values) != len(columns):
                got = len(values) if isinstance(values, list) else type(values).__name__
                raise c.fail(
                    w, f"expected a list of {len(columns)} values (one per column), got {got}"
                )
            paper[g] = tuple(
                _paper_value(c, v, col, f"{w}[{j}]")
                for j, (v, col) in enumerate(zip(values, columns, strict=True))
            )
        baseline = row["baseline"]
        not_evaluated = _parse_not_evaluated(c, row["not_evaluated"] or [], where, columns)
        for g, values in paper.items():
            for column_key in not_evaluated:
                j = next(j for j, col in enumerate(columns) if col.key == column_key)
                if values[j] is not None:
                    raise c.fail(
                        f"{where}.paper[{g}][{j}]",
                        f"column {column_key!r} is not_evaluated for this row; its paper value "
                        "is null",
                    )
        cited = row["cited"]
        if cited is not None and (baseline is not None or not paper):
            raise c.fail(f"{where}.cited", "a cited row has paper values and no baseline")
        rows.append(
            RowSpec(
                key=key,
                labels=_prose(label_cells, label_columns),
                label_cells=label_cells,
                baseline=baseline,
                paper=paper,
                groups=groups,
                not_evaluated=not_evaluated,
                cited=cited,
            )
        )
    keys = {r.key for r in rows}
    for r in rows:
        if r.baseline is not None and (r.baseline not in keys or r.baseline == r.key):
            raise c.fail(f"rows[{r.key}].baseline", f"{r.baseline!r} is not another row's key")
    return tuple(rows)


def _parse_not_evaluated(
    c: _Checker, obj: Any, where: str, columns: tuple[ColumnSpec, ...]
) -> tuple[str, ...]:
    where = f"{where}.not_evaluated"
    keys = [col.key for col in columns]
    for key in obj:
        if str(key) not in keys:
            raise c.fail(where, f"unknown column {key!r} (columns: {', '.join(keys)})")
    return tuple(k for k in keys if k in {str(o) for o in obj})


def _parse_row_groups(c: _Checker, obj: Any, where: str, group: GroupSpec) -> tuple[Any, ...]:
    if not isinstance(obj, list) or not obj:
        raise c.fail(where, f"expected a non-empty list of {group.key} values")
    found = []
    for v in obj:
        g = group.match(v)
        if g is None:
            raise c.fail(where, f"unknown {group.key} {v!r} (known: {_values_text(group)})")
        if g in found:
            raise c.fail(where, f"duplicate {group.key} {v!r}")
        found.append(g)
    return tuple(g for g in group.values if g in found)


def _parse_label(
    c: _Checker,
    obj: Any,
    where: str,
    group: GroupSpec,
    own: tuple[Any, ...],
    label_columns: tuple[str, ...],
) -> dict[Any, tuple[str, ...]]:
    """{group value: one text per label column} for each of the row's groups ``own``."""
    n = len(label_columns)

    def cells(value: Any, w: str) -> tuple[str, ...]:
        if isinstance(value, str) and n == 1:
            return (c.string(value, w),)
        if isinstance(value, list) and len(value) == n:
            return tuple(c.string(v, f"{w}[{j}]") for j, v in enumerate(value))
        expected = f"a list of {n} strings (label_columns: {', '.join(label_columns)})"
        if n == 1:
            expected = "a string or " + expected
        raise c.fail(w, f"expected {expected}, got {value!r}")

    if isinstance(obj, dict):
        per_group = _per_group(c, obj, where, group, own, all_required=True)
        return {g: cells(v, f"{where}[{g}]") for g, v in per_group.items()}
    return dict.fromkeys(own, cells(obj, where))


def _prose(label_cells: dict[Any, tuple[str, ...]], headers: tuple[str, ...]) -> dict[Any, str]:
    """Labels for running text (log lists, notes): "MSE, λ = 5" for label columns Model, λ."""
    return {
        g: ", ".join(
            [cells[0], *(f"{h} = {t}" for h, t in zip(headers[1:], cells[1:], strict=True))]
        )
        for g, cells in label_cells.items()
    }


def _paper_value(c: _Checker, value: Any, column: ColumnSpec, where: str) -> Any:
    if value is None:
        return None
    if column.metric == SETTING:
        if isinstance(value, str) and column.paper_divide_by is None:
            return c.string(value, where)
        if not is_number(value):
            expected = "a finite number" if column.paper_divide_by else "a number or string"
            raise c.fail(where, f"expected {expected}, got {value!r}")
        return float(value)
    if column.aggregate:
        if not isinstance(value, list) or len(value) != 2:
            raise c.fail(
                where, f"expected [mean, std] (column {column.key!r} aggregates), got {value!r}"
            )
        return (c.number(value[0], f"{where}[0]"), c.number(value[1], f"{where}[1]"))
    return c.number(value, where)


def _parse_merges(
    c: _Checker,
    obj: Any,
    group: GroupSpec,
    rows: tuple[RowSpec, ...],
    label_columns: tuple[str, ...],
) -> tuple[MergeSpec, ...]:
    if not isinstance(obj, list):
        raise c.fail("merge_identical", "expected a list of {rows, label} mappings")
    by_key = {r.key: r for r in rows}
    merged: set[str] = set()
    out: list[MergeSpec] = []
    for i, entry in enumerate(obj):
        where = f"merge_identical[{i}]"
        entry = c.read(entry, where, MergeEntry)
        keys = entry["rows"]
        for key in keys:
            if not isinstance(key, str) or key not in by_key:
                raise c.fail(f"{where}.rows", f"unknown row {key!r}")
            if key in merged:
                raise c.fail(f"{where}.rows", f"row {key!r} is already merged")
            merged.add(key)
        members = [by_key[k] for k in keys]
        first = members[0]
        own = first.groups if first.groups is not None else group.values
        for m in members[1:]:
            if (m.groups if m.groups is not None else group.values) != own:
                raise c.fail(
                    f"{where}.rows", f"rows {first.key!r} and {m.key!r} have different groups"
                )
            for g in group.values:
                if m.paper.get(g) != first.paper.get(g):
                    raise c.fail(
                        f"{where}.rows",
                        f"paper values of {first.key!r} and {m.key!r} differ at {group.key} "
                        f"{group.text(g)}; the paper prints merged rows with one set of values",
                    )
        label_cells = _parse_label(c, entry["label"], f"{where}.label", group, own, label_columns)
        out.append(
            MergeSpec(
                rows=tuple(keys),
                labels=_prose(label_cells, label_columns),
                label_cells=label_cells,
            )
        )
    return tuple(out)


def _per_group(
    c: _Checker,
    obj: Any,
    where: str,
    group: GroupSpec,
    own: tuple[Any, ...],
    all_required: bool = False,
) -> dict[Any, Any]:
    """A mapping's keys matched to the group values; only the row's own groups allowed."""
    if not isinstance(obj, dict):
        raise c.fail(where, "expected a mapping from group values")
    out: dict[Any, Any] = {}
    for k, v in obj.items():
        g = group.match(k)
        if g is None:
            raise c.fail(where, f"unknown {group.key} {k!r} (known: {_values_text(group)})")
        if g not in own:
            raise c.fail(where, f"{group.key} {k!r} is not one of the row's groups")
        if g in out:
            raise c.fail(where, f"duplicate {group.key} {k!r}")
        out[g] = v
    if all_required:
        missing = [g for g in own if g not in out]
        if missing:
            raise c.fail(where, f"no entry for {group.key} {missing[0]!r}")
    return {g: out[g] for g in group.values if g in out}


def _parse_highlight(
    c: _Checker, obj: Any, columns: tuple[ColumnSpec, ...]
) -> tuple[RuleSpec, ...]:
    if obj and columns[0].metric == SETTING:
        raise c.fail("highlight", f"rules do not apply to {SETTING!r} columns")
    keys = {col.key for col in columns}
    out: list[RuleSpec] = []
    for style, rule in obj.items():
        where = f"highlight.{style}"
        if style not in STYLES:
            raise c.fail(where, f"unknown style {style!r} (known: {', '.join(STYLES)})")
        cols = None
        if isinstance(rule, dict):
            entry = c.read(rule, where, RuleEntry)
            rule = entry["rule"]
            if entry["columns"] is not None:
                for k in entry["columns"]:
                    if str(k) not in keys:
                        raise c.fail(f"{where}.columns", f"unknown column {k!r}")
                cols = tuple(str(k) for k in entry["columns"])
        else:
            c.check(need_of(RuleEntry, "rule"), rule, where)
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
