"""dynbn_prior: dynbn_vote's table entry as the prior on the batch's own statistics.

``bn_prior`` (Schneider et al. 2020) mixes the *source* statistics with the test batch's,
N : n. Where a batch holds many frames of one segment (one camera, one corruption), those
frames' own statistics are worth having: in the frequent-shift benchmark, one camera at
B = 16 is the one place where ``bn_prior`` beats ``dynbn_vote``. ``dynbn_prior`` keeps
bn_prior's formula and replaces its prior with what dynbn knows:

    mean_b = N / (N + n_g) * mean_table[d_b] + n_g / (N + n_g) * mean_g     (same for the variance)

- ``d_b`` is frame b's domain as dynbn_vote picks it (detector + per-camera vote);
- ``g`` is frame b's *group*: the frames of the batch from the same camera with the same
  voted domain, i.e. the batch's piece of one segment as far as the vote can tell; n_g
  frames, ``mean_g``/``var_g`` their statistics over frames and pixels (unbiased variance,
  as bn_prior);
- N = 16, bn_prior's prior strength (the value given for that baseline, not tuned here);
- frames voted ``clean`` keep the clean entry unmixed: it is the checkpoint's own statistics,
  exact for clean frames, and mixing test statistics into it can only cost clean accuracy
  (as bn_prior's and bn_adapt's losses on clean frames show).

So a batch never mixes statistics across cameras or across a detected shift, a lone frame
(B = 1, or one frame of its camera in a mixed batch) moves its table entry by 1 / (N + 1),
and 16 frames of one segment weigh as much as the table. What it gives up: a frame's
prediction depends on its group-mates (those of its camera and segment in the same batch),
so unlike dynbn_vote the result is not per-frame; and it costs a per-group reduction per
BN layer (1.20-1.27x ``source`` at B = 64 in the benchmarks, against 1.03-1.06x
for dynbn_vote). Other groupings were measured and lost: by camera alone (pools frames
across a shift), by camera and corruption family, and with a camera's group statistics
carried over into the next batch. Measured against the other arms: ``dynbn stream-bench``
(README, "Frequent shifts" and "Beyond the paper").
"""

from __future__ import annotations

import numpy as np
import torch

from ..bn_table import BNTable
from ..detector import Detector
from ..domains import CLEAN
from ..vote import DEFAULT_RULE, VoteRule
from .bn_prior import PRIOR_STRENGTH
from .dynbn import DynBNVote
from .norm_patch import normalise_per_sample, patched_bn


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


class DynBNPrior(DynBNVote):
    """dynbn_vote's table entry, mixed N : n with the statistics of the frame's camera-and-segment group."""

    name = "dynbn_prior"

    def __init__(self, model, table: BNTable, detector: Detector, rule: VoteRule = DEFAULT_RULE,
                 prior: float = PRIOR_STRENGTH, severity: bool | None = None) -> None:
        super().__init__(model, table, detector, rule, severity)
        if prior < 0:
            raise ValueError(f"prior strength N must be >= 0, got {prior}")
        self.prior = float(prior)
        # the clean entry is the checkpoint's own statistics (estimated on the whole training set), exact
        # for clean frames: frames voted clean keep it unmixed, so clean frames lose nothing
        self.exact = torch.tensor([d == CLEAN for d in detector.domains])

    def voted_forward(self, x: torch.Tensor, cams: list, active: np.ndarray,
                      weights: torch.Tensor | None = None) -> torch.Tensor:
        """The model with frame b normalised by its voted statistics (``active[b]``'s entry, or the mixture
        of its severity entries) mixed with its group's statistics."""
        return self.prior_forward(x, cams, active, self.exact[torch.from_numpy(active)], weights)

    def prior_strength(self, rows: np.ndarray) -> torch.Tensor:
        """The prior strength N per frame, from its prior row (here ``self.prior`` for every row)."""
        return torch.full((len(rows),), self.prior)

    def prior_forward(self, x: torch.Tensor, cams: list, rows: np.ndarray, exact: torch.Tensor,
                      weights: torch.Tensor | None = None) -> torch.Tensor:
        """The model with frame b normalised by its prior, mixed N : n with the statistics of its group
        (the batch's frames with b's camera and prior row ``rows[b]``); frames with ``exact[b]`` keep
        their prior unmixed. The prior is the mixture of ``levels[rows[b]]`` weighted by ``weights[b]``
        (None: the first of those rows, i.e. the row's own table entry)."""
        group, groups = groups_of(cams, rows)
        index, group = self.levels[torch.from_numpy(rows)].to(x.device), group.to(x.device)
        if weights is None:
            weights = torch.zeros(index.shape, dtype=x.dtype)
            weights[:, 0] = 1.0
        weights = weights.to(x.device, x.dtype)
        # the prior's weight per frame depends only on group sizes: the same in every layer
        frames = group_frames(group, groups, x.dtype)
        strength = self.prior_strength(rows).to(x.device, x.dtype)
        w = (strength / (strength + frames[group]))[:, None]                   # B x 1
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
