"""What watching a worker costs: its throughput with the observer (metrics, per-camera status) on and off.

One worker, one torch thread, the ``dynbn_vote`` arm on 32x32 CIFAR-10 frames of 8 cameras
from an in-memory transport (no Redis round trips to blur the difference). Batches alternate
(off, on, off, on, ...) inside one run, so the machine's drifts hit both alike: the ratio of
the mean batch times, with a 95 % interval from the pairs of neighbouring batches, is the
cost of the worker's hooks. Meanwhile ``/metrics`` and ``/status.json`` are fetched every
second, as Prometheus and an open live page would; what one such pair of answers costs is
timed on its own and added as the share of a second it takes. Throughput ratio on/off =
1 / (batch-time ratio + scrape share).

    python bench/metrics_cost.py [--batches 400]

Writes bench/results/metrics_cost.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np
import torch
from prometheus_client import generate_latest
from scipy import stats

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
from redis_server import free_port  # noqa: E402

from simulator.publisher import Publisher  # noqa: E402
from simulator.sources import CifarSource  # noqa: E402
from streamer.arms import build_arms  # noqa: E402
from streamer.artifacts import load_or_fit  # noqa: E402
from streamer.consumer import Worker  # noqa: E402
from streamer.observe import Observer  # noqa: E402
from streamer.scenario import parse  # noqa: E402
from streamer.transport import MemoryTransport  # noqa: E402
from streamer.web import serve_http  # noqa: E402

SCENARIO = {
    "name": "metrics-cost", "model": "resnet20", "cameras": 8, "schedule": {"kind": "periodic", "period": 50},
    "corruptions": ["clean", "gaussian_noise", "fog"], "severities": [4], "arms": ["dynbn_vote"],
    "batch": {"size": 64, "max_wait_ms": 20}, "partitions": 1, "seed": 0,
    "fit": {"domains": "scenario", "detector_images": 20, "table_images": 32, "epochs": 3, "severity_images": 16},
}


def ci95(x: np.ndarray) -> float:
    return float(stats.t.ppf(0.975, len(x) - 1) * x.std(ddof=1) / np.sqrt(len(x)))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batches", type=int, default=400, help="batches of 64 frames, half of them observed")
    ap.add_argument("--out", default=str(ROOT / "bench/results"))
    args = ap.parse_args()
    torch.set_num_threads(1)
    scn = parse({**SCENARIO, "frames_per_camera": (args.batches + 8) * 64 // 8})
    model, detector, table = load_or_fit(scn, log=lambda *_: None)
    t = MemoryTransport(1)
    Publisher(scn, t, CifarSource("test", 0), max_backlog=10**9).run()
    observer = Observer(scn.domains())
    worker = Worker(t, build_arms(scn.arms, model, table, detector, scn.arm_settings), batch_size=64, observer=observer)
    observer.attach(worker, model=scn.model)
    worker.startup()
    worker._balance()
    port, stop = free_port(), threading.Event()
    server = serve_http(observer, port, host="127.0.0.1")

    def scrape():
        while not stop.wait(1.0):
            for path in ("/metrics", "/status.json"):
                urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5).read()
    scraper = threading.Thread(target=scrape, daemon=True)
    scraper.start()
    for _ in range(8):  # warm-up: allocator, caches, every camera known to the observer
        worker._process(worker._take_batch())
    times = {False: [], True: []}
    for i in range(args.batches):
        on = i % 2 == 1
        worker.observer = observer if on else None
        batch = worker._take_batch()
        start = time.perf_counter()
        worker._process(batch)
        times[on].append((time.perf_counter() - start) / len(batch))
    stop.set()
    scraper.join()
    server.shutdown()
    worker.shutdown()
    off, on = np.array(times[False]), np.array(times[True])
    n = min(len(off), len(on))
    pair_ratio = on[:n] / off[:n]
    batch_ratio = float(on.mean() / off.mean())
    half = ci95(pair_ratio) * batch_ratio / pair_ratio.mean()  # the interval of the mean pair ratio, on the ratio
    scrape_s = []
    for _ in range(50):
        s0 = time.perf_counter()
        generate_latest(observer.registry)
        json.dumps(observer.status())
        scrape_s.append(time.perf_counter() - s0)
    scrape_share = float(np.mean(scrape_s))  # one of each per second
    out = {"arm": "dynbn_vote", "batch": 64, "torch_threads": 1, "batches_each": n,
           "ms_per_frame_off": float(off.mean() * 1000), "ms_per_frame_on": float(on.mean() * 1000),
           "batch_time_ratio_on_off": batch_ratio, "batch_time_ratio_ci95": [batch_ratio - half, batch_ratio + half],
           "scrape_ms": float(np.mean(scrape_s) * 1000), "scrape_share_of_a_second": scrape_share,
           "throughput_ratio_on_off": 1 / (batch_ratio + scrape_share),
           "throughput_ratio_ci95": [1 / (batch_ratio + half + scrape_share), 1 / (batch_ratio - half + scrape_share)],
           "frames": int(t.counts()[0])}
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "metrics_cost.json").write_text(json.dumps(out, indent=1))
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
