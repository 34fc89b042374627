"""Worker failure modes: a zombie's fenced commit, rebalancing to a new worker, a consumer group deleted under a
running worker, the delivery limit, repeated Redis outages, and what a hand-over keeps (exportable arm state: votes,
detected conditions) and what it cannot (other per-camera state restarts from scratch)."""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections import Counter

import pytest
from redis_server import RedisServer
from streaming import arms_for, consume, joined, one_torch_thread, tiny, wait_until

from simulator.publisher import Publisher
from streamer.consumer import Worker
from streamer.keys import GROUP, Keys
from streamer.connection import TRANSIENT, connect
from streamer.redis_transport import RedisTransport
from streamer.summary import parse_results
from streamer.transport import MemoryTransport
from streamer.wire import Event, FrameMessage

__all__ = ["one_torch_thread"]  # autouse fixture


@pytest.fixture(params=["memory", "redis"])
def make_transport(request):
    """partitions -> a fresh transport of either backend (a private redis-server, a fresh key prefix)."""
    if request.param == "memory":
        return MemoryTransport
    url = request.getfixturevalue("server").url
    return lambda partitions: RedisTransport(connect(url, 0), Keys(f"f{uuid.uuid4().hex[:6]}"), partitions)


def worker(scn, env, transport, **kw) -> Worker:
    return Worker(transport, arms_for(scn, env["root"], env["data_dir"]), **{"batch_size": 8, "max_wait_ms": 20, **kw})


def started(target, **kw) -> threading.Thread:
    th = threading.Thread(target=target, kwargs=kw, daemon=True)
    th.start()
    return th


def outcome(t) -> dict:
    """(camera, seq) -> what a result says: every arm's class, every arm's detected domain, the served condition."""
    return {(r.camera, r.seq): (r.preds, r.detected, r.condition) for r in parse_results(t.results())}


def scored_once(t, scn) -> list:
    """The results, after checking every published frame has exactly one."""
    results = parse_results(t.results())
    keys = Counter((r.camera, r.seq) for r in results)
    assert keys == {(c, s): 1 for c in scn.camera_ids for s in range(scn.frames_per_camera)}
    return results


def text(fields: dict) -> dict:
    return {(k.decode() if isinstance(k, bytes) else k): (v.decode() if isinstance(v, bytes) else v)
            for k, v in fields.items()}


def frame(env, camera: str, seq: int) -> dict:
    return FrameMessage.from_frame(camera, seq, env["source"].take(0, seq, 1)[0][0], time.time()).to_fields()


def test_a_zombie_whose_lease_was_taken_over_cannot_commit(env, make_transport):
    """A worker that stalls past its lease (GC pause, network partition) and then commits must write nothing: the
    new owner already claimed those frames, so a write would duplicate them. The zombie drops the partition and
    counts the frames as fenced; the new owner scores every frame once."""
    scn = tiny(cameras=2, frames_per_camera=16, partitions=1)
    t = make_transport(1)
    Publisher(scn, t, env["source"], max_backlog=10**6).run()
    zombie = worker(scn, env, t, lease_ms=60_000, name="zombie")
    zombie.startup()
    zombie._balance()
    batch = zombie._take_batch()        # reads 8 frames, then stalls
    t.release(0, zombie.tokens[0])      # its lease lapses (released here instead of waited out)
    heir = worker(scn, env, t, lease_ms=60_000, name="heir")
    heir.startup()
    heir._balance()                     # takes the partition over, claims the zombie's 8 pending frames
    assert 0 in heir.tokens and heir.counters["claimed"] == 8
    zombie._process(batch)              # wakes up and commits: refused
    zombie.stop.set()
    assert zombie.counters["fenced"] == 8 and zombie.counters["results"] == 0 and zombie.tokens == {}
    assert t.counts() == (0, 0) and t.load_state(0) == {}   # no result, no camera state written
    heir.run(until_done=True)
    heir.shutdown()
    assert {r.worker for r in scored_once(t, scn)} == {"heir"}


def test_a_joining_worker_gets_its_share_and_nothing_is_lost_or_duplicated(env):
    """One worker owns all 4 partitions; a second joins mid-stream and the first hands back partitions until each
    owns ceil(4 / 2) = 2. Every frame is scored once, and as one undisturbed worker scores it (states handed over)."""
    scn = tiny(cameras=4, frames_per_camera=64, partitions=4, rate_fps=16)  # frames flow for 4 s
    reference = outcome(consume(tiny(cameras=4, frames_per_camera=64, partitions=4), env)[0])
    t = MemoryTransport(4)
    first = worker(scn, env, t, lease_ms=600, name="first")
    second = worker(scn, env, t, lease_ms=600, name="second")
    first.startup()
    threads = [started(Publisher(scn, t, env["source"], max_backlog=10**6).run), started(first.run, until_done=True)]
    wait_until(lambda: len(first.tokens) == 4 and t.counts()[0] > 0, 60, "the first worker to own all 4 partitions")
    second.startup()
    threads.append(started(second.run, until_done=True))
    wait_until(lambda: len(first.tokens) == 2 and len(second.tokens) == 2, 60, "both workers to own 2 partitions")
    for th in threads:
        joined(th, 120)
    first.shutdown()
    second.shutdown()
    results = scored_once(t, scn)
    assert {r.worker for r in results} == {"first", "second"}
    assert outcome(t) == reference


def test_streams_deleted_under_a_worker_are_recreated_and_it_goes_on(env, server, caplog):
    """Someone resets the streams under a worker that owns its partition (DEL: the consumer group goes with them).
    Its next read fails with NOGROUP; it recreates the group, re-adopts the partition and scores the frames
    published afterwards, each once."""
    scn = tiny(cameras=1, partitions=1)
    t = RedisTransport(connect(server.url, 0), Keys(f"nogroup{uuid.uuid4().hex[:6]}"), 1)
    w = worker(scn, env, t, lease_ms=2000)
    w.startup()
    for seq in range(16):
        t.publish(0, frame(env, "cam00", seq))
    w._balance()
    for _ in range(2):                  # two batches of 8, between reads (not blocked in one) when the reset comes
        w._process(w._take_batch())
    assert t.counts() == (16, 0) and t.backlog() == (0, 0)
    t.r.delete(t.keys.frames(0))
    for seq in range(16, 32):
        t.publish(0, frame(env, "cam00", seq))
    th = started(w.run)
    assert_survived_and_scored(th, w, t, 32)
    assert "consumer group missing" in caplog.text


def assert_survived_and_scored(th, w, t, n: int) -> None:
    """The worker thread ``th`` is still alive once frames 0..n-1 are scored (or it died first); then stop it."""
    wait_until(lambda: not th.is_alive() or t.counts()[0] >= n, 60, "results of the frames published after the reset")
    alive = th.is_alive()
    w.stop.set()
    joined(th, 30)
    w.shutdown()
    assert alive, "the worker died"
    assert sorted(r.seq for r in parse_results(t.results())) == list(range(n))


class DeletedDuringRead(RedisTransport):
    """Once ``armed``, the next read blocks on partition 0's empty stream (as an idle worker's reads do, for most of
    its time) and the stream is deleted meanwhile; the read then raises what Redis itself answers to that."""

    def __init__(self, *args) -> None:
        super().__init__(*args)
        self.armed, self.deleted = threading.Event(), threading.Event()

    def read(self, partitions, consumer, *args, **kw):
        if not self.armed.is_set():
            return super().read(partitions, consumer, *args, **kw)
        self.armed.clear()
        deleter = started(self._delete_once_blocked)
        try:
            return self.r.xreadgroup(GROUP, consumer, {self.keys.frames(0): ">"}, count=1, block=10_000)
        finally:
            deleter.join(10)

    def _delete_once_blocked(self) -> None:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if any(c["cmd"] == "xreadgroup" and "b" in c["flags"] for c in self.r.client_list()):
                self.r.delete(self.keys.frames(0))
                self.deleted.set()
                return
            time.sleep(0.005)


def test_streams_deleted_while_the_worker_waits_in_a_read(env, server):
    """The same reset, landing while the worker is blocked in XREADGROUP waiting for frames: Redis answers that read
    with UNBLOCKED instead of NOGROUP. The worker must survive it too and score the frames published afterwards."""
    scn = tiny(cameras=1, partitions=1)
    t = DeletedDuringRead(connect(server.url, 0), Keys(f"unblocked{uuid.uuid4().hex[:6]}"), 1)
    w = worker(scn, env, t, lease_ms=2000)
    w.startup()
    th = started(w.run)
    for seq in range(8):
        t.publish(0, frame(env, "cam00", seq))
    wait_until(lambda: t.counts()[0] >= 8, 60, "the first 8 results")
    t.armed.set()
    wait_until(t.deleted.is_set, 30, "the stream to be deleted during a read")
    for seq in range(8, 16):
        t.publish(0, frame(env, "cam00", seq))
    assert_survived_and_scored(th, w, t, 16)


def test_the_delivery_limit_is_inclusive(env, make_transport):
    """max_deliveries=3: a frame on its 3rd delivery is still scored, one on its 4th is dead-lettered as poison
    (it crashed three workers), with the reason."""
    scn = tiny(cameras=2, partitions=2)
    t = make_transport(2)
    t.setup()
    t.publish(0, frame(env, "cam00", 0))
    poison = t.publish(1, frame(env, "cam01", 0))
    for p, crashed in ((0, 2), (1, 3)):      # earlier workers read the frame and died this many times
        t.read([p], "ghost", 10, 1)
        for _ in range(crashed - 1):
            t.claim(p, "ghost")
    t.set_run(done=1)
    w = worker(scn, env, t, max_deliveries=3)
    w.startup()
    w.run(until_done=True)                   # claims both: deliveries 3 and 4
    w.shutdown()
    assert [(r.camera, r.seq) for r in parse_results(t.results())] == [("cam00", 0)]
    dead = [text(d) for d in t.dead_letters()]
    assert len(dead) == 1 and dead[0]["id"] == poison and json.loads(dead[0]["fields"])["camera"] == "cam01"
    assert "delivered 4 times (limit 3)" in dead[0]["reason"]


def test_repeated_redis_outages_lose_and_duplicate_nothing(env, tmp_path):
    """Redis stops and restarts three times while frames flow (AOF keeps every acknowledged write). The worker
    reconnects each time and re-adopts its partitions; every frame is scored exactly once, as without outages."""
    scn = tiny(cameras=3, frames_per_camera=48, partitions=2, rate_fps=12)  # frames flow for 4 s
    reference = outcome(consume(tiny(cameras=3, frames_per_camera=48, partitions=2), env)[0])
    srv = RedisServer(tmp_path / "redis").start()
    keys = Keys(f"outages{uuid.uuid4().hex[:6]}")
    probe = RedisTransport(connect(srv.url), keys, 2)   # the test's own client (it retries)
    w = worker(scn, env, RedisTransport(connect(srv.url, 0), keys, 2), lease_ms=3000)
    publisher = Publisher(scn, RedisTransport(connect(srv.url, 0), keys, 2), env["source"], max_backlog=10**6)

    def results_at_least(n: int) -> bool:
        try:
            return probe.counts()[0] >= n
        except TRANSIENT:
            return False

    try:
        w.startup()
        threads = [started(publisher.run), started(w.run, until_done=True)]
        for k in range(1, 4):
            wait_until(lambda: results_at_least(k * scn.total_frames // 5), 60, f"results before outage {k}")
            srv.restart(down_s=0.5)
        for th in threads:
            joined(th, 120)
        w.shutdown()
        assert w.counters["reconnects"] >= 3
        scored_once(probe, scn)
        assert outcome(probe) == reference
    finally:
        w.stop.set()       # no-ops after a clean run; after a failure, the threads end with the server
        publisher.stop()
        srv.stop()


# -- what a hand-over keeps -------------------------------------------------------------------------------------------
def handed_over(scn, env, before: int) -> MemoryTransport:
    """A worker commits ``before`` batches of 8, reads one more and dies without committing it; an heir takes over
    once the lease lapses and finishes the run."""
    t = MemoryTransport(1)
    Publisher(scn, t, env["source"], max_backlog=10**6).run()
    first = worker(scn, env, t, lease_ms=300, name="first")
    first.startup()
    for _ in range(before):
        first._balance()
        first._process(first._take_batch())
    first._take_batch()
    first.stop.set()                    # heartbeat stops; the lease lapses, nothing is released
    heir = worker(scn, env, t, lease_ms=300, name="heir")
    heir.startup()
    heir.run(until_done=True)           # acquires the partition once the lease lapsed, claims the 8 pending
    heir.shutdown()
    assert heir.counters["claimed"] == 8
    return t


def changes(t) -> list:
    return sorted((e["camera"], e["seq"], e["from"], e["to"]) for e in (Event.from_fields(f).public() for f in t.events()))


@pytest.mark.parametrize("before", [3, 4], ids=["mid-segment", "at-a-shift"])
def test_a_handover_resumes_votes_and_detected_conditions_exactly(env, before):
    """The heir imports each camera's committed vote state and last announced condition, so every result (each
    arm's class and detected domain, the served condition), the events and the final committed state equal those
    of one undisturbed worker. Two cameras, 4 frames each per batch: the heir starts at frame 12 (mid-segment: the
    vote state matters) or 16, where a shift starts (the condition change must be announced once, not missed)."""
    scn = tiny(cameras=2, frames_per_camera=40, partitions=1, arms=["dynbn_vote", "source"])  # dynbn_vote served
    ref, _ = consume(scn, env, batch=8)
    t = handed_over(scn, env, before)
    assert Counter(r.worker for r in parse_results(t.results()))["heir"] == 80 - 8 * before
    assert outcome(t) == outcome(ref)
    assert changes(t) == changes(ref) and changes(ref)
    assert t.load_state(0) == ref.load_state(0)


def from_scratch(scn, env, skip: int) -> MemoryTransport:
    """One fresh worker's run over the scenario's frames less the first ``skip``: every arm in its initial state there."""
    published = MemoryTransport(1)
    Publisher(scn, published, env["source"], max_backlog=10**6).run()
    t = MemoryTransport(1)
    for e in published.read([0], "copy", 10**6, 1)[skip:]:
        t.publish(0, e.fields)
    t.set_run(done=1)
    w = worker(scn, env, t)
    w.startup()
    w.run(until_done=True)
    w.shutdown()
    return t


def test_an_arm_that_cannot_export_its_state_restarts_after_a_handover(env):
    """bn_ema keeps a model-sized moving average per camera that is not committed: the heir starts each camera from
    the source statistics. So from the hand-over on, bn_ema answers as a fresh worker given only those frames (and
    not as the undisturbed run), while dynbn_vote, whose state travels, answers as the undisturbed run."""
    scn = tiny(cameras=2, frames_per_camera=40, partitions=1, arms=["bn_ema", "dynbn_vote"])  # bn_ema served
    before = 3
    ref, _ = consume(scn, env, batch=8)
    t = handed_over(scn, env, before)
    fresh = from_scratch(scn, env, 8 * before)

    def served(transport, only=None) -> dict:  # (camera, seq) -> bn_ema's (the served arm's) class and confidence
        return {(r.camera, r.seq): (r.label, r.confidence) for r in parse_results(transport.results())
                if only is None or r.worker == only}

    by_heir = served(t, only="heir")
    assert len(by_heir) == 80 - 8 * before and by_heir.keys() == served(fresh).keys()

    def flat(answers: dict) -> list:  # class, confidence, class, confidence, ... of the heir's frames
        return [x for k in sorted(by_heir) for x in answers[k]]

    assert flat(by_heir) == pytest.approx(flat(served(fresh)))   # from scratch
    assert flat(by_heir) != pytest.approx(flat(served(ref)))     # so the lost state mattered
    vote = {k: (p["dynbn_vote"], d["dynbn_vote"]) for k, (p, d, _) in outcome(t).items()}
    assert vote == {k: (p["dynbn_vote"], d["dynbn_vote"]) for k, (p, d, _) in outcome(ref).items()}
