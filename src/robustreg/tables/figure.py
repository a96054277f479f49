"""Figures: our certified-accuracy curves, against the paper's published points if any.

A figure spec (``specs/<name>.yaml`` with ``kind: figure``; schema in ``spec.py``) names
a table spec. That table's cells file supplies our logs; the table supplies the rows,
their labels, the group values and the paper's certified accuracies. Without ``panels``
each group value gets a panel with one colour per row; with ``panels`` each listed panel
draws its rows at every group value, one colour per group value, and names each line
"<row label>, <group label> = <value>" (the row label without the label columns that all
the panel's lines share, which the panel title names). Each line is our certified
accuracy on a radius grid as a step line in the row's line style; the paper's published
values, where the table has them, are hollow markers of the same colour.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from robustreg.certify import certified_accuracy, read_certify_log
from robustreg.io import atomic_path, write_text_atomic
from robustreg.tables.render import CellsFile, environment, load_cells, sources
from robustreg.tables.spec import LINE_STYLES, FigureSpec, TableSpec, load_figure_spec

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = [
    "curve_grid",
    "draw_figure",
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


def curve_grid(max_radius: float, step: float) -> np.ndarray:
    """Radii 0, step, 2 step, ... through the first one past ``max_radius``, so the
    curve's final drop to zero is drawn."""
    # rounded, so 0.3 / 0.01 = 29.999999999999996 counts as 30 steps and grid points
    # land exactly on the table's radii (25 * 0.01 != 0.25 in floating point)
    n = math.floor(round(max_radius / step, 9)) + 1
    return np.round(np.arange(n + 1) * step, 10)


def _panels(figure: FigureSpec, spec: TableSpec) -> list[_Panel]:
    """The figure's panels, left to right, with every line they may draw."""
    group = spec.group
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


def figure_curves(figure: FigureSpec, cells: CellsFile) -> pd.DataFrame:
    """Our curves: panel (its index), row, group, radius, ours (certified accuracy as a
    fraction), one grid per panel, reaching past the largest certified radius of the
    panel's plotted logs."""
    logs = {(c.row, c.group): c.logs[0] for c in cells.cells if c.row in figure.rows}
    records = []
    for index, panel in enumerate(_panels(figure, cells.spec)):
        plotted = {
            (line.row, line.group): read_certify_log(logs[line.row, line.group])
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


def paper_points(figure: FigureSpec, spec: TableSpec) -> pd.DataFrame:
    """The paper's certified accuracies (fractions) at the table's radii: row, group,
    radius, paper."""
    records = []
    for group in spec.group.values:
        for key in figure.rows:
            values = spec.row(key).paper.get(group)
            if values is None:
                continue
            for column, value in zip(spec.columns, values, strict=True):
                if column.metric == "certified_accuracy" and value is not None:
                    paper = value / 100.0 if column.percent else value
                    records.append(
                        {"row": key, "group": group, "radius": column.radius, "paper": paper}
                    )
    return pd.DataFrame.from_records(records, columns=["row", "group", "radius", "paper"])


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
    # plan.py imports this module to check figure names; matplotlib loads only to draw
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

    panels = _panels(figure, spec)
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
            paper = points[(points.row == line.row) & (points.group == line.group)]
            if ours.empty and paper.empty:
                continue
            if not ours.empty:
                ax.step(
                    ours.radius,
                    ours.ours,
                    where="post",
                    color=line.colour,
                    linestyle=line.style,
                    linewidth=1.2,
                )
            handle_marker = {}
            if not paper.empty:
                ax.plot(
                    paper.radius,
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
        ax.set_xlabel(r"$\ell_2$ radius")
        ax.set_ylim(0.0, 1.02)
        ax.grid(alpha=0.3)
        ax.legend(
            handles=handles,
            title=_legend_title(spec, marked),
            fontsize="x-small",
            title_fontsize="x-small",
        )
    axes[0].set_ylabel("certified accuracy")
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
) -> pd.DataFrame:
    """Draw figure spec ``figure`` (from ``spec_dir``, default the package's specs folder)
    from the cells file of its table: PDF and PNG (dpi 150), a Markdown page linking the
    PNG and a LaTeX figure including the PDF, each written atomically.

    Returns our curves (see ``figure_curves``)."""
    fspec = load_figure_spec(figure, spec_dir)
    cells = load_cells(cells_path, spec_dir)
    if cells.spec.name != fspec.table:
        raise ValueError(
            f"{cells_path}: table: figure {fspec.name} draws table {fspec.table}, "
            f"not {cells.spec.name}"
        )
    curves = figure_curves(fspec, cells)
    points = paper_points(fspec, cells.spec)
    fig = draw_figure(fspec, cells.spec, curves, points)
    with atomic_path(pdf) as tmp:
        # no creation date, so an unchanged figure gives an unchanged file
        fig.savefig(tmp, format="pdf", metadata={"CreationDate": None})
    with atomic_path(png) as tmp:
        fig.savefig(tmp, format="png", dpi=150)
    context = _context(fspec, cells, points, md=md, tex=tex, pdf=pdf, png=png)
    for kind, path in (("md", md), ("tex", tex)):
        text = environment(kind).get_template(f"figure.{kind}.j2").render(**context)
        write_text_atomic(Path(path), text)
    return curves


def _context(
    figure: FigureSpec, cells: CellsFile, points: pd.DataFrame, md, tex, pdf, png
) -> dict[str, Any]:
    spec = cells.spec
    table = spec.source.get("table")
    return {
        "name": figure.name,
        "title": figure.title,
        "caption": figure.caption,
        "source": figure.source,
        "group": spec.group,
        "step": f"{figure.radius_step:g}",
        "colour_by": spec.group.label if figure.panels else None,
        "styles": _styles_text(figure, spec) if figure.styles else None,
        "markers": not points.empty,
        "published": f"Table {table} of the paper" if table else "the paper",
        "banner": cells.banner,
        "default_banner": (
            None
            if cells.banner
            else f"Our curves come from the certification logs listed in {cells.path.name}; "
            "their scale (training and certification settings) is not stated."
        ),
        "sources": sources(cells, figure.rows),
        "cells_file": cells.path.name,
        "png": _relative(png, md),
        "pdf": _relative(pdf, tex),
    }


def _styles_text(figure: FigureSpec, spec: TableSpec) -> str:
    """Which rows each line style draws, as the legends name them, e.g. "solid: ADRE_ADV;
    dashed: SmoothAdv"."""
    names: dict[str, list[str]] = {style: [] for style in LINE_STYLES}
    for panel in _panels(figure, spec):
        for line in panel.lines:
            if line.name not in names[line.style]:
                names[line.style].append(line.name)
    return "; ".join(f"{style}: {', '.join(rows)}" for style, rows in names.items() if rows)
