"""dynbn: swap in the BN statistics of each frame's corruption (arXiv 2310.20649).

``DynBNFrame`` detects every frame's domain from its spectrum and normalises it with that
domain's table entry (per-sample statistics, so batches may mix cameras and domains).
``DynBNOracle`` uses the true domain: the upper bound for any detector.
``DynBNVote`` smooths the detector's guesses over time per camera (``dynbn.vote``): the
deployed arm for streams.
"""

from __future__ import annotations

import numpy as np
import torch

from ..bn_table import BNTable, bn_layers
from ..detector import Detector
from ..per_sample import DomainSwitch
from ..vote import DEFAULT_RULE, VoteRule, Votes, clean_index
from .base import Method, cameras_or_default
from .norm_patch import affine, patched_bn, rows_forward


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


class DynBNVote(Method):
    """Detect every frame's domain, smooth the guesses per camera with a vote, then swap statistics.

    One detector forward for the whole batch; the vote (``dynbn.vote``) then walks the batch
    in arrival order, each frame updating its own camera's state; the model runs once with
    per-sample statistics of each frame's active domain. ``last_index`` holds the active
    domain index per frame of the last batch (into ``detector.domains``).

    The per-sample BN here is ``norm_patch.rows_forward``: the arithmetic of
    ``DomainSwitch``, with each domain's ``x * scale + shift`` precomputed from the table
    and applied in one ``addcmul`` pass, so a mixed batch costs what plain BN costs (the
    vote's budget is 10 % over ``source`` at B = 64). The maps are computed from the
    model's BN affine parameters when the method is built; no arm changes those.
    """

    name = "dynbn_vote"

    def __init__(self, model, table: BNTable, detector: Detector, rule: VoteRule = DEFAULT_RULE) -> None:
        super().__init__(model)
        missing = sorted(set(detector.domains) - set(table.domains))
        if missing:
            raise ValueError(f"the detector names domains {missing} that the BN table lacks")
        table.check(model)
        self.detector = detector.eval()
        self.layers = bn_layers(model)
        self.maps = {name: affine(bn, *table.stacked(name, list(detector.domains)))  # (scale, shift), D x C each
                     for name, bn in self.layers.items()}
        self.votes = Votes(rule, len(detector.domains), clean_index(detector.domains))
        self.last_index: torch.Tensor | None = None

    @property
    def rule(self) -> VoteRule:
        return self.votes.rule

    def reset(self) -> None:
        self.votes.reset()
        self.last_index = None

    @torch.no_grad()
    def forward(self, x, cameras=None, truth=None) -> torch.Tensor:
        cams = cameras_or_default(cameras, len(x))
        probs = self.detector(x).softmax(dim=1)
        active = self.votes.update(cams, probs.double().cpu().numpy())
        self.last_index = torch.from_numpy(active)
        return self.voted_forward(x, cams, active)

    def voted_forward(self, x: torch.Tensor, cams: list, active: np.ndarray) -> torch.Tensor:
        """The model once the vote has chosen each frame's domain (``active``); here, the table rows alone."""
        return self.table_forward(x, torch.from_numpy(active))

    def table_forward(self, x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        """The model with frame b normalised by table row ``index[b]`` (into ``detector.domains``)."""
        index = index.to(x.device)
        with patched_bn(self.layers, lambda name, bn: rows_forward(*self.maps[name], index)):
            return self.model(x)
