"""source: the checkpoint as it is, with its own (clean training) BN statistics."""

from __future__ import annotations

import torch

from .base import Method


class Source(Method):
    """No adaptation: the pretrained model in eval mode."""

    name = "source"

    @torch.no_grad()
    def forward(self, x, cameras=None, truth=None) -> torch.Tensor:
        return self.model(x)
