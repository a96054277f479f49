"""Training methods, one file each, behind the interface in ``base``."""

from robustreg.objectives import (  # noqa: F401  (each module registers its method)
    adre,
    consistency,
    gaussian,
    macer,
    smoothadv,
    smoothadv_consistency,
    stability,
)
from robustreg.objectives.base import (
    REGISTRY,
    Objective,
    StepContext,
    build_objective,
    describe,
    parameter_names,
    resolve_params,
)

__all__ = [
    "REGISTRY",
    "Objective",
    "StepContext",
    "build_objective",
    "describe",
    "parameter_names",
    "resolve_params",
]
