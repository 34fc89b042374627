"""The report from hand-built results: accuracy per corruption and per severity, frames without truth unscored."""

from __future__ import annotations

import json

from hypothesis import given, settings
from hypothesis import strategies as st

from streamer.summary import markdown, summarize
from streamer.wire import ResultMessage, Truth


def result(seq: int, domain: str, severity: int, label: int, pred: int, truth: bool = True) -> ResultMessage:
    return ResultMessage(camera="c", seq=seq, frame_id=f"{seq}-0", worker="w", t_pub=0.0, t_done=0.01, label=pred,
                         confidence=0.9, truth=Truth(label=label, domain=domain, severity=severity) if truth else None,
                         preds={"dynbn_vote": pred})


def test_accuracy_per_corruption_and_per_severity():
    results = [result(0, "fog", 3, 1, 1), result(1, "fog", 5, 1, 2), result(2, "fog", 5, 4, 4),
               result(3, "clean", 0, 0, 0), result(4, "gaussian_noise", 3, 7, 6), result(5, "fog", 3, 1, 9, truth=False)]
    rep = summarize(results, [], {"published": "6"}, "memory")
    arm = rep["results"]["dynbn_vote"]
    assert arm["frames"] == 5  # the frame without truth is not scored
    assert arm["per_domain"] == {"clean": 1.0, "fog": 2 / 3, "gaussian_noise": 0.0}
    assert arm["per_severity"] == {"0": 1.0, "3": 0.5, "5": 0.5}
    text = markdown(rep)
    assert "## Accuracy per corruption (%)" in text and "## Accuracy per severity (0: clean) (%)" in text


def shifted(camera: str, seq: int, since: int, pred: int, detected: str = "fog", worker: str = "w") -> ResultMessage:
    """A fog frame ``since`` frames after its shift, label 1, with the arm's detected condition."""
    return ResultMessage(camera=camera, seq=seq, frame_id=f"{seq}-0", worker=worker, t_pub=10.0 + seq, t_done=10.1 + seq,
                         label=pred, confidence=0.9, truth=Truth(label=1, domain="fog", severity=3, since_shift=since),
                         preds={"dynbn_vote": pred}, detected={"dynbn_vote": detected})


def dead(camera: str | None, seq: int | None, reason: str) -> dict:
    fields = {} if camera is None else {"camera": camera, "seq": str(seq)}
    return {"reason": reason, "stream": "0", "id": "1-0", "worker": "w", "fields": json.dumps(fields)}


def test_duplicates_losses_buckets_detection_and_dead_letter_reasons():
    """Every figure of the report from a hand-built run: 2 cameras of 6 frames."""
    a = [shifted("a", s, since=s, pred=1 if s % 2 == 0 else 0, detected="fog" if s >= 2 else "clean") for s in range(6)]
    b = [shifted("b", s, since=s + 8, pred=1) for s in (0, 1, 3)]          # b: 2 dead-lettered, 5 never scored
    results = a + b + [a[4]]                                                 # a's frame 4 scored twice
    dead_letters = [dead("b", 2, "invalid field truth: not json"), dead("b", 4, "invalid field truth: x"),
                    dead(None, None, "missing field 'camera'")]             # a foreign entry: no frame of the run
    run = {"published": "12", "published:a": "6", "published:b": "6", "done": "1"}
    rep = summarize(results, dead_letters, run, "memory", accepted={"a": 5, "b": 4}, queued=[])
    assert rep["duplicate_results"] == 1 and rep["frames_with_results"] == 9
    acc = rep["accounting"]
    assert acc["per_camera"]["a"] == {"published": 6, "scored": 6, "dead_lettered": 0, "queued": 0, "lost": 0,
                                      "lost_causes": {}, "first_lost": []}
    # b's frame 5: the stream never took it (accepted up to 4): it never arrived
    assert acc["per_camera"]["b"]["lost"] == 1 and acc["per_camera"]["b"]["lost_causes"] == {"never_arrived": 1}
    assert acc["foreign_dead_letters"] == 1 and rep["missing_results"] == 1
    # before: missing = published - results - dead = 12 - 9 - 3 = 0, the foreign entry cancelling the loss
    arm = rep["results"]["dynbn_vote"]
    assert arm["after_shift"] == {"0": 1.0, "1": 0.0, "2-3": 0.5, "4-7": 2 / 3, "8-15": 1.0}
    assert arm["per_camera"] == {"a": 4 / 7, "b": 1.0}
    assert rep["detection"]["dynbn_vote"] == {"frames": 10, "accuracy": 8 / 10}
    assert rep["dead_letter_reasons"] == {"invalid field truth": 2, "missing field 'camera'": 1}
    assert "lost 1 (1 never_arrived)" in markdown(rep)


def test_a_frame_taken_by_the_stream_then_gone_is_removed_unhandled():
    results = [shifted("a", s, s, 1) for s in (0, 2)]
    rep = summarize(results, [], {"published:a": "4"}, "memory", accepted={"a": 3}, queued=[("a", 3)])
    assert rep["accounting"]["per_camera"]["a"]["lost_causes"] == {"removed_unhandled": 1}
    assert rep["accounting"]["queued"] == 1 and rep["missing_results"] == 2  # lost or still waiting: not done


@settings(max_examples=60, deadline=None)
@given(data=st.data(), n=st.integers(0, 40), accepted=st.integers(-1, 45))
def test_accounting_puts_every_published_frame_in_exactly_one_place(data, n, accepted):
    """Whatever happened to each frame (scored, dead-lettered, queued, or nothing), the per-camera counts add
    up to what was published, and a loss is `never_arrived` exactly when the stream never took its seq."""
    fate = data.draw(st.lists(st.sampled_from(["scored", "dead", "queued", "lost"]), min_size=n, max_size=n))
    results = [shifted("a", s, s, 1) for s, f in enumerate(fate) if f == "scored"]
    dead_letters = [dead("a", s, "invalid field truth: x") for s, f in enumerate(fate) if f == "dead"]
    queued = [("a", s) for s, f in enumerate(fate) if f == "queued"]
    acc = summarize(results, dead_letters, {"published:a": str(n)}, "memory", {"a": accepted}, queued)["accounting"]
    cam = acc["per_camera"]["a"]
    assert cam["scored"] + cam["dead_lettered"] + cam["queued"] + cam["lost"] == n
    lost = [s for s, f in enumerate(fate) if f == "lost"]
    assert cam["lost_causes"].get("never_arrived", 0) == sum(s > accepted for s in lost)
    assert cam["lost_causes"].get("removed_unhandled", 0) == sum(s <= accepted for s in lost)


def test_each_arms_accuracy_carries_a_block_bootstrap_interval():
    """Frames of one segment are resampled together: one segment gives a zero-width interval whatever its
    size, many segments an interval around the accuracy."""
    right = [int((s // 4) % 2 == 0) for s in range(40)]   # every other run of 4 frames right
    one = [ResultMessage(camera="c", seq=s, frame_id=f"{s}-0", worker="w", t_pub=0.0, t_done=0.01, label=right[s],
                         confidence=0.9, truth=Truth(label=1, domain="fog", severity=3, segment=0), preds={"a": right[s]})
           for s in range(40)]
    assert summarize(one, [], {}, "memory")["results"]["a"]["ci95"] == [0.5, 0.5]
    many = [r.model_copy(update={"truth": r.truth.model_copy(update={"segment": r.seq // 4})}) for r in one]
    low, high = summarize(many, [], {}, "memory")["results"]["a"]["ci95"]
    assert low < 0.5 < high
