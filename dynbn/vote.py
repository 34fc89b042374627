"""Temporal vote per camera: smooth the detector's per-frame guesses before swapping statistics.

The detector errs on single frames; a camera's corruption persists for a while. Each camera
keeps a sliding window of the detector's probabilities and an *active* domain, the one its
frames are normalised with. The rule (window W, margin M, hold H, clean discount K):

- score = mean of the probability vectors in the window (the current frame included);
- while the active domain is a corruption, the clean entry of the score is divided by e^K and
  the score renormalised: the detector's clean logit bias (``fitting.tune_clean_bias``), which
  keeps single clean frames on the checkpoint's statistics, is K logits smaller, so a camera
  that is in a corruption needs K logits more clean evidence to go back to clean than a clean
  camera needs to stay there (K = 0: no discount; needs the clean domain's index);
- the leader is the top-scoring domain; it *leads* when ``score[leader] - score[active] >= M``
  and ``leader != active``;
- the active domain switches to the leader once the same leader has led on H consecutive
  frames; any frame where it does not lead resets the count.

The first frame of a camera sets the active domain to its leader (no state to keep yet).

Severity (when the detector carries a severity head): a camera also sums, over the frames
since its active domain last changed, the head's log-probabilities of each severity *given*
the active domain. The sum is a naive-Bayes log-posterior of the segment's severity (frames
independent, uniform prior); its softmax weighs the active domain's severity entries
(``Votes.levels``). A new active domain starts a new sum, so the estimate sharpens as the
segment goes on and never carries one corruption's severity into another.
W=1, M=0, H=1, K=0 is per-frame argmax, i.e. ``dynbn_frame``. Decisions depend only on the camera's
own frames, in arrival order, never on batch boundaries or other cameras.

``DEFAULT_RULE`` holds the values tuned on streams of corrupted TRAINING images
(``dynbn tune-vote``, module ``dynbn.experiments.stream_tune``); the test split is never used for it.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from .domains import CLEAN


@dataclass(frozen=True)
class VoteRule:
    """Window W (frames), lead margin M (probability), hold H (consecutive frames), clean discount K (logits)."""

    window: int = 1
    margin: float = 0.0
    hold: int = 1
    clean_discount: float = 0.0

    def __post_init__(self) -> None:
        if self.window < 1 or self.hold < 1:
            raise ValueError(f"window and hold must be >= 1, got window={self.window}, hold={self.hold}")
        if not 0.0 <= self.margin < 1.0:
            raise ValueError(f"margin is a probability difference in [0, 1), got {self.margin}")
        if not 0.0 <= self.clean_discount <= 20.0:
            raise ValueError(f"clean_discount is in logits, 0 to 20, got {self.clean_discount}")

    @classmethod
    def parse(cls, value) -> "VoteRule":
        """A rule from ``"W,M,H[,K]"`` (such as ``1,0.3,1,3``), a list of those numbers or a mapping of its fields."""
        if isinstance(value, cls):
            return value
        if isinstance(value, Mapping):
            return cls(**value)
        parts = value.split(",") if isinstance(value, str) else list(value)
        if len(parts) not in (3, 4):
            raise ValueError(f"a vote rule is WINDOW,MARGIN,HOLD[,CLEAN_DISCOUNT] such as 1,0.3,1,3; got {value!r}")
        return cls(int(parts[0]), float(parts[1]), int(parts[2]), float(parts[3]) if len(parts) == 4 else 0.0)


# Tuned by `dynbn tune-vote --quick --seed 0` (dynbn.experiments.stream_tune; output runs/vote_tuning/):
# grid search over window 1-8, margin 0-0.7, hold 1-3 and clean discount 0-4 on streams of
# corrupted TRAINING images held out of fitting (severity 5; periods 1, 4, 16, 64, 256 weighted
# equally), scoring a rule by the classifier's expected accuracy with the statistics it selects.
# Result (detector with 256/128 hidden units, clean logit bias 5.5, 2026-11-29): 0.6103 for
# window 1 / margin 0.3 / hold 1 / clean discount 3 (0.6103 with margin 0.2 too; the surface is
# flat in the margin), 0.6070 without the discount (window 1 / margin 0.2 / hold 1, the rule
# before it), 0.6065 for plain argmax, 0.583 for the best window > 1 and 0.556 for the best
# hold > 1.
#
# The clean discount. The detector's clean logit bias keeps single clean frames on the
# checkpoint's statistics, and with it some frames of fog, motion blur or snow read "clean"
# (the costliest mistakes at severity 5). Within a segment those readings made the camera
# flicker back to the checkpoint's statistics. With the discount a camera in a corruption goes
# back to clean only when clean leads by 3 logits more. Scored exactly on the same streams
# (every frame classified under every table entry, so no accuracy matrix is assumed), the
# discount gains 0.70 points (SE 0.22) over the rule before it, at every period: 62.2 / 63.4 /
# 65.7 / 66.9 / 58.5 % against 61.7 / 62.5 / 64.6 / 65.9 / 58.4 % for N = 1 / 4 / 16 / 64 / 256.
# How much it gains depends on the fit: with the detector of `--detector-seed 1` the same exact
# score gives +0.12 (SE 0.21), and tune-vote picks a discount of 1 there (3 for seed 2). On the
# quick test streams, over five fits, it gained 0.4-0.9 points with 1 camera and -0.1-0.5 with 4
# (docs/benchmarks.md, "Findings of earlier experiments").
# Its price is on a camera that only ever sees clean frames: 84.89 % against the checkpoint's
# 85.00 % on 2,000 held-out clean training frames in 5 orders (about 2 frames), because after a
# clean frame read as a corruption the camera takes a frame or two longer to return. Applying
# the discount only once a corruption has held for 2 frames keeps the clean camera whole but
# gives back most of the gain (+0.21 points), so it was not taken.
#
# The detector's mistakes persist from frame to frame within a segment (a corruption it
# confuses, it keeps confusing), so averaging frames recovers little at long periods and costs
# a lot at N <= 4.
#
# Also tried on the same streams, and no better: a Bayes filter over the domains (a hidden
# Markov model with switch probability h per frame and the detector's probabilities tempered
# by T; h 0.01-0.7, T 0.5-8: at best equal to the rule before the discount), and choosing the
# table that maximises expected accuracy under the detector's probabilities (accuracy matrix
# measured on other held-out training frames: 0.3 points below argmax).
# The rule was tuned with the paper's table (one entry per corruption), before the severity
# estimate existed; the estimate never changes which domain a camera is in, only the statistics
# the domain's frames get.
DEFAULT_RULE = VoteRule(window=1, margin=0.3, hold=1, clean_discount=3.0)


def clean_index(domains: Sequence[str]) -> int | None:
    """Index of the clean domain in ``domains`` (what the clean discount applies to); None if there is none."""
    return list(domains).index(CLEAN) if CLEAN in domains else None


@dataclass
class CameraVote:
    """One camera's explicit state: the window of probabilities and the switching bookkeeping."""

    domains: int
    window: int
    probs: np.ndarray = field(init=False)      # window x domains ring buffer
    seen: int = 0                              # frames processed so far
    active: int = -1                           # domain index in use (-1 before the first frame)
    candidate: int = -1                        # leader currently accumulating evidence
    count: int = 0                             # consecutive frames the candidate has led
    switches: int = 0
    level_domain: int = -1                     # the active domain ``level_sum`` belongs to
    level_sum: np.ndarray | None = None        # summed severity log-probabilities since it took over

    def __post_init__(self) -> None:
        self.probs = np.zeros((self.window, self.domains), dtype=np.float64)

    def score(self) -> np.ndarray:
        """Mean probability per domain over the filled part of the window."""
        filled = min(self.seen, self.window)
        return self.probs[:filled].sum(axis=0) / filled


def step(state: CameraVote, rule: VoteRule, p: np.ndarray, clean: int | None = None) -> int:
    """Feed one frame's probabilities (D,) to a camera; returns the active domain for that frame.

    ``clean``: index of the clean domain, which the rule's clean discount applies to (None: no clean domain).
    """
    state.probs[state.seen % rule.window] = p
    state.seen += 1
    score = state.score()
    if rule.clean_discount and clean is not None and state.active not in (-1, clean):
        score[clean] *= np.exp(-rule.clean_discount)
        score /= score.sum()
    leader = int(score.argmax())
    if state.active < 0:
        state.active = leader
        return leader
    if leader != state.active and score[leader] - score[state.active] >= rule.margin:
        state.count = state.count + 1 if leader == state.candidate else 1
        state.candidate = leader
        if state.count >= rule.hold:
            state.active, state.candidate, state.count = leader, -1, 0
            state.switches += 1
    else:
        state.candidate, state.count = -1, 0
    return state.active


class Votes:
    """The vote states of every camera seen so far; ``update`` processes a batch in arrival order."""

    def __init__(self, rule: VoteRule, domains: int, clean: int | None = None) -> None:
        if rule.window < 1:
            raise ValueError(f"bad rule {rule}")
        if clean is not None and not 0 <= clean < domains:
            raise ValueError(f"clean domain index {clean} outside 0..{domains - 1}")
        self.rule, self.domains, self.clean = rule, domains, clean
        self.cameras: dict[Hashable, CameraVote] = {}

    def reset(self) -> None:
        self.cameras = {}

    def state(self, camera: Hashable) -> CameraVote:
        if camera not in self.cameras:
            self.cameras[camera] = CameraVote(self.domains, self.rule.window)
        return self.cameras[camera]

    def update(self, cameras: Sequence[Hashable], probs: np.ndarray) -> np.ndarray:
        """Active domain per frame (B,) for probabilities ``probs`` (B x D) of frames from ``cameras``."""
        if probs.shape != (len(cameras), self.domains):
            raise ValueError(f"probabilities of shape {probs.shape} for {len(cameras)} frames and {self.domains} domains")
        out = np.empty(len(cameras), dtype=np.int64)
        for i, cam in enumerate(cameras):  # arrival order: a camera's frames are processed as they came
            out[i] = step(self.state(cam), self.rule, probs[i], self.clean)
        return out

    def current(self, cameras: Sequence[Hashable]) -> np.ndarray:
        """Each frame's camera's active domain as it stands (B,), changing nothing; a camera not seen yet, or
        seen without a frame, gets the clean domain (0 without one)."""
        default = self.clean if self.clean is not None else 0
        return np.array([self.cameras[c].active if c in self.cameras and self.cameras[c].active >= 0 else default
                         for c in cameras], dtype=np.int64)

    def current_levels(self, cameras: Sequence[Hashable], active: np.ndarray, severities: int) -> np.ndarray:
        """Each frame's camera's severity weights as they stand (B x S), changing nothing: the softmax of the
        camera's summed evidence when it belongs to ``active[b]``, zeros where there is none."""
        out = np.zeros((len(cameras), severities), dtype=np.float64)
        for i, cam in enumerate(cameras):
            state = self.cameras.get(cam)
            if state is not None and state.level_sum is not None and state.level_domain == int(active[i]):
                w = np.exp(state.level_sum - state.level_sum.max())
                out[i] = w / w.sum()
        return out

    def levels(self, cameras: Sequence[Hashable], active: np.ndarray, logp: np.ndarray) -> np.ndarray:
        """Severity weights per frame (B x S) of the frames ``update`` just processed.

        ``logp`` (B x D x S): log-probabilities of each severity given each domain (the detector's
        severity head); ``active`` (B,): what ``update`` returned for the same frames. Frame b's
        weights are the softmax of its camera's summed ``logp[., active, :]`` over the frames since
        that camera's active domain last changed, frame b included.
        """
        if logp.shape[:2] != (len(cameras), self.domains) or len(active) != len(cameras):
            raise ValueError(f"severity log-probabilities of shape {logp.shape} for {len(cameras)} frames "
                             f"and {self.domains} domains")
        sums = np.empty((len(cameras), logp.shape[2]), dtype=np.float64)
        for i, cam in enumerate(cameras):
            state, d = self.state(cam), int(active[i])
            if state.level_domain != d or state.level_sum is None:
                state.level_domain, state.level_sum = d, logp[i, d].astype(np.float64)
            else:
                state.level_sum = state.level_sum + logp[i, d]
            sums[i] = state.level_sum
        weights = np.exp(sums - sums.max(axis=1, keepdims=True))
        return weights / weights.sum(axis=1, keepdims=True)


def replay(rule: VoteRule, probs: np.ndarray, clean: int | None = None) -> np.ndarray:
    """Active domain per frame of one camera's probability sequence (T x D): for tuning and tests."""
    votes = Votes(rule, probs.shape[1], clean)
    return votes.update([0] * len(probs), probs)
