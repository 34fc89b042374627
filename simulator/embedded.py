"""One process runs a whole scenario: the simulator's cameras, worker(s) and the report (``dynbn scenario run``).

Without a Redis URL everything goes through ``MemoryTransport`` (no server needed);
with one, the same pieces talk through real Redis streams under a fresh key prefix.
"""

from __future__ import annotations

import sys
import threading
import time
import uuid
from pathlib import Path

import torch

from dynbn.data import CLASSES, frost_dir
from dynbn.device import autocast
from streamer.allocator import keep_freed_memory
from streamer.arms import build_arms, input_shape
from streamer.artifacts import load_or_fit
from streamer.completion import run_complete
from streamer.consumer import Worker
from streamer.keys import Keys
from streamer.lifecycle import resolve_device
from streamer.connection import connect
from streamer.observe import Observer
from streamer.redis_transport import RedisTransport
from streamer.scenario import Scenario
from streamer.summary import parse_results, summarize, table, write
from streamer.transport import MemoryTransport
from streamer.web import serve_http

from .publisher import Publisher
from .sources import make_source


def make_transport(scn: Scenario, redis_url: str | None, prefix: str | None = None):
    """MemoryTransport, or RedisTransport under ``prefix`` (default: a fresh one per run)."""
    if not redis_url:
        return MemoryTransport(scn.partitions)
    return RedisTransport(connect(redis_url, 0), Keys(prefix or f"dynbn:{uuid.uuid4().hex[:8]}"), scn.partitions)


def run_scenario(scn: Scenario, out: str | Path, *, redis_url: str | None = None, artifacts=None, data_dir=None,
                 workers: int = 1, prefix: str | None = None, log=print, timeout_s: float = 3600,
                 max_backlog: int | None = None, serve_page: int = 0, device: str = "auto",
                 precision: str = "fp32") -> dict:
    """Fit (or load) artifacts, publish, consume, report; returns the report dict. ``max_backlog``: frames not
    yet acknowledged before the simulator waits (default: four batches per worker). ``serve_page``: a port for
    the live page, /metrics and the health endpoints while the run lasts (0: none). ``device``: where the
    workers' arms run (``dynbn.device.resolve_device``: auto, cpu, cuda or cuda:N); ``precision``: fp32, bf16 or
    fp16 (``dynbn.device.autocast``)."""
    device = resolve_device(device)  # first: a bad device or precision fails before the fit
    autocast(device, precision)
    keep_freed_memory()  # the workers' forwards share this process's heap with the simulator and the transport
    model, detector, table_ = load_or_fit(scn, artifacts, data_dir, log=log)
    transport = make_transport(scn, redis_url, prefix)
    observer = Observer(scn.domains())
    server = serve_http(observer, serve_page) if serve_page else None
    pool = [_worker(transport, scn, model, table_, detector, device, precision, f"embedded-{i}", observer)
            for i in range(workers)]
    for w in pool:
        observer.attach(w, model=scn.model, scenario=scn.name, arms=",".join(scn.arms), device=device,
                        precision=precision)
    source = make_source(scn, data_dir, artifacts, model)
    # a few batches in flight per worker keep workers busy without queueing the whole run
    # (latency then measures processing, not how far ahead the simulator ran)
    publisher = Publisher(scn, transport, source, frost_dir=frost_dir(data_dir),
                          max_backlog=max_backlog or 4 * scn.batch.size * workers)
    log(f"scenario {scn.name}: {scn.cameras} cameras x {scn.frames_per_camera} frames, arms {', '.join(scn.arms)}, "
        f"{transport.name} transport, {workers} worker(s) on {device}, torch threads {torch.get_num_threads()}")
    threads = [threading.Thread(target=publisher.run, name="simulator", daemon=True)]
    for w in pool:
        w.startup()
        threads.append(threading.Thread(target=w.run, kwargs={"until_done": True}, name=w.name, daemon=True))
    for th in threads:
        th.start()
    observer.state = "running"
    try:
        _progress(transport, scn, threads, timeout_s, log)
    finally:
        publisher.stop()
        for w in pool:
            w.stop.set()
        for th in threads:
            th.join(timeout=30)
        for w in pool:
            w.shutdown()
        observer.state = "stopped"
        if server is not None:
            server.shutdown()
    results = parse_results(transport.results())
    rep = summarize(results, transport.dead_letters(), transport.get_run(), transport.name, transport.last_seqs(),
                    transport.queued())
    rep["torch_threads"], rep["device"], rep["workers_started"] = torch.get_num_threads(), device, workers
    rep["precision"] = precision
    write(rep, results, out)
    transport.close()
    return rep


def _worker(transport, scn: Scenario, model, table, detector, device: str, precision: str, name: str,
            observer: Observer) -> Worker:
    """A worker with its own arms (arms hold per-camera state)."""
    arms = build_arms(scn.arms, model, table, detector, scn.arm_settings, device)
    return Worker(transport, arms, batch_size=scn.batch.size, max_wait_ms=scn.batch.max_wait_ms, name=name,
                  device=device, precision=precision, input_shape=input_shape(model), class_names=list(CLASSES), observer=observer)


def _progress(transport, scn: Scenario, threads, timeout_s: float, log) -> None:
    """Print progress every few seconds until the run is complete (or a thread died, or timeout)."""
    start, last = time.monotonic(), 0.0
    tty = sys.stdout.isatty()
    while time.monotonic() - start < timeout_s:
        if run_complete(transport):
            break
        if not threads[0].is_alive() and transport.get_run().get("done") != "1":
            raise RuntimeError("the simulator thread stopped before publishing everything (see the error above)")
        if not any(th.is_alive() for th in threads[1:]):
            raise RuntimeError("every worker thread stopped before the run completed (see the error above)")
        now = time.monotonic() - start
        if now - last >= (1.0 if tty else 5.0):
            results, dead = transport.counts()
            pub = transport.get_run().get("published", "0")
            line = f"{now:6.0f} s  published {pub}/{scn.total_frames}  results {results}  dead {dead}  ({results / max(now, 1e-9):.0f} frames/s)"
            print("\r" + line, end="", flush=True) if tty else log(line)
            last = now
        time.sleep(0.2)
    else:
        raise TimeoutError(f"scenario did not complete within {timeout_s:.0f} s")
    if tty:
        print()


def print_summary(rep: dict, out: Path, log=print) -> None:
    """The closing lines of ``dynbn scenario run``: the table and where the files are."""
    log("")
    log(table(rep))
    log(f"\nframes {rep['frames_published']}, dead letters {rep['dead_letters']}, missing {rep['missing_results']}, "
        f"latency p50 {rep['latency_ms']['p50']:.0f} ms p99 {rep['latency_ms']['p99']:.0f} ms, "
        f"throughput {rep['throughput_fps']:.1f} frames/s")
    if rep["label_kind"] == "model":
        log("video source: accuracy = agreement with the model's prediction on the uncorrupted frame")
    log(f"report: {out / 'report.md'} (JSON: report.json; plots: accuracy_over_time.png, accuracy_per_arm.png)")
