"""The config schema is generated from the registries (issue 23): the shipped file is what
``python -m robustreg schema`` writes, so a method, attack or architecture added to its
registry is in the schema, and one removed is refused by it."""

from __future__ import annotations

from pathlib import Path

import yaml

from robustreg.attacks.registry import REGISTRY as ATTACKS
from robustreg.cli import main
from robustreg.config_schema import render
from robustreg.objectives.settings import REGISTRY as METHODS
from robustreg.plan import CERTIFIERS

SCHEMA = Path(__file__).resolve().parents[1] / "workflow" / "schemas" / "config.schema.yaml"


def test_the_shipped_schema_is_the_generated_one():
    assert SCHEMA.read_text() == render(), (
        "workflow/schemas/config.schema.yaml is stale: run "
        "python -m robustreg schema --out workflow/schemas/config.schema.yaml"
    )


def test_its_allowed_names_are_the_registries():
    schema = yaml.safe_load(render())
    tables = schema["properties"]["tables"]["additionalProperties"]["properties"]
    row = tables["rows"]["additionalProperties"]["properties"]
    attacks = schema["properties"]["attacks"]["additionalProperties"]["properties"]
    assert schema["$defs"]["method"]["enum"] == list(METHODS)
    assert attacks["kind"]["enum"] == list(ATTACKS)
    assert row["certifier"]["enum"] == list(CERTIFIERS)


def test_the_command_writes_the_file(tmp_path, capsys):
    assert main(["schema", "--out", str(tmp_path / "s.yaml")]) == 0
    assert (tmp_path / "s.yaml").read_text() == render()
    assert main(["schema"]) == 0
    assert capsys.readouterr().out == render()
