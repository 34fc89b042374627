"""Label order of a stream: which pool image each frame shows, one after another.

``iid``: every frame an independent draw (passes of seeded permutations of the pool).
``dirichlet:DELTA``: the non-i.i.d. protocol of the test-time-adaptation literature (NOTE,
Gong et al. NeurIPS 2022; RoTTA, Yuan et al. CVPR 2023, DELTA = 0.1): S = number of
classes time slots; each class's shuffled images are split across the slots in proportions
drawn from Dirichlet(DELTA * ones(S)); each slot's class parts come in a shuffled order (a
part's own images in shuffled order) and the slots are concatenated in order. Small DELTA
gives long runs of one class; a large DELTA spreads every class evenly over the slots, yet
each part still comes whole (runs of about pool / (classes x slots) frames), as in RoTTA.
``video:L``: images drawn as in iid, each held in view for L consecutive frames, every frame
with a small change (``jitter``: a shift of up to ``SHIFT`` pixels, edge-padded, and a
brightness gain within ``1 +- GAIN``).

numpy only: the benchmark (``dynbn.stream``) and the simulator (``simulator.sources``) share it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

KINDS = ("iid", "dirichlet", "video")
SHIFT = 2        # pixels, per axis, of a video frame against its source image
GAIN = 0.04      # brightness: a video frame is its (shifted) source image times 1 +- GAIN


@dataclass(frozen=True)
class LabelOrder:
    """A parsed ``--labels`` spec; ``str()`` gives the spec back."""

    kind: str = "iid"
    delta: float = 0.0   # dirichlet concentration
    hold: int = 1        # video: frames each image stays in view

    def __str__(self) -> str:
        if self.kind == "dirichlet":
            return f"dirichlet:{self.delta:g}"
        if self.kind == "video":
            return f"video:{self.hold}"
        return "iid"

    @property
    def iid(self) -> bool:
        return self.kind == "iid"


IID = LabelOrder()


def parse_order(spec: str | LabelOrder) -> LabelOrder:
    """``iid``, ``dirichlet:DELTA`` (DELTA > 0) or ``video:L`` (integer L >= 1); ValueError naming the spec."""
    if isinstance(spec, LabelOrder):
        return spec
    text = str(spec).strip()
    kind, sep, arg = text.partition(":")
    kind = kind.strip().lower()
    usage = f"label order {spec!r}: expected iid, dirichlet:DELTA (DELTA > 0) or video:L (integer L >= 1)"
    if kind == "iid" and not sep:
        return IID
    if kind == "dirichlet" and sep:
        try:
            delta = float(arg)
        except ValueError:
            raise ValueError(usage) from None
        if not np.isfinite(delta) or delta <= 0:
            raise ValueError(usage)
        return LabelOrder("dirichlet", delta=delta)
    if kind == "video" and sep:
        try:
            hold = int(arg)
        except ValueError:
            raise ValueError(usage) from None
        if hold < 1:
            raise ValueError(usage)
        return LabelOrder("video", hold=hold)
    raise ValueError(usage)


def dirichlet_pass(labels: np.ndarray, delta: float, rng: np.random.Generator, slots: int | None = None) -> np.ndarray:
    """One Dirichlet-ordered pass over the pool: a permutation of ``range(len(labels))``."""
    labels = np.asarray(labels)
    classes = np.unique(labels)
    slots = len(classes) if slots is None else slots
    per_slot: list[list[np.ndarray]] = [[] for _ in range(slots)]
    for c in classes:
        members = rng.permutation(np.flatnonzero(labels == c))
        share = rng.dirichlet(np.full(slots, delta))
        cuts = (np.cumsum(share)[:-1] * len(members)).astype(np.int64)
        for s, part in enumerate(np.split(members, cuts)):
            per_slot[s].append(part)
    # within a slot the order of the classes' parts is shuffled, each part kept whole (as RoTTA's sampler does;
    # shuffling the images themselves would break the runs into ~1-2 frames wherever a slot holds several classes)
    return np.concatenate([parts[i] for parts in per_slot for i in rng.permutation(len(parts))]).astype(np.int64)


def _passes(n: int, size: int, one_pass) -> np.ndarray:
    """Whole passes from ``one_pass()`` until ``n`` indices, cut to ``n``."""
    out, total = [], 0
    while total < n:
        out.append(one_pass())
        total += size
    return np.concatenate(out)[:n] if out else np.zeros(0, np.int64)


def sequence(labels: np.ndarray, n: int, order: str | LabelOrder, rng: np.random.Generator) -> np.ndarray:
    """Pool indices of ``n`` consecutive frames in the given order (the pool repeats, a fresh pass at a time)."""
    order = parse_order(order)
    size = len(labels)
    if size == 0:
        raise ValueError("need a non-empty pool")
    if order.kind == "dirichlet":
        return _passes(n, size, lambda: dirichlet_pass(labels, order.delta, rng))
    images = -(-n // order.hold)  # video: each image held for ``hold`` frames
    return np.repeat(_passes(images, size, lambda: rng.permutation(size)), order.hold)[:n].astype(np.int64)


@dataclass(frozen=True)
class Jitter:
    """Per-frame small changes of a video order: shift (n, 2) pixels (dy, dx) and brightness gain (n,)."""

    shift: np.ndarray
    gain: np.ndarray


def draw_jitter(n: int, rng: np.random.Generator) -> Jitter:
    """Independent shifts in [-SHIFT, SHIFT]^2 and gains in [1 - GAIN, 1 + GAIN] for ``n`` frames."""
    return Jitter(rng.integers(-SHIFT, SHIFT + 1, size=(n, 2)), rng.uniform(1 - GAIN, 1 + GAIN, size=n))


def apply_jitter(frames: np.ndarray, jitter: Jitter) -> np.ndarray:
    """uint8 (n, H, W, 3) frames shifted (edge-padded) and brightened frame by frame."""
    out = np.empty_like(frames)
    p = SHIFT
    padded = np.pad(frames, ((0, 0), (p, p), (p, p), (0, 0)), mode="edge")
    h, w = frames.shape[1:3]
    for i, ((dy, dx), g) in enumerate(zip(jitter.shift.tolist(), jitter.gain.tolist())):
        moved = padded[i, p - dy:p - dy + h, p - dx:p - dx + w]
        out[i] = np.clip(np.rint(moved * g), 0, 255).astype(np.uint8)
    return out


def jitter(frames: np.ndarray, order: str | LabelOrder, rng: np.random.Generator) -> np.ndarray:
    """The frames as a video order shows them (a copy with per-frame jitter); other orders: unchanged."""
    if parse_order(order).kind != "video":
        return frames
    return apply_jitter(frames, draw_jitter(len(frames), rng))
