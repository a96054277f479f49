"""robustreg: dataset -> train -> certify / attack / bounds -> table / figure -> paper index.

Rules only map wildcards and config to `python -m robustreg ...` calls and declare
resources; the logic lives in src/robustreg, where it is tested.
"""

import json
import os
import re
import shlex
import sys
from pathlib import Path

from snakemake.exceptions import WorkflowError
from snakemake.utils import min_version

# The workflow runs the package source beside it, imported here and put on the jobs'
# PYTHONPATH, so that a conda environment (envs/robustreg.yaml, copied by Snakemake into
# .snakemake/conda/ where no relative path leads back here) needs only the dependencies.
SRC = Path(workflow.basedir) / "src"
sys.path.insert(0, str(SRC))
# Snakemake formats the prefix like a rule's command, hence ${{...}} after the f-string.
shell.prefix(
    f"set -euo pipefail; export PYTHONPATH={shlex.quote(str(SRC))}${{{{PYTHONPATH:+:$PYTHONPATH}}}}; "
)

from robustreg.plan import ConfigError, cells_document, make_plan, validate_config  # noqa: E402
from robustreg.resources import runtime_for, scaled, stage_request  # noqa: E402
from robustreg.tables.spec import specs_dir  # noqa: E402

min_version("9.0")


configfile: "config.yaml"


report: "workflow/report/workflow.rst"


try:
    validate_config(config, workflow.source_path("workflow/schemas/config.schema.yaml"))
    PLAN = make_plan(config)
except ConfigError as err:
    raise WorkflowError(f"config error: {err}") from None


include: "workflow/rules/common.smk"


ID = r"[A-Za-z0-9][A-Za-z0-9_.=-]*"


# Ids are made by robustreg.plan from checked names and hashes; a path with any other
# character matches no rule, so it can never reach a job's command line.
wildcard_constraints:
    dataset=ID,
    exp=ID,
    cert=ID,
    attack=ID,
    bounds=ID,
    table=names_pattern(PLAN.tables),
    figure=names_pattern(PLAN.figures),
    paper=names_pattern(PLAN.papers),


include: "workflow/rules/data.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/certify.smk"
include: "workflow/rules/attack.smk"
include: "workflow/rules/bounds.smk"
include: "workflow/rules/tables.smk"


rule all:
    default_target: True
    input:
        expand("reports/{name}.md", name=[*PLAN.tables, *PLAN.figures, *PLAN.papers]),


onerror:
    withdraw_stale_reports(workflow.dag)
