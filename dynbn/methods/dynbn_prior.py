"""dynbn_prior: dynbn_vote's table entry as the prior on the batch's own statistics.

``bn_prior`` (Schneider et al. 2020) mixes the *source* statistics with the test batch's,
N : n. Where a batch holds many frames of one segment (one camera, one corruption), those
frames' own statistics are worth having: in the frequent-shift benchmark, one camera at
B = 16 is the one place where ``bn_prior`` beats ``dynbn_vote``. ``dynbn_prior`` keeps
bn_prior's formula and replaces its prior with what dynbn knows:

    mean_b = N_g / (N_g + n_g) * mean_table[d_b] + n_g / (N_g + n_g) * mean_g     (same for the variance)

- ``d_b`` is frame b's domain as dynbn_vote picks it (detector + per-camera vote);
- ``g`` is frame b's *group*: the frames of the batch from the same camera with the same
  voted domain, i.e. the batch's piece of one segment as far as the vote can tell; n_g
  frames, ``mean_g``/``var_g`` their statistics over frames and pixels (unbiased variance,
  as bn_prior);
- N_g = N0 + g * n_g, the prior's strength, grows with the group (N0 = 6, g = 3; below);
- frames voted ``clean`` keep the clean entry unmixed: it is the checkpoint's own statistics,
  exact for clean frames, and mixing test statistics into it can only cost clean accuracy
  (as bn_prior's and bn_adapt's losses on clean frames show).

So a batch never mixes statistics across cameras or across a detected shift, a lone frame
(B = 1, or one frame of its camera in a mixed batch) moves its table entry by 1 / (N0 + g + 1)
= 1/10, and however many frames a group has, its statistics never weigh more than 1 / (1 + g) = 1/4.

Why the prior grows with the group. bn_prior's N : n (g = 0) treats the group's statistics
as the truth plus sampling noise, which shrinks as 1/n. They also differ from the frame's
own in ways more frames do not fix: the vote lags a shift, so a group can straddle two
segments, and a batch's few frames of one segment are a few images' content. If that
mismatch has variance g times the table's own error, and one frame's sampling variance is N0
times that error, the weight on the group that minimises the squared error is
n / (N0 + (1 + g) n), i.e. N_g = N0 + g * n (bn_prior's N : n is the case g = 0). N0 and g were chosen on streams of
corrupted *training* images (512 frames per period, 1 camera, severity 5, the seed-0 quick
fit, the open-set score of ``dynbn.open_set``), scoring dynbn_open's accuracy, mean over N,
at B = 1, 16 and 64, on the 15 seen corruptions and on the 4 held-out ones (the test split
was not used):

| N0, g | seen, B = 1 / 16 / 64 | held-out, B = 1 / 16 / 64 |
|---|---|---|
| 16, 0 (bn_prior's N, the rule before) | 62.7 / 60.9 / 60.6 | 57.1 / 58.4 / 59.5 |
| 8, 0 | 63.1 / 59.5 / 59.7 | 57.7 / 58.8 / 58.8 |
| 8, 2 | 62.9 / 61.5 / 61.3 | 57.4 / 59.1 / 59.7 |
| **6, 3** | 63.3 / 61.6 / 61.5 | 57.8 / 59.0 / 59.5 |
| 8, 4 | 63.2 / 62.2 / 62.0 | 57.2 / 58.5 / 58.8 |
| 4, 4 | 63.1 / 61.7 / 61.8 | 57.7 / 58.7 / 59.0 |

dynbn_vote scores 62.0 (seen) and 54.5 (held-out) on those streams. Other growth laws did no
better (N = 8 sqrt(n): 63.1 / 61.4 / 61.1 and 57.7 / 59.1 / 59.6; N = 8 n^0.75: 63.1 / 62.0 / 61.7
and 57.7 / 58.6 / 59.0), so the one with a reason behind it was kept. What it gives up: a frame's
prediction depends on its group-mates (those of its camera and segment in the same batch),
so unlike dynbn_vote the result is not per-frame; and it costs a per-group reduction per
BN layer (1.37x ``source`` at B = 64 in the benchmarks, against 1.11x
for dynbn_vote). Other groupings were measured and lost: by camera alone (pools frames
across a shift), by camera and corruption family, and with a camera's group statistics
carried over into the next batch. Measured against the other arms: ``dynbn stream-bench``
(docs/benchmarks.md).
"""

from __future__ import annotations

import numpy as np
import torch

from ..bn.per_sample import float32, normalise_per_sample, patched_bn
from ..bn.table import BNTable
from ..detector import Detector
from ..domains import CLEAN
from ..vote import DEFAULT_RULE, VoteRule
from .dynbn import CORRUPTION_WEIGHT, DynBNVote


def groups_of(cameras: list, active: np.ndarray) -> tuple[torch.Tensor, int]:
    """Group index per frame (frames of one camera with one voted domain share one) and the group count."""
    ids: dict[tuple, int] = {}
    index = [ids.setdefault((cam, int(d)), len(ids)) for cam, d in zip(cameras, active)]
    return torch.tensor(index, dtype=torch.long), len(ids)


def group_frames(group: torch.Tensor, groups: int, dtype: torch.dtype) -> torch.Tensor:
    """Frames per group (G,)."""
    return torch.bincount(group, minlength=groups).to(dtype)


def group_moments(h: torch.Tensor, group: torch.Tensor, groups: int, frames: torch.Tensor | None = None
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-group channel mean and unbiased variance of ``B x C x H x W`` activations, and frames per group.

    ``frames``: ``group_frames(group, groups, h.dtype)`` when the caller has it already (it is the
    same in every BN layer of one batch).
    """
    h = float32(h)
    pixels = h.shape[2] * h.shape[3]
    s1 = h.sum(dim=(2, 3))                      # B x C
    s2 = (h * h).sum(dim=(2, 3))                # (vector_norm measured slower on channels-last activations)
    if frames is None:
        frames = group_frames(group, groups, h.dtype)                   # G
    g1 = h.new_zeros(groups, h.shape[1]).index_add_(0, group, s1)
    g2 = h.new_zeros(groups, h.shape[1]).index_add_(0, group, s2)
    n = (frames * pixels)[:, None]
    mean = g1 / n
    var = ((g2 / n - mean * mean).clamp_min(0.0) * (n / (n - 1).clamp_min(1.0)))
    return mean, var, frames


def own_row(frames: int, width: int) -> torch.Tensor:
    """Weights over each frame's ``levels`` rows that put everything on the first, its own entry."""
    weights = torch.zeros(frames, width)
    weights[:, 0] = 1.0
    return weights


PRIOR = 6.0    # N0: the prior's strength for a lone frame, before it grows with the group
GROWTH = 3.0   # g: the prior's strength grows by g per frame of the group (its weight never falls below g / (1 + g))


class DynBNPrior(DynBNVote):
    """dynbn_vote's table entry, mixed N : n with the statistics of the frame's camera-and-segment group."""

    name = "dynbn_prior"

    def __init__(self, model, table: BNTable, detector: Detector, rule: VoteRule = DEFAULT_RULE,
                 prior: float = PRIOR, severity: bool | None = None, growth: float = GROWTH,
                 corruption_weight: float = CORRUPTION_WEIGHT) -> None:
        """``prior``, ``growth``: the prior's strength is ``prior + growth * n`` for a group of n frames
        (``growth=0``: bn_prior's N : n); ``severity``, ``corruption_weight``: as dynbn_vote's."""
        super().__init__(model, table, detector, rule, severity, corruption_weight)
        if prior < 0:
            raise ValueError(f"prior strength N must be >= 0, got {prior}")
        if growth < 0:
            raise ValueError(f"prior growth g must be >= 0, got {growth}")
        self.prior, self.growth = float(prior), float(growth)
        # the clean entry is the checkpoint's own statistics (estimated on the whole training set), exact
        # for clean frames: frames voted clean keep it unmixed, so clean frames lose nothing
        self.exact = torch.tensor([d == CLEAN for d in detector.domains])

    def voted_forward(self, x: torch.Tensor, cams: list, active: np.ndarray,
                      weights: torch.Tensor | None = None) -> torch.Tensor:
        """The model with frame b normalised by its voted statistics (``active[b]``'s entry, or the mixture
        of its severity entries) mixed with its group's statistics."""
        return self.prior_forward(x, cams, active, self.exact[torch.from_numpy(active)], weights)

    def prior_strength(self, rows: np.ndarray) -> torch.Tensor:
        """The prior strength N0 per frame, before it grows with the group, from its prior row (here
        ``self.prior`` for every row)."""
        return torch.full((len(rows),), self.prior)

    def prior_forward(self, x: torch.Tensor, cams: list, rows: np.ndarray, exact: torch.Tensor,
                      weights: torch.Tensor | None = None) -> torch.Tensor:
        """The model with frame b normalised by its prior, mixed N : n with the statistics of its group
        (the batch's frames with b's camera and prior row ``rows[b]``), N = N0 + g * n growing with the
        group's n frames; frames with ``exact[b]`` keep
        their prior unmixed. The prior is the mixture of ``levels[rows[b]]`` weighted by ``weights[b]``
        (None: the first of those rows, i.e. the row's own table entry)."""
        group, groups = groups_of(cams, rows)
        index, group = self.levels[torch.from_numpy(rows)].to(x.device), group.to(x.device)
        if weights is None:
            weights = own_row(*index.shape)
        weights = weights.to(x.device, x.dtype)
        # the prior's weight per frame depends only on group sizes: the same in every layer
        frames = group_frames(group, groups, x.dtype)
        n = frames[group]
        strength = self.prior_strength(rows).to(x.device, x.dtype) + self.growth * n
        w = (strength / (strength + n))[:, None]                               # B x 1
        w = torch.where(exact.to(x.device)[:, None], torch.ones_like(w), w)

        priors = self.frame_stats(index, weights)

        def make(name, bn):
            prior_mean, prior_var = priors[name]

            def fwd(h):
                mean, var, _ = group_moments(h, group, groups, frames)
                return normalise_per_sample(h, bn, w * prior_mean + (1 - w) * mean[group],
                                            w * prior_var + (1 - w) * var[group])
            return fwd

        with patched_bn(self.layers, make):
            return self.model(x)
