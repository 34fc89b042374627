"""Entry points of the worker and report services (``python -m streamer.worker``/``streamer.report``)."""

from __future__ import annotations

import logging
import signal
import time

from .keys import Keys
from .settings import ReportSettings, StreamerSettings

log = logging.getLogger("streamer")


def input_shape(model) -> tuple[int, int, int]:
    """The frame shape the model takes (``Normalized.input_size``, 32 for CIFAR models)."""
    size = getattr(model, "input_size", 32)
    return (size, size, 3)


def run_complete(transport) -> bool:
    """The simulator is done and every published frame has a result or a dead letter."""
    run = transport.get_run()
    if run.get("done") != "1":
        return False
    results, dead = transport.counts()
    return results + dead >= int(run.get("published", 0)) and transport.backlog() == (0, 0)


def wait_complete(transport, timeout_s: float, poll_s: float = 0.5, progress=None) -> bool:
    """Block until ``run_complete`` (True) or the timeout (False); transient errors are retried."""
    from .worker import TRANSIENT

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if run_complete(transport):
                return True
            if progress:
                progress()
        except TRANSIENT as exc:
            log.warning("redis unavailable while waiting (%s)", exc)
        time.sleep(poll_s)
    return False


def _retrying(fn, what: str, attempts: int = 60):
    from .worker import TRANSIENT

    for i in range(attempts):
        try:
            return fn()
        except TRANSIENT as exc:
            log.warning("%s: redis unavailable (%s), retry %d", what, exc, i + 1)
            time.sleep(min(0.1 * 2 ** i, 5.0))
    return fn()


def worker_main() -> int:
    """Build arms from the scenario, then consume until SIGTERM (or the run is done, if asked)."""
    import torch

    from dynbn.allocator import keep_freed_memory

    from .arms import build_arms
    from .artifacts import load_or_fit
    from .redis_transport import RedisTransport, connect
    from .scenario import load, resolve
    from .worker import Worker

    s = StreamerSettings()
    logging.basicConfig(level=s.log_level, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    if s.threads:
        torch.set_num_threads(s.threads)
    if s.keep_freed_memory:
        keep_freed_memory()
    scn = load(resolve(s.scenario))
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model, detector, table = load_or_fit(scn, s.artifacts, s.data_dir, log=log.info)
    arms = build_arms(scn.arms, model, table, detector, scn.vote, device)
    transport = RedisTransport(connect(s.redis_url, 0, s.redis_ca), Keys(s.prefix), scn.partitions)
    worker = Worker(transport, arms, batch_size=scn.batch.size, max_wait_ms=scn.batch.max_wait_ms, name=s.name,
                    lease_ms=s.lease_ms, max_deliveries=s.max_deliveries, max_payload=s.max_payload, device=device,
                    input_shape=input_shape(model))
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: worker.stop.set())
    worker.warm_up()
    _retrying(worker.startup, "worker startup")
    log.info("worker %s ready on %s (arms %s, batch %d, torch threads %d)", worker.name, device,
             ",".join(arms), scn.batch.size, torch.get_num_threads())
    try:
        worker.run(until_done=s.exit_when_done)
    finally:
        worker.shutdown()
    return 0


def report_main() -> int:
    """Wait for the run to complete, then write the report from the results stream."""
    from .redis_transport import RedisTransport, connect
    from .report import parse_results, summarize, table, write

    s = ReportSettings()
    logging.basicConfig(level=s.log_level, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    transport = RedisTransport(connect(s.redis_url, 3, s.redis_ca), Keys(s.prefix), 1)
    born = time.time()
    run = _retrying(transport.get_run, "report")
    while "partitions" not in run or (s.run_max_age_s and float(run["started"]) < born - s.run_max_age_s):
        time.sleep(1.0)  # the simulator has not started (this run) yet
        run = _retrying(transport.get_run, "report")
    transport.partitions = int(run["partitions"])
    if not wait_complete(transport, s.wait_s):
        log.error("run not complete after %.0f s; reporting what is there", s.wait_s)
    results = parse_results(transport.results())
    rep = summarize(results, transport.dead_letters(), transport.get_run(), transport.name)
    path = write(rep, results, s.out)
    print(table(rep))
    log.warning("report written: %s", path)
    return 0
