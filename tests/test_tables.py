"""The table renderer (robustreg.tables): spec loading, cells files, values, highlights."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from robustreg.tables import load_spec, render_table
from robustreg.tables.render import METRIC_FUNCS, RULE_FUNCS, load_cells, tex_escape
from robustreg.tables.spec import METRICS, RULES, specs_dir

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
    assert set(METRICS) == set(METRIC_FUNCS)
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
    frame = render_table(cells_path, tmp_path / "t.md", tmp_path / "t.tex")
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


def test_outputs_replaced_atomically(tmp_path):
    log = write_log(tmp_path / "a.tsv", *LOG_A)
    out = tmp_path / "out"
    out.mkdir()
    (out / "t.md").write_text("old")
    render(tmp_path, [{"row": "gaussian", "sigma": 0.25, "log": str(log)}])
    assert sorted(p.name for p in out.iterdir()) == ["t.md", "t.tex"]
    assert (out / "t.md").read_text() != "old"
