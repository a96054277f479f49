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
