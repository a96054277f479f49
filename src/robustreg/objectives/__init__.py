"""Training methods: each one's hyperparameters declared in ``settings``, its loss in a module
of its own behind the interface in ``base``.

Planning needs the declarations only, which import no torch; the training loop's names
(``Objective``, ``StepContext``, ``build_objective``) come from ``base`` on first use.
"""

from robustreg.objectives.settings import (
    REGISTRY,
    describe,
    for_experiment,
    keeps_state,
    parameter_names,
    resolve_params,
    uses_sigma,
)

_TRAINING = ("Objective", "StepContext", "build_objective")


def __getattr__(name: str) -> object:
    # PEP 562: importing ``base`` imports torch, which every ``snakemake`` call that plans
    # would pay for (issue 19), so it waits until the training loop asks for these names.
    if name in _TRAINING:
        from robustreg.objectives import base

        return getattr(base, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "REGISTRY",
    "Objective",
    "StepContext",
    "build_objective",
    "describe",
    "for_experiment",
    "keeps_state",
    "parameter_names",
    "resolve_params",
    "uses_sigma",
]
