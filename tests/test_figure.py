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

from robustreg.certify import certified_accuracy, write_certify_log
from robustreg.tables import load_figure_spec, load_spec, render_figure
from robustreg.tables.figure import curve_grid, draw_figure, figure_curves, paper_points
from robustreg.tables.render import load_cells
from robustreg.tables.spec import LINE_STYLES, available_specs, specs_dir

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
    g = write_log(tmp_path / "logs" / "g.tsv", *LOG_G)
    c = write_log(tmp_path / "logs" / "c.tsv", *LOG_C)
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
    assert f"- Gaussian, σ = 0.50: `{tmp_path / 'logs' / 'g.tsv'}`" in text
    assert "MACER" not in text  # only the plotted rows' logs
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
    g = write_log(tmp_path / "logs" / "g.tsv", *LOG_G)
    c = write_log(tmp_path / "logs" / "c.tsv", *LOG_C)
    i = write_log(tmp_path / "logs" / "i.tsv", *LOG_I)
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
    assert f"- CIFAR-10, Method = SmoothAdv, σ = 0.25: `{tmp_path / 'logs' / 'c.tsv'}`" in text
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
