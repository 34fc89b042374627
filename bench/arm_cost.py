"""What the deployed arm costs over the plain model on the CPU, at batch 64 and at batch 1; writes JSON.

    python bench/arm_cost.py [--bundle DIR] [--threads 1] [--out bench/results/arm_cost.json]

``source`` and ``dynbn_vote`` (``dynbn.methods.build_method``) classify the same frames from 4 cameras
whose frames interleave, in pairs of calls, one of each arm back to back, the order alternating from
pair to pair: the machine is shared and its speed drifts by 10 % and more within seconds, and two
neighbouring calls see the same machine. The figure is the ratio of the two arms' total times over
all pairs, with a 95 % bootstrap interval over the pairs (seeded); the median of the per-pair ratios is
kept beside it. Each pair also times the detector alone (``detector.read``: spectrum, MLP and severity
head), so the report says how much of the difference it is. ``--bundle``: a ``dynbn fit`` bundle (its
detector, severity head and table); without it, the shipped ResNet-20 with a stand-in table and an
untrained detector of a bundle's shapes (tests/stand_in.py), which cost the same.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]
from stand_in import stand_in  # noqa: E402

from dynbn.bundle import load_bundle  # noqa: E402
from dynbn.experiments.machine import machine  # noqa: E402
from dynbn.methods import build_method  # noqa: E402
from dynbn.models import build_model  # noqa: E402

CAMERAS = 4


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def interval(source: np.ndarray, vote: np.ndarray, seed: int = 0, resamples: int = 2000) -> tuple[float, float]:
    """95 % bootstrap interval of ``sum(vote) / sum(source)`` over the pairs."""
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, len(source), size=(resamples, len(source)))
    ratios = vote[picks].sum(1) / source[picks].sum(1)
    return float(np.quantile(ratios, 0.025)), float(np.quantile(ratios, 0.975))


@torch.no_grad()
def measure(arms: dict, batch: int, frames: int) -> dict:
    """``frames / batch`` pairs of calls (at least 30), the order alternating; the ratio of the total times."""
    x = torch.rand(batch, 3, 32, 32, generator=torch.Generator().manual_seed(batch))
    cams = [f"cam{i % CAMERAS}" for i in range(batch)]
    source, vote = arms["source"], arms["dynbn_vote"]
    detector = vote.detector
    pairs = max(30, frames // batch)
    for arm in arms.values():  # warm-up: caches, the vote's cameras
        arm.reset()
        for _ in range(max(2, pairs // 10)):
            arm(x, cams)
    times = np.zeros((pairs, 3))  # source, dynbn_vote, the detector alone
    for i in range(pairs):
        calls = [lambda: source(x, cams), lambda: vote(x, cams)]
        if i % 2:
            times[i, 1], times[i, 0] = timed(calls[1]), timed(calls[0])
        else:
            times[i, 0], times[i, 1] = timed(calls[0]), timed(calls[1])
        times[i, 2] = timed(lambda: detector.read(x, severity=vote.severity))
    low, high = interval(times[:, 0], times[:, 1])
    src_ms, vote_ms, det_ms = 1e3 * times.mean(0)
    return {"batch_size": batch, "pairs": pairs,
            "source_ms": src_ms, "dynbn_vote_ms": vote_ms, "detector_ms": det_ms,
            "ratio": float(times[:, 1].sum() / times[:, 0].sum()), "ratio_low": low, "ratio_high": high,
            "median_pair_ratio": float(np.median(times[:, 1] / times[:, 0])),
            "detector_share": det_ms / src_ms}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", help="a `dynbn fit` bundle folder (default: stand-in table and detector)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--frames", type=int, default=8192,
                        help="frames per arm and batch size (default 8192; at least 30 pairs of calls)")
    parser.add_argument("--batches", default="64,1")
    parser.add_argument("--out", default="bench/results/arm_cost.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.bundle:
        bundle = load_bundle(args.bundle)
        model, table, detector, what = bundle.model, bundle.table, bundle.detector, f"bundle {Path(args.bundle).name}"
    else:
        model = build_model("resnet20")
        table, detector = stand_in(model)
        what = "stand-in table and detector"
    model.eval()
    arms = {"source": build_method("source", model),
            "dynbn_vote": build_method("dynbn_vote", model, table=table, detector=detector)}
    out = {"what": what, "machine": machine(), "severity": arms["dynbn_vote"].severity, "runs": []}
    for batch in (int(b) for b in args.batches.split(",")):
        row = measure(arms, batch, args.frames)
        out["runs"].append(row)
        print(f"B={batch}: source {row['source_ms']:.3f} ms, dynbn_vote {row['dynbn_vote_ms']:.3f} ms per batch; "
              f"ratio {row['ratio']:.3f} [{row['ratio_low']:.3f}, {row['ratio_high']:.3f}], the detector alone "
              f"{row['detector_share']:.3f} of source", flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
