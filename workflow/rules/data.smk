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
    conda:
        "../../envs/robustreg.yaml"
    shell:
        "python -m robustreg data {params.args:q} --out-dir results/data/{wildcards.dataset} > {log:q} 2>&1"
