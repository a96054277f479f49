def dataset_args(wildcards):
    d = PLAN.datasets[wildcards.dataset]
    args = ["--dataset", d["name"], "--source", d["source"], "--download-root", config["data"]["download_root"]]
    if d["files"]:
        args += ["--files", d["files"]]
    return args + ["--test-size", str(d["test_size"]), "--split-seed", str(d["split_seed"])]


rule dataset:
    output:
        train="results/data/{dataset}/train.npz",
        test="results/data/{dataset}/test.npz",
    params:
        args=dataset_args,
    log:
        "logs/data/{dataset}.log",
    resources:
        mem_mb=job_resources("data")["mem_mb"],
        runtime=job_resources("data")["runtime"],
    shell:
        "python -m robustreg data {params.args:q} --out-dir results/data/{wildcards.dataset} > {log:q} 2>&1"
