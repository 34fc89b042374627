"""The Python client of a served deployment: publish a camera's frames, read results and events.

    client = Client("redis://127.0.0.1:6379/0")
    seq = client.publish("gate-3", frame)             # uint8 H x W x 3 RGB; blocks while the backlog is full
    for result in client.results(camera="gate-3"):    # blocking iterator of dicts (``ResultMessage.public``)
        print(result["class_name"], result["condition"])
    for event in client.events():                     # condition changes: {camera, seq, from, to, ...}
        ...

Readers resume: every item carries ``id`` (``"partition/entry-id"``) and the reader's
``cursor`` (one position per partition, as text) can be passed back as ``after=`` to go on
where it stopped, in this process or another one. Works against one Redis server or a
Redis Cluster (the same URL form; ``streamer.connection.connect`` tells them apart).

A camera's frames go to partition ``partition_of(camera)``, numbered on from the camera's last
seq in Redis, so a publisher that restarts goes on numbering (one publisher per camera at a
time: a second one is refused with ``AlreadyPublished``). A publish retried after a lost
reply is recognised and never written twice. Publishing waits while the camera's partition
holds ``max_backlog`` frames not yet acknowledged by a worker (delivered or not): memory
stays bounded when the workers fall behind or are down, and nothing is ever trimmed.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator

import numpy as np

from .keys import DEFAULT_PREFIX, Keys, partition_of
from .connection import connect
from .redis_transport import RedisTransport
from .wire import Event, FrameMessage, ResultMessage

DEFAULT_PARTITIONS = 8


class ServiceMismatch(ValueError):
    """This client or worker and the deployment in Redis disagree (e.g. on the number of partitions)."""


def agree_partitions(r, keys: Keys, wanted: int | None) -> int:
    """The deployment's number of partitions: set by whoever comes first (``wanted``, else the default),
    then read by everyone; ServiceMismatch when ``wanted`` differs from it."""
    r.hsetnx(keys.service, "partitions", wanted or DEFAULT_PARTITIONS)
    have = int(r.hget(keys.service, "partitions"))
    if wanted is not None and wanted != have:
        raise ServiceMismatch(f"the deployment under prefix {keys.prefix!r} has {have} partitions, this process was "
                              f"started with {wanted}: use --partitions {have} (or a fresh --prefix)")
    return have


class Client:
    """Publish frames and read results/events of the deployment under ``prefix``."""

    def __init__(self, redis_url: str = "redis://127.0.0.1:6379/0", prefix: str = DEFAULT_PREFIX, *,
                 partitions: int | None = None, max_backlog: int = 1000,
                 ca_certs: str | None = None, encoding: str = "raw") -> None:
        self.r = connect(redis_url, 3, ca_certs)
        self.keys = Keys(prefix)
        self.partitions = agree_partitions(self.r, self.keys, partitions)
        self.transport = RedisTransport(self.r, self.keys, self.partitions)
        self.max_backlog, self.encoding = max_backlog, encoding
        self.id = uuid.uuid4().hex[:12]     # this publisher, as the published hash records it
        self._next: dict[str, int] = {}     # camera -> its next seq
        self._room: dict[int, int] = {}  # partition -> frames that may still be added before measuring again

    # -- publishing ----------------------------------------------------------------------------
    def publish(self, camera: str, frame: np.ndarray, t_pub: float | None = None) -> int:
        """Publish one uint8 ``H x W x 3`` RGB frame of ``camera``; returns its sequence number."""
        p = partition_of(camera, self.partitions)
        if camera not in self._next:
            last = self.r.hget(self.keys.published(p), camera)
            self._next[camera] = int(last.split(b" ")[0]) + 1 if last else 0
        seq = self._next[camera]
        msg = FrameMessage.from_frame(camera, seq, frame, time.time() if t_pub is None else t_pub,
                                      encoding=self.encoding)
        self._wait_for_room(p)
        self.transport.publish(p, msg.to_fields(), self.id)
        self._next[camera] = seq + 1
        self._room[p] -= 1
        return seq

    def _wait_for_room(self, p: int) -> None:
        """Block while partition p holds ``max_backlog`` unacknowledged frames (measured only when the
        room counted down since the last measurement is used up: one XINFO per many frames)."""
        delay = 0.005
        while self._room.get(p, 0) <= 0:
            undelivered, pending = self.transport.backlog([p])
            self._room[p] = self.max_backlog - undelivered - pending
            if self._room[p] <= 0:
                time.sleep(delay)
                delay = min(2 * delay, 0.2)

    # -- reading -------------------------------------------------------------------------------
    def results(self, camera: str | None = None, *, after: str | None = None, follow: bool = True,
                timeout_s: float | None = None) -> "Reader":
        """Results (dicts, ``ResultMessage.public()`` plus ``id``) of every camera or one, oldest first per
        partition; ``follow=False`` stops at the end of what is there now, ``timeout_s`` after that long."""
        return Reader(self, "results", camera, after, follow, timeout_s)

    def events(self, camera: str | None = None, *, after: str | None = None, follow: bool = True,
               timeout_s: float | None = None) -> "Reader":
        """Condition-change events (dicts, ``Event.public()`` plus ``id``), as ``results``."""
        return Reader(self, "events", camera, after, follow, timeout_s)

    def close(self) -> None:
        self.r.close()


class Reader:
    """An iterator over a results or events stream of every partition; ``cursor`` resumes it."""

    block_ms = 200  # one blocking read's longest wait: how often a timeout or a stop is noticed

    def __init__(self, client: Client, kind: str, camera: str | None, after: str | None, follow: bool,
                 timeout_s: float | None) -> None:
        self.c, self.kind, self.camera, self.follow, self.timeout_s = client, kind, camera, follow, timeout_s
        stream = client.keys.results if kind == "results" else client.keys.events
        self.streams = {p: stream(p) for p in range(client.partitions)}
        self.position = {p: "0-0" for p in self.streams}
        if after:
            self.position.update(parse_cursor(after))

    @property
    def cursor(self) -> str:
        """Where this reader stands, as text for ``after=``: ``"0:1733-0,1:0-0,..."``."""
        return ",".join(f"{p}:{i}" for p, i in sorted(self.position.items()))

    def __iter__(self) -> Iterator[dict]:
        end = None if self.timeout_s is None else time.monotonic() + self.timeout_s
        while end is None or time.monotonic() < end:
            batch = self._read(self.block_ms if self.follow else 0)
            if not batch and not self.follow:
                return
            for p, entry_id, item in batch:
                # the position moves as items are handed out: an iteration stopped early (a break, a
                # count reached) leaves the rest of the batch to the next one, nothing is skipped
                self.position[p] = entry_id
                if item is not None:
                    yield item

    def _read(self, block_ms: int) -> list[tuple[int, str, dict | None]]:
        """The next entries of every partition (blocking up to block_ms while there are none), as
        (partition, entry id, item or None where another camera's)."""
        if self.c.transport.cluster:  # one XREAD per slot; poll gently while all are empty
            reply = [x for p, s in self.streams.items() for x in (self.c.r.xread({s: self.position[p]}, count=500) or [])]
            if not reply and block_ms:
                time.sleep(min(block_ms, 50) / 1000)
        else:
            reply = self.c.r.xread({s: self.position[p] for p, s in self.streams.items()}, count=500,
                                   block=block_ms or None) or []
        index = {s: p for p, s in self.streams.items()}
        parse = ResultMessage.from_fields if self.kind == "results" else Event.from_fields
        out = []
        for name, entries in reply:
            p = index[name.decode() if isinstance(name, bytes) else name]
            for entry_id, fields in entries:
                entry_id = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
                item = parse(fields).public()
                keep = self.camera is None or item["camera"] == self.camera
                out.append((p, entry_id, {**item, "id": f"{p}/{entry_id}"} if keep else None))
        return out


def parse_cursor(text: str) -> dict[int, str]:
    """``"0:1733-0,1:0-0"`` -> {0: "1733-0", 1: "0-0"}; ValueError naming the bad part."""
    out = {}
    for part in filter(None, text.split(",")):
        p, sep, entry = part.partition(":")
        if not sep or not p.isdigit() or not entry:
            raise ValueError(f"cursor part {part!r} is not PARTITION:ENTRY-ID (as a reader's cursor prints it)")
        out[int(p)] = entry
    return out
