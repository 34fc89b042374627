"""tent: test-time entropy minimisation over the BN affine parameters (Wang et al. 2021).

Wang, Shelhamer, Liu, Olshausen, Darrell, "Tent: Fully Test-Time Adaptation by Entropy
Minimization", ICLR 2021 (github.com/DequanWang/tent). BN layers normalise with the current
batch's statistics; each batch takes one Adam step on the mean softmax entropy of its
predictions, updating only the BN scales and shifts; the returned logits are those of the
forward before the step (as in the authors' ``forward_and_adapt``).

Hyper-parameters, the authors' CIFAR-10-C defaults (``cfgs/cifar10/tent.yaml``): Adam,
lr 1e-3, betas (0.9, 0.999), weight decay 0, one step per batch, no episodic reset:
continual, as deployed. One global model for every camera, as published.

Tent works on its own deep copy of the model, so the model shared by the other arms is
never touched; ``reset()`` restores the copy's parameters and the optimizer state exactly.
Cost: a backward pass per batch (about three forwards).
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from ..bn.table import bn_layers
from .base import Method

LR = 1e-3
BETAS = (0.9, 0.999)


def configure(model: nn.Module) -> list[nn.Parameter]:
    """Train mode with batch statistics only; BN affine parameters are the only trainable ones."""
    model.train()
    model.requires_grad_(False)
    params = []
    for bn in bn_layers(model).values():
        bn.track_running_stats = False  # normalise with batch statistics, keep no running ones
        bn.running_mean, bn.running_var = None, None
        for p in (bn.weight, bn.bias):
            if p is not None:
                p.requires_grad_(True)
                params.append(p)
    if not params:
        raise ValueError("tent needs affine BN layers (weight/bias); this model's BN layers have none")
    return params


def softmax_entropy(logits: torch.Tensor) -> torch.Tensor:
    """Entropy of the softmax of each row of ``B x classes`` logits: (B,)."""
    return -(logits.softmax(1) * logits.log_softmax(1)).sum(1)


class Tent(Method):
    """Continual tent on a private copy of the model."""

    name = "tent"
    carries_state = True

    def __init__(self, model, lr: float = LR, betas: tuple[float, float] = BETAS,
                 weight_decay: float = 0.0, steps: int = 1) -> None:
        super().__init__(model)
        if steps < 1:
            raise ValueError(f"tent needs at least one step per batch, got steps={steps}")
        self.model = copy.deepcopy(model)
        params = configure(self.model)
        self.optimizer = torch.optim.Adam(params, lr=lr, betas=betas, weight_decay=weight_decay)
        self.steps = steps
        self._model_state = copy.deepcopy(self.model.state_dict())
        self._optimizer_state = copy.deepcopy(self.optimizer.state_dict())

    def reset(self) -> None:
        self.model.load_state_dict(self._model_state)
        self.optimizer.load_state_dict(copy.deepcopy(self._optimizer_state))

    @torch.enable_grad()
    def forward(self, x, cameras=None, truth=None) -> torch.Tensor:
        for _ in range(self.steps):
            logits = self.model(x)
            loss = softmax_entropy(logits).mean()
            loss.backward()
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
        return logits.detach()

    @torch.no_grad()
    def predict(self, x, cameras=None, truth=None) -> torch.Tensor:
        """The adapted model on the batch (batch statistics, as tent normalises), no step."""
        return self.model(x)
