"""The conda environment the rules declare pins what CI installs, within the package's ranges."""

from __future__ import annotations

import re
import tomllib

import yaml
from conftest import REPO
from packaging.requirements import Requirement

# Run by Snakemake itself, outside the jobs' environment.
OUTSIDE_JOBS = {"snakemake", "snakemake-executor-plugin-slurm"}


def _pins(requirements: list[str]) -> dict[str, str]:
    pins = {}
    for req in requirements:
        match = re.fullmatch(r"([A-Za-z0-9_.\-]+)==([^\s;]+)", req.strip())
        assert match, f"not an exact pin: {req!r}"
        pins[match[1].lower().replace("_", "-")] = match[2]
    return pins


def test_conda_env_pins_what_ci_installs_within_the_package_ranges():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    ranges = {
        (r := Requirement(text)).name.lower(): r.specifier for text in project["dependencies"]
    }
    constraints = _pins(
        [line for line in (REPO / "constraints.txt").read_text().splitlines() if line.strip()]
    )
    env = yaml.safe_load((REPO / "envs" / "robustreg.yaml").read_text())
    pip = _pins(next(d["pip"] for d in env["dependencies"] if isinstance(d, dict)))
    assert pip == {name: constraints[name] for name in ranges if name not in OUTSIDE_JOBS}
    assert all(ranges[name].contains(version) for name, version in pip.items())
    python = next(d for d in env["dependencies"] if isinstance(d, str) and d.startswith("python"))
    assert python == f"python={project['requires-python'].removeprefix('>=')}"


def test_every_rule_declares_that_env():
    for rules in (REPO / "workflow" / "rules").glob("*.smk"):
        text = rules.read_text()
        shell_rules = text.count("    shell:")
        assert text.count('conda:\n        "../../envs/robustreg.yaml"') == shell_rules, rules.name
