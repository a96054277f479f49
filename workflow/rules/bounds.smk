# One job per (model, bounds settings): the per-image statistics of Proposition 2.2 (Finlay &
# Oberman) and their GEV estimates, which robustness tables read.
rule bounds:
    input:
        model="results/models/{exp}/model.pt",
        data=lambda wc: f"results/data/{bounds_job(wc)['dataset']}/test.npz",
    output:
        "results/bounds/{exp}/{bounds}/bounds.json",
        "results/bounds/{exp}/{bounds}/bounds.tsv",
    log:
        "logs/bounds/{exp}/{bounds}.log",
    benchmark:
        "results/benchmarks/bounds/{exp}/{bounds}.tsv"
    conda:
        "../../envs/robustreg.yaml"
    threads: requested("bounds", "threads")
    resources:
        gpu=requested("bounds", "gpu"),
        mem_mb=requested("bounds", "mem_mb"),
        runtime=time_limit("bounds"),
    params:
        args=bounds_args,
    shell:
        "python -m robustreg bounds --model {input.model:q} --data {input.data:q} {params.args:q}"
        " --out-dir results/bounds/{wildcards.exp:q}/{wildcards.bounds:q} --threads {threads}"
        " --gpus {resources.gpu} > {log:q} 2>&1"
