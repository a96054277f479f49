"""Figures: our certified-accuracy curves against the paper's published points.

A figure spec (``specs/<name>.yaml`` with ``kind: figure``; schema in ``spec.py``) names
a table spec. That table's cells file supplies our logs; the table supplies the rows,
their labels, the group values and the paper's certified accuracies. Each group value
gets a panel: per row, our certified accuracy on a radius grid as a step line, and the
paper's published values as hollow markers of the same colour.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from robustreg.certify import certified_accuracy, read_certify_log
from robustreg.io import atomic_path, write_text_atomic
from robustreg.tables.render import CellsFile, environment, load_cells, sources
from robustreg.tables.spec import FigureSpec, TableSpec, load_figure_spec

__all__ = ["curve_grid", "figure_curves", "load_figure_spec", "paper_points", "render_figure"]


def curve_grid(max_radius: float, step: float) -> np.ndarray:
    """Radii 0, step, 2 step, ... through the first one past ``max_radius``, so the
    curve's final drop to zero is drawn."""
    # rounded, so 0.3 / 0.01 = 29.999999999999996 counts as 30 steps and grid points
    # land exactly on the table's radii (25 * 0.01 != 0.25 in floating point)
    n = math.floor(round(max_radius / step, 9)) + 1
    return np.round(np.arange(n + 1) * step, 10)


def figure_curves(figure: FigureSpec, cells: CellsFile) -> pd.DataFrame:
    """Our curves: row, group, radius, ours (certified accuracy as a fraction), one grid
    per group, reaching past the largest certified radius of the group's plotted logs."""
    records = []
    for group in cells.spec.group.values:
        plotted = {c.row: c for c in cells.cells if c.group == group and c.row in figure.rows}
        logs = {row: read_certify_log(cell.logs[0]) for row, cell in plotted.items()}
        if not logs:
            continue
        top = max(float(log["radius"].max()) for log in logs.values())
        grid = curve_grid(top, figure.radius_step)
        for row in figure.rows:
            if row in logs:
                accuracy = certified_accuracy(logs[row]["radius"], logs[row]["correct"], grid)
                records += [
                    {"row": row, "group": group, "radius": r, "ours": float(a)}
                    for r, a in zip(grid, accuracy, strict=True)
                ]
    return pd.DataFrame.from_records(records, columns=["row", "group", "radius", "ours"])


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


def _legend_title(spec: TableSpec) -> str:
    table = spec.source.get("table")
    return f"ours (line) / paper {f'Table {table} ' if table else ''}(markers)"


def _draw(figure: FigureSpec, spec: TableSpec, curves: pd.DataFrame, points: pd.DataFrame):
    # plan.py imports this module to check figure names; matplotlib loads only to draw
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

    groups = spec.group.values
    fig = Figure(figsize=(4.2 * len(groups), 3.6), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(groups), sharey=True, squeeze=False)[0]
    for ax, group in zip(axes, groups, strict=True):
        handles = []
        for i, key in enumerate(figure.rows):
            row = spec.row(key)
            if not row.in_group(group):
                continue
            colour = f"C{i % 10}"
            ours = curves[(curves.row == key) & (curves.group == group)]
            ax.step(ours.radius, ours.ours, where="post", color=colour, linewidth=1.2)
            paper = points[(points.row == key) & (points.group == group)]
            ax.plot(
                paper.radius,
                paper.paper,
                linestyle="none",
                marker="o",
                markerfacecolor="none",
                markeredgecolor=colour,
                markersize=4,
            )
            handles.append(
                Line2D(
                    [],
                    [],
                    color=colour,
                    marker="o",
                    markerfacecolor="none",
                    label=row.labels[group],
                )
            )
        ax.set_title(f"{spec.group.label} = {spec.group.text(group)}")
        ax.set_xlabel(r"$\ell_2$ radius")
        ax.set_ylim(0.0, 1.02)
        ax.grid(alpha=0.3)
        ax.legend(
            handles=handles, title=_legend_title(spec), fontsize="x-small", title_fontsize="x-small"
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
    fig = _draw(fspec, cells.spec, curves, paper_points(fspec, cells.spec))
    with atomic_path(pdf) as tmp:
        # no creation date, so an unchanged figure gives an unchanged file
        fig.savefig(tmp, format="pdf", metadata={"CreationDate": None})
    with atomic_path(png) as tmp:
        fig.savefig(tmp, format="png", dpi=150)
    context = _context(fspec, cells, md=md, tex=tex, pdf=pdf, png=png)
    for kind, path in (("md", md), ("tex", tex)):
        text = environment(kind).get_template(f"figure.{kind}.j2").render(**context)
        write_text_atomic(Path(path), text)
    return curves


def _context(figure: FigureSpec, cells: CellsFile, md, tex, pdf, png) -> dict[str, Any]:
    spec = cells.spec
    table = spec.source.get("table")
    return {
        "name": figure.name,
        "title": figure.title,
        "caption": figure.caption,
        "source": figure.source,
        "group": spec.group,
        "step": f"{figure.radius_step:g}",
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
