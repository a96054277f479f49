"""The config schema is generated from the registries (issue 23): the shipped file is what
``python -m robustreg schema`` writes, so a method, attack or architecture added to its
registry is in the schema, and one removed is refused by it."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest
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


def test_each_methods_params_are_the_names_its_declaration_takes():
    from robustreg.objectives.settings import parameter_names

    definitions = yaml.safe_load(render())["$defs"]
    for method in METHODS:
        params = definitions[f"params_{method}"]
        assert params["propertyNames"]["enum"] == parameter_names(method)
        assert list(params["properties"]) == parameter_names(method)


def test_a_misspelt_hyperparameter_is_refused_naming_the_methods_own(tmp_path):
    from test_plan import merged

    from robustreg.plan import ConfigError, validate_config

    schema = tmp_path / "schema.yaml"
    schema.write_text(render())
    row = {"by_sigma": [{"sigma": 0.5, "params": {"lbdd": 5.0}}]}
    with pytest.raises(
        ConfigError,
        match=re.escape(
            "tables.table2_mnist.rows.consistency.by_sigma[0].params: 'lbdd' is not one of "
            "['lbd', 'm', 'eta', 'loss']"
        ),
    ):
        validate_config(
            merged({"tables": {"table2_mnist": {"rows": {"consistency": row}}}}), schema
        )
    # the same name is a hyperparameter of another method: refused for this one all the same
    macer = {"params": {"eta": 0.5}}
    with pytest.raises(ConfigError, match=r"rows\.macer\.params: 'eta' is not one of \['m'"):
        validate_config(merged({"tables": {"table2_mnist": {"rows": {"macer": macer}}}}), schema)


def test_schedules_are_the_declaration_check_schedule_reads():
    from robustreg.schedule import ScheduleSettings, check_schedule
    from robustreg.settings import json_schema

    schedules = yaml.safe_load(render())["properties"]["schedules"]["additionalProperties"]
    assert schedules == json_schema(ScheduleSettings)
    config = yaml.safe_load((Path(__file__).resolve().parents[1] / "config.yaml").read_text())
    schedule = config["schedules"]["mnist"]
    check_schedule(schedule)
    with pytest.raises(ValueError, match=r"^schedule: unknown key 'lr_milestone' \(known: epochs"):
        check_schedule(schedule | {"lr_milestone": [3]})
    with pytest.raises(ValueError, match=r"^schedule.lr_gamma: need a number > 0, got 0"):
        check_schedule(schedule | {"lr_gamma": 0})
    with pytest.raises(ValueError, match=r"^schedule: missing key 'epochs'"):
        check_schedule({k: v for k, v in schedule.items() if k != "epochs"})


def test_attack_and_bounds_keys_are_their_declarations(tmp_path):
    from test_plan import merged

    from robustreg.bound_settings import BoundSettings
    from robustreg.plan import ConfigError, validate_config

    schema_text = render()
    schema = yaml.safe_load(schema_text)
    by_kind = {
        case["if"]["properties"]["kind"]["const"]: case["then"]["propertyNames"]["enum"]
        for case in schema["properties"]["attacks"]["additionalProperties"]["allOf"]
    }
    assert list(by_kind) == list(ATTACKS)
    for kind, names in by_kind.items():
        assert names == ["kind", *(f.name for f in dataclasses.fields(ATTACKS[kind]))]
    bounds = schema["properties"]["bounds"]["additionalProperties"]["propertyNames"]["enum"]
    assert bounds == [f.name for f in dataclasses.fields(BoundSettings)]
    (tmp_path / "schema.yaml").write_text(schema_text)
    with pytest.raises(ConfigError, match=r"^attacks\.pgd20_linf_mnist: 'stepz' is not one of"):
        validate_config(
            merged({"attacks": {"pgd20_linf_mnist": {"stepz": 3}}}), tmp_path / "schema.yaml"
        )
