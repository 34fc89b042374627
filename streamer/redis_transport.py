"""Redis Streams backend of ``Transport``: XADD/XREADGROUP/XAUTOCLAIM and Lua for atomic steps.

Works against one Redis server or a Redis Cluster (``streamer.connection.connect`` asks the server which): every
key one command or script touches shares a partition's hash tag (``streamer.keys``), and in
a cluster a read over several partitions becomes one call per partition.

Frame streams hold only what no worker has acknowledged yet: a commit deletes the frames it
acks, nothing is ever trimmed, and a stream's length is its backlog (unread + pending), the
figure publishers wait on. A publish is one Lua script: it appends the frame unless the
partition's ``published`` hash (camera -> last seq and its publisher) says this camera's
frame ``seq`` is already there; a retry after a lost reply is recognised by the frame's own
id and never written twice, and a frame of another publisher raises ``AlreadyPublished``.

Reads are bounded in bytes: a Lua script takes entries one at a time until ``count`` or
``max_bytes`` is reached, and returns an entry larger than ``max_entry`` as its id and size
only (the worker dead-letters it without holding it). Only when nothing is waiting does the
worker block, on one partition at a time for a short slice, for a single entry.

Commits run as one Lua script (its argument one JSON document): check the lease token,
then per entry ``XACK`` and, only when that ack removed a pending entry, ``XDEL`` it and
``XADD`` its result (or dead letter); then the camera events and states of the batch.
Results, dead letters and events streams keep about ``retention`` entries per partition
(0: all) and, with ``retention_s``, only entries younger than that (Redis's clock). Atomic (all or nothing) and idempotent (a retry after a lost reply writes nothing twice).
"""

from __future__ import annotations

import json
import time

import redis
from redis.cluster import RedisCluster

from .keys import GROUP, Keys
from .transport import DEFAULT_MAX_ENTRY, DEFAULT_READ_BYTES, AlreadyPublished, Entry, Transport, frame_key


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
      redis.call('XDEL', KEYS[1], item[1])
      add(KEYS[target], item[2])
      written = written + 1
    end
  end
end
if written > 0 then  -- a retried commit (its first reply lost) writes its events once
  for _, fields in ipairs(c.events) do add(KEYS[6], fields) end
end
for camera, state in pairs(c.state) do redis.call('HSET', KEYS[5], camera, state) end
local age = tonumber(ARGV[5])
if age > 0 then  -- and entries older than the age retention go (exactly: a slow events stream too)
  local t = redis.call('TIME')
  local oldest = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) - age
  for _, k in ipairs({KEYS[2], KEYS[3], KEYS[6]}) do redis.call('XTRIM', k, 'MINID', oldest) end
end
return written
"""
_PUBLISH = """
if ARGV[1] ~= '' then
  local last = redis.call('HGET', KEYS[2], ARGV[1])
  if last then
    local space = string.find(last, ' ')
    if tonumber(ARGV[2]) <= tonumber(string.sub(last, 1, space - 1)) then return {0, string.sub(last, space + 1)} end
  end
  redis.call('HSET', KEYS[2], ARGV[1], ARGV[2] .. ' ' .. ARGV[3])
end
return {1, redis.call('XADD', KEYS[1], '*', unpack(ARGV, 4))}
"""
_READ = """
local group, consumer, count = ARGV[1], ARGV[2], tonumber(ARGV[3])
local max_bytes, max_entry = tonumber(ARGV[4]), tonumber(ARGV[5])
local n = #KEYS / 2  -- the frame streams, then their lease keys
local out, bytes = {}, 0
for i = 1, n do
  local token = ARGV[5 + i]  -- '' reads without a lease
  if token == '' or redis.call('GET', KEYS[n + i]) == token then
    while #out < count and bytes < max_bytes do
      local r = redis.call('XREADGROUP', 'GROUP', group, consumer, 'COUNT', 1, 'STREAMS', KEYS[i], '>')
      if not r then break end
      local e = r[1][2][1]
      local size = 0
      for _, v in ipairs(e[2]) do size = size + #v end
      if size > max_entry then out[#out + 1] = {i, e[1], size}
      else out[#out + 1] = {i, e[1], size, e[2]}; bytes = bytes + size end
    end
  end
end
return out
"""
_CLAIM = """
local r = redis.call('XAUTOCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, ARGV[3], 'COUNT', 100)
local out, max_entry = {}, tonumber(ARGV[4])
for _, e in ipairs(r[2]) do
  if e then
    local size = 0
    for _, v in ipairs(e[2]) do size = size + #v end
    if size > max_entry then out[#out + 1] = {e[1], size} else out[#out + 1] = {e[1], size, e[2]} end
  end
end
return {r[1], out}
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


def _s(v) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


def _flat(fields: dict) -> list:
    """XADD's field-value list: k1, v1, k2, v2, ..."""
    return [x for kv in fields.items() for x in kv]


class RedisTransport(Transport):
    """See the module docstring."""

    name = "redis"

    def __init__(self, client: redis.Redis | RedisCluster, keys: Keys, partitions: int, retention: int = 0,
                 retention_s: float = 0.0) -> None:
        super().__init__(partitions)
        self.r, self.keys, self.retention, self.retention_s = client, keys, retention, retention_s
        self.cluster = isinstance(client, RedisCluster)
        self._publish = client.register_script(_PUBLISH)
        self._read_script = client.register_script(_READ)
        self._claim_script = client.register_script(_CLAIM)
        self._commit = client.register_script(_COMMIT)
        self._heartbeat = client.register_script(_HEARTBEAT)
        self._renew = client.register_script(_RENEW)
        self._release = client.register_script(_RELEASE)
        self._turn = 0

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
        return sum(self.r.delete(k) for k in keys)  # one at a time: in a cluster they live in different slots

    def publish(self, partition, fields, publisher=""):
        camera, seq = frame_key(fields)
        keys = [self.keys.frames(partition), self.keys.published(partition)]
        known = camera is not None and seq is not None
        args = [camera if known else "", seq if known else -1, publisher or "-", *_flat(fields)]
        appended, value = self._publish(keys=keys, args=args)
        if appended:
            return _s(value)
        if _s(value) != (publisher or "-"):
            raise AlreadyPublished(camera, seq, partition)
        return None  # an earlier try of this publisher landed; its reply was lost

    def last_seqs(self):
        out = {}
        for p in range(self.partitions):
            out.update({_s(k): int(_s(v).split(" ")[0]) for k, v in self.r.hgetall(self.keys.published(p)).items()})
        return out

    def backlog(self, partitions=None):
        undelivered = pending = 0
        for p in range(self.partitions) if partitions is None else partitions:
            stream = self.keys.frames(p)
            length = int(self.r.xlen(stream))  # acked frames are deleted: what is left is unread or pending
            waiting = 0
            if length:
                try:
                    waiting = int(self.r.xpending(stream, GROUP)["pending"])
                except redis.ResponseError as exc:
                    if "NOGROUP" not in str(exc):
                        raise
            pending += waiting
            undelivered += max(0, length - waiting)  # < 0 only if someone trimmed pending entries away
        return undelivered, pending

    def queued(self):
        out = []
        for p in range(self.partitions):
            for _, f in self._scan(self.keys.frames(p)):
                out.append(frame_key(f))
        return out

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

    def claim(self, partition, consumer, max_entry=DEFAULT_MAX_ENTRY):
        stream, out, cursor = self.keys.frames(partition), [], "0-0"
        while True:
            cursor, rows = self._claim_script(keys=[stream], args=[GROUP, consumer, cursor, max_entry])
            for entry_id, size, *fields in rows:
                flat = fields[0] if fields else []
                out.append(Entry(partition, _s(entry_id), dict(zip(flat[::2], flat[1::2])), size=int(size),
                                 oversized=not fields))
            if _s(cursor) == "0-0":
                break
        if out:
            info = self.r.xpending_range(stream, GROUP, out[0].id, out[-1].id, len(out) + 100, consumername=consumer)
            counts = {_s(row["message_id"]): int(row["times_delivered"]) for row in info}
            for e in out:
                e.deliveries = counts.get(e.id, 1)
        return out

    def read(self, partitions, consumer, count, block_ms, max_bytes=DEFAULT_READ_BYTES, max_entry=DEFAULT_MAX_ENTRY,
             leases=None):
        """Entries waiting now (bounded by count and bytes), taken by one script that checks each partition's lease
        first; when there are none, wait on one partition at a time, in turns of at most 20 ms, until ``block_ms``
        has passed. The wait is an ``XREAD`` outside the group, which takes nothing: every entry is taken by the
        script, so a lease lost during the wait is seen before any entry is taken (a blocking ``XREADGROUP``
        would take it unchecked). A frame published during a wait is taken at most 20 ms after it arrived."""
        if not partitions:
            return []
        self._turn += 1
        order = partitions[self._turn % len(partitions):] + partitions[:self._turn % len(partitions)]  # fairness
        deadline = time.monotonic() + block_ms / 1000
        while True:
            out = self._read_now(order, consumer, count, max_bytes, max_entry, leases)
            left = int((deadline - time.monotonic()) * 1000)
            if out or left <= 0:
                return out
            p = order[self._turn % len(order)]
            self._turn += 1
            self.r.xread({self.keys.frames(p): "$"}, count=1, block=min(left, 20))  # wakes on a new entry

    def _read_now(self, order, consumer, count, max_bytes, max_entry, leases):
        groups = [[p] for p in order] if self.cluster else [order]  # a script's keys must share a slot
        out = []
        for parts in groups:
            if len(out) >= count or sum(e.size for e in out) >= max_bytes:
                break
            tokens = ["" if leases is None else leases[p] for p in parts]
            rows = self._read_script(keys=[self.keys.frames(p) for p in parts] + [self.keys.lease(p) for p in parts],
                                     args=[GROUP, consumer, count - len(out), max_bytes - sum(e.size for e in out),
                                           max_entry, *tokens])
            for row in rows:
                p, entry_id, size = parts[int(row[0]) - 1], _s(row[1]), int(row[2])
                fields = dict(zip(row[3][::2], row[3][1::2])) if len(row) > 3 else {}
                out.append(Entry(p, entry_id, fields, size=size, oversized=len(row) == 3))
        return out

    def commit(self, partition, token, commit):
        # one JSON argument: packing thousands of separate ARGV strings costs more than the commit
        blob = json.dumps({"results": [[i, _flat(f)] for i, f in commit.results],
                           "dead": [[i, _flat(f)] for i, f in commit.dead],
                           "events": [_flat(f) for f in commit.events], "state": commit.state or {}})
        keys = [self.keys.frames(partition), self.keys.results(partition), self.keys.dead(partition),
                self.keys.lease(partition), self.keys.state(partition), self.keys.events(partition)]
        return int(self._commit(keys=keys, args=[GROUP, token, blob, self.retention, int(self.retention_s * 1000)]))

    def load_state(self, partition):
        return {_s(k): _s(v) for k, v in self.r.hgetall(self.keys.state(partition)).items()}

    def set_run(self, fresh=False, **fields):
        if fresh:
            self.r.delete(self.keys.run)
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
