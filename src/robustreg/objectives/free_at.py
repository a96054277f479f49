"""Free adversarial training (Shafahi et al. 2019, "Adversarial Training for Free!",
Algorithm 1), in the linf norm only, the threat model of the paper.

Each minibatch is replayed m times (``replays``; the schedule divides the epochs by m, so the
run takes as many optimizer steps as plain training). On every replay one forward and one
backward pass at ``clip(x + delta, 0, 1)`` give both the parameters' gradient of
``CE(f(x + delta), y)``, for the optimizer step, and its gradient with respect to delta, which
moves delta by one signed step (Algorithm 1's update of delta):

    delta <- clip(delta + step_size * sign(grad_delta), -eps, eps).

delta is ONE batch-shaped tensor, zeros at the start of training and carried on from replay
to replay, batch to batch and epoch to epoch: the next batch starts from the perturbation
found for other images (Algorithm 1 sets delta to 0 once, before its loop over epochs).

What we followed in the authors' code:
- ashafahi/free_adv_train (CIFAR-10, TensorFlow), ``free_train.py``: the step of delta is
  epsilon itself (``new_pert = model.pert + epsilon * sign_pert_grad``, then
  ``clip_by_value(new_pert, -epsilon, epsilon)``), so ``step_size`` defaults to ``eps``;
  ``free_model.py``: delta is a variable of shape [batch size, image] and the model sees
  ``clip_by_value(x + pert, 0, 255)``, delta itself is never clipped to the image box. Both
  gradients come from one ``compute_gradients`` of the same loss. TensorFlow's clip passes
  the gradient where ``x + delta`` lies in the box, its edges included (``in_box``);
  ``torch.clamp`` passes none at the edges, so a pixel at exactly 0 or 1 with delta 0 there
  (a saturated pixel at the start) would never move delta.
- mahyarnajibi/FreeAdversarialTraining (ImageNet, PyTorch), ``main_free.py``, ``train``: the
  model stays in train mode throughout (batch-norm layers normalize every replay by its
  batch, as in plain training); a batch of B < batch size images uses the first B rows of
  the perturbation (``global_noise_data[0:input.size(0)]``) and leaves the rest as they are;
  the perturbation moves after ``loss.backward()`` and before ``optimizer.step()``. Their
  ImageNet setting has ``fgsm_step = clip_eps`` (4/255), the same step-equals-eps rule.

Here the training loop replays each batch (``Objective.replays``), keeps delta in
``StepContext.state`` (so the checkpoint holds it and a resumed run goes on from it) and
calls ``after_backward`` between backward and the optimizer step, where delta moves. Called
outside the loop (no state) delta is zero on every call: the loss is plain cross-entropy.

Logs: ``loss`` (= ``xent``) and ``adv_acc``, the accuracy of the loss's own logits at
``x + delta`` (the authors' ``prec1``). There is no clean accuracy: it would cost a forward
pass the method exists to save.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from robustreg.objectives.base import Objective, StepContext
from robustreg.objectives.common import accuracy, as_floats
from robustreg.objectives.settings import FreeAtSettings

__all__ = ["FreeAt", "in_box"]


def in_box(x: torch.Tensor) -> torch.Tensor:
    """``clip(x, 0, 1)`` whose gradient passes where 0 <= x <= 1, edges included, as
    TensorFlow's ``clip_by_value`` (the authors' CIFAR code); zero outside."""
    return torch.where((x >= 0) & (x <= 1), x, x.detach().clamp(0.0, 1.0))


class FreeAt(FreeAtSettings, Objective):
    """Free adversarial training (Algorithm 1); see the module docstring, and
    ``settings.FreeAtSettings`` for the hyperparameters."""

    @property
    def replays(self) -> int:
        return self.m

    def __call__(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, ctx: StepContext
    ) -> tuple[torch.Tensor, dict[str, float]]:
        if ctx.state is None:
            delta = torch.zeros_like(x)
        else:
            # a leaf of its own, so the backward pass leaves grad_delta in its .grad
            delta = self._kept(ctx, x)[: x.shape[0]].clone().requires_grad_(True)
            ctx.scratch["delta"] = delta
        logits = model(in_box(x + delta)).float()
        loss = F.cross_entropy(logits, y)
        return loss, as_floats(loss=loss, xent=loss, adv_acc=accuracy(logits, y))

    def after_backward(self, ctx: StepContext) -> None:
        """Algorithm 1's signed step of delta, from this step's backward pass."""
        delta = ctx.scratch.get("delta")
        if delta is None or delta.grad is None:
            return
        step = self.eps if self.step_size is None else self.step_size
        kept = ctx.state["delta"][: delta.shape[0]]  # a view: the rows of this batch
        kept.add_(delta.grad.sign(), alpha=step).clamp_(-self.eps, self.eps)

    @staticmethod
    def _kept(ctx: StepContext, x: torch.Tensor) -> torch.Tensor:
        """The run's delta in ``ctx.state``; zeros shaped as the first batch (the largest)."""
        if "delta" not in ctx.state:
            ctx.state["delta"] = torch.zeros_like(x)
        kept = ctx.state["delta"]
        if kept.shape[0] < x.shape[0] or kept.shape[1:] != x.shape[1:]:
            raise ValueError(
                f"state: a batch shaped {tuple(x.shape)} does not fit the kept perturbation "
                f"shaped {tuple(kept.shape)}"
            )
        return kept
