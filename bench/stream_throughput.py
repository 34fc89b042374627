"""End-to-end throughput through Redis against the model's own forward pass, in the same run.

What is compared (batch 64, the acceptance scenario's 4 cameras with a shift every 16 frames):

- ``model_fps``: the model's own forward, ``model(x)`` on float tensors already in memory,
  batch 64, same frames, same torch threads; measured in this process just before and just
  after each end-to-end configuration (the mean of the two: a shared 2-core machine drifts).
- ``arms_fps``: the scenario's arms (default ``dynbn_vote`` alone: detector + vote + the
  model with per-sample statistics) on the same tensors, same moments: the method's own cost.
- ``e2e``: worker processes (``python -m streamer.worker``) reading from a private
  redis-server, decoding and checking each message, batching, predicting and committing the
  results (Lua: XADD results + XACK + vote state) -- everything a deployed worker does.

Two ways of feeding the workers:

- ``drain`` (the acceptance figure): every frame is published first, then the workers start
  and drain the backlog. Throughput is counted over the window in which every worker is
  producing (from the latest first commit to the earliest last commit), so process start-up
  is excluded. The publisher is the simulator's job, not the worker's; on a 2-core machine
  publishing concurrently would bill its CPU to the worker.
- ``live``: the workers start and settle their partitions, then the frames are published in
  one burst (the simulator's encode + XADD cost shares the machine); the only mode for two
  workers, whose start-up skew would dominate a drain of a few thousand frames.

Latency: a last run is paced at half the measured throughput: publish -> result under load
without a standing queue. Configurations: 1 worker x 1 thread, 1 worker x torch's default
threads, 2 workers x 1 thread (compared with the 1-thread forward, and with twice it).
Acceptance: 1 worker x 1 thread, drained, / ``model_fps`` at 1 thread >= 0.8: one core runs
the worker's forward, as ``model_fps`` has one, and redis-server has the other, as it would
beside a deployed worker. With torch on every core, Redis takes its CPU from the forward;
that ratio is reported too (``every_single_worker_drain``), not hidden.

    python bench/stream_throughput.py [--frames 6000] [--arms dynbn_vote]

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
from streamer.completion import run_complete  # noqa: E402
from streamer.keys import Keys  # noqa: E402
from streamer.connection import connect  # noqa: E402
from streamer.redis_transport import RedisTransport  # noqa: E402
from streamer.scenario import load  # noqa: E402
from streamer.summary import parse_results  # noqa: E402
from streamer.wire import FrameMessage  # noqa: E402


def frames_of(scn, n_per_camera: int):
    """Pre-generated corrupted frames in publish order: (camera index, seq, frame, truth)."""
    src = CifarSource("test", scn.seed)
    streams = [camera_frames(scn, src, c) for c in range(scn.cameras)]
    return [(c, s, *next(streams[c])) for s in range(n_per_camera) for c in range(scn.cameras)]


def _timed(step, x: torch.Tensor, batch: int, threads: int, repeats: int) -> float:
    """Best frames/s over ``repeats`` passes of ``step(chunk, rows)`` over ``x`` in batches."""
    torch.set_num_threads(threads)
    best = 0.0
    for _ in range(repeats):
        start = time.perf_counter()
        for i in range(0, len(x), batch):
            step(x[i:i + batch], slice(i, i + batch))
        best = max(best, len(x) / (time.perf_counter() - start))
    return best


@torch.no_grad()
def model_fps(model, frames, batch: int, threads: int, repeats: int = 2) -> float:
    """Frames per second of the model's own forward (plain ``model(x)``, tensors ready)."""
    x = to_tensor(np.stack([f for _, _, f, _ in frames]))
    model(x[:batch])  # warm-up
    return _timed(lambda chunk, rows: model(chunk), x, batch, threads, repeats)


@torch.no_grad()
def arms_fps(arms: dict, frames, batch: int, threads: int, repeats: int = 2) -> float:
    """Frames per second of the arms' forwards alone (tensors ready, cameras and truth as in the stream)."""
    x = to_tensor(np.stack([f for _, _, f, _ in frames]))
    cams = [f"cam{c:02d}" for c, *_ in frames]
    truth = [t.domain for *_, t in frames]

    def step(chunk, rows):
        for arm in arms.values():
            arm(chunk, cams[rows], truth[rows])
    for arm in arms.values():
        arm.reset()
    return _timed(step, x, batch, threads, repeats)


def publish(t: RedisTransport, scn, frames, rate: float = 0.0) -> None:
    """XADD every frame (pipelined in bursts, or paced at ``rate`` frames/s), then mark the run done."""
    t.setup()
    t.set_run(scenario=scn.name, planned=len(frames), published=0, done=0, partitions=scn.partitions,
              arms=",".join(scn.arms), label_kind="cifar10", started=time.time())
    send(t, scn.partitions, frames, rate)
    t.set_run(published=len(frames), done=1)


def send(t: RedisTransport, partitions: int, frames, rate: float = 0.0) -> None:
    """XADD frames (camera index, seq, frame, truth) to their cameras' partitions, pipelined in bursts of 16
    (or paced at ``rate`` frames/s); the run hash is the caller's."""
    start = time.monotonic()
    for i in range(0, len(frames), 16):
        if rate:
            time.sleep(max(0.0, start + i / rate - time.monotonic()))
        pipe = t.r.pipeline(transaction=False)
        for c, seq, frame, truth in frames[i:i + 16]:
            fields = FrameMessage.from_frame(f"cam{c:02d}", seq, frame, time.time(), truth).to_fields()
            pipe.xadd(t.keys.frames(c % partitions), fields)  # pipelined: no per-frame script round trip
        pipe.execute()


def worker_env(url: str, prefix: str, scenario: Path, threads: int, **extra: str) -> dict:
    """The environment of scenario worker processes (``python -m streamer.worker``) that exit once the run is
    complete; ``extra``: further variables (``STREAMER_DEVICE=...``)."""
    return {**os.environ, "REDIS_URL": url, "STREAMER_PREFIX": prefix, "STREAMER_SCENARIO": str(scenario),
            "STREAMER_THREADS": str(threads), "STREAMER_EXIT_WHEN_DONE": "true", "PYTHONPATH": str(ROOT), **extra}


def start_workers(env: dict, n: int, logs: Path | None = None) -> list[subprocess.Popen]:
    """``n`` worker processes; each one's output goes to ``logs/worker{i}.log`` (default: nowhere)."""
    command, procs = [sys.executable, "-m", "streamer.worker"], []
    for i in range(n):
        if logs is None:
            procs.append(subprocess.Popen(command, env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
            continue
        with open(logs / f"worker{i}.log", "w") as out:  # the child keeps its own copy of the file
            procs.append(subprocess.Popen(command, env={**env, "STREAMER_NAME": f"worker{i}"}, cwd=ROOT,
                                          stdout=out, stderr=subprocess.STDOUT))
    return procs


def join(t: RedisTransport, workers: int, procs=(), timeout_s: float | None = None, settle_s: float = 4.0) -> None:
    """Wait until ``workers`` workers are members, then ``settle_s`` for them to split the partitions (heartbeats
    every lease/3 s, balancing every 0.5 s); RuntimeError when one of ``procs`` exits first or ``timeout_s`` passes."""
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    while t.r.zcard(t.keys.members) < workers:
        if any(p.poll() is not None for p in procs):
            raise RuntimeError("a worker process exited before joining")
        if deadline is not None and time.monotonic() > deadline:
            raise RuntimeError(f"{workers} worker(s) did not join within {timeout_s:.0f} s")
        time.sleep(0.1)
    time.sleep(settle_s)


def steady_fps(results) -> float:
    """Frames/s while every worker is producing: results committed after the latest first
    commit and up to the earliest last commit, over that window (start-up excluded)."""
    by_worker: dict[str, list[float]] = {}
    for r in results:
        by_worker.setdefault(r.worker, []).append(r.t_done)
    start = max(min(t) for t in by_worker.values())
    end = min(max(t) for t in by_worker.values())
    inside = sum(1 for r in results if start < r.t_done <= end)
    return inside / (end - start) if end > start else float("nan")


def e2e(server: RedisServer, scenario: Path, scn, frames, workers: int, threads: int, mode: str,
        rate: float = 0.0) -> dict:
    """One end-to-end run (``mode`` drain, live or paced) with ``workers`` worker processes."""
    prefix = f"bench{uuid.uuid4().hex[:6]}"
    env = worker_env(server.url, prefix, scenario, threads)
    t = RedisTransport(connect(server.url), Keys(prefix), scn.partitions)
    if mode == "drain":
        publish(t, scn, frames)
        procs = start_workers(env, workers)
    else:
        procs = start_workers(env, workers)
        join(t, workers)  # and let them split the partitions
        publish(t, scn, frames, rate)
    while not run_complete(t):
        time.sleep(0.1)
    for p in procs:
        p.wait(60)
    results = parse_results(t.results())
    assert len({(r.camera, r.seq) for r in results}) == len(frames) == len(results), "lost or duplicated frames"
    # the arms' forward throughput inside the workers, over the same frames at the same moments
    run = t.get_run()
    in_run = sum(int(run[f"worker:{w}:results"]) / (int(run[f"worker:{w}:predict_ms"]) / 1000)
                 for w in {k.split(":")[1] for k in run if k.startswith("worker:")})
    lat = np.array([(r.t_done - r.t_pub) * 1000 for r in results])
    fps = steady_fps(results)
    sizes = np.bincount(np.unique([(r.worker, r.t_done) for r in results], axis=0, return_counts=True)[1])
    return {"mode": mode, "workers": workers, "threads_per_worker": threads, "frames": len(frames), "fps": fps,
            "arms_fps_in_workers": in_run, "e2e_vs_arms_in_workers": fps / in_run,
            "latency_ms": {q: float(np.percentile(lat, int(q[1:]))) for q in ("p50", "p90", "p99")},
            "paced_fps": rate or None, "batch_sizes": {int(b): int(n) for b, n in enumerate(sizes) if n}}


def measure(out: dict, server, scenario: Path, scn, model, arms: dict, frames, default_threads: int) -> None:
    """Every configuration against its baselines, then the paced latency run; fills ``out``."""
    configs = [(1, 1)] + ([(1, default_threads)] if default_threads > 1 else []) + [(2, 1)]
    sample = frames[:1024]
    for workers, threads in configs:
        # a drain with 2 workers would mostly time their start-up skew (thousands of frames drain in seconds)
        for mode in ("drain", "live") if workers == 1 else ("live",):
            before = model_fps(model, sample, scn.batch.size, threads), arms_fps(arms, sample, scn.batch.size, threads)
            run = e2e(server, scenario, scn, frames, workers, threads, mode)
            after = model_fps(model, sample, scn.batch.size, threads), arms_fps(arms, sample, scn.batch.size, threads)
            run["model_fps"] = base = (before[0] + after[0]) / 2  # the model's own forward, same threads
            run["arms_fps"] = (before[1] + after[1]) / 2
            run["model_fps_before_after"] = [before[0], after[0]]
            run["ratio"] = run["fps"] / base                      # per worker process: the acceptance figure
            run["ratio_vs_ideal_scaling"] = run["fps"] / (workers * base)
            run["arms_vs_model"] = run["arms_fps"] / base
            out["runs"].append(run)
            print(f"{mode:5s} {workers} worker(s) x {threads} thread(s): e2e {run['fps']:.0f} fps; model forward "
                  f"{base:.0f} fps ({before[0]:.0f}/{after[0]:.0f}); e2e/model {run['ratio']:.2f}; arms alone "
                  f"{run['arms_fps']:.0f} fps ({run['arms_vs_model']:.2f} of the model); arms inside the workers "
                  f"{run['arms_fps_in_workers']:.0f} fps, e2e/that {run['e2e_vs_arms_in_workers']:.2f}"
                  + (f"; vs {workers}x model {run['ratio_vs_ideal_scaling']:.2f}" if workers > 1 else ""), flush=True)
    single = [r for r in out["runs"] if r["workers"] == 1 and r["mode"] == "drain"]
    best = max(single, key=lambda r: r["fps"])
    one = next(r for r in single if r["threads_per_worker"] == 1)
    out["acceptance"] = {"e2e_fps": one["fps"], "model_fps": one["model_fps"], "ratio": one["ratio"], "threads": 1,
                         "passed": one["ratio"] >= 0.8,
                         "every_single_worker_drain": {r["threads_per_worker"]: r["ratio"] for r in single}}
    paced = e2e(server, scenario, scn, frames, 1, best["threads_per_worker"], "paced", rate=0.5 * best["fps"])
    out["latency_paced"] = paced
    print(f"paced at {paced['paced_fps']:.0f} fps (half the measured throughput): latency p50 "
          f"{paced['latency_ms']['p50']:.0f} ms, p90 {paced['latency_ms']['p90']:.0f} ms, p99 {paced['latency_ms']['p99']:.0f} ms")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=6000, help="frames in total (4 cameras)")
    ap.add_argument("--arms", nargs="+", default=["dynbn_vote"])
    ap.add_argument("--out", default=str(ROOT / "bench/results/stream_throughput.json"))
    args = ap.parse_args()
    default_threads = torch.get_num_threads()
    scn = load(ROOT / "scenarios/acceptance.yaml").model_copy(update={"arms": args.arms, "name": "bench"})
    folder = Path(tempfile.mkdtemp(prefix="stream-bench-"))
    scenario = folder / "bench.yaml"
    scenario.write_text(yaml.safe_dump(json.loads(scn.model_dump_json())))
    model, det, table = load_or_fit(scn)
    arms = build_arms(scn.arms, model, table, det, scn.arm_settings)
    frames = frames_of(scn, args.frames // scn.cameras)
    server = RedisServer(folder / "redis", fsync="everysec").start()  # Redis' production default
    out = {"arms": scn.arms, "batch": scn.batch.size, "frames": len(frames), "torch_default_threads": default_threads,
           "cpus": os.cpu_count(), "runs": []}
    try:
        measure(out, server, scenario, scn, model, arms, frames, default_threads)
    finally:
        server.stop()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=1))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
