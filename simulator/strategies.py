"""Hypothesis strategies for shift schedules, for regression tests with generated streams.

Example::

    from hypothesis import given
    from simulator.strategies import schedules, scenarios

    @given(schedules(max_frames=64))
    def test_my_vote_never_lags_more_than_w(schedule): ...

    @given(scenarios(max_cameras=3, max_frames=32))
    def test_every_frame_gets_a_result(scn): ...

``schedules`` yields ``dynbn.schedule.Schedule`` objects (segments of any length, from a
domain list); ``schedule_specs`` yields the scenario's ``schedule:`` section in all three
kinds (periodic, random, explicit); ``scenarios`` yields small valid ``Scenario`` objects
whose fit section is fixed (so generated scenarios share one cached fit).
Requires the ``hypothesis`` package (a test dependency).
"""

from __future__ import annotations

from hypothesis import strategies as st

from dynbn.schedule import Schedule, Segment
from streamer.scenario import parse

DOMAINS = ("clean", "gaussian_noise", "contrast")


def segments(domains=DOMAINS, max_len: int = 32) -> st.SearchStrategy[Segment]:
    """One segment: a domain, a length in 1..max_len, a severity in 1..5."""
    return st.builds(Segment, st.sampled_from(list(domains)), st.integers(1, max_len), st.integers(1, 5))


def schedules(domains=DOMAINS, max_segments: int = 8, max_len: int = 32, max_frames: int | None = None) -> st.SearchStrategy[Schedule]:
    """A schedule of 1..max_segments segments (cut to at most ``max_frames`` frames)."""
    def build(segs):
        if max_frames is None:
            return Schedule(tuple(segs))
        out, total = [], 0
        for s in segs:
            if total >= max_frames:
                break
            out.append(Segment(s.domain, min(s.length, max_frames - total), s.severity))
            total += out[-1].length
        return Schedule(tuple(out))
    return st.lists(segments(domains, max_len), min_size=1, max_size=max_segments).map(build)


def schedule_specs(domains=DOMAINS, max_len: int = 32) -> st.SearchStrategy[dict]:
    """The ``schedule:`` section of a scenario, any of the three kinds, as a dict."""
    periodic = st.builds(lambda p: {"kind": "periodic", "period": p}, st.integers(1, max_len))
    random = st.tuples(st.integers(1, max_len), st.integers(0, max_len), st.integers(0, 2**16)).map(
        lambda t: {"kind": "random", "min_len": t[0], "max_len": t[0] + t[1], "seed": t[2]})
    explicit = st.lists(st.tuples(st.sampled_from(list(domains)), st.integers(1, max_len), st.integers(1, 5)),
                        min_size=1, max_size=6).map(lambda segs: {"kind": "explicit", "segments": [list(s) for s in segs]})
    return st.one_of(periodic, random, explicit)


FIT = {"domains": "scenario", "detector_images": 20, "table_images": 32, "epochs": 3}


def scenarios(domains=DOMAINS, max_cameras: int = 4, max_frames: int = 48, arms=("source", "dynbn_vote"),
              fit: dict | None = None):
    """Small valid scenarios: 1..max_cameras cameras, 1..max_frames frames, any schedule kind."""
    def build(t):
        cameras, frames, schedule, batch, partitions, seed = t
        return parse({"name": "generated", "cameras": cameras, "frames_per_camera": frames, "schedule": schedule,
                      "corruptions": list(domains), "severities": [5], "arms": list(arms),
                      "batch": {"size": batch, "max_wait_ms": 10}, "fit": fit or FIT,
                      "partitions": partitions, "seed": seed})
    return st.tuples(st.integers(1, max_cameras), st.integers(1, max_frames), schedule_specs(domains),
                     st.sampled_from([1, 4, 16, 64]), st.integers(1, 4), st.integers(0, 1000)).map(build)
