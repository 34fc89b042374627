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


DEFAULT_READ_BYTES = 64 << 20          # bytes of frames one read returns at most (plus one entry)
DEFAULT_MAX_ENTRY = (1 << 20) + (64 << 10)  # a larger entry is returned without its fields


@dataclass
class Entry:
    """A frame-stream entry as delivered to a consumer; ``oversized``: larger than the read's ``max_entry``,
    delivered as id and size only (its fields stay in Redis until the entry is dead-lettered)."""

    partition: int
    id: str
    fields: dict
    deliveries: int = 1
    size: int = 0
    oversized: bool = False


class AlreadyPublished(RuntimeError):
    """A frame's camera and seq are already in its stream, written by another publisher (an earlier run under
    this prefix, or a second publisher of the camera)."""

    def __init__(self, camera: str, seq: int, partition: int) -> None:
        super().__init__(f"camera {camera} frame {seq} is already in partition {partition}, from another publisher: "
                         "an earlier run under this prefix (reset it or use a fresh prefix) or a second publisher "
                         "of this camera")


def frame_key(fields: dict) -> tuple[str | None, int | None]:
    """A frame's own identity (camera, seq) from its stream fields; (None, None) for an entry without them."""
    def text(name):
        v = fields.get(name, fields.get(name.encode()))
        return v.decode(errors="replace") if isinstance(v, bytes) else (None if v is None else str(v))
    camera, seq = text("camera"), text("seq")
    try:
        return camera, int(seq) if seq is not None else None
    except ValueError:
        return camera, None


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
    def publish(self, partition: int, fields: dict, publisher: str = "") -> str | None:
        """Append a frame; returns its entry id, or None when this ``publisher`` already appended this camera's
        frame ``seq`` (a retry whose first try landed: never written twice); AlreadyPublished when another
        publisher did. Fields without camera and seq are appended as they are."""

    @abstractmethod
    def last_seqs(self) -> dict[str, int]:
        """camera -> seq of its last frame appended (over all partitions)."""

    @abstractmethod
    def backlog(self, partitions: list[int] | None = None) -> tuple[int, int]:
        """(undelivered, pending) entries summed over the given partitions (default: all); acked entries
        are deleted, so this is everything not yet acknowledged."""

    @abstractmethod
    def queued(self) -> list[tuple[str | None, int | None]]:
        """(camera, seq) of every frame entry not yet acknowledged."""

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
    def claim(self, partition: int, consumer: str, max_entry: int = DEFAULT_MAX_ENTRY) -> list[Entry]:
        """Move every pending entry of a partition to ``consumer`` (counts a delivery), oldest first; entries
        over ``max_entry`` bytes come as id and size only, as in ``read``."""

    @abstractmethod
    def read(self, partitions: list[int], consumer: str, count: int, block_ms: int,
             max_bytes: int = DEFAULT_READ_BYTES, max_entry: int = DEFAULT_MAX_ENTRY,
             leases: dict[int, str] | None = None) -> list[Entry]:
        """New entries (never delivered before) from the given partitions: at most ``count`` in all, and no
        more once ``max_bytes`` is reached (the last one may cross it); waits up to ``block_ms`` for one.

        ``leases`` (partition -> lease token, for every partition read): a partition whose lease that token
        does not hold is not read, checked in the same atomic step that takes its entries, so a worker never
        takes an entry from a partition it has lost (which the new owner, having claimed the pending entries
        when it took over, would never see)."""

    @abstractmethod
    def commit(self, partition: int, token: str, commit: Commit) -> int:
        """Atomically ack + delete the frames + write results/dead letters + save state; -1 when the lease is lost.

        Returns how many entries were newly acked; an entry acked before (a retried commit)
        writes nothing, so retrying after an ambiguous failure never duplicates a result.
        """

    @abstractmethod
    def load_state(self, partition: int) -> dict[str, str]: ...

    @abstractmethod
    def set_run(self, fresh: bool = False, **fields) -> None:
        """Update the run hash (``fresh``: replace it, a new run)."""

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
        self._last: list[dict[str, tuple[int, str]]] = [{} for _ in range(partitions)]  # camera -> (seq, publisher)
        self._results: list[dict] = []
        self._dead: list[dict] = []
        self._events: list[dict] = []
        self._run: dict[str, str] = {}
        self._ids = itertools.count(1)

    def publish(self, partition, fields, publisher=""):
        with self._cond:
            camera, seq = frame_key(fields)
            if camera is not None and seq is not None:
                last, by = self._last[partition].get(camera, (-1, ""))
                if seq <= last:
                    if by != publisher:
                        raise AlreadyPublished(camera, seq, partition)
                    return None
                self._last[partition][camera] = (seq, publisher)
            entry_id = f"{next(self._ids)}-0"
            self._index[partition][entry_id] = len(self._streams[partition])
            self._streams[partition].append((entry_id, dict(fields)))
            self._cond.notify_all()
            return entry_id

    def last_seqs(self):
        with self._cond:
            return {c: seq for last in self._last for c, (seq, _) in last.items()}

    def backlog(self, partitions=None):
        with self._cond:
            parts = range(self.partitions) if partitions is None else partitions
            undelivered = sum(len(self._streams[p]) - self._cursor[p] for p in parts)
            return undelivered, sum(len(self._pending[p]) for p in parts)

    def queued(self):
        with self._cond:
            unread = [f for p in range(self.partitions) for _, f in self._streams[p][self._cursor[p]:]]
            pending = [self._streams[p][self._index[p][i]][1] for p in range(self.partitions) for i in self._pending[p]]
            return [frame_key(f) for f in pending + unread]

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

    def claim(self, partition, consumer, max_entry=DEFAULT_MAX_ENTRY):
        with self._cond:
            out = []
            for entry_id, pend in sorted(self._pending[partition].items(), key=lambda kv: self._index[partition][kv[0]]):
                pend.consumer, pend.deliveries = consumer, pend.deliveries + 1
                fields = self._streams[partition][self._index[partition][entry_id]][1]
                size = sum(len(k) + len(v) for k, v in fields.items())
                out.append(Entry(partition, entry_id, {} if size > max_entry else fields, pend.deliveries, size,
                                 size > max_entry))
            return out

    def read(self, partitions, consumer, count, block_ms, max_bytes=DEFAULT_READ_BYTES, max_entry=DEFAULT_MAX_ENTRY,
             leases=None):
        deadline = time.monotonic() + block_ms / 1000
        with self._cond:
            while True:
                out, total = [], 0
                for p in partitions:
                    if leases is not None and self._owner(p) != leases[p]:
                        continue
                    while len(out) < count and total < max_bytes and self._cursor[p] < len(self._streams[p]):
                        entry_id, fields = self._streams[p][self._cursor[p]]
                        self._cursor[p] += 1
                        self._pending[p][entry_id] = _Pending(consumer, 1)
                        size = sum(len(k) + len(v) for k, v in fields.items())
                        big = size > max_entry
                        out.append(Entry(p, entry_id, {} if big else fields, 1, size, big))
                        total += 0 if big else size
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
                        index = self._index[partition].pop(entry_id)
                        self._streams[partition][index] = (entry_id, None)  # deleted, as XDEL does
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

    def set_run(self, fresh=False, **fields):
        with self._cond:
            if fresh:
                self._run.clear()
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
