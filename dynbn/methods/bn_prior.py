"""bn_prior: the source statistics as a prior on the test batch's (Schneider et al. 2020).

Schneider, Rusak, Eck, Bringmann, Brendel, Bethge, "Improving robustness against common
corruptions by covariate shift adaptation", NeurIPS 2020. Each BN layer normalises with

    mean = N / (N + n) * mean_source + n / (N + n) * mean_batch      (same for the variance)

where n is the number of frames in the batch and N, the prior strength, counts the source
statistics as N pseudo-frames. N = 0 is ``bn_adapt``; N -> inf is ``source``. Usable at
n = 1 (a single frame then moves the statistics by 1 / (N + 1)).

Hyper-parameter: N = 16, the default we were given for this baseline (the authors sweep N
per batch size; the best N shrinks as n grows). The batch variance is the unbiased one, as
in the authors' code (``robusta.batchnorm.BayesianBatchNorm``: a momentum-1 BatchNorm).
Stateless: a frame's prediction depends on its batch-mates, never on earlier batches.
"""

from __future__ import annotations

import torch

from ..bn.per_sample import batch_moments, normalise, patched_bn, source_stats
from ..bn.table import bn_layers
from .base import Method

PRIOR_STRENGTH = 16


class BNPrior(Method):
    """Source statistics mixed with the batch's, weighted N : n."""

    name = "bn_prior"

    def __init__(self, model, prior: float = PRIOR_STRENGTH) -> None:
        super().__init__(model)
        if prior < 0:
            raise ValueError(f"prior strength N must be >= 0, got {prior}")
        self.prior = float(prior)
        self.source = source_stats(model)
        self.layers = bn_layers(model)

    @torch.no_grad()
    def forward(self, x, cameras=None, truth=None) -> torch.Tensor:
        w = self.prior / (self.prior + len(x))  # weight of the source statistics

        def make(name, bn):
            src_mean, src_var = self.source[name]

            def fwd(h):
                mean, var = batch_moments(h, unbiased=h.numel() // h.shape[1] > 1)
                return normalise(h, bn, w * src_mean + (1 - w) * mean, w * src_var + (1 - w) * var)
            return fwd

        with patched_bn(self.layers, make):
            return self.model(x)
