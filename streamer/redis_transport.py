"""Redis Streams backend of ``Transport``: XADD/XREADGROUP/XAUTOCLAIM and Lua for atomic steps.

Works against one Redis server or a Redis Cluster (``connect`` asks the server which): every
key one command or script touches shares a partition's hash tag (``streamer.keys``), and in
a cluster a read over several partitions becomes one XREADGROUP per partition.

Frames live in ``partitions`` streams with ``MAXLEN ~`` trimming. Approximate trimming
only ever removes whole old macro-nodes, so the newest ``maxlen`` entries are never
trimmed; the publisher keeps the group's backlog (undelivered + pending) under
``max_backlog`` < ``maxlen``, so no entry is trimmed before it is acked (the default 50,000
entries is ~170 MB of 32x32 raw frames at worst, and 20x the default backlog).

Commits run as one Lua script (its argument one JSON document): check the lease token,
then per entry ``XACK`` and, only when that ack removed a pending entry, ``XADD`` its
result (or dead letter); then the camera events and states of the batch. Results, dead
letters and events streams keep about ``retention`` entries per partition (0: all).
Atomic (all or nothing) and idempotent (a retry after a lost reply writes nothing twice).
"""

from __future__ import annotations

import json
import time

import redis
from redis.backoff import ExponentialBackoff
from redis.cluster import RedisCluster
from redis.retry import Retry

from .keys import GROUP, Keys
from .transport import Entry, Transport

# what a lost or slow Redis connection raises: retried by the worker, the publisher and the waits
TRANSIENT = (redis.ConnectionError, redis.TimeoutError, ConnectionError, TimeoutError)

_COMMIT = """
if redis.call('GET', KEYS[4]) ~= ARGV[2] then return -1 end
local c = cjson.decode(ARGV[3])
local keep = tonumber(ARGV[4])
local function add(key, fields)
  if keep > 0 then redis.call('XADD', key, 'MAXLEN', '~', keep, '*', unpack(fields))
  else redis.call('XADD', key, '*', unpack(fields)) end
end
local written = 0
for target, items in pairs({[2] = c.results, [3] = c.dead}) do
  for _, item in ipairs(items) do
    if redis.call('XACK', KEYS[1], ARGV[1], item[1]) == 1 then
      add(KEYS[target], item[2])
      written = written + 1
    end
  end
end
if written > 0 then  -- a retried commit (its first reply lost) writes its events once
  for _, fields in ipairs(c.events) do add(KEYS[6], fields) end
end
for camera, state in pairs(c.state) do redis.call('HSET', KEYS[5], camera, state) end
return written
"""
_HEARTBEAT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZADD', KEYS[1], now, ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - tonumber(ARGV[2]))
return redis.call('ZCARD', KEYS[1])
"""
_RENEW = """
local owned = {}
for i, key in ipairs(KEYS) do
  if redis.call('GET', key) == ARGV[1] then redis.call('PEXPIRE', key, ARGV[2]); owned[#owned + 1] = i end
end
return owned
"""
_RELEASE = "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0"


def client(url: str, retries: int = 3, ca_certs: str | None = None) -> redis.Redis:
    """A client for one Redis server at a ``redis://`` or ``rediss://`` (TLS) URL, password included in
    the URL; connects on first use. ``retries`` > 0 lets redis-py retry with exponential backoff; the
    worker passes 0 and retries itself, because a silently retried XREADGROUP may have delivered
    entries whose reply was lost (the worker re-claims its pending entries after any error)."""
    return redis.Redis.from_url(url, health_check_interval=15, retry_on_error=[redis.ConnectionError, redis.TimeoutError],
                                **_options(retries, url, ca_certs))


def _options(retries: int, url: str, ca_certs: str | None) -> dict:
    extra = {"ssl_ca_certs": ca_certs} if ca_certs and url.startswith("rediss://") else {}
    return dict(socket_timeout=15, socket_connect_timeout=5, retry=Retry(ExponentialBackoff(cap=2.0, base=0.05), retries),
                **extra)


def connect(url: str, retries: int = 3, ca_certs: str | None = None) -> redis.Redis | RedisCluster:
    """``client(url)``, or a ``RedisCluster`` client when the server is a cluster node (any node's URL will do).

    Asks the server (``INFO cluster``), so the same URL form serves both; raises one of
    ``TRANSIENT`` while the server does not answer (callers retry).
    """
    plain = client(url, retries, ca_certs)
    if not int(plain.info("cluster").get("cluster_enabled", 0)):
        return plain
    plain.close()
    return RedisCluster.from_url(url, **_options(retries, url, ca_certs))


def _s(v) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


def _flat(fields: dict) -> list:
    """XADD's field-value list: k1, v1, k2, v2, ..."""
    return [x for kv in fields.items() for x in kv]


class RedisTransport(Transport):
    """See the module docstring."""

    name = "redis"

    def __init__(self, client: redis.Redis | RedisCluster, keys: Keys, partitions: int, maxlen: int = 50_000,
                 retention: int = 0) -> None:
        super().__init__(partitions)
        self.r, self.keys, self.maxlen, self.retention = client, keys, maxlen, retention
        self.cluster = isinstance(client, RedisCluster)
        self._commit = client.register_script(_COMMIT)
        self._heartbeat = client.register_script(_HEARTBEAT)
        self._renew = client.register_script(_RENEW)
        self._release = client.register_script(_RELEASE)

    def setup(self):
        for p in range(self.partitions):
            try:
                self.r.xgroup_create(self.keys.frames(p), GROUP, id="0", mkstream=True)
            except redis.ResponseError as exc:
                if "BUSYGROUP" not in str(exc):
                    raise

    def reset(self) -> int:
        """Delete every key of this run's prefix (a fresh run on a reused Redis); returns how many."""
        keys = list(self.r.scan_iter(match=f"{self.keys.prefix}:*", count=1000))
        return self.r.delete(*keys) if keys else 0

    def last_id(self) -> tuple[int, int]:
        """The largest entry id over all frame streams, as (ms, seq); (0, 0) when empty."""
        best = (0, 0)
        for p in range(self.partitions):
            try:
                last = _s(self.r.xinfo_stream(self.keys.frames(p))["last-generated-id"])
            except redis.ResponseError:
                continue
            ms, seq = last.split("-")
            best = max(best, (int(ms), int(seq)))
        return best

    def publish(self, partition, fields, entry_id=None):
        return _s(self.r.xadd(self.keys.frames(partition), fields, id=entry_id or "*",
                              maxlen=self.maxlen, approximate=True))

    def backlog(self, partitions=None):
        undelivered = pending = 0
        for p in range(self.partitions) if partitions is None else partitions:
            try:
                groups = self.r.xinfo_groups(self.keys.frames(p))
            except redis.ResponseError as exc:
                if "no such key" not in str(exc).lower():
                    raise
                continue  # nothing published there yet
            group = next((g for g in groups if _s(g["name"]) == GROUP), None)
            if group is None:  # no group yet: everything is undelivered
                undelivered += int(self.r.xlen(self.keys.frames(p)))
                continue
            pending += int(group["pending"])
            lag = group.get("lag")
            if lag is None:  # only with tombstones or SETID; count explicitly then
                lag = len(self.r.xrange(self.keys.frames(p), "(" + _s(group["last-delivered-id"]), "+"))
            undelivered += int(lag)
        return undelivered, pending

    def heartbeat(self, worker, ttl_ms):
        return int(self._heartbeat(keys=[self.keys.members], args=[worker, ttl_ms]))

    def leave(self, worker):
        self.r.zrem(self.keys.members, worker)

    def acquire(self, partition, token, ttl_ms):
        return bool(self.r.set(self.keys.lease(partition), token, nx=True, px=ttl_ms))

    def renew(self, partitions, token, ttl_ms):
        if not partitions:
            return set()
        owned = self._renew(keys=[self.keys.lease(p) for p in partitions], args=[token, ttl_ms])
        return {partitions[int(i) - 1] for i in owned}

    def release(self, partition, token):
        self._release(keys=[self.keys.lease(partition)], args=[token])

    def claim(self, partition, consumer):
        stream, out, cursor = self.keys.frames(partition), [], "0-0"
        while True:
            reply = self.r.xautoclaim(stream, GROUP, consumer, min_idle_time=0, start_id=cursor, count=500)
            cursor, entries = _s(reply[0]), reply[1]
            out += [Entry(partition, _s(i), f) for i, f in entries if f is not None]
            if cursor == "0-0":
                break
        if out:
            info = self.r.xpending_range(stream, GROUP, out[0].id, out[-1].id, len(out) + 100, consumername=consumer)
            counts = {_s(row["message_id"]): int(row["times_delivered"]) for row in info}
            for e in out:
                e.deliveries = counts.get(e.id, 1)
        return out

    def read(self, partitions, consumer, count, block_ms):
        if not partitions:
            return []
        if self.cluster:
            return self._read_each(partitions, consumer, count, block_ms)
        return self._read(partitions, consumer, count, block_ms)

    def _read(self, partitions, consumer, count, block_ms):
        streams = {self.keys.frames(p): ">" for p in partitions}
        index = {self.keys.frames(p): p for p in partitions}
        reply = self.r.xreadgroup(GROUP, consumer, streams, count=count, block=max(1, block_ms)) or []
        return [Entry(index[_s(name)], _s(i), f) for name, entries in reply for i, f in entries if f is not None]

    def _read_each(self, partitions, consumer, count, block_ms):
        """Cluster: one XREADGROUP per partition (their streams live in different slots); while all are
        empty, block on each in turn for a short slice, so no partition waits long for its turn."""
        deadline = time.monotonic() + block_ms / 1000
        turn = 0
        while True:
            out = []
            for p in partitions:
                reply = self.r.xreadgroup(GROUP, consumer, {self.keys.frames(p): ">"}, count=count) or []
                out += [Entry(p, _s(i), f) for _, entries in reply for i, f in entries if f is not None]
            left = int((deadline - time.monotonic()) * 1000)
            if out or left <= 0:
                return out
            out = self._read([partitions[turn % len(partitions)]], consumer, count, min(left, 20))
            if out:
                return out
            turn += 1

    def commit(self, partition, token, commit):
        # one JSON argument: packing thousands of separate ARGV strings costs more than the commit
        blob = json.dumps({"results": [[i, _flat(f)] for i, f in commit.results],
                           "dead": [[i, _flat(f)] for i, f in commit.dead],
                           "events": [_flat(f) for f in commit.events], "state": commit.state or {}})
        keys = [self.keys.frames(partition), self.keys.results(partition), self.keys.dead(partition),
                self.keys.lease(partition), self.keys.state(partition), self.keys.events(partition)]
        return int(self._commit(keys=keys, args=[GROUP, token, blob, self.retention]))

    def load_state(self, partition):
        return {_s(k): _s(v) for k, v in self.r.hgetall(self.keys.state(partition)).items()}

    def set_run(self, **fields):
        self.r.hset(self.keys.run, mapping={k: str(v) for k, v in fields.items()})

    def get_run(self):
        return {_s(k): _s(v) for k, v in self.r.hgetall(self.keys.run).items()}

    def results(self):
        return [f for p in range(self.partitions) for _, f in self._scan(self.keys.results(p))]

    def dead_letters(self):
        return [f for p in range(self.partitions) for _, f in self._scan(self.keys.dead(p))]

    def events(self):
        return [f for p in range(self.partitions) for _, f in self._scan(self.keys.events(p))]

    def _scan(self, stream: str, page: int = 2000):
        cursor = "-"
        while True:
            batch = self.r.xrange(stream, cursor, "+", count=page)
            yield from batch
            if len(batch) < page:
                return
            cursor = "(" + _s(batch[-1][0])

    def counts(self):
        results = sum(int(self.r.xlen(self.keys.results(p))) for p in range(self.partitions))
        return results, sum(int(self.r.xlen(self.keys.dead(p))) for p in range(self.partitions))

    def close(self):
        self.r.close()
