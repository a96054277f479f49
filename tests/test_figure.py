"""Figures (robustreg.tables.figure): spec loading, our curves, the paper's points, outputs."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml
from matplotlib.colors import to_hex
from PIL import Image
from test_plan import merged

from robustreg.certify import certified_accuracy, write_certify_log
from robustreg.plan import ConfigError, cells_document, make_plan, write_cells_document
from robustreg.tables import load_figure_spec, load_spec
from robustreg.tables.cells import load_cells
from robustreg.tables.figure import (
    curve_grid,
    draw_figure,
    error_curve,
    figure_curves,
    paper_points,
    render_figure,
)
from robustreg.tables.spec import available_specs, specs_dir
from robustreg.tables.vocabulary import LINE_STYLES

FIGURE = {
    "name": "fig_mnist",
    "kind": "figure",
    "title": "Figure 1: certified accuracy on MNIST",
    "caption": "Approximate certified accuracy of each training method.",
    "table": "table2_mnist",
    "rows": ["gaussian", "consistency"],
    "radius_step": 0.01,
}

# 5 images each; radii chosen to sit on and between the table's radii (0.25 steps)
LOG_G = ([0.25, 0.0, 0.6, 1.0, 0.3], [1, 0, 1, 1, 0])
LOG_C = ([0.5, 0.75, 1.3, 0.0, 2.5], [1, 1, 1, 0, 1])


def write_log(path: Path, radius: list[float], correct: list[int]) -> Path:
    n = len(radius)
    label = np.arange(n) % 10
    prediction = np.where(np.asarray(correct) == 1, label, -1)
    write_certify_log(path, np.arange(n), label, prediction, radius, np.zeros(n))
    return path


def specs(tmp_path: Path, **changes) -> Path:
    """A specs folder with table2_mnist and the figure spec (``changes`` applied; a None
    value removes the key)."""
    directory = tmp_path / "specs"
    directory.mkdir(exist_ok=True)
    shutil.copy(specs_dir() / "table2_mnist.yaml", directory)
    raw = {k: v for k, v in {**FIGURE, **changes}.items() if v is not None}
    text = yaml.safe_dump(raw, allow_unicode=True, sort_keys=False)
    (directory / "fig_mnist.yaml").write_text(text)
    return directory


def cells_file(tmp_path: Path, table: str = "table2_mnist", banner: str | None = None) -> Path:
    g = write_log(tmp_path / "tables" / "logs" / "g.tsv", *LOG_G)
    c = write_log(tmp_path / "tables" / "logs" / "c.tsv", *LOG_C)
    doc: dict = {"table": table}
    if banner:
        doc["banner"] = banner
    doc["cells"] = [
        {"row": "gaussian", "sigma": 0.5, "log": str(g)},
        {"row": "consistency", "sigma": 0.5, "log": str(c)},
        {"row": "gaussian", "sigma": 1.0, "log": str(g)},
        {"row": "macer", "sigma": 0.5, "log": str(c)},  # not plotted
    ]
    path = tmp_path / "tables" / "table2_mnist.cells.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def test_curve_grid_reaches_past_the_largest_radius_on_exact_points():
    grid = curve_grid(0.3, 0.01)
    assert grid[0] == 0.0 and grid[-1] == 0.31 and len(grid) == 32
    assert 0.25 in grid and 0.3 in grid  # exact, not 0.30000000000000004
    assert list(curve_grid(0.0, 0.5)) == [0.0, 0.5]
    assert curve_grid(2.5, 0.25)[-1] == 2.75


def test_our_curves_equal_certified_accuracy_at_the_table_radii(tmp_path):
    directory = specs(tmp_path)
    figure = load_figure_spec("fig_mnist", directory)
    cells = load_cells(cells_file(tmp_path), directory)
    curves = figure_curves(figure, cells)

    assert set(curves.row) == {"gaussian", "consistency"}  # macer is not plotted
    assert set(curves.group) == {0.5, 1.0}  # no logs at 0.25: no curve
    table_radii = [c.radius for c in cells.spec.columns if c.metric == "certified_accuracy"]
    for row, radius, correct in (("gaussian", *LOG_G), ("consistency", *LOG_C)):
        ours = curves[(curves.row == row) & (curves.group == 0.5)].set_index("radius").ours
        expected = certified_accuracy(radius, correct, table_radii)
        np.testing.assert_array_equal(ours.loc[table_radii].to_numpy(), expected)
    # one grid per group, through the group's largest radius (2.5 at σ = 0.50, 1.0 at 1.00)
    at_half = curves[(curves.group == 0.5) & (curves.row == "gaussian")]
    assert at_half.radius.max() == 2.51 and at_half.ours.iloc[-1] == 0.0
    at_one = curves[curves.group == 1.0]
    assert at_one.radius.max() == 1.01
    assert at_one.set_index("radius").ours[1.0] == pytest.approx(0.2)


def test_paper_points_are_the_tables_published_accuracies(tmp_path):
    directory = specs(tmp_path)
    figure = load_figure_spec("fig_mnist", directory)
    table = load_spec("table2_mnist", directory)
    points = paper_points(figure, table)
    assert len(points) == 2 * 3 * 11  # two rows, three σ, 11 radii (ACR is no point)
    point = points[(points.row == "consistency") & (points.group == 1.0) & (points.radius == 2.5)]
    assert point.paper.tolist() == [pytest.approx(0.203)]  # printed 20.3 (%)


def test_render_figure_writes_pdf_png_markdown_and_latex(tmp_path):
    directory = specs(tmp_path)
    cells_path = cells_file(tmp_path, banner="Quick scale: 5 test images")
    reports = tmp_path / "reports"
    pdf, png = reports / "figures" / "fig_mnist.pdf", reports / "figures" / "fig_mnist.png"
    md, tex = reports / "fig_mnist.md", reports / "fig_mnist.tex"
    curves = render_figure("fig_mnist", cells_path, pdf, png, md, tex, spec_dir=directory)

    assert not curves.empty
    assert pdf.read_bytes().startswith(b"%PDF")
    with Image.open(png) as image:
        image.verify()
    with Image.open(png) as image:
        assert image.format == "PNG" and image.width > 0 and image.height > 0
    text = md.read_text()
    assert text.startswith("> **Quick scale: 5 test images**")
    assert "## Figure 1: certified accuracy on MNIST" in text
    assert "(figures/fig_mnist.png)" in text
    assert (
        "; hollow markers of the same colour: the values published in Table 2 of the paper." in text
    )
    assert "curves only" not in text and "Line styles" not in text and "one colour per" not in text
    assert f"- Gaussian, σ = 0.50: `{tmp_path / 'tables' / 'logs' / 'g.tsv'}`" in text
    assert "MACER" not in text  # only the plotted rows' logs
    # the curves' values at the table's radii, as the legend names the lines
    assert "- σ = 0.50, Gaussian: 0.60 at r = 0; 0.60 at r = 0.25; 0.40 at r = 0.5;" in text
    latex = tex.read_text()
    assert r"\includegraphics[width=\linewidth]{figures/fig_mnist.pdf}" in latex
    caption = next(line for line in latex.splitlines() if line.startswith(r"\caption{"))
    assert caption.startswith(r"\caption{\textbf{Quick scale: 5 test images} Figure 1")
    assert latex.count(r"\begin{figure}") == 1 and latex.rstrip().endswith(r"\end{figure}")


def test_markdown_links_the_png_relative_to_the_page(tmp_path):
    directory = specs(tmp_path)
    cells_path = cells_file(tmp_path)
    out = tmp_path / "out"
    render_figure(
        "fig_mnist", cells_path, out / "pdf" / "f.pdf", out / "img" / "f.png",
        out / "pages" / "f.md", out / "tex" / "f.tex", spec_dir=directory,
    )  # fmt: skip
    assert "](../img/f.png)" in (out / "pages" / "f.md").read_text()
    assert "{../pdf/f.pdf}" in (out / "tex" / "f.tex").read_text()
    assert "scale" in (out / "pages" / "f.md").read_text().splitlines()[0]  # no banner given


def test_cells_file_of_another_table_is_refused(tmp_path):
    directory = specs(tmp_path)
    (directory / "table2_copy.yaml").write_text(
        (directory / "table2_mnist.yaml")
        .read_text()
        .replace("name: table2_mnist", "name: table2_copy")
    )
    cells_path = cells_file(tmp_path, table="table2_copy")
    png = tmp_path / "f.png"
    with pytest.raises(
        ValueError, match=r"figure fig_mnist draws table table2_mnist, not table2_copy"
    ):
        render_figure(
            "fig_mnist", cells_path, tmp_path / "f.pdf", png, tmp_path / "f.md",
            tmp_path / "f.tex", spec_dir=directory,
        )  # fmt: skip
    assert not png.exists()


@pytest.mark.parametrize(
    ("changes", "pattern"),
    [
        (
            {"rows": ["gaussian", "resnet"]},
            r"rows\[1\]: unknown row 'resnet' of table table2_mnist",
        ),
        ({"rows": ["gaussian", "gaussian"]}, r"rows\[1\]: duplicate row 'gaussian'"),
        ({"rows": []}, r"rows: expected a non-empty list"),
        ({"radius_step": 0}, r"radius_step: expected a positive number"),
        ({"radius_step": "fine"}, r"radius_step: expected a finite number"),
        ({"table": "table99"}, r"table: unknown table spec 'table99'"),
        ({"kind": "table"}, r"kind: a table spec, not a figure \(kind: figure\)"),
        ({"colour": "red"}, r"top level: unknown key 'colour'"),
        ({"name": "figure9"}, r"name: 'figure9' differs from the file name 'fig_mnist'"),
        ({"rows": None}, r"top level: missing key 'rows' \(required without panels\)"),
        ({"panels": []}, r"panels: expected a non-empty list of \{title, rows\} mappings"),
        ({"panels": [{"title": "(a)", "rows": []}]}, r"panels\[0\]\.rows: expected a non-empty"),
        ({"panels": [{"rows": ["gaussian"]}]}, r"panels\[0\]: missing key 'title'"),
        (
            {"rows": None, "panels": [{"title": "(a)", "rows": ["gaussian", "resnet"]}]},
            r"panels\[0\]\.rows\[1\]: unknown row 'resnet' of table table2_mnist",
        ),
        (
            {"rows": None, "panels": [{"title": "(a)", "rows": ["gaussian", "gaussian"]}]},
            r"panels\[0\]\.rows\[1\]: duplicate row 'gaussian'",
        ),
        (
            {
                "rows": None,
                "panels": [
                    {"title": "(a)", "rows": ["gaussian", "consistency"]},
                    {"title": "(b)", "rows": ["macer", "gaussian"]},
                ],
            },
            r"panels\[1\]\.rows\[1\]: row 'gaussian' is already in panels\[0\]",
        ),
        (
            {"panels": [{"title": "(a)", "rows": ["gaussian"]}]},
            r"rows: row 'consistency' is in no panel",
        ),
        (
            {"panels": [{"title": "(a)", "rows": ["gaussian", "consistency", "macer"]}]},
            r"rows: row 'macer' of the panels is missing",
        ),
        ({"styles": ["dashed"]}, r"styles: expected a mapping row -> line style"),
        (
            {"styles": {"consistency": "dash"}},
            r"styles\.consistency: unknown line style 'dash' \(known: solid, dashed, dotted",
        ),
        (
            {"styles": {"macer": "dashed"}},
            r"styles\.macer: row 'macer' is not plotted \(rows: gaussian, consistency\)",
        ),
        (
            {
                "rows": None,
                "panels": [{"title": "(a)", "rows": ["gaussian"]}],
                "styles": {"consistency": "dotted"},
            },
            r"styles\.consistency: row 'consistency' is not plotted \(rows: gaussian\)",
        ),
    ],
)
def test_bad_figure_spec_one_line_error(tmp_path, changes, pattern):
    directory = specs(tmp_path, **changes)
    with pytest.raises(ValueError) as err:
        load_figure_spec("fig_mnist", directory)
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith(f"{directory / 'fig_mnist.yaml'}: ")
    assert re.search(pattern, message), message


def test_figure_needs_one_log_per_cell(tmp_path):
    directory = specs(tmp_path)
    raw = yaml.safe_load((directory / "table2_mnist.yaml").read_text())
    raw["columns"][0]["aggregate"] = "mean_std"
    raw["rows"] = [{k: v for k, v in row.items() if k != "paper"} for row in raw["rows"]]
    (directory / "table2_mnist.yaml").write_text(yaml.safe_dump(raw, allow_unicode=True))
    with pytest.raises(ValueError, match=r"table: 'table2_mnist' aggregates seeds"):
        load_figure_spec("fig_mnist", directory)


def test_specs_of_one_kind_do_not_load_as_the_other(tmp_path):
    directory = specs(tmp_path)
    with pytest.raises(ValueError, match=r"fig_mnist\.yaml: kind: a figure spec, not a table"):
        load_spec("fig_mnist", directory)
    with pytest.raises(ValueError, match=r"table2_mnist\.yaml: kind: a table spec, not a figure"):
        load_figure_spec("table2_mnist", directory)


def test_group_panels_colour_by_row_with_the_papers_markers(tmp_path):
    directory = specs(tmp_path)
    figure = load_figure_spec("fig_mnist", directory)
    assert figure.panels == () and figure.style("gaussian") == "solid"
    cells = load_cells(cells_file(tmp_path), directory)
    fig = draw_figure(
        figure, cells.spec, figure_curves(figure, cells), paper_points(figure, cells.spec)
    )
    axes = fig.axes
    assert [ax.get_title() for ax in axes] == ["σ = 0.25", "σ = 0.50", "σ = 1.00"]
    steps = [line for line in axes[1].lines if line.get_marker() == "None"]
    markers = [line for line in axes[1].lines if line.get_marker() == "o"]
    assert [to_hex(line.get_color()) for line in steps] == [to_hex("C0"), to_hex("C1")]
    assert {line.get_linestyle() for line in steps} == {"-"}
    assert [to_hex(line.get_markeredgecolor()) for line in markers] == [to_hex("C0"), to_hex("C1")]
    # no log at σ = 0.25: the paper's markers only, still one legend entry per row
    assert not [line for line in axes[0].lines if line.get_marker() == "None"]
    legend = axes[0].get_legend()
    assert [t.get_text() for t in legend.get_texts()] == ["Gaussian", "+ Consistency (λ = 10)"]
    assert legend.get_title().get_text() == "ours (line) / paper Table 2 (markers)"


@pytest.mark.parametrize(
    "name",
    [
        n
        for n in available_specs()
        if yaml.safe_load((specs_dir() / f"{n}.yaml").read_text(encoding="utf-8")).get("kind")
        == "figure"
    ],
)
def test_package_figure_specs_load(name):
    figure = load_figure_spec(name)
    assert figure.rows and all(figure.style(row) in LINE_STYLES for row in figure.rows)


def test_figure1_mnist_keeps_one_panel_per_sigma():
    figure = load_figure_spec("figure1_mnist")
    assert figure.panels == () and figure.styles == {}


# ------------------------------------------------------------------- figures with panels

MODELS = {
    "name": "fig_models",
    "source": {"paper": "Feng et al. (2020)", "table": 9},
    "title": "Figure 1 as a table",
    "caption": "The numbers behind Figure 1.",
    "label_columns": ["Dataset", "Method"],
    "group_by": {"key": "sigma", "label": "σ", "format": "{:.2f}", "values": [0.25, 0.5]},
    "columns": [
        {"key": "acr", "label": "ACR", "metric": "acr", "decimals": 3},
        {
            "key": "r50",
            "label": "0.5",
            "metric": "certified_accuracy",
            "radius": 0.5,
            "decimals": 2,
        },
    ],
    "rows": [
        {"key": "cifar_adre", "label": ["CIFAR-10", "ADRE_ADV"]},
        {"key": "cifar_adv", "label": ["CIFAR-10", "SmoothAdv"]},
        {"key": "imagenet_adre", "label": ["ImageNet", "ADRE_ADV"]},
        {"key": "imagenet_adv", "label": ["ImageNet", "SmoothAdv"]},
    ],
}

PANELS = {
    "name": "fig_panels",
    "kind": "figure",
    "title": "Figure 1: ADRE_ADV vs SmoothAdv",
    "caption": "ADRE_ADV (solid) and SmoothAdv (dashed).",
    "table": "fig_models",
    "panels": [
        {"title": "(a) CIFAR-10", "rows": ["cifar_adre", "cifar_adv"]},
        {"title": "(b) ImageNet", "rows": ["imagenet_adre", "imagenet_adv"]},
    ],
    "styles": {"cifar_adv": "dashed", "imagenet_adv": "dashed"},
    "radius_step": 0.01,
}

# ImageNet's largest radius (1.0) is well below CIFAR-10's (2.5)
LOG_I = ([0.1, 0.4, 0.0, 0.2], [1, 1, 0, 1])


def panel_specs(tmp_path: Path, paper: dict | None = None, **changes) -> Path:
    """A specs folder with fig_models (``paper``: row key -> its paper values) and
    fig_panels (``changes`` applied; a None value removes the key)."""
    directory = tmp_path / "specs"
    directory.mkdir(exist_ok=True)
    table = {
        **MODELS,
        "rows": [{**r, "paper": (paper or {}).get(r["key"])} for r in MODELS["rows"]],
    }
    table["rows"] = [{k: v for k, v in r.items() if v is not None} for r in table["rows"]]
    (directory / "fig_models.yaml").write_text(yaml.safe_dump(table, allow_unicode=True))
    figure = {k: v for k, v in {**PANELS, **changes}.items() if v is not None}
    (directory / "fig_panels.yaml").write_text(yaml.safe_dump(figure, allow_unicode=True))
    return directory


def panel_cells(tmp_path: Path) -> Path:
    """Both CIFAR-10 rows at both σ; ImageNet at σ = 0.50 only."""
    g = write_log(tmp_path / "tables" / "logs" / "g.tsv", *LOG_G)
    c = write_log(tmp_path / "tables" / "logs" / "c.tsv", *LOG_C)
    i = write_log(tmp_path / "tables" / "logs" / "i.tsv", *LOG_I)
    cells = [
        {"row": "cifar_adre", "sigma": 0.25, "log": str(g)},
        {"row": "cifar_adre", "sigma": 0.5, "log": str(c)},
        {"row": "cifar_adv", "sigma": 0.25, "log": str(c)},
        {"row": "cifar_adv", "sigma": 0.5, "log": str(g)},
        {"row": "imagenet_adre", "sigma": 0.5, "log": str(g)},
        {"row": "imagenet_adv", "sigma": 0.5, "log": str(i)},
    ]
    path = tmp_path / "tables" / "fig_models.cells.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump({"table": "fig_models", "cells": cells}, sort_keys=False))
    return path


def panel_figure(tmp_path: Path, paper: dict | None = None, **changes):
    directory = panel_specs(tmp_path, paper, **changes)
    figure = load_figure_spec("fig_panels", directory)
    cells = load_cells(panel_cells(tmp_path), directory)
    curves = figure_curves(figure, cells)
    points = paper_points(figure, cells.spec)
    return figure, cells, curves, draw_figure(figure, cells.spec, curves, points)


def test_panels_spec_lists_its_rows_in_panel_order(tmp_path):
    figure = load_figure_spec("fig_panels", panel_specs(tmp_path))
    assert figure.rows == ("cifar_adre", "cifar_adv", "imagenet_adre", "imagenet_adv")
    assert [(p.title, p.rows) for p in figure.panels] == [
        ("(a) CIFAR-10", ("cifar_adre", "cifar_adv")),
        ("(b) ImageNet", ("imagenet_adre", "imagenet_adv")),
    ]
    assert figure.style("cifar_adv") == "dashed" and figure.style("cifar_adre") == "solid"
    # rows may be given if they are the panels' rows, in any order
    again = panel_specs(tmp_path, rows=["imagenet_adv", "cifar_adv", "imagenet_adre", "cifar_adre"])
    assert load_figure_spec("fig_panels", again).rows == figure.rows


def test_panels_curves_one_grid_per_panel(tmp_path):
    _, _, curves, _ = panel_figure(tmp_path)
    assert list(curves.columns) == ["panel", "row", "group", "radius", "ours"]
    lines = curves.groupby(["panel", "row", "group"]).radius.max().to_dict()
    # every (row, group) with a log, in its panel; CIFAR-10's grid runs past its largest
    # radius (2.5) even for logs ending at 1.0, ImageNet's past its own (1.0)
    assert lines == {
        (0, "cifar_adre", 0.25): 2.51,
        (0, "cifar_adre", 0.5): 2.51,
        (0, "cifar_adv", 0.25): 2.51,
        (0, "cifar_adv", 0.5): 2.51,
        (1, "imagenet_adre", 0.5): 1.01,
        (1, "imagenet_adv", 0.5): 1.01,
    }
    radii = [0.0, 0.25, 0.5, 1.0]
    for (row, group), log in {
        ("cifar_adre", 0.25): LOG_G,
        ("cifar_adv", 0.25): LOG_C,
        ("imagenet_adv", 0.5): LOG_I,
    }.items():
        ours = curves[(curves.row == row) & (curves.group == group)].set_index("radius").ours
        np.testing.assert_array_equal(ours.loc[radii].to_numpy(), certified_accuracy(*log, radii))


def test_panels_colour_by_group_and_line_style_by_row(tmp_path):
    _, _, _, fig = panel_figure(tmp_path)
    cifar, imagenet = fig.axes
    assert (cifar.get_title(), imagenet.get_title()) == ("(a) CIFAR-10", "(b) ImageNet")
    drawn = [(to_hex(line.get_color()), line.get_linestyle()) for line in cifar.lines]
    c0, c1 = to_hex("C0"), to_hex("C1")
    assert drawn == [(c0, "-"), (c0, "--"), (c1, "-"), (c1, "--")]
    # σ = 0.50 keeps its colour in a panel without σ = 0.25
    drawn = [(to_hex(line.get_color()), line.get_linestyle()) for line in imagenet.lines]
    assert drawn == [(c1, "-"), (c1, "--")]
    assert all(line.get_marker() == "None" for line in cifar.lines + imagenet.lines)
    legend = cifar.get_legend()
    assert [t.get_text() for t in legend.get_texts()] == [
        "ADRE_ADV, σ = 0.25",
        "SmoothAdv, σ = 0.25",
        "ADRE_ADV, σ = 0.50",
        "SmoothAdv, σ = 0.50",
    ]
    assert [h.get_linestyle() for h in legend.legend_handles] == ["-", "--", "-", "--"]
    assert legend.get_title().get_text() == "ours"


def test_panels_keep_full_labels_when_no_label_column_tells_lines_apart(tmp_path):
    _, _, _, fig = panel_figure(
        tmp_path,
        panels=[
            {"title": "(a) CIFAR-10", "rows": ["cifar_adre"]},
            {"title": "(b) ImageNet", "rows": ["imagenet_adre", "imagenet_adv"]},
        ],
        styles={"imagenet_adv": "dotted"},
    )
    cifar, imagenet = fig.axes
    assert [t.get_text() for t in cifar.get_legend().get_texts()] == [
        "CIFAR-10, Method = ADRE_ADV, σ = 0.25",
        "CIFAR-10, Method = ADRE_ADV, σ = 0.50",
    ]
    assert [line.get_linestyle() for line in imagenet.lines] == ["-", ":"]


def test_panels_draw_the_papers_markers_in_the_lines_colour(tmp_path):
    _, _, _, fig = panel_figure(tmp_path, paper={"cifar_adv": {0.5: [None, 0.6]}})
    cifar, imagenet = fig.axes
    (marker,) = [line for line in cifar.lines if line.get_marker() == "o"]
    assert to_hex(marker.get_markeredgecolor()) == to_hex("C1")
    assert marker.get_markerfacecolor() == "none" and marker.get_linestyle() == "None"
    assert list(marker.get_xdata()) == [0.5] and list(marker.get_ydata()) == [0.6]
    assert cifar.get_legend().get_title().get_text() == "ours (line) / paper Table 9 (markers)"
    assert imagenet.get_legend().get_title().get_text() == "ours"


def test_panels_text_says_curves_only_and_names_the_line_styles(tmp_path):
    directory = panel_specs(tmp_path)
    out = tmp_path / "reports"
    md, tex = out / "fig_panels.md", out / "fig_panels.tex"
    curves = render_figure(
        "fig_panels", panel_cells(tmp_path), out / "figures" / "fig_panels.pdf",
        out / "figures" / "fig_panels.png", md, tex, spec_dir=directory,
    )  # fmt: skip
    assert set(curves.panel) == {0, 1}
    text = md.read_text()
    assert (
        "on a grid of step 0.01, one colour per σ. The paper published this figure as curves "
        "only, so no published values are marked. Line styles: solid: ADRE\\_ADV; "
        "dashed: SmoothAdv.\n"
    ) in text
    assert "hollow markers" not in text
    assert (
        f"- CIFAR-10, Method = SmoothAdv, σ = 0.25: `{tmp_path / 'tables' / 'logs' / 'c.tsv'}`"
        in text
    )
    caption = next(line for line in tex.read_text().splitlines() if line.startswith(r"\caption{"))
    assert (
        r"Lines: our certified accuracy (grid step 0.01), one colour per $\sigma$. The paper "
        r"published this figure as curves only, so no published values are marked. Line "
        r"styles: solid: ADRE\_ADV; dashed: SmoothAdv."
    ) in caption
    assert "hollow markers" not in caption


def test_panels_text_with_the_papers_values_names_the_markers(tmp_path):
    directory = panel_specs(tmp_path, paper={"cifar_adv": {0.5: [None, 0.6]}}, styles=None)
    out = tmp_path / "reports"
    md, tex = out / "fig_panels.md", out / "fig_panels.tex"
    render_figure(
        "fig_panels", panel_cells(tmp_path), out / "f.pdf", out / "f.png", md, tex,
        spec_dir=directory,
    )  # fmt: skip
    text = md.read_text()
    assert (
        "one colour per σ; hollow markers of the same colour: the values published in "
        "Table 9 of the paper.\n"
    ) in text
    assert "curves only" not in text and "Line styles" not in text
    assert "one colour per $\\sigma$; hollow markers: the values published in Table 9" in (
        tex.read_text()
    )


# ------------------------------------------------ robustness figures (Finlay & Oberman)
# Synthetic minimum-distance outcome logs of 5 images, written with the attack suite's writer.

ROB_MODELS = {
    "name": "rob_models",
    "source": {"paper": "Finlay & Oberman (2021)", "table": 1},
    "title": "Figure 1 as a table",
    "caption": "The numbers behind Figure 1.",
    "group_by": {"key": "dataset", "label": "Dataset", "values": ["CIFAR-10"], "show": False},
    "columns": [
        {"key": "clean", "label": "% clean error", "metric": "clean_error", "decimals": 2,
         "percent": True},
        {"key": "emp2", "label": "ε = 0.02", "metric": "empirical_error", "norm": "linf",
         "eps": 0.02, "decimals": 2, "percent": True},
        {"key": "emp5", "label": "ε = 0.05", "metric": "empirical_error", "norm": "linf",
         "eps": 0.05, "decimals": 2, "percent": True},
        {"key": "dist", "label": "Mean ℓ2 distance", "metric": "empirical_distance",
         "norm": "l2", "decimals": 2},
    ],
    "rows": [
        {"key": "undefended", "label": "Undefended",
         "paper": {"CIFAR-10": [20.0, 40.0, 80.0, 0.3]}},
        {"key": "l2reg", "label": "Squared ℓ2", "not_evaluated": ["emp2", "emp5"],
         "paper": {"CIFAR-10": [10.0, None, None, 0.5]}},
        {"key": "l1reg", "label": "Squared ℓ1", "not_evaluated": ["dist"],
         "paper": {"CIFAR-10": [10.0, 30.0, None, None]}},
    ],
}  # fmt: skip

ROB_FIGURE = {
    "name": "rob_fig",
    "kind": "figure",
    "title": "Figure 1: error against distance",
    "caption": "Attacks in ℓ2 and ℓ∞.",
    "table": "rob_models",
    "panels": [
        {"title": "(a) ℓ2", "norm": "l2", "eps_max": 1.0, "rows": ["undefended", "l2reg"]},
        {"title": "(b) ℓ∞", "norm": "linf", "eps_max": 0.1, "rows": ["undefended", "l1reg"]},
    ],
}

# (robust, l2, linf) per image; a misclassified image keeps the clean one (0, 0, 0)
L2_PGD = [(0, 0.0, 0.0), (0, 0.3, 0.02), (0, 0.5, 0.04), (0, 0.5, 0.01), (1, 0.0, 0.0)]
L2_CW = [(0, 0.0, 0.0), (0, 0.2, 0.03), (0, 1.5, 0.09), (1, 0.0, 0.0), (0, 1.2, 0.08)]
LINF = [(0, 0.0, 0.0), (0, 0.4, 0.03), (0, 0.9, 0.03), (1, 0.0, 0.0), (0, 2.0, 0.2)]
L2REG = [(0, 0.0, 0.0), (0, 0.0, 0.0), (0, 0.7, 0.05), (0, 0.25, 0.02), (0, 0.7, 0.06)]
L1REG = [(0, 0.0, 0.0), (0, 0.9, 0.01), (0, 0.9, 0.06), (0, 0.9, 0.07), (1, 0.0, 0.0)]


def write_outcome_log(path: Path, rows: list[tuple[int, float, float]]) -> Path:
    from robustreg.attacks.suite import write_outcomes

    n = len(rows)
    robust = np.array([r for r, _, _ in rows])
    path.parent.mkdir(parents=True, exist_ok=True)
    write_outcomes(
        path,
        {
            "idx": np.arange(n),
            "label": np.zeros(n, dtype=int),
            "clean": np.zeros(n, dtype=int),
            "adversarial": 1 - robust,
            "robust": robust,
            "l2": np.array([a for _, a, _ in rows]),
            "linf": np.array([b for _, _, b in rows]),
            "seconds": np.zeros(n),
            "broken_by": np.where(robust == 1, "-", "cw_l2_min"),
        },
    )
    return path


def rob_specs(tmp_path: Path, table: dict | None = None, **changes) -> Path:
    """A specs folder with rob_models (or ``table``) and rob_fig (``changes`` applied; a
    None value removes the key)."""
    directory = tmp_path / "specs"
    directory.mkdir(exist_ok=True)
    (directory / "rob_models.yaml").write_text(
        yaml.safe_dump(table or ROB_MODELS, allow_unicode=True)
    )
    figure = {k: v for k, v in {**ROB_FIGURE, **changes}.items() if v is not None}
    (directory / "rob_fig.yaml").write_text(yaml.safe_dump(figure, allow_unicode=True))
    return directory


def rob_cells(tmp_path: Path, banner: str | None = None, **files) -> Path:
    """The cells file of rob_models: relative log paths, ``files`` replacing a row's."""
    logs = tmp_path / "tables" / "logs"
    for name, rows in (
        ("pgd", L2_PGD), ("cw", L2_CW), ("linf", LINF), ("l2reg", L2REG), ("l1reg", L1REG),
    ):  # fmt: skip
        write_outcome_log(logs / f"{name}.tsv", rows)
    rows = {
        "undefended": {
            "clean": ["logs/linf.tsv"],
            "emp2": ["logs/linf.tsv"],
            "emp5": ["logs/linf.tsv"],
            "dist": ["logs/pgd.tsv", "logs/cw.tsv"],
        },
        "l2reg": {"clean": ["logs/l2reg.tsv"], "dist": ["logs/l2reg.tsv"]},
        "l1reg": {
            "clean": ["logs/l1reg.tsv"],
            "emp2": ["logs/l1reg.tsv"],
            "emp5": ["logs/l1reg.tsv"],
        },
    } | files
    doc: dict = {"table": "rob_models"}
    if banner:
        doc["banner"] = banner
    doc["cells"] = [{"row": r, "dataset": "CIFAR-10", "files": f} for r, f in rows.items()]
    path = tmp_path / "tables" / "rob_models.cells.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False, allow_unicode=True))
    return path


def rob_figure(tmp_path: Path):
    directory = rob_specs(tmp_path)
    figure = load_figure_spec("rob_fig", directory)
    cells = load_cells(rob_cells(tmp_path), directory)
    return figure, cells, figure_curves(figure, cells), paper_points(figure, cells.spec)


def test_error_curve_steps_at_each_distinct_distance():
    # hand-derived, 6 images: one misclassified, two at 0.5, one beyond eps_max, one unbroken
    distance = np.array([0.0, 0.2, 0.5, 0.5, 1.2, np.inf])
    eps, error = error_curve(distance, 1.0)
    assert eps.tolist() == [0.0, 0.2, 0.5, 1.0]
    np.testing.assert_allclose(error, [1 / 6, 2 / 6, 4 / 6, 4 / 6])
    # eps_max on a distance: that step ends the curve once
    eps, error = error_curve(distance, 0.5)
    assert eps.tolist() == [0.0, 0.2, 0.5] and error[-1] == pytest.approx(4 / 6)
    # nothing broken within eps_max: flat at the clean error
    eps, error = error_curve(np.array([0.0, 3.0, np.inf]), 1.0)
    assert eps.tolist() == [0.0, 1.0] and error.tolist() == [1 / 3, 1 / 3]


def test_robustness_figure_spec_parses(tmp_path):
    figure = load_figure_spec("rob_fig", rob_specs(tmp_path))
    assert figure.draws == "robustness" and figure.radius_step is None
    # a row in both panels is one plotted row
    assert figure.rows == ("undefended", "l2reg", "l1reg")
    assert [(p.title, p.norm, p.eps_max, p.rows) for p in figure.panels] == [
        ("(a) ℓ2", "l2", 1.0, ("undefended", "l2reg")),
        ("(b) ℓ∞", "linf", 0.1, ("undefended", "l1reg")),
    ]
    assert load_figure_spec("fig_mnist", specs(tmp_path)).draws == "certify"


@pytest.mark.parametrize(
    ("changes", "pattern"),
    [
        ({"radius_step": 0.01}, r"radius_step: only for figures of certification logs"),
        ({"panels": None}, r"top level: missing key 'panels' \(required for a robustness"),
        (
            {"panels": [{"title": "(a)", "eps_max": 1.0, "rows": ["undefended"]}]},
            r"panels\[0\]: missing key 'norm'",
        ),
        (
            {"panels": [{"title": "(a)", "norm": "l2", "rows": ["undefended"]}]},
            r"panels\[0\]: missing key 'eps_max'",
        ),
        (
            {"panels": [{"title": "(a)", "norm": "l1", "eps_max": 1.0, "rows": ["undefended"]}]},
            r"panels\[0\]\.norm: expected one of l2, linf, got 'l1'",
        ),
        (
            {"panels": [{"title": "(a)", "norm": "l2", "eps_max": 0, "rows": ["undefended"]}]},
            r"panels\[0\]\.eps_max: expected a positive number, got 0",
        ),
        (
            {
                "panels": [
                    ROB_FIGURE["panels"][0],
                    {"title": "(b)", "norm": "linf", "eps_max": 0.1, "rows": ["l1reg", "l2reg"]},
                ]
            },
            r"panels\[1\]\.rows\[1\]: row 'l2reg' evaluates no empirical_error or "
            r"empirical_distance column in linf",
        ),
        (
            {
                "panels": [
                    {"title": "(a)", "norm": "l2", "eps_max": 1.0, "rows": ["l2reg", "l2reg"]},
                ]
            },
            r"panels\[0\]\.rows\[1\]: duplicate row 'l2reg'",
        ),
        (
            {"rows": ["undefended", "l2reg"]},
            r"rows: row 'l1reg' of the panels is missing",
        ),
    ],
)
def test_bad_robustness_figure_spec_one_line_error(tmp_path, changes, pattern):
    directory = rob_specs(tmp_path, **changes)
    with pytest.raises(ValueError) as err:
        load_figure_spec("rob_fig", directory)
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith(f"{directory / 'rob_fig.yaml'}: ")
    assert re.search(pattern, message), message


def test_certify_figure_still_needs_radius_step(tmp_path):
    with pytest.raises(ValueError, match=r"top level: missing key 'radius_step'"):
        load_figure_spec("fig_mnist", specs(tmp_path, radius_step=None))
    with pytest.raises(ValueError, match=r"panels\[0\]: unknown key 'norm' \(allowed: rows, title"):
        load_figure_spec(
            "fig_mnist",
            specs(tmp_path, rows=None, panels=[{"title": "(a)", "norm": "l2", "rows": ["macer"]}]),
        )


def test_robustness_curves_are_the_exact_empirical_error_steps(tmp_path):
    _, _, curves, _ = rob_figure(tmp_path)
    assert list(curves.columns) == ["panel", "row", "group", "eps", "ours"]

    def line(panel, row):
        part = curves[(curves.panel == panel) & (curves.row == row)]
        return part.eps.tolist(), part.ours.tolist()

    # hand-derived. Undefended in l2, the smaller of PGD's and CW's per image:
    # [0, 0.2, 0.5, 0.5, 1.2] -> 20 % clean, 40 % from 0.2, 80 % from 0.5; 1.2 is past 1.0
    eps, ours = line(0, "undefended")
    assert eps == [0.0, 0.2, 0.5, 1.0]
    np.testing.assert_allclose(ours, [20.0, 40.0, 80.0, 80.0])
    # in linf, from its own log only (not the l2 attacks' points): [0, 0.03, 0.03, inf, 0.2]
    eps, ours = line(1, "undefended")
    assert eps == [0.0, 0.03, 0.1]
    np.testing.assert_allclose(ours, [20.0, 60.0, 60.0])
    # Squared l2: [0, 0, 0.7, 0.25, 0.7] -> 40 %, 60 % from 0.25, 100 % from 0.7
    eps, ours = line(0, "l2reg")
    assert eps == [0.0, 0.25, 0.7, 1.0]
    np.testing.assert_allclose(ours, [40.0, 60.0, 100.0, 100.0])
    # Squared l1 in linf: [0, 0.01, 0.06, 0.07, inf]
    eps, ours = line(1, "l1reg")
    assert eps == [0.0, 0.01, 0.06, 0.07, 0.1]
    np.testing.assert_allclose(ours, [20.0, 40.0, 60.0, 80.0, 80.0])
    assert set(zip(curves.panel, curves.row, strict=True)) == {
        (0, "undefended"), (0, "l2reg"), (1, "undefended"), (1, "l1reg"),
    }  # fmt: skip


def test_robustness_curves_agree_with_the_table(tmp_path):
    """The table's empirical errors are points of the figure's curves (same logs, same
    function); step "post": the value at eps is that of the last step at or before it."""
    from robustreg.tables.render import render_table

    directory = rob_specs(tmp_path)
    cells_path = rob_cells(tmp_path)
    _, _, curves, _ = rob_figure(tmp_path)
    frame = render_table(cells_path, tmp_path / "t.md", tmp_path / "t.tex", spec_dir=directory)
    ours = frame.set_index(["row", "column"])["ours"]
    for row in ("undefended", "l1reg"):
        part = curves[(curves.panel == 1) & (curves.row == row)]
        for key, eps in (("emp2", 0.02), ("emp5", 0.05)):
            at = part[part.eps <= eps].ours.iloc[-1]
            assert at == pytest.approx(ours[(row, key)])
        assert part.ours.iloc[0] == pytest.approx(ours[(row, "clean")])
    assert ours[("undefended", "emp5")] == pytest.approx(60.0)


def test_robustness_paper_markers_and_drawing(tmp_path):
    figure, cells, curves, points = rob_figure(tmp_path)
    assert list(points.columns) == ["row", "group", "norm", "eps", "paper"]
    # empirical_error columns only, percent as stored; nulls and other metrics left out
    assert points[["row", "norm", "eps", "paper"]].values.tolist() == [
        ["undefended", "linf", 0.02, 40.0],
        ["undefended", "linf", 0.05, 80.0],
        ["l1reg", "linf", 0.02, 30.0],
    ]
    fig = draw_figure(figure, cells.spec, curves, points)
    l2, linf = fig.axes
    assert (l2.get_title(), linf.get_title()) == ("(a) ℓ2", "(b) ℓ∞")
    assert l2.get_xlabel() == r"$\ell_2$ distance $\varepsilon$"
    assert linf.get_xlabel() == r"$\ell_\infty$ distance $\varepsilon$"
    assert l2.get_ylabel() == "% error"
    assert l2.get_xlim() == (0.0, 1.0) and linf.get_xlim() == (0.0, 0.1)
    assert l2.get_ylim() == (0.0, 102.0)
    # one colour per row in every panel: undefended C0 in both
    c0, c1, c2 = to_hex("C0"), to_hex("C1"), to_hex("C2")
    assert [to_hex(line.get_color()) for line in l2.lines] == [c0, c1]
    steps = [line for line in linf.lines if line.get_marker() == "None"]
    markers = [line for line in linf.lines if line.get_marker() == "o"]
    assert [to_hex(line.get_color()) for line in steps] == [c0, c2]
    assert [to_hex(line.get_markeredgecolor()) for line in markers] == [c0, c2]
    assert list(markers[0].get_xdata()) == [0.02, 0.05]
    assert list(markers[0].get_ydata()) == [40.0, 80.0]
    assert all(line.get_marker() == "None" for line in l2.lines)  # no l2 errors published
    assert steps[0].get_drawstyle() == "steps-post"
    np.testing.assert_allclose(steps[0].get_ydata(), [20.0, 60.0, 60.0])
    assert [t.get_text() for t in linf.get_legend().get_texts()] == ["Undefended", "Squared ℓ1"]
    assert linf.get_legend().get_title().get_text() == "ours (line) / paper Table 1 (markers)"
    assert l2.get_legend().get_title().get_text() == "ours"


def test_robustness_figure_renders_pdf_png_markdown_and_latex(tmp_path):
    directory = rob_specs(tmp_path)
    cells_path = rob_cells(tmp_path, banner="Quick scale: 5 test images")
    out = tmp_path / "reports"
    pdf, png = out / "figures" / "rob_fig.pdf", out / "figures" / "rob_fig.png"
    md, tex = out / "rob_fig.md", out / "rob_fig.tex"
    curves = render_figure("rob_fig", cells_path, pdf, png, md, tex, spec_dir=directory)

    assert set(curves.panel) == {0, 1}
    assert pdf.read_bytes().startswith(b"%PDF")
    with Image.open(png) as image:
        assert image.format == "PNG" and image.width > image.height > 0
    text = md.read_text()
    assert text.startswith("> **Quick scale: 5 test images**")
    assert "## Figure 1: error against distance" in text and "(figures/rob_fig.png)" in text
    assert (
        "Lines: our empirical error in percent (the test images whose smallest adversarial "
        "distance in the panel's norm, over the minimum-distance attack logs listed below, is "
        "at most ε; misclassified images count at ε = 0), drawn exactly as a step curve with a "
        "step at each distinct distance, from the clean error at ε = 0 to the right edge of the "
        "panel, one colour per row; hollow markers of the same colour: the empirical errors "
        "published in Table 1 of the paper.\n"
    ) in text
    assert "certified" not in text and "grid" not in text
    assert "minimum-distance attack outcome logs, per norm (paths as given in " in text
    # only the logs the lines read, per norm, as written in the cells file
    assert "- Undefended, Dataset = CIFAR-10: `l2: logs/pgd.tsv, logs/cw.tsv`, " in text
    assert "`linf: logs/linf.tsv`\n" in text
    assert "- Squared ℓ2, Dataset = CIFAR-10: `l2: logs/l2reg.tsv`\n" in text
    assert "- Squared ℓ1, Dataset = CIFAR-10: `linf: logs/l1reg.tsv`\n" in text
    latex = tex.read_text()
    caption = next(line for line in latex.splitlines() if line.startswith(r"\caption{"))
    assert caption.startswith(r"\caption{\textbf{Quick scale: 5 test images} Figure 1")
    assert (
        r"Lines: our empirical error in percent (the test images whose smallest adversarial "
        r"distance in the panel's norm, over the minimum-distance attack logs, is at most "
        r"$\varepsilon$;"
    ) in caption
    assert r"; hollow markers: the empirical errors published in Table 1 of the paper.}" in caption
    assert "% Our curves come from these minimum-distance attack outcome logs, per norm" in latex
    assert "%   l1reg, dataset = CIFAR-10: linf: logs/l1reg.tsv\n" in latex


def test_robustness_figure_without_banner_or_paper_values(tmp_path):
    table = {**ROB_MODELS, "rows": [{**r, "paper": None} for r in ROB_MODELS["rows"]]}
    table["rows"] = [{k: v for k, v in r.items() if v is not None} for r in table["rows"]]
    directory = rob_specs(tmp_path, table=table, styles={"l1reg": "dashed"})
    out = tmp_path / "out"
    render_figure(
        "rob_fig", rob_cells(tmp_path), out / "f.pdf", out / "f.png", out / "f.md",
        out / "f.tex", spec_dir=directory,
    )  # fmt: skip
    text = (out / "f.md").read_text()
    assert text.startswith(
        "> Our curves come from the minimum-distance attack outcome logs listed in "
        "rob\\_models.cells.yaml; their scale (training and attack settings) is not stated."
    )
    assert (
        "one colour per row. The paper published this figure as curves only, so no published "
        "values are marked. Line styles: solid: Undefended, Squared ℓ2; dashed: Squared ℓ1.\n"
    ) in text


def test_robustness_columns_of_one_norm_must_list_the_same_logs(tmp_path):
    directory = rob_specs(tmp_path)
    files = {
        "clean": ["logs/l1reg.tsv"],
        "emp2": ["logs/l1reg.tsv"],
        "emp5": ["logs/linf.tsv"],
    }
    cells = load_cells(rob_cells(tmp_path, l1reg=files), directory)
    with pytest.raises(ValueError, match=r"row 'l1reg': columns 'emp2' and 'emp5' list different"):
        figure_curves(load_figure_spec("rob_fig", directory), cells)


def test_gradreg_figure_tables_copy_tables_1_and_2():
    t1 = {r.key: r.paper for r in load_spec("table1_gradreg").rows}
    t2 = {r.key: r.paper for r in load_spec("table2_gradreg").rows}
    for name, group in (
        ("figure1_gradreg_models", "CIFAR-10"), ("figureB2_gradreg_models", "ImageNet-1k"),
    ):  # fmt: skip
        spec = load_spec(name)
        assert spec.values_from == "robustness" and spec.group.values == (group,)
        for row in spec.rows:
            clean, emp2, emp8, distance = row.paper[group]
            one = t1.get(row.key, {}).get(group)
            two = t2.get(row.key, {}).get(group)
            # Table 1: clean, omega2, omega8, emp2, emp8, hours; Table 2: clean, L, omega,
            # empirical, hours
            assert clean == (one or two)[0]
            assert (emp2, emp8) == ((one[3], one[4]) if one else (None, None))
            assert distance == (two[3] if two else None)
    rows = {r.key: r for r in load_spec("figure1_gradreg_models").rows}
    assert rows["l2_fd_1"].paper["CIFAR-10"] == (20.31, None, None, 0.81)
    assert rows["l2_fd_1"].not_evaluated == ("emp2", "emp8")
    assert rows["l1_fd_1"].not_evaluated == ("empirical",)
    figure = load_figure_spec("figure1_gradreg")
    assert [(p.norm, p.eps_max) for p in figure.panels] == [("l2", 2.0), ("linf", 16 / 255)]
    assert [(p.norm, p.eps_max) for p in load_figure_spec("figureB2_gradreg").panels] == [
        ("l2", 4.0),
        ("linf", 16 / 255),
    ]


@pytest.fixture(scope="module")
def paper_plan():
    """The plan of config.yaml (paper scale)."""
    return make_plan(merged())


def test_gradreg_figures_plan_on_the_models_and_logs_of_tables_1_and_2(paper_plan):
    plan = paper_plan
    assert plan.figures["figure1_gradreg"].table == "figure1_gradreg_models"
    assert plan.figures["figureB2_gradreg"].table == "figureB2_gradreg_models"
    assert plan.tables["figure1_gradreg_models"].kind == "robustness"
    logs = {
        log
        for table in ("table1_gradreg", "table2_gradreg")
        for cell in plan.tables[table].cells
        for log in cell.logs()
    }
    for table in ("figure1_gradreg_models", "figureB2_gradreg_models"):
        assert {log for cell in plan.tables[table].cells for log in cell.logs()} <= logs
    cells = {c.row: c for c in plan.tables["figure1_gradreg_models"].cells}
    t2 = {c.row: c for c in plan.tables["table2_gradreg"].cells}
    assert cells["l2_fd_1"].experiments == t2["l2_fd_1"].experiments
    assert cells["l2_fd_1"].files["clean"] == t2["l2_fd_1"].files["clean"]
    assert set(cells["l2_fd_1"].files) == {"clean", "empirical"}
    # nothing to train or attack beyond the other tables
    without = merged()
    for name in ("figure1_gradreg_models", "figureB2_gradreg_models"):
        del without["tables"][name]
    without["papers"]["gradreg"]["reports"] = [
        r for r in without["papers"]["gradreg"]["reports"] if "figure" not in r
    ]
    base = make_plan(without)
    assert plan.experiments.keys() == base.experiments.keys()
    assert plan.attacks.keys() == base.attacks.keys()
    assert plan.bounds.keys() == base.bounds.keys()


def test_plan_refuses_a_figure_on_a_table_of_the_other_kind():
    config = merged()
    config["tables"]["figure1_gradreg_models"] = config["tables"]["figure1_adre_models"] | {
        "spec": "figure1_adre_models"
    }
    with pytest.raises(ConfigError) as err:
        make_plan(config)
    assert str(err.value) == (
        "papers.gradreg.reports[1]: figure 'figure1_gradreg' draws table "
        "'figure1_gradreg_models', which is not a robustness table of this config"
    )
    config = merged()
    config["tables"]["figure1_adre_models"] = config["tables"]["figure1_gradreg_models"] | {
        "spec": "figure1_gradreg_models"
    }
    with pytest.raises(ConfigError) as err:
        make_plan(config)
    assert str(err.value) == (
        "papers.adre.reports[1]: figure 'figure1_adre' draws table 'figure1_adre_models', "
        "which is not a results table of this config"
    )


def test_package_gradreg_figure_renders_from_the_planned_cells_file(
    tmp_path, monkeypatch, paper_plan
):
    """figure1_gradreg from the cells file the workflow writes, every planned outcome log
    replaced by a synthetic one of 5 images (per model one misclassified image)."""
    monkeypatch.chdir(tmp_path)  # the workflow's folder: the plan's paths are relative to it
    table = paper_plan.tables["figure1_gradreg_models"]
    cells_path = tmp_path / "results" / "tables" / "figure1_gradreg_models.cells.yaml"
    write_cells_document(cells_document(table, cells_path), cells_path)
    rng = np.random.default_rng(0)
    for log in {log for cell in table.cells for log in cell.logs()}:
        distances = rng.uniform(0.01, 1.5, size=4)
        rows = [(0, 0.0, 0.0)] + [(0, float(d), float(d) / 30) for d in distances]
        write_outcome_log(tmp_path / log, rows)
    out = tmp_path / "reports"
    curves = render_figure(
        "figure1_gradreg", cells_path, out / "figures" / "f.pdf", out / "figures" / "f.png",
        out / "f.md", out / "f.tex", logs_root=tmp_path / "results",
    )  # fmt: skip
    assert curves.groupby("panel").row.unique().map(list).to_dict() == {
        0: ["undefended", "at2", "at8", "l2_fd_01", "l2_fd_1"],
        1: ["undefended", "at2", "at8", "l1_fd_01", "l1_fd_1"],
    }
    assert (curves[curves.eps == 0].ours == 20.0).all()  # 1 of 5 misclassified
    text = (out / "f.md").read_text()
    assert "the empirical errors published in Table 1 of the paper." in text
    assert "Published figure: Finlay & Oberman (2021)" in text and "Figure 1 (section 4)" in text
