"""What a user copies from the documentation works as written.

Every `snakemake` command in README's code blocks is dry-run verbatim (`--dry-run` appended) in a
fresh copy of the workflow; every `snakemake` command anywhere else a user may copy one from
(docs/, config comments, profiles, the Makefile) goes through Snakemake's own argument parser,
which is where a target placed after `--resources` once died. README and docs/ render as
CommonMark the way they read as text (a broken fence once turned a whole section into code),
and the Snakemake files are snakefmt-clean.
"""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import NO_SLURM, REPO, workflow_copy
from markdown_it import MarkdownIt

PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
# Files whose comments or recipes hold commands a user copies.
COMMENTED = [
    REPO / "config.yaml",
    *sorted((REPO / "config").glob("*.yaml")),
    *sorted((REPO / "profiles").glob("*/config.yaml")),
    REPO / "Makefile",
    REPO / "scripts" / "local-slurm",
]
TARGET = re.compile(r"^(reports|results)/\S+$")


def fences(page: Path) -> list:
    return [t for t in MarkdownIt("commonmark").parse(page.read_text()) if t.type == "fence"]


def commands(text: str) -> list[str]:
    """The shell commands of a code block, continuation lines joined, comments dropped."""
    joined = re.sub(r"\\\n\s*", " ", text)
    found = []
    for line in joined.splitlines():
        with contextlib.suppress(ValueError):  # a heredoc's YAML is not shell
            words = shlex.split(line, comments=True)
            if words:
                found.append(words)
    return [" ".join(shlex.quote(w) for w in words) for words in found]


def snakemake_blocks(page: Path) -> list[str]:
    return [
        t.content
        for t in fences(page)
        if t.info.strip() == "bash" and any(c.startswith("snakemake ") for c in commands(t.content))
    ]


def readme_blocks() -> list[str]:
    return snakemake_blocks(REPO / "README.md")


def test_readme_shows_the_headline_and_cluster_commands():
    shown = [c for block in readme_blocks() for c in commands(block) if c.startswith("snakemake")]
    assert "snakemake reports/table2_mnist.md --cores 8 --resources gpu=4" in shown
    assert any("--workflow-profile profiles/slurm" in c for c in shown), shown


def snakemake_env() -> dict[str, str]:
    """This interpreter's `python` first on PATH, and a failing scontrol (see conftest)."""
    parts = [str(NO_SLURM), str(Path(sys.executable).parent), os.environ["PATH"]]
    return dict(os.environ, PATH=os.pathsep.join(parts))


@pytest.fixture(scope="module")
def fresh_workflow(tmp_path_factory) -> Path:
    return workflow_copy(tmp_path_factory.mktemp("readme"))


@pytest.mark.parametrize("block", readme_blocks(), ids=lambda b: b.splitlines()[-1][:60])
def test_readme_snakemake_blocks_dry_run_verbatim(fresh_workflow, block):
    # Each snakemake line runs as written with --dry-run appended; other lines of the block
    # (variables, heredocs) run too, but `source .venv/bin/activate` is this test's interpreter.
    script = "\n".join(
        line for line in block.splitlines() if not line.startswith("source .venv/bin/activate")
    )
    proc = subprocess.run(
        [
            "bash",
            "-c",
            'set -euo pipefail\nsnakemake() { python -m snakemake "$@" --dry-run; }\n' + script,
        ],
        cwd=fresh_workflow,
        env=snakemake_env(),
        capture_output=True,
        text=True,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    assert "This was a dry-run" in out, out
    # found beside the Snakefile without --workflow-profile: keep-going and the rerun triggers
    profile = "profiles/slurm" if "profiles/slurm" in block else "profiles/default"
    assert f"workflow specific profile {profile}" in out, out


def copied_commands() -> list[tuple[str, str]]:
    """(where, command) for every snakemake command in docs/ code blocks and in comments."""
    found = []
    for page in PAGES[1:]:
        for block in snakemake_blocks(page):
            found += [(page.name, c) for c in commands(block) if c.startswith("snakemake ")]
    for path in COMMENTED:
        text = re.sub(r"\\\n[#\s]*", " ", path.read_text())
        for line in text.splitlines():
            match = re.search(r"snakemake( [^`\"]*)", line)
            if match and not match[1].strip().startswith("<"):
                found.append((path.name, "snakemake" + match[1].split(" ...")[0].rstrip()))
    return found


@pytest.mark.parametrize(("where", "command"), copied_commands(), ids=lambda v: v[:70])
def test_documented_commands_parse_with_their_targets(fresh_workflow, monkeypatch, where, command):
    from snakemake.cli import parse_args

    monkeypatch.chdir(fresh_workflow)
    # make's and the shell's variables stand for a user's values
    argv = [re.sub(r"\$\(CORES\)", "2", w) for w in shlex.split(command)[1:]]
    argv = [re.sub(r"\$\w+|<\w+>", "x", w) for w in argv]
    try:
        _, args = parse_args(argv)
    except (ValueError, SystemExit) as err:
        pytest.fail(f"{where}: `{command}` does not parse: {err!r}")
    wanted = [w for w in argv if TARGET.match(w)]
    assert wanted == list(args.targets)[: len(wanted)] or set(wanted) <= set(args.targets), (
        where,
        command,
        args.targets,
    )


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_pages_render_as_they_read(page):
    """The headings CommonMark finds are the ones a reader sees, and every fence is closed
    where it was meant to be: a fence line with text after it (``` The) is no closing fence,
    and everything after it would render as code."""
    text = page.read_text()
    seen, inside = [], False
    for line in text.splitlines():
        if line.startswith("```"):
            inside = not inside
        elif not inside and re.match(r"#{1,6} ", line):
            seen.append(line.lstrip("#").strip())
    tokens = MarkdownIt("commonmark").parse(text)
    rendered = [tokens[i + 1].content for i, t in enumerate(tokens) if t.type == "heading_open"]
    assert rendered == seen
    for fence in fences(page):
        assert fence.info.strip() in ("bash", "yaml", "text", "python"), fence.info
        assert not re.search(r"^#{2,6} \S", fence.content, re.M), fence.content[:200]


def test_links_between_pages_resolve():
    for page in PAGES:
        for target in re.findall(r"\]\(([^)#:]+)(?:#[^)]*)?\)", page.read_text()):
            assert (page.parent / target).exists(), (page.name, target)


def test_snakemake_files_are_snakefmt_clean():
    proc = subprocess.run(
        [sys.executable, "-m", "snakefmt", "--check", "Snakefile", "workflow"],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_headline_command_plans_table2_and_runs_four_gpu_jobs_at_once(fresh_workflow):
    argv = shlex.split("snakemake reports/table2_mnist.md --cores 8 --resources gpu=4")
    proc = subprocess.run(
        [sys.executable, "-m", *argv, "--dry-run"],
        cwd=fresh_workflow,
        env=snakemake_env(),
        capture_output=True,
        text=True,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    jobs = re.split(r"\n(?=rule \w+:)", out)
    gpu_jobs = [job for job in jobs if re.search(r"resources: .*\bgpu=1\b", job)]
    rules = [re.match(r"rule (\w+):", job)[1] for job in gpu_jobs]
    assert sorted(set(rules)) == ["certify", "train"] and len(rules) == 36, rules
    assert rules.count("train") == rules.count("certify") == 18
    threads = {int(m) for job in gpu_jobs for m in re.findall(r"threads: (\d+)", job)} or {1}
    # Snakemake runs as many at once as both the cores and the GPUs allow.
    assert min(8 // max(threads), 4 // 1) == 4, threads
