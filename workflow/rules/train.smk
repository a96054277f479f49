rule train:
    input:
        lambda wc: f"results/data/{experiment(wc)['data']['dataset']}/train.npz",
    output:
        model="results/models/{exp}/model.pt",
        history="results/models/{exp}/history.csv",
    params:
        config=lambda wc: json.dumps(experiment(wc), sort_keys=True),
    log:
        "logs/train/{exp}.log",
    threads: train_resource("threads")
    resources:
        gpu=train_resource("gpu"),
        mem_mb=train_resource("mem_mb"),
        runtime=job_resources("train")["runtime"],
    conda:
        "../../envs/robustreg.yaml"
    shell:
        "python -m robustreg train --config-json {params.config:q} --data {input:q}"
        " --out-dir results/models/{wildcards.exp} --threads {threads} > {log:q} 2>&1"
