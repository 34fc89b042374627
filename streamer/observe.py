"""Watching workers while they run: Prometheus metrics, liveness and readiness, each camera's status.

One ``Observer`` per process (``dynbn serve``, ``python -m streamer.worker``, the embedded
run). Its workers call the hooks (``batch`` after each commit, ``reconnected``, ``adopted``)
and set their ``state``; ``streamer.web`` serves what it holds. Metrics live in the
observer's own registry (``prometheus_client``), names start with ``dynbn_`` and carry their
unit; label values come from bounded sets (outcomes, reason classes, the bundle's conditions),
never one per camera: per-camera detail is ``status()``, for the live page.
"""

from __future__ import annotations

import threading
import time
from collections import Counter as TallyCounter
from collections import deque
from dataclasses import dataclass, field

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info

from .wire import Event, ResultMessage

# dead-letter reasons, by class: the first class whose marker is in the reason text
REASON_CLASSES = (("oversized", ("exceeds the limit",)), ("poison", ("times (limit",)), ("arm_failed", ("arm ",)),
                  ("wrong_shape", ("the model takes",)), ("malformed", ("",)))
LATENCY_BUCKETS = (0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
STATES = ("starting", "running", "draining", "stopped")


def reason_class(reason: str) -> str:
    """The bounded class of a dead-letter reason (oversized, poison, arm_failed, wrong_shape, malformed)."""
    return next(name for name, markers in REASON_CLASSES if any(m in reason for m in markers))


@dataclass
class CameraStatus:
    """What the live page shows of one camera."""

    condition: str | None = None
    severity: int | None = None
    since: float | None = None          # when the condition last changed (the worker's clock)
    label: int | None = None
    class_name: str | None = None
    confidence: float | None = None
    frames: int = 0
    seen: deque = field(default_factory=lambda: deque(maxlen=256))       # t_done of recent frames
    latency: deque = field(default_factory=lambda: deque(maxlen=256))    # seconds, publish -> result


class Observer:
    """Metrics and status of this process's workers (see the module docstring)."""

    def __init__(self, conditions: list[str] | None = None) -> None:
        self.registry = CollectorRegistry()
        self.conditions = set(conditions or ()) | {"unknown"}  # label values allowed; others count as "other"
        self.state = "starting"
        self.workers: list = []
        self.cameras: dict[str, CameraStatus] = {}
        self._lock = threading.Lock()
        r = self.registry
        self.frames = Counter("dynbn_frames", "Frames handled, by outcome", ["outcome"], registry=r)
        self.batches = Counter("dynbn_batches", "Batches handled", registry=r)
        self.batch_size = Histogram("dynbn_batch_size_frames", "Frames per batch", buckets=BATCH_BUCKETS, registry=r)
        self.queue = Histogram("dynbn_queue_seconds", "Publish to batch start, per frame", buckets=LATENCY_BUCKETS,
                               registry=r)
        self.compute = Histogram("dynbn_compute_seconds", "Every arm's forward, per batch", buckets=LATENCY_BUCKETS,
                                 registry=r)
        self.latency = Histogram("dynbn_latency_seconds", "Publish to committed result, per frame",
                                 buckets=LATENCY_BUCKETS, registry=r)
        self.dead = Counter("dynbn_dead_letters", "Dead-lettered frames, by reason class", ["reason"], registry=r)
        self.by_condition = Counter("dynbn_frames_by_condition", "Frames by the condition the served arm detected",
                                    ["condition"], registry=r)
        self.changes = Counter("dynbn_condition_changes", "Camera condition changes (events written)", registry=r)
        self.reconnects = Counter("dynbn_redis_reconnects", "Redis connection losses retried", registry=r)
        self.handovers = Counter("dynbn_partitions_adopted", "Partitions taken over (start, rebalance, hand-over)",
                                 registry=r)
        self.owned = Gauge("dynbn_owned_partitions", "Partitions this process's workers own", registry=r)
        self.live = Gauge("dynbn_live_workers", "Workers alive in the deployment (heartbeats)", registry=r)
        self.backlog = Gauge("dynbn_backlog_frames", "Frames not yet acknowledged in the owned partitions", registry=r)
        self.info = Info("dynbn_worker", "Model, bundle, arm, device and name of this process's workers", registry=r)
        self.owned.set_function(lambda: sum(len(w.tokens) for w in self.workers))
        self.live.set_function(lambda: max((w.live for w in self.workers), default=0))
        self.backlog.set_function(self._backlog)

    # -- hooks the workers call ------------------------------------------------------------
    def attach(self, worker, **info: str) -> None:
        """A worker reports here from now on; ``info`` (model, bundle, arm, device) goes to dynbn_worker_info."""
        with self._lock:
            self.workers.append(worker)
            names = ",".join(w.name for w in self.workers)
        self.info.info({**{k: str(v) for k, v in info.items()}, "workers": names})

    def batch(self, results: list[ResultMessage], dead_reasons: list[str], events: list[Event], t_start: float,
              compute_s: float | None) -> None:
        """One committed batch: its results, dead letters (reasons) and events; ``t_start`` when it began."""
        n = len(results) + len(dead_reasons)
        self.batches.inc()
        self.batch_size.observe(n)
        self.frames.labels("result").inc(len(results))
        self.frames.labels("dead_letter").inc(len(dead_reasons))
        if compute_s is not None:
            self.compute.observe(compute_s)
        for reason in dead_reasons:
            self.dead.labels(reason_class(reason)).inc()
        self.changes.inc(len(events))
        conditions = TallyCounter(r.condition if r.condition in self.conditions else "other"
                                  for r in results if r.condition is not None)
        for condition, count in conditions.items():
            self.by_condition.labels(condition).inc(count)
        with self._lock:
            for r in results:
                self.queue.observe(max(0.0, t_start - r.t_pub))
                self.latency.observe(max(0.0, r.t_done - r.t_pub))
                cam = self.cameras.get(r.camera)
                if cam is None:
                    cam = self.cameras[r.camera] = CameraStatus()
                if r.condition != cam.condition:
                    cam.since = r.t_done
                cam.condition, cam.severity = r.condition, r.severity
                cam.label, cam.class_name, cam.confidence = r.label, r.class_name, r.confidence
                cam.frames += 1
                cam.seen.append(r.t_done)
                cam.latency.append(r.t_done - r.t_pub)

    def reconnected(self) -> None:
        self.reconnects.inc()

    def adopted(self) -> None:
        self.handovers.inc()

    # -- what the HTTP endpoints read ------------------------------------------------------
    def live_ok(self) -> bool:
        """Liveness: the process is starting or its worker loops run (not after they stopped)."""
        return self.state != "stopped"

    def ready(self) -> bool:
        """Readiness: loaded, running (not draining), Redis answering and the partitions held."""
        return self.state == "running" and bool(self.workers) and all(w.ready() for w in self.workers)

    def status(self) -> dict:
        """The live page's data: each camera seen by this process's workers, and their counters."""
        now = time.time()
        with self._lock:
            cams = [{"camera": name, "condition": c.condition, "severity": c.severity, "since": c.since,
                     "label": c.label, "class_name": c.class_name, "confidence": c.confidence, "frames": c.frames,
                     "fps": _rate(c.seen, now), "latency_ms": _quantiles(c.latency)}
                    for name, c in sorted(self.cameras.items())]
            counters = {}
            for w in self.workers:
                for k, v in w.counters.items():
                    counters[k] = counters.get(k, 0) + v
        return {"time": now, "state": self.state, "ready": self.ready(), "workers": [w.name for w in self.workers],
                "owned_partitions": sorted(p for w in self.workers for p in w.tokens), "counters": counters,
                "cameras": cams}

    def _backlog(self) -> float:
        try:
            return float(sum(sum(w.t.backlog(sorted(w.tokens))) for w in self.workers if w.tokens))
        except Exception:  # a scrape while Redis is away: no figure rather than a failed scrape
            return float("nan")


def _rate(times: deque, now: float, window_s: float = 10.0) -> float:
    """Frames per second over the last ``window_s`` seconds."""
    recent = [t for t in times if t > now - window_s]
    return len(recent) / window_s


def _quantiles(latency: deque) -> dict | None:
    if not latency:
        return None
    p50, p99 = np.percentile(np.array(latency) * 1000, [50, 99])
    return {"p50": float(p50), "p99": float(p99)}
