"""What every worker process does around ``Worker.run``: pick the device, then serve until a signal.

Shared by the scenario worker (``python -m streamer.worker``) and ``dynbn serve``.
"""

from __future__ import annotations

import logging
import signal

import torch

from dynbn.device import resolve_device

from .completion import retrying
from .consumer import RunMismatch, Worker

__all__ = ["resolve_device", "run_worker"]  # resolve_device: dynbn.device's, the one parser of --device

log = logging.getLogger("streamer")


def run_worker(worker: Worker, until_done: bool = False) -> int:
    """Warm up, join the deployment, consume until SIGTERM/SIGINT (or, with until_done, the run's end),
    then drain and release; 0 after a clean stop, 2 when the run in Redis has other partitions. A signal
    while joining still waits for Redis: exit 143 (``Stopped``). The worker's observer, if any, follows
    along: running once joined, draining from the signal on (``/readyz`` 503), stopped at the end."""
    observer = worker.observer

    def stop(*_) -> None:
        worker.stop.set()
        if observer is not None:
            observer.state = "draining"
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, stop)
    worker.warm_up()
    retrying(worker.startup, "worker startup", stop=worker.stop)
    log.info("worker %s ready on %s (arms %s, batch %d, %d partitions, torch threads %d)", worker.name, worker.device,
             ",".join(worker.arms), worker.batch_size, worker.t.partitions, torch.get_num_threads())
    if observer is not None and not worker.stop.is_set():
        observer.state = "running"
    try:
        worker.run(until_done=until_done)
    except RunMismatch as exc:
        log.error("worker %s: %s", worker.name, exc)
        return 2
    finally:
        worker.shutdown()
        if observer is not None:
            observer.state = "stopped"
    return 0
