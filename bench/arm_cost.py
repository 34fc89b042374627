"""What the deployed arm costs over the plain model on the CPU, at batch 64 and at batch 1; writes JSON.

    python bench/arm_cost.py [--bundle DIR] [--threads 1] [--out bench/results/arm_cost.json]

``source`` and ``dynbn_vote`` (``dynbn.methods.build_method``) classify the same frames from 4 cameras
whose frames interleave, in rounds: each round times both arms back to back, in alternating order, and
the figure is the median over rounds of the ratio ``dynbn_vote / source`` per batch (the machine is
shared and noisy; a ratio inside one round cancels most of that). ``--bundle``: a ``dynbn fit`` bundle
(its detector, severity head and table); without it, the shipped ResNet-20 with a stand-in table and an
untrained detector of a bundle's shapes (tests/stand_in.py), which cost the same.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]
from stand_in import stand_in  # noqa: E402

from dynbn.bundle import load_bundle  # noqa: E402
from dynbn.experiments.machine import machine  # noqa: E402
from dynbn.methods import build_method  # noqa: E402
from dynbn.models import build_model  # noqa: E402

CAMERAS = 4


def seconds(fn, calls: int) -> float:
    """Seconds per call of ``fn`` over ``calls`` calls."""
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - start) / calls


@torch.no_grad()
def measure(arms: dict, batch: int, rounds: int, frames_per_round: int) -> dict:
    """Per round, each arm's seconds per batch (alternating which goes first); the median ratio."""
    x = torch.rand(batch, 3, 32, 32, generator=torch.Generator().manual_seed(batch))
    cams = [f"cam{i % CAMERAS}" for i in range(batch)]
    calls = max(1, frames_per_round // batch)
    for arm in arms.values():  # warm-up: caches, the vote's cameras
        arm.reset()
        seconds(lambda arm=arm: arm(x, cams), max(2, calls // 4))
    per_round = {name: [] for name in arms}
    for r in range(rounds):
        for name in (list(arms) if r % 2 == 0 else list(arms)[::-1]):
            arm = arms[name]
            per_round[name].append(seconds(lambda arm=arm: arm(x, cams), calls))
    ratios = [v / s for v, s in zip(per_round["dynbn_vote"], per_round["source"])]
    return {"batch_size": batch, "rounds": rounds, "calls_per_round": calls,
            "source_ms": 1e3 * statistics.median(per_round["source"]),
            "dynbn_vote_ms": 1e3 * statistics.median(per_round["dynbn_vote"]),
            "ratio": statistics.median(ratios), "ratio_min": min(ratios), "ratio_max": max(ratios)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", help="a `dynbn fit` bundle folder (default: stand-in table and detector)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--frames", type=int, default=1024, help="frames per arm per round (default 1024)")
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
        row = measure(arms, batch, args.rounds, args.frames)
        out["runs"].append(row)
        print(f"B={batch}: source {row['source_ms']:.3f} ms, dynbn_vote {row['dynbn_vote_ms']:.3f} ms per batch; "
              f"ratio {row['ratio']:.3f} (rounds {row['ratio_min']:.3f}-{row['ratio_max']:.3f})", flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
