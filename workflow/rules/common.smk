def job_resources(stage):
    """Resources of a stage from config: threads, mem_mb, runtime (minutes), gpu."""
    return config["resources"][stage]


def experiment(wildcards):
    return PLAN.experiments[wildcards.exp]


def certification(wildcards):
    return PLAN.certifications[f"{wildcards.exp}/{wildcards.cert}"]


def table_logs(wildcards):
    return [f"results/certify/{cell.certification}/certify.tsv" for cell in PLAN.tables[wildcards.table].cells]
