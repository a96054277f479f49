"""Table and figure specs: one YAML file each in ``robustreg/tables/specs/``.

A table spec says what a table looks like and what the paper printed; it knows nothing
about where our numbers come from (that is the cells file, see ``render.py``).

Table schema (``<name>.yaml``)::

    name: table2_mnist                 # must equal the file's stem
    kind: table                        # optional; the default (see figure specs below)
    source: {paper: "...", table: 2, where: "supplement, section B"}   # free-form mapping
    title: "..."                       # heading of the rendered table
    caption: "..."                     # paragraph under the heading / LaTeX caption
    layout: blocks                     # optional, one of LAYOUTS:
                                       #   blocks: group column, label column(s), metric
                                       #     columns; one block of rows per group value
                                       #   rows_first: label column(s), group column, metric
                                       #     columns; one block per row, a line per group value
                                       #   groups_as_columns: a line per row, label column(s),
                                       #     then one column per group value, headed
                                       #     "<group label> = <value>"; needs exactly one
                                       #     column and a label that is the same in all groups
                                       #   columns_as_rows: the paper's transposed form, a
                                       #     line per column and a column per row; needs one
                                       #     group value, show: false and one label column,
                                       #     whose header is the corner ("Attack ↓ Defense →")
    label_columns: [Method]            # optional; headers of the row-label columns. Within a
                                       #   block, consecutive lines with the same text in the
                                       #   first label column print it once
    group_by:                          # the key that splits the table into groups
      key: sigma                       #   name used by cells files (``sigma: 0.25``)
      label: "σ"                       #   header of the group column
      format: "{:.2f}"                 #   optional str.format for printing a value
      values: [0.25, 0.50, 1.00]       #   ordered; numbers or strings
      show: true                       #   optional; false prints no group column (only with
                                       #   exactly one value; not with groups_as_columns)
    columns:                           # ordered metric columns: all 'setting' (a settings
                                       #   table), all 'robust_accuracy' (an attack table), all
                                       #   robustness metrics (a robustness table) or all
                                       #   certification metrics (acr, certified_accuracy,
                                       #   certified_error = 1 - certified_accuracy)
      - key: acr                       #   unique within the spec
        label: ACR                     #   header text
        metric: acr                    #   one of METRICS
        decimals: 3                    #   printed decimals (ours and paper alike)
        # radius: 0.25                 #   metric parameter (certified_accuracy only)
        # percent: true                #   print fractions as percent (x100)
        # better: higher               #   higher | lower, used by highlight rules
        # aggregate: mean_std          #   a cell has one log per training seed: print the
        #                              #   mean over logs "± the sample std" (ddof 1; "± –"
        #                              #   for one log); rules compare the means. Paper
        #                              #   values are [mean, std] pairs
      # - {key: eps, label: "ε", metric: setting, param: eps, decimals: 3, paper_divide_by: 256}
        #   metric setting: a training setting, not a result; ``param`` (required) names it
        #   in the cells file's ``settings``. Paper values are numbers or strings.
        #   paper_divide_by (optional number): the paper prints the value multiplied by it;
        #   the spec stores it as printed and the table shows "value = printed/divisor".
        #   No percent, better or aggregate; highlight rules do not apply.
      # - {key: pgd20, label: "PGD-20", metric: robust_accuracy, decimals: 2, percent: true}
        #   metric robust_accuracy: the fraction of attacked test images still classified
        #   correctly, from the attack outcome file the cells file gives for this column (a
        #   benign-accuracy column is one whose attack is 'none'). No aggregate.
      # - {key: worst, label: "Worst case", metric: worst_case_accuracy, of: [pgd20, cw],
        #   decimals: 2, percent: true}
        #   metric worst_case_accuracy: the fraction of test images robust under every attack
        #   of the robust_accuracy columns ``of`` names (per image, from their outcome files;
        #   a row's columns not evaluated or without a file are left out, and a note names
        #   them). It has no outcome file of its own in the cells file.
      # - {key: emp2, label: "ε = 2/255", metric: empirical_error, norm: linf, eps: 0.00784}
        #   robustness metrics (Finlay & Oberman's tables; robustreg.tables.robustness), each
        #   a fraction or a number from the files the cells file gives for the column:
        #     clean_error: misclassified test images (top-k of the attacks), from the
        #       minimum-distance attack outcome files
        #     empirical_error (norm, eps): images whose smallest adversarial distance in
        #       ``norm`` over those files is <= eps (misclassified images at distance 0)
        #     empirical_distance (norm): the mean of that per-image distance
        #     bound_error (norm, bound, eps): images whose distance certified by the bound
        #       (l: L-bound, omega: omega-bound of Proposition 2.2) is < eps, from a bounds job
        #     bound_distance (norm, bound): the mean certified distance
        #     gradient_norm (norm, statistic): mean or max over images of the loss gradient's
        #       dual norm; modulus (norm, eps): the GEV estimate of omega(eps)
        #     training_hours: wall time of the model's training job, from model.pt
        #   No aggregate.
    highlight:                         # style -> named rule (see RULES), or
      bold: improves_baseline          #   {rule: <name>, columns: [<column key>, ...]}
      underline: best_acr_per_group
    rows:                              # ordered, the paper's order
      - key: gaussian                  #   unique; what cells files name
        label: Gaussian                #   one string per label column, as a list; a plain
                                       #   string when there is one label column; or
                                       #   {<group value>: <that>} for each of the row's groups
        groups: [0.50, 1.00]           #   optional: the group values the row exists in
                                       #   (default all); cells and paper values elsewhere
                                       #   are errors
        baseline: gaussian             #   optional: row key this row improves on
        not_evaluated: [cw]            #   optional: columns the paper never evaluated for this
                                       #   row (printed "-" there); nothing is computed for them
                                       #   and their paper values must be null
        cited: "Zhang et al. 2020"     #   optional: the paper copied this row's values from
                                       #   this publication, for a method outside this project;
                                       #   the row prints its paper values only, marked cited
        paper:                         #   optional: {<group value>: [one value per column]}
          0.25: [0.911, 99.2, ...]     #   null for a value the paper does not print
    merge_identical:                   # optional: rows the paper prints as one row because
      - rows: [stab5, stab10, stab20]  #   their values coincide (two or more row keys with the
        label: "Stability (λ = 5, 10, 20)"  # same groups and equal paper values); label as
                                       #   for rows. Where our printed values of the members
                                       #   are identical in every column (or all missing) one
                                       #   row with this label is printed, highlighted as the
                                       #   first member; otherwise each member is printed with
                                       #   the paper's values and a note names the groups
                                       #   where ours differ. A line spans one group in the
                                       #   blocks layout and all groups in the others.

Paper values are stored as printed (percent for accuracies), never scaled.
Highlight rules apply to OUR numbers only; their meaning is in ``RULES``.

Figure schema (``<name>.yaml``, load with ``load_figure_spec``)::

    name: figure1_mnist                # must equal the file's stem
    kind: figure                       # required: tells it from a table spec
    source: {...}                      # optional free-form mapping
    title: "..."
    caption: "..."
    table: table2_mnist                # a table spec in the same folder: its cells file
                                       #   supplies our logs; its rows, labels, group values
                                       #   and certified-accuracy paper values are reused
                                       #   (certification columns without aggregate; or a
                                       #   robustness table, below)
    rows: [gaussian, consistency]      # row keys to plot, in legend order; required
                                       #   without panels: then each group value gets a
                                       #   panel with one colour per row
    panels:                            # optional, the panels left to right: each draws
      - title: "(a) CIFAR-10"          #   a line per (row, group value) of its rows with
        rows: [cifar_adre, cifar_adv]  #   a log or paper values, one colour per group
      - title: "(b) ImageNet"          #   value; a row is in one panel only. With panels,
        rows: [imagenet_adre]          #   ``rows`` is optional and, if given, lists
                                       #   exactly the panels' rows
    styles: {cifar_adv: dashed}        # optional: plotted row -> line style, one of
                                       #   LINE_STYLES (default solid)
    radius_step: 0.01                  # spacing of the radius grid of our curves (required
                                       #   for a figure of certification logs, refused for a
                                       #   robustness figure)

A figure of a robustness table (Finlay & Oberman's Figures 1 and B.2: % error against
adversarial distance) draws, per panel, one line per row in the panel's norm::

    table: figure1_gradreg_models      # a robustness table spec
    panels:                            # required; each row may be in several panels (one per
      - title: "(a) ℓ2"                #   norm), once in each
        norm: l2                       #   l2 | linf: the distance the x axis measures
        eps_max: 2.0                   #   positive: the x axis runs from 0 to eps_max
        rows: [undefended, l2_fd_1]    #   each with an empirical_error or empirical_distance
                                       #   column in the panel's norm that it evaluates
    # no radius_step; rows and styles as above, one colour per row in every panel
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

SETTING = "setting"

# metric name -> required column parameters. Implemented in render.METRIC_FUNCS, except
# SETTING, which reads a training setting from the cells file instead of a log.
METRICS: dict[str, tuple[str, ...]] = {
    "acr": (),
    "certified_accuracy": ("radius",),
    "certified_error": ("radius",),
    SETTING: ("param",),
    "robust_accuracy": (),
    "worst_case_accuracy": ("of",),
    # robustness tables (Finlay & Oberman): see robustreg.tables.robustness
    "clean_error": (),
    "empirical_error": ("norm", "eps"),
    "empirical_distance": ("norm",),
    "bound_error": ("norm", "bound", "eps"),
    "bound_distance": ("norm", "bound"),
    "gradient_norm": ("norm", "statistic"),
    "modulus": ("norm", "eps"),
    "training_hours": (),
}
# where a table's numbers come from, by the metric of its columns (one source per table)
ATTACKS = "attacks"
ROBUSTNESS = "robustness"
SOURCES = {
    SETTING: "settings",
    "robust_accuracy": ATTACKS,
    "worst_case_accuracy": ATTACKS,
    **dict.fromkeys(
        (
            "clean_error",
            "empirical_error",
            "empirical_distance",
            "bound_error",
            "bound_distance",
            "gradient_norm",
            "modulus",
            "training_hours",
        ),
        ROBUSTNESS,
    ),
}
# robustness columns: the values a column parameter may take
NORMS = ("l2", "linf")
BOUNDS = ("l", "omega")
STATISTICS = ("mean", "max")
CERTIFY = "certify"  # every other metric: certification logs

# rule name -> footnote text ({group} is the group label, {along} "column" or, in the
# columns_as_rows layout, "line"). Implemented in render.RULE_FUNCS.
RULES: dict[str, str] = {
    "improves_baseline": (
        "our value strictly exceeds our value for the row's baseline (same {group}, same {along})"
    ),
    "best_per_group": "best of our values in the {along} per {group} (ties all marked)",
    "best_acr_per_group": "best of our ACRs per {group} (ties all marked)",
    "second_best_per_group": (
        "second best of our values in the {along} per {group} (the next value below the best; "
        "ties all marked)"
    ),
}

STYLES = ("bold", "underline")
# figure line styles, named as matplotlib names them
LINE_STYLES = ("solid", "dashed", "dotted", "dashdot")
LAYOUTS = ("blocks", "rows_first", "groups_as_columns", "columns_as_rows")
AGGREGATES = ("mean_std",)

_TOP_KEYS = {
    "name",
    "kind",
    "source",
    "title",
    "caption",
    "layout",
    "label_columns",
    "group_by",
    "columns",
    "highlight",
    "rows",
    "merge_identical",
}
_OPTIONAL_TOP_KEYS = {"kind", "source", "layout", "label_columns", "highlight", "merge_identical"}
_GROUP_KEYS = {"key", "label", "format", "values", "show"}
_COLUMN_KEYS = {
    "key",
    "label",
    "metric",
    "decimals",
    "radius",
    "percent",
    "better",
    "aggregate",
    "param",
    "paper_divide_by",
    "norm",
    "eps",
    "bound",
    "statistic",
    "of",
}
_NOT_FOR_SETTINGS = ("percent", "better", "aggregate")
_ROW_KEYS = {"key", "label", "groups", "baseline", "paper", "not_evaluated", "cited"}
_RULE_KEYS = {"rule", "columns"}
_MERGE_KEYS = {"rows", "label"}
_FIGURE_KEYS = {
    "name",
    "kind",
    "source",
    "title",
    "caption",
    "table",
    "rows",
    "panels",
    "styles",
    "radius_step",
}
_OPTIONAL_FIGURE_KEYS = {"source", "rows", "panels", "styles"}
_PANEL_KEYS = {"title", "rows"}
_ROBUSTNESS_PANEL_KEYS = _PANEL_KEYS | {"norm", "eps_max"}
# the robustness metrics whose outcome logs give a row's per-image distance in a norm: the
# logs a robustness figure's line reads
DISTANCE_METRICS = ("empirical_error", "empirical_distance")


# What each robustness metric reads (robustreg.tables.robustness): attack outcome logs, a bounds
# job's files, or the row's model (its training record). Declared here, not beside the readers,
# so that the planner learns a column's inputs without importing pandas.
OUTCOME_LOGS, BOUND_FILES, MODEL_FILE = "outcomes", "bounds", "model"
_FILE_KIND = {
    "clean_error": OUTCOME_LOGS,
    "empirical_error": OUTCOME_LOGS,
    "empirical_distance": OUTCOME_LOGS,
    "bound_error": BOUND_FILES,
    "bound_distance": BOUND_FILES,
    "gradient_norm": BOUND_FILES,
    "modulus": BOUND_FILES,
    "training_hours": MODEL_FILE,
}


def file_kind(metric: str) -> str:
    """What a robustness metric reads: outcome logs, a bounds job's summary or a model."""
    return _FILE_KIND[metric]


@dataclass(frozen=True)
class GroupSpec:
    key: str
    label: str
    values: tuple[Any, ...]
    format: str = "{}"
    show: bool = True

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
    aggregate: str | None = None
    param: str | None = None
    paper_divide_by: float | None = None
    norm: str | None = None  # robustness columns: l2 or linf
    eps: float | None = None  # robustness columns: the distance a rate or omega is read at
    bound: str | None = None  # bound columns: l (L-bound) or omega (omega-bound)
    statistic: str | None = None  # gradient_norm columns: mean or max over images
    of: tuple[str, ...] = ()  # worst_case_accuracy columns: the attack columns it combines


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
class PanelSpec:
    title: str
    rows: tuple[str, ...]
    norm: str | None = None  # robustness figures: the distance of the x axis, l2 or linf
    eps_max: float | None = None  # robustness figures: where the x axis ends


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
    # radius_step is required by the kind of table, known only once the table is loaded
    required = _FIGURE_KEYS - _OPTIONAL_FIGURE_KEYS - {"radius_step"}
    top = c.mapping(raw, "top level", _FIGURE_KEYS, required)
    fig_name = c.string(top["name"], "name")
    if fig_name != path.stem:
        raise c.fail("name", f"{fig_name!r} differs from the file name {path.stem!r}")
    source = top.get("source") or {}
    if not isinstance(source, dict):
        raise c.fail("source", "expected a mapping")
    table_name = c.string(top["table"], "table")
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
    if draws == ROBUSTNESS and "panels" not in top:
        raise c.fail("top level", "missing key 'panels' (required for a robustness figure)")
    rows = _figure_rows(c, top["rows"], "rows", table) if "rows" in top else None
    panels = _parse_panels(c, top["panels"], table, draws) if "panels" in top else ()
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
    styles = _parse_styles(c, top.get("styles", {}), rows)
    step = None
    if draws == ROBUSTNESS:
        if "radius_step" in top:
            raise c.fail(
                "radius_step",
                "only for figures of certification logs; a robustness figure's x axis runs "
                "to each panel's eps_max",
            )
    elif "radius_step" not in top:
        raise c.fail("top level", "missing key 'radius_step'")
    else:
        step = c.number(top["radius_step"], "radius_step")
        if step <= 0:
            raise c.fail("radius_step", f"expected a positive number, got {top['radius_step']!r}")
    return FigureSpec(
        name=fig_name,
        path=path,
        source=source,
        title=c.string(top["title"], "title"),
        caption=c.string(top["caption"], "caption"),
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
        entry = c.mapping(entry, where, _PANEL_KEYS, _PANEL_KEYS)
        rows = _figure_rows(c, entry["rows"], f"{where}.rows", table)
        for j, key in enumerate(rows):
            if key in owner:
                raise c.fail(
                    f"{where}.rows[{j}]", f"row {key!r} is already in panels[{owner[key]}]"
                )
            owner[key] = i
        out.append(PanelSpec(title=c.string(entry["title"], f"{where}.title"), rows=rows))
    return tuple(out)


def _panel_list(c: _Checker, obj: Any, keys: str) -> list:
    if not isinstance(obj, list) or not obj:
        raise c.fail("panels", f"expected a non-empty list of {keys} mappings")
    return obj


def _robustness_panel(c: _Checker, entry: Any, where: str, table: TableSpec) -> PanelSpec:
    """A panel of a robustness figure: its rows' error against distance in ``norm`` up to
    ``eps_max``; each row needs outcome logs in that norm, i.e. a column of
    DISTANCE_METRICS in the norm that the row evaluates."""
    entry = c.mapping(entry, where, _ROBUSTNESS_PANEL_KEYS, _ROBUSTNESS_PANEL_KEYS)
    norm = entry["norm"]
    if norm not in NORMS:
        raise c.fail(f"{where}.norm", f"expected one of {', '.join(NORMS)}, got {norm!r}")
    eps_max = c.number(entry["eps_max"], f"{where}.eps_max")
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
    return PanelSpec(
        title=c.string(entry["title"], f"{where}.title"), rows=rows, norm=norm, eps_max=eps_max
    )


def _parse_styles(c: _Checker, obj: Any, rows: tuple[str, ...]) -> dict[str, str]:
    if not isinstance(obj, dict):
        raise c.fail("styles", "expected a mapping row -> line style")
    for key, style in obj.items():
        where = f"styles.{key}"
        if key not in rows:
            raise c.fail(where, f"row {key!r} is not plotted (rows: {', '.join(rows)})")
        if style not in LINE_STYLES:
            raise c.fail(where, f"unknown line style {style!r} (known: {', '.join(LINE_STYLES)})")
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

    def flag(self, obj: Any, where: str) -> bool:
        if not isinstance(obj, bool):
            raise self.fail(where, f"expected true/false, got {obj!r}")
        return obj


def _parse(raw: Any, path: Path) -> TableSpec:
    c = _Checker(path)
    top = c.mapping(raw, "top level", _TOP_KEYS, _TOP_KEYS - _OPTIONAL_TOP_KEYS)
    if top.get("kind", "table") != "table":
        raise c.fail("kind", f"expected 'table' or 'figure', got {top['kind']!r}")
    name = c.string(top["name"], "name")
    if name != path.stem:
        raise c.fail("name", f"{name!r} differs from the file name {path.stem!r}")
    source = top.get("source") or {}
    if not isinstance(source, dict):
        raise c.fail("source", "expected a mapping")
    layout = top.get("layout", "blocks")
    if layout not in LAYOUTS:
        raise c.fail("layout", f"unknown layout {layout!r} (known: {', '.join(LAYOUTS)})")
    label_columns = top.get("label_columns", ["Method"])
    if not isinstance(label_columns, list) or not label_columns:
        raise c.fail("label_columns", "expected a non-empty list of header strings")
    label_columns = tuple(c.string(h, f"label_columns[{i}]") for i, h in enumerate(label_columns))

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
    merges = _parse_merges(c, top.get("merge_identical") or [], group, rows, label_columns)
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
        layout=layout,
        label_columns=label_columns,
        merges=merges,
    )


def _parse_group(c: _Checker, obj: Any) -> GroupSpec:
    g = c.mapping(obj, "group_by", _GROUP_KEYS, {"key", "values"})
    key = c.string(g["key"], "group_by.key")
    if key in {"row", "log", "settings", "experiment"}:
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
    show = c.flag(g.get("show", True), "group_by.show")
    if not show and len(values) != 1:
        raise c.fail("group_by.show", f"false needs exactly one value, got {len(values)}")
    return GroupSpec(key=key, label=label, values=tuple(values), format=fmt, show=show)


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
        source = SOURCES.get(metric, CERTIFY)
        if out and source != SOURCES.get(out[0].metric, CERTIFY):
            raise c.fail(
                f"{where}.metric",
                f"{metric!r} cannot share a table with {out[0].metric!r} (columns are all "
                f"{SETTING!r}, all 'robust_accuracy', all robustness metrics, or all "
                "certification metrics)",
            )
        for param in METRICS[metric]:
            if param not in col:
                raise c.fail(where, f"metric {metric!r} needs key {param!r}")
        for other, params in METRICS.items():
            for param in set(params) - set(METRICS[metric]):
                if param in col:
                    raise c.fail(f"{where}.{param}", f"only applies to metric {other!r}")
        if metric == SETTING:
            for key_ in _NOT_FOR_SETTINGS:
                if key_ in col:
                    raise c.fail(f"{where}.{key_}", f"does not apply to metric {SETTING!r}")
        elif "paper_divide_by" in col:
            raise c.fail(f"{where}.paper_divide_by", f"only applies to metric {SETTING!r}")
        radius = c.number(col["radius"], f"{where}.radius") if "radius" in col else None
        param = c.string(col["param"], f"{where}.param") if "param" in col else None
        divide_by = None
        if "paper_divide_by" in col:
            divide_by = c.number(col["paper_divide_by"], f"{where}.paper_divide_by")
            if divide_by <= 0:
                raise c.fail(
                    f"{where}.paper_divide_by", f"expected a positive number, got {divide_by!r}"
                )
        decimals = col["decimals"]
        if isinstance(decimals, bool) or not isinstance(decimals, int) or not 0 <= decimals <= 6:
            raise c.fail(f"{where}.decimals", f"expected an integer 0..6, got {decimals!r}")
        percent = c.flag(col.get("percent", False), f"{where}.percent")
        better = col.get("better", "higher")
        if better not in ("higher", "lower"):
            raise c.fail(f"{where}.better", f"expected 'higher' or 'lower', got {better!r}")
        aggregate = col.get("aggregate")
        if aggregate is not None and source in (ATTACKS, ROBUSTNESS):
            raise c.fail(f"{where}.aggregate", f"does not apply to metric {metric!r}")
        if aggregate is not None and aggregate not in AGGREGATES:
            raise c.fail(
                f"{where}.aggregate",
                f"unknown aggregate {aggregate!r} (known: {', '.join(AGGREGATES)})",
            )
        norm = col.get("norm")
        if norm is not None and norm not in NORMS:
            raise c.fail(f"{where}.norm", f"expected one of {', '.join(NORMS)}, got {norm!r}")
        eps = c.number(col["eps"], f"{where}.eps") if "eps" in col else None
        if eps is not None and eps < 0:
            raise c.fail(f"{where}.eps", f"expected a number >= 0, got {eps!r}")
        bound = col.get("bound")
        if bound is not None and bound not in BOUNDS:
            raise c.fail(f"{where}.bound", f"expected one of {', '.join(BOUNDS)}, got {bound!r}")
        statistic = col.get("statistic")
        if statistic is not None and statistic not in STATISTICS:
            raise c.fail(
                f"{where}.statistic", f"expected one of {', '.join(STATISTICS)}, got {statistic!r}"
            )
        out.append(
            ColumnSpec(
                key=key,
                label=c.string(str(col["label"]), f"{where}.label"),
                metric=metric,
                decimals=decimals,
                radius=radius,
                percent=percent,
                better=better,
                aggregate=aggregate,
                param=param,
                paper_divide_by=divide_by,
                norm=norm,
                eps=eps,
                bound=bound,
                statistic=statistic,
                of=_of(c, col.get("of"), f"{where}.of"),
            )
        )
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
    for i, row in enumerate(obj):
        where = f"rows[{i}]"
        row = c.mapping(row, where, _ROW_KEYS, {"key", "label"})
        key = c.string(row["key"], f"{where}.key")
        where = f"rows[{key}]"
        if any(r.key == key for r in rows):
            raise c.fail(f"{where}.key", f"duplicate row key {key!r}")
        groups = None
        if "groups" in row:
            groups = _parse_row_groups(c, row["groups"], f"{where}.groups", group)
        own = groups if groups is not None else group.values
        label_cells = _parse_label(c, row["label"], f"{where}.label", group, own, label_columns)
        paper: dict[Any, tuple[Any, ...]] = {}
        for g, values in _per_group(
            c, row.get("paper") or {}, f"{where}.paper", group, own
        ).items():
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
        baseline = row.get("baseline")
        if baseline is not None:
            baseline = c.string(baseline, f"{where}.baseline")
        not_evaluated = _parse_not_evaluated(c, row.get("not_evaluated", []), where, columns)
        for g, values in paper.items():
            for column_key in not_evaluated:
                j = next(j for j, col in enumerate(columns) if col.key == column_key)
                if values[j] is not None:
                    raise c.fail(
                        f"{where}.paper[{g}][{j}]",
                        f"column {column_key!r} is not_evaluated for this row; its paper value "
                        "is null",
                    )
        cited = c.string(row["cited"], f"{where}.cited") if "cited" in row else None
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
    if not isinstance(obj, list):
        raise c.fail(where, "expected a list of column keys")
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
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not math.isfinite(value)
        ):
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
        entry = c.mapping(entry, where, _MERGE_KEYS, _MERGE_KEYS)
        keys = entry["rows"]
        if not isinstance(keys, list) or len(keys) < 2:
            raise c.fail(f"{where}.rows", "expected a list of two or more row keys")
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
    if not isinstance(obj, dict):
        raise c.fail("highlight", "expected a mapping style -> rule")
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
