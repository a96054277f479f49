# One job per (model, attack): per-image outcomes, so adding an attack never reruns another.
rule attack:
    input:
        model="results/models/{exp}/model.pt",
        data=lambda wc: f"results/data/{attack_job(wc)['dataset']}/test.npz",
    output:
        "results/attacks/{exp}/{attack}/outcomes.tsv",
    params:
        args=attack_args,
    log:
        "logs/attack/{exp}/{attack}.log",
    threads: job_resources("attack")["threads"]
    resources:
        gpu=job_resources("attack")["gpu"],
        mem_mb=job_resources("attack")["mem_mb"],
        runtime=job_resources("attack")["runtime"],
    conda:
        "../../envs/robustreg.yaml"
    shell:
        "python -m robustreg attack --model {input.model:q} --data {input.data:q} {params.args:q}"
        " --out-dir results/attacks/{wildcards.exp}/{wildcards.attack} --threads {threads}"
        " > {log:q} 2>&1"
