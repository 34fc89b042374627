"""End to end through a private redis-server: exactly one result per frame and arm, also when a
worker process is SIGKILLed or Redis restarts mid-run; malformed messages are dead-lettered."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from streaming import arms_for, joined, one_torch_thread, tiny, wait_until, write_scenario

from simulator.publisher import Publisher
from simulator.strategies import scenarios
from streamer.completion import wait_complete
from streamer.consumer import Worker
from streamer.keys import Keys
from streamer.connection import connect
from streamer.redis_transport import RedisTransport
from streamer.summary import parse_results
from streamer.transport import MemoryTransport
from streamer.wire import FrameMessage

__all__ = ["one_torch_thread"]  # autouse fixture
ROOT = Path(__file__).resolve().parent.parent
E2E = dict(cameras=4, frames_per_camera=120, rate_fps=40, partitions=4, batch={"size": 16, "max_wait_ms": 20})


def service_env(server, env, scenario: Path, prefix: str, **extra) -> dict:
    return {**os.environ, "REDIS_URL": server.url, "DYNBN_DATA": str(env["data_dir"]), "PYTHONPATH": str(ROOT),
            "SIM_SCENARIO": str(scenario), "SIM_PREFIX": prefix, "SIM_ARTIFACTS": str(env["root"]),
            "STREAMER_SCENARIO": str(scenario), "STREAMER_PREFIX": prefix, "STREAMER_ARTIFACTS": str(env["root"]),
            "STREAMER_LEASE_MS": "1500", "STREAMER_THREADS": "1", "STREAMER_EXIT_WHEN_DONE": "true", **extra}


def start(module: str, environ: dict, name: str, folder: Path) -> subprocess.Popen:
    log = open(folder / f"{name}.log", "w")
    return subprocess.Popen([sys.executable, "-m", module], env={**environ, "STREAMER_NAME": name},
                            stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)


def reference(scn, env) -> dict:
    """Predictions of an undisturbed in-memory run with one worker."""
    t = MemoryTransport(scn.partitions)
    Publisher(scn, t, env["source"], max_backlog=10**6).run()
    w = Worker(t, arms_for(scn, env["root"], env["data_dir"]), batch_size=scn.batch.size)
    w.startup()
    w.run(until_done=True)
    w.shutdown()
    return {(r.camera, r.seq): r.preds for r in parse_results(t.results())}


def assert_exactly_once(transport, scn, expected: dict | None = None) -> list:
    results = parse_results(transport.results())
    keys = Counter((r.camera, r.seq) for r in results)
    want = {(c, s) for c in scn.camera_ids for s in range(scn.frames_per_camera)}
    assert set(keys) == want, f"missing {sorted(want - set(keys))[:5]}"
    assert max(keys.values()) == 1, f"duplicates {[k for k, n in keys.items() if n > 1][:5]}"
    assert all(set(r.preds) == set(scn.arms) for r in results)
    if expected is not None:
        assert {(r.camera, r.seq): r.preds for r in results} == expected
    return results


def run_with_fault(server, env, fault, **override):
    """Two worker processes and a simulator process; ``fault(transport, workers)`` mid-run."""
    scn = tiny(**{**E2E, **override})
    path = write_scenario(env["folder"], **{**E2E, **override})
    prefix = f"e2e{uuid.uuid4().hex[:6]}"
    environ = service_env(server, env, path, prefix)
    t = RedisTransport(connect(server.url), Keys(prefix), scn.partitions)
    workers = [start("streamer.worker", environ, f"{prefix}-w{i}", env["folder"]) for i in range(2)]
    procs = list(workers)
    try:
        # both workers up before frames flow, so both own partitions
        wait_until(lambda: t.r.zcard(t.keys.members) >= 2, 120, "both worker processes to join")
        sim = start("simulator", environ, f"{prefix}-sim", env["folder"])
        procs.append(sim)
        wait_until(lambda: t.counts()[0] >= scn.total_frames // 4, 120, "a quarter of the results")
        fault(t, workers)
        assert wait_complete(t, 120), "run did not complete"
        assert sim.wait(30) == 0
        codes = [p.wait(30) for p in workers]  # survivors exit by themselves once the run is done
        return scn, t, codes
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()


def test_sigkill_one_of_two_workers_loses_and_duplicates_nothing(server, env):
    scn, t, codes = run_with_fault(server, env, lambda t, workers: workers[0].send_signal(signal.SIGKILL))
    results = assert_exactly_once(t, scn, reference(scn, env))   # vote state handed over exactly
    assert codes == [-signal.SIGKILL, 0]
    assert len(Counter(r.worker for r in results)) == 2


def test_redis_restart_mid_run_loses_and_duplicates_nothing(server, env):
    scn, t, codes = run_with_fault(server, env, lambda t, w: server.restart(down_s=1.5))
    assert_exactly_once(t, scn, reference(scn, env))
    assert codes == [0, 0]
    log = (env["folder"] / f"{t.keys.prefix}-w0.log").read_text() + (env["folder"] / f"{t.keys.prefix}-w1.log").read_text()
    assert "redis unavailable" in log and "reconnects=" in log


def test_every_kind_of_malformed_message_is_dead_lettered_with_its_reason(server, env):
    scn = tiny(cameras=1, frames_per_camera=3, partitions=1)
    t = RedisTransport(connect(server.url, 0), Keys(f"bad{uuid.uuid4().hex[:6]}"), 1)
    t.setup()
    frame = env["source"].take(0, 0, 1)[0][0]
    good = FrameMessage.from_frame("cam00", 50, frame, time.time()).to_fields()
    bad = {
        "missing field 'camera'": {k: v for k, v in good.items() if k != "camera"},
        "shape (32, 32, 4)": {**good, "shape": "32,32,4"},
        "dtype": {**good, "dtype": "float32"},
        "raw payload has 100 bytes": {**good, "payload": good["payload"][:100]},
        "png payload does not decode": {**good, "encoding": "png", "payload": b"\x89PNG\r\n\x1a\n garbage"},
        "exceeds the limit": {**good, "payload": b"\x00" * (1 << 21)},
        "the model takes (32, 32, 3)": FrameMessage.from_frame("cam00", 51, frame[:16, :16], 0.0).to_fields(),
        "wire version": {**good, "v": "0"},
        "delivered 4 times": good,
    }
    for fields in bad.values():
        t.r.xadd(t.keys.frames(0), fields)  # written by something else: no publish script, no seq check
    poison = t.r.xrange(t.keys.frames(0))[-1][0].decode()
    t.r.xreadgroup("workers", "ghost", {t.keys.frames(0): ">"})
    for _ in range(2):
        t.r.xclaim(t.keys.frames(0), "workers", "ghost", 0, [poison])  # two more crashed deliveries
    Publisher(scn, t, env["source"]).run()
    w = Worker(t, arms_for(scn, env["root"], env["data_dir"]), batch_size=8, max_deliveries=3)
    w.startup()
    w.run(until_done=True)
    w.shutdown()
    reasons = [d[b"reason"].decode() for d in t.dead_letters()]
    assert len(reasons) == len(bad) and len(t.results()) == 3
    for needle in bad:
        assert any(needle in r for r in reasons), (needle, reasons)


@settings(max_examples=3, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(scn=scenarios(max_cameras=3, max_frames=24))
def test_generated_schedules_through_redis(server, env, scn):
    t = RedisTransport(connect(server.url, 0), Keys(f"gen{uuid.uuid4().hex[:6]}"), scn.partitions)
    pub = threading.Thread(target=Publisher(scn, t, env["source"], max_backlog=64).run)
    w = Worker(t, arms_for(scn, env["root"], env["data_dir"]), batch_size=scn.batch.size, max_wait_ms=10)
    w.startup()
    pub.start()
    w.run(until_done=True)
    w.shutdown()
    joined(pub, 10)
    results = assert_exactly_once(t, scn)
    for r in results:
        cam = scn.camera_ids.index(r.camera)
        assert r.truth.domain == scn.schedule_for(cam).per_frame()[r.seq][0]


def test_sigterm_finishes_the_batch_in_hand_and_logs_counters(server, env):
    scn = tiny(cameras=4, frames_per_camera=150, partitions=2)
    path = write_scenario(env["folder"], cameras=4, frames_per_camera=150, partitions=2)
    prefix = f"term{uuid.uuid4().hex[:6]}"
    t = RedisTransport(connect(server.url), Keys(prefix), scn.partitions)
    worker = start("streamer.worker", service_env(server, env, path, prefix, STREAMER_EXIT_WHEN_DONE="false"),
                   f"{prefix}-w", env["folder"])
    try:
        wait_until(lambda: t.r.zcard(t.keys.members) >= 1, 120, "the worker process to join")
        Publisher(scn, t, env["source"], max_backlog=10**6).run()
        wait_until(lambda: t.counts()[0] >= 48, 120, "48 results")
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(30) == 0
    finally:
        if worker.poll() is None:
            worker.kill()
    undelivered, pending = t.backlog()
    assert pending == 0 and undelivered > 0                    # stopped reading, acked what it held
    assert t.r.keys(f"{prefix}:lease:*") == []                 # leases released for the next worker
    last = (env["folder"] / f"{prefix}-w.log").read_text().strip().splitlines()[-1]
    assert "stopped:" in last and f"results={t.counts()[0]}" in last
