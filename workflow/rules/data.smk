rule dataset:
    output:
        train="results/data/{dataset}/train.npz",
        test="results/data/{dataset}/test.npz",
    log:
        "logs/data/{dataset}.log",
    conda:
        "../../envs/robustreg.yaml"
    resources:
        mem_mb=requested("data", "mem_mb"),
        runtime=time_limit("data"),
    params:
        args=dataset_args,
    shell:
        "python -m robustreg data {params.args:q} --out-dir results/data/{wildcards.dataset:q}"
        " > {log:q} 2>&1"
