"""Watching a worker: /metrics counts exactly what was published and dead-lettered, /readyz follows the
worker's life (503 while loading, 200 serving, 503 from SIGTERM on), /status.json has every camera."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families
from redis_server import free_port
from streaming import arms_for, artifacts_root, joined, one_torch_thread, take, tiny, wait_until

from dynbn import corrupt
from dynbn.data import load_cifar10
from simulator.embedded import run_scenario
from simulator.publisher import Publisher
from simulator.sources import CifarSource
from streamer.client import Client
from streamer.consumer import Worker
from streamer.keys import partition_of
from streamer.lifecycle import run_worker
from streamer.observe import Observer, reason_class
from streamer.transport import MemoryTransport
from streamer.web import serve_http
from streamer.wire import FrameMessage

__all__ = ["one_torch_thread"]  # autouse fixture
ROOT = Path(__file__).resolve().parent.parent
DYNBN = str(Path(sys.executable).parent / "dynbn")



def get(port: int, path: str) -> tuple[int, str]:
    """(status, body) of GET http://127.0.0.1:port/path; (0, error) while nothing answers."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as reply:
            return reply.status, reply.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()
    except OSError as exc:
        return 0, str(exc)


def samples(text: str) -> dict[tuple[str, tuple], float]:
    """(sample name, sorted labels) -> value, parsed with prometheus_client's own parser."""
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def frames_of(camera: int, n: int) -> list[np.ndarray]:
    """A camera's frames: clean, then fog, then noise, in thirds."""
    rng = np.random.default_rng(camera)
    pick = load_cifar10("test").images[rng.choice(2000, n, replace=False)]
    pick[n // 3:2 * n // 3] = corrupt(pick[n // 3:2 * n // 3], "fog", 5, rng)
    pick[2 * n // 3:] = corrupt(pick[2 * n // 3:], "gaussian_noise", 5, rng)
    return list(pick)


def test_metrics_readiness_and_status_of_a_serving_worker(bundle, server, tmp_path):
    """A `dynbn serve` with its port: /readyz 503 while it loads, then 200; after 3 cameras x 30 frames and
    4 malformed entries, /metrics counts exactly those frames, dead letters by reason class, conditions and
    changes as the results and events say; /status.json has each camera at its last condition."""
    port, prefix = free_port(), f"obs{uuid.uuid4().hex[:6]}"
    log = open(tmp_path / "serve.log", "w")
    proc = subprocess.Popen([DYNBN, "serve", "--bundle", str(bundle), "--redis-url", server.url, "--prefix", prefix,
                             "--batch", "16", "--metrics-port", str(port), "--threads", "1"],
                            stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        answers = []
        wait_until(lambda: answers.append(get(port, "/readyz")) or answers[-1][0] == 200, 120, "/readyz 200")
        codes = [code for code, _ in answers if code]
        assert codes[0] == 503 and codes[-1] == 200, answers      # answered while loading, not ready then
        assert get(port, "/healthz")[0] == 200

        client = Client(server.url, prefix)
        for c in range(3):
            for frame in frames_of(c, 30):
                client.publish(f"cam{c}", frame)
        good = FrameMessage.from_frame("bad", 0, frames_of(0, 3)[0], time.time()).to_fields()
        frames = client.keys.frames(partition_of("bad", client.partitions))
        client.r.xadd(frames, {**good, "shape": "16,16,3", "payload": good["payload"][:768]})   # wrong_shape
        client.r.xadd(frames, {**good, "shape": "16,16,3", "payload": good["payload"][:768]})   # wrong_shape
        client.r.xadd(frames, {**good, "truth": "{not json"})                                   # malformed
        client.r.xadd(frames, {**good, "payload": b"\0" * (2 << 20)})                          # oversized
        results = list(take(client.results(timeout_s=120), 90))
        events = list(client.events(follow=False))
        wait_until(lambda: _value(get(port, "/metrics")[1], "dynbn_frames_total", outcome="dead_letter") == 4, 60,
                   "4 dead letters counted")

        m = samples(get(port, "/metrics")[1])
        assert m[("dynbn_frames_total", (("outcome", "result"),))] == 90
        assert {dict(k[1])["reason"]: v for k, v in m.items() if k[0] == "dynbn_dead_letters_total"} == \
            {"wrong_shape": 2, "malformed": 1, "oversized": 1}
        by_condition = Counter(r["condition"] for r in results)
        assert {dict(k[1])["condition"]: v for k, v in m.items()
                if k[0] == "dynbn_frames_by_condition_total" and v} == dict(by_condition)
        assert m[("dynbn_condition_changes_total", ())] == len(events)
        assert m[("dynbn_latency_seconds_count", ())] == 90 and m[("dynbn_queue_seconds_count", ())] == 90
        assert m[("dynbn_batch_size_frames_count", ())] == m[("dynbn_batches_total", ())]
        assert m[("dynbn_batch_size_frames_sum", ())] == 94 and m[("dynbn_owned_partitions", ())] == 8
        info = next(dict(k[1]) for k in m if k[0] == "dynbn_worker_info")
        assert info["model"] == "resnet20" and info["arm"] == "dynbn_vote" and info["device"] == "cpu"

        status = json.loads(get(port, "/status.json")[1])
        last = {r["camera"]: r["condition"] for r in sorted(results, key=lambda r: r["seq"])}
        assert {c["camera"]: c["condition"] for c in status["cameras"]} == last
        assert all(c["frames"] == 30 for c in status["cameras"]) and status["ready"] is True
        code, page = get(port, "/")
        assert code == 200 and "status.json" in page and "http" not in page.split("<script>")[1]  # loads nothing else
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
    assert proc.returncode == 0


def _value(text: str, name: str, **labels) -> float | None:
    return samples(text).get((name, tuple(sorted(labels.items()))))


class Slow:
    """An arm wrapper that takes ``delay_s`` per batch, so a drain lasts long enough to be watched."""

    def __init__(self, arm, delay_s: float) -> None:
        self.arm, self.delay_s = arm, delay_s

    def __call__(self, x, cams, truth):
        time.sleep(self.delay_s)
        return self.arm(x, cams, truth)

    def __getattr__(self, name):
        return getattr(self.arm, name)


def test_readyz_is_503_from_sigterm_on_while_the_batch_in_hand_drains(data_dir, tmp_path_factory):
    """The real SIGTERM path of every worker process (``run_worker``): from the signal on /readyz answers 503
    ("draining") while the batch in hand is still being finished and committed; nothing is left pending."""
    scn = tiny(cameras=2, frames_per_camera=40, partitions=1)
    root = artifacts_root(tmp_path_factory)
    t = MemoryTransport(1)
    Publisher(scn, t, CifarSource("test", 0, data_dir), max_backlog=10**6).run()
    arms = {name: Slow(arm, 0.4) for name, arm in arms_for(scn, root, data_dir).items()}
    observer = Observer(scn.domains())
    worker = Worker(t, arms, batch_size=8, observer=observer)
    observer.attach(worker, model="resnet20")
    port = free_port()
    http = serve_http(observer, port, host="127.0.0.1")
    seen: list[tuple[float, int, str]] = []

    def watch():
        while observer.state != "stopped":
            code, body = get(port, "/readyz")
            seen.append((time.monotonic(), code, body.strip()))
            time.sleep(0.02)

    def terminate_once_serving():
        wait_until(lambda: t.counts()[0] >= 16, 60, "two batches done")
        os.kill(os.getpid(), signal.SIGTERM)
    handlers = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    watcher, killer = threading.Thread(target=watch), threading.Thread(target=terminate_once_serving)
    watcher.start()
    killer.start()
    try:
        assert run_worker(worker) == 0
    finally:
        for s, h in handlers.items():
            signal.signal(s, h)
        joined(killer, 10)
        joined(watcher, 10)
        http.shutdown()
    codes = [(code, body) for _, code, body in seen]
    assert (200, "ready") in codes and (503, "draining") in codes
    first_draining = codes.index((503, "draining"))
    assert all(c == (503, "draining") or c[1] == "stopped" for c in codes[first_draining:])  # never ready again
    assert t.backlog()[1] == 0 and t.counts()[0] in (24, 32)   # the batch in hand was finished and committed, none pending


@pytest.mark.parametrize("reason, cls", [
    ("entry of 3000000 bytes exceeds the limit of 1048576 payload bytes (not read)", "oversized"),
    ("payload of 2097152 bytes exceeds the limit of 1048576", "oversized"),
    ("delivered 6 times (limit 5): poison message?", "poison"),
    ("arm dynbn_vote failed: RuntimeError: boom", "arm_failed"),
    ("frame shape (16, 16, 3), the model takes (32, 32, 3)", "wrong_shape"),
    ("invalid field truth: not json", "malformed"),
    ("missing field 'camera'", "malformed"),
])
def test_dead_letter_reasons_fall_into_a_bounded_set_of_classes(reason, cls):
    assert reason_class(reason) == cls


def test_the_embedded_run_serves_the_page_while_it_runs(data_dir, tmp_path_factory, tmp_path):
    """`dynbn scenario run --serve-page PORT`: the page's data covers every camera of the scenario during the run,
    /metrics counts its frames, and the port closes when the run ends."""
    scn = tiny(cameras=3, frames_per_camera=80, partitions=1, rate_fps=40)
    port, seen = free_port(), {}
    run = threading.Thread(target=lambda: seen.update(report=run_scenario(
        scn, tmp_path / "out", artifacts=artifacts_root(tmp_path_factory), data_dir=data_dir, log=lambda *_: None,
        serve_page=port)))
    run.start()
    def cameras() -> int:
        code, body = get(port, "/status.json")
        return len(json.loads(body)["cameras"]) if code == 200 else 0
    wait_until(lambda: cameras() == 3, 120, "every camera on the page")
    assert get(port, "/readyz")[0] == 200
    joined(run, 120)
    assert seen["report"]["frames_with_results"] == 240
    assert get(port, "/status.json")[0] == 0   # the run is over: nothing listens any more


def test_a_taken_metrics_port_is_refused_by_name(bundle, server):
    """Two `dynbn serve` on one machine with the same port: the second says which port and how to choose another."""
    with socket.socket() as taken:
        taken.bind(("0.0.0.0", 0))
        taken.listen()
        port = taken.getsockname()[1]
        out = subprocess.run([DYNBN, "serve", "--bundle", str(bundle), "--redis-url", server.url,
                              "--metrics-port", str(port)], capture_output=True, text=True, timeout=120,
                             env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert out.returncode == 2 and f"metrics port {port}" in out.stderr and "--metrics-port" in out.stderr, out.stderr
    assert "Traceback" not in out.stderr
