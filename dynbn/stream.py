"""In-process frame streams for benchmarks: cameras with their own shift schedules, interleaved.

A stream is built from a pool of labelled uint8 frames (the CIFAR-10 test split shuffled
with a seed, or training frames for tuning). Each camera has a ``dynbn.schedule.Schedule``;
camera c takes the next ``len(schedule_c)`` frames of the pool (wrapping round if the pool
runs out). The cameras are interleaved into one arrival order by a seeded shuffle that keeps
each camera's own order, and the benchmark cuts that order into batches of B consecutive
arrivals, so a batch can straddle a shift and mix cameras.

Every frame carries its camera, its index within the camera, its label, domain, severity,
how many frames of its segment came before it (``since_shift``), how many follow
(``until_shift``) and its segment number within the camera (0: the camera's first segment,
which starts with the stream rather than after a shift).

The label order (``dynbn.labels``) decides which pool image each frame shows: ``iid`` (the
default) is the walk through the shuffled pool above; ``dirichlet:DELTA`` and ``video:L`` take
the pool positions from ``labels.sequence`` (one sequence, camera c its own block of it, each
block starting on a fresh video run), and a video order jitters every frame before corruption.
Shift schedules and corruption draws do not depend on the label order.

Corruption is grouped: all frames of one (domain, severity) go through ``corrupt`` in one
call, with a generator seeded by (seed, purpose, domain, severity).
"""

from __future__ import annotations

import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from . import labels as label_order
from .domains import CLEAN
from .sampling import apply
from .schedule import Schedule, Segment, periodic, random_lengths
from .spectrum import to_tensor

# kept apart from dynbn.fitting's purposes (1-3) so stream draws never repeat fitting's
PURPOSE = {"test": 10, "tune": 11}


@dataclass
class Batch:
    """B consecutive arrivals: frames as float tensors plus what the arms and the scorer need."""

    rows: slice
    x: torch.Tensor          # B x 3 x H x W in [0, 1]
    cameras: list[int]
    truth: list[str]


@dataclass
class Stream:
    """Frames in arrival order with their metadata (all arrays have one row per frame)."""

    images: np.ndarray       # T x H x W x 3 uint8, corrupted
    labels: np.ndarray       # T class labels
    camera: np.ndarray       # T camera ids 0..C-1
    index: np.ndarray        # T index of the frame within its camera
    domain: np.ndarray       # T indices into ``domains``
    severity: np.ndarray     # T
    since_shift: np.ndarray  # T frames of the same segment before this one
    until_shift: np.ndarray  # T frames of the same segment after this one
    segment: np.ndarray      # T segment number within the camera
    domains: tuple[str, ...]
    pool: np.ndarray | None = None  # T index of each frame's image in the pool
    labels_order: str = "iid"       # the label order's spec (dynbn.labels)

    def __len__(self) -> int:
        return len(self.labels)

    def truth(self, rows: slice | np.ndarray) -> list[str]:
        """Domain names of the given rows."""
        return [self.domains[d] for d in self.domain[rows]]

    def batches(self, size: int) -> Iterator[Batch]:
        """Consecutive batches of ``size`` arrivals (the last one may be shorter)."""
        if size < 1:
            raise ValueError(f"batch size must be >= 1, got {size}")
        for start in range(0, len(self), size):
            rows = slice(start, min(start + size, len(self)))
            yield Batch(rows, to_tensor(self.images[rows]), self.camera[rows].tolist(), self.truth(rows))


def with_phase(schedule: Schedule, offset: int) -> Schedule:
    """Drop the first ``offset`` frames: the camera joins its schedule part-way through a segment."""
    segments = list(schedule.segments)
    while offset > 0:
        first = segments[0]
        if first.length > offset:
            segments[0] = Segment(first.domain, first.length - offset, first.severity)
            break
        offset -= first.length
        segments.pop(0)
    return Schedule(tuple(segments))


def periodic_schedules(domains: Sequence[str], period: int, frames: int, cameras: int, rng: np.random.Generator,
                       severity: int | tuple[int, ...] = 5, phase: bool = True) -> list[Schedule]:
    """One period-N schedule of ``frames`` frames per camera; with ``phase``, each joins at a random point.

    Without a phase every camera's shifts fall on multiples of N, and with one camera and
    B = N every batch would hold exactly one segment: an alignment no real camera has.
    """
    out = []
    for _ in range(cameras):
        offset = int(rng.integers(period)) if phase else 0
        out.append(with_phase(periodic(list(domains), period, frames + offset, rng, severity), offset))
    return out


def random_schedules(domains: Sequence[str], min_len: int, max_len: int, frames: int, cameras: int,
                     rng: np.random.Generator, severity: int | tuple[int, ...] = 5) -> list[Schedule]:
    """One schedule of random segment lengths in [min_len, max_len] per camera."""
    return [random_lengths(list(domains), min_len, max_len, frames, rng, severity) for _ in range(cameras)]


def interleave(lengths: Sequence[int], rng: np.random.Generator) -> np.ndarray:
    """Camera id of every arrival: a seeded shuffle of the cameras' frames, each camera's order kept."""
    return rng.permutation(np.repeat(np.arange(len(lengths)), lengths))


def _per_camera(schedule: Schedule, domains: Sequence[str]) -> dict[str, np.ndarray]:
    """Per-frame metadata of one camera, in its own order."""
    lookup = {d: i for i, d in enumerate(domains)}
    unknown = sorted({s.domain for s in schedule.segments} - set(lookup))
    if unknown:
        raise ValueError(f"schedule names domains {unknown} that the stream's domain list {list(domains)} lacks")
    cols = {k: [] for k in ("domain", "severity", "since_shift", "until_shift", "segment")}
    for number, seg in enumerate(schedule.segments):
        cols["domain"].append(np.full(seg.length, lookup[seg.domain]))
        cols["severity"].append(np.full(seg.length, 0 if seg.domain == CLEAN else seg.severity))
        cols["since_shift"].append(np.arange(seg.length))
        cols["until_shift"].append(np.arange(seg.length)[::-1])
        cols["segment"].append(np.full(seg.length, number))
    return {k: np.concatenate(v) for k, v in cols.items()}


def build_stream(images: np.ndarray, labels: np.ndarray, schedules: Sequence[Schedule], domains: Sequence[str],
                 seed: int, frost_dir, purpose: str = "test",
                 labels_order: str | label_order.LabelOrder = "iid") -> Stream:
    """Corrupt and interleave the cameras' frames (pool ``images`` uint8 N x H x W x 3, ``labels`` (N,)).

    ``labels_order``: ``iid``, ``dirichlet:DELTA`` or ``video:L`` (``dynbn.labels.parse_order``).
    """
    lo = label_order.parse_order(labels_order)
    if len(images) == 0 or len(images) != len(labels):
        raise ValueError(f"need a non-empty pool with one label per image, got {len(images)} images, {len(labels)} labels")
    lengths = [len(s) for s in schedules]
    per_cam = [_per_camera(s, domains) for s in schedules]
    pool_start = np.cumsum([0] + lengths[:-1])
    order = interleave(lengths, np.random.default_rng([seed, PURPOSE[purpose], 0]))
    rank = np.zeros(len(order), dtype=np.int64)  # index of each arrival within its camera
    for c in range(len(schedules)):
        rank[order == c] = np.arange(lengths[c])
    flat = pool_start[order] + rank  # position of each arrival in the cameras' concatenated frames
    meta = {k: np.concatenate([m[k] for m in per_cam]).astype(np.int64)[flat] for k in per_cam[0]}
    if lo.iid:
        pool = flat % len(images)
        frames = images[pool].copy()
    else:
        pool = _ordered_pool(labels, lengths, order, rank, lo, np.random.default_rng([seed, PURPOSE[purpose], 1]))
        frames = label_order.jitter(images[pool], lo, np.random.default_rng([seed, PURPOSE[purpose], 2])).copy()
    for d, s in sorted(set(zip(meta["domain"].tolist(), meta["severity"].tolist()))):
        rows = np.flatnonzero((meta["domain"] == d) & (meta["severity"] == s))
        rng = group_rng(seed, purpose, domains[d], s)
        frames[rows] = apply(frames[rows], domains[d], max(s, 1), rng, frost_dir)
    return Stream(frames, labels[pool].astype(np.int64), order.astype(np.int64), rank, meta["domain"], meta["severity"],
                  meta["since_shift"], meta["until_shift"], meta["segment"], tuple(domains), pool.astype(np.int64), str(lo))


def _ordered_pool(labels: np.ndarray, lengths: Sequence[int], order: np.ndarray, rank: np.ndarray,
                  lo: label_order.LabelOrder, rng: np.random.Generator) -> np.ndarray:
    """Pool index of every arrival under a non-iid order: camera c reads its own block of one sequence.

    Blocks are rounded up to whole video runs, so every camera starts on a fresh image.
    """
    blocks = [-(-n // lo.hold) * lo.hold for n in lengths]
    seq = label_order.sequence(labels, sum(blocks), lo, rng)
    start = np.cumsum([0] + blocks[:-1])
    return seq[start[order] + rank]


def group_rng(seed: int, purpose: str, domain: str, severity: int) -> np.random.Generator:
    """The generator for corrupting one (domain, severity) group of a stream (any domain name)."""
    return np.random.default_rng([seed, PURPOSE[purpose], zlib.crc32(domain.encode()), severity])
