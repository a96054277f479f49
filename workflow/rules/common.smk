def job_resources(stage):
    """Resources of a stage from config: threads, mem_mb, runtime (minutes), gpu."""
    return config["resources"][stage]


def experiment(wildcards):
    return PLAN.experiments[wildcards.exp]


def certification(wildcards):
    return PLAN.certifications[f"{wildcards.exp}/{wildcards.cert}"]


def certify_logs(table):
    return [
        f"results/certify/{cert}/certify.tsv"
        for cell in PLAN.tables[table].cells
        for cert in cell.certifications
    ]


def table_logs(wildcards):
    return certify_logs(wildcards.table)


def figure_inputs(wildcards):
    table = PLAN.figures[wildcards.figure].table
    return {"cells": f"results/tables/{table}.cells.yaml", "logs": certify_logs(table)}


def dataset_args(wildcards):
    d = PLAN.datasets[wildcards.dataset]
    args = ["--dataset", d["name"], "--source", d["source"], "--download-root", config["data"]["download_root"]]
    if d["files"]:
        args += ["--files", d["files"]]
    if d["name"] == "mnist":
        args += ["--test-size", str(d["test_size"]), "--split-seed", str(d["split_seed"])]
    if d["source"] == "synthetic":
        synthetic = d["synthetic"]
        args += ["--synthetic-train", str(synthetic["train"]), "--synthetic-test", str(synthetic["test"])]
        args += ["--split-seed", str(synthetic["seed"])]
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
