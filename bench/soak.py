"""Soak drill: serve + publish at a steady rate for minutes; Redis memory and the worker's RSS must stay flat.

A private redis-server, one ``dynbn serve`` process (``--retention`` results/events per
partition, and those older than ``--retention-s``), and in this process: one publishing thread per camera (a ``Client`` each, at
``--fps``; every camera cycles clean -> fog -> noise in segments of ``--segment`` frames, so
events keep coming) and one reader following every result. Every ``--sample-s`` seconds it
records Redis ``used_memory`` (INFO memory) and the serve process's RSS (/proc/PID/status).

Checks: every published frame gets exactly one result (the reader sees each (camera, seq)
once); ``used_memory`` and RSS at the end are within ``--tolerance`` of their values after the
first minute (handled frames are deleted, results/events keep their retention).

    python bench/soak.py [--minutes 10] [--cameras 8] [--fps 10] [--retention-s 30] [--bundle DIR]

Writes bench/results/soak.json (the samples included).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
from redis_server import RedisServer  # noqa: E402

from dynbn.bundle import fit_bundle  # noqa: E402
from dynbn.corruptions import corrupt  # noqa: E402
from dynbn.data import load_cifar10  # noqa: E402
from dynbn.detector import DetectorConfig  # noqa: E402
from dynbn.fitting import FitConfig  # noqa: E402
from streamer.client import DEFAULT_PARTITIONS, Client  # noqa: E402
from streamer.keys import Keys  # noqa: E402

DYNBN = str(Path(sys.executable).with_name("dynbn"))


def small_bundle(out: Path, data_dir: str | None) -> Path:
    """A bundle of three domains fitted in seconds: this drill is about memory and delivery, not accuracy."""
    cfg = FitConfig(domains=("clean", "gaussian_noise", "fog"), detector_images=24, table_images=32,
                    severity_images=16, detector=DetectorConfig(epochs=3, seed=0), seed=0)
    fit_bundle("resnet20", out, config=cfg, data_dir=data_dir, log=lambda *_: None)
    return out


def segments(data_dir: str | None, length: int, seed: int = 0) -> list[np.ndarray]:
    """Three segments of frames (clean, fog 4, noise 4) that the cameras cycle through."""
    images = load_cifar10("test", data_dir).images[:length]
    rng = np.random.default_rng(seed)
    return [images, corrupt(images, "fog", 4, rng), corrupt(images, "gaussian_noise", 4, rng)]


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for {pid}")


def soak(args, folder: Path) -> dict:
    bundle = Path(args.bundle) if args.bundle else small_bundle(folder / "bundle", args.data_dir)
    server = RedisServer(folder / "redis", fsync="everysec").start()
    log = open(folder / "serve.log", "w")
    serve = subprocess.Popen([DYNBN, "serve", "--bundle", str(bundle), "--redis-url", server.url, "--retention",
                              str(args.retention), "--retention-s", str(args.retention_s), "--batch", "32",
                              "--threads", "1", "--name", "soak"],
                             stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    frames = segments(args.data_dir, args.segment)
    stop, published, seen = threading.Event(), Counter(), Counter()

    def camera(c: int) -> None:
        client, i, t0 = Client(server.url), 0, time.monotonic()
        while not stop.is_set():
            seg = frames[(i // args.segment + c) % len(frames)]
            client.publish(f"cam{c}", seg[i % args.segment])
            published[f"cam{c}"] += 1
            i += 1
            time.sleep(max(0.0, t0 + i / args.fps - time.monotonic()))
        client.close()

    reader = Client(server.url).results(timeout_s=None)

    def read() -> None:
        for r in reader:
            seen[(r["camera"], r["seq"])] += 1

    threading.Thread(target=read, daemon=True).start()
    cams = [threading.Thread(target=camera, args=(c,)) for c in range(args.cameras)]
    for th in cams:
        th.start()
    r, keys = server.client(), Keys()
    partitions = DEFAULT_PARTITIONS  # serve and the clients start a fresh deployment
    samples, start = [], time.monotonic()
    while time.monotonic() - start < args.minutes * 60:
        time.sleep(args.sample_s)
        samples.append({"t_s": round(time.monotonic() - start, 1), "redis_used_memory_mb": r.info("memory")["used_memory"] / 2**20,
                        "serve_rss_mb": rss_mb(serve.pid), "published": sum(published.values()), "results_seen": len(seen),
                        **{f"{kind}_entries": sum(r.xlen(getattr(keys, kind)(p)) for p in range(partitions))
                           for kind in ("frames", "results", "events")}})
        print(json.dumps(samples[-1]), flush=True)
    stop.set()
    for th in cams:
        th.join(30)
    total = sum(published.values())
    deadline = time.monotonic() + 120
    while len(seen) < total and time.monotonic() < deadline:
        time.sleep(0.2)
    serve.send_signal(signal.SIGTERM)
    code = serve.wait(60)
    server.stop()
    want = {(cam, s) for cam, n in published.items() for s in range(n)}
    after_1min = next(s for s in samples if s["t_s"] >= 60) if args.minutes > 1 else samples[0]
    end = samples[-1]
    growth = {k: end[k] / after_1min[k] - 1 for k in ("redis_used_memory_mb", "serve_rss_mb")}
    check = {"minutes": args.minutes, "cameras": args.cameras, "fps_per_camera": args.fps, "retention": args.retention,
             "retention_s": args.retention_s,
             "published": total, "results": len(seen), "duplicated": sum(n - 1 for n in seen.values()),
             "missing": len(want - set(seen)), "unexpected": len(set(seen) - want), "serve_exit_code": code,
             "after_first_minute": after_1min, "end": end, "growth": growth, "tolerance": args.tolerance,
             "samples": samples}
    check["every_frame_scored_once"] = check["missing"] == check["unexpected"] == check["duplicated"] == 0
    check["memory_flat"] = all(abs(g) <= args.tolerance for g in growth.values())
    return check


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, default=10)
    ap.add_argument("--cameras", type=int, default=8)
    ap.add_argument("--fps", type=float, default=10, help="frames per second per camera")
    ap.add_argument("--segment", type=int, default=100, help="frames per clean/fog/noise segment")
    ap.add_argument("--retention", type=int, default=100_000, help="results/events kept per partition (serve's default)")
    ap.add_argument("--retention-s", type=float, default=30, help="results/events older than this are deleted")
    ap.add_argument("--sample-s", type=float, default=10)
    ap.add_argument("--tolerance", type=float, default=0.10)
    ap.add_argument("--bundle", default=None, help="a bundle to serve (default: fit a small one first)")
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--out", default=str(ROOT / "bench/results"))
    args = ap.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="soak-"))
    check = soak(args, folder)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "soak.json").write_text(json.dumps(check, indent=1))
    print(json.dumps({k: v for k, v in check.items() if k != "samples"}, indent=1))
    return 0 if check["every_frame_scored_once"] and check["serve_exit_code"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
