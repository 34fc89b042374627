"""Classifier forward throughput: contiguous vs channels-last, 1 and 2 threads; writes JSON.

Usage: python bench/model_speed.py [--model resnet20] [--batch 500] [--out bench/results/model_speed.json]
Speeds are compared as ratios inside one run (the machine is shared and noisy).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from dynbn.models import build_model


def per_second(fn, frames: int, repeats: int = 5) -> float:
    """Frames per second of fn(), median of repeats after one warm-up."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return frames / sorted(times)[len(times) // 2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet20")
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--out", default="bench/results/model_speed.json")
    args = parser.parse_args()
    model = build_model(args.model)
    net = model.net
    x = torch.rand(args.batch, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    results = {"model": args.model, "batch": args.batch, "default_threads": torch.get_num_threads(), "runs": []}
    for threads in sorted({1, torch.get_num_threads()}):
        torch.set_num_threads(threads)
        with torch.inference_mode():
            net.to(memory_format=torch.contiguous_format)
            plain = per_second(lambda: net((x - model.mean) / model.std), args.batch)
            net.to(memory_format=torch.channels_last)
            cl = per_second(lambda: model(x), args.batch)
        results["runs"].append({"threads": threads, "contiguous_fps": plain, "channels_last_fps": cl,
                                "channels_last_speedup": cl / plain})
        print(f"{threads} thread(s): contiguous {plain:.0f} fps, channels-last {cl:.0f} fps ({cl / plain:.2f}x)")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
