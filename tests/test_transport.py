"""Both transports honour one contract: delivery, claims, fenced and idempotent commits."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter

import pytest
from redis_server import RedisServer

from streamer.keys import Keys, partition_of
from streamer.connection import RedisSetupError, client, connect
from streamer.redis_transport import RedisTransport
from streamer.transport import AlreadyPublished, Commit, MemoryTransport



@pytest.fixture(params=["memory", "redis"])
def transport(request):
    if request.param == "memory":
        t = MemoryTransport(2)
    else:
        srv = request.getfixturevalue("server")
        t = RedisTransport(connect(srv.url), Keys(f"t{uuid.uuid4().hex[:6]}"), 2)
    t.setup()
    yield t
    t.close()


def publish(t, n, partition=0):
    return [t.publish(partition, {"k": str(i)}) for i in range(n)]


def test_read_delivers_each_entry_once_then_backlog_drains(transport):
    ids = publish(transport, 5)
    assert transport.backlog() == (5, 0)
    got = transport.read([0, 1], "a", 3, 10)
    assert [e.id for e in got] == ids[:3] and all(e.deliveries == 1 for e in got)
    assert transport.backlog() == (2, 3)
    assert [e.id for e in transport.read([0], "b", 10, 10)] == ids[3:]
    assert transport.read([0], "a", 10, 10) == []


def test_a_read_takes_nothing_from_a_partition_whose_lease_another_token_holds(transport):
    """A worker whose lease lapsed and was taken over must not take new frames: the new owner claimed the pending
    ones when it took over and would never see them. The same when the frame arrives during a blocking wait."""
    ids = publish(transport, 2, partition=0) + publish(transport, 2, partition=1)
    assert transport.acquire(0, "old", 50) and transport.acquire(1, "mine", 5000)
    time.sleep(0.1)
    assert transport.acquire(0, "new", 5000)  # the old owner's lease lapsed and was taken over
    got = transport.read([0, 1], "old-owner", 10, 10, leases={0: "old", 1: "mine"})
    assert [e.id for e in got] == ids[2:] and transport.backlog([0]) == (2, 0)
    assert transport.read([0], "old-owner", 10, 50, leases={0: "old"}) == []  # waits, takes nothing
    assert [e.id for e in transport.read([0], "new-owner", 10, 10, leases={0: "new"})] == ids[:2]
    later = threading.Timer(0.05, lambda: transport.publish(0, {"k": "late"}))
    later.start()
    assert transport.read([0], "old-owner", 10, 300, leases={0: "old"}) == []  # the frame arrives while it waits
    later.join()
    assert len(transport.read([0], "new-owner", 10, 10, leases={0: "new"})) == 1


def test_commit_is_fenced_by_the_lease_and_idempotent(transport):
    publish(transport, 2)
    entries = transport.read([0], "a", 10, 10)
    assert transport.acquire(0, "tok-a", 5000) and not transport.acquire(0, "tok-b", 5000)
    c = Commit(results=[(e.id, {"r": e.id}) for e in entries], state={"cam": "{}"})
    assert transport.commit(0, "tok-b", c) == -1            # not the owner: nothing written
    assert transport.counts() == (0, 0)
    assert transport.commit(0, "tok-a", c) == 2
    assert transport.commit(0, "tok-a", c) == 0             # a retried commit writes nothing twice
    assert transport.counts() == (2, 0) and transport.backlog() == (0, 0)
    assert transport.load_state(0) == {"cam": "{}"}


def test_claim_moves_pending_entries_and_counts_deliveries(transport):
    ids = publish(transport, 3, partition=1)
    transport.read([1], "dead-worker", 10, 10)
    claimed = transport.claim(1, "heir")
    assert [e.id for e in claimed] == ids and all(e.deliveries == 2 for e in claimed)
    assert [e.deliveries for e in transport.claim(1, "heir")] == [3, 3, 3]
    assert transport.acquire(1, "t", 5000)
    assert transport.commit(1, "t", Commit(dead=[(ids[0], {"reason": "x"})])) == 1
    assert transport.counts() == (0, 1) and transport.backlog() == (0, 2)


def test_leases_expire_renew_and_release(transport):
    assert transport.acquire(0, "a", 300)
    assert transport.renew([0, 1], "a", 300) == {0}
    transport.release(0, "b")                                # not the owner: no effect
    assert not transport.acquire(0, "b", 300)
    time.sleep(0.45)
    assert transport.acquire(0, "b", 300)                    # a's lease lapsed
    transport.release(0, "b")
    assert transport.acquire(0, "c", 300)


def test_heartbeat_counts_live_workers(transport):
    assert transport.heartbeat("w1", 300) == 1
    assert transport.heartbeat("w2", 300) == 2
    time.sleep(0.4)
    assert transport.heartbeat("w2", 300) == 1               # w1 stopped beating
    transport.leave("w2")
    assert transport.heartbeat("w3", 300) == 1


def test_run_hash_and_result_scan(transport):
    transport.set_run(published=3, done=1)
    assert transport.get_run() == {"published": "3", "done": "1"}
    publish(transport, 3)
    entries = transport.read([0], "a", 10, 10)
    transport.acquire(0, "t", 5000)
    transport.commit(0, "t", Commit(results=[(e.id, {"n": str(i)}) for i, e in enumerate(entries)]))
    got = [{(k.decode() if isinstance(k, bytes) else k): (v.decode() if isinstance(v, bytes) else v)
            for k, v in f.items()} for f in transport.results()]
    assert got == [{"n": "0"}, {"n": "1"}, {"n": "2"}]


def test_partition_of_is_crc32_so_every_process_agrees():
    """Publishers and workers find a camera's partition without asking anyone, so every process must compute the
    same one: crc32 of the camera id (known values), not Python's hash, which is salted per process."""
    assert partition_of("123456789", 2**32) == 0xCBF43926   # crc32's published check value
    assert [partition_of(cam, 8) for cam in ("cam00", "cam01", "lobby")] == [2, 4, 7]
    here = [partition_of(f"cam{i}", 8) for i in range(32)]
    probe = "from streamer.keys import partition_of; print([partition_of(f'cam{i}', 8) for i in range(32)])"
    other = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=60,
                           env={**os.environ, "PYTHONHASHSEED": "12345"})
    assert other.stdout.strip() == str(here)


def test_partition_of_is_in_range_and_spreads_cameras():
    """Every camera lands in one of the partitions, and cameras spread over all of them (no idle workers)."""
    for partitions in (1, 3, 8, 1024):
        assert all(0 <= partition_of(f"cam{i}", partitions) < partitions for i in range(256))
    per_partition = Counter(partition_of(f"cam{i}", 4) for i in range(64))
    assert set(per_partition) == {0, 1, 2, 3} and max(per_partition.values()) <= 2 * min(per_partition.values())


def test_redis_urls_with_password_and_tls():
    plain = client("redis://:s3cret@127.0.0.1:6390/2")
    kw = plain.connection_pool.connection_kwargs
    assert kw["password"] == "s3cret" and kw["db"] == 2
    tls = client("rediss://user:pw@example.invalid:6380/0", ca_certs="/tmp/ca.pem")
    assert tls.connection_pool.connection_class.__name__ == "SSLConnection"
    assert tls.connection_pool.connection_kwargs["ssl_ca_certs"] == "/tmp/ca.pem"


def frame(camera, seq, size=10):
    return {"camera": camera, "seq": str(seq), "payload": b"x" * size}


def test_a_publish_is_recognised_by_the_frames_own_id(transport):
    """A retry of a frame that landed writes nothing; the same frame from another publisher is refused."""
    assert transport.publish(0, frame("c", 0), "run-a") is not None
    assert transport.publish(0, frame("c", 0), "run-a") is None          # a retry whose first try landed
    with pytest.raises(AlreadyPublished, match="camera c frame 0 is already in partition 0"):
        transport.publish(0, frame("c", 0), "run-b")                      # an earlier run under the prefix
    assert transport.publish(0, frame("c", 1), "run-a") is not None
    assert transport.publish(0, {"no": "camera"}) is not None             # foreign entries go in as they are
    assert transport.backlog() == (3, 0) and transport.last_seqs() == {"c": 1}


def test_a_foreign_entry_with_a_future_id_blocks_nothing(server):
    """Finding: one entry with an id in the future made every later XADD with an explicit id fail, and the
    simulator counted those frames as published. Now ids are Redis's own and nothing is dropped."""
    t = RedisTransport(connect(server.url), Keys(f"fut{uuid.uuid4().hex[:6]}"), 1)
    t.setup()
    t.r.xadd(t.keys.frames(0), {"foreign": "1"}, id=f"{int(time.time() * 1000) + 10**9}-0")
    ids = [t.publish(0, frame("c", i)) for i in range(50)]
    assert all(ids) and len(set(ids)) == 50 and t.backlog() == (51, 0)


def test_commits_delete_handled_frames_so_the_backlog_is_what_is_left(transport):
    """Acked frames leave the stream (memory stays flat) and the backlog counts unread + pending exactly."""
    for i in range(10):
        transport.publish(0, frame("c", i))
    got = transport.read([0], "a", 4, 10)
    assert transport.acquire(0, "tok", 5000)
    assert transport.commit(0, "tok", Commit(results=[(e.id, {"r": "1"}) for e in got[:2]])) == 2
    assert transport.backlog() == (6, 2)
    assert sorted(s for _, s in transport.queued()) == list(range(2, 10))
    if isinstance(transport, RedisTransport):
        assert transport.r.xlen(transport.keys.frames(0)) == 8       # the two handled frames are gone


def test_reads_are_bounded_in_bytes_and_oversized_entries_come_without_fields(transport):
    """Finding: the size check ran after a read of 64 entries, so 64 x 8 MB were held at once."""
    for i, size in enumerate([100, 100, 5000, 100, 100]):
        transport.publish(0, frame("c", i, size))
    first = transport.read([0], "a", 10, 10, max_bytes=150, max_entry=1000)
    assert [int(e.fields[b"seq" if b"seq" in e.fields else "seq"]) for e in first] == [0, 1]  # stops once over 150
    big = transport.read([0], "a", 1, 10, max_bytes=150, max_entry=1000)
    assert len(big) == 1 and big[0].oversized and big[0].fields == {} and big[0].size > 5000
    assert len(transport.read([0], "a", 10, 10, max_bytes=10**6, max_entry=1000)) == 2
    assert transport.backlog() == (0, 5)
    claimed = transport.claim(0, "b", max_entry=1000)
    assert [e.oversized for e in claimed] == [False, False, True, False, False]


def test_age_retention_deletes_results_and_events_older_than_it(server):
    """``retention_s``: a commit also deletes results, dead letters and events older than the retention."""
    t = RedisTransport(connect(server.url), Keys(f"age{uuid.uuid4().hex[:6]}"), 1, retention_s=0.5)
    t.setup()
    assert t.acquire(0, "tok", 10_000)

    def handle(seqs):
        for i in seqs:
            t.publish(0, frame("c", i))
        got = t.read([0], "a", 10, 10)
        commit = Commit(results=[(e.id, {"seq": e.fields[b"seq"].decode()}) for e in got], events=[{"camera": "c"}])
        assert t.commit(0, "tok", commit) == len(seqs)
    handle(range(3))
    time.sleep(0.8)
    handle(range(3, 5))
    assert [f[b"seq"] for f in t.results()] == [b"3", b"4"] and len(t.events()) == 1


def test_a_full_commit_over_tls_with_a_password(tmp_path):
    if shutil.which("openssl") is None:
        pytest.skip("openssl not installed: cannot make a test certificate")
    srv = RedisServer(tmp_path / "tls", password="s3cret", tls=True)
    try:
        srv.start()
    except RuntimeError:
        pytest.skip("this redis-server was built without TLS")
    try:
        with pytest.raises(RedisSetupError, match="wrong password"):
            connect(srv.url.replace("s3cret", "wrong"), ca_certs=srv.ca).ping()
        t = RedisTransport(connect(srv.url, ca_certs=srv.ca), Keys("tls"), 1)
        t.setup()
        entry_id = t.publish(0, {"k": "v"})
        assert [e.id for e in t.read([0], "a", 10, 10)] == [entry_id]
        assert t.acquire(0, "tok", 5000) and t.commit(0, "tok", Commit(results=[(entry_id, {"r": "1"})])) == 1
        assert t.counts() == (1, 0)
    finally:
        srv.stop()
