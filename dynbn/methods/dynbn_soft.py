"""dynbn_soft: mix every domain's statistics, weighted by the detector's probabilities.

Hard selection (dynbn_frame, dynbn_vote) normalises a frame with one table entry. A frame
that carries two corruptions at once (noise after fog, JPEG after blur), or that sits
between two domains, matches no single entry. ``dynbn_soft`` normalises frame b with the
mixture of the entries weighted by the detector's probabilities p_b: the moments of the
mixture distribution, mean = sum_d p_bd mean_d and variance = sum_d p_bd (var_d + mean_d^2)
- mean^2 (``per_sample.mixture_moments``). One detector pass and one forward per batch, per-sample
statistics (no dependence on batch-mates). ``last_index`` reports the most probable domain.
"""

from __future__ import annotations

import torch

from ..bn.per_sample import DomainSwitch
from ..bn.table import BNTable
from ..detector import Detector
from .base import Condition, Method


class DynBNSoft(Method):
    """Per-sample statistics: the probability-weighted mixture of every domain's entry."""

    name = "dynbn_soft"

    def __init__(self, model, table: BNTable, detector: Detector, temperature: float = 1.0) -> None:
        super().__init__(model)
        missing = sorted(set(detector.domains) - set(table.domains))
        if missing:
            raise ValueError(f"the detector names domains {missing} that the BN table lacks")
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.detector, self.temperature = detector.eval(), float(temperature)
        self.switch = DomainSwitch(model, table, detector.domains)
        self.last_index: torch.Tensor | None = None
        self.last_confidence: torch.Tensor | None = None

    @torch.no_grad()
    def forward(self, x, cameras=None, truth=None) -> torch.Tensor:
        probs = (self.detector(x) / self.temperature).softmax(dim=1)
        confidence, index = probs.max(dim=1)
        self.last_index, self.last_confidence = index.cpu(), confidence.cpu()
        return self.switch.forward(x, weights=probs)

    @property
    def last_detected(self) -> torch.Tensor | None:
        """The most probable domain per frame of the last batch (``DynBNFrame``'s name for its detection)."""
        return self.last_index

    def last_conditions(self) -> list[Condition] | None:
        if self.last_index is None:
            return None
        names = self.detector.domains
        return [Condition(names[int(i)], None, float(p)) for i, p in zip(self.last_index, self.last_confidence)]
