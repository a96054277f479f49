"""Render every report whose logs a results folder holds, with this checkout's code, into a
folder of its own: two checkouts' renders of the same logs can then be compared byte for byte
(issue 23: a refactor of the table stage keeps every report identical).

    python scripts/render_reports.py RESULTS OUT
    (cd ../before && python scripts/render_reports.py ../after/results /tmp/before)
    diff -r /tmp/before /tmp/after

RESULTS is a workflow's ``results/`` (its ``tables/*.cells.yaml`` name the logs, relative to
it). Each table is rendered as the ``table`` rule renders it (Markdown, LaTeX, HTML); each
figure spec whose table has a cells file, as the ``figure`` rule does (its drawings under
``figures/``), so OUT holds what ``reports/`` would. The renders run this checkout's package
(its ``src/`` first on the path) with the python running this script.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

import yaml

SOURCE = Path(__file__).resolve().parents[1] / "src"
SPECS = SOURCE / "robustreg" / "tables" / "specs"


def figures_by_table() -> dict[str, list[str]]:
    """The figure specs, by the table whose cells file each is drawn from."""
    figures: dict[str, list[str]] = {}
    for path in sorted(SPECS.glob("*.yaml")):
        spec = yaml.safe_load(path.read_text())
        if spec.get("kind") == "figure":
            figures.setdefault(spec["table"], []).append(spec["name"])
    return figures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", type=Path)
    parser.add_argument("out", type=Path)
    args = parser.parse_args()
    cells = sorted((args.results / "tables").glob("*.cells.yaml"))
    if not cells:
        parser.error(f"{args.results / 'tables'}: no cells files")
    args.out.mkdir(parents=True, exist_ok=True)
    figures = figures_by_table()
    robustreg = [sys.executable, "-m", "robustreg"]
    # this checkout's package, whichever one the environment has installed
    env = os.environ | {
        "PYTHONPATH": os.pathsep.join(filter(None, [str(SOURCE), os.environ.get("PYTHONPATH")]))
    }
    for path in cells:
        table = path.name.removesuffix(".cells.yaml")
        out = args.out / table
        common = ["--cells", str(path), "--logs-root", str(args.results)]
        outputs = ["--md", f"{out}.md", "--tex", f"{out}.tex", "--html", f"{out}.html"]
        subprocess.run([*robustreg, "table", *common, *outputs], check=True, env=env)
        for figure in figures.get(table, []):
            out, drawn = args.out / figure, args.out / "figures" / figure  # as in reports/
            outputs = ["--md", f"{out}.md", "--tex", f"{out}.tex"]
            outputs += ["--pdf", f"{drawn}.pdf", "--png", f"{drawn}.png"]
            subprocess.run([*robustreg, "figure", "--spec", figure, *common, *outputs], check=True)
    print(f"rendered {len(cells)} cells files into {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
