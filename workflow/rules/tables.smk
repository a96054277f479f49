from robustreg.plan import write_cells


rule table_cells:
    input:
        table_logs,
    output:
        "results/tables/{table}.cells.yaml",
    localrule: True
    run:
        write_cells(PLAN.tables[wildcards.table], output[0])


rule table:
    input:
        cells="results/tables/{table}.cells.yaml",
        logs=table_logs,
    output:
        md="reports/{table}.md",
        tex="reports/{table}.tex",
    log:
        "logs/tables/{table}.log",
    localrule: True
    shell:
        "python -m robustreg table --cells {input.cells:q} --md {output.md:q} --tex {output.tex:q} > {log:q} 2>&1"
