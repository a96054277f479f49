def certify_args(wildcards):
    c = certification(wildcards)
    args = ["--sigma", c["sigma"], "--n0", c["n0"], "--n", c["n"], "--alpha", c["alpha"]]
    args += ["--batch-size", c["batch_size"], "--skip", c["skip"], "--seed", c["seed"]]
    if c["max_images"]:
        args += ["--max-images", c["max_images"]]
    return [str(a) for a in args]


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
    shell:
        "python -m robustreg certify --model {input.model:q} --data {input.data:q} {params.args:q}"
        " --out-dir results/certify/{wildcards.exp}/{wildcards.cert} --threads {threads} > {log:q} 2>&1"
