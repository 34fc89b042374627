"""The worker: micro-batches frames, runs every arm on them, commits results, acks.

Cameras are pinned to workers, with hand-over. Frames are sharded by camera over
``partitions`` streams; a worker owns a partition through a lease (a Redis key with a TTL,
renewed by a heartbeat thread) and is then the only reader of that partition's cameras.
Why not shared vote state in Redis with any worker taking any frame? Because that cannot
keep per-camera order: two workers would process frames 0-63 and 64-127 of a camera at
the same time, and a vote (or bn_ema, tent) would update its state out of order, so
results would depend on timing. With pinning, a camera's frames pass through its stateful
arms in publish order, exactly as with one worker.

Hand-over: each commit (one Lua script) acks the frames, writes their results and saves
each camera's exportable arm state, only if the lease token still matches (fencing: a
worker that lost its lease cannot commit). A worker that takes a partition over loads that
state and XAUTOCLAIMs the partition's pending entries (the oldest ones) before reading new
ones, so processing resumes where the last commit left off. Arms that cannot export their
state restart the camera from scratch after a hand-over (documented consequence).
Rebalancing: each worker aims at ceil(partitions / live workers) partitions, so a new
worker gets some and a dead one's are taken when its leases lapse (``lease_ms``).
Costs of pinning: a partition's cameras stall for up to ``lease_ms`` after their worker
dies; one camera never gets more than one worker's throughput; workers beyond
``partitions`` idle (make partitions >= the most workers you will run).

Results and events: each result carries the first arm's answer (the served arm: class,
confidence, the condition it normalised for) and every arm's class. When the served arm's
condition for a camera changes (clean -> fog), the commit also writes an event; the
camera's last condition travels with its committed state, so a change is announced once,
also across hand-overs.

Failures: an entry delivered more than ``max_deliveries`` times (it crashed its workers)
or malformed goes to the dead-letter stream with the reason; an exception inside an arm
dead-letters the batch's frames with the arm's name and the error, and the worker goes on; a lost Redis connection is
retried with exponential backoff, then every owned partition is re-adopted (state
reloaded, own pending entries re-claimed: a lost XREADGROUP reply leaves nothing behind).
Read-ahead: while a batch is predicted and committed, a reader thread reads (and checks) the next one
from the same partitions, so Redis round trips and decoding overlap the forward. Ownership stays
with the main thread: before it hands a partition back it waits for that read, whose entries it then
processes first. A read takes entries only from partitions whose lease still holds this worker's token
(checked inside Redis in the same step), so no read, ahead or not, takes frames the next owner would
not see.
Memory: a batch holds at most ``max_batch_bytes`` of frames (the last entry read may cross
it); an entry larger than the payload limit is never transferred: the transport hands it
over as id and size, and it is dead-lettered by id.
SIGTERM: stop reading, finish and commit the batch in hand, release leases, log counters.
Runs: with ``until_done`` the worker refuses a run with other partitions (``RunMismatch``)
and, started against a run already complete, waits for the next one. What a batch becomes
(dead letters, predictions, results, events) is ``streamer.scoring``; an ``observer``
(``streamer.observe``) is told of every committed batch, reconnect and adoption.
"""

from __future__ import annotations

import logging
import math
import threading
import time
import uuid
from collections import Counter, deque
from concurrent.futures import Future, ThreadPoolExecutor

import redis
import torch

from dynbn.device import FrameLoader, autocast

from . import arms as arms_mod
from . import scoring
from .connection import TRANSIENT
from .transport import DEFAULT_READ_BYTES, Commit, Entry, Transport
from .wire import MAX_PAYLOAD_BYTES, dead_fields

log = logging.getLogger("streamer.worker")
ENTRY_OVERHEAD = 64 << 10  # an entry's fields besides the payload (camera, truth, ...) stay well under this


class RunMismatch(RuntimeError):
    """The run in Redis is not one this worker can serve (another number of partitions)."""


class Worker:
    """One consumer of the frame streams; ``run()`` until stopped or (optionally) the run is done."""

    def __init__(self, transport: Transport, arms: dict, *, batch_size: int = 64, max_wait_ms: int = 50,
                 name: str | None = None, lease_ms: int = 5000, max_deliveries: int = 5,
                 max_payload: int = MAX_PAYLOAD_BYTES, max_batch_bytes: int = DEFAULT_READ_BYTES,
                 input_shape=(32, 32, 3), device: str = "cpu", precision: str = "fp32",
                 class_names: list[str] | None = None, observer=None) -> None:
        self.t, self.arms = transport, arms
        self.class_names, self.observer = class_names, observer  # observer: a streamer.observe.Observer, or None
        self.batch_size, self.max_wait_ms = batch_size, max_wait_ms
        self.name = name or f"w-{uuid.uuid4().hex[:8]}"
        self.lease_ms, self.max_deliveries, self.max_payload = lease_ms, max_deliveries, max_payload
        self.max_batch_bytes = max_batch_bytes
        self.max_entry = max_payload + ENTRY_OVERHEAD  # larger entries arrive as id and size only
        self.input_shape, self.device, self.precision = tuple(input_shape), device, precision
        autocast(device, precision)  # ValueError naming an unknown precision now, not at the first batch
        self.loader = FrameLoader(self.input_shape, device, batch_size)  # reused (pinned on CUDA) frame buffers
        self.tokens: dict[int, str] = {}          # owned partition -> lease token
        self.cameras: dict[int, set[str]] = {}    # owned partition -> cameras seen there
        self.conditions: dict[str, str] = {}      # camera -> the served arm's condition, as last announced
        self.queue: deque[Entry] = deque()        # claimed or over-read entries, processed first
        self.live = 1
        self.counters = Counter()
        self.stop = threading.Event()
        self._lost: set[int] = set()
        self._releasing: set[int] = set()      # owned partitions being handed back: no new reads
        self._next_balance = 0.0
        self._started = self._broken = False
        self._reader: ThreadPoolExecutor | None = None  # the read-ahead's thread (``run``)
        self._ahead: Future | None = None                # the read-ahead in flight: entries and their checks
        self._checked: dict[tuple[int, str], object] = {}  # (partition, id) -> scoring.check's answer, read-ahead's

    # -- lifecycle -------------------------------------------------------------------------
    @torch.no_grad()
    def warm_up(self) -> None:
        """One full-size batch through every arm, then ``reset()``: the first real batch is not slow."""
        h, w, _ = self.input_shape
        x = torch.rand(self.batch_size, 3, h, w, generator=torch.Generator().manual_seed(0)).to(self.device)
        for arm in self.arms.values():
            with autocast(self.device, self.precision):
                arm(x, ["warm-up"] * self.batch_size, ["clean"] * self.batch_size)
            arm.reset()

    def startup(self) -> None:
        """Create groups, announce this worker, start the lease heartbeat."""
        self.t.setup()
        self.live = self.t.heartbeat(self.name, self.lease_ms)
        self._beat = threading.Thread(target=self._heartbeat, name=f"{self.name}-heartbeat", daemon=True)
        self._beat.start()
        self._started = True

    def shutdown(self) -> None:
        """Release leases (others take over at once) and log one line of counters."""
        self.stop.set()
        if self._reader is not None:
            self._reader.shutdown(wait=True)  # idle: ``run`` settles the read-ahead before it returns
        for p, token in list(self.tokens.items()):
            try:
                self.t.release(p, token)
            except TRANSIENT:
                pass  # the lease lapses by itself
        try:
            self.t.leave(self.name)
            if self.counters:  # for benchmarks
                self.t.set_run(**{f"worker:{self.name}:{k}": v for k, v in self.counters.items()})
        except TRANSIENT:
            pass
        log.warning("worker %s stopped: %s", self.name, " ".join(f"{k}={v}" for k, v in sorted(self.counters.items())))

    def run(self, until_done: bool = False) -> None:
        """Loop until ``stop`` is set (SIGTERM) or, with until_done, the run is fully consumed (a run already
        complete when the worker starts is a previous one left in Redis: the worker waits for the next)."""
        delay, self._broken = 0.1, False
        self._stale = self._complete_run() if until_done else None
        if self._stale:
            log.warning("worker %s: run %s was complete before this worker started; waiting for the next run",
                        self.name, self._stale)
        while not self.stop.is_set():
            try:
                if self._broken:
                    self._recover()
                self._balance()
                batch = self._take_batch()
                if batch:
                    self._read_ahead()
                    self._process(batch)
                elif until_done and self._finished():
                    return
                delay = 0.1
            except redis.ResponseError as exc:
                # NOGROUP: the group is gone; UNBLOCKED: the stream was deleted under a blocked read
                if "NOGROUP" not in str(exc) and "UNBLOCKED" not in str(exc):
                    raise
                log.warning("worker %s: consumer group missing (streams reset?); recreating", self.name)
                self.t.setup()
                self._broken = True
            except TRANSIENT as exc:
                self.counters["reconnects"] += 1
                if self.observer is not None:
                    self.observer.reconnected()
                log.warning("worker %s: redis unavailable (%s); retrying in %.1f s", self.name, exc, delay)
                self.stop.wait(delay)
                delay = min(delay * 2, 5.0)
                self._broken = True  # re-adopt before reading again, even if Redis is back by then
        self._drain()

    def _drain(self) -> None:
        """After a stop: process the entries already read (the batch in hand, the read-ahead), so none stays
        pending."""
        try:
            self._settle()
            while self.queue:
                self._process(self._take_batch())
        except TRANSIENT:
            pass  # their leases lapse; the next owner claims them

    def ready(self) -> bool:
        """Serving: started, not stopping, Redis answering, and holding partitions (unless there are more
        live workers than partitions, when idling is this worker's share)."""
        return (self._started and not self.stop.is_set()
                and not self._broken and (bool(self.tokens) or self.live > self.t.partitions))

    def _complete_run(self) -> str | None:
        """The id of the run in Redis when it is complete (every frame published and handled), else None;
        RunMismatch when its partitions are not this worker's."""
        run = self.t.get_run()
        if "partitions" in run and int(run["partitions"]) != self.t.partitions:
            raise RunMismatch(f"run {run.get('id', '?')} in Redis has {run['partitions']} partitions, this worker "
                              f"{self.t.partitions}: it would read the wrong streams; start it with the run's scenario")
        if run.get("done") == "1" and self.t.backlog() == (0, 0):
            return run.get("id", "?")
        return None

    def _finished(self) -> bool:
        done = self._complete_run()
        return done is not None and done != self._stale

    # -- partitions ------------------------------------------------------------------------
    def _heartbeat(self) -> None:
        while not self.stop.wait(self.lease_ms / 3000):
            try:
                self.live = max(1, self.t.heartbeat(self.name, self.lease_ms))
                tokens = dict(self.tokens)  # a snapshot: the main thread acquires and drops meanwhile
                kept = set()
                for p, token in tokens.items():
                    kept |= self.t.renew([p], token, self.lease_ms)
                self._lost |= {p for p in set(tokens) - kept if self.tokens.get(p) == tokens[p]}
            except TRANSIENT:
                pass  # the main loop notices and reconnects

    def _balance(self) -> None:
        """Drop lost partitions; acquire or release so this worker owns its fair share."""
        for p in list(self._lost):
            self._drop(p)
        self._lost.clear()
        if time.monotonic() < self._next_balance:
            return
        self._next_balance = time.monotonic() + 0.5
        target = math.ceil(self.t.partitions / self.live)
        start = sum(map(ord, self.name)) % self.t.partitions  # workers try different partitions first
        for i in range(self.t.partitions):
            p = (start + i) % self.t.partitions
            if len(self.tokens) >= target:
                break
            token = f"{self.name}:{uuid.uuid4().hex[:8]}"
            if p not in self.tokens and self.t.acquire(p, token, self.lease_ms):
                self.tokens[p] = token
                self._adopt(p)
        # over the fair share: stop reading the extra partitions, release each once its queued entries are done
        self._releasing = set(sorted(self.tokens)[target:])
        if self._releasing:
            self._settle()  # the read-ahead may hold entries of them: they go into the queue first
        for p in sorted(self._releasing):
            if not any(e.partition == p for e in self.queue):
                self.t.release(p, self.tokens[p])
                self._drop(p)
                self._releasing.discard(p)

    def _readable(self) -> dict[int, str]:
        """Owned partitions to read new entries from (not those being handed back), with this worker's lease token
        on each: what a read checks the lease against."""
        return {p: self.tokens[p] for p in sorted(set(self.tokens) - self._releasing)}

    def _adopt(self, p: int) -> None:
        """Take a partition over: load its cameras' states, claim its pending entries (oldest first)."""
        states = self.t.load_state(p)
        self.conditions.update(arms_mod.import_states(self.arms, states))
        self.cameras[p] = set(states)
        claimed = self.t.claim(p, self.name, self.max_entry)
        self.counters["claimed"] += len(claimed)
        self.counters["adopted"] += 1
        if self.observer is not None:
            self.observer.adopted()
        self.queue.extendleft(reversed(claimed))

    def _drop(self, p: int) -> None:
        self.tokens.pop(p, None)
        self._forget(self.cameras.pop(p, set()))
        self.queue = deque(e for e in self.queue if e.partition != p)
        self._checked = {k: v for k, v in self._checked.items() if k[0] != p}

    def _recover(self) -> None:
        """After a connection error: re-adopt every partition still ours (nothing trusted locally).

        Raises while Redis is still down; ``run`` keeps calling it until it completes once.
        """
        try:
            self._settle()  # its entries are pending here: the re-adoption claims them again
        except TRANSIENT:
            pass
        self.queue.clear()
        self._checked.clear()
        for p, token in dict(self.tokens).items():
            if p in self.t.renew([p], token, self.lease_ms):
                self._forget(self.cameras.get(p, set()))
                self._adopt(p)
            else:
                self._drop(p)
        self._broken = False

    def _forget(self, cameras) -> None:
        arms_mod.forget(self.arms, cameras)
        for cam in cameras:
            self.conditions.pop(cam, None)

    # -- batches ---------------------------------------------------------------------------
    def _take_batch(self) -> list[Entry]:
        """Up to batch_size entries: queued ones first, then the read-ahead's (when one ran, even empty, it is
        this turn's read), else read until full or max_wait after the first."""
        ahead = self._ahead is not None
        if ahead:
            self._settle()
        if self.queue or ahead:
            return [self.queue.popleft() for _ in range(min(self.batch_size, len(self.queue)))]
        leases = self._readable()
        if not leases:
            self.stop.wait(0.1)
            return []
        got = self._read(leases)
        self.queue.extend(got[self.batch_size:])
        return got[:self.batch_size]

    def _read(self, leases: dict[int, str]) -> list[Entry]:
        """Read from the partitions of ``leases`` (partition -> this worker's token; the transport reads only those
        whose lease still holds it) until batch_size entries or max_wait after the first (none: after at most 200
        ms); touches no ownership state, so the read-ahead thread runs it too."""
        owned = list(leases)  # in partition order (``_readable``)
        got: list[Entry] = []
        deadline, size = None, 0
        while len(got) < self.batch_size and size < self.max_batch_bytes and not self.stop.is_set():
            wait = 200 if deadline is None else int((deadline - time.monotonic()) * 1000)
            if deadline is not None and wait <= 0:
                break
            t0 = time.perf_counter()
            new = self.t.read(owned, self.name, self.batch_size - len(got), max(wait, 1),
                              self.max_batch_bytes - size, self.max_entry, leases)
            size += sum(e.size for e in new if not e.oversized)
            self.counters["read_ms"] += int((time.perf_counter() - t0) * 1000)
            if not new and deadline is None:
                return []
            if deadline is None:
                deadline = time.monotonic() + self.max_wait_ms / 1000
            got += new
        return got

    def _read_ahead(self) -> None:
        """Start reading the next batch in the reader thread (when the queue holds none), to overlap this one's
        prediction and commit."""
        leases = self._readable()
        if self.queue or not leases or self.stop.is_set():
            return
        if self._reader is None:
            self._reader = ThreadPoolExecutor(1, thread_name_prefix=f"{self.name}-read")
        self._ahead = self._reader.submit(self._read_and_check, leases)

    def _read_and_check(self, leases: dict[int, str]) -> tuple[dict[int, str], list[tuple[Entry, object]]]:
        """The read-ahead: read, then check and decode each entry (``scoring.check``), in the reader thread."""
        return leases, [(e, scoring.check(e, self.max_deliveries, self.max_payload, self.input_shape))
                        for e in self._read(leases)]

    def _settle(self) -> None:
        """Wait for the read-ahead, if one is in flight, and queue its entries of partitions still held under the
        lease it read them with, keeping their checks for ``_process`` (a partition lost and taken again meanwhile
        was re-adopted, which claimed them again); the read's error, if it failed, is raised here."""
        ahead, self._ahead = self._ahead, None
        if ahead is None:
            return
        leases, entries = ahead.result()
        for e, checked in entries:
            if self.tokens.get(e.partition) == leases[e.partition]:
                self.queue.append(e)
                self._checked[(e.partition, e.id)] = checked

    def _process(self, batch: list[Entry]) -> None:
        """Predict with every arm, then one atomic commit per partition touched."""
        t_start, t0 = time.time(), time.perf_counter()
        good, dead = scoring.parse(batch, self.max_deliveries, self.max_payload, self.input_shape,
                                   lambda e: self._checked.pop((e.partition, e.id), None))
        self.counters["parse_ms"] += int((time.perf_counter() - t0) * 1000)
        commits: dict[int, Commit] = {}
        seen: dict[int, tuple[list, list, list]] = {}  # partition -> results, dead reasons, events (for the observer)
        compute_s = None
        if good:
            t0 = time.perf_counter()
            try:
                outputs = scoring.predict(self.arms, good, self.loader, self.precision)
            except scoring.ArmFailed as exc:
                log.exception("worker %s: %s; dead-lettering the batch's %d frames", self.name, exc, len(good))
                self.counters["arm_errors"] += 1
                dead += [(e, str(exc)) for e, _, _ in good]
                good = []
            compute_s = time.perf_counter() - t0
            self.counters["predict_ms"] += int(compute_s * 1000)
            t_done = time.time()
            for i, (e, m, _) in enumerate(good):
                commit = commits.setdefault(e.partition, Commit())
                result = scoring.result(e, m, i, outputs, t_done, self.name, self.class_names)
                commit.results.append((e.id, result.to_fields()))
                seen.setdefault(e.partition, ([], [], []))[0].append(result)
                event = scoring.track(self.conditions, result)
                if event is not None:
                    commit.events.append(event.to_fields())
                    seen[e.partition][2].append(event)
                self.cameras.setdefault(e.partition, set()).add(m.camera)
        for e, reason in dead:
            commits.setdefault(e.partition, Commit()).dead.append((e.id, dead_fields(reason, str(e.partition), e.id, e.fields, self.name)))
            seen.setdefault(e.partition, ([], [], []))[1].append(reason)
        t0 = time.perf_counter()
        for p, c in commits.items():
            cams = {m.camera for e, m, _ in good if e.partition == p}
            c.state = arms_mod.export_states(self.arms, cams, {cam: self.conditions[cam] for cam in cams
                                                                if cam in self.conditions})
            if self._commit(p, c) and self.observer is not None:
                self.observer.batch(*seen[p], t_start, compute_s)
        self.counters["commit_ms"] += int((time.perf_counter() - t0) * 1000)

    def _commit(self, p: int, c: Commit) -> bool:
        """Commit one partition's part of a batch; False when the lease was lost (nothing written)."""
        token = self.tokens.get(p)
        written = -1 if token is None else self.t.commit(p, token, c)
        if written < 0:
            self.counters["fenced"] += len(c.results) + len(c.dead)
            self._drop(p)  # lease lost: the new owner re-processes these frames from its claim
            return False
        self.counters["frames"] += len(c.results) + len(c.dead)
        self.counters["results"] += len(c.results)
        self.counters["dead"] += len(c.dead)
        self.counters["duplicates_skipped"] += len(c.results) + len(c.dead) - written
        self.counters["batches"] += 1
        return True
