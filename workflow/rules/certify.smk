rule certify:
    input:
        model="results/models/{exp}/model.pt",
        data=lambda wc: f"results/data/{certification(wc)['dataset']}/test.npz",
    output:
        counts="results/certify/{exp}/{cert}/counts.npz",
        log="results/certify/{exp}/{cert}/certify.tsv",
    params:
        args=certify_args,
    log:
        "logs/certify/{exp}/{cert}.log",
    threads: job_resources("certify")["threads"]
    resources:
        gpu=job_resources("certify")["gpu"],
        mem_mb=job_resources("certify")["mem_mb"],
        runtime=job_resources("certify")["runtime"],
    conda:
        "../../envs/robustreg.yaml"
    shell:
        "python -m robustreg certify --model {input.model:q} --data {input.data:q} {params.args:q}"
        " --out-dir results/certify/{wildcards.exp}/{wildcards.cert} --threads {threads} > {log:q} 2>&1"


# T-CERTIFY (Feng et al. 2020, Algorithm 2) from the counts the certify job stored: the same
# samples as CERTIFY, as the paper compares the two; changing the grid reruns only this.
rule tcertify:
    input:
        "results/certify/{exp}/{cert}/counts.npz",
    output:
        "results/certify/{exp}/{cert}/tcertify.tsv",
    params:
        args=tcertify_args,
    log:
        "logs/tcertify/{exp}/{cert}.log",
    localrule: True
    conda:
        "../../envs/robustreg.yaml"
    shell:
        "python -m robustreg tcertify --counts {input:q} {params.args:q} --out {output:q} > {log:q} 2>&1"
