"""The vocabulary declared settings are written in, checked without importing torch: attack
kinds (``robustreg.attacks.registry``) and bounds jobs (``robustreg.bound_settings``) declare
theirs with it, and method hyperparameters (``robustreg.objectives.settings``) use its checks.
Planning resolves every job's settings before any job starts (issue 19: planning imports no
torch).

A kind's settings are the fields of a frozen dataclass, each declared with ``setting``: its
default, if any, and the ``Need`` its JSON value must meet. ``read_settings`` reads a mapping
such as ``{"norm": "l2", "eps": 2}`` against such a declaration: defaults filled in, values
cast (numbers to floats), and a one-line ValueError naming the unknown, missing or bad key.
``json_schema`` writes the same declaration as the JSON schema of the config section it is
(``robustreg.config_schema``: schedules), so the schema and the check cannot drift apart.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from typing import Any

from robustreg.attacks.threat import NORMS

__all__ = [
    "BATCH_SIZE",
    "BOOL",
    "COUNT",
    "INT",
    "INT_0",
    "INT_1",
    "INT_2",
    "MAX_BATCH_SIZE",
    "MAX_CLASSES",
    "MAX_COUNT",
    "MAX_SAMPLES",
    "MAX_SEED",
    "MAX_SIDE",
    "MAX_SYNTHETIC_IMAGES",
    "NATURAL",
    "NORM",
    "NUMBER",
    "NUMBER_0",
    "NUMBER_POSITIVE",
    "OPTIONAL_INT_1",
    "OPTIONAL_POSITIVE",
    "SEED",
    "Need",
    "check_settings",
    "is_int",
    "is_number",
    "json_schema",
    "one_of",
    "only",
    "read_settings",
    "setting",
]


@dataclass(frozen=True)
class Need:
    """What a setting accepts: ``test`` on the JSON value, ``says`` for the error (and the
    generated documentation), ``cast`` to the stored type; ``explain``, where given, words the
    error itself ("unknown layout 'grid' (known: ...)")."""

    test: Callable[[Any], bool]
    says: str
    cast: Callable[[Any], Any] = lambda value: value
    explain: Callable[[Any], str] | None = None
    # what it accepts as a JSON schema, for a declaration that is a config section
    schema: dict[str, Any] | None = None

    def problem(self, value: Any, verb: str = "need") -> str:
        """What is wrong with ``value``, which failed ``test``: "<verb> <says>, got <value>"."""
        if self.explain is not None:
            return self.explain(value)
        return f"{verb} {self.says}, got {value!r}"


def is_int(value: object) -> bool:
    """An integer, and not a bool (JSON's true is not a count)."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: object) -> bool:
    """A finite int or float, and not a bool."""
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def one_of(*choices: str, explain: Callable[[Any], str] | None = None) -> Need:
    return Need(
        lambda v: isinstance(v, str) and v in choices,
        f"one of {', '.join(choices)}",
        explain=explain,
        schema={"enum": list(choices)},
    )


def only(norm: str) -> Need:
    """The norm of an attack that has one."""
    return Need(lambda v: v == norm, f"{norm!r} (the only norm of this attack)")


# The largest values of the config's integer kinds (the config schema's $defs seed, natural and
# count, batch_size, samples, side, synthetic_images; synthetic ImageNet's classes), which the
# command line takes for the same settings too.
MAX_SEED = 2**32 - 1
MAX_COUNT = 2**31 - 1
MAX_BATCH_SIZE = 2**20
MAX_SAMPLES = 10**8
MAX_SIDE = 4096
MAX_SYNTHETIC_IMAGES = 100_000
MAX_CLASSES = 1000

_INTEGER = {"type": "integer"}
_NUMBER = {"type": "number"}
INT = Need(is_int, "an integer", schema=_INTEGER)
INT_0 = Need(lambda v: is_int(v) and v >= 0, "an integer >= 0", schema=_INTEGER | {"minimum": 0})
INT_1 = Need(lambda v: is_int(v) and v >= 1, "an integer >= 1", schema=_INTEGER | {"minimum": 1})
INT_2 = Need(lambda v: is_int(v) and v >= 2, "an integer >= 2", schema=_INTEGER | {"minimum": 2})
OPTIONAL_INT_1 = Need(lambda v: v is None or (is_int(v) and v >= 1), "null or an integer >= 1")
NUMBER = Need(is_number, "a number", float, schema=_NUMBER)
NUMBER_0 = Need(
    lambda v: is_number(v) and v >= 0, "a number >= 0", float, schema=_NUMBER | {"minimum": 0}
)
NUMBER_POSITIVE = Need(
    lambda v: is_number(v) and v > 0,
    "a number > 0",
    float,
    schema=_NUMBER | {"exclusiveMinimum": 0},
)
OPTIONAL_POSITIVE = Need(
    lambda v: v is None or (is_number(v) and v > 0),
    "null or a number > 0",
    lambda v: None if v is None else float(v),
)
BOOL = Need(lambda v: isinstance(v, bool), "true or false", schema={"type": "boolean"})
# the config's integer kinds, with their ceilings: the schema names them by their $defs
COUNT = Need(
    lambda v: is_int(v) and 1 <= v <= MAX_COUNT,
    "an integer >= 1",
    schema={"$ref": "#/$defs/count"},
)
NATURAL = Need(
    lambda v: is_int(v) and 0 <= v <= MAX_COUNT,
    "an integer >= 0",
    schema={"$ref": "#/$defs/natural"},
)
SEED = Need(
    lambda v: is_int(v) and 0 <= v <= MAX_SEED,
    f"an integer from 0 to {MAX_SEED}",
    schema={"$ref": "#/$defs/seed"},
)
BATCH_SIZE = Need(
    lambda v: is_int(v) and 1 <= v <= MAX_BATCH_SIZE,
    f"an integer from 1 to {MAX_BATCH_SIZE}",
    schema={"$ref": "#/$defs/batch_size"},
)
NORM = one_of(*NORMS)


def setting(default: Any = dataclasses.MISSING, *, need: Need, doc: str = "") -> Any:
    """A dataclass field that is a setting: ``need`` checks its value, ``default`` (if any)
    stands in when the mapping leaves it out, ``doc`` says what it means wherever the
    declaration is written out (docs/table-specs.md, the config schema's descriptions)."""
    return field(default=default, metadata={"need": need, "doc": doc})


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
                raise ValueError(f"{where}.{key}: {need.problem(value)}")
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
            raise ValueError(f"{f.name}: {need.problem(value)}")


def json_schema(declared: type) -> dict[str, Any]:
    """The JSON schema of a mapping that ``read_settings`` reads against the dataclass
    ``declared``: a closed object, its fields without a default required, each property its
    ``Need``'s schema with the field's doc as its description and its default, if any."""
    fields = [f for f in dataclasses.fields(declared) if "need" in f.metadata]
    out: dict[str, Any] = {"type": "object", "additionalProperties": False}
    required = [f.name for f in fields if f.default is dataclasses.MISSING]
    if required:
        out["required"] = required
    properties = {}
    for f in fields:
        need: Need = f.metadata["need"]
        if need.schema is None:
            raise ValueError(f"{declared.__name__}.{f.name}: its need has no JSON schema")
        properties[f.name] = dict(need.schema)
        if f.metadata["doc"]:
            properties[f.name]["description"] = f.metadata["doc"]
        if f.default not in (dataclasses.MISSING, None):
            properties[f.name]["default"] = f.default
    out["properties"] = properties
    return out
