"""Publish a scenario's frames: per camera a schedule, clean frames from a source, corruption.

Frames go out time-major (frame t of every camera, then t+1), at ``rate_fps`` per camera
or as fast as the workers take them, in chunks of at most ``max_backlog`` frames. Before
each chunk the publisher measures the backlog (every frame not yet acknowledged by a
worker: acked frames are deleted, so this survives anything a stream does) and waits
until the chunk fits under ``max_backlog``: memory stays bounded and nothing is trimmed.

A publish is recognised by the frame's own id (camera, seq) and the run id: a retry after a
lost reply that finds the frame appended knows its first try landed; a frame of another run
under the prefix stops publishing with that reason (``AlreadyPublished``). Any other error
is raised, never swallowed. One publisher per run; it writes a fresh run hash (a new
run id) with how many frames each camera got, which the report counts losses against.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Iterator

import numpy as np

from dynbn import corruptions
from dynbn.domains import CLEAN
from dynbn.progress import progress
from streamer.connection import TRANSIENT
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


class Publisher:
    """Publishes one scenario through a transport; ``run()`` returns the number of frames published."""

    warn_after_s = 30.0  # a backlog full for this long gets a warning line (workers missing or mismatched?)

    def __init__(self, scn: Scenario, transport: Transport, source, *, frost_dir=None,
                 max_backlog: int = 2000, transient: tuple = TRANSIENT) -> None:
        if transport.partitions != scn.partitions:
            raise ValueError(f"transport has {transport.partitions} partitions, the scenario {scn.partitions}")
        self.scn, self.t, self.source, self.frost_dir = scn, transport, source, frost_dir
        self.max_backlog, self.transient = max_backlog, transient
        self.published = 0
        self.sent = dict.fromkeys(scn.camera_ids, 0)  # camera -> frames published
        self.run_id = uuid.uuid4().hex[:12]
        self.stopped = False

    def run(self) -> int:
        """Publish every frame (or until ``stop()``), then mark the run done."""
        scn = self.scn
        self._retry(self.t.setup)
        self._retry(self.t.set_run, fresh=True, id=self.run_id, scenario=scn.name, planned=scn.total_frames,
                    published=0, done=0, partitions=scn.partitions, label_kind=self.source.label_kind,
                    labels=scn.labels, arms=",".join(scn.arms), started=time.time())
        streams = [camera_frames(scn, self.source, c, self.frost_dir) for c in range(scn.cameras)]
        cams, t0 = scn.camera_ids, time.monotonic()
        chunk = max(1, min(self.max_backlog, 64))
        bar = progress(desc="publish", total=scn.total_frames, unit="frame")
        for step in range(scn.frames_per_camera):
            if self.stopped:
                break
            self._pace(step, t0)
            frames = [(c, *next(stream)) for c, stream in enumerate(streams)]
            for i in range(0, len(frames), chunk):
                if not self._wait_for_room(len(frames[i:i + chunk])):
                    break  # stopped while waiting
                for c, frame, truth in frames[i:i + chunk]:
                    msg = FrameMessage.from_frame(cams[c], step, frame, time.time(), truth, scn.encoding)
                    self._publish(c % scn.partitions, msg.to_fields(), cams[c])
            bar.update(len(streams))
            if step % 16 == 15:
                self._retry(self.t.set_run, **self._counts())
        bar.close()
        self._retry(self.t.set_run, **self._counts(), done=1, finished=time.time())
        log.info("published %d frames", self.published)
        return self.published

    def stop(self) -> None:
        self.stopped = True

    def _counts(self) -> dict:
        return {"published": self.published, **{f"published:{c}": n for c, n in self.sent.items()}}

    def _pace(self, step: int, t0: float) -> None:
        """Keep to rate_fps per camera."""
        if self.scn.rate_fps > 0:
            delay = t0 + step / self.scn.rate_fps - time.monotonic()
            if delay > 0:
                time.sleep(delay)

    def _wait_for_room(self, n: int) -> bool:
        """Wait until ``n`` more frames keep the backlog (frames not yet acknowledged) within max_backlog;
        False when stopped meanwhile."""
        since = warned = time.monotonic()
        while not self.stopped:
            backlog = sum(self._retry(self.t.backlog))
            if backlog + n <= self.max_backlog:
                return True
            if time.monotonic() - warned > self.warn_after_s:
                warned = time.monotonic()
                log.warning("backlog full for %.0f s (%d frames not yet acknowledged, limit %d): are workers running "
                            "on this prefix with %d partitions?", warned - since, backlog, self.max_backlog, self.scn.partitions)
            time.sleep(0.02)
        return False

    def _publish(self, partition: int, fields: dict, camera: str) -> None:
        """Append one frame; a retry whose first try landed is recognised (see the module docstring)."""
        self._retry(self.t.publish, partition, fields, self.run_id)
        self.published += 1
        self.sent[camera] += 1

    def _retry(self, fn, *args, **kw):
        """``fn()``, retried while Redis is unavailable; after ``stop()`` the last error is raised instead."""
        delay = 0.05
        while True:
            try:
                return fn(*args, **kw)
            except self.transient as exc:
                if self.stopped:
                    raise
                log.warning("redis unavailable (%s); retrying in %.2f s", exc, delay)
                time.sleep(delay)
                delay = min(delay * 2, 5.0)
