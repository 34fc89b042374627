"""The fault drills' findings, each as a test that failed before its fix: nothing lost without a word,
memory bounded by what the worker reads, runs that identify themselves, a report that does not wait for
frames that will never come."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest
from streaming import arms_for, consume, joined, one_torch_thread, tiny, wait_until, write_scenario

from simulator.publisher import Publisher
from streamer.consumer import RunMismatch, Worker
from streamer.keys import Keys
from streamer.connection import connect
from streamer.redis_transport import RedisTransport
from streamer.summary import parse_results, summarize
from streamer.transport import MemoryTransport
from streamer.wire import FrameMessage

__all__ = ["one_torch_thread"]  # autouse fixture
ROOT = Path(__file__).resolve().parent.parent




def redis_transport(server, partitions: int) -> RedisTransport:
    return RedisTransport(connect(server.url, 0), Keys(f"drill{uuid.uuid4().hex[:6]}"), partitions)


def report_of(t) -> dict:
    return summarize(parse_results(t.results()), t.dead_letters(), t.get_run(), t.name, t.last_seqs(), t.queued())


def test_a_foreign_entry_with_a_future_id_loses_no_frame(server, env):
    """Finding 1: one foreign entry with a future id silently dropped 364 frames of a camera, counted as published."""
    scn = tiny(cameras=2, frames_per_camera=16, partitions=1)
    t = redis_transport(server, 1)
    t.setup()
    t.r.xadd(t.keys.frames(0), {"foreign": "entry"}, id=f"{int(time.time() * 1000) + 10**9}-0")
    consume(scn, env, transport=t)
    rep = report_of(t)
    assert rep["frames_with_results"] == 32 and rep["duplicate_results"] == 0
    assert rep["accounting"]["lost"] == 0 and rep["accounting"]["foreign_dead_letters"] == 1
    assert rep["dead_letters"] == 1 and t.r.xlen(t.keys.frames(0)) == 0


def test_backpressure_drill_256_cameras_one_partition(tmp_path):
    """Finding 2: 256 cameras, 1 partition, backlog 100 deadlocked simulator, worker and report, and trimming
    removed frames no worker had seen. The drill runs every service as its own process."""
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, str(ROOT / "bench/backpressure.py"), "--cameras", "256",
                           "--frames-per-camera", "4", "--max-backlog", "100", "--timeout", "300", "--out", str(out)],
                          capture_output=True, text=True, timeout=500, cwd=ROOT)
    check = json.loads((out / "backpressure.json").read_text())
    assert proc.returncode == 0 and check["passed"], proc.stdout[-3000:]
    assert check["frames_with_results"] == 1024 and check["report_lost"] == 0 and check["most_frames_in_stream"] <= 100


class Recording(MemoryTransport):
    """Records the frame bytes each read hands over."""

    def __init__(self, partitions):
        super().__init__(partitions)
        self.reads: list[int] = []

    def read(self, *args, **kw):
        got = super().read(*args, **kw)
        self.reads.append(sum(e.size for e in got if not e.oversized))
        return got


def test_a_batch_holds_at_most_its_byte_budget_and_oversized_entries_are_never_held(env):
    """Finding 3: the size check ran after a read of 64 entries, so 64 x 8 MB entries were held at once.
    Here 40 entries of 300 kB and 3 of 3 MB meet a 1 MB budget and a 1 MiB payload limit."""
    scn = tiny(cameras=1, frames_per_camera=8, partitions=1)
    t = Recording(1)
    base = FrameMessage.from_frame("big", 0, env["source"].take(0, 0, 1)[0][0], time.time()).to_fields()
    for i in range(43):
        t.publish(0, {**base, "seq": str(i), "payload": b"\x00" * (3_000_000 if i % 15 == 7 else 300_000)})
    _, w = consume(scn, env, transport=t, max_batch_bytes=1_000_000)
    entry_limit = w.max_entry
    assert max(t.reads) <= 1_000_000 + entry_limit
    reasons = [d["reason"] for d in t.dead_letters()]
    assert len(reasons) == 43 and len(t.results()) == 8
    assert sum("exceeds the limit of 1048576 payload bytes (not read)" in r for r in reasons) == 3


def test_handled_frames_leave_redis_and_results_keep_their_retention(server, env):
    """Finding 3: handled frames were never deleted and results never trimmed: Redis grew for weeks."""
    scn = tiny(cameras=2, frames_per_camera=200, partitions=1)
    t = redis_transport(server, 1)
    t.retention = 50
    consume(scn, env, transport=t)
    assert t.r.xlen(t.keys.frames(0)) == 0
    assert 50 <= t.r.xlen(t.keys.results(0)) < 200  # MAXLEN ~ trims whole nodes of 100 entries


def test_the_report_states_losses_with_their_cause_and_does_not_wait_for_them(server, env, tmp_path):
    """Finding 5: a frame that never arrived made the report wait an hour, then "missing" (published - results -
    dead) let a foreign entry cancel a lost frame. Here one frame is deleted unhandled, one never arrives."""
    scn = tiny(cameras=2, frames_per_camera=8, partitions=1)
    t = redis_transport(server, 1)
    Publisher(scn, t, env["source"], max_backlog=10**6).run()
    first = t.r.xrange(t.keys.frames(0), count=1)[0][0]
    t.r.xdel(t.keys.frames(0), first)                                    # taken by the stream, then gone
    t.set_run(**{"published:cam01": 9, "published": 17})               # one frame more than the stream took
    t.r.xadd(t.keys.frames(0), {"foreign": "entry"})
    w = Worker(t, arms_for(scn, env["root"], env["data_dir"]), batch_size=8)
    w.startup()
    w.run(until_done=True)
    w.shutdown()
    environ = {**os.environ, "REDIS_URL": server.url, "STREAMER_PREFIX": t.keys.prefix, "PYTHONPATH": str(ROOT),
               "STREAMER_OUT": str(tmp_path / "report"), "STREAMER_WAIT_S": "3600"}
    proc = subprocess.run([sys.executable, "-m", "streamer.report"], env=environ, capture_output=True, text=True,
                          timeout=120, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    acc = json.loads((tmp_path / "report/report.json").read_text())["accounting"]
    assert acc["per_camera"]["cam00"]["lost_causes"] == {"removed_unhandled": 1}
    assert acc["per_camera"]["cam01"]["lost_causes"] == {"never_arrived": 1}
    assert acc["lost"] == 2 and acc["scored"] == 15 and acc["foreign_dead_letters"] == 1
    assert "lost 2 (1 removed_unhandled, 1 never_arrived)" in (tmp_path / "report/report.md").read_text()


def test_the_report_skips_a_run_older_than_its_max_age(server, env, tmp_path):
    """``run_max_age_s``: a finished run left in Redis is not reported; the next run is."""
    scn = tiny(cameras=1, frames_per_camera=4, partitions=1)
    t = redis_transport(server, 1)
    t.set_run(id="old", partitions=1, started=time.time() - 3600, done=1, published=0)
    environ = {**os.environ, "REDIS_URL": server.url, "STREAMER_PREFIX": t.keys.prefix, "PYTHONPATH": str(ROOT),
               "STREAMER_OUT": str(tmp_path / "report"), "STREAMER_RUN_MAX_AGE_S": "60"}
    report = subprocess.Popen([sys.executable, "-m", "streamer.report"], env=environ, cwd=ROOT,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        time.sleep(3)
        assert report.poll() is None, report.stdout.read()   # the old run is not reported
        consume(scn, env, transport=t)
        out, _ = report.communicate(timeout=60)
    finally:
        report.kill()
    assert report.returncode == 0, out
    rep = json.loads((tmp_path / "report/report.json").read_text())
    assert rep["frames_published"] == 4 and rep["accounting"]["scored"] == 4


def test_a_worker_started_after_a_finished_run_waits_for_the_next(env):
    """Finding 7: a worker with exit-when-done exited 0 at once against a finished run left in Redis (and
    compose's restart: on-failure did not bring it back for the next run)."""
    scn = tiny(cameras=1, frames_per_camera=8, partitions=1)
    t, _ = consume(scn, env)                                             # a finished run
    w = Worker(t, arms_for(scn, env["root"], env["data_dir"]), batch_size=8, name="late")
    w.startup()
    th = threading.Thread(target=w.run, kwargs={"until_done": True})
    th.start()
    time.sleep(1.0)
    assert th.is_alive()                                                 # not fooled by the old run
    t._last = [{} for _ in range(t.partitions)]                          # a reset, as SIM_RESET does
    Publisher(scn, t, env["source"], max_backlog=10**6).run()           # the next run
    joined(th, 60)
    w.shutdown()
    assert w.counters["results"] == 8


def test_the_worker_service_exits_2_on_a_run_with_other_partitions(server, env, tmp_path):
    """Finding 7, as deployed: ``python -m streamer.worker`` says why and exits 2 (compose does not restart it)."""
    t = redis_transport(server, 4)
    t.set_run(id="r4", partitions=4, done=0)
    environ = {**os.environ, "REDIS_URL": server.url, "PYTHONPATH": str(ROOT), "DYNBN_DATA": str(env["data_dir"]),
               "STREAMER_PREFIX": t.keys.prefix, "STREAMER_SCENARIO": str(write_scenario(tmp_path)),
               "STREAMER_ARTIFACTS": str(env["root"]), "STREAMER_EXIT_WHEN_DONE": "true", "STREAMER_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "streamer.worker"], env=environ, capture_output=True, text=True,
                          timeout=180, cwd=ROOT)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "run r4 in Redis has 4 partitions, this worker 2" in proc.stderr and "Traceback" not in proc.stderr


def test_a_worker_refuses_a_run_with_other_partitions(env):
    """Finding 7: a worker whose scenario had other partitions than the run read the wrong streams."""
    t = MemoryTransport(2)
    t.set_run(id="r1", partitions=4, done=0)
    w = Worker(t, {}, name="mismatched")
    with pytest.raises(RunMismatch, match="run r1 in Redis has 4 partitions, this worker 2"):
        w.run(until_done=True)


def test_the_simulator_says_why_it_waits(env, caplog):
    """Finding 7: with no worker on its streams the simulator blocked without a word."""
    t = MemoryTransport(1)
    pub = Publisher(tiny(cameras=2, frames_per_camera=20, partitions=1), t, env["source"], max_backlog=4)
    pub.warn_after_s = 0.2
    th = threading.Thread(target=pub.run)
    with caplog.at_level(logging.WARNING, logger="simulator"):
        th.start()
        wait_until(lambda: "backlog full" in caplog.text, 30, "the backlog warning")
        pub.stop()
        joined(th, 10)
    assert "are workers running on this prefix with 1 partitions?" in caplog.text


def test_soak_drill_scores_every_frame_once_while_streams_keep_their_retention(tmp_path):
    """bench/soak.py in short: serve + 4 publishing cameras + a following reader, results trimmed to a
    retention far below the frames served; every frame still reaches the reader exactly once. (The
    10-minute run and its memory figures are in docs/service.md.)"""
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, str(ROOT / "bench/soak.py"), "--minutes", "0.4", "--sample-s", "4",
                           "--cameras", "4", "--retention", "100", "--out", str(out)],
                          capture_output=True, text=True, timeout=400, cwd=ROOT)
    check = json.loads((out / "soak.json").read_text())
    assert proc.returncode == 0 and check["every_frame_scored_once"], proc.stdout[-3000:]
    assert check["published"] > 4 * 100 and check["serve_exit_code"] == 0
