# One job per (model, bounds settings): the per-image statistics of Proposition 2.2 (Finlay &
# Oberman) and their GEV estimates, which robustness tables read.
rule bounds:
    input:
        model="results/models/{exp}/model.pt",
        data=lambda wc: f"results/data/{bounds_job(wc)['dataset']}/test.npz",
    output:
        "results/bounds/{exp}/{bounds}/bounds.json",
        "results/bounds/{exp}/{bounds}/bounds.tsv",
    params:
        args=bounds_args,
    log:
        "logs/bounds/{exp}/{bounds}.log",
    threads: job_resources("bounds")["threads"]
    resources:
        gpu=job_resources("bounds")["gpu"],
        mem_mb=job_resources("bounds")["mem_mb"],
        runtime=job_resources("bounds")["runtime"],
    conda:
        "../../envs/robustreg.yaml"
    shell:
        "python -m robustreg bounds --model {input.model:q} --data {input.data:q} {params.args:q}"
        " --out-dir results/bounds/{wildcards.exp}/{wildcards.bounds} --threads {threads}"
        " > {log:q} 2>&1"
