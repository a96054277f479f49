"""Per-example state of an objective in the training loop: the batch's positions in the split,
and MMA's memory of each example's last eps (Ding et al. 2020; BorealisAI/mma_training
trainer.py, get_eps / update_eps) kept across steps and epochs, checkpointed and resumed."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import lenet_experiment, same_weights, train_killed_then_resumed

import robustreg.checkpoints as checkpoints_module
import robustreg.distributed as distributed_module
import robustreg.objectives.mma as mma_module
import robustreg.train as train_module
from robustreg.data import save_split
from robustreg.objectives import REGISTRY, keeps_state
from robustreg.objectives.mma import MMA, SEARCH_HEADROOM
from robustreg.schedule import holdout_positions
from robustreg.train import train

MMA_PARAMS = {"norm": "l2", "hinge_max": 1.0, "init_eps": 0.3, "steps": 2, "search_steps": 3}
MAX_EPS = SEARCH_HEADROOM * MMA_PARAMS["hinge_max"]
EARLY_STOP = {"val_images": 10, "norm": "linf", "eps": 0.1, "steps": 2, "step_size": 0.05}


@pytest.fixture
def indexed_split(tmp_path):
    """Synthetic, MNIST-shaped: 40 images of random noise, dark for class 0 and bright for
    class 1, whose first pixel is 6 * i for image i, so a batch tells which images it holds.
    A two-class LeNet gets most of them right within the first epoch and keeps them right,
    so the second epoch's searches start from eps found in the first."""
    rng = np.random.default_rng(0)
    y = np.arange(40) % 2
    x = (rng.integers(0, 128, size=(40, 1, 28, 28)) + 128 * y[:, None, None, None]).astype(np.uint8)
    x[:, 0, 0, 0] = 6 * np.arange(40)
    path = tmp_path / "train.npz"
    save_split(path, x, y)
    return path


def positions(x: torch.Tensor) -> list[int]:
    return torch.round(x[:, 0, 0, 0] * 255 / 6).long().tolist()


def experiment(method="mma", **schedule) -> dict:
    base = lenet_experiment(**schedule)
    return base | {
        "data": base["data"] | {"augment": "none"},
        "num_classes": 2,
        "method": method,
        "params": MMA_PARAMS if method == "mma" else {},
        "sigma": None if method == "mma" else 0.25,
    }


def test_only_mma_and_free_at_keep_state():
    assert [name for name in sorted(REGISTRY) if keeps_state(name)] == ["free_at", "mma"]


def test_mma_memory_carries_each_examples_eps_across_steps_and_epochs(
    tmp_path, indexed_split, monkeypatch
):
    """With early stopping's hold-out: the indices name the batch's images by their position
    in the whole split; each search starts from max(init_eps, the example's last eps); after
    the step the batch's examples hold their new eps and no other entry moves; the memory
    goes on from one epoch to the next."""
    steps = []
    call, search = MMA.__call__, mma_module.margin_search

    def recording_call(self, net, x, y, ctx):
        memory = ctx.state.get("eps")
        step = {"epoch": ctx.epoch, "indices": ctx.indices.tolist(), "images": positions(x)}
        step |= {"before": None if memory is None else memory.clone(), "searches": []}
        steps.append(step)
        result = call(self, net, x, y, ctx)
        step["after"] = ctx.state["eps"].clone()
        return result

    def recording_search(model, x, y, **kwargs):
        eps, x_adv = search(model, x, y, **kwargs)
        steps[-1]["searches"].append((positions(x), kwargs["init_eps"].clone(), eps.clone()))
        return eps, x_adv

    monkeypatch.setattr(MMA, "__call__", recording_call)
    monkeypatch.setattr(mma_module, "margin_search", recording_search)
    train(experiment(early_stop=EARLY_STOP), indexed_split, tmp_path / "run", progress=False)

    held = holdout_positions(np.arange(40) % 2, 10, seed=0).tolist()
    assert [step["epoch"] for step in steps] == [0, 0, 1, 1]  # 30 images, batches of 16
    assert steps[0]["before"] is None
    memory = torch.full((40,), 0.3, dtype=torch.float64)  # init_eps before any search
    for step in steps:
        assert step["indices"] == step["images"] and not set(step["indices"]) & set(held)
        if step["before"] is not None:
            assert torch.equal(step["before"], memory)  # what the last step left
        expected = memory.clone()
        expected[step["indices"]] = 0.0  # S- holds 0
        for searched, start, found in step["searches"]:
            assert torch.equal(start, memory[searched].clamp(0.3, MAX_EPS))
            expected[searched] = found.double()
        assert torch.equal(step["after"], expected)
        memory = step["after"]
    assert memory[held].tolist() == [0.3] * 10
    starts = [start for step in steps[2:] for _, start, _ in step["searches"]]
    assert (torch.cat(starts) != 0.3).any()  # the first epoch's eps were searched from


def test_killed_mma_run_resumes_with_its_memory(tmp_path, indexed_split, monkeypatch):
    """The checkpoint holds the memory (model.pt does not); a run killed after epoch 1 and
    resumed equals an uninterrupted one, and one resumed with a fresh memory does not."""
    full = train(experiment(), indexed_split, tmp_path / "full", progress=False)
    saved, save = [], checkpoints_module.atomic_save

    def recording(obj, path):
        saved.append((path.name, obj))
        save(obj, path)

    monkeypatch.setattr(checkpoints_module, "atomic_save", recording)
    resumed = train_killed_then_resumed(
        experiment(), indexed_split, tmp_path / "resumed", monkeypatch
    )
    assert same_weights(full, resumed)
    cols = ["loss", "xent", "mma", "acc", "adv_acc", "eps"]
    pd.testing.assert_frame_equal(
        pd.read_csv(tmp_path / "full" / "history.csv")[cols],
        pd.read_csv(tmp_path / "resumed" / "history.csv")[cols],
    )
    checkpoint = next(obj for name, obj in saved if name == "checkpoint.pt")
    memory = checkpoint["objective_state"]["eps"]
    assert memory.shape == (40,) and (memory != 0.3).any()
    assert "objective_state" not in torch.load(resumed, weights_only=True)

    # the same kill, but the checkpoint's memory back at init_eps: another model
    forgetful = tmp_path / "forgetful"
    forgetful.mkdir()
    checkpoint["objective_state"]["eps"] = torch.full_like(memory, 0.3)
    save(checkpoint, forgetful / "checkpoint.pt")
    other = train(experiment(), indexed_split, forgetful, progress=False)
    assert not same_weights(full, other)


def test_stateless_objectives_see_indices_but_no_state(tmp_path, indexed_split, monkeypatch):
    contexts = []
    build = train_module.build_objective

    def recording(*args):
        objective = build(*args)

        class Recording:
            batch_split = objective.batch_split

            def __call__(self, net, x, y, ctx):
                contexts.append((ctx.indices.tolist(), positions(x), ctx.state, ctx.num_examples))
                return objective(net, x, y, ctx)

        return Recording()

    saved, save = [], checkpoints_module.atomic_save

    def saving(obj, path):
        saved.append(obj)
        save(obj, path)

    monkeypatch.setattr(train_module, "build_objective", recording)
    monkeypatch.setattr(checkpoints_module, "atomic_save", saving)
    train(experiment("gaussian", epochs=1), indexed_split, tmp_path / "run", progress=False)
    assert sorted(i for indices, *_ in contexts for i in indices) == list(range(40))
    assert all(
        indices == seen and state is None and n == 40 for indices, seen, state, n in contexts
    )
    assert all("objective_state" not in obj for obj in saved)


def test_multi_process_runs_of_a_method_with_state_are_refused(
    tmp_path, indexed_split, monkeypatch
):
    monkeypatch.setattr(distributed_module, "rank_and_world", lambda processes: (0, 2))
    with pytest.raises(
        ValueError, match="^schedule.processes: method 'mma' keeps per-example state, not supp"
    ):
        train(experiment(), indexed_split, tmp_path / "ddp", progress=False)
