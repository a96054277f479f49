"""A paper's index page: one Markdown file linking every table and figure rendered for it."""

from __future__ import annotations

import os
from pathlib import Path

from robustreg.io import write_text_atomic


def _heading_and_banner(report: Path) -> tuple[str, str | None]:
    """The report's ``## `` title and its scale banner (the bold quote above it), if any."""
    title, banner = report.stem, None
    for line in report.read_text(encoding="utf-8").splitlines():
        if line.startswith("> **") and banner is None:
            banner = line[len("> **") :].removesuffix("**")
        elif line.startswith("## "):
            title = line[3:].strip()
            break
    return title, banner


def render_index(title: str, reports: list[str | os.PathLike], out: str | os.PathLike) -> None:
    """Write ``out``: ``title`` and, per report in order, a link with the report's own title
    and scale banner, so a reader sees at a glance which tables are at reduced scale."""
    out = Path(out)
    lines = [f"# {title}", ""]
    for report in map(Path, reports):
        try:
            heading, banner = _heading_and_banner(report)
        except OSError as err:
            raise ValueError(f"{report}: cannot read report ({err.strerror})") from None
        except UnicodeDecodeError:
            raise ValueError(f"{report}: cannot read report (not UTF-8 text)") from None
        link = os.path.relpath(report, out.parent)
        lines.append(f"- [{heading}]({link})" + (f" — {banner}" if banner else ""))
    lines += ["", "Each report shows our value beside the published one in every cell.", ""]
    write_text_atomic(out, "\n".join(lines))
