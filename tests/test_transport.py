"""Both transports honour one contract: delivery, claims, fenced and idempotent commits."""

from __future__ import annotations

import shutil
import time
import uuid

import pytest
import redis
from redis_server import RedisServer

from streamer.keys import Keys, partition_of
from streamer.redis_transport import RedisTransport, client, connect
from streamer.transport import Commit, MemoryTransport


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    srv = RedisServer(tmp_path_factory.mktemp("redis-transport")).start()
    yield srv
    srv.stop()


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


def test_partition_of_is_stable():
    assert partition_of("cam01", 8) == partition_of("cam01", 8)
    assert {partition_of(f"cam{i}", 4) for i in range(64)} == {0, 1, 2, 3}


def test_redis_urls_with_password_and_tls():
    plain = client("redis://:s3cret@127.0.0.1:6390/2")
    kw = plain.connection_pool.connection_kwargs
    assert kw["password"] == "s3cret" and kw["db"] == 2
    tls = client("rediss://user:pw@example.invalid:6380/0", ca_certs="/tmp/ca.pem")
    assert tls.connection_pool.connection_class.__name__ == "SSLConnection"
    assert tls.connection_pool.connection_kwargs["ssl_ca_certs"] == "/tmp/ca.pem"


def test_trimming_keeps_the_newest_maxlen_entries(server):
    t = RedisTransport(connect(server.url), Keys(f"trim{uuid.uuid4().hex[:6]}"), 1, maxlen=100)
    t.setup()
    ids = [t.publish(0, {"i": str(i)}) for i in range(1000)]
    kept = [e[0].decode() for e in t.r.xrange(t.keys.frames(0))]
    assert 100 <= len(kept) < 1000 and kept[-100:] == ids[-100:]    # `~` trims only old whole nodes


def test_a_full_commit_over_tls_with_a_password(tmp_path):
    if shutil.which("openssl") is None:
        pytest.skip("openssl not installed: cannot make a test certificate")
    srv = RedisServer(tmp_path / "tls", password="s3cret", tls=True)
    try:
        srv.start()
    except RuntimeError:
        pytest.skip("this redis-server was built without TLS")
    try:
        with pytest.raises(redis.AuthenticationError):
            connect(srv.url.replace("s3cret", "wrong"), ca_certs=srv.ca).ping()
        t = RedisTransport(connect(srv.url, ca_certs=srv.ca), Keys("tls"), 1)
        t.setup()
        entry_id = t.publish(0, {"k": "v"})
        assert [e.id for e in t.read([0], "a", 10, 10)] == [entry_id]
        assert t.acquire(0, "tok", 5000) and t.commit(0, "tok", Commit(results=[(entry_id, {"r": "1"})])) == 1
        assert t.counts() == (1, 0)
    finally:
        srv.stop()
