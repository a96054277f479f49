"""Attack tables (the ATENT paper's Tables 1-6): specs, cells files, rendering."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml

from robustreg.tables import load_spec
from robustreg.tables.cells import load_cells
from robustreg.tables.render import render_table
from robustreg.tables.spec import specs_dir

OUTCOME_HEADER = "idx\tlabel\tclean\tadversarial\trobust\tl2\tlinf\ttime"


def write_outcomes(path: Path, robust: list[int], broken_by: list[str] | None = None) -> Path:
    """A synthetic outcome file: image i has label i % 10; robust images keep it. With
    ``broken_by``, the column naming what broke each image (else an older log without it)."""
    lines = [OUTCOME_HEADER + ("\tbroken_by" if broken_by else "")]
    for i, r in enumerate(robust):
        label = i % 10
        adversarial = label if r else (label + 1) % 10
        part = f"\t{broken_by[i]}" if broken_by else ""
        lines.append(f"{i}\t{label}\t{label}\t{adversarial}\t{r}\t0.5\t0.1\t0:00:00.010000{part}")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    return path


def cells_file(tmp_path: Path, table: str, cells: list[dict], banner: str | None = None) -> Path:
    doc: dict = {"table": table}
    if banner:
        doc["banner"] = banner
    doc["cells"] = cells
    path = tmp_path / "cells.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False, allow_unicode=True))
    return path


def test_atent_specs_transcribe_the_paper():
    t1 = load_spec("table1_atent")
    assert [r.key for r in t1.rows] == ["sgd", "entropy_sgd", "pgd_at", "trades", "mma", "atent"]
    assert t1.values_from == "attacks"
    paper = {r.key: r.paper["MNIST"] for r in t1.rows}
    assert paper["atent"] == (98.66, 77.21, 76.72, None, None)
    assert paper["sgd"][:3] == (99.38, 19.40, 13.20)
    assert {r.key: r.not_evaluated for r in t1.rows if r.not_evaluated} == {
        "pgd_at": ("cw",),
        "trades": ("cw",),
    }
    t2 = load_spec("table2_atent")
    assert "mart" in [r.key for r in t2.rows] and "mart" not in [r.key for r in t1.rows]
    assert {r.key: r.paper["MNIST"][1] for r in t2.rows}["mart"] == 96.48
    t3 = load_spec("table3_atent")
    rows3 = {r.key: r for r in t3.rows}
    assert rows3["pgd_at"].paper["CIFAR-10"][1] == 47.04
    assert rows3["pgd_at_es"].paper["CIFAR-10"][1] == 56.80
    assert rows3["pgd_at"].not_evaluated == ("deepfool",)
    t4 = load_spec("table4_atent")
    assert {r.key: r.not_evaluated for r in t4.rows}["trades_smooth"] == ("pgd10_050", "pgd10_100")
    t5 = load_spec("table5_atent")
    assert t5.values_from == "certify"
    assert {r.key for r in t5.rows if r.cited} == {"crown_ibp", "convex_smoothing"}
    assert {r.key: r.paper[0.12] for r in t5.rows}["atent"] == (72.2, 55.41)
    t6 = load_spec("table6_atent")
    assert {r.key: r.paper["CIFAR-10"] for r in t6.rows}["atent20"] == (79.95, 73.76, 59.69, 47.53)


def test_attack_table_renders_robust_accuracy_missing_and_not_evaluated(tmp_path):
    write_outcomes(tmp_path / "a.tsv", [1, 1, 1, 0])  # 75 %
    write_outcomes(tmp_path / "b.tsv", [1, 0, 0, 0, 0])  # 20 %
    cells = cells_file(
        tmp_path,
        "table1_atent",
        [
            {"row": "atent", "dataset": "MNIST", "outcomes": {"benign": "a.tsv", "pgd40": "b.tsv"}},
            {"row": "pgd_at", "dataset": "MNIST", "outcomes": {"pgd40": "a.tsv"}},
        ],
    )
    md, tex, html = tmp_path / "t.md", tmp_path / "t.tex", tmp_path / "t.html"
    frame = render_table(cells, md, tex, html_path=html)
    ours = {(r.row, r.column): r.ours for r in frame.itertuples()}
    assert ours[("atent", "benign")] == pytest.approx(75.0)
    assert ours[("atent", "pgd40")] == pytest.approx(20.0)
    assert ours[("pgd_at", "pgd40")] == pytest.approx(75.0)
    text = md.read_text()
    (atent,) = [line for line in text.splitlines() if line.startswith("| ℓ2 ATENT")]
    fields = [f.strip() for f in atent.strip("|").split("|")]
    # PGD-AT's 75 % is the best PGD-40 value, ATENT's 20 % the second best
    assert fields[1:] == [
        "75.00 (98.66)",
        "<u>20.00</u> (77.21)",
        "– (76.72)",
        "– (–)",
        "20.00 (–)",  # the worst case over the one attack it has
    ]
    assert "ℓ2 ATENT, Worst case: over the attacks evaluated, without ℓ2 CW, AutoAttack." in text
    (pgd_at,) = [line for line in text.splitlines() if line.startswith("| ℓ2 PGD-AT")]
    # CW was never evaluated against PGD-AT: a lone dash, as the paper prints it
    assert [f.strip() for f in pgd_at.strip("|").split("|")][3] == "–"
    assert "the paper did not evaluate this combination" in text
    assert "attack outcome files" in text and "pgd40: b.tsv" in text
    assert "PGD-AT & 75.00" not in tex.read_text()  # LaTeX keeps the label escaped
    assert '<td class="r">–</td>' in html.read_text()


def test_worst_case_counts_an_image_robust_only_if_it_survives_every_attack(tmp_path):
    """Issue 20: per row, the images robust under PGD-40, CW and AutoAttack at once: each
    attack breaks one other image of four here, so each column reads 75 % and the worst case
    25 %. Square broke an image that AutoAttack's gradient attacks left robust: noted."""
    write_outcomes(tmp_path / "pgd.tsv", [0, 1, 1, 1])
    write_outcomes(tmp_path / "cw.tsv", [1, 0, 1, 1])
    write_outcomes(tmp_path / "aa.tsv", [1, 1, 0, 1], broken_by=["-", "-", "square", "-"])
    outcomes = {"pgd40": "pgd.tsv", "cw": "cw.tsv", "autoattack": "aa.tsv"}
    entry = {"row": "atent", "dataset": "MNIST", "outcomes": outcomes}
    cells = cells_file(tmp_path, "table1_atent", [entry])
    frame = render_table(cells, tmp_path / "t.md", tmp_path / "t.tex")
    ours = {(r.row, r.column): r.ours for r in frame.itertuples()}
    assert [ours["atent", k] for k in ("pgd40", "cw", "autoattack")] == [75.0, 75.0, 75.0]
    assert ours["atent", "worst"] == pytest.approx(25.0)
    text = " ".join((tmp_path / "t.md").read_text().split())
    assert (
        "ℓ2 ATENT, AutoAttack: Square, AutoAttack's gradient-free attack, broke 1 of 4 images "
        "that its gradient-based attacks had left robust, a sign of gradient masking."
    ) in text
    assert "over the attacks evaluated" not in text  # every attack of the row has its file

    write_outcomes(tmp_path / "cw.tsv", [1, 0, 1])  # other images than PGD-40's
    with pytest.raises(ValueError, match=r"cw.tsv: holds other images than .*pgd.tsv"):
        render_table(cells, tmp_path / "t.md", tmp_path / "t.tex")
    bad = cells_file(
        tmp_path, "table1_atent", [entry | {"outcomes": outcomes | {"worst": "pgd.tsv"}}]
    )
    with pytest.raises(ValueError, match=r"column 'worst' is a worst case over other columns"):
        load_cells(bad)


def _md_lines(text: str, first: str) -> list[list[str]]:
    """The fields of the Markdown table lines that start with ``| first``."""
    return [
        [f.strip() for f in line.strip("|").split("|")]
        for line in text.splitlines()
        if line.startswith(f"| {first}")
    ]


def test_table3_prints_attacks_as_lines_and_defenses_as_columns_like_the_paper(tmp_path):
    write_outcomes(tmp_path / "a.tsv", [1, 1, 1, 0])  # 75 %
    write_outcomes(tmp_path / "b.tsv", [1, 0, 0, 0, 0])  # 20 %
    write_outcomes(tmp_path / "c.tsv", [1, 1, 0, 0])  # 50 %
    cells = cells_file(
        tmp_path,
        "table3_atent",
        [
            {"row": "pgd_at", "dataset": "CIFAR-10", "outcomes": {"pgd20": "b.tsv"}},
            {"row": "trades", "dataset": "CIFAR-10", "outcomes": {"pgd20": "a.tsv"}},
            {"row": "mart", "dataset": "CIFAR-10", "outcomes": {"pgd20": "c.tsv"}},
            {"row": "atent", "dataset": "CIFAR-10", "outcomes": {"pgd20": "a.tsv"}},
        ],
    )
    md, tex = tmp_path / "t.md", tmp_path / "t.tex"
    render_table(cells, md, tex)
    text = md.read_text()
    (header,) = _md_lines(text, "Attack")
    assert header == [
        "Attack ↓ Defense → — ours (paper)",
        "PGD-AT",
        "PGD-AT (E)",
        "TRADES",
        "MART",
        "ℓ∞ ATENT",
    ]
    # best (bold, tied) and second best (underlined) among our values, per attack
    assert _md_lines(text, "ℓ∞ PGD-20") == [
        [
            "ℓ∞ PGD-20",
            "20.00 (47.04)",
            "– (56.80)",
            "**75.00** (56.61)",
            "<u>50.00</u> (57.39)",
            "**75.00** (57.23)",
        ]
    ]
    # DeepFool against PGD-AT was never evaluated: a lone dash in PGD-AT's column
    assert _md_lines(text, "ℓ∞ DeepFool")[0][1:3] == ["–", "– (–)"]
    assert "best of our values in the line per Dataset" in text
    assert "second best of our values in the line" in text
    assert r"\underline{50.00}" in tex.read_text()


def test_cited_rows_print_the_paper_value_marked_cited(tmp_path):
    log = tmp_path / "certify.tsv"
    log.write_text(
        "idx\tlabel\tpredict\tradius\tcorrect\ttime\n"
        "0\t0\t0\t0.5\t1\t0:00:01.000000\n1\t1\t1\t0.1\t1\t0:00:01.000000\n"
    )
    cells = cells_file(tmp_path, "table5_atent", [{"row": "atent", "sigma": 0.12, "log": str(log)}])
    md = tmp_path / "t.md"
    render_table(cells, md, tmp_path / "t.tex")
    text = md.read_text()
    (crown,) = [line for line in text.splitlines() if line.startswith("| CROWN-IBP")]
    assert [f.strip() for f in crown.strip("|").split("|")][2:] == [
        "cited (72.00)",
        "cited (54.00)",
    ]
    (atent,) = [line for line in text.splitlines() if line.startswith("| ATENT (ours)")]
    assert [f.strip() for f in atent.strip("|").split("|")][2:] == [
        "**100.00** (72.20)",
        "**50.00** (55.41)",
    ]
    assert "cited from Zhang et al. (2020), CROWN-IBP" in text


@pytest.mark.parametrize(
    "cell, message",
    [
        (
            {"row": "pgd_at", "dataset": "MNIST", "outcomes": {"cw": "a.tsv"}},
            r"cells\[0\]: outcomes: column 'cw' is not evaluated for row 'pgd_at'",
        ),
        (
            {"row": "atent", "dataset": "MNIST", "outcomes": {"pgd20": "a.tsv"}},
            r"cells\[0\]: outcomes: unknown column 'pgd20'",
        ),
        (
            {"row": "atent", "dataset": "MNIST", "log": "a.tsv"},
            r"cells\[0\]: unknown key 'log'",
        ),
    ],
)
def test_attack_cells_file_errors_are_one_line(tmp_path, cell, message):
    with pytest.raises(ValueError, match=message) as err:
        load_cells(cells_file(tmp_path, "table1_atent", [cell]))
    assert "\n" not in str(err.value)


def test_a_cited_row_takes_no_cell(tmp_path):
    cells = cells_file(tmp_path, "table5_atent", [{"row": "crown_ibp", "sigma": 0.12, "log": "x"}])
    with pytest.raises(ValueError, match=r"cells\[0\]: row 'crown_ibp' is cited from Zhang"):
        load_cells(cells)


def _edited_spec(tmp_path: Path, name: str, edit) -> Path:
    raw = yaml.safe_load((specs_dir() / f"{name}.yaml").read_text())
    edit(raw)
    (tmp_path / f"{name}.yaml").write_text(yaml.safe_dump(raw, allow_unicode=True))
    return tmp_path


@pytest.mark.parametrize(
    "name, edit, message",
    [
        (
            "table1_atent",
            lambda raw: raw["rows"][2]["paper"]["MNIST"].__setitem__(2, 50.0),
            r"rows\[pgd_at\]\.paper\[MNIST\]\[2\]: column 'cw' is not_evaluated",
        ),
        (
            "table1_atent",
            lambda raw: raw["rows"][0].__setitem__("not_evaluated", ["nope"]),
            r"rows\[sgd\]\.not_evaluated: unknown column 'nope'",
        ),
        (
            "table1_atent",
            lambda raw: raw["columns"][1].__setitem__("metric", "acr"),
            r"columns\[1\]\.metric: 'acr' cannot share a table with 'robust_accuracy'",
        ),
        (
            "table3_atent",
            lambda raw: raw["group_by"].__setitem__("show", True),
            r"group_by: layout columns_as_rows needs one value and show: false",
        ),
        (
            "table3_atent",
            lambda raw: raw.__setitem__("label_columns", ["Defense", "Model"]),
            r"label_columns: layout columns_as_rows needs exactly one \(the corner\)",
        ),
        (
            "table5_atent",
            lambda raw: raw["rows"][0].pop("paper"),
            r"rows\[crown_ibp\]\.cited: a cited row has paper values",
        ),
    ],
)
def test_attack_spec_errors_are_one_line(tmp_path, name, edit, message):
    folder = _edited_spec(tmp_path, name, edit)
    with pytest.raises(ValueError, match=message) as err:
        load_spec(name, folder)
    assert "\n" not in str(err.value)


def test_attack_rows_are_compared_with_their_baseline_image_by_image(tmp_path):
    """Issue 22: ℓ2 ATENT against its baseline ℓ2 PGD-AT, per attack column, paired over the
    same images; the paper has ATENT above PGD-AT under PGD-40 (77.21 vs 72.94) and below it
    on clean images (98.66 vs 98.76)."""
    n = 200
    robust_pgd = [1] * 150 + [0] * 50  # 75 %
    atent_pgd = [1] * 150 + [1] * 30 + [0] * 20  # 90 %: 30 more images, none fewer
    clean = [1] * n
    for name, robust in (("a_pgd", atent_pgd), ("p_pgd", robust_pgd), ("clean", clean)):
        write_outcomes(tmp_path / f"{name}.tsv", robust)
    cells = cells_file(
        tmp_path,
        "table1_atent",
        [
            {
                "row": "atent",
                "dataset": "MNIST",
                "outcomes": {"benign": "clean.tsv", "pgd40": "a_pgd.tsv"},
            },
            {
                "row": "pgd_at",
                "dataset": "MNIST",
                "outcomes": {"benign": "clean.tsv", "pgd40": "p_pgd.tsv"},
            },
        ],
        banner="Quick scale.",
    )
    render_table(cells, tmp_path / "t.md", tmp_path / "t.tex")
    text = " ".join((tmp_path / "t.md").read_text().split())
    se = 100 * np.std([1] * 30 + [0] * 170, ddof=1) / np.sqrt(n)
    assert (
        f"ℓ2 ATENT against ℓ2 PGD-AT, ℓ2 PGD-40: Δ robust accuracy = +15.000 ± {se:.3f} points "
        "(paired over 200 images), beyond 2 SE."
    ) in text
    assert (
        "The paper's orderings of each row against its baseline (2), by our paired differences "
        "(resolved beyond 2 SE): reproduced: ℓ2 ATENT > ℓ2 PGD-AT under ℓ2 PGD-40. not resolved: "
        "ℓ2 ATENT \\< ℓ2 PGD-AT under Benign."  # Markdown escapes the <
    ) in text
