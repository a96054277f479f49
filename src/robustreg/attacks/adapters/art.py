"""The Adversarial Robustness Toolbox's kind (Nicolae et al. 2018; ``Attack.distribution``
"adversarial-robustness-toolbox"): ``cw_linf``, its declaration
(``robustreg.attacks.registry``) with its ``perturb``."""

from __future__ import annotations

import torch
from art.attacks.evasion import CarliniLInfMethod
from art.estimators.classification import PyTorchClassifier
from torch import Tensor, nn

from robustreg.attacks.adapters import fooling
from robustreg.attacks.pgd import project
from robustreg.attacks.registry import CarliniWagnerLinfSettings, implements
from robustreg.attacks.runner import current_device

__all__ = ["CarliniWagnerLinf"]


@implements
class CarliniWagnerLinf(CarliniWagnerLinfSettings):
    def perturb(self, model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
        with current_device(x.device):
            with torch.no_grad():
                classes = model(x[:1]).shape[1]
            classifier = PyTorchClassifier(
                model=model,
                loss=nn.CrossEntropyLoss(),
                input_shape=tuple(x.shape[1:]),
                nb_classes=classes,
                clip_values=(0.0, 1.0),
                device_type="gpu" if x.device.type == "cuda" else "cpu",
            )
            attack = CarliniLInfMethod(
                classifier,
                confidence=self.confidence,
                learning_rate=self.learning_rate,
                max_iter=self.max_iter,
                initial_const=self.initial_const,
                largest_const=self.largest_const,
                const_factor=self.const_factor,
                decrease_factor=self.decrease_factor,
                batch_size=x.shape[0],
                verbose=False,
            )
            found = attack.generate(x.cpu().numpy(), y.cpu().numpy())
        points = project(x, torch.from_numpy(found).to(x), "linf", self.eps)
        with torch.no_grad():
            fooled = model(points).argmax(1) != y
        return fooling(x, points, fooled)
