"""dynbn_open: dynbn_prior with an "unknown" class for corruptions outside its table.

The detector names one of its domains for every frame, also for a corruption it never saw.
``dynbn_open`` also reads the detector's open-set score (``dynbn.open_set``: how far the
penultimate features lie from the nearest domain's Gaussian, threshold set on held-out
*training* frames of the known domains, 98 % of them kept). A frame above the threshold is
*unknown* and does not use a table entry at all.

Known frames are normalised exactly as in ``dynbn_prior``: the voted table entry mixed
N : n with the statistics of the frame's camera-and-segment group in the batch, N = 6 + 3 n.

Unknown frames: ``bn_prior``'s rule (Schneider et al. 2020) on the camera's unknown frames.
The checkpoint's own statistics are the prior, mixed N : n with the statistics of the
batch's unknown frames from the same camera (their own group), with the same N = 6 + 3 n as
known frames. It needs no table and no state: a lone unknown frame (B = 1) moves the
checkpoint's statistics by 1/10, and a camera's unknown frames never weigh more than 1/4.

Why this fallback. Policies that need no table: ``bn_prior``/``bn_ema`` statistics for the
camera, or the source statistics. ``dynbn stream-bench`` reports every arm's accuracy
on the frames dynbn_open flags ("Accuracy on the frames dynbn_open calls unknown"). Measured
when the score had one shared covariance and N was 16 for every group, on the
held-out corruptions at B = 1 (quick run on the test split; in brackets, 1,024-frame streams of
training images, ``--train-split``): this rule 54.8 % (56.9), the checkpoint's statistics
53.8 % (55.6), the wrong table chosen by the vote 47.1 % (54.3), a per-camera moving average
(``bn_ema``) 41.3 % (55.5). The moving average was the earlier fallback. It was updated only
by the camera's unknown frames, which are rare, so it stayed near the checkpoint's statistics
and needed state across batches. A per-camera memory of each group's statistics carried
across batches was tried for all frames and gained nothing at B = 1.

Also tried on the held-out corruptions' training streams (quick, ``--train-split``) and not taken:
choosing per frame between this arm's logits and those under bn_prior's rule by the lower
entropy or the higher maximum probability. It gains at B = 16 (54.5 and 54.8 % against 53.8,
mean over N) but loses at B = 1 (50.7 and 51.0 against 51.6), where an unseen corruption is
hardest to catch: a confident wrong table looks as good as a right one.

What it gives up: as in ``dynbn_prior``, a frame's prediction depends on its group-mates
(its camera's frames in the batch with its voted domain, or its camera's unknown frames).
"""

from __future__ import annotations

import numpy as np
import torch

from ..bn_table import BNTable
from ..detector import Detector
from ..vote import DEFAULT_RULE, VoteRule
from .base import cameras_or_default
from .dynbn_prior import GROWTH, PRIOR, DynBNPrior
from .norm_patch import source_stats

UNKNOWN = "unknown"


class DynBNOpen(DynBNPrior):
    """dynbn_prior on known frames; unknown frames get bn_prior's mixture over their camera's unknown frames."""

    name = "dynbn_open"

    def __init__(self, model, table: BNTable, detector: Detector, rule: VoteRule = DEFAULT_RULE,
                 prior: float = PRIOR, unknown_prior: float | None = None,
                 severity: bool | None = None, growth: float = GROWTH) -> None:
        """``prior``: N0 for known frames' table entries; ``unknown_prior``: N0 for unknown frames' checkpoint
        statistics (None: the same N0); ``growth``: g for both (the prior's strength is N0 + g * n)."""
        if not detector.has_open_set:
            raise ValueError("this detector has no open-set statistics (fitted before dynbn.open_set existed): "
                             "refit it with `dynbn fit` to use dynbn_open")
        super().__init__(model, table, detector, rule, prior, severity, growth)
        if unknown_prior is not None and unknown_prior < 0:
            raise ValueError(f"prior strength N of unknown frames must be >= 0, got {unknown_prior}")
        self.unknown_prior = self.prior if unknown_prior is None else float(unknown_prior)
        # active index D (what ``last_index`` gives unknown frames) stands for the checkpoint's own
        # statistics, the prior of unknown frames: a last row of every layer's statistics
        self.unknown = len(detector.domains)
        source = source_stats(model)
        row = len(self.rows)
        self.stats = {name: (torch.cat([mean, source[name][0][None]]), torch.cat([var, source[name][1][None]]))
                      for name, (mean, var) in self.stats.items()}
        self.levels = torch.cat([self.levels, torch.full((1, self.levels.shape[1]), row)])

    def prior_strength(self, rows: np.ndarray) -> torch.Tensor:
        return torch.where(torch.from_numpy(rows == self.unknown), self.unknown_prior, self.prior)

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
        logits, distance, logp = self.detector.read(x, distance=True, severity=self.severity)
        active = self.votes.update(cams, logits.softmax(dim=1).double().cpu().numpy())
        unknown = (distance > self.detector.ood_threshold).cpu().numpy()
        weights = self.level_weights(cams, active, logp, single=unknown)  # unknown frames: their one row
        rows = np.where(unknown, self.unknown, active)
        self.last_index = torch.from_numpy(rows)
        # groups are (camera, prior row): a camera's unknown frames, all on the extra row, form their own group
        exact = self.exact[torch.from_numpy(active)] & ~torch.from_numpy(unknown)
        return self.prior_forward(x, cams, rows, exact, weights)
