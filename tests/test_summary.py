"""The report from hand-built results: accuracy per corruption and per severity, frames without truth unscored."""

from __future__ import annotations

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
