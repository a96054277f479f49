"""The planner: experiment identity, sharing, and config errors that name the key."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from robustreg.plan import ConfigError, make_plan, validate_config

REPO = Path(__file__).resolve().parents[1]


def merged(*overlays: dict) -> dict:
    """Snakemake's --configfile semantics: later files update earlier ones, dicts recursively."""
    config = yaml.safe_load((REPO / "config.yaml").read_text())

    def update(base, new):
        for key, value in new.items():
            if isinstance(value, dict) and isinstance(base.get(key), dict):
                update(base[key], value)
            else:
                base[key] = value

    for overlay in overlays:
        update(config, copy.deepcopy(overlay))
    return config


def test_table2_plans_18_experiments_and_certifications():
    plan = make_plan(merged())
    assert len(plan.experiments) == 18
    assert len(plan.certifications) == 18
    assert len(plan.tables["table2_mnist"].cells) == 18
    assert plan.tables["table2_mnist"].banner is None


def test_paper_hyperparameters_resolved_per_sigma():
    plan = make_plan(merged())
    by_key = {(e["method"], e["sigma"]): e for e in plan.experiments.values()}
    assert by_key["consistency", 0.25]["params"]["lbd"] == 10.0
    assert by_key["consistency", 0.5]["params"]["lbd"] == 5.0
    assert by_key["macer", 1.0]["params"]["lbd"] == 6.0
    assert by_key["macer", 0.25]["params"] == {
        "m": 16,
        "lbd": 16.0,
        "gamma": 8.0,
        "beta": 16.0,
        "deferred_epochs": 30,
    }
    schedule = by_key["gaussian", 0.5]["schedule"]
    assert (schedule["lr"], schedule["epochs"], schedule["lr_milestones"]) == (0.01, 90, [30, 60])


def test_one_changed_hyperparameter_changes_one_experiment_only():
    before = make_plan(merged())
    overlay = {
        "tables": {
            "table2_mnist": {
                "rows": {
                    "consistency": {
                        "by_sigma": [
                            {"sigma": 0.5, "params": {"lbd": 5.0}},
                            {"sigma": 1.0, "params": {"lbd": 7.0}},
                        ]
                    }
                }
            }
        }
    }
    after = make_plan(merged(overlay))
    assert len(set(after.experiments) - set(before.experiments)) == 1
    assert len(set(before.experiments) - set(after.experiments)) == 1
    # Changing it back finds the original folders.
    assert set(make_plan(merged()).experiments) == set(before.experiments)


def test_defaults_spelled_out_or_not_give_the_same_experiment():
    spelled = {
        "tables": {"table2_mnist": {"rows": {"gaussian": {"method": "gaussian", "params": {}}}}}
    }
    assert set(make_plan(merged(spelled)).experiments) == set(make_plan(merged()).experiments)


def test_reduced_scale_gets_a_banner():
    quick = yaml.safe_load((REPO / "config" / "quick.yaml").read_text())
    banner = make_plan(merged(quick)).tables["table2_mnist"].banner
    assert banner.startswith("Quick scale, not comparable with the paper's numbers")
    assert "4 epochs on 500 training images" in banner
    assert "certified 100 test images with n0 = 32, n = 500" in banner


@pytest.mark.parametrize(
    ("overlay", "message"),
    [
        (
            {"tables": {"table2_mnist": {"rows": {"macer": {"params": {"lbda": 3}}}}}},
            "tables.table2_mnist.rows.macer.params: unknown parameter 'lbda'",
        ),
        (
            {"tables": {"table2_mnist": {"rows": {"typo_row": {"method": "gaussian"}}}}},
            "tables.table2_mnist.rows.typo_row: not a row of table table2_mnist",
        ),
        (
            {"tables": {"table2_mnist": {"sigmas": [0.3]}}},
            "tables.table2_mnist.sigmas: 0.3 is not a group",
        ),
        (
            {"tables": {"table2_mnist": {"schedule": "cifar"}}},
            "tables.table2_mnist.schedule: 'cifar' is not defined under schedules",
        ),
    ],
)
def test_config_errors_name_the_key(overlay, message):
    with pytest.raises(ConfigError, match=message.replace(".", r"\.").replace("(", r"\(")):
        make_plan(merged(overlay))


@pytest.mark.parametrize(
    ("overlay", "message"),
    [
        (
            {"tables": {"table2_mnist": {"sigmas": [0.25, -1]}}},
            "tables.table2_mnist.sigmas[1]: -1 is less than or equal to the minimum of 0",
        ),
        (
            {"certify": {"mnist": {"alpah": 0.1}}},
            "certify.mnist: Additional properties are not allowed ('alpah' was unexpected)",
        ),
        (
            {"tables": {"table2_mnist": {"rows": {"gaussian": {"method": "gausian"}}}}},
            "tables.table2_mnist.rows.gaussian.method: 'gausian' is not one of",
        ),
    ],
)
def test_schema_errors_are_one_line_naming_the_key(overlay, message):
    with pytest.raises(ConfigError) as err:
        validate_config(merged(overlay), REPO / "workflow" / "schemas" / "config.schema.yaml")
    assert str(err.value).startswith(message)
    assert "\n" not in str(err.value)


def test_shipped_configs_are_valid():
    schema = REPO / "workflow" / "schemas" / "config.schema.yaml"
    validate_config(merged(), schema)
    validate_config(merged(yaml.safe_load((REPO / "config" / "quick.yaml").read_text())), schema)
    validate_config(merged(yaml.safe_load((REPO / "tests" / "micro.yaml").read_text())), schema)
