"""When a run is complete, and waiting for it through a Redis that may come and go.

Shared by the report service, the embedded run and the benchmarks: a run is complete once
the simulator marked it done and no frame waits for a worker any more (acknowledged frames
are deleted, so the backlog is everything unhandled). Frames lost on the way do not hold
completion up: the report counts them, per camera, with their cause.
"""

from __future__ import annotations

import itertools
import logging
import signal
import sys
import threading
import time

from .connection import TRANSIENT, RedisSetupError, connect, setup_error

log = logging.getLogger("streamer")


def run_complete(transport) -> bool:
    """The simulator is done and every frame it published was handled (or lost: the report says which)."""
    return transport.get_run().get("done") == "1" and transport.backlog() == (0, 0)


def wait_complete(transport, timeout_s: float, poll_s: float = 0.5, progress=None, stall_s: float | None = None) -> bool:
    """Block until ``run_complete`` (True), the timeout, or (with ``stall_s``) that long without any change in
    what was published, handled or waiting (False: no worker is making progress); transient errors are retried."""
    deadline = time.monotonic() + timeout_s
    seen, since = None, time.monotonic()
    while time.monotonic() < deadline:
        try:
            if run_complete(transport):
                return True
            if progress:
                progress()
            now = (transport.get_run().get("published"), transport.counts(), transport.backlog())
            if now != seen:
                seen, since = now, time.monotonic()
            elif stall_s is not None and time.monotonic() - since > stall_s:
                log.error("no progress for %.0f s (published, handled, waiting: %s)", stall_s, now)
                return False
        except TRANSIENT as exc:
            log.warning("redis unavailable while waiting (%s)", exc)
        time.sleep(poll_s)
    return False


def retrying(fn, what: str, attempts: int = 60, stop: threading.Event | None = None):
    """``fn()``, retried with backoff while Redis is unavailable, a log line per retry (the last try raises).

    A permanent error (``setup_error``: credentials, TLS) raises ``RedisSetupError`` at once, although
    redis-py counts a refused password as a connection error. ``stop`` set (SIGTERM) ends the waiting
    with ``Stopped``.
    """
    for i in itertools.count():
        try:
            return fn()
        except TRANSIENT as exc:
            permanent = setup_error(exc)
            if permanent:
                raise permanent from exc
            if i + 1 >= attempts:
                raise
            log.warning("%s: redis unavailable (%s), retry %d", what, exc, i + 1)
        delay = min(0.1 * 2 ** i, 5.0)
        if stop is None:
            time.sleep(delay)
        elif stop.wait(delay):
            raise Stopped


def service_connect(url: str, retries: int, ca_certs: str | None):
    """A service's first connection (``connect``), retried while Redis is not up yet; a permanent error
    (credentials, TLS) ends the process at once with ``error: ...`` on stderr and exit code 2."""
    try:
        return retrying(lambda: connect(url, retries, ca_certs), "connect")
    except RedisSetupError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


class Stopped(SystemExit):
    """SIGTERM while a service is still starting (waiting to retry included): exit at once, code 143."""

    def __init__(self) -> None:
        super().__init__(128 + signal.SIGTERM)


def exit_on_sigterm() -> None:
    """SIGTERM raises ``Stopped`` until the service installs its own handler. Needed even for a plain exit:
    as a container's PID 1, a process ignores the signals it has no handler for."""
    signal.signal(signal.SIGTERM, _stopped)


def _stopped(*_) -> None:
    raise Stopped
