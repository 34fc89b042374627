"""What a run's report holds, and writing it as JSON, Markdown and PNG plots.

Accuracy per arm (overall, per camera, after each shift), detection, latency, throughput
and dead letters; the report service (``streamer.report``) and the embedded run write it.

Contract of ``report.json`` (extra keys allowed): ``transport``, ``frames_published``,
``dead_letters``, ``results: {arm: {frames, accuracy}}``, ``latency_ms: {p50, p99}``,
``throughput_fps``. With a video source there are no labels: "accuracy" is agreement with
the model's prediction on the same frame uncorrupted (``label_kind: "model"``).
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np

from dynbn.uncertainty import block_bootstrap, block_ids

from .plots import plot_accuracy_over_time, plot_per_arm
from .wire import ResultMessage

BUCKETS = ((0, 0), (1, 1), (2, 3), (4, 7), (8, 15), (16, 31), (32, None))
CAVEAT = ("CIFAR-10 here was decoded from JPEG files: 'clean' is mildly JPEG-corrupted (ResNet-20 scores "
          "~81 % on it against 91.7 % on lossless CIFAR-10).")


def _bucket(i: int) -> str:
    for lo, hi in BUCKETS:
        if hi is None or i <= hi:
            return f"{lo}+" if hi is None else (f"{lo}" if lo == hi else f"{lo}-{hi}")
    raise AssertionError


def _acc(hits: list[bool]) -> float | None:
    return float(np.mean(hits)) if hits else None


def summarize(results: list[ResultMessage], dead: list[dict], run: dict, transport: str,
              accepted: dict[str, int] | None = None, queued: list | None = None) -> dict:
    """The report dict from result messages, dead-letter fields and the run hash; ``accepted`` (camera -> last
    seq the stream took) and ``queued`` ((camera, seq) still waiting) let the accounting name each loss's cause."""
    keys = Counter((r.camera, r.seq) for r in results)
    arms = list(results[0].preds) if results else [a for a in run.get("arms", "").split(",") if a]
    out = {"transport": transport, "scenario": run.get("scenario"), "label_kind": run.get("label_kind", "cifar10"),
           "labels": run.get("labels", "iid"),
           "frames_planned": int(run.get("planned", 0)), "frames_published": int(run.get("published", 0)),
           "frames_with_results": len(keys), "duplicate_results": sum(n - 1 for n in keys.values()),
           "dead_letters": len(dead), "dead_letter_reasons": dict(Counter(_reason(d) for d in dead).most_common(20)),
           "results": {}, "detection": {}}
    out["accounting"] = account(results, dead, run, accepted or {}, queued or [])
    by_camera = out["accounting"]["per_camera"]  # empty when the run hash has no per-camera counts
    out["missing_results"] = out["accounting"]["lost"] + out["accounting"]["queued"] if by_camera else \
        max(0, out["frames_published"] - len(keys) - len(dead))
    for arm in arms:
        out["results"][arm] = _arm_summary(results, arm)
        det = [r.detected[arm] == r.truth.domain for r in results if arm in r.detected and r.truth is not None]
        if det:
            out["detection"][arm] = {"frames": len(det), "accuracy": _acc(det)}
    lat = np.array([(r.t_done - r.t_pub) * 1000 for r in results]) if results else np.zeros(1)
    out["latency_ms"] = {"p50": float(np.percentile(lat, 50)), "p90": float(np.percentile(lat, 90)),
                         "p99": float(np.percentile(lat, 99)), "max": float(lat.max())}
    span = (max(r.t_done for r in results) - min(r.t_pub for r in results)) if results else 0.0
    out["throughput_fps"] = len(keys) / span if span > 0 else 0.0
    out["wall_s"] = span
    out["workers"] = dict(Counter(r.worker for r in results))
    return out


def _dead_key(d: dict) -> tuple[str | None, int | None]:
    """(camera, seq) of the frame a dead letter came from, when its fields carried them."""
    raw = d.get("fields", d.get(b"fields", "{}"))
    try:
        fields = json.loads(raw.decode() if isinstance(raw, bytes) else raw)
        return str(fields["camera"]), int(fields["seq"])
    except (ValueError, KeyError, TypeError):
        return None, None


def account(results: list[ResultMessage], dead: list[dict], run: dict, accepted: dict[str, int], queued: list) -> dict:
    """Every frame of every camera accounted for, from the frames' own sequence numbers: the publisher's count
    per camera (``published:<camera>`` in the run hash) against the seqs scored, dead-lettered and still
    queued; a seq in none of them is lost, and its cause is known from the streams' own record:
    ``never_arrived`` (the stream has no record of it: lost by Redis, e.g. a restart without persistence) or
    ``removed_unhandled`` (the stream took it, then it left without a result: trimmed or deleted)."""
    sent = {k.split(":", 1)[1]: int(v) for k, v in run.items() if k.startswith("published:")}
    scored, dead_seen, waiting = defaultdict(set), defaultdict(set), defaultdict(set)
    for r in results:
        scored[r.camera].add(r.seq)
    for d in dead:
        cam, seq = _dead_key(d)
        dead_seen[cam].add(seq)
    for cam, seq in queued:
        waiting[cam].add(seq)
    per_camera, causes = {}, Counter()
    for cam, n in sorted(sent.items()):
        expected = set(range(n))
        lost = expected - scored[cam] - dead_seen[cam] - waiting[cam]
        why = Counter("removed_unhandled" if seq <= accepted.get(cam, -1) else "never_arrived" for seq in lost)
        causes.update(why)
        per_camera[cam] = {"published": n, "scored": len(scored[cam] & expected), "dead_lettered": len(dead_seen[cam] & expected),
                           "queued": len(waiting[cam] & expected), "lost": len(lost), "lost_causes": dict(why),
                           "first_lost": sorted(lost)[:10]}
    foreign = sum(1 for d in dead if _dead_key(d)[0] not in sent)
    totals = {k: sum(c[k] for c in per_camera.values()) for k in ("published", "scored", "dead_lettered", "queued", "lost")}
    return {**totals, "lost_causes": dict(causes), "foreign_dead_letters": foreign if sent else None,
            "per_camera": per_camera}


def _reason(d: dict) -> str:
    reason = d.get("reason", d.get(b"reason", b""))
    text = reason.decode(errors="replace") if isinstance(reason, bytes) else str(reason)
    return text.split(":")[0][:80]


def _arm_summary(results: list[ResultMessage], arm: str) -> dict:
    scored = [r for r in results if r.truth is not None and r.truth.label >= 0 and arm in r.preds]
    hit = [r.preds[arm] == r.truth.label for r in scored]
    # a 95 % interval from a bootstrap over (camera, segment) blocks: frames of one segment are not independent
    cams = {c: i for i, c in enumerate(sorted({r.camera for r in scored}))}
    ci95 = (block_bootstrap({arm: np.array(hit)}, block_ids(np.array([cams[r.camera] for r in scored]),
                                                            np.array([r.truth.segment for r in scored])),
                            rng=np.random.default_rng(0))[arm]["ci95"] if scored else None)
    per_cam, after, per_domain, per_severity = defaultdict(list), defaultdict(list), defaultdict(list), defaultdict(list)
    for r, h in zip(scored, hit):
        per_cam[r.camera].append(h)
        after[_bucket(r.truth.since_shift)].append(h)
        per_domain[r.truth.domain].append(h)
        per_severity[str(r.truth.severity)].append(h)
    order = [_bucket(lo) for lo, _ in BUCKETS]
    return {"frames": len(scored), "accuracy": _acc(hit), "ci95": ci95,
            "per_camera": {c: _acc(v) for c, v in sorted(per_cam.items())},
            "after_shift": {b: _acc(after[b]) for b in order if after[b]},
            "per_domain": {d: _acc(v) for d, v in sorted(per_domain.items())},
            "per_severity": {s: _acc(v) for s, v in sorted(per_severity.items())}}


def parse_results(raw: list[dict]) -> list[ResultMessage]:
    return [ResultMessage.from_fields(f) for f in raw]


def markdown(rep: dict) -> str:
    """Human-readable report."""
    lab = ("accuracy = agreement with the model's prediction on the uncorrupted frame (video: no labels)"
           if rep["label_kind"] == "model" else "accuracy against CIFAR-10 labels. " + CAVEAT)
    lines = [f"# Stream report: {rep.get('scenario')} ({rep['transport']} transport, label order "
             f"{rep.get('labels', 'iid')})", "", lab, "",
             f"Frames published {rep['frames_published']}, with results {rep['frames_with_results']}, "
             f"dead letters {rep['dead_letters']}, lost {rep['missing_results']}"
             + (f" ({', '.join(f'{n} {c}' for c, n in rep['accounting']['lost_causes'].items())})"
                if rep["accounting"]["lost_causes"] else "")
             + f", duplicates {rep['duplicate_results']}.", "",
             f"Latency publish -> result: p50 {rep['latency_ms']['p50']:.0f} ms, p99 {rep['latency_ms']['p99']:.0f} ms; "
             f"throughput {rep['throughput_fps']:.1f} frames/s over {rep['wall_s']:.1f} s.", "", table(rep), ""]
    buckets = sorted({b for a in rep["results"].values() for b in a["after_shift"]}, key=lambda b: int(b.split("-")[0].rstrip("+")))
    if buckets:
        lines += ["## Accuracy by frames since the last shift (%)", "", "| arm | " + " | ".join(buckets) + " |",
                  "|---|" + "---:|" * len(buckets)]
        for arm, a in rep["results"].items():
            lines.append(f"| {arm} | " + " | ".join(_pct(a["after_shift"].get(b)) for b in buckets) + " |")
        lines.append("")
    for key, title in (("per_domain", "corruption"), ("per_severity", "severity (0: clean)")):
        cols = sorted({c for a in rep["results"].values() for c in a.get(key, {})})
        if len(cols) > 1:
            lines += [f"## Accuracy per {title} (%)", "", "| arm | " + " | ".join(cols) + " |", "|---|" + "---:|" * len(cols)]
            for arm, a in rep["results"].items():
                lines.append(f"| {arm} | " + " | ".join(_pct(a[key].get(c)) for c in cols) + " |")
            lines.append("")
    cams = sorted({c for a in rep["results"].values() for c in a["per_camera"]})
    if cams and len(cams) <= 16:
        lines += ["## Accuracy per camera (%)", "", "| arm | " + " | ".join(cams) + " |", "|---|" + "---:|" * len(cams)]
        for arm, a in rep["results"].items():
            lines.append(f"| {arm} | " + " | ".join(_pct(a["per_camera"].get(c)) for c in cams) + " |")
        lines.append("")
    if rep["dead_letter_reasons"]:
        lines += ["## Dead letters", ""] + [f"- {n} x {r}" for r, n in rep["dead_letter_reasons"].items()] + [""]
    lines += ["Plots: accuracy_over_time.png, accuracy_per_arm.png."]
    return "\n".join(lines) + "\n"


def _pct(v) -> str:
    return "-" if v is None else f"{100 * v:.1f}"


def table(rep: dict) -> str:
    """The per-arm table printed at the end of a run."""
    lines = ["| arm | frames | accuracy % | 95 % interval | detection % |", "|---|---:|---:|---:|---:|"]
    for arm, a in rep["results"].items():
        det = rep["detection"].get(arm, {}).get("accuracy")
        ci = a.get("ci95")
        span = f"{_pct(ci[0])} to {_pct(ci[1])}" if ci else "-"
        lines.append(f"| {arm} | {a['frames']} | {_pct(a['accuracy'])} | {span} | {_pct(det)} |")
    return "\n".join(lines)


def write(rep: dict, results: list[ResultMessage], out: str | Path) -> Path:
    """report.json, report.md and the two PNG plots into ``out``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(json.dumps(rep, indent=1))
    (out / "report.md").write_text(markdown(rep))
    plot_accuracy_over_time(results, out / "accuracy_over_time.png")
    plot_per_arm(rep, out / "accuracy_per_arm.png")
    return out / "report.json"
