"""Paper tables and figures: a YAML spec each (``specs/``); one table renderer (cells
file -> pandas frame -> jinja2 templates in ``templates/``) writing Markdown, LaTeX and HTML,
and one figure renderer drawing a table's logs against the paper's values."""

from robustreg.tables.figure import render_figure
from robustreg.tables.render import render_table
from robustreg.tables.spec import load_figure_spec, load_spec

__all__ = ["load_figure_spec", "load_spec", "render_figure", "render_table"]
