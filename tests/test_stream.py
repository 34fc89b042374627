"""In-process streams: metadata per frame, arrival order, batching, grouped corruption."""

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import dynbn.stream as stream_mod
from dynbn.domains import DEFAULT_DOMAINS
from dynbn.schedule import Schedule, Segment, explicit
from dynbn.stream import build_stream, interleave, periodic_schedules, random_schedules, with_phase

DOMAINS = ("clean", "gaussian_noise", "fog", "pixelate")
POOL = np.random.default_rng(0).integers(0, 200, size=(40, 8, 8, 3), dtype=np.uint8)
LABELS = np.arange(40) % 10


@pytest.fixture
def fake_corrupt(monkeypatch):
    """Replace corruption by 'add the domain index and severity to every pixel', counting the calls."""
    calls = []

    def apply(images, domain, severity, rng, frost_dir):
        calls.append((domain, severity, len(images)))
        return images if domain == "clean" else images + np.uint8(DOMAINS.index(domain) * 10 + severity)

    monkeypatch.setattr(stream_mod, "apply", apply)
    return calls


schedules = st.lists(
    st.lists(st.tuples(st.sampled_from(DOMAINS), st.integers(1, 9), st.integers(1, 5)), min_size=1, max_size=5),
    min_size=1, max_size=3).map(lambda cams: [explicit(segs) for segs in cams])


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(schedules, st.integers(0, 1000))
def test_every_frame_carries_its_schedule(fake_corrupt, scheds, seed):
    fake_corrupt.clear()
    s = build_stream(POOL, LABELS, scheds, DOMAINS, seed, None)
    assert len(s) == sum(len(c) for c in scheds)
    start = 0
    for cam, sched in enumerate(scheds):
        rows = np.flatnonzero(s.camera == cam)
        assert s.index[rows].tolist() == list(range(len(sched)))  # the camera's own order is kept
        per_frame = sched.per_frame()
        assert [DOMAINS[d] for d in s.domain[rows]] == [d for d, _ in per_frame]
        assert [sev for sev in s.severity[rows]] == [0 if d == "clean" else v for d, v in per_frame]
        expected_since = [i for seg in sched.segments for i in range(seg.length)]
        assert s.since_shift[rows].tolist() == expected_since
        assert s.until_shift[rows].tolist() == [seg.length - 1 - i for seg in sched.segments for i in range(seg.length)]
        assert s.segment[rows].tolist() == [k for k, seg in enumerate(sched.segments) for _ in range(seg.length)]
        pool = (start + np.arange(len(sched))) % len(POOL)  # camera c takes the next frames of the pool
        assert (s.labels[rows] == LABELS[pool]).all()
        shift = np.array([0 if d == "clean" else DOMAINS.index(d) * 10 + v for d, v in per_frame], dtype=np.uint8)
        expected = POOL[pool] + shift[:, None, None, None]
        assert (s.images[rows] == expected).all()
        start += len(sched)
    groups = {(d, v) for sched in scheds for d, v in sched.per_frame() if d != "clean"}
    assert sorted((d, v) for d, v, _ in fake_corrupt if d != "clean") == sorted(groups)  # one call per group


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(schedules, st.integers(1, 12))
def test_batches_cover_every_arrival_once_in_order(fake_corrupt, scheds, size):
    s = build_stream(POOL, LABELS, scheds, DOMAINS, 0, None)
    seen = []
    for b in s.batches(size):
        assert len(b.x) == len(b.cameras) == len(b.truth) <= size
        assert b.x.shape[1:] == (3, 8, 8) and float(b.x.max()) <= 1.0
        assert b.cameras == s.camera[b.rows].tolist() and b.truth == s.truth(b.rows)
        seen += list(range(b.rows.start, b.rows.stop))
    assert seen == list(range(len(s)))


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(0, 20), min_size=1, max_size=5), st.integers(0, 1000))
def test_interleave_keeps_counts(lengths, seed):
    order = interleave(lengths, np.random.default_rng(seed))
    assert np.bincount(order, minlength=len(lengths)).tolist() == lengths


def test_the_same_seed_gives_the_same_stream_and_another_seed_another_order(fake_corrupt):
    scheds = [explicit([("fog", 5), ("pixelate", 5)]), explicit([("clean", 10)])]
    a, b = (build_stream(POOL, LABELS, scheds, DOMAINS, 3, None) for _ in range(2))
    assert (a.images == b.images).all() and (a.camera == b.camera).all()
    c = build_stream(POOL, LABELS, scheds, DOMAINS, 4, None)
    assert (a.camera != c.camera).any()


@settings(max_examples=30, deadline=None)
@given(st.integers(1, 40), st.integers(1, 100), st.integers(1, 4), st.integers(0, 1000))
def test_periodic_schedules_have_the_length_and_period_asked(period, frames, cameras, seed):
    out = periodic_schedules(DOMAINS, period, frames, cameras, np.random.default_rng(seed))
    assert len(out) == cameras
    for sched in out:
        lengths = [seg.length for seg in sched.segments]
        assert sum(lengths) == frames
        assert 1 <= lengths[0] <= period and all(n == period for n in lengths[1:-1])
        assert all(a.domain != b.domain for a, b in zip(sched.segments, sched.segments[1:]))


def test_phase_trims_the_front_only():
    sched = Schedule((Segment("fog", 4), Segment("clean", 4), Segment("pixelate", 4)))
    assert [(s.domain, s.length) for s in with_phase(sched, 5).segments] == [("clean", 3), ("pixelate", 4)]
    assert with_phase(sched, 0) == sched


def test_random_schedules_and_unknown_domains(fake_corrupt):
    out = random_schedules(DOMAINS, 2, 5, 30, 2, np.random.default_rng(0), severity=(3, 5))
    assert all(len(s) == 30 and all(2 <= seg.length <= 5 for seg in s.segments[:-1]) for s in out)
    with pytest.raises(ValueError, match="lacks"):
        build_stream(POOL, LABELS, [explicit([("snow", 3)])], DOMAINS, 0, None)


def test_real_corruptions_change_the_frames(test_split, data_dir):
    from dynbn.data import frost_dir

    scheds = [explicit([("clean", 4), ("gaussian_noise", 4), ("frost", 4)])]
    s = build_stream(test_split.images[:12], test_split.labels[:12], scheds, DEFAULT_DOMAINS, 0, frost_dir(data_dir))
    assert (s.images[:4] == test_split.images[:4]).all()
    assert (s.images[4:] != test_split.images[4:12]).any(axis=(1, 2, 3)).all()
