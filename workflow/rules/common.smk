def job_resources(stage):
    """Resources of a stage from config: threads, mem_mb, runtime (minutes), gpu."""
    return config["resources"][stage]


def experiment(wildcards):
    return PLAN.experiments[wildcards.exp]


def certification(wildcards):
    return PLAN.certifications[f"{wildcards.exp}/{wildcards.cert}"]


def table_logs(wildcards):
    return [f"results/certify/{cell.certification}/certify.tsv" for cell in PLAN.tables[wildcards.table].cells]


def dataset_args(wildcards):
    d = PLAN.datasets[wildcards.dataset]
    args = ["--dataset", d["name"], "--source", d["source"], "--download-root", config["data"]["download_root"]]
    if d["files"]:
        args += ["--files", d["files"]]
    return args + ["--test-size", str(d["test_size"]), "--split-seed", str(d["split_seed"])]


def certify_args(wildcards):
    c = certification(wildcards)
    args = ["--sigma", c["sigma"], "--n0", c["n0"], "--n", c["n"], "--alpha", c["alpha"]]
    args += ["--batch-size", c["batch_size"], "--skip", c["skip"], "--seed", c["seed"]]
    if c["max_images"]:
        args += ["--max-images", c["max_images"]]
    return [str(a) for a in args]
