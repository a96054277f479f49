"""The names a table or figure spec is written in (metrics, highlight rules, layouts, styles),
each with what it means: ``robustreg.tables.spec`` checks specs against them and
``robustreg.tables.spec_docs`` writes them into docs/table-specs.md.

Planning reads these (which files a column's metric reads), so this module imports neither
pandas nor the renderers.
"""

from __future__ import annotations

__all__ = [
    "AGGREGATES",
    "ATTACKS",
    "BOUNDS",
    "BOUND_FILES",
    "CERTIFY",
    "DISTANCE_METRICS",
    "LAYOUTS",
    "LINE_STYLES",
    "METRICS",
    "METRIC_DOCS",
    "MODEL_FILE",
    "NORMS",
    "OUTCOME_LOGS",
    "ROBUSTNESS",
    "RULES",
    "SETTING",
    "SOURCES",
    "STATISTICS",
    "STYLES",
    "file_kind",
]

SETTING = "setting"

# metric name -> required column parameters. Implemented in render.METRIC_FUNCS, except
# SETTING, which reads a training setting from the cells file instead of a log.
METRICS: dict[str, tuple[str, ...]] = {
    "acr": (),
    "certified_accuracy": ("radius",),
    "certified_error": ("radius",),
    SETTING: ("param",),
    "robust_accuracy": (),
    "worst_case_accuracy": ("of",),
    # robustness tables (Finlay & Oberman): see robustreg.tables.robustness
    "clean_error": (),
    "empirical_error": ("norm", "eps"),
    "empirical_distance": ("norm",),
    "bound_error": ("norm", "bound", "eps"),
    "bound_distance": ("norm", "bound"),
    "gradient_norm": ("norm", "statistic"),
    "modulus": ("norm", "eps"),
    "training_hours": (),
}
METRIC_DOCS: dict[str, str] = {
    "acr": "average certified radius of the certification log (0 for a wrong or abstained image)",
    "certified_accuracy": "fraction of test images certified correct at ``radius``",
    "certified_error": "1 - certified_accuracy at ``radius``",
    SETTING: (
        "a training setting, not a result: ``param`` names it in the cells file's "
        "``settings``; paper values are numbers or strings; no percent, better or aggregate, "
        "and highlight rules do not apply"
    ),
    "robust_accuracy": (
        "fraction of attacked test images still classified correctly, from the attack "
        "outcome file the cells file gives for the column (a benign-accuracy column is one "
        "whose attack is 'none')"
    ),
    "worst_case_accuracy": (
        "fraction of test images robust under every attack of the robust_accuracy columns "
        "``of`` names, per image; a row's columns not evaluated or without a file are left "
        "out, and a note names them; it has no outcome file of its own"
    ),
    "clean_error": "misclassified test images (top-k of the attacks), from the outcome logs",
    "empirical_error": (
        "images whose smallest adversarial distance in ``norm`` over the outcome logs is "
        "<= ``eps`` (misclassified images at distance 0)"
    ),
    "empirical_distance": "the mean of that per-image distance",
    "bound_error": (
        "images whose distance certified by ``bound`` (l: L-bound, omega: omega-bound of "
        "Finlay & Oberman's Proposition 2.2) is < ``eps``, from a bounds job"
    ),
    "bound_distance": "the mean certified distance",
    "gradient_norm": "mean or max over images of the loss gradient's dual norm",
    "modulus": "the GEV estimate of omega(``eps``)",
    "training_hours": "wall time of the model's training job, from model.pt",
}

# where a table's numbers come from, by the metric of its columns (one source per table)
ATTACKS = "attacks"
ROBUSTNESS = "robustness"
CERTIFY = "certify"  # every other metric: certification logs
_ROBUSTNESS_METRICS = (
    "clean_error",
    "empirical_error",
    "empirical_distance",
    "bound_error",
    "bound_distance",
    "gradient_norm",
    "modulus",
    "training_hours",
)
SOURCES = {
    SETTING: "settings",
    "robust_accuracy": ATTACKS,
    "worst_case_accuracy": ATTACKS,
    **dict.fromkeys(_ROBUSTNESS_METRICS, ROBUSTNESS),
}
# robustness columns: the values a column parameter may take
NORMS = ("l2", "linf")
BOUNDS = ("l", "omega")
STATISTICS = ("mean", "max")

# rule name -> footnote text ({group} is the group label, {along} "column" or, in the
# columns_as_rows layout, "line"). Implemented in render.RULE_FUNCS.
RULES: dict[str, str] = {
    "improves_baseline": (
        "our value strictly exceeds our value for the row's baseline (same {group}, same {along})"
    ),
    "best_per_group": "best of our values in the {along} per {group} (ties all marked)",
    "best_acr_per_group": "best of our ACRs per {group} (ties all marked)",
    "second_best_per_group": (
        "second best of our values in the {along} per {group} (the next value below the best; "
        "ties all marked)"
    ),
}

STYLES = ("bold", "underline")
# figure line styles, named as matplotlib names them
LINE_STYLES = ("solid", "dashed", "dotted", "dashdot")
LAYOUTS: dict[str, str] = {
    "blocks": ("group column, label column(s), metric columns; one block of rows per group value"),
    "rows_first": (
        "label column(s), group column, metric columns; one block per row, a line per group value"
    ),
    "groups_as_columns": (
        'a line per row, label column(s), then one column per group value, headed "<group '
        'label> = <value>"; needs exactly one column and a label that is the same in all groups'
    ),
    "columns_as_rows": (
        "the paper's transposed form, a line per column and a column per row; needs one group "
        "value, show: false and one label column, whose header is the corner "
        '("Attack ↓ Defense →")'
    ),
}
AGGREGATES = ("mean_std",)

# the robustness metrics whose outcome logs give a row's per-image distance in a norm: the
# logs a robustness figure's line reads
DISTANCE_METRICS = ("empirical_error", "empirical_distance")

# What each robustness metric reads (robustreg.tables.robustness): attack outcome logs, a bounds
# job's files, or the row's model (its training record). Declared here, not beside the readers,
# so that the planner learns a column's inputs without importing pandas.
OUTCOME_LOGS, BOUND_FILES, MODEL_FILE = "outcomes", "bounds", "model"
_FILE_KIND = {
    "clean_error": OUTCOME_LOGS,
    "empirical_error": OUTCOME_LOGS,
    "empirical_distance": OUTCOME_LOGS,
    "bound_error": BOUND_FILES,
    "bound_distance": BOUND_FILES,
    "gradient_norm": BOUND_FILES,
    "modulus": BOUND_FILES,
    "training_hours": MODEL_FILE,
}


def file_kind(metric: str) -> str:
    """What a robustness metric reads: outcome logs, a bounds job's summary or a model."""
    return _FILE_KIND[metric]
