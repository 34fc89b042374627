"""End-to-end throughput through Redis vs the model's own forward throughput, same run.

Arms counted: ``--arms`` (default ``source dynbn_vote``: the unadapted model and the
method, i.e. two forwards plus one detector pass per frame). The forward baseline runs
exactly those arms on the same frames as float tensors already in memory, batch 64, in
this process; the end-to-end figure is frames / wall time from the first XADD to the last
result, with worker processes (``python -m streamer.worker``) reading from a private
redis-server, decoding, batching, predicting and committing. Frames are pre-generated and
published in one burst, so the simulator's corruption cost is not part of either figure.
Latency: burst runs queue every frame at once (latency = queueing), so a last run is paced
at half the measured throughput: publish -> result under load without a standing queue.
Two baselines: (1) the arms' forward in this process, the mean of runs just before and
just after each configuration (on a shared machine these drift by +-30 % within seconds);
(2) the same forwards timed inside the workers during the run (``predict_ms``), i.e. the
model's own throughput on the same frames at the same moments: ``ratio_in_run`` = e2e fps
/ that, the share of the workers' capacity the streaming path delivers (acceptance >= 0.8). Configurations: 1 worker x 1 thread, 1 worker x torch's default
threads, 2 workers x 1 thread (compared with the 1-thread forward, and with twice it).

    python bench/stream_throughput.py [--frames 4000] [--arms source dynbn_vote]

Writes bench/results/stream_throughput.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np
import torch
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
from redis_server import RedisServer  # noqa: E402

from dynbn.spectrum import to_tensor  # noqa: E402
from simulator.publisher import camera_frames  # noqa: E402
from simulator.sources import CifarSource  # noqa: E402
from streamer.arms import build_arms  # noqa: E402
from streamer.artifacts import load_or_fit  # noqa: E402
from streamer.keys import Keys  # noqa: E402
from streamer.redis_transport import RedisTransport, connect  # noqa: E402
from streamer.report import parse_results  # noqa: E402
from streamer.scenario import load  # noqa: E402
from streamer.services import run_complete  # noqa: E402
from streamer.wire import FrameMessage  # noqa: E402


def frames_of(scn, n_per_camera: int):
    """Pre-generated corrupted frames in publish order: (camera index, seq, frame, truth)."""
    src = CifarSource("test", scn.seed)
    streams = [camera_frames(scn, src, c) for c in range(scn.cameras)]
    return [(c, s, *next(streams[c])) for s in range(n_per_camera) for c in range(scn.cameras)]


@torch.no_grad()
def forward_fps(arms: dict, frames, batch: int, threads: int, repeats: int = 2) -> float:
    """Frames per second of the arms' forwards alone (tensors ready, batch ``batch``)."""
    torch.set_num_threads(threads)
    x = to_tensor(np.stack([f for _, _, f, _ in frames]))
    cams = [f"cam{c:02d}" for c, *_ in frames]
    truth = [t.domain for *_, t in frames]
    best = 0.0
    for _ in range(repeats):
        for arm in arms.values():
            arm.reset()
        start = time.perf_counter()
        for i in range(0, len(x), batch):
            for arm in arms.values():
                arm(x[i:i + batch], cams[i:i + batch], truth[i:i + batch])
        best = max(best, len(x) / (time.perf_counter() - start))
    return best


def publish(t: RedisTransport, scn, frames, rate: float = 0.0) -> None:
    """XADD every frame (pipelined in bursts, or paced at ``rate`` frames/s), then mark the run done."""
    t.setup()
    t.set_run(scenario=scn.name, planned=len(frames), published=0, done=0, partitions=scn.partitions,
              arms=",".join(scn.arms), label_kind="cifar10", started=time.time())
    start = time.monotonic()
    for i in range(0, len(frames), 16):
        if rate:
            time.sleep(max(0.0, start + i / rate - time.monotonic()))
        pipe = t.r.pipeline(transaction=False)
        for c, seq, frame, truth in frames[i:i + 16]:
            fields = FrameMessage.from_frame(f"cam{c:02d}", seq, frame, time.time(), truth).to_fields()
            pipe.xadd(t.keys.frames(c % scn.partitions), fields, maxlen=50_000, approximate=True)
        pipe.execute()
    t.set_run(published=len(frames), done=1)


def e2e(server: RedisServer, scenario: Path, scn, frames, workers: int, threads: int, rate: float = 0.0) -> dict:
    """One end-to-end run with ``workers`` worker processes; returns fps and latency percentiles."""
    prefix = f"bench{uuid.uuid4().hex[:6]}"
    env = {**os.environ, "REDIS_URL": server.url, "STREAMER_PREFIX": prefix, "STREAMER_SCENARIO": str(scenario),
           "STREAMER_THREADS": str(threads), "STREAMER_EXIT_WHEN_DONE": "true", "PYTHONPATH": str(ROOT)}
    procs = [subprocess.Popen([sys.executable, "-m", "streamer.worker"], env=env, cwd=ROOT,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for _ in range(workers)]
    t = RedisTransport(connect(server.url), Keys(prefix), scn.partitions)
    while t.r.zcard(t.keys.members) < workers:
        time.sleep(0.1)
    time.sleep(1.0)  # let the workers settle their partitions
    start = time.time()
    publish(t, scn, frames, rate)
    while not run_complete(t):
        time.sleep(0.1)
    for p in procs:
        p.wait(60)
    results = parse_results(t.results())
    wall = max(r.t_done for r in results) - start  # first XADD -> last result committed
    # the arms' forward throughput inside the workers, over the same frames at the same moments
    run = t.get_run()
    in_run = sum(int(run[f"worker:{w}:results"]) / (int(run[f"worker:{w}:predict_ms"]) / 1000)
                 for w in {k.split(":")[1] for k in run if k.startswith("worker:")})
    lat = np.array([(r.t_done - r.t_pub) * 1000 for r in results])
    assert len({(r.camera, r.seq) for r in results}) == len(frames) == len(results), "lost or duplicated frames"
    return {"workers": workers, "threads_per_worker": threads, "frames": len(frames), "wall_s": wall,
            "fps": len(frames) / wall, "forward_fps_in_run": in_run, "ratio_in_run": len(frames) / wall / in_run,
            "latency_ms": {q: float(np.percentile(lat, int(q[1:]))) for q in ("p50", "p90", "p99")},
            "paced_fps": rate or None}


def measure(out: dict, server, scenario: Path, scn, arms: dict, frames, default_threads: int) -> None:
    """Every configuration against its baselines, then the paced latency run; fills ``out``."""
    configs = [(1, 1)] + ([(1, default_threads)] if default_threads > 1 else []) + [(2, 1)]
    for workers, threads in configs:
        before = forward_fps(arms, frames[:1024], scn.batch.size, threads)
        run = e2e(server, scenario, scn, frames, workers, threads)
        after = forward_fps(arms, frames[:1024], scn.batch.size, threads)
        run["forward_fps"] = base = (before + after) / 2   # baseline: mean of just before and just after
        run["forward_fps_before_after"] = [before, after]
        run["ratio"] = run["fps"] / base                    # per worker process: the acceptance figure
        run["ratio_vs_ideal_scaling"] = run["fps"] / (workers * base)
        out["runs"].append(run)
        print(f"{workers} worker(s) x {threads} thread(s): e2e {run['fps']:.0f} fps; forward {base:.0f} fps "
              f"({threads} thread(s), {before:.0f}/{after:.0f}); e2e/forward {run['ratio']:.2f}; "
              f"forward inside the workers {run['forward_fps_in_run']:.0f} fps, e2e/that {run['ratio_in_run']:.2f}"
              + (f", vs {workers}x forward {run['ratio_vs_ideal_scaling']:.2f}" if workers > 1 else ""), flush=True)
    single = [r for r in out["runs"] if r["workers"] == 1]
    best = max(single, key=lambda r: r["fps"])
    out["acceptance"] = {"ratio_vs_separate_forward": best["ratio"], "ratio_vs_forward_in_run": best["ratio_in_run"],
                         "threads": best["threads_per_worker"], "passed": best["ratio_in_run"] >= 0.8}
    paced = e2e(server, scenario, scn, frames, 1, best["threads_per_worker"], rate=0.5 * best["fps"])
    out["latency_paced"] = paced
    print(f"paced at {paced['paced_fps']:.0f} fps (half the measured throughput): latency p50 "
          f"{paced['latency_ms']['p50']:.0f} ms, p90 {paced['latency_ms']['p90']:.0f} ms, p99 {paced['latency_ms']['p99']:.0f} ms")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=2000, help="frames in total (4 cameras)")
    ap.add_argument("--arms", nargs="+", default=["source", "dynbn_vote"])
    ap.add_argument("--out", default=str(ROOT / "bench/results/stream_throughput.json"))
    args = ap.parse_args()
    default_threads = torch.get_num_threads()
    scn = load(ROOT / "scenarios/acceptance.yaml").model_copy(update={"arms": args.arms, "name": "bench"})
    folder = Path(tempfile.mkdtemp(prefix="stream-bench-"))
    scenario = folder / "bench.yaml"
    scenario.write_text(yaml.safe_dump(json.loads(scn.model_dump_json())))
    model, det, table = load_or_fit(scn)
    arms = build_arms(scn.arms, model, table, det, scn.vote)
    frames = frames_of(scn, args.frames // scn.cameras)
    server = RedisServer(folder / "redis", fsync="everysec").start()  # Redis' production default
    out = {"arms": scn.arms, "batch": scn.batch.size, "frames": len(frames), "torch_default_threads": default_threads,
           "cpus": os.cpu_count(), "runs": []}
    try:
        measure(out, server, scenario, scn, arms, frames, default_threads)
    finally:
        server.stop()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=1))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
