"""unmix_tns: un-mixing test-time normalisation statistics (Tomar et al., ICLR 2024).

Tomar, Vray, Bozorgtabar, Thiran, "Un-Mixing Test-Time Normalization Statistics: Combatting
Label Temporal Correlation", ICLR 2024 (github.com/devavratTomar/unmixtns). Every BN layer
keeps K statistics components, initialised around the source statistics. For each frame and
layer: its instance mean (C,) is compared (cosine similarity / temperature, softmax) with the
components' means; each component's statistics are blended with the frame's instance
statistics by that assignment, and the frame is normalised with the moments of the equally
weighted mixture of the K blended components. The components then move towards the frames
assigned to them (an EMA weighted by the assignment).

Why this method next to RoTTA (Yuan et al., CVPR 2023; ``dynbn.methods.rotta``): both target
non-i.i.d. streams, but RoTTA runs a teacher forward on every batch plus, every 64 frames, a student forward and
backward over its 64-frame memory bank with strong augmentation, i.e. several times the
classifier's cost per frame and a latency spike every 64 frames at batch size 1. UnMix-TNS
needs no backward pass and no memory: its extra cost is O(B K C) per BN layer, small against
the convolutions, so it is affordable at B = 1 and compares like for like with the other
statistics-only arms. It is also per-sample within a batch: a frame's output depends on the
stream's past, not on its batch-mates.

Hyper-parameters, the authors' defaults: K = 16 components, initial spread alpha = 0.5
(means = source mean + sqrt(alpha K / (K - 1)) * source std * N(0, 1), variances =
(1 - alpha) * source variance), temperature 0.07, momentum 1 - (1 - 0.1) ** (B / 64) (the BN
momentum 0.1 rescaled to the batch size, B_max = 64). One global state for all cameras, as
published. The random initialisation is seeded, so ``reset()`` restores it exactly.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..bn.per_sample import instance_moments, normalise_per_sample, patched_bn, source_stats
from ..bn.table import bn_layers
from .base import Method

COMPONENTS = 16
ALPHA = 0.5
TEMPERATURE = 0.07
BASE_MOMENTUM = 0.1
BATCH_MAX = 64


def init_components(mean: torch.Tensor, var: torch.Tensor, k: int, alpha: float,
                    gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """K components (K x C means, K x C variances) spread around one layer's source statistics."""
    if k == 1:
        return mean[None].clone(), var[None].clone()
    noise = torch.randn((k, len(mean)), generator=gen, dtype=mean.dtype).to(mean.device)  # same draws on any device
    means = mean[None] + math.sqrt(alpha * k / (k - 1)) * var.sqrt()[None] * noise
    return means, ((1 - alpha) * var)[None].repeat(k, 1)


class UnMixTNS(Method):
    """K mixture components of BN statistics per layer, un-mixed per frame."""

    name = "unmix_tns"
    carries_state = True

    def __init__(self, model, components: int = COMPONENTS, alpha: float = ALPHA, temperature: float = TEMPERATURE,
                 base_momentum: float = BASE_MOMENTUM, batch_max: int = BATCH_MAX, seed: int = 0) -> None:
        super().__init__(model)
        if components < 1:
            raise ValueError(f"need at least one component, got {components}")
        self.temperature, self.base_momentum, self.batch_max = temperature, base_momentum, batch_max
        gen = torch.Generator().manual_seed(seed)
        self.layers = bn_layers(model)
        self.initial = {name: init_components(m, v, components, alpha, gen) for name, (m, v) in source_stats(model).items()}
        self.reset()

    def reset(self) -> None:
        self.components = {name: (m.clone(), v.clone()) for name, (m, v) in self.initial.items()}

    def _layer(self, name: str, bn, momentum: float):
        def fwd(h: torch.Tensor) -> torch.Tensor:
            m, v = instance_moments(h)                                      # B x C instance statistics
            mu, var_k = self.components[name]                               # K x C
            k = len(mu)
            sim = F.normalize(m, dim=1) @ F.normalize(mu, dim=1).T          # B x K cosine similarity
            p = (sim / self.temperature).softmax(dim=1)                     # B x K
            # component k blended for sample b: (1 - p_bk) mu_k + p_bk m_b (and so for variances);
            # the moments of their equal-weight mixture, summed over k in closed form (sum_k p_bk = 1)
            mean = (mu.sum(0) - p @ mu + m) / k
            second = ((1 - p) ** 2 @ mu**2 + 2 * m * (((1 - p) * p) @ mu) + (p**2).sum(1, keepdim=True) * m**2) / k
            var = (var_k.sum(0) - p @ var_k + v) / k + second - mean**2
            weight = p.sum(0)[:, None]                                      # K x 1
            if momentum:
                self.components[name] = (mu + momentum * (p.T @ m - weight * mu) / len(m),
                                         var_k + momentum * (p.T @ v - weight * var_k) / len(m))
            return normalise_per_sample(h, bn, mean, var.clamp_min(0.0))
        return fwd

    @torch.no_grad()
    def forward(self, x, cameras=None, truth=None) -> torch.Tensor:
        return self._run(x, 1.0 - (1.0 - self.base_momentum) ** (len(x) / self.batch_max))

    @torch.no_grad()
    def predict(self, x, cameras=None, truth=None) -> torch.Tensor:
        """Frames un-mixed against the components as they are; the components do not move."""
        return self._run(x, 0.0)

    def _run(self, x: torch.Tensor, momentum: float) -> torch.Tensor:
        with patched_bn(self.layers, lambda name, bn: self._layer(name, bn, momentum)):
            return self.model(x)
