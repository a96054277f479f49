"""The vocabulary declared settings are written in, checked without importing torch: attack
kinds (``robustreg.attacks.registry``) and bounds jobs (``robustreg.bound_settings``) declare
theirs with it, and method hyperparameters (``robustreg.objectives.settings``) use its checks.
Planning resolves every job's settings before any job starts (issue 19: planning imports no
torch).

A kind's settings are the fields of a frozen dataclass, each declared with ``setting``: its
default, if any, and the ``Need`` its JSON value must meet. ``read_settings`` reads a mapping
such as ``{"norm": "l2", "eps": 2}`` against such a declaration: defaults filled in, values
cast (numbers to floats), and a one-line ValueError naming the unknown, missing or bad key.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from typing import Any

from robustreg.attacks.threat import NORMS

__all__ = [
    "BOOL",
    "INT",
    "INT_0",
    "INT_1",
    "INT_2",
    "NORM",
    "NUMBER",
    "NUMBER_0",
    "NUMBER_POSITIVE",
    "OPTIONAL_INT_1",
    "OPTIONAL_POSITIVE",
    "Need",
    "check_settings",
    "is_int",
    "is_number",
    "one_of",
    "only",
    "read_settings",
    "setting",
]


@dataclass(frozen=True)
class Need:
    """What a setting accepts: ``test`` on the JSON value, ``says`` for the error, ``cast`` to
    the stored type."""

    test: Callable[[Any], bool]
    says: str
    cast: Callable[[Any], Any] = lambda value: value


def is_int(value: object) -> bool:
    """An integer, and not a bool (JSON's true is not a count)."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: object) -> bool:
    """A finite int or float, and not a bool."""
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def one_of(*choices: str) -> Need:
    return Need(lambda v: isinstance(v, str) and v in choices, f"one of {', '.join(choices)}")


def only(norm: str) -> Need:
    """The norm of an attack that has one."""
    return Need(lambda v: v == norm, f"{norm!r} (the only norm of this attack)")


INT = Need(is_int, "an integer")
INT_0 = Need(lambda v: is_int(v) and v >= 0, "an integer >= 0")
INT_1 = Need(lambda v: is_int(v) and v >= 1, "an integer >= 1")
INT_2 = Need(lambda v: is_int(v) and v >= 2, "an integer >= 2")
OPTIONAL_INT_1 = Need(lambda v: v is None or (is_int(v) and v >= 1), "null or an integer >= 1")
NUMBER = Need(is_number, "a number", float)
NUMBER_0 = Need(lambda v: is_number(v) and v >= 0, "a number >= 0", float)
NUMBER_POSITIVE = Need(lambda v: is_number(v) and v > 0, "a number > 0", float)
OPTIONAL_POSITIVE = Need(
    lambda v: v is None or (is_number(v) and v > 0),
    "null or a number > 0",
    lambda v: None if v is None else float(v),
)
BOOL = Need(lambda v: isinstance(v, bool), "true or false")
NORM = one_of(*NORMS)


def setting(default: Any = dataclasses.MISSING, *, need: Need) -> Any:
    """A dataclass field that is a setting: ``need`` checks its value, ``default`` (if any)
    stands in when the mapping leaves it out."""
    return field(default=default, metadata={"need": need})


def read_settings(
    declared: type, spec: Mapping, where: str, *, of: str = "", ignore: Collection[str] = ()
) -> dict[str, Any]:
    """The value of each setting of the dataclass ``declared`` from ``spec``, in field order:
    checked and cast by its ``Need``, its default where ``spec`` leaves it out.

    ValueErrors are one line: "<where>: unknown key 'k'<of> (known: ...)", "<where>: missing
    key 'k'<of>" or "<where>.k: need <says>, got <value>". Keys in ``ignore`` are not settings
    but are allowed (an attack's ``kind``).
    """
    fields = {f.name: f for f in dataclasses.fields(declared)}
    unknown = sorted(set(spec) - set(fields) - set(ignore))
    if unknown:
        known = f"known: {', '.join(fields)}" if fields else "it takes none"
        raise ValueError(f"{where}: unknown key {unknown[0]!r}{of} ({known})")
    values = {}
    for key, f in fields.items():
        need: Need = f.metadata["need"]
        if key in spec:
            value = spec[key]
            if not need.test(value):
                raise ValueError(f"{where}.{key}: need {need.says}, got {value!r}")
            values[key] = need.cast(value)
        elif f.default is not dataclasses.MISSING:
            values[key] = f.default
        else:
            raise ValueError(f"{where}: missing key {key!r}{of}")
    return values


def check_settings(instance: Any) -> None:
    """Check each field of the dataclass ``instance`` that ``setting`` declared against its
    ``Need``, in field order: a one-line ValueError "<field>: need <says>, got <value>" for
    the first that fails (method hyperparameters, which are built from resolved params)."""
    for f in dataclasses.fields(instance):
        need = f.metadata.get("need")
        if need is not None and not need.test(value := getattr(instance, f.name)):
            raise ValueError(f"{f.name}: need {need.says}, got {value!r}")
