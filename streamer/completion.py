"""When a run is complete, and waiting for it through a Redis that may come and go.

Shared by the report service, the embedded run and the benchmarks: a run is complete once
the simulator marked it done and every published frame has a result or a dead letter.
"""

from __future__ import annotations

import logging
import time

import redis

from .redis_transport import TRANSIENT

log = logging.getLogger("streamer")


def run_complete(transport) -> bool:
    """The simulator is done and every published frame has a result or a dead letter."""
    run = transport.get_run()
    if run.get("done") != "1":
        return False
    results, dead = transport.counts()
    return results + dead >= int(run.get("published", 0)) and transport.backlog() == (0, 0)


def wait_complete(transport, timeout_s: float, poll_s: float = 0.5, progress=None) -> bool:
    """Block until ``run_complete`` (True) or the timeout (False); transient errors are retried."""
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


def retrying(fn, what: str, attempts: int = 60):
    """``fn()``, retried with backoff while Redis is unavailable (the last try raises); a refused password
    is not retried (redis-py counts it as a connection error)."""
    for i in range(attempts):
        try:
            return fn()
        except redis.AuthenticationError:
            raise
        except TRANSIENT as exc:
            log.warning("%s: redis unavailable (%s), retry %d", what, exc, i + 1)
            time.sleep(min(0.1 * 2 ** i, 5.0))
    return fn()
