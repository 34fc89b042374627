"""Serving a bundle as a user would: `dynbn serve` processes, `dynbn publish` / the client, `dynbn results` and
`dynbn events`, against a private redis-server and a private 3-master Redis Cluster."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
from redis_cluster import RedisCluster
from streaming import joined, take

from dynbn import corrupt
from dynbn.data import CLASSES, load_cifar10
from simulator.sources import write_demo_video
from streamer.client import Client
from streamer.keys import GROUP, Keys

ROOT = Path(__file__).resolve().parent.parent
DYNBN = str(Path(sys.executable).parent / "dynbn")
FIELDS = {"camera", "seq", "label", "class_name", "confidence", "condition", "severity", "detector_confidence",
          "latency_ms"}



def dynbn(*args: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([DYNBN, *args], capture_output=True, text=True, timeout=kw.pop("timeout", 180),
                          env=_env(), **kw)


def _env(**extra) -> dict:
    return {**os.environ, "PYTHONPATH": str(ROOT), "STREAMER_LEASE_MS": "1000", "STREAMER_THREADS": "1", **extra}


def start_serve(bundle: Path, url: str, prefix: str, folder: Path, name: str, *extra: str) -> subprocess.Popen:
    log = open(folder / f"{name}.log", "w")
    return subprocess.Popen([DYNBN, "serve", "--bundle", str(bundle), "--redis-url", url, "--prefix", prefix,
                             "--batch", "16", "--name", name, *extra], stdout=log, stderr=subprocess.STDOUT, env=_env())


def lines(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def transitions(results: list[dict]) -> dict[str, list[tuple[int, str, str]]]:
    """Per camera, (seq, from, to) wherever the served condition differs from the previous frame's."""
    out = defaultdict(list)
    by_cam = defaultdict(list)
    for r in results:
        by_cam[r["camera"]].append(r)
    for cam, rs in by_cam.items():
        rs.sort(key=lambda r: r["seq"])
        out[cam] = [(b["seq"], a["condition"], b["condition"]) for a, b in zip(rs, rs[1:]) if a["condition"] != b["condition"]]
    return out


def event_list(events: list[dict]) -> dict[str, list[tuple[int, str, str]]]:
    out = defaultdict(list)
    for e in events:
        out[e["camera"]].append((e["seq"], e["from"], e["to"]))
    return {cam: sorted(v) for cam, v in out.items()}


def stop(proc: subprocess.Popen, timeout_s: float = 10.0) -> tuple[int, float]:
    start = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    rc = proc.wait(timeout_s)
    return rc, time.monotonic() - start


def test_fit_serve_publish_results_events_and_a_clean_stop(bundle, server, tmp_path, data_dir):
    video = write_demo_video(tmp_path / "clip.mp4", frames=40, size=48, root=data_dir)  # real H.264
    prefix = f"s{uuid.uuid4().hex[:6]}"
    proc = start_serve(bundle, server.url, prefix, tmp_path, "serve-1")
    try:
        first = dynbn("publish", str(video), "--camera", "c1", "--redis-url", server.url, "--prefix", prefix)
        assert first.returncode == 0, first.stderr
        noisy = dynbn("publish", str(video), "--camera", "c1", "--redis-url", server.url, "--prefix", prefix,
                      "--corrupt", "gaussian_noise:5")
        assert noisy.returncode == 0, noisy.stderr
        got = dynbn("results", "--camera", "c1", "--count", "80", "--timeout", "120", "--redis-url", server.url,
                    "--prefix", prefix)
        assert got.returncode == 0, got.stderr + (tmp_path / "serve-1.log").read_text()
        results = lines(got.stdout)
        assert len(results) == 80 and sorted(r["seq"] for r in results) == list(range(80))
        for r in results:
            assert FIELDS <= set(r) and r["camera"] == "c1" and 0 <= r["label"] < 10 and r["latency_ms"] >= 0
            assert r["class_name"] == CLASSES[r["label"]]
            assert r["condition"] in ("clean", "gaussian_noise", "fog") and 0 < r["confidence"] <= 1
        # the noisy half is mostly seen as noise, the clean half mostly not
        noise = [r["condition"] == "gaussian_noise" for r in sorted(results, key=lambda r: r["seq"])]
        assert sum(noise[40:]) > 30 and sum(noise[:40]) < 10
        events = lines(dynbn("events", "--redis-url", server.url, "--prefix", prefix).stdout)
        assert event_list(events) == dict(transitions(results)) and events  # one event per change, none else
        rc, took = stop(proc)
        assert rc == 0 and took < 10
        r = server.client()
        for p in range(8):
            stream = Keys(prefix).frames(p)
            if r.exists(stream):
                assert r.xpending(stream, GROUP)["pending"] == 0
    finally:
        if proc.poll() is None:
            proc.kill()


def camera_frames(images: np.ndarray, camera: int, n: int) -> list[np.ndarray]:
    """n frames of one camera: clean, then fog, then noise, in thirds (its own images)."""
    rng = np.random.default_rng(camera)
    pick = images[rng.choice(len(images), n, replace=False)]
    third = n // 3
    pick[third:2 * third] = corrupt(pick[third:2 * third], "fog", 5, rng)
    pick[2 * third:] = corrupt(pick[2 * third:], "gaussian_noise", 5, rng)
    return list(pick)


def publish_cameras(url: str, prefix: str, images: np.ndarray, cameras: int, n: int) -> None:
    """Every camera publishing from its own thread and client, as separate publishers would."""
    def one(c: int) -> None:
        client = Client(url, prefix)
        for frame in camera_frames(images, c, n):
            client.publish(f"cam{c}", frame)
            time.sleep(0.01)
        client.close()
    threads = [threading.Thread(target=one, args=(c,)) for c in range(cameras)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(120)


def collect(url: str, prefix: str, total: int, timeout_s: float = 180) -> list[dict]:
    return list(take(Client(url, prefix).results(timeout_s=timeout_s), total))


def check_exactly_once_and_events(url: str, prefix: str, results: list[dict], cameras: int, n: int) -> None:
    keys = Counter((r["camera"], r["seq"]) for r in results)
    assert len(results) == cameras * n and set(keys.values()) == {1}
    assert set(keys) == {(f"cam{c}", s) for c in range(cameras) for s in range(n)}
    events = list(Client(url, prefix).events(follow=False))
    assert event_list(events) == {cam: t for cam, t in transitions(results).items() if t}


def test_two_servers_eight_cameras_one_killed(bundle, server, tmp_path, data_dir):
    prefix = f"k{uuid.uuid4().hex[:6]}"
    images = load_cifar10("test", data_dir).images[:2000]
    procs = [start_serve(bundle, server.url, prefix, tmp_path, f"serve-{i}") for i in range(2)]
    try:
        cameras, n = 8, 60
        publisher = threading.Thread(target=publish_cameras, args=(server.url, prefix, images, cameras, n))
        publisher.start()
        reader = Client(server.url, prefix).results(timeout_s=120)
        seen = list(take(reader, 40))  # mid-run: results flow from both
        procs[0].kill()                  # SIGKILL: no drain, no release; its leases lapse
        joined(publisher, 180)
        seen += list(take(reader, cameras * n - len(seen)))
        check_exactly_once_and_events(server.url, prefix, seen, cameras, n)
        assert stop(procs[1])[0] == 0
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()


def test_serve_through_a_redis_cluster(bundle, tmp_path, data_dir):
    cluster = RedisCluster(tmp_path / "cluster").start()
    try:
        prefix = f"c{uuid.uuid4().hex[:6]}"
        images = load_cifar10("test", data_dir).images[:2000]
        proc = start_serve(bundle, cluster.url, prefix, tmp_path, "serve-cluster")
        try:
            cameras, n = 4, 30
            publish_cameras(cluster.url, prefix, images, cameras, n)
            results = collect(cluster.url, prefix, cameras * n, timeout_s=120)
            check_exactly_once_and_events(cluster.url, prefix, results, cameras, n)
            slots = {Client(cluster.url, prefix).r.keyslot(Keys(prefix).frames(p)) for p in range(8)}
            assert len(slots) == 8  # the partitions really spread over the cluster's slots
            assert stop(proc)[0] == 0
        finally:
            if proc.poll() is None:
                proc.kill()
    finally:
        cluster.stop()


def test_bad_inputs_are_refused_with_a_clear_message(bundle, server, tmp_path):
    text = tmp_path / "not-a-video.mp4"
    text.write_text("hello")
    out = dynbn("publish", str(text), "--camera", "c1", "--redis-url", server.url)
    assert out.returncode == 2 and "not-a-video.mp4" in out.stderr and "Traceback" not in out.stderr
    damaged = tmp_path / "damaged"
    damaged.mkdir()
    for f in bundle.iterdir():
        (damaged / f.name).write_bytes(f.read_bytes())
    table = damaged / "bn_table.safetensors"
    table.write_bytes(table.read_bytes()[: table.stat().st_size // 2])
    out = dynbn("serve", "--bundle", str(damaged), "--redis-url", server.url)
    assert out.returncode == 2 and "bn_table.safetensors" in out.stderr and "Traceback" not in out.stderr
    prefix = f"m{uuid.uuid4().hex[:6]}"
    Client(server.url, prefix, partitions=4)
    out = dynbn("serve", "--bundle", str(bundle), "--redis-url", server.url, "--prefix", prefix, "--partitions", "8")
    assert out.returncode == 2 and "4 partitions" in out.stderr
    out = dynbn("serve", "--bundle", str(bundle), "--redis-url", server.url, "--arm", "dynbn_oracle")
    assert out.returncode == 2 and "true corruption" in out.stderr
