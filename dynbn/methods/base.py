"""The interface every adaptation method follows, and helpers they share.

A method wraps one classifier (taking [0, 1] frames) and is called as
``forward(x, cameras, truth) -> logits``:

- ``x``: float frames ``B x 3 x H x W`` in [0, 1];
- ``cameras``: one stream id per frame (methods with per-stream state key on it);
- ``truth``: the true domain name per frame, read by oracle arms only.

``predict(x, cameras, truth)`` classifies with the method's current state and changes
nothing: the batches the real-time protocol gives a slow method no time to adapt on. A
method that carries no state from batch to batch (``carries_state = False``) has only the
pretrained model as it stands: its ``predict`` is the plain model (checkpoint statistics).

``reset()`` returns the method to the state it was built in. Methods that change the
model (BN statistics, affine parameters) restore it in ``reset()``; arms sharing one model
object must be run one at a time, with ``reset()`` in between. Detecting methods also say
what they took each frame to be (``last_conditions()``: domain, severity, confidence).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch import nn

from ..bn.table import bn_layers


class Method:
    """Base class: subclasses implement ``forward``; ``__call__`` forwards to it."""

    name = "method"
    needs_truth = False  # True: forward reads each frame's true domain (oracles), which only simulations have
    carries_state = False  # True: a batch changes what the method does to later batches (predict differs from forward)

    def __init__(self, model: nn.Module) -> None:
        self.model = model.eval()

    def forward(self, x: torch.Tensor, cameras: Sequence | None = None, truth: Sequence[str] | None = None) -> torch.Tensor:
        raise NotImplementedError

    def __call__(self, x, cameras=None, truth=None) -> torch.Tensor:
        return self.forward(x, cameras, truth)

    @torch.no_grad()
    def predict(self, x, cameras=None, truth=None) -> torch.Tensor:
        """Logits from the current state, leaving it unchanged (methods that carry no state: the plain model)."""
        if self.carries_state:
            raise NotImplementedError(f"{self.name} carries state from batch to batch and must define predict")
        return self.model(x)

    def reset(self) -> None:
        """Back to the state right after construction (no-op for stateless methods)."""

    def last_conditions(self) -> list[Condition] | None:
        """What the method took each frame of the last batch to be (None for methods that do not detect)."""
        return None


class Condition(NamedTuple):
    """A frame's condition as a detecting method used it: the domain (a corruption, ``clean`` or
    ``unknown``), the severity estimate (None where none is made) and the detector's probability of
    that domain for the frame (None where there is no such probability)."""

    domain: str
    severity: int | None
    confidence: float | None


def cameras_or_default(cameras: Sequence | None, n: int) -> list:
    """One camera id per frame; a missing list means one anonymous camera."""
    if cameras is None:
        return [0] * n
    cams = list(cameras)
    if len(cams) != n:
        raise ValueError(f"{len(cams)} camera ids for a batch of {n} frames")
    return cams


class batch_statistics:
    """Context: BN layers normalise with the current batch's statistics and leave buffers untouched."""

    def __init__(self, model: nn.Module) -> None:
        self.layers = list(bn_layers(model).values())

    def __enter__(self):
        self.saved = [(m.training, m.momentum) for m in self.layers]
        for m in self.layers:
            m.train()
            m.momentum = 0.0  # running = (1 - 0) * running + 0 * batch: buffers unchanged
        return self

    def __exit__(self, *exc) -> None:
        for m, (training, momentum) in zip(self.layers, self.saved):
            m.train(training)
            m.momentum = momentum
