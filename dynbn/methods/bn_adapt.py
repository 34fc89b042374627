"""bn_adapt: normalise with the statistics of the current test batch.

Schneider et al., "Improving robustness against common corruptions by covariate shift
adaptation", NeurIPS 2020; Nado et al., "Evaluating prediction-time batch normalization
for robustness under covariate shift", 2020. No hyper-parameters: the batch is the sample.
A frame's prediction depends on its batch-mates; at batch size 1 the statistics come from
one frame's pixels alone.
"""

from __future__ import annotations

import torch

from .base import Method, batch_statistics


class BNAdapt(Method):
    """Test-time BN: batch statistics at every layer, running buffers left untouched."""

    name = "bn_adapt"

    @torch.no_grad()
    def forward(self, x, cameras=None, truth=None) -> torch.Tensor:
        with batch_statistics(self.model):
            return self.model(x)
