"""dynbn: swap in the BN statistics of each frame's corruption (arXiv 2310.20649).

``DynBNFrame`` detects every frame's domain from its spectrum and normalises it with that
domain's table entry (per-sample statistics, so batches may mix cameras and domains).
``DynBNOracle`` uses the true domain: the upper bound for any detector.
"""

from __future__ import annotations

import torch

from ..bn_table import BNTable
from ..detector import Detector
from ..per_sample import DomainSwitch
from .base import Method


class DynBNOracle(Method):
    """Per-sample statistics of the true domain (reads ``truth``)."""

    name = "dynbn_oracle"

    def __init__(self, model, table: BNTable) -> None:
        super().__init__(model)
        self.switch = DomainSwitch(model, table)

    @torch.no_grad()
    def forward(self, x, cameras=None, truth=None) -> torch.Tensor:
        if truth is None:
            raise ValueError("dynbn_oracle needs the true domain of every frame (truth=...)")
        return self.switch.forward(x, self.switch.index(list(truth)))


class DynBNFrame(Method):
    """Detect each frame's domain, then per-sample statistics of the detected domain."""

    name = "dynbn_frame"

    def __init__(self, model, table: BNTable, detector: Detector) -> None:
        super().__init__(model)
        missing = sorted(set(detector.domains) - set(table.domains))
        if missing:
            raise ValueError(f"the detector names domains {missing} that the BN table lacks")
        self.detector = detector.eval()
        self.switch = DomainSwitch(model, table, detector.domains)
        self.last_detected: torch.Tensor | None = None

    @torch.no_grad()
    def detect(self, x: torch.Tensor) -> torch.Tensor:
        """Detected domain index per frame (indices into ``detector.domains``)."""
        return self.detector(x).argmax(dim=1)

    @torch.no_grad()
    def forward(self, x, cameras=None, truth=None) -> torch.Tensor:
        self.last_detected = self.detect(x)
        return self.switch.forward(x, self.last_detected)
