def experiment(wildcards):
    return PLAN.experiments[wildcards.exp]


def train_processes(wildcards):
    """Data-parallel processes of a training (its schedule's ``processes``, default 1)."""
    return experiment(wildcards)["schedule"].get("processes", 1)


# The dataset (its id) each stage's job reads: requests differ per dataset.
JOB_DATASET = {
    "data": lambda wildcards: wildcards.dataset,
    "train": lambda wildcards: experiment(wildcards)["data"]["dataset"],
    "certify": lambda wildcards: certification(wildcards)["dataset"],
    "attack": lambda wildcards: attack_job(wildcards)["dataset"],
    "bounds": lambda wildcards: bounds_job(wildcards)["dataset"],
}


def job_request(stage, wildcards):
    """A job's request from config ``resources`` (robustreg.resources): its stage's values with
    its dataset's overrides; a data-parallel training asks for every process's share."""
    name = PLAN.datasets[JOB_DATASET[stage](wildcards)]["name"]
    request = stage_request(config["resources"], stage, name)
    return scaled(request, train_processes(wildcards)) if stage == "train" else request


def requested(stage, key):
    return lambda wildcards: job_request(stage, wildcards)[key]


def time_limit(stage):
    """Minutes for one attempt: a retried job (killed at its limit, it resumes) gets more."""
    return lambda wildcards, attempt: runtime_for(job_request(stage, wildcards)["runtime"], attempt)


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
    args = [
        "--dataset",
        d["name"],
        "--source",
        d["source"],
        "--download-root",
        config["data"]["download_root"],
    ]
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
        args += [
            "--synthetic-train",
            str(synthetic["train"]),
            "--synthetic-test",
            str(synthetic["test"]),
        ]
        args += ["--split-seed", str(synthetic["seed"])]
        if d["name"] == "imagenet":
            args += [
                "--synthetic-classes",
                str(synthetic["classes"]),
                "--synthetic-size",
                str(synthetic["size"]),
            ]
    return args


def certify_args(wildcards):
    c = certification(wildcards)
    args = ["--sigma", c["sigma"], "--n0", c["n0"], "--n", c["n"], "--alpha", c["alpha"]]
    args += ["--batch-size", c["batch_size"], "--skip", c["skip"], "--seed", c["seed"]]
    if c["max_images"]:
        args += ["--max-images", c["max_images"]]
    if "precision" in c:
        args += ["--precision", c["precision"]]
    return [str(a) for a in args]


def names_pattern(names):
    """A wildcard constraint matching exactly these names (tables, figures, papers)."""
    return "|".join(re.escape(name) for name in names) or "(?!)"


def tcertify_args(wildcards):
    c = certification(wildcards)
    args = ["--alpha", str(c["alpha"]), "--grid", *(str(g) for g in config["tcertify"]["grid"])]
    return args + (
        ["--level", "bonferroni"] if wildcards.tcertifier == "tcertify_bonferroni" else []
    )


def withdraw_stale_reports(dag):
    """Remove the reports this failed run could not rewrite.

    Under --keep-going a table whose cell's job failed (a diverged training) is never rendered,
    and its report from an earlier run would stay in reports/, looking current but showing
    another configuration's numbers. Snakemake only deletes a job's outputs when it runs it,
    so the report jobs left pending are cleared here.
    """
    for job in dag.needrun_jobs():
        if job.rule.name not in ("table", "figure", "paper"):
            continue
        stale = [str(f) for f in job.output if os.path.exists(f)]
        for path in stale:
            os.remove(path)
        if stale:
            print(
                f"robustreg: removed {', '.join(stale)}: a job it needs failed, so it would "
                "show an earlier run's numbers",
                file=sys.stderr,
            )
