# A shell rule, not a `run:` block: Snakemake runs `run:` jobs in a new Snakemake process that
# parses the whole workflow again (several seconds per table).
rule table_cells:
    input:
        table_logs,
    output:
        "results/tables/{table}.cells.yaml",
    log:
        "logs/tables/{table}.cells.log",
    localrule: True
    conda:
        "../../envs/robustreg.yaml"
    params:
        cells=cells_json,
    shell:
        "python -m robustreg cells --json {params.cells:q} --out {output:q} > {log:q} 2>&1"


rule table:
    input:
        cells="results/tables/{table}.cells.yaml",
        logs=table_logs,
        spec=lambda wc: spec_file(PLAN.tables[wc.table].spec),
    output:
        md="reports/{table}.md",
        tex="reports/{table}.tex",
        html=report(
            "reports/{table}.html",
            caption="../report/table.rst",
            category="Tables",
            labels={"table": "{table}"},
        ),
    log:
        "logs/tables/{table}.log",
    localrule: True
    conda:
        "../../envs/robustreg.yaml"
    shell:
        "python -m robustreg table --cells {input.cells:q} --logs-root results --md {output.md:q}"
        " --tex {output.tex:q} --html {output.html:q} > {log:q} 2>&1"


rule figure:
    input:
        unpack(figure_inputs),
    output:
        md="reports/{figure}.md",
        tex="reports/{figure}.tex",
        pdf="reports/figures/{figure}.pdf",
        png=report(
            "reports/figures/{figure}.png",
            caption="../report/figure.rst",
            category="Figures",
            labels={"figure": "{figure}"},
        ),
    log:
        "logs/figures/{figure}.log",
    localrule: True
    conda:
        "../../envs/robustreg.yaml"
    shell:
        "python -m robustreg figure --spec {wildcards.figure:q} --cells {input.cells:q}"
        " --logs-root results --md {output.md:q}"
        " --tex {output.tex:q} --pdf {output.pdf:q} --png {output.png:q} > {log:q} 2>&1"


rule paper:
    input:
        lambda wc: PLAN.reports(wc.paper),
    output:
        "reports/{paper}.md",
    log:
        "logs/papers/{paper}.log",
    localrule: True
    conda:
        "../../envs/robustreg.yaml"
    params:
        title=lambda wc: config["papers"][wc.paper]["title"],
    shell:
        "python -m robustreg index --title {params.title:q} --out {output:q} {input:q} > {log:q} 2>&1"
