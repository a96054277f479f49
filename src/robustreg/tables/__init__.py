"""Paper tables and figures: a YAML spec each (``specs/``); one table renderer
(``render``: cells file -> pandas frame -> jinja2 templates in ``templates/``) writing
Markdown, LaTeX and HTML, and one figure renderer (``figure``) drawing a table's logs against
the paper's values.

Only the specs are imported here: planning reads them, and it needs none of the renderers'
pandas, jinja2 and scipy.
"""

from robustreg.tables.spec import load_figure_spec, load_spec

__all__ = ["load_figure_spec", "load_spec"]
