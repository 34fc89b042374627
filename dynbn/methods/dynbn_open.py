"""dynbn_open: dynbn_prior with an "unknown" class for corruptions outside its table.

The detector names one of its domains for every frame, also for a corruption it never saw.
``dynbn_open`` also reads the detector's open-set score (``dynbn.open_set``: how far the
penultimate features lie from the nearest domain's Gaussian, threshold set on held-out
*training* frames of the known domains, 98 % of them kept). A frame above the threshold is
*unknown* and does not use a table entry at all.

Known frames are normalised as in ``dynbn_prior``: the voted table entry mixed N : n with the
statistics of the frame's camera-and-segment group in the batch, N = 6 + 3 n. A known frame
whose score lies on the *ramp*, between the score that 80 % of those held-out training frames
stay under (``Detector.ood_low``) and the threshold, leans towards the checkpoint's
statistics: its prior is the mixture of its table entry, weight 1 - t, and the checkpoint's
statistics, weight t, with t rising linearly from 0 at the ramp's start to 1 at the threshold
(moments of the mixture, as ``dynbn_soft``). Above the threshold it is unknown.

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
training images, ``--split train``): this rule 54.8 % (56.9), the checkpoint's statistics
53.8 % (55.6), the wrong table chosen by the vote 47.1 % (54.3), a per-camera moving average
(``bn_ema``) 41.3 % (55.5). The moving average was the earlier fallback. It was updated only
by the camera's unknown frames, which are rare, so it stayed near the checkpoint's statistics
and needed state across batches. A per-camera memory of each group's statistics carried
across batches was tried for all frames and gained nothing at B = 1.

Also tried on the held-out corruptions' training streams (quick, ``--split train``) and not taken:
choosing per frame between this arm's logits and those under bn_prior's rule by the lower
entropy or the higher maximum probability. It gains at B = 16 (54.5 and 54.8 % against 53.8,
mean over N) but loses at B = 1 (50.7 and 51.0 against 51.6), where an unseen corruption is
hardest to catch: a confident wrong table looks as good as a right one.

Why a ramp. A hard threshold treats a frame just under it as sure of its table. Spatter, where
a wrong table hurts most, scores 45.1 % under its voted tables and 58.7 % under the checkpoint's
statistics on the held-out corruptions' training streams (``docs/results/stream_bench_heldout_train_c1``,
B = 1), and the threshold flags 44 % of its frames. The ramp hands frames near the threshold
over gradually instead of flagging more frames outright. Measured on
streams of corrupted training images (``--split train``, 512 frames per period, 1 camera,
severity 5, seed-0 quick fit; dynbn_open's accuracy, mean over N, at B = 1 / 16 / 64; the ramp's
start as the quantile of the held-out training scores; the test split was not used):

| ramp starts at | held-out corruptions | seen corruptions |
|---|---|---|
| no ramp (the hard rule, ``ramp=False``) | 57.8 / 58.5 / 59.1 | 63.2 / 61.8 / 61.5 |
| 0.9 | 58.1 / 58.6 / 59.1 | 63.4 / 61.8 / 61.3 |
| **0.8** | 58.3 / 58.7 / 59.3 | 63.3 / 61.8 / 61.6 |
| 0.7 | 58.5 / 58.8 / 59.3 | 63.2 / 61.4 / 61.5 |

(dynbn_vote: 54.5 held-out, 62.0 seen.) Each row: ``dynbn stream-bench [--streams held-out] --quick
--cameras 1 --split train --frames 512 --arms dynbn_vote,dynbn_open`` with the ramp's start moved to
quantile Q by ``open_set.move_ramp`` on the fitted detector (``--arm dynbn_open.ramp=false`` for the first). 0.8 gains on the held-out corruptions at every B and keeps the seen ones; 0.7
gains a little more on the held-out corruptions but costs the seen ones 0.4 at B = 16. With
the ramp from 0.8, a threshold at the 96th or 99th percentile gained no more than half a point
at any B on the held-out corruptions, and not at every B, so it stays at the 98th. Tried per frame on the same images and not taken: a ramp on the detector's
maximum probability as well (it pulls speckle noise and Gaussian blur off the noise and
defocus tables that help them: 1 to 3 points lost on both kinds of corruption), and each
domain's own quantiles of the score in place of the pooled ones (0.4 to 0.9 points lower on the
held-out corruptions). Tried on the training streams above and not taken: a ramp linear in the
score's quantile instead of the score (58.3 / 58.4 / 59.1 held-out, 63.0 / 61.5 / 61.5 seen),
and, as the statistics that unknown and leaning frames get, half the checkpoint's and half the
mean of all table entries (58.5 / 58.8 / 59.1 held-out). Letting frames voted clean mix in their
own statistics as they lean (they keep the clean entry whole otherwise) moved 1 to 4 frames of
2,560 per batch size (+0.2 held-out, +0.1 seen, clean frames unchanged): not worth a rule.

What it gives up: as in ``dynbn_prior``, a frame's prediction depends on its group-mates
(its camera's frames in the batch with its voted domain, or its camera's unknown frames).
"""

from __future__ import annotations

import numpy as np
import torch

from ..bn.per_sample import source_stats
from ..bn.table import BNTable
from ..detector import Detector
from ..vote import DEFAULT_RULE, VoteRule
from .base import cameras_or_default
from .dynbn import CORRUPTION_WEIGHT
from .dynbn_prior import GROWTH, PRIOR, DynBNPrior, own_row

UNKNOWN = "unknown"


class DynBNOpen(DynBNPrior):
    """dynbn_prior on known frames; unknown frames get bn_prior's mixture over their camera's unknown frames."""

    name = "dynbn_open"

    def __init__(self, model, table: BNTable, detector: Detector, rule: VoteRule = DEFAULT_RULE,
                 prior: float = PRIOR, unknown_prior: float | None = None,
                 severity: bool | None = None, growth: float = GROWTH, ramp: bool = True,
                 corruption_weight: float = CORRUPTION_WEIGHT) -> None:
        """``prior``: N0 for known frames' table entries; ``unknown_prior``: N0 for unknown frames' checkpoint
        statistics (None: the same N0); ``growth``: g for both (the prior's strength is N0 + g * n);
        ``ramp=False``: the hard rule, every known frame's table entry whole."""
        if not detector.has_open_set:
            raise ValueError("this detector has no open-set statistics (fitted before dynbn.open_set existed): "
                             "refit it with `dynbn fit` to use dynbn_open")
        super().__init__(model, table, detector, rule, prior, severity, growth, corruption_weight)
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
        # a last column on every domain's rows: the checkpoint's statistics, which frames on the ramp lean towards
        self.levels = torch.cat([self.levels, torch.full((len(self.levels), 1), row)], 1)
        self.use_ramp = bool(ramp)
        self.last_lean: np.ndarray | None = None  # per frame of the last batch, the weight on the checkpoint's statistics

    @property
    def ramp(self) -> tuple[float, float] | None:
        """(start, end) of the ramp in open-set score, as the detector holds them now; None without one
        (``ramp=False``, or a detector file from before the ramp)."""
        low, threshold = float(self.detector.ood_low), float(self.detector.ood_threshold)
        return (low, threshold) if self.use_ramp and low < threshold else None

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
        active = self.vote(cams, logits)
        distance = distance.double().cpu().numpy()
        unknown = distance > float(self.detector.ood_threshold)
        weights = self.level_weights(cams, active, logp, single=unknown)  # unknown frames: their one row
        if weights is None:  # no severity: all weight on each frame's own row
            weights = own_row(len(x), self.levels.shape[1] - 1)
        lean = self.lean(distance)
        lean[unknown] = 0.0   # (an unknown frame's own row is the checkpoint's statistics already)
        self.last_lean = lean
        lean = torch.from_numpy(lean).to(weights.dtype)[:, None]
        weights = torch.cat([(1 - lean) * weights, lean], 1)
        rows = np.where(unknown, self.unknown, active)
        self.last_index = torch.from_numpy(rows)
        # groups are (camera, prior row): a camera's unknown frames, all on the extra row, form their own group
        exact = self.exact[torch.from_numpy(active)] & ~torch.from_numpy(unknown)
        return self.prior_forward(x, cams, rows, exact, weights)

    def lean(self, distance: np.ndarray) -> np.ndarray:
        """Weight of the checkpoint's statistics in a known frame's prior, from its open-set score: 0 up to
        the ramp's start (``ood_low``), rising linearly to 1 at the threshold."""
        ramp = self.ramp
        if ramp is None:
            return np.zeros(len(distance))
        low, threshold = ramp
        return np.clip((distance - low) / (threshold - low), 0.0, 1.0)
