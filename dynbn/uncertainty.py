"""Block-bootstrap intervals for stream accuracies (stream-bench, the service report) and paired differences (numpy only).

The unit that is resampled is a **block**: the frames of one segment of one camera (a
``(camera, segment)`` pair of ``dynbn.stream.Stream``). Frames within a segment share a
corruption, and the dynbn arms share a domain choice within it: their errors are correlated,
so resampling single frames would treat a stream of a few segments as thousands of
independent trials and give intervals that are far too narrow. Resampling whole blocks with
replacement keeps that correlation inside each draw.

Accuracy on a resample is a ratio: correct frames over frames of the drawn blocks (blocks
differ in length, so it is not the mean of per-block accuracies). Intervals are percentile
intervals (2.5 % and 97.5 % of the resampled values).

Paired comparisons draw the **same** blocks for both arms in every resample: the arms saw
the same frames, so what they share (hard frames, hard segments) cancels in the difference.
"""

from __future__ import annotations

import numpy as np

RESAMPLES = 1000
LEVEL = 0.95


def block_ids(camera: np.ndarray, segment: np.ndarray) -> np.ndarray:
    """One integer per frame naming its block, the (camera, segment) pair, numbered 0..K-1."""
    pairs = np.stack([np.asarray(camera), np.asarray(segment)], axis=1)
    return np.unique(pairs, axis=0, return_inverse=True)[1].reshape(-1)


def _weights(k: int, resamples: int, rng: np.random.Generator) -> np.ndarray:
    """resamples x k: how many times each of k blocks is drawn in each resample (k draws with replacement)."""
    draws = rng.integers(0, k, size=(resamples, k)) + k * np.arange(resamples)[:, None]
    return np.bincount(draws.ravel(), minlength=resamples * k).reshape(resamples, k)


def resampled_accuracies(correct: dict[str, np.ndarray], blocks: np.ndarray, resamples: int,
                         rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Per arm, its accuracy on each of ``resamples`` block resamples of one stream.

    ``correct`` maps an arm to its per-frame correctness (booleans, one per frame, the same
    frames for every arm); ``blocks`` gives each frame's block id (``block_ids``). Every arm
    is scored on the same draws of blocks, so the arrays can be subtracted for paired
    differences.
    """
    blocks = np.unique(np.asarray(blocks), return_inverse=True)[1].reshape(-1)
    k = int(blocks.max()) + 1 if len(blocks) else 0
    if k == 0:
        raise ValueError("no frames to resample")
    w = _weights(k, resamples, rng)
    frames = w @ np.bincount(blocks, minlength=k)  # frames in each resample (> 0: every block has a frame)
    return {arm: (w @ np.bincount(blocks, weights=np.asarray(c, dtype=float), minlength=k)) / frames
            for arm, c in correct.items()}


def interval(values: np.ndarray, level: float = LEVEL) -> list[float]:
    """The percentile interval of resampled values: [low, high]."""
    tail = 100 * (1 - level) / 2
    low, high = np.percentile(values, [tail, 100 - tail])
    return [float(low), float(high)]


def block_bootstrap(correct: dict[str, np.ndarray], blocks: np.ndarray, resamples: int = RESAMPLES,
                    rng: np.random.Generator | None = None) -> dict[str, dict]:
    """Per arm: ``{"accuracy": correct frames / frames, "ci95": [low, high]}`` from a bootstrap over blocks.

    Blocks (``blocks``: one id per frame) are drawn with replacement, as many as there are,
    ``resamples`` times; with one block per frame this is the ordinary frame bootstrap.
    """
    rng = np.random.default_rng(0) if rng is None else rng
    res = resampled_accuracies(correct, blocks, resamples, rng)
    return {arm: {"accuracy": float(np.mean(c)), "ci95": interval(res[arm])} for arm, c in correct.items()}


def paired(streams: list[tuple[dict[str, np.ndarray], np.ndarray]], reference: str, resamples: int = RESAMPLES,
           rng: np.random.Generator | None = None) -> dict[str, dict]:
    """Per arm other than ``reference``: the mean over streams of (reference's accuracy minus the arm's),
    ``{"diff": ..., "ci95": [low, high]}``.

    ``streams`` holds, per stream (one per shift period), the per-frame correctness of every
    arm on it and its block ids. The bootstrap is joint: in each resample the blocks of every
    stream are drawn anew (independently across streams, which share no frames), every arm
    is scored on the same draws, each stream's difference is taken and the differences are
    averaged over the streams.
    """
    rng = np.random.default_rng(0) if rng is None else rng
    diffs: dict[str, list[float]] = {}
    draws: dict[str, np.ndarray] = {}
    for correct, blocks in streams:
        res = resampled_accuracies(correct, blocks, resamples, rng)
        ref_acc = float(np.mean(correct[reference]))
        for arm, c in correct.items():
            if arm == reference:
                continue
            diffs.setdefault(arm, []).append(ref_acc - float(np.mean(c)))
            draws[arm] = draws.get(arm, 0) + (res[reference] - res[arm])
    return {arm: {"diff": float(np.mean(d)), "ci95": interval(draws[arm] / len(d))} for arm, d in diffs.items()}
