"""Every shipped certification table (the consistency paper's, whose fixture logs
tests/test_tables.py builds) rendered from the same fixture logs, pinned byte for byte: a
change to the spec format or the renderer that moves one character of a report fails here
(issue 23: refactors of the table stage keep every report identical). A change meant to
alter reports rewrites the pinned renders in the same commit, where review sees the
difference::

    python tests/test_renders_pinned.py
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import pytest
from test_tables import CONSISTENCY_TABLES, fixture_cells, write_cells

from robustreg.tables.render import render_table

PINNED = Path(__file__).resolve().parent / "data" / "renders"


def rendered(table: str, folder: Path) -> dict[str, str]:
    """``table``'s Markdown and LaTeX from fixture logs in ``folder``, its path written
    ``<logs>`` so that the text does not depend on where the logs were."""
    seeds = 2 if table == "table3_mnist_seeds" else 1
    logs = folder / "logs"
    cells = write_cells(folder / "cells.yaml", fixture_cells(logs, table, seeds), table=table)
    md, tex = folder / f"{table}.md", folder / f"{table}.tex"
    render_table(cells, md, tex)
    return {path.name: path.read_text().replace(str(logs), "<logs>") for path in (md, tex)}


@pytest.mark.parametrize("table", CONSISTENCY_TABLES)
def test_a_report_renders_as_pinned(tmp_path, table):
    for name, text in rendered(table, tmp_path).items():
        assert text == (PINNED / name).read_text(), (
            f"{name} renders differently from tests/data/renders/{name}; if that is meant, run "
            "python tests/test_renders_pinned.py"
        )


if __name__ == "__main__":
    PINNED.mkdir(parents=True, exist_ok=True)
    for table in CONSISTENCY_TABLES:
        with tempfile.TemporaryDirectory() as folder:
            for name, text in rendered(table, Path(folder)).items():
                (PINNED / name).write_text(text)
    sys.exit(0)
