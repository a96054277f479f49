"""`python -m robustreg cost`: the jobs a report target plans, which a dry run would leave out,
and their GPU-hours, measured or from the FLOP model (robustreg.cost)."""

from __future__ import annotations

import math
import os
import re
import shlex
import time
from pathlib import Path

import pytest
import torch
import yaml
from conftest import REPO, planned_jobs, workflow_copy
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import flop_registry

from robustreg import cost
from robustreg.attacks.suite import REGISTRY as ATTACKS
from robustreg.attacks.suite import build_attack, run_attack
from robustreg.bounds import bound_statistics
from robustreg.cli import main
from robustreg.objectives import REGISTRY as METHODS
from robustreg.objectives import StepContext, build_objective, resolve_params
from robustreg.plan import make_plan

TABLE2 = "reports/table2_mnist.md"


@pytest.fixture(scope="module")
def paper_config() -> dict:
    return cost.load_config(root=REPO)


@pytest.fixture(scope="module")
def paper_plan(paper_config):
    return make_plan(paper_config)


@pytest.fixture(scope="module")
def micro_config() -> dict:
    return cost.load_config([REPO / "tests" / "micro.yaml"], root=REPO)


@pytest.fixture(scope="module")
def micro_plan(micro_config):
    return make_plan(micro_config)


# --- the work model against the FLOPs the code really runs ----------------------------------------


class Flops(TorchDispatchMode):
    """FLOPs of every operator torch.utils.flop_counter knows, from its formulas. Not
    FlopCounterMode itself: its module tracker refuses the autograd.grad on a leaf input that
    every PGD step takes."""

    def __init__(self):
        super().__init__()
        self.total = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if func.overloadpacket in flop_registry:
            self.total += flop_registry[func.overloadpacket](*args, **kwargs, out_val=out)
        return out


def confident_model() -> nn.Module:
    """A small network that classifies every input as class 0 with a wide margin, so that
    every image is attacked (and MMA searches every margin). Its first layer is a 1x1
    convolution, 1% of its FLOPs: the one layer whose input gradient training skips."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 1, 1), nn.Flatten(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10)
    )
    with torch.no_grad():
        model[-1].bias[0] = 50.0
    return model


def forward_flops(model: nn.Module) -> int:
    counter = Flops()
    with counter, torch.no_grad():
        model(torch.rand(1, 1, 8, 8))
    return counter.total


TRAIN_CASES = [
    ("standard", None, {}),
    ("gaussian", 0.25, {}),
    ("consistency", 0.25, {"lbd": 10.0, "m": 2}),
    ("macer", 0.25, {"m": 4}),
    ("stability", 0.25, {}),
    ("smoothadv", 0.25, {"m": 2, "eps": 1.0, "steps": 3}),
    ("smoothadv_consistency", 0.25, {"m": 2, "eps": 1.0, "steps": 3}),
    ("adre_reg", 0.25, {"k": 3, "lbd": 0.1}),
    ("adre_adv", 0.25, {"k": 2, "lbd": 0.1, "eps": 0.5, "steps": 2}),
    ("pgd_at", None, {"norm": "linf", "eps": 0.03, "steps": 3, "step_size": 0.01}),
    ("trades", None, {"norm": "l2", "eps": 0.5, "steps": 3, "step_size": 0.1}),
    ("mart", None, {"norm": "linf", "eps": 0.03, "steps": 3, "step_size": 0.01}),
    ("mma", None, {"norm": "l2", "hinge_max": 1.0, "init_eps": 0.5, "steps": 3}),
    ("atent", None, {"norm": "linf", "gamma": 32.0, "steps": 3, "step_size": 0.007}),
    ("free_at", None, {"eps": 0.03, "m": 3}),
    ("gradient_norm", None, {"norm": "l2", "lam": 0.1, "method": "fd"}),
]


@pytest.mark.parametrize(("method", "sigma", "params"), TRAIN_CASES, ids=lambda v: str(v))
def test_train_work_is_the_flops_of_the_objectives_step(method, sigma, params):
    """One loaded batch through the method as the training loop runs it (chunks, replays,
    backward): its FLOPs per image in forward passes are train_work's."""
    model = confident_model().train()
    objective = build_objective(method, sigma, params)
    x, y = torch.rand(4, 1, 8, 8), torch.zeros(4, dtype=torch.long)
    counter = Flops()
    split = objective.batch_split
    with counter:
        for xs, ys in zip(x.tensor_split(split), y.tensor_split(split), strict=True):
            for _ in range(objective.replays):
                loss, _ = objective(model, xs, ys, StepContext(epoch=20, epochs=30))
                model.zero_grad()
                loss.backward()
    measured = counter.total / (len(x) * forward_flops(model))
    expected = cost.train_work(method, resolve_params(method, params)).per_image
    assert measured == pytest.approx(expected, rel=0.01)


def test_double_backprop_is_costed_by_its_measured_time_not_its_flops():
    """DBP runs fewer FLOPs than FD (no second forward pass), yet Finlay & Oberman measured it
    1.9 times slower on CIFAR-10: the model charges FD's passes times that ratio."""
    params = {"norm": "l1", "lam": 1.0, "method": "dbp", "h": 0.01}
    model = confident_model().train()
    counter = Flops()
    with counter:
        loss, _ = build_objective("gradient_norm", None, params)(
            model, torch.rand(4, 1, 8, 8), torch.zeros(4, dtype=torch.long), StepContext(0, 1)
        )
        loss.backward()
    fd = cost.train_work("gradient_norm", params | {"method": "fd"}).per_image
    assert counter.total / (4 * forward_flops(model)) < fd
    assert cost.train_work("gradient_norm", params).per_image == pytest.approx(fd * 9.85 / 5.22)


def test_train_work_by_hand():
    """Forward-pass equivalents per image: a training pass 3 (forward, input and weight
    gradients), an attack step 2 (forward and input gradient)."""
    pgd_at = {"norm": "linf", "eps": 0.03, "steps": 7, "step_size": 0.01}
    # Madry's 7-step PGD-AT: 7 attack steps, the training pass, the clean accuracy's forward
    assert cost.train_work("pgd_at", pgd_at).per_image == 7 * 2 + 3 + 1
    # SmoothAdv m = 4, 10 steps: per copy 10 attack steps and a training pass, one batch a pass
    smoothadv = cost.train_work("smoothadv", resolve_params("smoothadv", {"m": 4, "steps": 10}))
    assert smoothadv == cost.Work(per_image=4 * (10 * 2 + 3), passes=4 * (10 * 2 + 3))
    # MACER m = 16: 16 copies in one pass of 16 times the batch
    assert cost.train_work("macer", resolve_params("macer", {})) == cost.Work(48, 3)
    # ATENT K = 10: 10 forwards with input gradients, a last forward, the weights' backward
    # through the 10 passes mu weighs, the clean accuracy's forward
    atent = {"norm": "l2", "gamma": 0.05, "steps": 10, "step_size": 0.2, "init_radius": 1.0}
    assert cost.train_work("atent", resolve_params("atent", atent)).per_image == 42
    # Free AT m = 8: 8 replays of a training pass (the epochs are divided by 8 already)
    assert cost.train_work("free_at", {"eps": 0.03, "m": 8, "step_size": None}).per_image == 24


@pytest.mark.parametrize(
    "spec",
    [
        {"kind": "none"},
        {"kind": "pgd", "norm": "linf", "eps": 0.03, "steps": 3, "step_size": 0.01, "restarts": 2},
        {"kind": "atent", "norm": "l2", "eps": 0.5, "steps": 4, "step_size": 0.1},
    ],
    ids=lambda s: s["kind"],
)
def test_attack_work_is_the_flops_of_the_attack_job(spec):
    model = confident_model().eval()
    attack = build_attack(spec)
    x, y = torch.rand(6, 1, 8, 8), torch.zeros(6, dtype=torch.long)
    counter = Flops()
    with counter:
        run_attack(model, x, y, attack, batch_size=3, seed=0, device="cpu", progress=False)
    measured = counter.total / (len(x) * forward_flops(model))
    assert measured == pytest.approx(cost.attack_work(attack.settings(), 10).per_image, rel=0.01)


def test_bounds_work_is_the_flops_of_the_bounds_job():
    model = confident_model().eval()
    x, y = torch.rand(6, 1, 8, 8), torch.zeros(6, dtype=torch.long)
    counter = Flops()
    with counter:
        bound_statistics(
            model, x, y, norm="l2", eps=[0.1, 0.2], samples=3, batch_size=3, seed=0,
            device="cpu", progress=False,
        )  # fmt: skip
    measured = counter.total / (len(x) * forward_flops(model))
    assert measured == pytest.approx(cost.bounds_work({"eps": [0.1, 0.2], "samples": 3}).per_image)


def test_every_method_and_attack_kind_has_a_cost_model():
    assert set(cost.TRAIN_WORK) == set(METHODS)
    assert set(cost.ATTACK_WORK) == set(ATTACKS)


def test_training_times_follow_finlay_and_oberman_table_1(paper_config, paper_plan):
    """Their CIFAR-10 training times (Table 1, hours on one GTX 1080 Ti) relative to the
    undefended model's 2.06 h: the FLOP model's ratios for the same rows, within 20%."""
    result = cost.costs(paper_config, ["reports/table1_gradreg.md"], done=False, plan=paper_plan)
    cells = {cell.row: cell.experiments[0] for cell in paper_plan.tables["table1_gradreg"].cells}
    hours = {row: result.jobs["train", exp].seconds for row, exp in cells.items()}
    paper = {"at2": 10.82, "at8": 12.10, "free2": 1.91, "free8": 2.04, "l1_fd_01": 5.22}
    for row, measured in paper.items():
        assert hours[row] / hours["undefended"] == pytest.approx(measured / 2.06, rel=0.2), row


# --- jobs and what is done ------------------------------------------------------------------------


def counts(result: cost.Costs) -> dict[str, tuple[int, int]]:
    """stage -> (jobs, to run), stages with jobs only."""
    return {
        s: (len(result.stage(s)), len(result.pending(s))) for s in cost.STAGES if result.stage(s)
    }


def test_jobs_of_micro_reports(micro_config, micro_plan, tmp_path):
    table2 = cost.costs(micro_config, [TABLE2], tmp_path, plan=micro_plan)
    assert counts(table2) == {"data": (1, 1), "train": (18, 18), "certify": (18, 18)}
    # Figure 2 of the ADRE paper reads T-CERTIFY logs, computed from its certifications' counts
    figure = cost.costs(micro_config, ["reports/figure2_adre.md"], tmp_path, plan=micro_plan)
    assert counts(figure)["tcertify"] == counts(figure)["certify"]
    # a paper is its reports: the same jobs once each
    together = cost.costs(
        micro_config, ["reports/consistency.md", TABLE2], tmp_path, plan=micro_plan
    )
    alone = cost.costs(micro_config, ["reports/consistency.md"], tmp_path, plan=micro_plan)
    assert counts(together) == counts(alone)
    for job in table2.pending():
        assert job.stage not in cost.GPU_STAGES or job.seconds > 0 and job.basis == cost.ESTIMATE


def write(root: Path, files, when: float) -> None:
    for name in files:
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("x")
        os.utime(path, (when, when))


def test_done_jobs_are_left_out_as_a_dry_run_leaves_them(micro_config, micro_plan, tmp_path):
    def result():
        return cost.costs(micro_config, [TABLE2], tmp_path, plan=micro_plan)

    jobs = result().jobs
    data = next(job for job in jobs.values() if job.stage == "data")
    train = next(job for job in jobs.values() if job.stage == "train")
    certify = next(
        job
        for job in jobs.values()
        if job.stage == "certify" and ("train", train.key) in job.upstream
    )
    now = time.time()  # later than the table's spec file, an input of the table job
    write(tmp_path, data.outputs, now + 1000)
    write(tmp_path, train.outputs, now + 2000)
    write(tmp_path, certify.outputs, now + 3000)
    assert counts(result()) == {"data": (1, 0), "train": (18, 17), "certify": (18, 17)}
    assert result().jobs["train", train.key].seconds == 0  # not costed: it will not run

    # a model newer than its certification: the certification runs again (the mtime trigger)
    write(tmp_path, train.outputs[:1], now + 4000)
    assert counts(result()) == {"data": (1, 0), "train": (18, 17), "certify": (18, 18)}

    # the prepared data newer than everything: every job reading it runs, and so on down
    write(tmp_path, data.outputs, now + 5000)
    assert counts(result()) == {"data": (1, 0), "train": (18, 18), "certify": (18, 18)}

    # a report newer than every file it reads is up to date: Snakemake does not remake the
    # files it reads that are missing, since nothing that runs needs them
    write(tmp_path, train.outputs, now + 6000)
    write(tmp_path, certify.outputs, now + 7000)
    write(tmp_path, jobs["table", "table2_mnist"].outputs, now + 8000)
    assert counts(result()) == {"data": (1, 0), "train": (18, 0), "certify": (18, 0)}
    text = cost.render(result(), 1)
    assert "No GPU job to run" in text and "estimate (FLOP model):" not in text


@pytest.mark.slow
def test_done_jobs_match_snakemakes_dry_run(micro_config, micro_plan, tmp_path):
    """Some outputs of two reports written, in an order with inversions: every stage's jobs
    to run are those Snakemake's dry run plans."""
    workdir = workflow_copy(tmp_path)
    targets = ["reports/figure1_adre.md", "reports/table1_gradreg.md"]
    jobs = list(cost.costs(micro_config, targets, workdir, plan=micro_plan).jobs.values())
    rank = {"data": 0, "train": 1, "certify": 2, "tcertify": 4, "attack": 3, "bounds": 2}
    rank |= {"table_cells": 5, "table": 6, "figure": 7, "paper": 8}
    chosen = sorted(jobs[::3] + jobs[1::5], key=lambda j: rank[j.stage] + len(j.key) % 3 / 2)
    for i, job in enumerate(chosen):
        write(workdir, [f for f in job.outputs if not Path(f).is_absolute()], 1e9 + i)
    result = cost.costs(micro_config, targets, workdir, plan=micro_plan)
    ours = {}
    for job in result.jobs.values():
        if not job.done:
            ours[job.stage] = ours.get(job.stage, 0) + 1
    assert 0 < sum(ours.values()) < len(result.jobs)
    planned = planned_jobs(workdir, *targets, "--configfile", "micro.yaml")
    assert ours == {("data" if rule == "dataset" else rule): n for rule, n in planned.items()}


def test_wall_clock_schedules_longest_first_as_inputs_are_ready():
    def job(key, hours, upstream=(), gpus=1):
        return cost.Job(
            "train", key, (), (), tuple(("train", u) for u in upstream), gpus, hours * 3600
        )

    four = [job(k, 1) for k in "abcd"]
    assert cost.wall_clock_hours(four, 1) == pytest.approx(4)
    assert cost.wall_clock_hours(four, 2) == pytest.approx(2)
    assert cost.wall_clock_hours(four, 8) == pytest.approx(1)
    chain = [job("a", 1), job("b", 2, ["a"]), job("c", 1)]
    assert cost.wall_clock_hours(chain, 2) == pytest.approx(3)
    # a data-parallel job on 4 processes: its GPU-hours spread over min(4, GPUs) GPUs
    assert cost.wall_clock_hours([job("p", 8, gpus=4)], 2) == pytest.approx(4)
    done = job("x", 5)
    done.done = True
    assert cost.wall_clock_hours([done, *four], 4) == pytest.approx(1)


# --- measured rates -------------------------------------------------------------------------------


def measured(**train) -> dict:
    return {
        "gpu": "NVIDIA H200",
        "torch": "2.11.0+cu130",
        "date": "2026-01-02",
        "command": "python scripts/gpu_check.py --out gpu-check",
        "archs": {
            "lenet_mnist": {
                "input": [1, 28, 28],
                "forward": {"batch_size": 1000, "fp32": 1.0e6, "bf16": 4.0e6},
                "train": train,
            }
        },
    }


def test_measured_rates_are_preferred_over_the_flop_model(paper_config, paper_plan, tmp_path):
    path = tmp_path / "gpu_rates.yaml"
    gaussian = {"images_per_s": 1.0e5, "batch_size": 256, "precision": "fp32", "params": {}}
    run = {"method": "consistency", "batch_size": 256, "precision": "fp32"}
    consistency4 = run | {"images_per_s": 2.0e4, "params": {"lbd": 1.0, "m": 4}}
    consistency8 = run | {"images_per_s": 1.0e4, "params": {"lbd": 1.0, "m": 8}}
    doc = measured(gaussian=gaussian, consistency_m8=consistency8, consistency_m4=consistency4)
    cost.write_rates(path, doc)
    assert path.read_text().startswith(cost.RATES_FORMAT)
    rates = cost.load_rates(path)
    label = "measured (NVIDIA H200, torch 2.11.0+cu130, 2026-01-02)"

    result = cost.costs(paper_config, [TABLE2], tmp_path, rates=rates, plan=paper_plan)
    for job in result.pending("certify"):  # 10,000 images x (n0 + n) at the fp32 rate
        assert (job.seconds, job.basis) == (10_000 * 100_100 / 1.0e6, label)
    trainings = {job.key.split("-")[2]: job for job in result.pending("train")}
    assert (trainings["gaussian"].seconds, trainings["gaussian"].basis) == (
        90 * 60_000 / 1e5,
        label,
    )
    # m = 2 copies: the nearest run measured, m = 4, has twice the work per image
    assert trainings["consistency"].seconds == pytest.approx(90 * 60_000 / 4.0e4)
    assert trainings["macer"].basis == cost.ESTIMATE
    text = cost.render(result, 4)
    assert re.search(rf"^certify +18 +0 +18 +5\.0 +{re.escape(label)}$", text, re.M), text
    assert f"6 {label}, 12 {cost.ESTIMATE}" in text and "estimate (FLOP model):" in text

    # rates of another precision than the job's are not its rates, nor of other inputs
    bf16 = measured(gaussian=gaussian | {"precision": "bf16"})
    result = cost.costs(paper_config, [TABLE2], tmp_path, rates=bf16, plan=paper_plan)
    assert {job.basis for job in result.pending("train")} == {cost.ESTIMATE}
    assert {job.basis for job in result.pending("certify")} == {label}
    other = measured(gaussian=gaussian)
    other["archs"]["lenet_mnist"]["input"] = [3, 32, 32]
    result = cost.costs(paper_config, [TABLE2], tmp_path, rates=other, plan=paper_plan)
    assert {job.basis for job in result.pending()} == {cost.ESTIMATE, None}


@pytest.mark.parametrize(
    ("change", "says"),
    [
        (lambda d: d.pop("gpu"), "rates.yaml: gpu: need a string"),
        (
            lambda d: d["archs"]["lenet_mnist"]["forward"].update(fp16=1.0),
            "rates.yaml: archs.lenet_mnist.forward.fp16: unknown key",
        ),
        (
            lambda d: d["archs"]["lenet_mnist"]["train"].update(
                macer={
                    "images_per_s": 1.0,
                    "batch_size": 8,
                    "precision": "fp32",
                    "params": {"k": 2},
                }
            ),
            "rates.yaml: archs.lenet_mnist.train.macer.params: unknown parameter 'k'",
        ),
    ],
)
def test_bad_rates_are_refused_naming_the_key(tmp_path, change, says):
    doc = measured()
    change(doc)
    with pytest.raises(ValueError, match=re.escape(says)):
        cost.write_rates(tmp_path / "rates.yaml", doc)
    (tmp_path / "rates.yaml").write_text(yaml.safe_dump(doc))
    with pytest.raises(ValueError, match=re.escape(says)):
        cost.load_rates(tmp_path / "rates.yaml")


def test_no_rates_file_means_the_flop_model(tmp_path):
    assert cost.load_rates(tmp_path / "gpu_rates.yaml") is None


# --- every report, README and the command ---------------------------------------------------------


def test_every_report_target_gets_an_estimate(paper_config, paper_plan, tmp_path):
    names = [*paper_plan.tables, *paper_plan.figures, *paper_plan.papers]
    for name in names:
        result = cost.costs(paper_config, [f"reports/{name}.md"], tmp_path, plan=paper_plan)
        gpu_jobs = [job for job in result.pending() if job.stage in cost.GPU_STAGES]
        settings = name in paper_plan.tables and paper_plan.tables[name].kind == "settings"
        assert bool(gpu_jobs) != settings, name
        assert all(0 < job.seconds < math.inf for job in gpu_jobs), name
        assert "GPU-hours" in cost.render(result, 4)


def readme_block() -> str:
    text = (REPO / "README.md").read_text()
    match = re.search(
        r"<!-- generated by [^\n]*-->\n(.*)\n<!-- end of the generated table -->", text, re.S
    )
    assert match, "README's Hardware and cost table has lost its markers"
    return match[1]


def test_readmes_cost_table_is_the_generated_one(paper_config):
    rates = cost.load_rates(REPO / cost.RATES_FILE)
    assert readme_block() == cost.readme_table(paper_config, rates)


def test_readmes_cost_command_runs(monkeypatch, capsys):
    commands = re.findall(
        r"^python -m robustreg (cost .*)$", (REPO / "README.md").read_text(), re.M
    )
    assert commands
    monkeypatch.chdir(REPO)
    for command in commands:
        assert main(shlex.split(command)) == 0
        out = capsys.readouterr().out
        assert re.search(r"^certify +\d+ +\d+ +\d+ ", out, re.M), out


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (
            ["reports/nope.md"],
            "robustreg cost: error: reports/nope.md: not a report of this config",
        ),
        (["results/models/x/model.pt"], "robustreg cost: error: results/models/x/model.pt: not a"),
        ([TABLE2, "--configfile", "nope.yaml"], "robustreg cost: error: nope.yaml: no such config"),
        ([], "robustreg cost: error: name a report target"),
    ],
)
def test_bad_input_is_one_line_naming_it(monkeypatch, capsys, argv, says):
    monkeypatch.chdir(REPO)
    assert main(["cost", *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith(says) and err.count("\n") == 1, err
