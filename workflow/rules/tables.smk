from pathlib import Path

from robustreg.plan import write_cells


rule table_cells:
    input:
        table_logs,
    output:
        "results/tables/{table}.cells.yaml",
    log:
        "logs/tables/{table}.cells.log",
    localrule: True
    run:
        write_cells(PLAN.tables[wildcards.table], output[0])
        Path(log[0]).write_text(f"wrote {output[0]}\n")


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
    conda:
        "../../envs/robustreg.yaml"
    shell:
        "python -m robustreg table --cells {input.cells:q} --md {output.md:q} --tex {output.tex:q} > {log:q} 2>&1"
