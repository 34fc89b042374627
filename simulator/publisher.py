"""Publish a scenario's frames: per camera a schedule, clean frames from a source, corruption.

Frames go out time-major (frame t of every camera, then t+1), at ``rate_fps`` per camera
or as fast as the workers take them. ``max_backlog`` bounds the group's undelivered plus
pending entries: the publisher waits while the backlog is full, which keeps memory bounded
and, with Redis, guarantees ``MAXLEN ~`` trimming never drops an unacked frame (the
stream's maxlen is far above the backlog bound; see streamer.redis_transport).

With Redis each entry gets an explicit, increasing id; a publish retried after a lost
reply reuses it, and Redis' "equal or smaller than the top item" answer then means the
first try landed, so a frame is never published twice. One publisher per run.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator

import numpy as np

from dynbn import corruptions
from dynbn.domains import CLEAN
from dynbn.progress import progress
from streamer.redis_transport import TRANSIENT
from streamer.scenario import Scenario
from streamer.transport import Transport
from streamer.wire import FrameMessage, Truth

log = logging.getLogger("simulator")


def camera_frames(scn: Scenario, source, camera: int, frost_dir=None) -> Iterator[tuple[np.ndarray, Truth]]:
    """One camera's frames in order: corrupted per its schedule, one segment corrupted at a time."""
    start = 0
    for k, seg in enumerate(scn.schedule_for(camera).segments):
        images, labels = source.take(camera, start, seg.length)
        if seg.domain != CLEAN:
            rng = np.random.default_rng([scn.seed, camera, k, 17])
            images = corruptions.corrupt(images, seg.domain, seg.severity, rng, frost_dir=frost_dir)
        for i in range(seg.length):
            sev = 0 if seg.domain == CLEAN else seg.severity
            yield images[i], Truth(label=int(labels[i]), domain=seg.domain, severity=sev, since_shift=i, segment=k)
        start += seg.length


class Ids:
    """Increasing explicit stream ids ``ms-seq`` (wall clock, never going back)."""

    def __init__(self, after: tuple[int, int] = (0, 0)) -> None:
        self.last = after

    def next(self) -> str:
        ms = max(int(time.time() * 1000), self.last[0])
        self.last = (ms, self.last[1] + 1 if ms == self.last[0] else 0)
        return f"{self.last[0]}-{self.last[1]}"


class Publisher:
    """Publishes one scenario through a transport; ``run()`` returns the number of frames published."""

    def __init__(self, scn: Scenario, transport: Transport, source, *, frost_dir=None,
                 max_backlog: int = 2000, transient: tuple = TRANSIENT) -> None:
        if transport.partitions != scn.partitions:
            raise ValueError(f"transport has {transport.partitions} partitions, the scenario {scn.partitions}")
        self.scn, self.t, self.source, self.frost_dir = scn, transport, source, frost_dir
        self.max_backlog, self.transient = max_backlog, transient
        self.ids = Ids(transport.last_id()) if hasattr(transport, "last_id") else None
        self.published = 0
        self.stopped = False

    def run(self) -> int:
        """Publish every frame (or until ``stop()``), then mark the run done."""
        scn = self.scn
        self.t.setup()
        self.t.set_run(scenario=scn.name, planned=scn.total_frames, published=0, done=0, partitions=scn.partitions,
                       label_kind=self.source.label_kind, arms=",".join(scn.arms), started=time.time())
        streams = [camera_frames(scn, self.source, c, self.frost_dir) for c in range(scn.cameras)]
        cams, t0 = scn.camera_ids, time.monotonic()
        bar = progress(desc="publish", total=scn.total_frames, unit="frame")
        for step in range(scn.frames_per_camera):
            if self.stopped:
                break
            self._pace(step, t0)
            for c, frames in enumerate(streams):
                frame, truth = next(frames)
                msg = FrameMessage.from_frame(cams[c], step, frame, time.time(), truth, scn.encoding)
                self._publish(c % scn.partitions, msg.to_fields())
            bar.update(len(streams))
            if step % 16 == 15:
                self._retry(self.t.set_run, published=self.published)
        bar.close()
        self._retry(self.t.set_run, published=self.published, done=1, finished=time.time())
        log.info("published %d frames", self.published)
        return self.published

    def stop(self) -> None:
        self.stopped = True

    def _pace(self, step: int, t0: float) -> None:
        """Keep to rate_fps per camera, and wait while the backlog is full."""
        if self.scn.rate_fps > 0:
            delay = t0 + step / self.scn.rate_fps - time.monotonic()
            if delay > 0:
                time.sleep(delay)
        if step % 8 == 0:
            while not self.stopped and sum(self._retry(self.t.backlog)) > self.max_backlog:
                time.sleep(0.02)

    def _publish(self, partition: int, fields: dict) -> None:
        entry_id = self.ids.next() if self.ids else None
        try:
            self._retry(self.t.publish, partition, fields, entry_id)
        except Exception as exc:
            if entry_id is None or "equal or smaller" not in str(exc):
                raise
            # an earlier try of this publish landed and only its reply was lost
        self.published += 1

    def _retry(self, fn, *args, **kw):
        delay = 0.05
        while True:
            try:
                return fn(*args, **kw)
            except self.transient as exc:
                log.warning("redis unavailable (%s); retrying in %.2f s", exc, delay)
                time.sleep(delay)
                delay = min(delay * 2, 5.0)
