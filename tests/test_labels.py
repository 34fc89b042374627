"""Label orders (dynbn.labels): iid as before, Dirichlet class runs, video holds with jitter; stream, scenario, source."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dynbn import labels as lo
from dynbn.schedule import explicit
from dynbn.stream import build_stream, periodic_schedules
from streamer.scenario import ScenarioError, parse
from streamer.summary import markdown, summarize

DOMAINS = ("clean", "gaussian_noise", "fog")
POOL = np.random.default_rng(0).integers(20, 200, size=(500, 8, 8, 3), dtype=np.uint8)
LABELS = np.random.default_rng(1).permutation(np.arange(500) % 10)


def mean_run(y: np.ndarray) -> float:
    """Mean length of the runs of equal consecutive values."""
    return len(y) / (1 + np.count_nonzero(np.diff(y)))


def per_camera(s, field):
    return [field[np.flatnonzero(s.camera == c)] for c in range(int(s.camera.max()) + 1)]


@pytest.mark.parametrize("spec", ["foo", "dirichlet:0", "dirichlet:-1", "dirichlet:x", "dirichlet", "video:0",
                                  "video:1.5", "video", "iid:3", ""])
def test_a_bad_spec_is_named(spec):
    with pytest.raises(ValueError, match=repr(spec).replace("(", r"\(")):
        lo.parse_order(spec)


def test_specs_round_trip():
    assert lo.parse_order("iid") == lo.IID
    assert lo.parse_order("dirichlet:0.1") == lo.LabelOrder("dirichlet", delta=0.1)
    assert lo.parse_order("video:8") == lo.LabelOrder("video", hold=8)
    for spec in ("iid", "dirichlet:0.1", "dirichlet:1000", "video:8"):
        assert str(lo.parse_order(spec)) == spec


@settings(max_examples=15, deadline=None)
@given(st.integers(0, 10_000), st.integers(1, 3))
def test_iid_is_the_default_stream_and_the_walk_through_the_pool(seed, cameras):
    scheds = periodic_schedules(DOMAINS, 8, 150, cameras, np.random.default_rng(seed), 3)
    default = build_stream(POOL, LABELS, scheds, DOMAINS, seed, None)
    iid = build_stream(POOL, LABELS, scheds, DOMAINS, seed, None, labels_order="iid")
    for a, b in ((default.images, iid.images), (default.labels, iid.labels), (default.camera, iid.camera)):
        assert np.array_equal(a, b)
    # the documented iid walk: camera c reads the pool from its block start, one image per frame
    start = np.cumsum([0] + [len(s) for s in scheds[:-1]])
    assert np.array_equal(iid.pool, (start[iid.camera] + iid.index) % len(POOL))
    assert np.array_equal(iid.labels, LABELS[iid.pool])


@settings(max_examples=20, deadline=None)
@given(st.integers(0, 10_000), st.integers(1, 3))
def test_dirichlet_small_delta_gives_long_class_runs_each_image_once_per_pass(seed, passes):
    n = len(LABELS) * passes
    seq = lo.sequence(LABELS, n, "dirichlet:0.1", np.random.default_rng(seed))
    iid = lo.sequence(LABELS, n, "iid", np.random.default_rng(seed))
    assert mean_run(LABELS[seq]) > 5 * mean_run(LABELS[iid])
    for p in range(passes):  # every pass a permutation of the pool: same class histogram
        chunk = seq[p * len(LABELS):(p + 1) * len(LABELS)]
        assert sorted(chunk.tolist()) == list(range(len(LABELS)))
    assert np.array_equal(np.bincount(LABELS[seq], minlength=10), np.bincount(LABELS, minlength=10) * passes)


@settings(max_examples=20, deadline=None)
@given(st.integers(0, 10_000))
def test_dirichlet_large_delta_spreads_every_class_evenly_over_the_slots(seed):
    """Large DELTA: each of the S = 10 time slots holds every class in about equal numbers (no label shift
    over time); only each class's part of a slot stays contiguous, as in RoTTA's sampler. (1e5 rather than
    1000 so that the slots' sizes, which vary by a few images at 1000, line up with fixed windows.)"""
    labels = np.random.default_rng(seed).permutation(np.arange(5000) % 10)
    seq = lo.sequence(labels, len(labels), "dirichlet:100000", np.random.default_rng(seed))
    width = len(labels) // 10
    for s in range(10):
        counts = np.bincount(labels[seq[s * width:(s + 1) * width]], minlength=10)
        assert counts.min() >= 0.8 * width / 10 and counts.max() <= 1.2 * width / 10, counts
    small = lo.sequence(labels, len(labels), "dirichlet:0.1", np.random.default_rng(seed))
    assert max(np.bincount(labels[small[s * width:(s + 1) * width]], minlength=10).max() for s in range(10)) > 2 * width / 10


def test_dirichlet_stream_uses_the_pool_once_per_pass_and_keeps_the_schedule(monkeypatch):
    scheds = [explicit([("clean", 100), ("fog", 150), ("clean", 250)])]
    iid = build_stream(POOL, LABELS, scheds, DOMAINS, 3, None)
    s = build_stream(POOL, LABELS, scheds, DOMAINS, 3, None, labels_order="dirichlet:0.1")
    assert s.labels_order == "dirichlet:0.1" and iid.labels_order == "iid"
    assert sorted(s.pool.tolist()) == list(range(len(POOL)))  # n == pool size: a permutation
    assert np.array_equal(s.labels, LABELS[s.pool])
    assert mean_run(s.labels) > 5 * mean_run(iid.labels)
    for key in ("camera", "index", "domain", "severity", "since_shift", "segment"):  # shifts don't depend on labels
        assert np.array_equal(getattr(s, key), getattr(iid, key))


@settings(max_examples=15, deadline=None)
@given(st.integers(0, 10_000), st.integers(1, 6), st.integers(1, 3))
def test_video_holds_each_image_for_L_frames_of_its_camera_with_small_changes(seed, hold, cameras):
    scheds = [explicit([("clean", 40 + 7 * c)]) for c in range(cameras)]
    s = build_stream(POOL, LABELS, scheds, ("clean",), seed, None, labels_order=f"video:{hold}")
    for pool, labels, frames in zip(per_camera(s, s.pool), per_camera(s, s.labels), per_camera(s, s.images)):
        runs = pool[::hold]
        assert np.array_equal(pool, np.repeat(runs, hold)[:len(pool)])  # the jitter-free index repeats L times
        assert np.array_equal(labels, LABELS[pool])
        if len(runs) > 1:
            assert np.any(runs[1:] != runs[:-1])
        for i, frame in enumerate(frames):
            assert close_to_jittered(frame, POOL[pool[i]]), (i, pool[i])
        if hold > 1:
            first = frames[:hold]
            assert any(not np.array_equal(first[0], f) for f in first[1:])  # the frames are not all identical


def close_to_jittered(frame: np.ndarray, source: np.ndarray) -> bool:
    """Is ``frame`` the source shifted by at most SHIFT pixels (edge-padded) with a gain within GAIN?"""
    p = lo.SHIFT
    padded = np.pad(source, ((p, p), (p, p), (0, 0)), mode="edge").astype(float)
    h, w = source.shape[:2]
    for dy in range(-p, p + 1):
        for dx in range(-p, p + 1):
            moved = padded[p - dy:p - dy + h, p - dx:p - dx + w]
            gain = frame.astype(float).sum() / max(moved.sum(), 1)
            if abs(gain - 1) <= lo.GAIN + 0.005 and np.abs(frame - moved * gain).max() <= 2:
                return True
    return False


def test_jitter_is_small_but_not_nothing():
    rng = np.random.default_rng(4)
    out = lo.jitter(POOL[:50], "video:4", rng)
    assert all(close_to_jittered(f, src) for f, src in zip(out, POOL[:50]))
    assert sum(not np.array_equal(f, src) for f, src in zip(out, POOL[:50])) > 40
    assert lo.jitter(POOL[:5], "dirichlet:0.1", rng) is POOL[:5] or np.array_equal(lo.jitter(POOL[:5], "iid", rng), POOL[:5])


def test_the_scenario_field_validates_and_names_the_value():
    assert parse({}).labels == "iid"
    assert parse({"labels": "dirichlet:0.1"}).labels == "dirichlet:0.1"
    assert parse({"labels": "video:8"}).labels == "video:8"
    for bad in ("dirichlet:0", "video:0", "shuffled"):
        with pytest.raises(ScenarioError, match=f"labels.*{bad}"):
            parse({"labels": bad})
    with pytest.raises(ScenarioError, match="video source"):
        parse({"labels": "video:4", "source": {"kind": "video"}})


def test_the_run_report_names_the_label_order():
    rep = summarize([], [], {"labels": "dirichlet:0.1", "published": "0"}, "memory")
    assert rep["labels"] == "dirichlet:0.1"
    assert "label order dirichlet:0.1" in markdown(rep).splitlines()[0]
    assert summarize([], [], {"published": "0"}, "memory")["labels"] == "iid"  # runs from before the field


@pytest.fixture(scope="module")
def sources(data_dir):
    from simulator.sources import CifarSource
    return {spec: CifarSource("test", 0, data_dir, spec) for spec in ("iid", "dirichlet:0.1", "video:5")}


def test_cifar_source_iid_is_the_seeded_permutation(sources):
    src = sources["iid"]
    x, y = src.take(2, 9995, 10)
    idx = np.random.default_rng([0, 2]).permutation(len(src.labels))[np.arange(9995, 10005) % len(src.labels)]
    assert np.array_equal(y, src.labels[idx]) and np.array_equal(x, src.images[idx])


def test_cifar_source_dirichlet_gives_long_runs_per_camera(sources):
    for camera in range(3):
        _, y = sources["dirichlet:0.1"].take(camera, 0, 3000)
        _, iid = sources["iid"].take(camera, 0, 3000)
        assert mean_run(y) > 5 * mean_run(iid), camera
    whole = sources["dirichlet:0.1"].take(1, 0, 10_000)[1]
    assert np.array_equal(np.bincount(whole, minlength=10), np.bincount(sources["iid"].labels, minlength=10))


def test_cifar_source_video_holds_images_and_is_the_same_frame_at_the_same_position(sources):
    src = sources["video:5"]
    x, y = src.take(0, 0, 40)
    assert np.array_equal(y.reshape(8, 5), np.repeat(y[::5, None], 5, axis=1))
    assert not np.array_equal(x[0], x[1])
    x2, y2 = src.take(0, 13, 9)  # a later call for the same positions sees the same frames
    assert np.array_equal(x2, x[13:22]) and np.array_equal(y2, y[13:22])
