# One job per (model, attack): per-image outcomes, so adding an attack never reruns another.
rule attack:
    input:
        model="results/models/{exp}/model.pt",
        data=lambda wc: f"results/data/{attack_job(wc)['dataset']}/test.npz",
    output:
        "results/attacks/{exp}/{attack}/outcomes.tsv",
    log:
        "logs/attack/{exp}/{attack}.log",
    benchmark:
        "results/benchmarks/attack/{exp}/{attack}.tsv"
    conda:
        "../../envs/robustreg.yaml"
    threads: requested("attack", "threads")
    resources:
        gpu=requested("attack", "gpu"),
        mem_mb=requested("attack", "mem_mb"),
        runtime=time_limit("attack"),
    params:
        args=attack_args,
    shell:
        "python -m robustreg attack --model {input.model:q} --data {input.data:q} {params.args:q}"
        " --out-dir results/attacks/{wildcards.exp:q}/{wildcards.attack:q} --threads {threads}"
        " --gpus {resources.gpu} > {log:q} 2>&1"
