"""The SLURM profile (profiles/slurm) against a real single-node SLURM started by
scripts/local-slurm: micro Table 2's σ = 0.25 models and one job of each other kind (an attack,
a bounds job, a T-CERTIFY), every job but the local rules a SLURM job seen by sacct with its
rule's request, certifying exactly as the local run of micro_run.

Needs root (the script installs SLURM with apt-get when absent and starts its daemons); the
test is skipped, with the script's reason, where SLURM cannot be started, unless
ROBUSTREG_REQUIRE_SLURM=1 (CI), which makes that a failure."""

from __future__ import annotations

import os
import re
import subprocess
from datetime import datetime, timedelta
from pathlib import Path

import pytest
import yaml
from conftest import REPO, snakemake, workflow_copy
from snakemake.utils import update_config

from robustreg.certify import read_certify_log
from robustreg.plan import make_plan
from robustreg.tables.cells import load_cells
from robustreg.tables.render import build_frame

SCRIPT = REPO / "scripts" / "local-slurm"
TARGET = "reports/table2_mnist.md"
# The test cluster has no GPUs; micro.yaml asks for none (gpu: 0), as a user of a GPU-less
# cluster would, and the plugin then emits no GPU option at all.
# One sigma of Table 2: six models, one per method, each a train and a certify job; the other
# twelve would only repeat them.
ONE_SIGMA = {"tables": {"table2_mnist": {"sigmas": [0.25]}}}
# The other kinds of job, each once, from the micro configuration's other papers: an attack
# and a bounds job (SLURM jobs) and a T-CERTIFY (a local rule, as tables are, reading the counts
# of a certify job that ran on SLURM). kind -> (table, row, column) whose cell names the job
OTHER_KINDS = {
    "attack": ("table1_atent", "sgd", "pgd40"),
    "bounds": ("table1_gradreg", "undefended", "omega2"),
    "tcertify": ("figure2_adre_models", "cifar_tcertify", None),
}
# The rules whose request micro.yaml sets (resources:); the others take the defaults.
REQUESTED = ("train", "certify", "attack", "bounds")
SACCT_FIELDS = "JobIDRaw,JobName,State,Partition,Account,ReqCPUS,ReqMem,Timelimit,ReqTRES,Comment"


def local_slurm(command: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(SCRIPT), command], capture_output=True, text=True, timeout=900, check=False
    )


@pytest.fixture(scope="module")
def slurm_cluster():
    """(partition, account) of a running local SLURM; stopped afterwards if started here."""
    started_here = False
    proc = local_slurm("status")
    if proc.returncode != 0:
        proc = local_slurm("start")
        if proc.returncode != 0:
            lines = proc.stderr.strip().splitlines()
            reason = lines[-1] if lines else f"scripts/local-slurm start exited {proc.returncode}"
            if os.environ.get("ROBUSTREG_REQUIRE_SLURM") == "1":
                pytest.fail(f"local SLURM did not start: {reason}")
            pytest.skip(f"local SLURM cannot be started here: {reason}")
        started_here = True
    match = re.search(r"partition=(\S+) account=(\S+)", proc.stdout)
    assert match, proc.stdout
    yield match[1], match[2]
    if started_here:
        stop = local_slurm("stop")
        assert stop.returncode == 0, stop.stderr


def sacct(*args: str) -> list[dict[str, str]]:
    out = subprocess.run(
        ["sacct", "-X", "--parsable2", "--noheader", f"--format={SACCT_FIELDS}", *args],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    names = SACCT_FIELDS.split(",")
    return [dict(zip(names, line.split("|"), strict=True)) for line in out.splitlines()]


@pytest.mark.slow
def test_micro_table2_runs_as_slurm_jobs_and_matches_the_local_run(
    slurm_cluster, tmp_path, request
):
    partition, account = slurm_cluster
    workdir = workflow_copy(tmp_path)
    (workdir / "one_sigma.yaml").write_text(yaml.safe_dump(ONE_SIGMA))
    others = _other_kinds(workdir, ["micro.yaml", "one_sigma.yaml"])
    since = (datetime.now() - timedelta(minutes=1)).strftime("%Y-%m-%dT%H:%M:%S")
    proc = snakemake(
        workdir,
        TARGET,
        *others.values(),
        "--configfile",
        "micro.yaml",
        "one_sigma.yaml",
        "--default-resources",
        f"slurm_account={account}",
        f"slurm_partition={partition}",
        # The plugin deletes a successful job's SLURM log unless told to keep it.
        "--slurm-keep-successful-logs",
        # Poll sacct 1 s after a poll that saw a job end (plugin default 40 s, profile 20 s).
        "--slurm-init-seconds-before-status-checks",
        "1",
        workflow_profile="profiles/slurm",
    )
    out = proc.stdout + proc.stderr
    run_id = re.search(r"SLURM run ID: (\S+)", out)
    assert run_id, out

    # Every job the plugin submitted: SLURM's accounting, by the run's job name.
    jobs = {job["JobIDRaw"]: job for job in sacct("--name", run_id[1], "--starttime", since)}
    assert jobs and all(job["State"] == "COMPLETED" for job in jobs.values()), jobs
    assert {(job["Partition"], job["Account"]) for job in jobs.values()} == {(partition, account)}

    # Each rule log has its job's SLURM log, named by the job id, under
    # .snakemake/slurm_logs/rule_<rule>/<wildcards joined by _>/<jobid>.log, and sacct knows
    # that job with the plugin's comment rule_<rule>_wildcards_<wildcards>.
    expected = {
        rule: sorted(
            "_".join(p.relative_to(workdir / "logs" / rule).with_suffix("").parts)
            for p in (workdir / "logs" / rule).rglob("*.log")
        )
        for rule in ("train", "certify", "attack", "bounds")
    }
    # Table 2's six models and certifications; an attacked, a bounded and a T-certified model,
    # the last certified first
    assert {rule: len(names) for rule, names in expected.items()} == {
        "train": 6 + 3,
        "certify": 6 + 1,
        "attack": 1,
        "bounds": 1,
    }
    micro = yaml.safe_load((workdir / "micro.yaml").read_text())["resources"]
    slurm_logs = workdir / ".snakemake" / "slurm_logs"
    for rule, wildcards in expected.items():
        for name in wildcards:
            ids = [p.stem for p in (slurm_logs / f"rule_{rule}" / name).glob("*.log")]
            assert len(ids) == 1, (rule, name, ids)
            job = jobs[ids[0]]
            assert job["Comment"] == f"rule_{rule}_wildcards_{name}"
            assert "gpu" not in job["ReqTRES"], job
            if rule not in REQUESTED:
                continue
            # threads -> --cpus-per-task, mem_mb -> --mem, runtime (minutes) -> -t
            asked = micro[rule]
            assert int(job["ReqCPUS"]) == asked["threads"], job
            assert job["ReqMem"] == f"{asked['mem_mb']}M", job
            assert job["Timelimit"] == str(timedelta(minutes=asked["runtime"])).zfill(8), job
    # ... and nothing else ran on SLURM but the two dataset jobs (T-CERTIFY and the tables are
    # local rules).
    kinds = {job["Comment"].split("_wildcards_")[0] for job in jobs.values()}
    assert kinds == {f"rule_{rule}" for rule in (*expected, "dataset")}
    assert len(jobs) == sum(map(len, expected.values())) + 2
    assert len(list((workdir / "logs" / "tcertify").rglob("*.log"))) == 1
    assert not (slurm_logs / "rule_tcertify").exists()
    for path in others.values():
        assert (workdir / path).stat().st_size > 0, path

    # The local run of the same configuration and seeds (conftest's session fixture, asked
    # for only now, so that a machine without SLURM skips before that run) trained
    # the same six models (same ids): their per-image certificates are the same, and so are
    # the Table 2 cells they fill.
    micro_run = request.getfixturevalue("micro_run")
    logs = sorted((workdir / "results" / "certify").glob("mnist-*/*/certify.tsv"))
    assert len(logs) == 6
    for log in logs:
        ours = read_certify_log(log).drop(columns="time")
        local = read_certify_log(micro_run / log.relative_to(workdir)).drop(columns="time")
        assert ours.equals(local), log
    cells = Path("results") / "tables" / "table2_mnist.cells.yaml"
    ours = build_frame(load_cells(workdir / cells, logs_root=workdir / "results"))
    local = build_frame(load_cells(micro_run / cells, logs_root=micro_run / "results"))
    ours = ours[ours.ours.notna()].reset_index(drop=True)
    assert len(ours) == 6 * 12 and set(ours.group) == {0.25}  # 6 rows x (ACR + 11 radii)
    assert ours.equals(local[local.group == 0.25].reset_index(drop=True))


# One training long enough to overrun a one-minute limit, and short enough for the retries' two
# and three minutes: 150 epochs of 4,000 MNIST images. An epoch takes 0.7 s on the idle 2-core
# machine (100 epochs once finished within the 76 s SLURM gave the first attempt), 1 s with
# the rest of the suite beside it, 2 s on a busier machine (and then the second retry
# finishes it).
SLOW_EPOCHS = 150
SLOW_TRAINING = {
    "data": {"mnist": {"train_limit": None}},
    "schedules": {"mnist": {"epochs": SLOW_EPOCHS, "lr_milestones": [SLOW_EPOCHS // 2]}},
    "resources": {"train": {"runtime": 1}},
}


def _plan(workdir: Path, overlays: list[str]):
    config = yaml.safe_load((workdir / "config.yaml").read_text())
    for name in overlays:
        update_config(config, yaml.safe_load((workdir / name).read_text()))
    return make_plan(config)


def _experiment_of(workdir: Path, overlays: list[str], row: str, sigma: float) -> str:
    """The id Snakemake will give Table 2's (row, sigma) model under these overlays."""
    cell = next(
        c
        for c in _plan(workdir, overlays).tables["table2_mnist"].cells
        if (c.row, c.sigma) == (row, sigma)
    )
    return cell.experiments[0]


def _other_kinds(workdir: Path, overlays: list[str]) -> dict[str, str]:
    """Per kind of ``OTHER_KINDS``, the output its job writes for that table's row and column."""
    plan = _plan(workdir, overlays)
    outputs = {}
    for kind, (table, row, column) in OTHER_KINDS.items():
        cell = next(c for c in plan.tables[table].cells if c.row == row)
        if kind == "attack":
            outputs[kind] = f"results/attacks/{cell.attacks[column]}/outcomes.tsv"
        elif kind == "bounds":
            (outputs[kind],) = cell.files[column]
        else:
            (certification,) = cell.certifications
            outputs[kind] = f"results/certify/{certification}/tcertify.tsv"
    return outputs


@pytest.mark.slow
def test_a_training_stopped_at_its_time_limit_resumes_on_retry(slurm_cluster, tmp_path):
    """SLURM stops the first attempt at its one-minute limit; the profile's retry asks for two
    minutes and the training resumes from its checkpoint instead of starting over."""
    partition, account = slurm_cluster
    workdir = workflow_copy(tmp_path)
    (workdir / "slow.yaml").write_text(yaml.safe_dump(SLOW_TRAINING))
    exp = _experiment_of(workdir, ["micro.yaml", "slow.yaml"], "gaussian", 0.25)
    since = (datetime.now() - timedelta(minutes=1)).strftime("%Y-%m-%dT%H:%M:%S")
    proc = snakemake(
        workdir,
        f"results/models/{exp}/model.pt",
        "--configfile",
        "micro.yaml",
        "slow.yaml",
        "--default-resources",
        f"slurm_account={account}",
        f"slurm_partition={partition}",
        "--slurm-init-seconds-before-status-checks",
        "1",
        workflow_profile="profiles/slurm",
    )
    out = proc.stdout + proc.stderr
    run_id = re.search(r"SLURM run ID: (\S+)", out)[1]
    trains = [
        job
        for job in sacct("--name", run_id, "--starttime", since)
        if job["Comment"] == f"rule_train_wildcards_{exp}"
    ]
    trains.sort(key=lambda job: int(job["JobIDRaw"]))
    assert len(trains) >= 2, trains
    assert trains[0]["State"] == "TIMEOUT" and trains[-1]["State"] == "COMPLETED", trains
    # attempt k asks for k minutes
    limits = [job["Timelimit"] for job in trains]
    assert limits == [str(timedelta(minutes=k)).zfill(8) for k in range(1, len(trains) + 1)]
    log = (workdir / "logs" / "train" / f"{exp}.log").read_text()
    resumed = re.search(r"resuming .* after epoch (\d+)", log)
    # SLURM may stop an attempt a little after its limit; one that finished the training just
    # before that leaves its final checkpoint, which the retry restores without training
    restored = "restored model.pt and history.csv from the final checkpoint" in log
    assert (resumed and int(resumed[1]) >= 1) or restored, log
    history = (workdir / "results" / "models" / exp / "history.csv").read_text().splitlines()
    assert len(history) == 1 + SLOW_EPOCHS
