"""``dynbn serve``: a long-running worker for a fitted bundle, serving whatever cameras publish.

No scenario and no truth: the worker loads a bundle (``dynbn fit``), builds one arm
(``dynbn_vote`` unless told otherwise) and consumes the deployment's partitions with the
same ``streamer.consumer.Worker`` as the scenario service (leases, hand-over, dead letters,
backoff), until SIGTERM or SIGINT: it then finishes and commits the batch in hand,
releases its partitions and exits 0. Several serve processes, on one machine or several,
share the partitions. Settings: ``ServeSettings`` (``STREAMER_`` environment variables,
``REDIS_URL``), overridden by the command line.
"""

from __future__ import annotations

import logging
from typing import Literal

import torch
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from dynbn.bundle import load_bundle
from dynbn.methods.registry import CLASSES

from .allocator import keep_freed_memory
from .arms import available, build_arms, input_shape
from .client import agree_partitions
from .completion import retrying
from .consumer import Worker
from .lifecycle import resolve_device, run_worker
from .keys import DEFAULT_PREFIX, Keys
from .connection import connect
from .redis_transport import RedisTransport
from .settings import REDIS_URL
from .observe import Observer
from .web import serve_http
from .wire import MAX_PAYLOAD_BYTES

log = logging.getLogger("streamer")


class ServeSettings(BaseSettings):
    """``dynbn serve``: one bundle, one arm, the deployment under ``prefix``."""

    model_config = SettingsConfigDict(env_prefix="STREAMER_")

    bundle: str
    redis_url: str = REDIS_URL
    redis_ca: str | None = None
    prefix: str = DEFAULT_PREFIX
    arm: str = "dynbn_vote"
    device: str = "auto"
    precision: Literal["fp32", "bf16", "fp16"] = Field("fp32", description="the classifier's precision (autocast)")
    batch: int = Field(64, ge=1, le=4096)
    max_wait_ms: int = Field(20, ge=0, le=60_000)
    partitions: int | None = Field(None, ge=1, le=1024, description="None: the deployment's (8 for a new one)")
    retention: int = Field(100_000, ge=0, description="results/events kept per partition, about (0: all)")
    retention_s: float = Field(0.0, ge=0, description="> 0: results/events older than this are deleted too")
    name: str | None = None
    lease_ms: int = Field(5000, ge=200)
    max_deliveries: int = Field(5, ge=1)
    max_payload: int = Field(MAX_PAYLOAD_BYTES, ge=1024)
    max_batch_bytes: int = Field(64 << 20, ge=1 << 16, description="frame bytes one batch holds at most (plus one entry)")
    threads: int = Field(0, ge=0, description="torch threads; 0 keeps torch's default")
    metrics_port: int = Field(9400, ge=0, le=65535, description="/metrics, /healthz, /readyz and the live page; 0: off")


def build_worker(s: ServeSettings, observer: Observer | None = None) -> Worker:
    """Load the bundle, build the arm, connect and agree on the partitions; errors name what is wrong."""
    if s.arm not in available():
        raise ValueError(f"--arm {s.arm!r}: unknown; available: {', '.join(available())}")
    if CLASSES[s.arm].needs_truth:
        raise ValueError(f"--arm {s.arm}: it reads each frame's true corruption, which camera frames do not carry")
    device = resolve_device(s.device)
    bundle = load_bundle(s.bundle)
    arms = build_arms([s.arm], bundle.model, bundle.table, bundle.detector, {}, device)
    r = retrying(lambda: connect(s.redis_url, 0, s.redis_ca), "connect")
    keys = Keys(s.prefix)
    partitions = retrying(lambda: agree_partitions(r, keys, s.partitions), "partitions")
    r.hset(keys.service, mapping={"arm": s.arm, "bundle": f"{bundle.model_spec}@{bundle.manifest['files']['bn_table.safetensors'][:12]}",
                                  "classes": ",".join(bundle.class_names)})
    transport = RedisTransport(r, keys, partitions, retention=s.retention, retention_s=s.retention_s)
    worker = Worker(transport, arms, batch_size=s.batch, max_wait_ms=s.max_wait_ms, name=s.name, lease_ms=s.lease_ms,
                    max_deliveries=s.max_deliveries, max_payload=s.max_payload,
                    max_batch_bytes=s.max_batch_bytes, device=device, precision=s.precision,
                    input_shape=input_shape(bundle.model), class_names=bundle.class_names, observer=observer)
    if observer is not None:
        observer.conditions = set(bundle.domains) | {"unknown"}
        observer.attach(worker, model=bundle.model_spec, bundle=s.bundle, arm=s.arm, device=device, precision=s.precision,
                        partitions=str(partitions), prefix=s.prefix)
    return worker


def serve(s: ServeSettings) -> int:
    """Run until SIGTERM/SIGINT; 0 after a clean drain."""
    if s.threads:
        torch.set_num_threads(s.threads)
    keep_freed_memory()
    observer = Observer()
    if s.metrics_port:
        serve_http(observer, s.metrics_port)  # first: /readyz says 503 while the bundle loads
    worker = build_worker(s, observer)
    log.info("serving %s with %s (max wait %d ms)", s.bundle, s.arm, s.max_wait_ms)
    return run_worker(worker)
