def job_resources(stage):
    """Resources of a stage from config: threads, mem_mb, runtime (minutes), gpu."""
    return config["resources"][stage]


def train_processes(wildcards):
    """Data-parallel processes of a training (its schedule's ``processes``, default 1)."""
    return experiment(wildcards)["schedule"].get("processes", 1)


def train_resource(key):
    """A training job's request: ``resources.train`` is per process, and a data-parallel
    training (torchrun, one process per GPU) asks for that many times it."""
    return lambda wildcards: job_resources("train")[key] * train_processes(wildcards)


def experiment(wildcards):
    return PLAN.experiments[wildcards.exp]


def certification(wildcards):
    return PLAN.certifications[f"{wildcards.exp}/{wildcards.cert}"]


def attack_job(wildcards):
    return PLAN.attacks[f"{wildcards.exp}/{wildcards.attack}"]


def bounds_job(wildcards):
    return PLAN.bounds[f"{wildcards.exp}/{wildcards.bounds}"]


def evaluation_args(job):
    """The test images an attack or bounds job evaluates (an ``evaluation`` entry)."""
    args = ["--skip", job["skip"], "--batch-size", job["batch_size"], "--seed", job["seed"]]
    if job["max_images"]:
        args += ["--max-images", job["max_images"]]
    if job.get("sample"):
        args += ["--sample", job["sample"], "--sample-seed", job.get("sample_seed", 0)]
    return [str(a) for a in args]


def attack_args(wildcards):
    job = attack_job(wildcards)
    # one argument, quoted by the rule: the attack's settings as JSON
    return ["--attack-json", json.dumps(job["attack"], sort_keys=True), *evaluation_args(job)]


def bounds_args(wildcards):
    job = bounds_job(wildcards)
    return ["--bounds-json", json.dumps(job["bounds"], sort_keys=True), *evaluation_args(job)]


def cell_logs(table):
    """The certification logs or attack outcome files a table reads."""
    return [log for cell in PLAN.tables[table].cells for log in cell.logs()]


def table_logs(wildcards):
    return cell_logs(wildcards.table)


def cells_json(wildcards, output):
    """The table's cells document, as the argument of `python -m robustreg cells`."""
    return json.dumps(cells_document(PLAN.tables[wildcards.table], output[0]))


def spec_file(name):
    """A table's or figure's spec: an input, so that editing it re-renders (and only that)."""
    return str(specs_dir() / f"{name}.yaml")


def figure_inputs(wildcards):
    table = PLAN.figures[wildcards.figure].table
    return {
        "cells": f"results/tables/{table}.cells.yaml",
        "logs": cell_logs(table),
        "spec": spec_file(wildcards.figure),
    }


def dataset_args(wildcards):
    d = PLAN.datasets[wildcards.dataset]
    args = ["--dataset", d["name"], "--source", d["source"], "--download-root", config["data"]["download_root"]]
    if d.get("files"):
        args += ["--files", d["files"]]
    if d["name"] == "mnist":
        args += ["--test-size", str(d["test_size"]), "--split-seed", str(d["split_seed"])]
    if d["name"] == "imagenet":
        args += ["--crop", str(d["crop"]), "--resize", str(d["resize"])]
        if d["root"]:
            args += ["--root", d["root"]]
    if d["source"] == "synthetic":
        synthetic = d["synthetic"]
        args += ["--synthetic-train", str(synthetic["train"]), "--synthetic-test", str(synthetic["test"])]
        args += ["--split-seed", str(synthetic["seed"])]
        if d["name"] == "imagenet":
            args += ["--synthetic-classes", str(synthetic["classes"]), "--synthetic-size", str(synthetic["size"])]
    return args


def certify_args(wildcards):
    c = certification(wildcards)
    args = ["--sigma", c["sigma"], "--n0", c["n0"], "--n", c["n"], "--alpha", c["alpha"]]
    args += ["--batch-size", c["batch_size"], "--skip", c["skip"], "--seed", c["seed"]]
    if c["max_images"]:
        args += ["--max-images", c["max_images"]]
    return [str(a) for a in args]


def names_pattern(names):
    """A wildcard constraint matching exactly these names (tables, figures, papers)."""
    return "|".join(re.escape(name) for name in names) or "(?!)"


def tcertify_args(wildcards):
    c = certification(wildcards)
    return ["--alpha", str(c["alpha"]), "--grid", *(str(g) for g in config["tcertify"]["grid"])]
