"""Worker (in-memory transport): one result per frame and arm, dead letters, hand-over, SIGTERM."""

from __future__ import annotations

import threading
import time
from collections import Counter

import torch
from hypothesis import HealthCheck, given, settings
from streaming import arms_for, joined, one_torch_thread, preds, tiny, wait_until
from streaming import consume as run

from dynbn.vote import DEFAULT_RULE, VoteRule
from simulator.publisher import Publisher
from simulator.strategies import scenarios
from streamer import scoring
from streamer.consumer import Worker
from streamer.summary import parse_results
from streamer.transport import MemoryTransport
from streamer.wire import Event, FrameMessage

__all__ = ["one_torch_thread"]  # autouse fixture


def test_every_frame_gets_one_result_with_every_arm(env):
    scn = tiny()
    t, w = run(scn, env)
    results = parse_results(t.results())
    assert sorted((r.camera, r.seq) for r in results) == sorted((c, s) for c in scn.camera_ids for s in range(24))
    assert all(set(r.preds) == {"source", "dynbn_vote"} and "dynbn_vote" in r.detected for r in results)
    assert t.backlog() == (0, 0) and w.counters["results"] == 72 and w.counters["dead"] == 0


def test_arms_are_built_with_the_scenarios_arm_settings(env):
    scn = tiny(arms=["source", "dynbn_vote", "bn_prior"],
               arm_settings={"dynbn_vote": {"rule": "2,0.1,1"}, "bn_prior": {"prior": 2}})
    arms = arms_for(scn, env["root"], env["data_dir"])
    assert list(arms) == ["source", "dynbn_vote", "bn_prior"]
    assert arms["dynbn_vote"].votes.rule == VoteRule(window=2, margin=0.1, hold=1)
    assert arms["bn_prior"].prior == 2
    assert arms_for(tiny(), env["root"], env["data_dir"])["dynbn_vote"].votes.rule == DEFAULT_RULE


def test_malformed_and_poison_entries_are_dead_lettered(env):
    scn = tiny(cameras=1, frames_per_camera=4)
    t = MemoryTransport(scn.partitions)
    good = FrameMessage.from_frame("other", 0, env["source"].take(0, 0, 1)[0][0], time.time()).to_fields()
    t.publish(0, {**good, "shape": "32,32,1"})
    t.publish(0, {**good, "seq": "1", "payload": good["payload"][:10]})
    t.publish(0, {**good, "seq": "2", "truth": "{not json"})
    t.publish(0, {**good, "seq": "3", "payload": FrameMessage.from_frame("cam00", 1, env["source"].take(0, 0, 1)[0][0].repeat(2, 0).repeat(2, 1), 0.0).payload, "shape": "64,64,3"})
    t.publish(1, {**good, "seq": "4"})
    for _ in range(3):  # three workers died on it: the next claim is its fourth delivery
        t.read([1], "ghost", 10, 1) or t.claim(1, "ghost")
    t, w = run(scn, env, transport=t, max_deliveries=3)
    reasons = sorted(d["reason"] for d in t.dead_letters())
    assert len(reasons) == 5 and len(t.results()) == 4
    for needle in ("shape (32, 32, 1)", "raw payload has 10 bytes", "invalid field truth",
                   "the model takes (32, 32, 3)", "delivered 4 times"):
        assert any(needle in r for r in reasons), (needle, reasons)


def test_handover_resumes_vote_state_exactly(env):
    scn = tiny(cameras=2, frames_per_camera=40, partitions=1)
    reference = preds(run(scn, env)[0])
    t = MemoryTransport(1)
    Publisher(scn, t, env["source"], max_backlog=10**6).run()
    first = Worker(t, arms_for(scn, env["root"], env["data_dir"]), batch_size=8, lease_ms=300, name="first")
    first.startup()
    for _ in range(3):
        first._balance()
        first._process(first._take_batch())
    first._take_batch()          # read a batch, then die before committing it
    first.stop.set()             # heartbeat stops; its lease lapses, nothing is released
    time.sleep(0.4)
    heir = Worker(t, arms_for(scn, env["root"], env["data_dir"]), batch_size=8, lease_ms=300, name="heir")
    heir.startup()
    heir.run(until_done=True)
    heir.shutdown()
    assert heir.counters["claimed"] == 8
    assert preds(t) == reference     # same predictions, vote included, as without the failure


def test_stop_finishes_and_acks_the_batch_in_hand(env):
    scn = tiny(cameras=3, frames_per_camera=200)
    t = MemoryTransport(scn.partitions)
    Publisher(scn, t, env["source"], max_backlog=10**6).run()
    w = Worker(t, arms_for(scn, env["root"], env["data_dir"]), batch_size=16)
    w.startup()
    th = threading.Thread(target=w.run)
    th.start()
    wait_until(lambda: t.counts()[0] >= 32, 60, "32 results")
    w.stop.set()
    joined(th, 10)
    w.shutdown()
    undelivered, pending = t.backlog()
    assert pending == 0 and undelivered > 0 and t.counts()[0] == w.counters["results"]


@settings(max_examples=4, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(scn=scenarios(max_cameras=3, max_frames=20))
def test_predictions_do_not_depend_on_batch_composition(env, scn):
    one = preds(run(scn, env, batch=1)[0])
    assert len(one) == scn.total_frames
    assert preds(run(scn, env)[0]) == one


class Exploding:
    """An arm that raises on its second batch (a bug, a bad input it cannot handle)."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, x, cameras=None, truth=None):
        self.calls += 1
        if self.calls == 2:
            raise RuntimeError("kaboom")
        return torch.zeros(len(x), 10)

    def reset(self) -> None:
        pass

    def last_conditions(self):
        return None


def test_an_arm_that_raises_dead_letters_its_batch_and_the_worker_goes_on(env):
    scn = tiny(cameras=1, frames_per_camera=48, partitions=1)
    t = MemoryTransport(1)
    Publisher(scn, t, env["source"], max_backlog=10**6).run()
    w = Worker(t, {"exploding": Exploding()}, batch_size=16, max_wait_ms=20, input_shape=(32, 32, 3))
    w.startup()
    w.run(until_done=True)
    w.shutdown()
    dead = t.dead_letters()
    assert len(dead) == 16 and len(t.results()) == 32 and w.counters["arm_errors"] == 1
    assert all("arm exploding failed: RuntimeError: kaboom" in d["reason"] for d in dead)


def test_events_match_condition_changes_also_across_a_handover(env):
    """Every change of the served arm's condition in a camera's results is one event, none else; a worker
    that takes the cameras over mid-stream announces nothing twice and misses nothing."""
    scn = tiny(cameras=2, frames_per_camera=48, partitions=1, arms=["dynbn_vote", "source"])
    t = MemoryTransport(1)
    Publisher(scn, t, env["source"], max_backlog=10**6).run()
    first = Worker(t, arms_for(scn, env["root"], env["data_dir"]), batch_size=16, max_wait_ms=20, lease_ms=300)
    first.startup()
    first._balance()
    first._process(first._take_batch())   # 16 frames, then the worker vanishes without releasing
    first.stop.set()
    second = Worker(t, arms_for(scn, env["root"], env["data_dir"]), batch_size=16, max_wait_ms=20, lease_ms=300)
    second.startup()
    second.run(until_done=True)
    second.shutdown()
    results = sorted(parse_results(t.results()), key=lambda r: (r.camera, r.seq))
    assert len(results) == 96 and all(r.condition is not None for r in results)
    changes = sorted((a.camera, b.seq, a.condition, b.condition) for a, b in zip(results, results[1:])
                     if a.camera == b.camera and a.condition != b.condition)
    events = sorted((e["camera"], e["seq"], e["from"], e["to"]) for e in map(Event.from_fields, t.events())
                    for e in [e.public()])
    assert events == changes and len(changes) >= 4  # the schedule shifts every 8 frames


def test_a_bf16_worker_accounts_for_every_frame_and_mostly_agrees_with_fp32(env):
    """``STREAMER_PRECISION=bf16``: every frame one result from every arm, none dead, and the classes of the
    float32 worker for nearly every frame (the detector and the statistics stay float32)."""
    scn = tiny()
    t16, w16 = run(scn, env, precision="bf16")
    t32, _ = run(scn, env)
    low, full = preds(t16), preds(t32)
    assert sorted(low) == sorted(full) and len(low) == 72 and w16.counters["dead"] == 0
    same = sum(low[k]["dynbn_vote"] == full[k]["dynbn_vote"] for k in full) / len(full)
    assert same >= 0.9, same


class ReadWatch(MemoryTransport):
    """A transport that notes, for each read, whether it ran in the worker's read-ahead thread."""

    def __init__(self, partitions: int) -> None:
        super().__init__(partitions)
        self.ahead_read = threading.Event()

    def read(self, *args, **kw):
        if threading.current_thread().name.endswith("-read_0"):
            self.ahead_read.set()
        return super().read(*args, **kw)


class WaitsForTheNextRead:
    """An arm whose every batch after the first waits until the worker reads the next batch ahead: the read must
    overlap the prediction (a worker without read-ahead never releases it, and the wait fails)."""

    def __init__(self, transport: ReadWatch) -> None:
        self.t, self.calls, self.overlapped = transport, 0, 0

    def __call__(self, x, cameras=None, truth=None):
        self.calls += 1
        if self.t.ahead_read.wait(30):
            self.overlapped += 1
        self.t.ahead_read.clear()
        return torch.zeros(len(x), 10)

    def reset(self) -> None:
        pass

    def last_conditions(self):
        return None


def test_the_next_batch_is_read_and_decoded_while_this_one_is_predicted_and_every_frame_is_scored_once(env, monkeypatch):
    scn = tiny(cameras=2, frames_per_camera=40, partitions=1)
    t = ReadWatch(1)
    Publisher(scn, t, env["source"], max_backlog=10**6).run()
    decoded_in = Counter()
    check = scoring.check

    def watched(*args):
        decoded_in[threading.current_thread().name] += 1
        return check(*args)
    monkeypatch.setattr(scoring, "check", watched)
    arm = WaitsForTheNextRead(t)
    w = Worker(t, {"waits": arm}, batch_size=16, max_wait_ms=20, name="ahead")
    w.startup()
    w.run(until_done=True)
    w.shutdown()
    assert arm.calls == 5 and arm.overlapped == 5      # 80 frames in 5 batches, each predicted during a read-ahead
    # the first batch is read and decoded before there is a forward to overlap; the other 64 frames in the reader
    assert decoded_in == {threading.current_thread().name: 16, "ahead-read_0": 64} and not w._checked
    assert sorted((r.camera, r.seq) for r in parse_results(t.results())) == \
        sorted((c, s) for c in scn.camera_ids for s in range(40))
    assert t.backlog() == (0, 0) and w.counters["results"] == 80
