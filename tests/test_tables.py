"""The table renderer (robustreg.tables): spec loading, cells files, values, highlights."""

from __future__ import annotations

import copy
import math
import re
from html.parser import HTMLParser
from pathlib import Path

import pytest
import yaml

from robustreg.tables import load_spec
from robustreg.tables.cells import load_cells
from robustreg.tables.render import METRIC_FUNCS, RULE_FUNCS, render_table, tex_escape
from robustreg.tables.spec import specs_dir
from robustreg.tables.vocabulary import METRICS, RULES, SOURCES

HEADER = "idx\tlabel\tpredict\tradius\tcorrect\ttime"

# 4 images: radii 0.3, abstain, 0.6, 1.2 with correct 1, 0, 1, 0
# -> ACR (0.3 + 0.6) / 4 = 0.225; accuracy 50 % at r = 0 and 0.25, 25 % at 0.5, 0 % from 0.75.
LOG_A = ([0.3, 0.0, 0.6, 1.2], [1, 0, 1, 0])
# -> ACR (0.3 + 1.2) / 4 = 0.375; accuracy 50, 50, 25, 25, 25 % at r = 0 .. 1.00, then 0.
LOG_B = ([0.3, 0.0, 0.6, 1.2], [1, 0, 0, 1])


def write_log(path: Path, radii: list[float], correct: list[int]) -> Path:
    """A certification log in Cohen et al.'s format (predict = -1 when abstaining)."""
    lines = [HEADER]
    for i, (r, c) in enumerate(zip(radii, correct, strict=True)):
        label = i % 10
        predict = -1 if r == 0.0 and not c else (label if c else (label + 1) % 10)
        lines.append(f"{i}\t{label}\t{predict}\t{r}\t{c}\t0:00:01.250000")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    return path


def write_cells(path: Path, cells: list[dict], banner: str | None = None, **extra) -> Path:
    doc: dict = {"table": "table2_mnist", **extra}
    if banner is not None:
        doc["banner"] = banner
    doc["cells"] = cells
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(doc, sort_keys=False, allow_unicode=True))
    return path


def render(tmp_path: Path, cells: list[dict], banner: str | None = None):
    cells_path = write_cells(tmp_path / "cells.yaml", cells, banner)
    md, tex = tmp_path / "out" / "t.md", tmp_path / "out" / "t.tex"
    frame = render_table(cells_path, md, tex)
    return frame, md.read_text(), tex.read_text()


def md_row(md: str, sigma_block: int, label: str) -> list[str]:
    """Cells (after σ and method) of the Markdown row ``label`` in the n-th σ block."""
    body = [line for line in md.splitlines() if line.startswith("| ") and "Method" not in line]
    block = body[6 * sigma_block : 6 * sigma_block + 6]
    (row,) = [line for line in block if f"| {label} |" in line]
    return [f.strip() for f in row.strip("|").split("|")][2:]


def value(frame, row: str, group: float, column: str, field: str = "ours"):
    sel = frame[(frame.row == row) & (frame.group == group) & (frame.column == column)]
    assert len(sel) == 1
    return sel[field].iloc[0]


# ----------------------------------------------------------------------------- the spec


def test_table2_paper_values_transcribed():
    spec = load_spec("table2_mnist")
    assert spec.group.key == "sigma"
    assert spec.group.values == (0.25, 0.5, 1.0)
    assert [c.label for c in spec.columns] == ["ACR"] + [f"{0.25 * i:.2f}" for i in range(11)]
    assert [r.key for r in spec.rows] == [
        "gaussian", "consistency", "smoothadv", "smoothadv_consistency", "stability", "macer",
    ]  # fmt: skip
    for row in spec.rows:
        assert set(row.paper) == {0.25, 0.5, 1.0}, row.key
        for values in row.paper.values():
            assert len(values) == 12 and all(v is not None for v in values), row.key
    paper = {r.key: r.paper for r in spec.rows}
    col = {c.key: i for i, c in enumerate(spec.columns)}
    assert paper["smoothadv"][0.5][col["acr"]] == 1.687
    assert paper["macer"][1.0][col["r2.50"]] == 16.3
    assert paper["consistency"][0.25][col["r0.75"]] == 96.0
    assert paper["gaussian"][0.25] == (0.911, 99.2, 98.5, 96.7, 93.3) + (0.0,) * 7
    assert paper["smoothadv_consistency"][1.0][col["acr"]] == 1.819
    assert paper["stability"][0.5][col["r1.75"]] == 45.4
    labels = {r.key: r.labels for r in spec.rows}
    assert labels["consistency"][0.25] == "+ Consistency (λ = 10)"
    assert labels["consistency"][0.5] == labels["consistency"][1.0] == "+ Consistency (λ = 5)"
    assert labels["smoothadv_consistency"][0.5] == "+ Consistency (λ = 1)"
    assert {r.key: r.baseline for r in spec.rows if r.baseline} == {
        "consistency": "gaussian",
        "smoothadv_consistency": "smoothadv",
    }
    assert {(h.style, h.rule) for h in spec.highlight} == {
        ("bold", "improves_baseline"),
        ("underline", "best_acr_per_group"),
    }


def test_registries_match_implementations():
    # settings and robust accuracy are read from the cells file and from outcome files
    assert set(METRICS) == set(METRIC_FUNCS) | set(SOURCES)
    assert set(RULES) == set(RULE_FUNCS)


def _bad_spec(tmp_path: Path, edit) -> Path:
    raw = yaml.safe_load((specs_dir() / "table2_mnist.yaml").read_text())
    edit(raw)
    (tmp_path / "table2_mnist.yaml").write_text(yaml.safe_dump(raw, allow_unicode=True))
    return tmp_path


@pytest.mark.parametrize(
    ("edit", "pattern"),
    [
        (lambda s: s["rows"][2]["paper"][0.5].pop(), r"rows\[smoothadv\]\.paper\[0\.5\]: .*12"),
        (lambda s: s["rows"][0]["paper"].update({0.75: [0.0] * 12}), r"rows\[gaussian\]\.paper"),
        (lambda s: s["rows"][1].update(baseline="nope"), r"rows\[consistency\]\.baseline"),
        (lambda s: s["columns"][1].update(metric="foo"), r"columns\[1\]\.metric: unknown metric"),
        (lambda s: s["columns"][1].pop("radius"), r"columns\[1\]: .*'radius'"),
        (lambda s: s["highlight"].update(bold="shiny"), r"highlight\.bold: unknown rule 'shiny'"),
        (lambda s: s["rows"][1]["label"].pop(1.0), r"rows\[consistency\]\.label: no entry"),
        (lambda s: s.update(colour="red"), r"top level: unknown key 'colour'"),
    ],
)
def test_bad_spec_one_line_error_names_file_and_key(tmp_path, edit, pattern):
    directory = _bad_spec(tmp_path, edit)
    with pytest.raises(ValueError) as err:
        load_spec("table2_mnist", directory)
    message = str(err.value)
    assert "\n" not in message
    assert str(directory / "table2_mnist.yaml") in message
    assert re.search(pattern, message), message


def test_unknown_spec_name():
    with pytest.raises(ValueError, match="unknown table spec 'table99'.*table2_mnist"):
        load_spec("table99")


# ----------------------------------------------------------------------------- values


def test_our_values_next_to_paper_values(tmp_path):
    log = write_log(tmp_path / "logs" / "a.tsv", *LOG_A)
    frame, md, tex = render(tmp_path, [{"row": "gaussian", "sigma": 0.25, "log": str(log)}])

    assert list(frame.columns[:5]) == ["row", "group", "column", "ours", "paper"]
    assert len(frame) == 6 * 3 * 12
    assert value(frame, "gaussian", 0.25, "acr") == pytest.approx(0.225)
    assert value(frame, "gaussian", 0.25, "r0.00") == pytest.approx(50.0)
    assert value(frame, "gaussian", 0.25, "r0.25") == pytest.approx(50.0)
    assert value(frame, "gaussian", 0.25, "r0.50") == pytest.approx(25.0)
    assert value(frame, "gaussian", 0.25, "r0.75") == pytest.approx(0.0)
    assert value(frame, "gaussian", 0.25, "acr", "paper") == 0.911

    cells = md_row(md, 0, "Gaussian")
    assert cells[:5] == ["<u>0.225</u> (0.911)", "50.0 (99.2)", "50.0 (98.5)", "25.0 (96.7)",
                         "0.0 (93.3)"]  # fmt: skip
    assert "ours (paper)" in md.split("|:--")[0]
    assert r"\underline{0.225}~{\scriptsize(0.911)}" in tex
    assert r"50.0~{\scriptsize(98.5)} & 25.0~{\scriptsize(96.7)}" in tex


def test_missing_cell_is_missing_never_the_paper_value(tmp_path):
    log = write_log(tmp_path / "a.tsv", *LOG_A)
    frame, md, tex = render(tmp_path, [{"row": "gaussian", "sigma": 0.25, "log": str(log)}])

    smoothadv = md_row(md, 0, "SmoothAdv")
    assert smoothadv[0] == "– (0.932)"
    assert all(c.startswith("– (") for c in smoothadv)
    assert "0.932 (0.932)" not in md and "**0.932**" not in md
    macer_1 = md_row(md, 2, "MACER")
    assert macer_1[-1] == "– (16.3)"
    assert r"& SmoothAdv & --~{\scriptsize(0.932)} & --~{\scriptsize(99.4)}" in tex
    assert frame[frame.row != "gaussian"]["ours"].isna().all()
    assert frame["paper"].notna().all()


def test_group_value_spelling_and_relative_log_paths(tmp_path, monkeypatch):
    write_log(tmp_path / "results" / "certify" / "abc" / "certify.tsv", *LOG_A)
    cells_path = write_cells(
        tmp_path / "results" / "tables" / "cells.yaml",
        [{"row": "macer", "sigma": "0.50", "log": "../certify/abc/certify.tsv"}],
    )
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # relative to the cells file, not the working directory
    # the workflow's layout: cells files in results/tables/ read logs elsewhere in results/
    frame = render_table(
        cells_path, tmp_path / "t.md", tmp_path / "t.tex", logs_root=tmp_path / "results"
    )
    assert value(frame, "macer", 0.5, "acr") == pytest.approx(0.225)
    md = (tmp_path / "t.md").read_text()
    assert md_row(md, 1, "MACER")[0] == "<u>0.225</u> (1.594)"
    assert "`../certify/abc/certify.tsv`" in md


# ----------------------------------------------------------------------------- highlights


def test_bold_when_ours_improves_our_baseline(tmp_path):
    a = write_log(tmp_path / "a.tsv", *LOG_A)
    b = write_log(tmp_path / "b.tsv", *LOG_B)
    frame, md, tex = render(
        tmp_path,
        [
            {"row": "gaussian", "sigma": 0.25, "log": str(a)},
            {"row": "consistency", "sigma": 0.25, "log": str(b)},
            # SmoothAdv + Consistency worse than its baseline: never bold
            {"row": "smoothadv", "sigma": 0.25, "log": str(b)},
            {"row": "smoothadv_consistency", "sigma": 0.25, "log": str(a)},
        ],
    )
    bold = frame[frame.bold]
    assert set(bold.row) == {"consistency"}
    # better in ACR (0.375 > 0.225), r = 0.75 and 1.00 (25 > 0); equal elsewhere -> not bold
    assert sorted(bold.column) == ["acr", "r0.75", "r1.00"]
    cells = md_row(md, 0, "+ Consistency (λ = 10)")
    assert cells[0] == "**<u>0.375</u>** (0.928)"
    assert cells[1:6] == ["50.0 (99.5)", "50.0 (98.9)", "25.0 (98.0)", "**25.0** (96.0)",
                          "**25.0** (0.0)"]  # fmt: skip
    assert cells[6] == "0.0 (0.0)"
    assert "**" not in "".join(md_row(md, 0, "Gaussian") + md_row(md, 0, "SmoothAdv"))
    assert "**" not in "".join(md_row(md, 0, "+ Consistency (λ = 1)"))
    assert r"\underline{\textbf{0.375}}~{\scriptsize(0.928)}" in tex
    assert r"\textbf{25.0}~{\scriptsize(96.0)}" in tex


def test_bold_compares_printed_values(tmp_path):
    # ACR 0.2251 vs 0.2249: both print 0.225, so not an improvement a reader could see
    a = write_log(tmp_path / "a.tsv", [0.3, 0.0, 0.5996, 0.0], [1, 0, 1, 0])
    b = write_log(tmp_path / "b.tsv", [0.3, 0.0, 0.6004, 0.0], [1, 0, 1, 0])
    frame, md, _ = render(
        tmp_path,
        [
            {"row": "gaussian", "sigma": 1.0, "log": str(a)},
            {"row": "consistency", "sigma": 1.0, "log": str(b)},
        ],
    )
    assert value(frame, "consistency", 1.0, "acr") > value(frame, "gaussian", 1.0, "acr")
    assert not frame.bold.any()
    # equal as printed -> a tie for the best ACR: both underlined
    assert md_row(md, 2, "+ Consistency (λ = 5)")[0] == "<u>0.225</u> (1.740)"
    assert md_row(md, 2, "Gaussian")[0] == "<u>0.225</u> (1.620)"


def test_underline_best_acr_per_group_with_ties(tmp_path):
    a = write_log(tmp_path / "a.tsv", *LOG_A)
    b = write_log(tmp_path / "b.tsv", *LOG_B)
    frame, md, tex = render(
        tmp_path,
        [
            {"row": "gaussian", "sigma": 0.25, "log": str(a)},
            {"row": "consistency", "sigma": 0.25, "log": str(b)},
            {"row": "stability", "sigma": 0.25, "log": str(b)},  # tie with consistency
            {"row": "macer", "sigma": 0.5, "log": str(a)},  # alone in its group: best there
        ],
    )
    under = frame[frame.underline]
    assert set(under.column) == {"acr"}
    assert set(zip(under.row, under.group, strict=True)) == {
        ("consistency", 0.25),
        ("stability", 0.25),
        ("macer", 0.5),
    }
    assert md_row(md, 0, "Stability training")[0] == "<u>0.375</u> (0.915)"
    assert md_row(md, 0, "Gaussian")[0] == "0.225 (0.911)"
    assert md_row(md, 1, "MACER")[0] == "<u>0.225</u> (1.594)"
    assert md.count("<u>") == 3 + 1  # three cells plus the footnote's legend
    assert r"\underline{0.375}~{\scriptsize(0.915)}" in tex


# ----------------------------------------------------------------------------- cells file


@pytest.mark.parametrize(
    ("cells", "pattern"),
    [
        ([{"row": "resnet", "sigma": 0.25}], r"cells\[1\]: unknown row 'resnet'"),
        ([{"row": "macer", "sigma": 0.3}], r"cells\[1\]: unknown sigma 0\.3"),
        (
            [{"row": "macer", "sigma": 0.5}, {"row": "macer", "sigma": 0.50}],
            r"cells\[2\]: duplicate cell row 'macer' sigma 0\.50 \(already cells\[1\]\)",
        ),
        ([{"row": "macer", "sigma": 0.5, "seed": 1}], r"cells\[1\]: unknown key 'seed'"),
        ([{"row": "macer"}], r"cells\[1\]: missing key 'sigma'"),
    ],
)
def test_bad_cells_file_fails_before_reading_any_log(tmp_path, cells, pattern):
    # the first cell is valid and points at a log that does not exist: validation must
    # complain about the bad key, not about the missing log
    missing = str(tmp_path / "no" / "such.tsv")
    entries = [{"row": "gaussian", "sigma": 0.25, "log": missing}]
    entries += [{"log": missing, **c} for c in cells]
    cells_path = write_cells(tmp_path / "cells.yaml", entries)
    md = tmp_path / "t.md"
    with pytest.raises(ValueError) as err:
        render_table(cells_path, md, tmp_path / "t.tex")
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith(f"{cells_path}: ")
    assert re.search(pattern, message), message
    assert "such.tsv" not in message
    assert not md.exists()


def test_unknown_table_in_cells_file(tmp_path):
    cells_path = tmp_path / "cells.yaml"
    cells_path.write_text("table: table99_foo\ncells: []\n")
    with pytest.raises(ValueError, match=r"cells\.yaml: table: unknown table spec 'table99_foo'"):
        load_cells(cells_path)


def test_listed_log_that_is_missing_names_the_file(tmp_path):
    a = write_log(tmp_path / "a.tsv", *LOG_A)
    cells_path = write_cells(
        tmp_path / "cells.yaml",
        [
            {"row": "gaussian", "sigma": 0.25, "log": str(a)},
            {"row": "macer", "sigma": 0.25, "log": "logs/gone.tsv"},
        ],
    )
    md = tmp_path / "t.md"
    with pytest.raises(ValueError, match=re.escape(str(tmp_path / "logs" / "gone.tsv"))):
        render_table(cells_path, md, tmp_path / "t.tex")
    assert not md.exists()


def test_unreadable_log_names_the_file(tmp_path):
    bad = tmp_path / "bad.tsv"
    bad.write_text("idx\tlabel\tradius\n0\t1\t0.5\n")
    cells_path = write_cells(
        tmp_path / "cells.yaml", [{"row": "macer", "sigma": 1, "log": "bad.tsv"}]
    )
    with pytest.raises(ValueError, match=re.escape(str(bad))):
        render_table(cells_path, tmp_path / "t.md", tmp_path / "t.tex")


# ----------------------------------------------------------------------------- output


def test_banner_in_both_outputs(tmp_path):
    log = write_log(tmp_path / "a.tsv", *LOG_A)
    banner = "Reduced scale: 4 test images, n = 1,000 & 2_epochs"
    _, md, tex = render(tmp_path, [{"row": "gaussian", "sigma": 0.25, "log": str(log)}], banner)
    assert md.startswith(r"> **Reduced scale: 4 test images, n = 1,000 & 2\_epochs**")
    caption = next(line for line in tex.splitlines() if line.startswith(r"\caption{"))
    assert r"\textbf{Reduced scale: 4 test images, n = 1,000 \& 2\_epochs}" in caption


def test_no_banner_says_scale_not_stated(tmp_path):
    log = write_log(tmp_path / "a.tsv", *LOG_A)
    _, md, tex = render(tmp_path, [{"row": "gaussian", "sigma": 0.25, "log": str(log)}])
    assert md.startswith("> Our rows come from the certification logs listed in cells.yaml")
    assert "scale" in md.splitlines()[0] and "not stated" in md.splitlines()[0]
    assert "not stated" in next(line for line in tex.splitlines() if line.startswith(r"\caption"))


def test_latex_structure_and_escaping(tmp_path):
    log = write_log(tmp_path / "a.tsv", *LOG_A)
    _, md, tex = render(tmp_path, [{"row": "gaussian", "sigma": 0.25, "log": str(log)}])
    assert r"\usepackage{booktabs,multirow}" in tex
    assert tex.count(r"\begin{table}") == 1 and tex.rstrip().endswith(r"\end{table}")
    assert tex.count(r"\toprule") == tex.count(r"\bottomrule") == 1
    assert tex.count(r"\midrule") == 3  # under the header and between the three σ groups
    for sigma in ("0.25", "0.50", "1.00"):
        assert rf"\multirow{{6}}{{*}}{{{sigma}}} &" in tex
    assert r"+ Consistency ($\lambda$ = 10)" in tex and "λ" not in tex.split(r"\begin{table}")[1]
    assert r"$\sigma$ & Method & ACR & 0.00" in tex
    assert r"\begin{tabular}{ll" + "r" * 12 + "}" in tex
    assert tex_escape("50% & a_b {x} #1 $ ~ ^ \\") == (
        r"50\% \& a\_b \{x\} \#1 \$ \textasciitilde{} \textasciicircum{} \textbackslash{}"
    )
    # Markdown: one table, 18 body rows, σ shown on the first row of each group only
    body = [line for line in md.splitlines() if line.startswith("| ") and "Method" not in line]
    assert len(body) == 18
    assert [line.split("|")[1].strip() for line in body[::6]] == ["0.25", "0.50", "1.00"]
    assert all(line.split("|")[1].strip() == "" for i, line in enumerate(body) if i % 6)
    assert "apply to our numbers" in md


class _HtmlRows(HTMLParser):
    """Text of each <td> per body <tr>, with the rowspan of each cell that has one."""

    def __init__(self):
        super().__init__()
        self.rows: list[list[str]] = []
        self.spans: list[int] = []
        self._cell: list[str] | None = None
        self._in_body = False

    def handle_starttag(self, tag, attrs):
        if tag == "tbody":
            self._in_body = True
        elif tag == "tr" and self._in_body:
            self.rows.append([])
        elif tag == "td" and self._in_body:
            self._cell = []
            self.spans += [int(v) for k, v in attrs if k == "rowspan"]

    def handle_endtag(self, tag):
        if tag == "td" and self._cell is not None:
            self.rows[-1].append("".join(self._cell).strip())
            self._cell = None
        elif tag == "tbody":
            self._in_body = False

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)


def test_html_has_the_markdown_values_and_escapes(tmp_path):
    log = write_log(tmp_path / "a.tsv", *LOG_A)
    cells = write_cells(
        tmp_path / "cells.yaml",
        [{"row": "gaussian", "sigma": 0.25, "log": str(log)}],
        banner="Reduced <scale> & co",
    )
    md, tex, html = (tmp_path / f"t.{k}" for k in ("md", "tex", "html"))
    render_table(cells, md, tex, html_path=html)
    page = html.read_text()
    assert "Reduced &lt;scale&gt; &amp; co" in page and "<scale>" not in page
    parsed = _HtmlRows()
    parsed.feed(page)
    assert len(parsed.rows) == 18
    assert parsed.spans == [6, 6, 6]  # σ spans its group's six rows
    md_rows = [line for line in md.read_text().splitlines() if line.startswith("| ")][1:]
    for html_row, md_line in zip(parsed.rows, md_rows, strict=True):
        md_cells = [re.sub(r"\*\*|</?u>", "", c).strip() for c in md_line.strip("|").split("|")]
        assert html_row == [c for c in md_cells if c][-len(html_row) :]
    assert parsed.rows[0][2:4] == ["0.225 (0.911)", "50.0 (99.2)"]


def test_outputs_replaced_atomically(tmp_path):
    log = write_log(tmp_path / "a.tsv", *LOG_A)
    out = tmp_path / "out"
    out.mkdir()
    (out / "t.md").write_text("old")
    render(tmp_path, [{"row": "gaussian", "sigma": 0.25, "log": str(log)}])
    assert sorted(p.name for p in out.iterdir()) == ["t.md", "t.tex"]
    assert (out / "t.md").read_text() != "old"


# ============================================================================= layouts
# Fixture specs shaped like the supplement's Tables 1, 3, 4 and 7 (values as printed there),
# written to a scratch specs folder: render_table(..., spec_dir=...) and load_spec(name, dir).

SIGMAS = {"key": "sigma", "label": "σ", "format": "{:.2f}", "values": [0.25, 0.5, 1.0]}

SETTINGS_SPEC = {  # Table 1: rows are datasets, σ per line, training settings as columns
    "name": "t1_settings",
    "title": "Table 1: SmoothAdv settings",
    "caption": "Hyperparameters of the SmoothAdv models.",
    "source": {"paper": "Jeong & Shin (2020)", "table": 1},
    "layout": "rows_first",
    "label_columns": ["Dataset"],
    "group_by": SIGMAS,
    "columns": [
        {"key": "method", "label": "Method", "metric": "setting", "param": "attack", "decimals": 0},
        {"key": "steps", "label": "# steps", "metric": "setting", "param": "steps", "decimals": 0},
        {"key": "eps", "label": "ε", "metric": "setting", "param": "eps", "decimals": 3,
         "paper_divide_by": 256},
        {"key": "m", "label": "m", "metric": "setting", "param": "m", "decimals": 0},
    ],
    "rows": [
        {"key": "cifar10", "label": "CIFAR-10",
         "paper": {0.25: ["PGD", 10, 255, 4], 0.5: ["PGD", 10, 512, 2], 1.0: ["PGD", 10, 512, 2]}},
        {"key": "imagenet", "label": "ImageNet", "groups": [0.5, 1.0],
         "paper": {0.5: ["PGD", 1, 255, 1], 1.0: ["PGD", 1, 512, 1]}},
    ],
}  # fmt: skip

SEEDS_SPEC = {  # Table 3: rows are methods, one column per σ, ACR mean ± std over seeds
    "name": "t3_seeds",
    "title": "Table 3: ACR over seeds",
    "caption": "Mean and standard deviation of the ACR across seeds.",
    "layout": "groups_as_columns",
    "group_by": SIGMAS,
    "columns": [
        {"key": "acr", "label": "ACR", "metric": "acr", "decimals": 4, "aggregate": "mean_std"}
    ],
    "highlight": {"bold": "improves_baseline", "underline": "best_per_group"},
    "rows": [
        {"key": "gaussian", "label": "Gaussian",
         "paper": {0.25: [[0.9108, 0.0003]], 0.5: [[1.5581, 0.0016]], 1.0: [[1.6184, 0.0021]]}},
        {"key": "consistency", "label": "+ Consistency", "baseline": "gaussian",
         "paper": {0.25: [[0.9279, 0.0003]], 0.5: [[1.6549, 0.0011]], 1.0: [[1.7376, 0.0017]]}},
        {"key": "macer", "label": "MACER", "groups": [0.5, 1.0],
         "paper": {0.5: [[1.5899, 0.0069]], 1.0: [[1.5950, 0.0051]]}},
    ],
}  # fmt: skip

LOSS_SPEC = {  # Table 4: one σ (not printed), two label columns Model | λ
    "name": "t4_loss",
    "title": "Table 4: consistency losses",
    "caption": "Loss functions and λ at σ = 1.00.",
    "label_columns": ["Model", "λ"],
    "group_by": {**SIGMAS, "values": [1.0], "show": False},
    "columns": [
        {"key": "acr", "label": "ACR", "metric": "acr", "decimals": 3},
        {"key": "r0.50", "label": "0.50", "metric": "certified_accuracy", "radius": 0.5,
         "percent": True, "decimals": 1},
    ],
    "highlight": {"bold": "improves_baseline", "underline": "best_acr_per_group"},
    "rows": [
        {"key": "gaussian", "label": ["Gaussian", "0"], "paper": {1.0: [1.620, 91.4]}},
        *[
            {"key": key, "label": label, "baseline": "gaussian", "paper": {1.0: paper}}
            for key, label, paper in [
                ("mse5", ["MSE", "5"], [1.732, 89.3]),
                ("mse20", ["MSE", "20"], [1.677, 87.5]),
                ("mse50", ["MSE", "50"], [1.603, 86.1]),
                ("kl5", ["KL-divergence", "5"], [1.729, 89.9]),
            ]
        ],
    ],
}  # fmt: skip

MERGE_SPEC = {  # Table 7: Stability with λ = 5, 10, 20 printed as one row
    "name": "t7_merge",
    "title": "Table 7: stability training on CIFAR-10",
    "caption": "Comparison with stability training.",
    "group_by": {**SIGMAS, "values": [0.25, 0.5]},
    "columns": [
        {"key": "acr", "label": "ACR", "metric": "acr", "decimals": 3},
        {"key": "r0.00", "label": "0.00", "metric": "certified_accuracy", "radius": 0.0,
         "percent": True, "decimals": 1},
    ],
    "highlight": {"bold": "improves_baseline"},
    "rows": [
        {"key": "gaussian", "label": "Gaussian",
         "paper": {0.25: [0.424, 76.6], 0.5: [0.525, 65.7]}},
        *[
            {"key": f"stab{lam}", "label": f"Stability (λ = {lam})", "baseline": "gaussian",
             "paper": {0.25: [0.102, 10.7], 0.5: [0.206, 10.8]}}
            for lam in (5, 10, 20)
        ],
    ],
    "merge_identical": [
        {"rows": ["stab5", "stab10", "stab20"], "label": "Stability (λ = 5, 10, 20)"}
    ],
}  # fmt: skip

FIXTURE_SPECS = (SETTINGS_SPEC, SEEDS_SPEC, LOSS_SPEC, MERGE_SPEC)

# ACR 0.2 and 0.4 (4 images); both are 25 % / 50 % certified at r = 0.5
ACR_02 = ([0.8, 0.0, 0.0, 0.0], [1, 0, 0, 0])
ACR_04 = ([0.8, 0.8, 0.0, 0.0], [1, 1, 0, 0])


def write_specs(directory: Path, *specs: dict) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for spec in specs:
        text = yaml.safe_dump(spec, allow_unicode=True, sort_keys=False)
        (directory / f"{spec['name']}.yaml").write_text(text)
    return directory


def render_fixture(tmp_path: Path, spec: dict, cells: list[dict]):
    specs = write_specs(tmp_path / "specs", spec)
    cells_path = write_cells(tmp_path / "cells.yaml", cells, table=spec["name"])
    md, tex = tmp_path / "out" / "t.md", tmp_path / "out" / "t.tex"
    frame = render_table(cells_path, md, tex, spec_dir=specs)
    return frame, md.read_text(), tex.read_text()


def md_table(md: str) -> list[list[str]]:
    """Header and body rows of the Markdown table, cells stripped (alignment row dropped)."""
    lines = [line for line in md.splitlines() if line.startswith("|")]
    return [
        [f.strip() for f in line.strip("|").split("|")] for i, line in enumerate(lines) if i != 1
    ]


def tex_table(tex: str) -> tuple[int, list[str]]:
    """Column count of the tabular and its header and body lines (no \\multicolumn line)."""
    n_columns = len(re.search(r"\\begin\{tabular\}\{([lr]+)\}", tex)[1])
    body = tex.split(r"\begin{tabular}")[1]
    lines = [ln for ln in body.splitlines() if ln.endswith(r"\\") and r"\multicolumn" not in ln]
    return n_columns, lines


def assert_tex_columns(tex: str, n_columns: int) -> list[str]:
    found, lines = tex_table(tex)
    assert found == n_columns
    for line in lines:
        assert len(re.findall(r"(?<!\\)&", line)) == n_columns - 1, line
    return lines


# ----------------------------------------------------------------------------- schema


def test_fixture_specs_load(tmp_path):
    directory = write_specs(tmp_path, *FIXTURE_SPECS)
    settings = load_spec("t1_settings", directory)
    assert settings.settings and settings.layout == "rows_first"
    assert settings.label_columns == ("Dataset",)
    assert settings.row("imagenet").groups == (0.5, 1.0)
    assert settings.row("cifar10").groups is None
    assert settings.row("imagenet").paper[0.5] == ("PGD", 1.0, 255.0, 1.0)
    assert settings.column("eps").paper_divide_by == 256
    seeds = load_spec("t3_seeds", directory)
    assert seeds.row("gaussian").paper[0.25] == ((0.9108, 0.0003),)
    assert seeds.columns[0].aggregate == "mean_std"
    loss = load_spec("t4_loss", directory)
    assert not loss.group.show
    assert loss.row("mse5").label_cells == {1.0: ("MSE", "5")}
    assert loss.row("mse5").labels == {1.0: "MSE, λ = 5"}
    merge = load_spec("t7_merge", directory)
    assert merge.merges[0].rows == ("stab5", "stab10", "stab20")
    assert merge.merges[0].labels[0.5] == "Stability (λ = 5, 10, 20)"


def _set(*path, value):
    """An edit setting spec[path[0]][path[1]]... to ``value`` (appending at a list's end)."""

    def edit(spec):
        obj = spec
        for key in path[:-1]:
            obj = obj[key]
        if isinstance(obj, list) and path[-1] == len(obj):
            obj.append(value)
        else:
            obj[path[-1]] = value

    return edit


def _drop(*path):
    def edit(spec):
        obj = spec
        for key in path[:-1]:
            obj = obj[key]
        del obj[path[-1]]

    return edit


@pytest.mark.parametrize(
    ("spec", "edit", "pattern"),
    [
        (SEEDS_SPEC, _set("layout", value="grid"), r"layout: unknown layout 'grid'"),
        (
            LOSS_SPEC,
            _set("layout", value="groups_as_columns"),
            r"layout: groups_as_columns needs exactly one column, got 2",
        ),
        (
            SEEDS_SPEC,
            _set("rows", 0, "label", value={0.25: "A", 0.5: "B", 1.0: "B"}),
            r"rows\[gaussian\]\.label: layout groups_as_columns prints one label per row",
        ),
        (
            SEEDS_SPEC,
            _set("group_by", value={**SIGMAS, "values": [1.0], "show": False}),
            r"group_by\.show: false is not possible with layout groups_as_columns",
        ),
        (
            MERGE_SPEC,
            _set("group_by", "show", value=False),
            r"group_by\.show: false needs exactly one value",
        ),
        (LOSS_SPEC, _set("group_by", "show", value="no"), r"group_by\.show: expected true/false"),
        (
            LOSS_SPEC,
            _set("label_columns", value="Model"),
            r"label_columns: expected a non-empty list",
        ),
        (
            LOSS_SPEC,
            _set("label_columns", 1, value=""),
            r"label_columns\[1\]: expected a non-empty string",
        ),
        (
            LOSS_SPEC,
            _set("rows", 1, "label", value=["MSE"]),
            r"rows\[mse5\]\.label: expected a list of 2 strings \(label_columns: Model, λ\)",
        ),
        (
            LOSS_SPEC,
            _set("rows", 1, "label", value="MSE"),
            r"rows\[mse5\]\.label: expected a list of 2",
        ),
        (
            LOSS_SPEC,
            _set("rows", 1, "label", value=["MSE", 5]),
            r"rows\[mse5\]\.label\[1\]: expected a non-empty string",
        ),
        (
            SETTINGS_SPEC,
            _set("rows", 1, "groups", value=[0.5, 0.75]),
            r"rows\[imagenet\]\.groups: unknown sigma 0\.75",
        ),
        (
            SETTINGS_SPEC,
            _set("rows", 1, "groups", value=[0.5, 0.5]),
            r"rows\[imagenet\]\.groups: duplicate sigma",
        ),
        (
            SETTINGS_SPEC,
            _set("rows", 1, "paper", 0.25, value=["PGD", 1, 255, 1]),
            r"rows\[imagenet\]\.paper: sigma 0\.25 is not one of the row's groups",
        ),
        (
            SETTINGS_SPEC,
            _set("rows", 1, "label", value={0.25: "I", 0.5: "I", 1.0: "I"}),
            r"rows\[imagenet\]\.label: sigma 0\.25 is not one of the row's groups",
        ),
        (
            SEEDS_SPEC,
            _set("columns", 0, "aggregate", value="median"),
            r"columns\[0\]\.aggregate: unknown aggregate 'median'",
        ),
        (
            SEEDS_SPEC,
            _set("rows", 0, "paper", 0.25, value=[0.9108]),
            r"rows\[gaussian\]\.paper\[0\.25\]\[0\]: expected \[mean, std\]",
        ),
        (
            SETTINGS_SPEC,
            _drop("columns", 1, "param"),
            r"columns\[1\]: metric 'setting' needs key 'param'",
        ),
        (
            LOSS_SPEC,
            _set("columns", 0, "param", value="lr"),
            r"columns\[0\]\.param: only applies to metric 'setting'",
        ),
        (
            SETTINGS_SPEC,
            _set("columns", 0, "radius", value=0.5),
            r"columns\[0\]\.radius: only applies to metric 'certified_accuracy'",
        ),
        (
            LOSS_SPEC,
            _set("columns", 0, "paper_divide_by", value=2),
            r"columns\[0\]\.paper_divide_by: only applies to metric 'setting'",
        ),
        (
            SETTINGS_SPEC,
            _set("columns", 2, "paper_divide_by", value=0),
            r"columns\[2\]\.paper_divide_by: expected a positive number",
        ),
        (
            SETTINGS_SPEC,
            _set("columns", 1, "percent", value=True),
            r"columns\[1\]\.percent: does not apply to metric 'setting'",
        ),
        (
            SETTINGS_SPEC,
            _set("columns", 1, "aggregate", value="mean_std"),
            r"columns\[1\]\.aggregate: does not apply to metric 'setting'",
        ),
        (
            SETTINGS_SPEC,
            _set(
                "columns", 1, value={"key": "acr", "label": "ACR", "metric": "acr", "decimals": 3}
            ),
            r"columns\[1\]\.metric: 'acr' cannot share a table with 'setting'",
        ),
        (
            SETTINGS_SPEC,
            _set("highlight", value={"bold": "best_per_group"}),
            r"highlight: rules do not apply to 'setting' columns",
        ),
        (
            SETTINGS_SPEC,
            _set("rows", 0, "paper", 0.25, value=["PGD", 10, "255", 4]),
            r"rows\[cifar10\]\.paper\[0\.25\]\[2\]: expected a finite number",
        ),
        (
            SETTINGS_SPEC,
            _set("rows", 0, "paper", 0.25, value=["PGD", True, 255, 4]),
            r"rows\[cifar10\]\.paper\[0\.25\]\[1\]: expected a number or string",
        ),
        (
            MERGE_SPEC,
            _set("merge_identical", value={"rows": ["stab5"]}),
            r"merge_identical: expected a list",
        ),
        (
            MERGE_SPEC,
            _set("merge_identical", 0, "rows", value=["stab5"]),
            r"merge_identical\[0\]\.rows: expected a list of two or more row keys",
        ),
        (
            MERGE_SPEC,
            _set("merge_identical", 0, "rows", value=["stab5", "stab50"]),
            r"merge_identical\[0\]\.rows: unknown row 'stab50'",
        ),
        (
            MERGE_SPEC,
            _set("merge_identical", 1, value={"rows": ["stab20", "gaussian"], "label": "X"}),
            r"merge_identical\[1\]\.rows: row 'stab20' is already merged",
        ),
        (
            MERGE_SPEC,
            _set("rows", 2, "paper", 0.5, value=[0.206, 10.9]),
            r"merge_identical\[0\]\.rows: paper values of 'stab5' and 'stab10' differ at sigma "
            r"0\.50",
        ),
        (
            MERGE_SPEC,
            lambda s: s["rows"][3].update(groups=[0.5], paper={0.5: [0.206, 10.8]}),
            r"merge_identical\[0\]\.rows: rows 'stab5' and 'stab20' have different groups",
        ),
        (
            MERGE_SPEC,
            _drop("merge_identical", 0, "label"),
            r"merge_identical\[0\]: missing key 'label'",
        ),
        (
            MERGE_SPEC,
            _set("merge_identical", 0, "label", value={0.25: "S"}),
            r"merge_identical\[0\]\.label: no entry for sigma 0\.5",
        ),
        (
            MERGE_SPEC,
            _set("kind", value="chart"),
            r"kind: expected 'table' or 'figure', got 'chart'",
        ),
        (
            MERGE_SPEC,
            _set("kind", value="figure"),
            r"kind: a figure spec, not a table; .*load_figure_spec",
        ),
    ],
)
def test_new_spec_keys_one_line_errors(tmp_path, spec, edit, pattern):
    spec = copy.deepcopy(spec)
    edit(spec)
    directory = write_specs(tmp_path, spec)
    with pytest.raises(ValueError) as err:
        load_spec(spec["name"], directory)
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith(f"{directory / (spec['name'] + '.yaml')}: ")
    assert re.search(pattern, message), message


# ----------------------------------------------------------------------------- cells files


@pytest.mark.parametrize(
    ("spec", "cell", "pattern"),
    [
        (
            MERGE_SPEC,
            {"row": "gaussian", "sigma": 0.25, "log": ["a.tsv", "b.tsv"]},
            r"cells\[0\]: log: a list of logs \(one per seed\) needs aggregate: mean_std on every "
            r"column; column 'acr' has none",
        ),
        (
            SEEDS_SPEC,
            {"row": "gaussian", "sigma": 0.25, "log": []},
            r"cells\[0\]: log: expected a non-empty list of paths",
        ),
        (
            SEEDS_SPEC,
            {"row": "gaussian", "sigma": 0.25, "log": ["a.tsv", 3]},
            r"cells\[0\]: log: expected a path, got 3",
        ),
        (
            SEEDS_SPEC,
            {"row": "macer", "sigma": 0.25, "log": "a.tsv"},
            r"cells\[0\]: row 'macer' has no sigma 0\.25 in table t3_seeds "
            r"\(its sigma: 0\.50, 1\.00\)",
        ),
        (
            SETTINGS_SPEC,
            {"row": "cifar10", "sigma": 0.25, "settings": {"attack": "PGD", "steps": 10, "m": 4}},
            r"cells\[0\]: settings: no 'eps' \(shown in column 'eps'\)",
        ),
        (
            SETTINGS_SPEC,
            {
                "row": "cifar10",
                "sigma": 0.25,
                "settings": {"attack": "PGD", "steps": True, "eps": 1.0, "m": 4},
            },
            r"cells\[0\]: settings\.steps: expected a number or string",
        ),
        (
            SETTINGS_SPEC,
            {"row": "cifar10", "sigma": 0.25, "settings": ["PGD"]},
            r"cells\[0\]: settings: expected a mapping",
        ),
        (
            SETTINGS_SPEC,
            {"row": "cifar10", "sigma": 0.25, "log": "a.tsv"},
            r"cells\[0\]: unknown key 'log' \(expected row, sigma, settings, experiment\)",
        ),
        (
            SETTINGS_SPEC,
            {"row": "cifar10", "sigma": 0.25, "experiment": "x"},
            r"cells\[0\]: missing key 'settings'",
        ),
        (
            SETTINGS_SPEC,
            {
                "row": "cifar10",
                "sigma": 0.25,
                "experiment": 7,
                "settings": {"attack": "PGD", "steps": 10, "eps": 1.0, "m": 4},
            },
            r"cells\[0\]: experiment: expected an experiment id",
        ),
    ],
)
def test_new_cells_keys_one_line_errors(tmp_path, spec, cell, pattern):
    specs = write_specs(tmp_path / "specs", spec)
    cells_path = write_cells(tmp_path / "cells.yaml", [cell], table=spec["name"])
    with pytest.raises(ValueError) as err:
        load_cells(cells_path, specs)
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith(f"{cells_path}: ")
    assert re.search(pattern, message), message


def test_cells_file_finds_its_spec_in_spec_dir(tmp_path):
    cells_path = write_cells(tmp_path / "cells.yaml", [], table="t4_loss")
    with pytest.raises(ValueError, match=r"table: unknown table spec 't4_loss'"):
        load_cells(cells_path)  # not in the package's specs folder
    cells = load_cells(cells_path, write_specs(tmp_path / "specs", LOSS_SPEC))
    assert cells.spec.name == "t4_loss" and cells.cells == ()


# ----------------------------------------------------------------------------- Table 1


def test_rows_first_settings_table(tmp_path):
    settings = {"attack": "PGD", "steps": 10, "eps": 255 / 256, "m": 4, "lr": 0.1}
    imagenet = {**settings, "steps": 1, "eps": 2, "m": 1}
    frame, md, tex = render_fixture(
        tmp_path,
        SETTINGS_SPEC,
        [
            {"row": "cifar10", "sigma": 0.25, "settings": settings,
             "experiment": "cifar10-cifar_resnet110-smoothadv-s0.25-abc123"},
            {"row": "imagenet", "sigma": 1.0, "settings": imagenet},
        ],
    )  # fmt: skip
    table = md_table(md)
    assert table[0] == ["Dataset", "σ — ours (paper)", "Method", "# steps", "ε", "m"]
    assert table[1] == ["CIFAR-10", "0.25", "PGD (PGD)", "10 (10)", "0.996 (0.996 = 255/256)",
                        "4 (4)"]  # fmt: skip
    assert table[2] == ["", "0.50", "– (PGD)", "– (10)", "– (2.000 = 512/256)", "– (2)"]
    assert table[3][:2] == ["", "1.00"]
    # ImageNet exists at σ = 0.50 and 1.00 only: two lines, the dataset printed once
    assert table[4] == ["ImageNet", "0.50", "– (PGD)", "– (1)", "– (0.996 = 255/256)", "– (1)"]
    assert table[5] == ["", "1.00", "PGD (PGD)", "1 (1)", "2.000 (2.000 = 512/256)", "1 (1)"]
    assert len(table) == 6
    assert "ε: the paper prints ε × 256; its values are shown divided by 256" in md
    assert "- CIFAR-10, σ = 0.25: `cifar10-cifar_resnet110-smoothadv-s0.25-abc123`" in md
    assert "- ImageNet, σ = 1.00: no experiment named" in md
    assert "training settings" in md.splitlines()[0]

    lines = assert_tex_columns(tex, 6)
    assert lines[0] == r"Dataset & $\sigma$ & Method & \# steps & $\varepsilon$ & m \\"
    assert lines[1].startswith(r"\multirow{3}{*}{CIFAR-10} & 0.25 & PGD~{\scriptsize(PGD)} & ")
    assert r"0.996~{\scriptsize(0.996 = 255/256)}" in lines[1]
    assert lines[4].startswith(r"\multirow{2}{*}{ImageNet} & 0.50 & ")
    assert tex.count(r"\midrule") == 2
    assert r"$\varepsilon$: the paper prints $\varepsilon$ $\times$ 256" in tex

    eps = frame[frame.column == "eps"].set_index(["row", "group"])
    assert eps.loc[("cifar10", 0.25), "paper"] == pytest.approx(255 / 256)
    assert eps.loc[("cifar10", 0.25), "ours"] == pytest.approx(255 / 256)
    assert frame[(frame.column == "method") & frame.ours.notna()].ours.tolist() == ["PGD", "PGD"]
    assert len(frame) == 4 * (3 + 2)  # no records for ImageNet at σ = 0.25
    assert not frame.bold.any() and not frame.underline.any()


# ----------------------------------------------------------------------------- Table 3


def test_groups_as_columns_mean_std_over_seeds(tmp_path):
    a = str(write_log(tmp_path / "s0.tsv", *ACR_02))
    b = str(write_log(tmp_path / "s1.tsv", *ACR_04))
    frame, md, tex = render_fixture(
        tmp_path,
        SEEDS_SPEC,
        [
            {"row": "gaussian", "sigma": 0.25, "log": [a, b]},
            {"row": "consistency", "sigma": 0.25, "log": [b]},  # one seed in a list
            {"row": "macer", "sigma": 1.0, "log": a},  # one seed as a plain path
        ],
    )
    assert value(frame, "gaussian", 0.25, "acr") == pytest.approx(0.3)
    assert value(frame, "gaussian", 0.25, "acr", "ours_std") == pytest.approx(0.1414, abs=1e-4)
    assert math.isnan(value(frame, "consistency", 0.25, "acr", "ours_std"))
    assert value(frame, "gaussian", 0.5, "acr", "paper") == 1.5581
    assert value(frame, "gaussian", 0.5, "acr", "paper_std") == 0.0016

    table = md_table(md)
    assert table[0] == ["Method — ACR, ours (paper)", "σ = 0.25", "σ = 0.50", "σ = 1.00"]
    assert table[1] == ["Gaussian", "0.3000 ± 0.1414 (0.9108 ± 0.0003)",
                        "– (1.5581 ± 0.0016)", "– (1.6184 ± 0.0021)"]  # fmt: skip
    # 0.4 > 0.3: bold (beats its baseline), underlined (best per σ)
    assert table[2][1] == "**<u>0.4000 ± –</u>** (0.9279 ± 0.0003)"
    # MACER does not exist at σ = 0.25: an empty cell, not a missing value
    assert table[3] == ["MACER", "", "– (1.5899 ± 0.0069)", "<u>0.2000 ± –</u> (1.5950 ± 0.0051)"]
    assert "An empty cell: the row has no such σ." in md
    assert "- Gaussian, σ = 0.25: `" + a + "`, `" + b + "`" in md

    lines = assert_tex_columns(tex, 4)
    assert r" & \multicolumn{3}{c}{ACR} \\" in tex and r"\cmidrule(lr){2-4}" in tex
    assert lines[0] == r"Method & $\sigma$ = 0.25 & $\sigma$ = 0.50 & $\sigma$ = 1.00 \\"
    assert lines[1].startswith(r"Gaussian & 0.3000 $\pm$ 0.1414~{\scriptsize(0.9108 $\pm$ 0.0003)}")
    assert r"\underline{\textbf{0.4000 $\pm$ --}}" in lines[2]
    assert lines[3].startswith("MACER &  & ")


def test_rules_compare_means_not_seeds(tmp_path):
    low = str(write_log(tmp_path / "low.tsv", *ACR_02))
    high = str(write_log(tmp_path / "high.tsv", *ACR_04))
    frame, md, _ = render_fixture(
        tmp_path,
        SEEDS_SPEC,
        [
            # baseline mean 0.3; consistency has the best single seed but mean 0.2667
            {"row": "gaussian", "sigma": 0.5, "log": [low, high]},
            {"row": "consistency", "sigma": 0.5, "log": [high, low, low]},
            {"row": "macer", "sigma": 0.5, "log": [high, high]},
        ],
    )
    assert value(frame, "consistency", 0.5, "acr") == pytest.approx(0.8 / 3)
    assert not value(frame, "consistency", 0.5, "acr", "bold")
    under = frame[frame.underline]
    assert list(zip(under.row, under.group, strict=True)) == [("macer", 0.5)]
    assert md_table(md)[2][2] == "0.2667 ± 0.1155 (1.6549 ± 0.0011)"
    assert md_table(md)[3][2] == "<u>0.4000 ± 0.0000</u> (1.5899 ± 0.0069)"


# ----------------------------------------------------------------------------- Table 4


def test_label_columns_print_repeats_once_and_hidden_group(tmp_path):
    a = str(write_log(tmp_path / "a.tsv", *LOG_A))
    b = str(write_log(tmp_path / "b.tsv", *LOG_B))
    frame, md, tex = render_fixture(
        tmp_path,
        LOSS_SPEC,
        [{"row": "gaussian", "sigma": 1.0, "log": a}, {"row": "mse20", "sigma": 1.0, "log": b}],
    )
    table = md_table(md)
    assert table[0] == ["Model", "λ — ours (paper)", "ACR", "0.50"]
    assert [r[:2] for r in table[1:]] == [
        ["Gaussian", "0"], ["MSE", "5"], ["", "20"], ["", "50"], ["KL-divergence", "5"],
    ]  # fmt: skip
    assert table[3][2:] == ["**<u>0.375</u>** (1.677)", "25.0 (87.5)"]
    assert "- MSE, λ = 20, σ = 1.00: `" in md

    lines = assert_tex_columns(tex, 4)
    assert lines[0] == r"Model & $\lambda$ & ACR & 0.50 \\"
    assert lines[1].startswith(r"Gaussian & 0 & 0.225")
    assert lines[2].startswith(r"\multirow{3}{*}{MSE} & 5 & --")
    assert lines[3].startswith(r" & 20 & \underline{\textbf{0.375}}")
    assert lines[5].startswith(r"KL-divergence & 5 & ")
    assert tex.count(r"\midrule") == 1  # one block: under the header only
    assert "1.00" not in "".join(lines)
    assert set(frame.group) == {1.0}


# ----------------------------------------------------------------------------- Table 7


def test_merge_identical_rows_print_as_one(tmp_path):
    a = str(write_log(tmp_path / "a.tsv", *LOG_A))
    b = str(write_log(tmp_path / "b.tsv", *LOG_B))
    cells = [{"row": "gaussian", "sigma": 0.25, "log": b}]
    cells += [{"row": f"stab{lam}", "sigma": 0.25, "log": a} for lam in (5, 10, 20)]
    # at σ = 0.50 none of the members has a value: identical too
    frame, md, tex = render_fixture(tmp_path, MERGE_SPEC, cells)
    table = md_table(md)
    assert [r[1] for r in table[1:]] == [
        "Gaussian", "Stability (λ = 5, 10, 20)", "Gaussian", "Stability (λ = 5, 10, 20)",
    ]  # fmt: skip
    assert table[2][2:] == ["0.225 (0.102)", "50.0 (10.7)"]
    assert table[4][2:] == ["– (0.206)", "– (10.8)"]
    assert "prints" not in md.split("|:--")[1].split("Our values")[0]
    lines = assert_tex_columns(tex, 4)
    assert r" & Stability ($\lambda$ = 5, 10, 20) & 0.225~{\scriptsize(0.102)}" in tex
    assert lines[1].startswith(r"\multirow{2}{*}{0.25} & Gaussian")
    # the frame keeps the members apart
    assert set(frame.row) == {"gaussian", "stab5", "stab10", "stab20"}


def test_merge_identical_highlights_of_first_member(tmp_path):
    a = str(write_log(tmp_path / "a.tsv", *LOG_A))
    b = str(write_log(tmp_path / "b.tsv", *LOG_B))
    cells = [{"row": "gaussian", "sigma": 0.5, "log": a}]
    cells += [{"row": f"stab{lam}", "sigma": 0.5, "log": b} for lam in (5, 10, 20)]
    _, md, _ = render_fixture(tmp_path, MERGE_SPEC, cells)
    (merged,) = [
        r for r in md_table(md) if r[1] == "Stability (λ = 5, 10, 20)" and r[2] != "– (0.102)"
    ]
    assert merged[2:] == ["**0.375** (0.206)", "50.0 (10.8)"]


def test_merge_identical_rows_that_differ_print_apart_with_a_note(tmp_path):
    a = str(write_log(tmp_path / "a.tsv", *LOG_A))
    b = str(write_log(tmp_path / "b.tsv", *LOG_B))
    cells = [{"row": f"stab{lam}", "sigma": 0.25, "log": a} for lam in (5, 10, 20)]
    cells += [
        {"row": "stab5", "sigma": 0.5, "log": a},
        {"row": "stab10", "sigma": 0.5, "log": b},  # differs in ACR
        {"row": "stab20", "sigma": 0.5, "log": a},
    ]
    _, md, tex = render_fixture(tmp_path, MERGE_SPEC, cells)
    table = md_table(md)
    assert [r[1] for r in table[1:]] == [
        "Gaussian", "Stability (λ = 5, 10, 20)",
        "Gaussian", "Stability (λ = 5)", "Stability (λ = 10)", "Stability (λ = 20)",
    ]  # fmt: skip
    # each member beside the paper's merged values
    assert [r[2] for r in table[4:]] == ["0.225 (0.206)", "0.375 (0.206)", "0.225 (0.206)"]
    note = (
        "The paper prints Stability (λ = 5), Stability (λ = 10) and Stability (λ = 20) as one "
        "row, “Stability (λ = 5, 10, 20)”, since its values coincide; ours differ at σ = 0.50, "
        "so they are shown separately"
    )
    assert note in md
    assert "ours differ at $\\sigma$ = 0.50" in tex
    assert_tex_columns(tex, 4)
    assert r"\multirow{4}{*}{0.50}" in tex


def test_missing_cells_in_new_layouts_are_missing(tmp_path):
    _, md, tex = render_fixture(tmp_path, SEEDS_SPEC, [])
    assert md_table(md)[1][1:] == [
        "– (0.9108 ± 0.0003)", "– (1.5581 ± 0.0016)", "– (1.6184 ± 0.0021)",
    ]  # fmt: skip
    assert "- none" in md
    assert r"--~{\scriptsize(0.9108 $\pm$ 0.0003)}" in tex


# ----------------------------------------------------------- the shipped consistency specs

CONSISTENCY_TABLES = [
    "table2_mnist",
    "table3_mnist_seeds",
    "table4_mnist_loss",
    "table5_mnist_m",
    "table6_mnist_lambda",
    "table7_cifar10",
]


def fixture_cells(tmp_path: Path, table: str, seeds: int = 1) -> list[dict]:
    """One fixture log (4 images, LOG_A / LOG_B alternating) per cell of a shipped spec."""
    spec = load_spec(table)
    cells = []
    for group in spec.group.values:
        for i, row in enumerate(spec.rows):
            if row.groups is not None and group not in row.groups:
                continue
            logs = [
                str(
                    write_log(tmp_path / f"{row.key}-{group}-{s}.tsv", *(LOG_A, LOG_B)[(i + s) % 2])
                )
                for s in range(seeds)
            ]
            cells.append({"row": row.key, "sigma": group, "log": logs if seeds > 1 else logs[0]})
    return cells


@pytest.mark.parametrize("table", CONSISTENCY_TABLES)
def test_shipped_specs_render_from_fixture_logs_without_training(tmp_path, table):
    seeds = 2 if table == "table3_mnist_seeds" else 1
    cells_path = write_cells(
        tmp_path / "cells.yaml", fixture_cells(tmp_path, table, seeds), table=table
    )
    frame = render_table(cells_path, tmp_path / "t.md", tmp_path / "t.tex")
    assert frame["ours"].notna().all()
    assert frame["paper"].notna().all()
    assert (tmp_path / "t.md").read_text().count("(") > len(frame) - 1


def test_table3_paper_values_are_mean_std_pairs():
    spec = load_spec("table3_mnist_seeds")
    assert spec.row("consistency").paper[0.5] == ((1.6549, 0.0011),)
    assert spec.row("macer").paper[1.0] == ((1.5950, 0.0051),)


def test_table7_collapsed_stability_rows_render_as_the_paper_prints_them(tmp_path):
    """Our three collapsed Stability models certify identically: one merged row, as printed."""
    cells = []
    for group in (0.25, 0.5, 1.0):
        for row in ("gaussian", "consistency", "stability1", "stability2"):
            cells.append({"row": row, "sigma": group, "log": str(write_log(
                tmp_path / f"{row}-{group}.tsv", *LOG_A))})  # fmt: skip
        # a constant classifier: class 0 everywhere, certified at the radius cap
        collapsed = write_log(tmp_path / f"collapsed-{group}.tsv", [0.953, 0, 0, 0], [1, 0, 0, 0])
        for row in ("stability5", "stability10", "stability20"):
            cells.append({"row": row, "sigma": group, "log": str(collapsed)})
    # ... except at sigma = 1.00, where our lambda = 5 model did not collapse.
    cells[-3]["log"] = str(write_log(tmp_path / "alive.tsv", *LOG_B))
    cells_path = write_cells(tmp_path / "cells.yaml", cells, table="table7_cifar10")
    render_table(cells_path, tmp_path / "t.md", tmp_path / "t.tex")
    md = (tmp_path / "t.md").read_text()
    merged = [
        line for line in md.splitlines() if line.startswith("|") and "(λ = 5, 10, 20)" in line
    ]
    assert len(merged) == 2  # sigma 0.25 and 0.50 (the note names sigma = 1.00 instead)
    assert "25.0 (10.7)" in merged[0] and "25.0 (10.8)" in merged[1]
    assert md.count("| Stability (λ = 10) |") == 1
    assert "ours differ at σ = 1.00" in md


def test_captions_state_where_the_consistency_paper_mixes_its_readings():
    # Table 3: the released seed logs give the consistency rows' printed deviations with
    # ddof = 0 and the baselines' with ddof = 1; ours is ddof = 1 throughout (render.py)
    table3 = " ".join(load_spec("table3_mnist_seeds").caption.split())
    assert "sample standard deviation (ddof = 1) in every row" in table3
    assert "population standard deviation (ddof = 0)" in table3
    # Table 6: the lambda = 5 row's ACR is Table 2's, its accuracies another run's
    table6 = " ".join(load_spec("table6_mnist_lambda").caption.split())
    assert "Table 2's ACR (1.740)" in table6 and "1.738" in table6


def test_cells_file_notes_are_rendered_first_in_both_outputs(tmp_path):
    log = write_log(tmp_path / "a.tsv", *LOG_A)
    note = "Checkpoint selection (early stopping) for Gaussian: the epoch of 5 & 6_x."
    cells = [{"row": "gaussian", "sigma": 0.25, "log": str(log)}]
    cells_path = write_cells(tmp_path / "cells.yaml", cells, notes=[note])
    md, tex = tmp_path / "t.md", tmp_path / "t.tex"
    render_table(cells_path, md, tex)
    assert note.replace("_", r"\_") in md.read_text()
    assert r"5 \& 6\_x" in tex.read_text()


@pytest.mark.parametrize("notes", ["one string", [""], [3], {"a": "b"}])
def test_cells_file_notes_must_be_a_list_of_strings(tmp_path, notes):
    log = write_log(tmp_path / "a.tsv", *LOG_A)
    cells = [{"row": "gaussian", "sigma": 0.25, "log": str(log)}]
    cells_path = write_cells(tmp_path / "cells.yaml", cells, notes=notes)
    with pytest.raises(ValueError, match=r"cells.yaml: notes: expected a list of non-empty"):
        render_table(cells_path, tmp_path / "t.md", tmp_path / "t.tex")
