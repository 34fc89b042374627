"""dynbn_open: dynbn_vote that says "unknown" for corruptions outside its table.

The detector names one of its domains for every frame, also for a corruption it never saw.
``dynbn_open`` also reads the detector's open-set distance (``dynbn.open_set``: Mahalanobis
distance of the penultimate features, threshold set on held-out *training* frames of the
known domains, 98 % of them kept). A frame above the threshold is *unknown* and does not use
a table entry at all.

Fallback for unknown frames: the camera's own running statistics, i.e. ``bn_ema``'s
recipe (per-camera moving average of the BN statistics, starting from the source
statistics, per-frame momentum ``MOMENTUM``), updated only by that camera's unknown frames.
It needs no table, a camera that stays on an unseen corruption converges to that
corruption's own statistics, and at batch size 1 it is as good as ``bn_ema``: better than
the source statistics and ``bn_prior`` once a few frames have been seen. (The source
statistics alone were the other candidate: no state, but no gain either on an unseen
corruption.) Known frames follow dynbn_vote exactly, so on seen corruptions the two arms
differ only on the known frames the threshold rejects (2 % of held-out training frames).
"""

from __future__ import annotations

import numpy as np
import torch

from ..bn_table import BNTable
from ..detector import Detector
from ..vote import DEFAULT_RULE, VoteRule
from .base import cameras_or_default
from .bn_ema import BNEMA, MOMENTUM
from .dynbn import DynBNVote

UNKNOWN = "unknown"


class DynBNOpen(DynBNVote):
    """dynbn_vote, plus an unknown class whose frames use the camera's own running statistics."""

    name = "dynbn_open"

    def __init__(self, model, table: BNTable, detector: Detector, rule: VoteRule = DEFAULT_RULE,
                 momentum: float = MOMENTUM) -> None:
        if not detector.has_open_set:
            raise ValueError("this detector has no open-set statistics (fitted before dynbn.open_set existed): "
                             "refit it with `dynbn fit` to use dynbn_open")
        super().__init__(model, table, detector, rule)
        self.fallback = BNEMA(model, momentum)
        self.unknown = len(detector.domains)  # the index ``last_index`` gives unknown frames

    def reset(self) -> None:
        super().reset()
        self.fallback.reset()

    @property
    def last_domains(self) -> list[str] | None:
        """Domain names used for the last batch, ``"unknown"`` for the frames sent to the fallback."""
        if self.last_index is None:
            return None
        names = list(self.detector.domains) + [UNKNOWN]
        return [names[int(i)] for i in self.last_index]

    @torch.no_grad()
    def forward(self, x, cameras=None, truth=None) -> torch.Tensor:
        cams = cameras_or_default(cameras, len(x))
        logits, distance = self.detector.logits_and_distance(x)
        active = self.votes.update(cams, logits.softmax(dim=1).double().cpu().numpy())
        unknown = (distance > self.detector.ood_threshold).cpu().numpy()
        self.last_index = torch.from_numpy(np.where(unknown, self.unknown, active))
        if not unknown.any():
            return self.table_forward(x, torch.from_numpy(active))
        rows = np.flatnonzero(unknown)
        out_unknown = self.fallback(x[rows], [cams[i] for i in rows])
        if unknown.all():
            return out_unknown
        known = np.flatnonzero(~unknown)
        out_known = self.table_forward(x[known], torch.from_numpy(active[known]))
        out = out_known.new_empty(len(x), out_known.shape[1])
        out[known], out[rows] = out_known, out_unknown
        return out
