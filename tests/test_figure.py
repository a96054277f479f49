"""Figures (robustreg.tables.figure): spec loading, our curves, the paper's points, outputs."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from robustreg.certify import certified_accuracy, write_certify_log
from robustreg.tables import load_figure_spec, load_spec, render_figure
from robustreg.tables.figure import curve_grid, figure_curves, paper_points
from robustreg.tables.render import load_cells
from robustreg.tables.spec import specs_dir

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
    """A specs folder with table2_mnist and the figure spec (``changes`` applied)."""
    directory = tmp_path / "specs"
    directory.mkdir(exist_ok=True)
    shutil.copy(specs_dir() / "table2_mnist.yaml", directory)
    text = yaml.safe_dump({**FIGURE, **changes}, allow_unicode=True, sort_keys=False)
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
    assert "Table 2 of the paper" in text
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
