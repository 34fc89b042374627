"""dynbn: swap in the BN statistics of each frame's corruption (arXiv 2310.20649).

``DynBNFrame`` detects every frame's domain from its spectrum and normalises it with that
domain's table entry (per-sample statistics, so batches may mix cameras and domains).
``DynBNOracle`` uses the true domain: the upper bound for any detector.
``DynBNVote`` smooths the detector's guesses over time per camera (``dynbn.vote``): the
deployed arm for streams.
"""

from __future__ import annotations

from functools import cached_property

import numpy as np
import torch

from ..bn.per_sample import DomainSwitch, FlatBN, affine, flat_bn, patched_bn, row_forwards, spans
from ..bn.table import BNTable, bn_layers
from ..detector import Detector
from ..device import activation_dtype, full_precision
from ..vote import DEFAULT_RULE, VoteRule, Votes, clean_index
from .base import Condition, Method, cameras_or_default


class DynBNOracle(Method):
    """Per-sample statistics of the true domain (reads ``truth``)."""

    name = "dynbn_oracle"
    needs_truth = True

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
        self.last_confidence: torch.Tensor | None = None

    @torch.no_grad()
    def detect(self, x: torch.Tensor) -> torch.Tensor:
        """Detected domain index per frame (indices into ``detector.domains``)."""
        probs = self.detector(x).softmax(dim=1)
        self.last_confidence, index = probs.max(dim=1)
        return index

    @torch.no_grad()
    def forward(self, x, cameras=None, truth=None) -> torch.Tensor:
        self.last_detected = self.detect(x)
        return self.switch.forward(x, self.last_detected)

    def last_conditions(self) -> list[Condition] | None:
        if self.last_detected is None:
            return None
        names = self.detector.domains
        return [Condition(names[int(i)], None, float(p)) for i, p in zip(self.last_detected, self.last_confidence)]


# Weight of a corruption's own entry (severities mixed) in the statistics of a frame of that corruption
# when the severity is estimated; the severity entries share the rest. Chosen on streams of corrupted
# TRAINING images held out of fitting (quick fit, seed 0, 1 camera, 2,048 frames per period, N = 1 to
# 256; `stream-bench --split train`; superseded reports, summarised in docs/benchmarks.md), dynbn_vote's
# accuracy averaged over N at severity 1 / 3 / 5:
#   one entry per corruption (the paper's table, weight 1):  73.45 / 69.45 / 61.69 %
#   severity entries alone (weight 0):                        74.01 / 68.84 / 63.13 %
#   half and half (weight 0.5):                               73.96 / 69.51 / 63.12 %
# The severity entries alone lose 0.6 points at severity 3, where the corruption's entry, which pools
# severities 1-5, suits better than its own severity-3 entry; half of each keeps severity 3 whole and
# the gains at 1 and 5. (0.25 and 0.5 were within 0.15 points of each other in a first trial.)
CORRUPTION_WEIGHT = 0.5


class DynBNVote(Method):
    """Detect every frame's domain, smooth the guesses per camera with a vote, then swap statistics.

    One detector forward for the whole batch; the vote (``dynbn.vote``) then walks the batch
    in arrival order, each frame updating its own camera's state; the model runs once with
    per-sample statistics of each frame's active domain. ``last_index`` holds the active
    domain index per frame of the last batch (into ``detector.domains``).

    Severity: when the detector carries a severity head and the table holds an entry per
    (corruption, severity) (``fitting.build`` makes both), a frame of corruption c is
    normalised with the mixture of c's severity entries (moments of the mixture, as
    ``dynbn_soft``) weighted by its camera's severity estimate (``Votes.levels``: the head's
    evidence summed over the frames since the camera's corruption took over). ``severity=False``
    uses the one entry per corruption even then (the paper's table); ``None`` (default) uses
    severity whenever both parts are there, ``True`` insists on them.

    The per-sample BN here is ``per_sample.row_forwards``: the arithmetic of ``DomainSwitch``,
    with each frame's ``x * scale + shift`` computed for all layers at once (B x all channels)
    and applied in one ``addcmul`` per layer, so a mixed batch costs what plain BN costs. The
    table entries' maps are computed from the model's BN affine parameters on first use; no arm
    changes those. With severity, each frame's mixed statistics are computed per batch, for all
    layers at once (three small matrix products, ``_mixed``), then turned into the same maps.
    """

    name = "dynbn_vote"
    carries_state = True

    def __init__(self, model, table: BNTable, detector: Detector, rule: VoteRule = DEFAULT_RULE,
                 severity: bool | None = None, corruption_weight: float = CORRUPTION_WEIGHT) -> None:
        super().__init__(model)
        if not 0.0 <= corruption_weight <= 1.0:
            raise ValueError(f"corruption_weight is a mixture weight in [0, 1], got {corruption_weight}")
        self.corruption_weight = float(corruption_weight)
        missing = sorted(set(detector.domains) - set(table.domains))
        if missing:
            raise ValueError(f"the detector names domains {missing} that the BN table lacks")
        table.check(model)
        self.detector = detector.eval()
        self.layers = bn_layers(model)
        self.votes = Votes(rule, len(detector.domains), clean_index(detector.domains))
        self.severity = self._use_severity(table, detector, severity)
        # rows of the statistics a frame may be normalised with: the detector's domains, then (with
        # severity) every (corruption, severity) entry; ``levels[d]``: the rows domain d mixes, its own
        # entry first and then its S severity entries (its own entry repeated for clean)
        rows = list(detector.domains)
        levels = [[d] * (1 + len(detector.severities) if self.severity else 1) for d in range(len(rows))]
        if self.severity:
            for d, domain in enumerate(detector.domains):
                if bool(detector.has_levels[d]):
                    levels[d] = [d] + list(range(len(rows), len(rows) + len(detector.severities)))
                    rows += [f"{domain}@{s}" for s in detector.severities]
        self.rows = rows
        self.levels = torch.tensor(levels, dtype=torch.long)  # D x (1 + S); D x 1 without severity
        self.stats = {name: table.stacked(name, rows) for name in self.layers}  # R x C each
        self.last_index: torch.Tensor | None = None
        self.last_levels: torch.Tensor | None = None  # B x (1 + S) weights of the last batch (severity only)
        self.last_confidence: np.ndarray | None = None  # B: the detector's probability of each frame's active domain

    @staticmethod
    def _use_severity(table: BNTable, detector: Detector, wanted: bool | None) -> bool:
        if wanted is False:
            return False
        if not detector.has_severity:
            if wanted:
                raise ValueError("severity=True needs a detector with a severity head (fitted by `dynbn fit`)")
            return False
        lacking = [f"{d}@{s}" for d, read in zip(detector.domains, detector.has_levels.tolist()) if read
                   for s in detector.severities if f"{d}@{s}" not in table.domains]
        if lacking:
            raise ValueError(f"the detector reads severities but the BN table lacks the entries {lacking[:5]}"
                             f"{' ...' if len(lacking) > 5 else ''}: calibrate the table with the detector "
                             "(`dynbn fit`), or pass severity=False")
        return True

    @property
    def rule(self) -> VoteRule:
        return self.votes.rule

    def reset(self) -> None:
        self.votes.reset()
        self.last_index = None
        self.last_levels = None
        self.last_confidence = None

    @torch.no_grad()
    def forward(self, x, cameras=None, truth=None) -> torch.Tensor:
        cams = cameras_or_default(cameras, len(x))
        logits, _, logp = self.detector.read(x, severity=self.severity)
        active = self.vote(cams, logits)
        self.last_index = torch.from_numpy(active)
        return self.voted_forward(x, cams, active, self.level_weights(cams, active, logp))

    @torch.no_grad()
    def predict(self, x, cameras=None, truth=None) -> torch.Tensor:
        """Each frame normalised as its camera's vote stands (its active domain and severity estimate; a new
        camera: clean), without running the detector or moving the vote."""
        cams = cameras_or_default(cameras, len(x))
        active = self.votes.current(cams)
        self.last_index = torch.from_numpy(active)
        self.last_confidence = np.full(len(active), np.nan)  # no detector ran
        weights = None
        if self.severity:
            estimate = self.votes.current_levels(cams, active, len(self.detector.severities))
            weights = self._weights(estimate, active, None)
            # rows a subclass adds after the severity entries (dynbn_open's checkpoint statistics) get no weight
            weights = torch.nn.functional.pad(weights, (0, self.levels.shape[1] - weights.shape[1]))
        return self.voted_forward(x, cams, active, weights)

    def vote(self, cams: list, logits: torch.Tensor) -> np.ndarray:
        """Each frame's active domain index after its camera's vote; keeps each frame's detector probability
        of that domain (``last_confidence``)."""
        probs = logits.softmax(dim=1).double().cpu().numpy()
        active = self.votes.update(cams, probs)
        self.last_confidence = probs[np.arange(len(active)), active]
        return active

    def last_conditions(self) -> list[Condition] | None:
        """Each frame's active domain, its camera's severity estimate (the most probable severity; None for
        clean and without a severity head) and the detector's probability of that domain for the frame."""
        if self.last_index is None:
            return None
        names = list(self.detector.domains) + ["unknown"]  # index D: dynbn_open's unknown frames
        severity: list[int | None] = [None] * len(self.last_index)
        if self.last_levels is not None:
            estimate = self.last_levels[:, 1:]  # B x S, zero for frames normalised by one row
            for b in torch.nonzero(estimate.sum(1) > 0).flatten().tolist():
                severity[b] = int(self.detector.severities[int(estimate[b].argmax())])
        return [Condition(names[int(i)], s, float(c)) for i, s, c in zip(self.last_index, severity, self.last_confidence)]

    def level_weights(self, cams: list, active: np.ndarray, logp: torch.Tensor | None,
                      single: np.ndarray | None = None) -> torch.Tensor | None:
        """B x (1 + S) weights over each frame's ``levels`` rows (None without severity): for a frame whose
        domain has severities, ``corruption_weight`` on the domain's own entry and the rest shared by its
        severity entries as the camera's severity estimate says; all weight on the first row for the other
        frames and for those marked in ``single`` (B,), which keep one row exactly."""
        if not self.severity:
            return None
        return self._weights(self.votes.levels(cams, active, logp.double().cpu().numpy()), active, single)

    def _weights(self, estimate: np.ndarray, active: np.ndarray, single: np.ndarray | None) -> torch.Tensor:
        """``level_weights`` from the severity estimate per frame (B x S; a row of zeros: no estimate, the
        frame keeps its domain's own entry). In numpy: a handful of frames' weights, where torch's per-op
        overhead would cost more than the arithmetic."""
        w = np.empty((len(active), 1 + estimate.shape[1]), dtype=np.float32)
        w[:, 0] = self.corruption_weight
        w[:, 1:] = (1 - self.corruption_weight) * estimate.astype(np.float32)
        plain = ~self._has_levels[active] | (estimate.sum(1) == 0)
        if single is not None:
            plain |= single
        w[plain] = 0.0
        w[plain, 0] = 1.0
        self.last_levels = torch.from_numpy(w)
        return self.last_levels

    @cached_property
    def _levels(self) -> np.ndarray:
        """``self.levels`` as numpy (indexed per batch, where torch's indexing costs more than the lookup)."""
        return self.levels.numpy()

    @cached_property
    def _has_levels(self) -> np.ndarray:
        """Per detector domain: whether its severity is read (``detector.has_levels``, as numpy)."""
        return self.detector.has_levels.cpu().numpy()

    def voted_forward(self, x: torch.Tensor, cams: list, active: np.ndarray,
                      weights: torch.Tensor | None = None) -> torch.Tensor:
        """The model once the vote has chosen each frame's domain (``active``) and severity weights; here,
        the table rows alone."""
        if weights is None:
            return self.table_forward(x, torch.from_numpy(active))
        with full_precision(x):  # statistics in float32, under --precision bf16/fp16 too
            mean, var = self._mixed(torch.from_numpy(self._levels[active]).to(x.device), weights.to(x.device))
            scale, shift = affine(self._flat_bn, mean, var)  # B x (all channels): every layer's map at once
        return self.rows_model(x, scale, shift)

    def rows_model(self, x: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
        """The model with frame b's BN as ``x * scale[b] + shift[b]`` (B x all layers' channels side by side)."""
        dtype = activation_dtype(x)  # the maps in the activations' type: BN's output type, as plain BN keeps it
        forwards = row_forwards(self.layers, scale.to(dtype), shift.to(dtype))
        with patched_bn(self.layers, lambda name, bn: forwards[name]):
            return self.model(x)

    def frame_stats(self, index: torch.Tensor, weights: torch.Tensor) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """Per-frame (mean, var), B x C, of every layer: the moments of the mixture of rows ``index[b]``
        (B x L) weighted by ``weights[b]`` (B x L)."""
        with full_precision(weights):
            mean, var = self._mixed(index, weights)
        return {name: (mean[:, a:b], var[:, a:b]) for name, (a, b) in self._spans.items()}

    def _mixed(self, index: torch.Tensor, weights: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``frame_stats`` for all layers' channels side by side (B x sum C), as three small matrix
        products for the whole model: mean = W M, var = W V + (W M^2 - mean^2), W (B x rows) holding each
        frame's weights. A frame with all its weight on one row gets that row's statistics exactly (W M^2
        and mean^2 are then the same number)."""
        mean_rows, var_rows, square_rows = self._flat_stats
        w = torch.zeros(len(index), len(mean_rows), dtype=weights.dtype, device=weights.device)
        w.scatter_add_(1, index, weights)
        mean = w @ mean_rows
        return mean, w @ var_rows + (w @ square_rows - mean * mean).clamp_min(0.0)

    @cached_property
    def _spans(self) -> dict[str, tuple[int, int]]:
        """Each layer's slice of the side-by-side channels."""
        return spans(self.layers)

    @cached_property
    def _flat_stats(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``self.stats`` (rows x C per layer) side by side: (rows x sum C) means, variances and squared
        means (built on first use, after every subclass has added its rows)."""
        mean = torch.cat([self.stats[name][0] for name in self.layers], 1)
        return mean, torch.cat([self.stats[name][1] for name in self.layers], 1), mean * mean

    @cached_property
    def _flat_bn(self) -> FlatBN:
        """Every layer's BN weight, bias and eps side by side, for ``affine`` of all layers at once."""
        return flat_bn(self.layers)

    def table_forward(self, x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        """The model with frame b normalised by table row ``index[b]`` (into ``detector.domains``)."""
        scales, shifts = self._flat_maps
        index = index.to(scales.device)
        return self.rows_model(x, scales[index], shifts[index])

    @cached_property
    def _flat_maps(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Each detector domain's table entry as ``x * scale + shift``, all layers' channels side by side
        (D x sum C each), from the model's BN affine parameters (which no arm changes)."""
        mean = torch.cat([self.stats[name][0][:len(self.detector.domains)] for name in self.layers], 1)
        var = torch.cat([self.stats[name][1][:len(self.detector.domains)] for name in self.layers], 1)
        return affine(self._flat_bn, mean, var)


class DynBNFrameSeverity(DynBNVote):
    """``dynbn_frame`` with the severity estimate: each frame's detected domain (per-frame argmax, no vote),
    its statistics mixed from that domain's entry and its severity entries as ``dynbn_vote`` mixes them, by
    the severity head's reading of this one frame alone.

    Every frame is its own camera, forgotten after the batch (``VoteRule()``, the per-frame rule), so nothing
    pools across frames: for independent images, such as the reproduction's, where a camera's evidence does
    not exist. The reproduction's ``dynbn`` arm when the detector carries a severity head.
    """

    name = "dynbn_frame_severity"
    carries_state = False

    def __init__(self, model, table: BNTable, detector: Detector, corruption_weight: float = CORRUPTION_WEIGHT) -> None:
        super().__init__(model, table, detector, VoteRule(), severity=True, corruption_weight=corruption_weight)
        self.last_detected: torch.Tensor | None = None

    @torch.no_grad()
    def forward(self, x, cameras=None, truth=None) -> torch.Tensor:
        self.reset()
        out = super().forward(x, list(range(len(x))))
        self.last_detected = self.last_index
        return out

    def predict(self, x, cameras=None, truth=None) -> torch.Tensor:
        """Nothing carries over from batch to batch: the plain model, as for every stateless arm."""
        return Method.predict(self, x, cameras, truth)
