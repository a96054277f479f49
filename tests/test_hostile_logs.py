"""The table stage against bad and hostile files: a log cut short is refused against what its
job evaluated (robustreg.tables.logs), a cells file's paths stay inside the logs root, and no
error quotes a file it read."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import numpy as np
import pytest
import yaml

from robustreg.attacks.suite import write_outcomes
from robustreg.bounds import bound_summary, write_bounds
from robustreg.certify import LOG_COLUMNS, write_certify_log
from robustreg.cli import main
from robustreg.tables.figure import render_figure
from robustreg.tables.index import render_index
from robustreg.tables.render import render_table

SECRET = "hunter2"  # in files a cells file must not get quoted


def certify_job(folder: Path, images: int = 10, kept: int | None = None, log="certify.tsv"):
    """A certify job's folder: counts.npz of ``images`` images and the log of the first ``kept``
    (all by default); images 0 and 1 certified at radius 0.5, the others abstain."""
    folder.mkdir(parents=True, exist_ok=True)
    idx = np.arange(images)
    np.savez(folder / "counts.npz", idx=idx, label=idx % 10)
    shown = idx[: images if kept is None else kept]
    prediction = np.where(shown < 2, shown % 10, -1)
    radius = np.where(shown < 2, 0.5, 0.0)
    write_certify_log(folder / log, shown, shown % 10, prediction, radius, np.zeros(len(shown)))
    return folder / log


def cells(path: Path, entries: list[dict], table: str = "table2_mnist") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump({"table": table, "cells": entries}, sort_keys=False))
    return path


def outcomes(folder: Path, images: int = 10, kept: int | None = None, summary: dict | None = None):
    """An attack job's folder: outcomes.tsv of the first ``kept`` of ``images`` images (image
    i robust if i is even) and its attack.json (``summary``; by default with images and idx)."""
    num = images if kept is None else kept
    idx = np.arange(num)
    result = {
        "idx": idx, "label": idx % 10, "clean": idx % 10,
        "adversarial": np.where(idx % 2 == 0, idx % 10, (idx + 1) % 10),
        "robust": (idx % 2 == 0).astype(int), "l2": np.where(idx % 2 == 0, 0.0, 0.5),
        "linf": np.where(idx % 2 == 0, 0.0, 0.01), "seconds": np.zeros(num),
        "broken_by": np.where(idx % 2 == 0, "-", "pgd"),
    }  # fmt: skip
    folder.mkdir(parents=True, exist_ok=True)
    write_outcomes(folder / "outcomes.tsv", result)
    if summary is None:
        summary = {"images": images, "idx": list(range(images))}
    (folder / "attack.json").write_text(json.dumps(summary))
    return folder / "outcomes.tsv"


def bounds_job(folder: Path) -> Path:
    """A bounds job's folder over 100 images (bounds.tsv, and bounds.json with their idx)."""
    rng = np.random.default_rng(0)
    per_image = {
        "idx": np.arange(100), "label": np.zeros(100, dtype=np.int64),
        "correct": np.ones(100, dtype=np.int64), "loss": -np.linspace(0.1, 2.0, 100),
        "grad_norm": rng.uniform(0.9, 1.1, size=100),
        "modulus": rng.gumbel(0.01, 0.001, size=(100, 6)), "seconds": np.zeros(100),
    }  # fmt: skip
    eps = [0.25, 0.5, 0.75, 1.0, 1.25, 1.5]
    summary = bound_summary(per_image, eps=eps, block=10) | {"norm": "l2", "eps": eps}
    write_bounds(folder, per_image, summary | {"idx": list(range(100))})
    return folder / "bounds.json"


def bounds_cells(path: Path, bounds: str) -> Path:
    """Table B.6's cells file, one cell reading ``bounds`` (as the cells file writes it)."""
    files = {f"r{int(e * 100):03d}": bounds for e in (0.25, 0.5, 0.75, 1.0, 1.25, 1.5)}
    return cells(path, [{"row": "at2", "dataset": "CIFAR-10", "files": files}], "tableB6_gradreg")


def render(cells_path: Path, **kwargs):
    out = cells_path.parent / "out"
    return render_table(cells_path, out / "t.md", out / "t.tex", **kwargs)


# --- a log is checked against what its job evaluated --------------------------------------------


@pytest.mark.parametrize("log", ["certify.tsv", "tcertify.tsv"])
def test_a_certification_log_cut_short_is_refused_naming_it(tmp_path, monkeypatch, log):
    monkeypatch.chdir(tmp_path)  # the workflow's layout, in its own folder
    certify_job(Path("results/certify/X/Y"), images=10, kept=8, log=log)
    path = cells(Path("results/tables/t.cells.yaml"), [
        {"row": "gaussian", "sigma": 0.25, "log": f"../certify/X/Y/{log}"},
    ])  # fmt: skip
    with pytest.raises(ValueError) as err:
        render(path, logs_root="results")
    assert str(err.value) == (
        f"results/certify/X/Y/{log}: holds 8 images but its job evaluated 10 (counts.npz); "
        "rerun that job"
    )
    assert not (path.parent / "out" / "t.md").exists()


def test_a_certification_log_of_other_images_is_refused(tmp_path):
    log = certify_job(tmp_path / "job")
    lines = log.read_text().splitlines()
    lines[-1] = "12" + lines[-1][1:]  # image 9's line now says image 12
    log.write_text("\n".join(lines) + "\n")
    path = cells(
        tmp_path / "t.cells.yaml", [{"row": "gaussian", "sigma": 0.25, "log": "job/certify.tsv"}]
    )
    with pytest.raises(
        ValueError, match=r"job/certify.tsv: holds other images than the 10 its job"
    ):
        render(path)


def test_complete_logs_and_logs_made_elsewhere_render(tmp_path):
    certify_job(tmp_path / "job")
    # a log of the authors' code: no counts.npz beside it, so nothing to check it by
    elsewhere = certify_job(tmp_path / "cohen", images=10, kept=8)
    (tmp_path / "cohen" / "counts.npz").unlink()
    path = cells(tmp_path / "t.cells.yaml", [
        {"row": "gaussian", "sigma": 0.25, "log": "job/certify.tsv"},
        {"row": "macer", "sigma": 0.25, "log": str(elsewhere)},
    ])  # fmt: skip
    frame = render(path).set_index(["row", "group", "column"])["ours"]
    assert frame[("gaussian", 0.25, "r0.00")] == pytest.approx(20.0)  # 2 of 10
    assert frame[("macer", 0.25, "r0.00")] == pytest.approx(25.0)  # 2 of the 8 it holds


def test_a_figure_refuses_a_certification_log_cut_short(tmp_path):
    certify_job(tmp_path / "job", images=10, kept=9)
    path = cells(
        tmp_path / "t.cells.yaml", [{"row": "gaussian", "sigma": 0.25, "log": "job/certify.tsv"}]
    )
    out = tmp_path / "out"
    with pytest.raises(ValueError, match=r"certify.tsv: holds 9 images but its job evaluated 10"):
        render_figure(
            "figure1_mnist", path, out / "f.pdf", out / "f.png", out / "f.md", out / "f.tex"
        )


@pytest.mark.parametrize(
    ("summary", "message"),
    [
        (None, "holds 8 images but its job evaluated 10 (attack.json)"),
        ({"images": 10}, "holds 8 images but its job evaluated 10 (attack.json)"),  # older file
        ({"images": 8, "idx": [0, 1, 2, 3, 4, 5, 6, 17]}, "holds other images than the 8"),
        ({"library": "robustreg"}, "attack.json: names neither the images the attack evaluated"),
    ],
    ids=["idx", "images-only", "other-images", "neither"],
)
def test_an_outcome_log_cut_short_is_refused(tmp_path, summary, message):
    outcomes(tmp_path / "job", images=10, kept=8, summary=summary)
    entry = {"row": "atent", "dataset": "MNIST", "outcomes": {"benign": "job/outcomes.tsv"}}
    path = cells(tmp_path / "t.cells.yaml", [entry], table="table1_atent")
    with pytest.raises(ValueError, match=re.escape(message)):
        render(path)
    (tmp_path / "job" / "attack.json").unlink()  # a log made elsewhere is read as it is
    frame = render(path).set_index(["row", "column"])["ours"]
    assert frame[("atent", "benign")] == pytest.approx(50.0)


def test_robustness_tables_check_outcome_logs_and_bounds(tmp_path):
    log = outcomes(tmp_path / "pgd", images=10, kept=9)
    files = {"clean": [str(log)], "emp2": [str(log)], "emp8": [str(log)]}
    path = cells(
        tmp_path / "b4.cells.yaml",
        [{"row": "dbp", "dataset": "CIFAR-10", "files": files}],
        "tableB4_gradreg",
    )
    with pytest.raises(
        ValueError, match=r"pgd/outcomes.tsv: holds 9 images but its job evaluated 10"
    ):
        render(path)

    path = bounds_cells(tmp_path / "b6.cells.yaml", str(bounds_job(tmp_path / "bounds")))
    render(path)  # as the job wrote them
    tsv = tmp_path / "bounds" / "bounds.tsv"
    tsv.write_text(tsv.read_text().replace("\n99\t", "\n123\t"))  # image 99's row, renamed
    with pytest.raises(ValueError, match=r"bounds.tsv: holds other images than the 100 its job"):
        render(path)


# --- a cells file's paths stay inside the logs root -----------------------------------------------


@pytest.fixture
def secret(tmp_path: Path) -> Path:
    """A file outside the folder of the cells files below."""
    path = tmp_path / "private" / "secret.tsv"
    path.parent.mkdir()
    path.write_text(f"password {SECRET}\n")
    return path


@pytest.mark.parametrize("how", ["dotdot", "absolute", "symlink"])
def test_a_path_leading_out_of_the_logs_root_is_refused(tmp_path, secret, how):
    folder = tmp_path / "tables"
    folder.mkdir()
    text = {"dotdot": "../private/secret.tsv", "absolute": str(secret), "symlink": "link.tsv"}[how]
    (folder / "link.tsv").symlink_to(secret)
    path = cells(folder / "t.cells.yaml", [{"row": "gaussian", "sigma": 0.25, "log": text}])
    with pytest.raises(ValueError) as err:
        render(path)
    message = str(err.value)
    assert message == (
        f"{path}: cells[0]: log: {text!r} leads outside {folder}, the folder logs are read "
        "from (--logs-root names another)"
    )
    # given as the root, the same file is read, and still not quoted
    with pytest.raises(ValueError) as err:
        render(path, logs_root=tmp_path)
    assert ".tsv: line 1: not a certification log header" in str(err.value)
    assert SECRET not in str(err.value)


def test_outcome_and_robustness_files_stay_inside_the_logs_root(tmp_path, secret):
    entry = {"row": "atent", "dataset": "MNIST", "outcomes": {"benign": "../private/secret.tsv"}}
    path = cells(tmp_path / "tables" / "a.cells.yaml", [entry], table="table1_atent")
    with pytest.raises(
        ValueError, match=r"cells\[0\]: outcomes: benign: '../private/secret.tsv' leads outside"
    ):
        render(path)
    entry = {"row": "at2", "dataset": "CIFAR-10", "files": {"hours": str(secret)}}
    path = cells(tmp_path / "tables" / "t1.cells.yaml", [entry], table="table1_gradreg")
    with pytest.raises(ValueError, match=r"cells\[0\]: files: hours: .* leads outside"):
        render(path)


@pytest.mark.parametrize(
    ("name", "text"),
    [
        ("certify.tsv", f"idx label {SECRET}\n"),
        ("certify.tsv", "\t".join(LOG_COLUMNS) + f"\n0\t1\t1\t{SECRET}\t1\t0:00:01\n"),
        ("certify.tsv", b"\xff\xfe" + SECRET.encode()),
        ("outcomes.tsv", b"\xff\xfe" + SECRET.encode()),
        ("bounds.tsv", f"idx\t{SECRET}\n"),
    ],
    ids=["header", "value", "binary", "binary-outcomes", "bounds-header"],
)
def test_errors_name_the_file_and_never_quote_it(tmp_path, name, text):
    log = tmp_path / "job" / name
    if name == "bounds.tsv":
        path = bounds_cells(tmp_path / "t.cells.yaml", str(bounds_job(log.parent)))
    elif name == "outcomes.tsv":
        entry = {"row": "atent", "dataset": "MNIST", "outcomes": {"benign": str(log)}}
        path = cells(tmp_path / "t.cells.yaml", [entry], table="table1_atent")
    else:
        path = cells(
            tmp_path / "t.cells.yaml", [{"row": "gaussian", "sigma": 0.25, "log": str(log)}]
        )
    log.parent.mkdir(exist_ok=True)
    log.write_bytes(text if isinstance(text, bytes) else text.encode())
    with pytest.raises(ValueError) as err:
        render(path)
    message = str(err.value)
    assert f"{log}: " in message and SECRET not in message and "\n" not in message


def test_a_cells_file_yaml_error_does_not_quote_it(tmp_path):
    path = tmp_path / "t.cells.yaml"
    path.write_text(f"table: table2_mnist\ncells: [{SECRET}: [\n")
    with pytest.raises(ValueError) as err:
        render(path)
    assert str(err.value).startswith(f"{path}: not valid YAML (line ")
    assert SECRET not in str(err.value)


def test_index_names_a_report_that_is_not_text(tmp_path):
    report = tmp_path / "r.md"
    report.write_bytes(b"\xff\xfe## " + SECRET.encode())
    with pytest.raises(ValueError) as err:
        render_index("Paper", [report], tmp_path / "index.md")
    assert str(err.value) == f"{report}: cannot read report (not UTF-8 text)"


# --- the commands -------------------------------------------------------------------------------


def test_table_and_figure_commands_take_a_logs_root(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    certify_job(Path("results/certify/X/Y"))
    path = cells(Path("results/tables/t.cells.yaml"), [
        {"row": "gaussian", "sigma": 0.25, "log": "../certify/X/Y/certify.tsv"},
    ])  # fmt: skip
    table = ["table", "--cells", str(path), "--md", "t.md", "--tex", "t.tex"]
    assert main(table) == 2
    err = capsys.readouterr().err
    assert err.startswith("robustreg table: error: results/tables/t.cells.yaml: cells[0]: log: ")
    assert err.count("\n") == 1 and "leads outside" in err
    assert main([*table, "--logs-root", "results"]) == 0
    assert "20.0" in Path("t.md").read_text()
    figure = ["figure", "--spec", "figure1_mnist", "--cells", str(path), "--md", "f.md",
              "--tex", "f.tex", "--pdf", "f.pdf", "--png", "f.png"]  # fmt: skip
    assert main(figure) == 2
    assert main([*figure, "--logs-root", "results"]) == 0


def test_readme_cells_file_of_logs_made_elsewhere_renders_as_written(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for name in ("cohen", "consistency"):
        certify_job(Path("logs") / name, log="noise_0.25.tsv")
        os.remove(Path("logs") / name / "counts.npz")
    Path("my_cells.yaml").write_text(
        "table: table2_mnist\n"
        "cells:\n"
        "  - {row: gaussian, sigma: 0.25, log: logs/cohen/noise_0.25.tsv}\n"
        "  - {row: consistency, sigma: 0.25, log: logs/consistency/noise_0.25.tsv}\n"
    )
    args = ["table", "--cells", "my_cells.yaml", "--md", "table2.md", "--tex", "table2.tex"]
    assert main(args) == 0
