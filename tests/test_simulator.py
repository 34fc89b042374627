"""Simulator: frames follow the schedule, publishing order/pacing/backpressure, retries, video."""

from __future__ import annotations

import threading
import time

import av
import numpy as np
import pytest
import redis
from hypothesis import given, settings
from streaming import joined, one_torch_thread, tiny, wait_until

from dynbn.spectrum import to_tensor
from simulator.publisher import Publisher, camera_frames
from simulator.sources import CifarSource, VideoSource, decode_video, write_demo_video
from simulator.strategies import schedules
from streamer.transport import AlreadyPublished, MemoryTransport
from streamer.wire import FrameMessage

__all__ = ["one_torch_thread"]  # autouse fixture


@pytest.fixture(scope="module")
def cifar(data_dir):
    return CifarSource("test", 0, data_dir)


def test_frames_follow_the_schedule(cifar, data_dir):
    scn = tiny()
    sched = scn.schedule_for(1)
    frames = list(camera_frames(scn, cifar, 1, data_dir / "frost"))
    assert [(t.domain, t.severity or 5) for _, t in frames] == sched.per_frame()
    clean, labels = cifar.take(1, 0, len(frames))
    for i, (img, t) in enumerate(frames):
        assert t.label == labels[i] and t.since_shift == i % 8 and t.segment == i // 8
        assert np.array_equal(img, clean[i]) == (t.domain == "clean")


@settings(max_examples=15, deadline=None)
@given(sched=schedules(max_frames=40))
def test_generated_schedules_are_followed_frame_by_frame(cifar, sched):
    segs = [[s.domain, s.length, s.severity] for s in sched.segments]
    scn = tiny(frames_per_camera=len(sched), schedule={"kind": "explicit", "segments": segs})
    truth = [t for _, t in camera_frames(scn, cifar, 0)]
    assert [(t.domain, t.severity) for t in truth] == [(d, 0 if d == "clean" else s) for d, s in sched.per_frame()]
    starts = [0] + sched.boundaries()
    assert [i for i, t in enumerate(truth) if t.since_shift == 0] == starts


def test_publisher_is_time_major_and_marks_the_run_done(cifar):
    scn = tiny(cameras=3, frames_per_camera=5, partitions=2)
    t = MemoryTransport(2)
    assert Publisher(scn, t, cifar).run() == 15
    run = t.get_run()
    assert run["done"] == "1" and run["published"] == "15" and run["partitions"] == "2"
    by_part = {p: [FrameMessage.from_fields(e.fields) for e in t.read([p], "x", 100, 1)] for p in (0, 1)}
    assert {m.camera for m in by_part[0]} == {"cam00", "cam02"} and {m.camera for m in by_part[1]} == {"cam01"}
    assert [m.seq for m in by_part[0]] == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4]


class Watched(MemoryTransport):
    """Records the largest backlog (frames not yet acknowledged) right after each publish."""

    most = 0

    def publish(self, partition, fields, publisher=""):
        entry_id = super().publish(partition, fields, publisher)
        self.most = max(self.most, sum(self.backlog()))
        return entry_id


def test_rate_and_backpressure(cifar):
    """Finding: the backlog was checked every 8 steps and overshot by up to 8 x cameras; it is now checked
    before every chunk, so it never exceeds max_backlog, also with more cameras than the backlog holds."""
    scn = tiny(cameras=1, frames_per_camera=10, rate_fps=50)
    start = time.monotonic()
    Publisher(scn, MemoryTransport(2), cifar).run()
    assert time.monotonic() - start >= 0.17
    t = Watched(2)
    pub = Publisher(tiny(cameras=16, frames_per_camera=20), t, cifar, max_backlog=10)
    th = threading.Thread(target=pub.run)
    th.start()
    wait_until(lambda: sum(t.backlog()) == 10, 30, "the backlog to fill")
    time.sleep(0.2)  # the publisher is blocked now: nothing more may go in
    assert t.most == 10 and pub.published == 10
    pub.stop()
    joined(th, 5)


class Flaky(MemoryTransport):
    """Stores the first publish, then loses its reply."""

    def __init__(self):
        super().__init__(2)
        self.calls = 0

    def publish(self, partition, fields, publisher=""):
        self.calls += 1
        entry_id = super().publish(partition, fields, publisher)
        if self.calls == 1:
            raise redis.ConnectionError("reply lost")
        return entry_id


def test_a_retried_publish_is_not_duplicated_and_an_earlier_run_is_refused(cifar):
    t = Flaky()
    assert Publisher(tiny(cameras=1, frames_per_camera=2), t, cifar).run() == 2
    assert t.backlog() == (2, 0) and t.calls == 3 and t.get_run()["published:cam00"] == "2"
    with pytest.raises(AlreadyPublished, match="camera cam00 frame 0 is already in partition 0"):
        Publisher(tiny(cameras=1, frames_per_camera=2), t, cifar).run()  # a second run on the same prefix
    assert t.backlog() == (2, 0)


def test_video_source_labels_are_the_models_clean_predictions(tmp_path, data_dir, resnet20):
    path = write_demo_video(tmp_path / "clip.mp4", frames=40, root=data_dir)
    with av.open(str(path)) as c:
        assert c.streams.video[0].codec_context.name in ("h264", "mpeg4")
    frames = decode_video(path)
    assert frames.shape == (40, 32, 32, 3) and frames.dtype == np.uint8
    src = VideoSource(path, resnet20, cameras=2)
    imgs, labels = src.take(1, 0, 5)
    assert src.label_kind == "model" and np.array_equal(imgs, frames[20:25])
    assert labels.tolist() == resnet20(to_tensor(imgs)).argmax(1).tolist()
    with pytest.raises(ValueError, match="cannot decode"):
        (tmp_path / "junk.mp4").write_bytes(b"not a video")
        decode_video(tmp_path / "junk.mp4")
