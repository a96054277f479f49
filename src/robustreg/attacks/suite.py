"""The attack stage, in one import for the attack job (``python -m robustreg attack``): build an
attack from its settings, run it on a model, write its outcome log.

Its parts, each in its own module:

* ``robustreg.settings``: the vocabulary attack and bounds settings are declared in;
* ``robustreg.attacks.registry``: every attack kind's name and declared settings
  (``REGISTRY``, ``resolve_attack``, ``build_attack``), torch-free, for planning;
* ``robustreg.attacks.ours`` and ``robustreg.attacks.adapters``: the code that runs each kind,
  ours and the Foolbox, ART and AutoAttack adapters, one module per library, imported by
  ``build_attack`` for the kind it builds;
* ``robustreg.attacks.runner``: ``run_attack``, which evaluates a model against an attack;
* ``robustreg.attacks.outcomes``: the outcome log and its resumable progress log, torch-free,
  for tables.

This module imports torch (through the runner); planning and tables import the torch-free
parts from their own modules.
"""

from __future__ import annotations

from robustreg.attacks.outcomes import OUTCOME_COLUMNS, OutcomeLog, read_outcomes, write_outcomes
from robustreg.attacks.registry import REGISTRY, Attack, build_attack, register, resolve_attack
from robustreg.attacks.runner import attack_mode, run_attack
from robustreg.attacks.threat import threat_tolerance

__all__ = [
    "OUTCOME_COLUMNS",
    "REGISTRY",
    "Attack",
    "OutcomeLog",
    "attack_mode",
    "build_attack",
    "read_outcomes",
    "register",
    "resolve_attack",
    "run_attack",
    "threat_tolerance",
    "write_outcomes",
]
