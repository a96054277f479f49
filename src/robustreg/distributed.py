"""What data-parallel training needs of ``torch.distributed`` (Feng et al. 2020 train
ImageNet models on 4 GPUs): this process's rank, its share of every batch, its own noise
stream, and the collectives that keep the ranks in step. With one process (no process group)
each is the single process's own value, and no collective runs.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.distributed as dist

__all__ = [
    "mean_over_ranks",
    "means_over_ranks",
    "on_any_rank",
    "rank_and_world",
    "rank_chunks",
    "rank_seed",
]


def rank_and_world(processes) -> tuple[int, int]:
    """This process's rank and the number of ranks; (0, 1) without a process group.

    Refuses a schedule whose ``processes`` differs from the process group's size: ranks
    would take the wrong shares of each batch.
    """
    if not isinstance(processes, int) or isinstance(processes, bool) or processes < 1:
        raise ValueError(f"schedule.processes: need an integer >= 1, got {processes!r}")
    rank, world = (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)
    if world != processes:
        raise ValueError(
            f"schedule.processes is {processes} but this process is one of {world} "
            "(python -m robustreg train starts the processes a schedule asks for)"
        )
    return rank, world


def rank_seed(seed: int, rank: int) -> int:
    """A seed of torch's global generator for rank ``rank`` > 0, independent of the others."""
    return int(np.random.SeedSequence([seed, rank]).generate_state(1, np.uint64)[0])


def rank_chunks(
    order: torch.Tensor, batch_size: int, batch_split: int, rank: int, world: int
) -> list[tuple[torch.Tensor, float]]:
    """This rank's steps of an epoch: the chunk of ``order`` each trains on, and its weight.

    Each global batch of ``batch_size`` indices is dealt out to the ``world`` ranks
    (``batch[rank::world]``) and each rank cuts its share into ``batch_split`` chunks, one
    optimizer step per chunk, so step j of every rank belongs to the same global chunk. A
    step is taken only where no rank's chunk is empty: a rank that skipped it would leave
    the others waiting in backward's all-reduce. DDP averages the ranks' gradients of their
    mean losses; when the shares differ in size (the last batch), ``weight`` scales a rank's
    loss by its share of the global chunk, so the step still follows the mean loss over the
    global chunk, as a single process's would. With one rank this is ``order``'s batches
    cut as before, weights 1.
    """
    plan = []
    for batch in order.split(batch_size):
        shares = [batch[r::world].tensor_split(batch_split) for r in range(world)]
        for parts in zip(*shares, strict=True):
            sizes = [len(part) for part in parts]
            if min(sizes) > 0:
                plan.append((parts[rank], sizes[rank] * world / sum(sizes)))
    return plan


def mean_over_ranks(value: torch.Tensor, world: int) -> torch.Tensor:
    """The mean of a scalar over the ranks (collective); the value itself with one rank."""
    if world == 1:
        return value
    total = value.float().clone()
    dist.all_reduce(total)
    return total / world


def on_any_rank(flag: bool, device: torch.device, world: int) -> bool:
    """Whether ``flag`` holds on some rank (collective); ``flag`` itself with one rank."""
    if world == 1:
        return flag
    anywhere = torch.tensor([int(flag)], device=device)
    dist.all_reduce(anywhere, op=dist.ReduceOp.MAX)
    return bool(anywhere.item())


def means_over_ranks(values: dict[str, float], device: torch.device, world: int) -> dict:
    """Each value averaged over the ranks, in one all-reduce; ``values`` with one rank."""
    if world == 1:
        return values
    stacked = torch.tensor(list(values.values()), dtype=torch.float64, device=device)
    dist.all_reduce(stacked)
    return dict(zip(values, (stacked / world).tolist(), strict=True))
