"""Paper tables: a YAML spec per table (``specs/``), one renderer (cells file -> pandas
frame -> jinja2 templates in ``templates/``) writing Markdown and LaTeX."""

from robustreg.tables.render import render_table
from robustreg.tables.spec import load_spec

__all__ = ["load_spec", "render_table"]
