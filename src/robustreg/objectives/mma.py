"""MMA: Max-Margin Adversarial training (Ding et al., ICLR 2020; equations numbered as in
the OpenReview version, HkeryxBtPB).

The margin of a correctly classified example is the length of its shortest successful
perturbation delta* (Eqs. 1-2). MMA maximizes every margin up to a cap d_max by minimizing
the loss AT delta*, and fits misclassified examples on their clean inputs (Eq. 7):

    L^MMA = (1/B) [ sum_{i in S+, d_i < d_max} CE(f(x_i + delta*_i), y_i)
                    + sum_{j in S-} CE(f(x_j), y_j) ],

S+ / S- the examples the model gets right / wrong, d_i = ||delta*_i||. Training minimizes
the mix with the clean loss of Eq. (8) (``clean_loss_coeff`` c = 1/3 throughout the paper;
c = 0 is their "OMMA"):

    L = c * (1/B) sum_j CE(f(x_j), y_j) + (1 - c) * L^MMA.

delta* comes from AN-PGD (Sec. 2.3; ``margin_search``): PGD at a starting radius, then a
bisection search along the PGD direction for the shortest length that still fools the model.

What we followed in the authors' code (github:BorealisAI/mma_training):
- ``trainer.py``, ``Trainer.train_one_batch``: S+ is the clean batch's soft logit margin
  (SLM) < 0, from a train-mode forward pass; AN-PGD runs on S+ only; one more train-mode
  pass on the batch with S+ replaced by its AN-PGD points gives L^MMA, summed and divided by
  the full batch size; examples whose eps reaches ``hinge_maxeps`` drop out of it. The clean
  and MMA gradients are combined as ``(1 - c) * grad L^MMA + c * grad L^clean``
  (``GradCloner.combine_grad``), which is the gradient of L above.
- ``config.py``: PGD ascends SLM with a random start, step size ``eps_iter_scale * eps /
  nb_iter`` (2.5 eps / steps); 10 bisection steps; c = 1/3. Steps (MNIST 40, CIFAR-10 10)
  and the starting radius ``attack_mineps`` (l2 MNIST 0.5, linf MNIST 0.1, l2 CIFAR-10 0.5,
  linf CIFAR-10 0.005) depend on the dataset, so they have no default here.
- ``train.py``, ``get_adversaries``: the search looks up to 1.05 d_max (``attack_maxeps``).
- ``trainer.py``, ``TrainEvalMixin.get_eps`` / ``update_eps``: each training example's last
  eps, kept by its dataset index, is the radius of its next PGD (``ANPGD.perturb`` sets the
  PGD's eps to that per-example tensor and its step to 2.5 eps / steps) and the bisection's
  first length; it is read as ``max(attack_mineps, last)``, ``attack_mineps`` on the first
  visit. After every step the eps of every example of the batch is stored, 0 for S- (its
  ``curr_eps``), so a misclassified example starts again from ``attack_mineps``. That
  growth of each example's eps is MMA's only warm-up (it has no eps schedule), so ours has
  none. Here the training loop keeps the memory (``StepContext.state``, by position in the
  training split) and its checkpoint holds it, so a resumed run searches as an
  uninterrupted one.

Where we differ, and why:
- ``robustreg.attacks.pgd`` takes one radius per call, so ``margin_search`` runs one PGD per
  distinct starting eps of the batch. In eval mode an example's PGD does not depend on the
  others of its batch, so only the order of the random starts' draws differs from one
  batched PGD with a per-example radius, but every call costs ``steps`` passes.
- Called outside the training loop (no ``StepContext.state``), every search starts at
  ``init_eps``.
- ``margin_search`` returns the shortest length it verified to fool the model, not the
  bisection's last midpoint (``anpgd.py``, ``bisection_search``), and the point it verified,
  clipped into [0, 1] (``ANPGD.perturb`` returns it unclipped).
- The PGD is the package's (``robustreg.attacks.pgd``): its l2 random start is uniform in the
  ball, advertorch's (``rand_init_delta``) a uniform point of the image box pulled into it.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from robustreg.attacks.pgd import eval_mode, per_example, pgd
from robustreg.objectives.base import Objective, StepContext
from robustreg.objectives.common import accuracy, as_floats
from robustreg.objectives.settings import MMASettings, require

__all__ = ["MMA", "SEARCH_HEADROOM", "margin_search", "mma_loss", "soft_logit_margin"]

# The search looks this far past d_max (mma_training train.py, get_adversaries), so an
# example whose margin reached d_max is seen to have reached it and leaves the hinge.
SEARCH_HEADROOM = 1.05


def soft_logit_margin(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-example SLM ``logsumexp_{j != y} z_j - z_y`` [B] (Sec. 2.2), in float32.

    Negative means right with some confidence (it bounds the logit margin
    ``max_{j != y} z_j - z_y`` from above); with two classes the two coincide. As advertorch's
    ``soft_logit_margin_loss``, which MMA uses to attack, to search and to pick S+.
    """
    z = logits.float()
    true = z.gather(1, y.view(-1, 1)).squeeze(1)
    others = z.scatter(1, y.view(-1, 1), -math.inf)
    return torch.logsumexp(others, dim=1) - true


def margin_search(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    norm: str,
    init_eps: float | torch.Tensor,
    max_eps: float,
    steps: int,
    step_scale: float,
    search_steps: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """AN-PGD (Sec. 2.3): per-example shortest successful eps [B] found, and its points.

    ``init_eps`` is one starting radius for the batch or one per example [B] (MMA's last eps
    of each). PGD of ``steps`` steps of size ``step_scale * init_eps / steps`` ascends the SLM
    in the ``norm`` ball of radius ``init_eps`` around ``x`` (random start, model in eval mode
    as MMA's ``ctx_noparamgrad_and_eval``; ANPGD.perturb's per-example eps). Its perturbation,
    divided by ``init_eps``, gives a direction u with ``||u|| <= 1``; the search then bisects
    ``t`` in [0, ``max_eps``] on the ray ``clip(x + t u, 0, 1)``, starting at ``init_eps`` and
    calling a point successful when its SLM is >= 0. The PGD point's verdict opens the
    bracket, each of ``search_steps`` halvings costs one forward pass, and every verdict
    narrows it. These passes run without gradients in the mode the caller left the model in
    (MMA's ``ANPGD._get_unitptb_and_eps`` runs outside the eval context, so during training
    they run in train mode).

    Returns ``eps`` and ``x_adv``: the shortest ``t`` verified successful and its point, so
    ``||x_adv - x|| <= eps`` and no eps is below the example's SLM margin; ``max_eps`` and the
    ray's point there where no tried length succeeded. The result is detached.
    """
    batch = x.shape[0]
    # float64, so that a float init_eps reaches the PGD exactly as given
    start = torch.as_tensor(init_eps, dtype=torch.float64, device=x.device).expand(batch)
    lowest, highest = torch.stack(start.aminmax()).tolist()
    require(
        lowest > 0 and highest <= max_eps,
        "init_eps",
        f"need 0 < init_eps <= {max_eps}, got values from {lowest} to {highest}",
    )
    x = x.detach()
    # one radius per example, in the images' dtype; a float stays a float
    radius = init_eps if isinstance(init_eps, float) else start.to(x.dtype)
    with eval_mode(model):
        x_pgd = pgd(
            model,
            x,
            y,
            norm=norm,
            eps=radius,
            steps=steps,
            step_size=step_scale * radius / steps,
            loss=soft_logit_margin,
        )
    t = start.to(x.dtype)
    direction = (x_pgd - x) / per_example(t, x)
    low = torch.zeros_like(t)
    high = torch.full_like(t, max_eps)

    def along(lengths: torch.Tensor) -> torch.Tensor:
        return (x + lengths.view(-1, *([1] * (x.dim() - 1))) * direction).clamp(0.0, 1.0)

    best = along(high)
    point = x_pgd
    with torch.no_grad():
        for step in range(search_steps + 1):
            fooled = soft_logit_margin(model(point), y) >= 0
            high = torch.where(fooled, t, high)
            low = torch.where(fooled, low, t)
            best = torch.where(fooled.view(-1, *([1] * (x.dim() - 1))), point, best)
            if step < search_steps:
                t = (low + high) / 2
                point = along(t)
    return high, best


def mma_loss(
    logits: torch.Tensor,
    y: torch.Tensor,
    correct: torch.Tensor,
    eps: torch.Tensor,
    hinge_max: float,
) -> torch.Tensor:
    """L^MMA of Eq. (7) for a batch, over the batch size B.

    ``logits`` [B, C] are the model's on the AN-PGD points of the examples in S+ (``correct``)
    and on the clean inputs of the rest; an example of S+ counts only while its ``eps`` is
    below ``hinge_max`` (d_max): past it the hinge ``max(0, d_max - d)`` of MMA's max-margin
    objective is flat.
    """
    per_example = F.cross_entropy(logits.float(), y, reduction="none")
    counted = ~correct | (eps < hinge_max)
    return torch.where(counted, per_example, torch.zeros_like(per_example)).sum() / y.shape[0]


class MMA(MMASettings, Objective):
    """MMA training (Eq. 8 with Eq. 7 and AN-PGD); see the module docstring, and
    ``settings.MMASettings`` for the hyperparameters.

    Logs: ``loss``; ``xent`` and ``acc`` on the clean batch; ``mma`` (L^MMA); ``adv_acc`` on
    the inputs L^MMA sees (for S+ the search's points, where an example is mostly right only
    when no length below 1.05 d_max brought its SLM to >= 0); ``eps``, the batch mean of the
    adaptive eps (0 outside S+, as the authors' ``avgeps``).
    """

    def __call__(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, ctx: StepContext
    ) -> tuple[torch.Tensor, dict[str, float]]:
        logits = model(x)
        clean = F.cross_entropy(logits.float(), y)
        correct = soft_logit_margin(logits.detach(), y) < 0
        eps = torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)
        x_mma = x.detach()
        max_eps = SEARCH_HEADROOM * self.hinge_max
        memory = None if ctx.state is None else self._memory(ctx)
        if correct.any():
            if memory is None:
                start = self.init_eps
            else:
                # max(attack_mineps, last) as get_eps; the upper clip only undoes float32
                # rounding of a stored max_eps
                start = memory[ctx.indices[correct]].clamp(self.init_eps, max_eps)
            found, x_adv = margin_search(
                model,
                x[correct],
                y[correct],
                norm=self.norm,
                init_eps=start,
                max_eps=max_eps,
                steps=self.steps,
                step_scale=self.step_scale,
                search_steps=self.search_steps,
            )
            eps[correct] = found
            x_mma = x_mma.clone()
            x_mma[correct] = x_adv
        if memory is not None:
            memory[ctx.indices] = eps.to(memory.dtype)  # every example, 0 for S- (update_eps)
        mma_logits = model(x_mma)
        margin_term = mma_loss(mma_logits, y, correct, eps, self.hinge_max)
        c = self.clean_loss_coeff
        loss = c * clean + (1 - c) * margin_term
        return loss, as_floats(
            loss=loss,
            xent=clean,
            mma=margin_term,
            acc=accuracy(logits, y),
            adv_acc=accuracy(mma_logits, y),
            eps=eps.mean(),
        )

    def _memory(self, ctx: StepContext) -> torch.Tensor:
        """Every training example's last eps [num_examples] in ``ctx.state``; ``init_eps``
        before its first search (float64: ``init_eps`` exactly, and every float32 eps)."""
        if "eps" not in ctx.state:
            ctx.state["eps"] = torch.full(
                (ctx.num_examples,), self.init_eps, dtype=torch.float64, device=ctx.indices.device
            )
        return ctx.state["eps"]
