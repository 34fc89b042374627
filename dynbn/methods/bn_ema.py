"""bn_ema: running re-estimation of BN statistics, one exponential moving average per camera.

The robust-BN recipe of continual test-time adaptation (e.g. RoTTA's RBN, Yuan et al. CVPR
2023; the EMA variant of Schneider et al. 2020): every BN layer keeps a moving average of
the statistics of the frames it has seen, updated by each batch *before* normalising it,
so it works at batch size 1 and forgets old domains at a known rate.

State choice: one EMA **per camera** (starting from the source statistics). A camera's
statistics then follow its own corruption, not the mix of every camera's corruptions in
the batch; one global EMA would be a strawman in multi-camera streams. A batch is split by
camera (one forward per camera in it, in order of first appearance).

Hyper-parameter: the momentum is given **per frame**, ``m``; a camera's n frames in a batch
update with ``1 - (1 - m) ** n``, so the forgetting rate in frames is the same at every
batch size. ``MOMENTUM`` was tuned on streams of corrupted training images (see
``dynbn.experiments.stream_tune``). Batch variances are biased (the EMA averages per-batch moments).
"""

from __future__ import annotations

from collections.abc import Hashable

import torch

from ..bn.per_sample import batch_moments, normalise, patched_bn, source_stats
from ..bn.table import bn_layers
from .base import Method, cameras_or_default

# per-frame momentum (time constant ~1/m frames): best of 0.01 / 0.03 / 0.1 / 0.3 on the training
# streams of `dynbn tune-vote --quick --seed 0` (mean accuracy at B = 1 and 16: 0.52 / 0.54 / 0.51 / 0.48)
MOMENTUM = 0.03


class BNEMA(Method):
    """Per-camera moving averages of the BN statistics, updated then used by every batch."""

    name = "bn_ema"
    carries_state = True

    def __init__(self, model, momentum: float = MOMENTUM) -> None:
        super().__init__(model)
        if not 0.0 < momentum <= 1.0:
            raise ValueError(f"momentum per frame must be in (0, 1], got {momentum}")
        self.momentum = float(momentum)
        self.source = source_stats(model)
        self.layers = bn_layers(model)
        self.stats: dict[Hashable, dict[str, tuple[torch.Tensor, torch.Tensor]]] = {}

    def reset(self) -> None:
        self.stats = {}

    @torch.no_grad()
    def forward(self, x, cameras=None, truth=None) -> torch.Tensor:
        return self._per_camera(x, cameras, self._forward_camera)

    @torch.no_grad()
    def predict(self, x, cameras=None, truth=None) -> torch.Tensor:
        """Each camera's frames normalised with its moving averages as they are (a new camera: the checkpoint's)."""
        return self._per_camera(x, cameras, self._predict_camera)

    def _per_camera(self, x, cameras, run) -> torch.Tensor:
        """``run(frames, camera)`` on each camera's frames of the batch, the logits put back in arrival order."""
        cams = cameras_or_default(cameras, len(x))
        groups: dict[Hashable, list[int]] = {}
        for i, cam in enumerate(cams):
            groups.setdefault(cam, []).append(i)
        if len(groups) == 1:
            return run(x, cams[0])
        parts = {cam: run(x[rows], cam) for cam, rows in groups.items()}
        out = next(iter(parts.values())).new_empty(len(x), next(iter(parts.values())).shape[1])
        for cam, rows in groups.items():
            out[rows] = parts[cam]
        return out

    def _forward_camera(self, x: torch.Tensor, camera: Hashable) -> torch.Tensor:
        """Update this camera's EMA with its frames, layer by layer, and normalise with it."""
        state = self.stats.setdefault(camera, dict(self.source))
        m = 1.0 - (1.0 - self.momentum) ** len(x)

        def make(name, bn):
            def fwd(h):
                mean, var = batch_moments(h)
                old_mean, old_var = state[name]
                new = ((1 - m) * old_mean + m * mean, (1 - m) * old_var + m * var)
                state[name] = new
                return normalise(h, bn, *new)
            return fwd

        with patched_bn(self.layers, make):
            return self.model(x)

    def _predict_camera(self, x: torch.Tensor, camera: Hashable) -> torch.Tensor:
        state = self.stats.get(camera, self.source)
        with patched_bn(self.layers, lambda name, bn: lambda h: normalise(h, bn, *state[name])):
            return self.model(x)
