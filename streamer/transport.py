"""Transport: the stream operations the simulator, worker and report need, in two backends.

``RedisTransport`` (streamer.redis_transport) uses Redis Streams with one consumer group;
``MemoryTransport`` here keeps the same semantics in one process (the embedded run and
network-free tests): per-partition streams, a consumer group with pending entries and
delivery counts, partition leases with expiry, and an atomic ``commit`` that acks frames,
writes their results or dead letters, and saves per-camera state together, or not at all
when the caller no longer holds the partition's lease.
"""

from __future__ import annotations

import itertools
import threading
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field


@dataclass
class Entry:
    """A frame-stream entry as delivered to a consumer."""

    partition: int
    id: str
    fields: dict
    deliveries: int = 1


@dataclass
class Commit:
    """What one atomic commit writes for one partition: (frame id, fields) pairs, camera events and states."""

    results: list[tuple[str, dict]] = field(default_factory=list)
    dead: list[tuple[str, dict]] = field(default_factory=list)
    events: list[dict] = field(default_factory=list)
    state: dict[str, str] = field(default_factory=dict)


class Transport(ABC):
    """Operations shared by both backends (see the module docstring)."""

    name = "abstract"

    def __init__(self, partitions: int) -> None:
        if partitions < 1:
            raise ValueError(f"partitions must be >= 1, got {partitions}")
        self.partitions = partitions

    def setup(self) -> None:
        """Create streams and the consumer group if missing (idempotent)."""

    @abstractmethod
    def publish(self, partition: int, fields: dict, entry_id: str | None = None) -> str: ...

    @abstractmethod
    def backlog(self, partitions: list[int] | None = None) -> tuple[int, int]:
        """(undelivered, pending) entries summed over the given partitions (default: all)."""

    @abstractmethod
    def heartbeat(self, worker: str, ttl_ms: int) -> int:
        """Mark a worker alive; returns the number of live workers."""

    @abstractmethod
    def leave(self, worker: str) -> None: ...

    @abstractmethod
    def acquire(self, partition: int, token: str, ttl_ms: int) -> bool: ...

    @abstractmethod
    def renew(self, partitions: list[int], token: str, ttl_ms: int) -> set[int]:
        """Extend the leases still held; returns the partitions still owned."""

    @abstractmethod
    def release(self, partition: int, token: str) -> None: ...

    @abstractmethod
    def claim(self, partition: int, consumer: str) -> list[Entry]:
        """Move every pending entry of a partition to ``consumer`` (counts a delivery), oldest first."""

    @abstractmethod
    def read(self, partitions: list[int], consumer: str, count: int, block_ms: int) -> list[Entry]:
        """New entries (never delivered before) from the given partitions, at most ``count`` per partition."""

    @abstractmethod
    def commit(self, partition: int, token: str, commit: Commit) -> int:
        """Atomically ack + write results/dead letters + save state; -1 when the lease is lost.

        Returns how many entries were newly acked; an entry acked before (a retried commit)
        writes nothing, so retrying after an ambiguous failure never duplicates a result.
        """

    @abstractmethod
    def load_state(self, partition: int) -> dict[str, str]: ...

    @abstractmethod
    def set_run(self, **fields) -> None: ...

    @abstractmethod
    def get_run(self) -> dict[str, str]: ...

    @abstractmethod
    def results(self) -> list[dict]: ...

    @abstractmethod
    def dead_letters(self) -> list[dict]: ...

    @abstractmethod
    def events(self) -> list[dict]:
        """Every condition-change event written so far."""

    @abstractmethod
    def counts(self) -> tuple[int, int]:
        """(result entries, dead letters) written so far."""

    def close(self) -> None:
        """Release connections (no-op in memory)."""


@dataclass
class _Pending:
    consumer: str
    deliveries: int


class MemoryTransport(Transport):
    """In-process streams with consumer-group semantics, thread-safe."""

    name = "memory"

    def __init__(self, partitions: int = 1) -> None:
        super().__init__(partitions)
        self._cond = threading.Condition()
        self._streams: list[list[tuple[str, dict]]] = [[] for _ in range(partitions)]
        self._cursor = [0] * partitions          # index of the next undelivered entry
        self._pending: list[dict[str, _Pending]] = [{} for _ in range(partitions)]
        self._index: list[dict[str, int]] = [{} for _ in range(partitions)]
        self._leases: dict[int, tuple[str, float]] = {}
        self._members: dict[str, float] = {}
        self._state: list[dict[str, str]] = [{} for _ in range(partitions)]
        self._results: list[dict] = []
        self._dead: list[dict] = []
        self._events: list[dict] = []
        self._run: dict[str, str] = {}
        self._ids = itertools.count(1)

    def publish(self, partition, fields, entry_id=None):
        with self._cond:
            entry_id = entry_id or f"{next(self._ids)}-0"
            self._index[partition][entry_id] = len(self._streams[partition])
            self._streams[partition].append((entry_id, dict(fields)))
            self._cond.notify_all()
            return entry_id

    def backlog(self, partitions=None):
        with self._cond:
            parts = range(self.partitions) if partitions is None else partitions
            undelivered = sum(len(self._streams[p]) - self._cursor[p] for p in parts)
            return undelivered, sum(len(self._pending[p]) for p in parts)

    def heartbeat(self, worker, ttl_ms):
        with self._cond:
            now = time.monotonic()
            self._members[worker] = now
            self._members = {w: t for w, t in self._members.items() if now - t < ttl_ms / 1000}
            return len(self._members)

    def leave(self, worker):
        with self._cond:
            self._members.pop(worker, None)

    def _owner(self, partition: int) -> str | None:
        token, expires = self._leases.get(partition, (None, 0.0))
        return token if expires > time.monotonic() else None

    def acquire(self, partition, token, ttl_ms):
        with self._cond:
            if self._owner(partition) is not None:
                return False
            self._leases[partition] = (token, time.monotonic() + ttl_ms / 1000)
            return True

    def renew(self, partitions, token, ttl_ms):
        with self._cond:
            owned = {p for p in partitions if self._owner(p) == token}
            for p in owned:
                self._leases[p] = (token, time.monotonic() + ttl_ms / 1000)
            return owned

    def release(self, partition, token):
        with self._cond:
            if self._owner(partition) == token:
                del self._leases[partition]

    def claim(self, partition, consumer):
        with self._cond:
            out = []
            for entry_id, pend in sorted(self._pending[partition].items(), key=lambda kv: self._index[partition][kv[0]]):
                pend.consumer, pend.deliveries = consumer, pend.deliveries + 1
                fields = self._streams[partition][self._index[partition][entry_id]][1]
                out.append(Entry(partition, entry_id, fields, pend.deliveries))
            return out

    def read(self, partitions, consumer, count, block_ms):
        deadline = time.monotonic() + block_ms / 1000
        with self._cond:
            while True:
                out = []
                for p in partitions:
                    start = self._cursor[p]
                    for entry_id, fields in self._streams[p][start:start + count]:
                        self._pending[p][entry_id] = _Pending(consumer, 1)
                        out.append(Entry(p, entry_id, fields, 1))
                    self._cursor[p] = min(len(self._streams[p]), start + count)
                left = deadline - time.monotonic()
                if out or left <= 0:
                    return out
                self._cond.wait(left)

    def commit(self, partition, token, commit):
        with self._cond:
            if self._owner(partition) != token:
                return -1
            written = 0
            for target, items in ((self._results, commit.results), (self._dead, commit.dead)):
                for entry_id, fields in items:
                    if self._pending[partition].pop(entry_id, None) is not None:
                        target.append(dict(fields))
                        written += 1
            if written:
                self._events += [dict(f) for f in commit.events]
            self._state[partition].update(commit.state)
            self._cond.notify_all()
            return written

    def load_state(self, partition):
        with self._cond:
            return dict(self._state[partition])

    def set_run(self, **fields):
        with self._cond:
            self._run.update({k: str(v) for k, v in fields.items()})

    def get_run(self):
        with self._cond:
            return dict(self._run)

    def results(self):
        with self._cond:
            return list(self._results)

    def dead_letters(self):
        with self._cond:
            return list(self._dead)

    def events(self):
        with self._cond:
            return list(self._events)

    def counts(self):
        with self._cond:
            return len(self._results), len(self._dead)
