"""Backpressure drill: 256 cameras on one partition, a backlog limit of 100 frames.

The deployment as compose runs it, each service its own process: a private redis-server,
``python -m simulator`` (SIM_MAX_BACKLOG=100), one ``python -m streamer.worker`` and
``python -m streamer.report``. Meanwhile this script samples the frame stream's length (every
frame not yet acknowledged: handled frames are deleted) every few milliseconds.

Before the fix this drill deadlocked (the backlog trusted the consumer group's ``lag``, which
Redis 7.0 kept reporting for trimmed entries) and ``MAXLEN`` trimming removed frames no worker
had seen. Checks: every process exits 0, every frame is scored exactly once, the report's
accounting has no loss, and the stream never held more than the limit.

    python bench/backpressure.py [--cameras 256] [--frames-per-camera 8] [--max-backlog 100]

Writes bench/results/backpressure.json (and the run's report under bench/results/backpressure/).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
from redis_server import RedisServer  # noqa: E402

from streamer.artifacts import load_or_fit  # noqa: E402
from streamer.keys import Keys  # noqa: E402
from streamer.connection import connect  # noqa: E402
from streamer.redis_transport import RedisTransport  # noqa: E402
from streamer.scenario import parse  # noqa: E402

SCENARIO = {
    "name": "backpressure", "model": "resnet20", "frames_per_camera": 8,
    "schedule": {"kind": "periodic", "period": 4}, "corruptions": ["clean", "gaussian_noise", "fog"], "severities": [4],
    "arms": ["dynbn_vote"], "batch": {"size": 64, "max_wait_ms": 20}, "partitions": 1, "seed": 0,
    # a small fit: this drill is about delivery, not accuracy
    "fit": {"domains": "scenario", "detector_images": 20, "table_images": 32, "epochs": 3, "severity_images": 16},
}


def spawn(module: str, env: dict, name: str, folder: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", module], env=env, cwd=ROOT,
                            stdout=open(folder / f"{name}.log", "w"), stderr=subprocess.STDOUT)


def drill(cameras: int, frames: int, max_backlog: int, folder: Path, timeout_s: float) -> dict:
    scn = parse({**SCENARIO, "cameras": cameras, "frames_per_camera": frames})
    scenario = folder / "scenario.yaml"
    scenario.write_text(yaml.safe_dump(json.loads(scn.model_dump_json())))
    artifacts = folder / "artifacts"
    load_or_fit(scn, artifacts, log=lambda *_: None)  # fitted once here; the services load it
    server = RedisServer(folder / "redis", fsync="everysec").start()
    env = {**os.environ, "REDIS_URL": server.url, "PYTHONPATH": str(ROOT), "SIM_SCENARIO": str(scenario),
           "STREAMER_SCENARIO": str(scenario), "SIM_ARTIFACTS": str(artifacts), "STREAMER_ARTIFACTS": str(artifacts),
           "SIM_MAX_BACKLOG": str(max_backlog), "STREAMER_EXIT_WHEN_DONE": "true", "STREAMER_THREADS": "1",
           "STREAMER_OUT": str(folder / "report"), "STREAMER_STALL_S": "60"}
    t = RedisTransport(connect(server.url), Keys(), 1)
    most, stop = [0], threading.Event()

    def sample():
        while not stop.wait(0.002):
            most[0] = max(most[0], int(t.r.xlen(t.keys.frames(0))))

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    start = time.monotonic()
    procs = {name: spawn(module, env, name, folder) for name, module in
             (("worker", "streamer.worker"), ("simulator", "simulator"), ("report", "streamer.report"))}
    codes = {}
    try:
        for name, p in procs.items():
            codes[name] = p.wait(max(1.0, timeout_s - (time.monotonic() - start)))
    except subprocess.TimeoutExpired:
        codes = {name: p.poll() for name, p in procs.items()}  # None: still running (stalled)
    finally:
        wall = time.monotonic() - start
        stop.set()
        sampler.join()
        for p in procs.values():
            if p.poll() is None:
                p.kill()
    results = [(r[b"camera"], r[b"seq"]) for r in t.results()]
    keys = Counter(results)
    report = json.loads((folder / "report" / "report.json").read_text()) if (folder / "report" / "report.json").exists() else {}
    server.stop()
    acc = report.get("accounting", {})
    check = {"cameras": cameras, "frames_per_camera": frames, "max_backlog": max_backlog, "frames": scn.total_frames,
             "exit_codes": codes, "frames_with_results": len(keys), "duplicated": sum(n - 1 for n in keys.values()),
             "report_lost": acc.get("lost"), "report_lost_causes": acc.get("lost_causes"),
             "most_frames_in_stream": most[0], "wall_s": round(wall, 1)}
    check["passed"] = (all(c == 0 for c in codes.values()) and len(keys) == scn.total_frames and check["duplicated"] == 0
                       and acc.get("lost") == 0 and acc.get("scored") == scn.total_frames and most[0] <= max_backlog)
    return check


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cameras", type=int, default=256)
    ap.add_argument("--frames-per-camera", type=int, default=8)
    ap.add_argument("--max-backlog", type=int, default=100)
    ap.add_argument("--timeout", type=float, default=600, help="seconds before the drill counts as stalled")
    ap.add_argument("--out", default=str(ROOT / "bench/results"))
    args = ap.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="backpressure-"))
    check = drill(args.cameras, args.frames_per_camera, args.max_backlog, folder, args.timeout)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "backpressure.json").write_text(json.dumps(check, indent=1))
    print(json.dumps(check, indent=1))
    if not check["passed"]:
        for name in ("simulator", "worker", "report"):
            print(f"--- {name}.log (last lines)\n" + "\n".join((folder / f"{name}.log").read_text().splitlines()[-15:]))
    return 0 if check["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
