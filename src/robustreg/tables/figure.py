"""Figures: our curves, against the paper's published points if any.

A figure spec (``specs/<name>.yaml`` with ``kind: figure``; schema in ``spec.py``) names
a table spec. That table's cells file supplies our logs; the table supplies the rows,
their labels, the group values and the paper's values. It draws one of two kinds of curve:

- certified accuracy against ℓ2 radius, from a results table's certification logs.
  Without ``panels`` each group value gets a panel with one colour per row; with ``panels``
  each listed panel draws its rows at every group value, one colour per group value, and
  names each line "<row label>, <group label> = <value>" (the row label without the label
  columns that all the panel's lines share, which the panel title names). Each line is our
  certified accuracy on a radius grid as a step line.
- % error against adversarial distance (Finlay & Oberman, Figures 1 and B.2), from a
  robustness table's minimum-distance attack logs. Each panel has a norm and draws its
  rows, one colour per row in every panel: the fraction of images whose smallest
  adversarial distance in that norm (over the logs of the row's columns in that norm, as
  the table reads them) is at most eps, drawn exactly (``error_curve``).

Lines are drawn in the row's line style; the paper's published values (certified
accuracies; empirical errors at the table's eps), where the table has them, are hollow
markers of the same colour.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from robustreg.certify import certified_accuracy
from robustreg.io import atomic_path, write_text_atomic
from robustreg.tables.cells import Cell, CellsFile, load_cells
from robustreg.tables.render import environment, sources
from robustreg.tables.robustness import Reader, empirical_error, smallest_distances
from robustreg.tables.spec import FigureSpec, TableSpec, load_figure_spec
from robustreg.tables.vocabulary import DISTANCE_METRICS, LINE_STYLES, ROBUSTNESS

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = [
    "curve_grid",
    "draw_figure",
    "error_curve",
    "figure_curves",
    "load_figure_spec",
    "paper_points",
    "render_figure",
]


@dataclass(frozen=True)
class _Line:
    row: str
    group: Any
    colour: str
    style: str
    name: str  # the row's part of the legend entry
    label: str  # the legend entry


@dataclass(frozen=True)
class _Panel:
    title: str
    lines: tuple[_Line, ...]  # legend order
    norm: str | None = None  # robustness figures: the distance of the x axis
    eps_max: float | None = None  # robustness figures: where the x axis ends


# x-axis labels of robustness panels (matplotlib mathtext)
_DISTANCE_LABELS = {
    "l2": r"$\ell_2$ distance $\varepsilon$",
    "linf": r"$\ell_\infty$ distance $\varepsilon$",
}


def curve_grid(max_radius: float, step: float) -> np.ndarray:
    """Radii 0, step, 2 step, ... through the first one past ``max_radius``, so the
    curve's final drop to zero is drawn."""
    # rounded, so 0.3 / 0.01 = 29.999999999999996 counts as 30 steps and grid points
    # land exactly on the table's radii (25 * 0.01 != 0.25 in floating point)
    n = math.floor(round(max_radius / step, 9)) + 1
    return np.round(np.arange(n + 1) * step, 10)


def error_curve(distance: np.ndarray, eps_max: float) -> tuple[np.ndarray, np.ndarray]:
    """The exact step curve of the empirical error up to ``eps_max`` (Finlay & Oberman,
    Figures 1 and B.2): eps = 0, every distinct per-image distance in (0, eps_max] and
    eps_max, and the error (fraction) at each, which holds until the next eps (a step drawn
    "post").

    ``distance`` is per image (``robustness.smallest_distances``: 0 misclassified, inf
    unbroken). The error at eps is ``robustness.empirical_error``, the value a robustness
    table prints at its eps, so the curve passes through the table's values; it is right-
    continuous (an image counts from its own distance on) and starts at the clean error.
    """
    inside = distance[(distance > 0) & (distance <= eps_max)]
    eps = np.unique(np.concatenate([[0.0], inside, [eps_max]]))
    return eps, np.array([empirical_error(distance, e) for e in eps])


def _panels(figure: FigureSpec, spec: TableSpec) -> list[_Panel]:
    """The figure's panels, left to right, with every line they may draw."""
    group = spec.group
    if figure.draws == ROBUSTNESS:
        return _robustness_panels(figure, spec)
    if not figure.panels:
        return [
            _Panel(
                title=f"{group.label} = {group.text(g)}",
                lines=tuple(
                    _Line(
                        row=key,
                        group=g,
                        colour=f"C{i % 10}",
                        style=figure.style(key),
                        name=spec.row(key).labels[g],
                        label=spec.row(key).labels[g],
                    )
                    for i, key in enumerate(figure.rows)
                    if spec.row(key).in_group(g)
                ),
            )
            for g in group.values
        ]
    panels = []
    for panel in figure.panels:
        # group-major, so each colour's lines (one per row) stand together in the legend
        pairs = [
            (key, i, g)
            for i, g in enumerate(group.values)
            for key in panel.rows
            if spec.row(key).in_group(g)
        ]
        names = _row_names(spec, [(key, g) for key, _, g in pairs])
        lines = tuple(
            _Line(
                row=key,
                group=g,
                colour=f"C{i % 10}",
                style=figure.style(key),
                name=names[key, g],
                label=f"{names[key, g]}, {group.label} = {group.text(g)}",
            )
            for key, i, g in pairs
        )
        panels.append(_Panel(title=panel.title, lines=lines))
    return panels


def _robustness_panels(figure: FigureSpec, spec: TableSpec) -> list[_Panel]:
    """A line per (row, group value of the row) in each panel, one colour per row across
    panels; labelled by the row's label, and its group value where it has several."""
    colours = {key: f"C{i % 10}" for i, key in enumerate(figure.rows)}
    panels = []
    for panel in figure.panels:
        lines = []
        for key in panel.rows:
            row = spec.row(key)
            own = [g for g in spec.group.values if row.in_group(g)]
            for g in own:
                label = row.labels[g]
                if len(own) > 1:
                    label = f"{label}, {spec.group.label} = {spec.group.text(g)}"
                lines.append(_Line(key, g, colours[key], figure.style(key), label, label))
        panels.append(_Panel(panel.title, tuple(lines), norm=panel.norm, eps_max=panel.eps_max))
    return panels


def _row_names(spec: TableSpec, pairs: list[tuple[str, Any]]) -> dict[tuple[str, Any], str]:
    """Row labels of one panel's (row, group) lines without the label columns all its
    lines share: a panel's title names what they share (its dataset, say), so the legend
    says "SmoothAdv" rather than "CIFAR-10, Method = SmoothAdv". Full labels when every
    column is shared."""
    cells = {(key, g): spec.row(key).label_cells[g] for key, g in pairs}
    differ = [j for j in range(len(spec.label_columns)) if len({c[j] for c in cells.values()}) > 1]
    if not differ:
        return {(key, g): spec.row(key).labels[g] for key, g in pairs}
    headers = spec.label_columns
    return {
        pair: ", ".join([c[differ[0]], *(f"{headers[j]} = {c[j]}" for j in differ[1:])])
        for pair, c in cells.items()
    }


def figure_curves(
    figure: FigureSpec, cells: CellsFile, reader: Reader | None = None
) -> pd.DataFrame:
    """Our curves. Certify figures: panel (its index), row, group, radius, ours (certified
    accuracy as a fraction), one grid per panel, reaching past the largest certified radius
    of the panel's plotted logs. Robustness figures: panel, row, group, eps, ours (% error),
    the points of ``error_curve`` up to the panel's eps_max."""
    reader = reader or Reader()  # reads each log once, though a log may serve two panels
    if figure.draws == ROBUSTNESS:
        return _error_curves(figure, cells, reader)
    logs = {(c.row, c.group): c.logs[0] for c in cells.cells if c.row in figure.rows}
    records = []
    for index, panel in enumerate(_panels(figure, cells.spec)):
        plotted = {
            (line.row, line.group): reader.certification(logs[line.row, line.group])
            for line in panel.lines
            if (line.row, line.group) in logs
        }
        if not plotted:
            continue
        top = max(float(log["radius"].max()) for log in plotted.values())
        grid = curve_grid(top, figure.radius_step)
        for (row, group), log in plotted.items():
            accuracy = certified_accuracy(log["radius"], log["correct"], grid)
            records += [
                {"panel": index, "row": row, "group": group, "radius": r, "ours": float(a)}
                for r, a in zip(grid, accuracy, strict=True)
            ]
    return pd.DataFrame.from_records(records, columns=["panel", "row", "group", "radius", "ours"])


def _error_curves(figure: FigureSpec, cells: CellsFile, reader: Reader) -> pd.DataFrame:
    """Per panel and line, ``error_curve`` of the per-image smallest distance in the panel's
    norm over the row's logs (section 4: "the best adversarial distance on a per image
    basis, in each norm"), in percent."""
    by_cell = {(c.row, c.group): c for c in cells.cells}
    records = []
    for index, panel in enumerate(_panels(figure, cells.spec)):
        for line in panel.lines:
            cell = by_cell.get((line.row, line.group))
            paths = _distance_logs(cells, cell, panel.norm) if cell else ()
            if not paths:
                continue
            logs = [reader.outcomes(p) for p in paths]  # its errors name the file
            try:
                distance = smallest_distances(logs, panel.norm)
            except ValueError as err:
                raise ValueError(f"{', '.join(map(str, paths))}: {err}") from None
            eps, error = error_curve(distance, panel.eps_max)
            records += [
                {"panel": index, "row": line.row, "group": line.group, "eps": e, "ours": 100 * v}
                for e, v in zip(eps.tolist(), error.tolist(), strict=True)
            ]
    return pd.DataFrame.from_records(records, columns=["panel", "row", "group", "eps", "ours"])


def _distance_logs(cells: CellsFile, cell: Cell, norm: str) -> tuple[Path, ...]:
    """The outcome logs a robustness cell's ``norm`` distances come from: those of its
    columns of that norm (DISTANCE_METRICS), which must all list the same logs for the line
    to agree with each of them; none if the cell has no such column."""
    spec = cells.spec
    columns = [
        c.key
        for c in spec.columns
        if c.metric in DISTANCE_METRICS and c.norm == norm and c.key in cell.files
    ]
    for key in columns[1:]:
        if set(cell.files[key]) != set(cell.files[columns[0]]):
            raise ValueError(
                f"{cells.path}: row {cell.row!r}: columns {columns[0]!r} and {key!r} list "
                f"different {norm} outcome logs; a figure line draws one set"
            )
    return cell.files[columns[0]] if columns else ()


def paper_points(figure: FigureSpec, spec: TableSpec) -> pd.DataFrame:
    """The paper's values of the plotted rows. Certify figures: certified accuracies
    (fractions) at the table's radii: row, group, radius, paper. Robustness figures: the
    empirical errors (percent) at the table's eps: row, group, norm, eps, paper."""
    if figure.draws == ROBUSTNESS:
        records = [
            {"row": key, "group": group, "norm": column.norm, "eps": column.eps, "paper": value}
            for key, group, column, value in _published(figure, spec, "empirical_error", 100.0)
        ]
        return pd.DataFrame.from_records(records, columns=["row", "group", "norm", "eps", "paper"])
    records = [
        {"row": key, "group": group, "radius": column.radius, "paper": value}
        for key, group, column, value in _published(figure, spec, "certified_accuracy", 1.0)
    ]
    return pd.DataFrame.from_records(records, columns=["row", "group", "radius", "paper"])


def _published(figure: FigureSpec, spec: TableSpec, metric: str, scale: float):
    """(row, group, column, value) of each published ``metric`` value of the plotted rows,
    as a fraction times ``scale`` (1: a fraction, 100: percent)."""
    for group in spec.group.values:
        for key in figure.rows:
            values = spec.row(key).paper.get(group)
            if values is None:
                continue
            for column, value in zip(spec.columns, values, strict=True):
                if column.metric == metric and value is not None:
                    fraction = value / 100.0 if column.percent else value
                    yield key, group, column, fraction * scale


def _panel_points(panel: _Panel, line: _Line, points: pd.DataFrame) -> pd.DataFrame:
    """The paper's points of ``line`` that ``panel`` draws: all of them, or in a robustness
    panel those of its norm."""
    paper = points[(points.row == line.row) & (points.group == line.group)]
    return paper if panel.norm is None else paper[paper.norm == panel.norm]


def _legend_title(spec: TableSpec, markers: bool) -> str:
    if not markers:
        return "ours"
    table = spec.source.get("table")
    return f"ours (line) / paper {f'Table {table} ' if table else ''}(markers)"


def draw_figure(
    figure: FigureSpec, spec: TableSpec, curves: pd.DataFrame, points: pd.DataFrame
) -> Figure:
    """The matplotlib Figure of ``figure`` from our curves (``figure_curves``) and the
    paper's points (``paper_points``); a line with neither is left out."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

    panels = _panels(figure, spec)
    x = "eps" if figure.draws == ROBUSTNESS else "radius"
    fig = Figure(figsize=(4.2 * len(panels), 3.6), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(panels), sharey=True, squeeze=False)[0]
    for index, (ax, panel) in enumerate(zip(axes, panels, strict=True)):
        handles = []
        marked = False  # any of the paper's points in this panel
        for line in panel.lines:
            ours = curves[
                (curves.panel == index) & (curves.row == line.row) & (curves.group == line.group)
            ]
            paper = _panel_points(panel, line, points)
            if ours.empty and paper.empty:
                continue
            if not ours.empty:
                ax.step(
                    ours[x],
                    ours.ours,
                    where="post",
                    color=line.colour,
                    linestyle=line.style,
                    linewidth=1.2,
                )
            handle_marker = {}
            if not paper.empty:
                ax.plot(
                    paper[x],
                    paper.paper,
                    linestyle="none",
                    marker="o",
                    markerfacecolor="none",
                    markeredgecolor=line.colour,
                    markersize=4,
                )
                handle_marker = {"marker": "o", "markerfacecolor": "none"}
                marked = True
            handles.append(
                Line2D(
                    [],
                    [],
                    color=line.colour,
                    linestyle=line.style,
                    label=line.label,
                    **handle_marker,
                )
            )
        ax.set_title(panel.title)
        if panel.norm is None:
            ax.set_xlabel(r"$\ell_2$ radius")
            ax.set_ylim(0.0, 1.02)
        else:
            ax.set_xlabel(_DISTANCE_LABELS[panel.norm])
            ax.set_xlim(0.0, panel.eps_max)
            ax.set_ylim(0.0, 102.0)
        ax.grid(alpha=0.3)
        ax.legend(
            handles=handles,
            title=_legend_title(spec, marked),
            fontsize="x-small",
            title_fontsize="x-small",
        )
    # top-1 or top-5 error: the caption says which
    axes[0].set_ylabel("% error" if figure.draws == ROBUSTNESS else "certified accuracy")
    return fig


def _relative(target: str | os.PathLike, start: str | os.PathLike) -> str:
    return Path(os.path.relpath(Path(target), Path(start).parent)).as_posix()


def render_figure(
    figure: str,
    cells_path: str | os.PathLike,
    pdf: str | os.PathLike,
    png: str | os.PathLike,
    md: str | os.PathLike,
    tex: str | os.PathLike,
    spec_dir: str | os.PathLike | None = None,
    logs_root: str | os.PathLike | None = None,
) -> pd.DataFrame:
    """Draw figure spec ``figure`` (from ``spec_dir``, default the package's specs folder)
    from the cells file of its table, its logs read from ``logs_root`` (``load_cells``): PDF
    and PNG (dpi 150), a Markdown page linking the PNG and a LaTeX figure including the PDF,
    each written atomically.

    Returns our curves (see ``figure_curves``)."""
    fspec = load_figure_spec(figure, spec_dir)
    cells = load_cells(cells_path, spec_dir, logs_root)
    if cells.spec.name != fspec.table:
        raise ValueError(
            f"{cells_path}: table: figure {fspec.name} draws table {fspec.table}, "
            f"not {cells.spec.name}"
        )
    reader = Reader()
    curves = figure_curves(fspec, cells, reader)
    points = paper_points(fspec, cells.spec)
    fig = draw_figure(fspec, cells.spec, curves, points)
    with atomic_path(pdf) as tmp:
        # no creation date, so an unchanged figure gives an unchanged file
        fig.savefig(tmp, format="pdf", metadata={"CreationDate": None})
    with atomic_path(png) as tmp:
        fig.savefig(tmp, format="png", dpi=150)
    context = _context(fspec, cells, points, md=md, tex=tex, pdf=pdf, png=png)
    context["values"] = [] if fspec.draws == ROBUSTNESS else values_at_radii(fspec, cells, reader)
    for kind, path in (("md", md), ("tex", tex)):
        text = environment(kind).get_template(f"figure.{kind}.j2").render(**context)
        write_text_atomic(Path(path), text)
    return curves


def values_at_radii(figure: FigureSpec, cells: CellsFile, reader: Reader) -> list[dict[str, Any]]:
    """Per plotted line of a certify figure, in panel order, our certified accuracy at the
    radii of its table's certified-accuracy columns: what a reader would otherwise read off
    the curves (Figure 2 of Feng et al.: both T-CERTIFY curves at the paper's radii).
    Entries: panel (its title), name (the line's, as the legend gives it) and accuracies, a
    list of (radius, accuracy) texts."""
    spec = cells.spec
    radii = sorted({c.radius for c in spec.columns if c.metric == "certified_accuracy"})
    logs = {(c.row, c.group): c.logs[0] for c in cells.cells if c.row in figure.rows}
    entries = []
    for panel in _panels(figure, spec):
        for line in panel.lines:
            if not radii or (line.row, line.group) not in logs:
                continue
            log = reader.certification(logs[line.row, line.group])
            accuracy = certified_accuracy(log["radius"], log["correct"], np.asarray(radii))
            entries.append(
                {
                    "panel": panel.title,
                    "name": line.name,
                    "accuracies": [
                        (f"{r:g}", f"{a:.2f}") for r, a in zip(radii, accuracy, strict=True)
                    ],
                }
            )
    return entries


def _context(
    figure: FigureSpec, cells: CellsFile, points: pd.DataFrame, md, tex, pdf, png
) -> dict[str, Any]:
    spec = cells.spec
    table = spec.source.get("table")
    robustness = figure.draws == ROBUSTNESS
    if robustness:
        panels = _panels(figure, spec)
        markers = any(
            not _panel_points(panel, line, points).empty for panel in panels for line in panel.lines
        )
        logs, settings = "minimum-distance attack outcome logs", "training and attack settings"
    else:
        markers = not points.empty
        logs, settings = "certification logs", "training and certification settings"
    return {
        "name": figure.name,
        "title": figure.title,
        "caption": figure.caption,
        "source": figure.source,
        "group": spec.group,
        "robustness": robustness,
        "step": None if robustness else f"{figure.radius_step:g}",
        "colour_by": spec.group.label if figure.panels and not robustness else None,
        "styles": _styles_text(figure, spec) if figure.styles else None,
        "markers": markers,
        "published": f"Table {table} of the paper" if table else "the paper",
        "banner": cells.banner,
        "default_banner": (
            None
            if cells.banner
            else f"Our curves come from the {logs} listed in {cells.path.name}; "
            f"their scale ({settings}) is not stated."
        ),
        "sources": _distance_sources(figure, cells) if robustness else sources(cells, figure.rows),
        "cells_file": cells.path.name,
        "png": _relative(png, md),
        "pdf": _relative(pdf, tex),
    }


def _distance_sources(figure: FigureSpec, cells: CellsFile) -> list[dict[str, Any]]:
    """``render.sources`` for a robustness figure: per plotted cell, only the outcome logs
    its lines read, per norm, as written in the cells file."""
    norms: dict[str, list[str]] = {}  # row -> the norms of the panels that draw it
    for panel in figure.panels:
        for key in panel.rows:
            norms.setdefault(key, [])
            if panel.norm not in norms[key]:
                norms[key].append(panel.norm)
    entries = sources(cells, figure.rows)
    by_row_group = {(c.row, cells.spec.group.text(c.group)): c for c in cells.cells}
    for entry in entries:
        cell = by_row_group[entry["row"], entry["group"]]
        as_written = dict(zip(cell.logs, cell.log_texts, strict=True))
        entry["origins"] = [
            f"{norm}: {', '.join(as_written[path] for path in paths)}"
            for norm in norms[cell.row]
            for paths in [_distance_logs(cells, cell, norm)]
            if paths
        ]
    return [entry for entry in entries if entry["origins"]]


def _styles_text(figure: FigureSpec, spec: TableSpec) -> str:
    """Which rows each line style draws, as the legends name them, e.g. "solid: ADRE_ADV;
    dashed: SmoothAdv"."""
    names: dict[str, list[str]] = {style: [] for style in LINE_STYLES}
    for panel in _panels(figure, spec):
        for line in panel.lines:
            if line.name not in names[line.style]:
                names[line.style].append(line.name)
    return "; ".join(f"{style}: {', '.join(rows)}" for style, rows in names.items() if rows)
