rule train:
    input:
        lambda wc: f"results/data/{experiment(wc)['data']['dataset']}/train.npz",
    output:
        model="results/models/{exp}/model.pt",
        history="results/models/{exp}/history.csv",
    log:
        "logs/train/{exp}.log",
    benchmark:
        "results/benchmarks/train/{exp}.tsv"
    conda:
        "../../envs/robustreg.yaml"
    threads: requested("train", "threads")
    resources:
        gpu=requested("train", "gpu"),
        mem_mb=requested("train", "mem_mb"),
        runtime=time_limit("train"),
    params:
        config=lambda wc: json.dumps(experiment(wc), sort_keys=True),
    shell:
        "python -m robustreg train --config-json {params.config:q} --data {input:q}"
        " --out-dir results/models/{wildcards.exp:q} --threads {threads} --gpus {resources.gpu}"
        " > {log:q} 2>&1"
