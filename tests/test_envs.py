"""The conda environment the rules declare pins what the package pins."""

from __future__ import annotations

import re
import tomllib

import yaml
from conftest import REPO

# Run by Snakemake itself, outside the jobs' environment.
OUTSIDE_JOBS = {"snakemake", "snakemake-executor-plugin-slurm"}


def _pins(requirements: list[str]) -> dict[str, str]:
    pins = {}
    for req in requirements:
        match = re.fullmatch(r"([A-Za-z0-9_.\-]+)==([^\s;]+)", req.strip())
        assert match, f"not an exact pin: {req!r}"
        pins[match[1].lower()] = match[2]
    return pins


def test_conda_env_pins_the_package_dependencies():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    env = yaml.safe_load((REPO / "envs" / "robustreg.yaml").read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    wanted = {k: v for k, v in _pins(project["dependencies"]).items() if k not in OUTSIDE_JOBS}
    assert _pins(pip) == wanted
    python = next(d for d in env["dependencies"] if isinstance(d, str) and d.startswith("python"))
    assert python == f"python={project['requires-python'].removeprefix('>=')}"


def test_every_rule_declares_that_env():
    for rules in (REPO / "workflow" / "rules").glob("*.smk"):
        text = rules.read_text()
        shell_rules = text.count("    shell:")
        assert text.count('conda:\n        "../../envs/robustreg.yaml"') == shell_rules, rules.name
