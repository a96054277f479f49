"""Training methods, one file each, behind the interface in ``base``."""

from robustreg.objectives import (  # noqa: F401  (each module registers its method)
    adre,
    atent,
    consistency,
    free_at,
    gaussian,
    gradient_norm,
    macer,
    mart,
    mma,
    pgd_at,
    smoothadv,
    smoothadv_consistency,
    stability,
    standard,
    trades,
)
from robustreg.objectives.base import (
    REGISTRY,
    Objective,
    StepContext,
    build_objective,
    describe,
    keeps_state,
    parameter_names,
    resolve_params,
    uses_sigma,
)

__all__ = [
    "REGISTRY",
    "Objective",
    "StepContext",
    "build_objective",
    "describe",
    "keeps_state",
    "parameter_names",
    "resolve_params",
    "uses_sigma",
]
