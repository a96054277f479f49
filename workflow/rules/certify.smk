rule certify:
    input:
        model="results/models/{exp}/model.pt",
        data=lambda wc: f"results/data/{certification(wc)['dataset']}/test.npz",
    output:
        counts="results/certify/{exp}/{cert}/counts.npz",
        log="results/certify/{exp}/{cert}/certify.tsv",
    log:
        "logs/certify/{exp}/{cert}.log",
    benchmark:
        "results/benchmarks/certify/{exp}/{cert}.tsv"
    conda:
        "../../envs/robustreg.yaml"
    threads: requested("certify", "threads")
    resources:
        gpu=requested("certify", "gpu"),
        mem_mb=requested("certify", "mem_mb"),
        runtime=time_limit("certify"),
    params:
        args=certify_args,
    shell:
        "python -m robustreg certify --model {input.model:q} --data {input.data:q} {params.args:q}"
        " --out-dir results/certify/{wildcards.exp:q}/{wildcards.cert:q} --threads {threads}"
        " --gpus {resources.gpu} > {log:q} 2>&1"


# T-CERTIFY (Feng et al. 2020, Algorithm 2) from the counts the certify job stored: the same
# samples as CERTIFY, as the paper compares the two; changing the grid reruns only this.
# tcertify.tsv at the paper's level, tcertify_bonferroni.tsv with alpha split over the grid.
rule tcertify:
    input:
        "results/certify/{exp}/{cert}/counts.npz",
    output:
        "results/certify/{exp}/{cert}/{tcertifier}.tsv",
    log:
        "logs/{tcertifier}/{exp}/{cert}.log",
    wildcard_constraints:
        tcertifier="tcertify|tcertify_bonferroni",
    localrule: True
    conda:
        "../../envs/robustreg.yaml"
    params:
        args=tcertify_args,
    shell:
        "python -m robustreg tcertify --counts {input:q} {params.args:q} --out {output:q} > {log:q} 2>&1"
