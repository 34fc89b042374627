"""The worker service, ``python -m streamer.worker``: build the scenario's arms, then consume until SIGTERM.

Settings come from the environment (``STREAMER_``, ``REDIS_URL``; see ``streamer.settings``);
the consume loop itself is ``streamer.consumer.Worker``.
"""

from __future__ import annotations

import logging
import sys

import torch

from dynbn.data import CLASSES

from .allocator import keep_freed_memory
from .arms import build_arms, input_shape
from .artifacts import load_or_fit
from .completion import exit_on_sigterm, service_connect
from .consumer import Worker
from .lifecycle import resolve_device, run_worker
from .keys import Keys
from .redis_transport import RedisTransport
from .observe import Observer
from .scenario import load, resolve
from .settings import StreamerSettings
from .web import PortInUse, serve_http

log = logging.getLogger("streamer")


def main() -> int:
    """Build arms from the scenario, then consume until SIGTERM (or the run is done, if asked)."""
    s = StreamerSettings()
    logging.basicConfig(level=s.log_level, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    exit_on_sigterm()  # fitting, loading and connecting can take a while: SIGTERM ends them (exit 143)
    if s.threads:
        torch.set_num_threads(s.threads)
    if s.keep_freed_memory:
        keep_freed_memory()
    scn = load(resolve(s.scenario))
    try:
        device = resolve_device(s.device)
    except ValueError as exc:
        log.error("STREAMER_DEVICE: %s", exc)
        return 2
    observer = Observer(scn.domains())
    if s.metrics_port:
        try:
            serve_http(observer, s.metrics_port)  # first: /readyz says 503 while the artifacts load or fit
        except PortInUse as exc:
            log.error("%s", exc)
            return 2
    model, detector, table = load_or_fit(scn, s.artifacts, s.data_dir, log=log.info)
    arms = build_arms(scn.arms, model, table, detector, scn.arm_settings, device)
    transport = RedisTransport(service_connect(s.redis_url, 0, s.redis_ca), Keys(s.prefix),
                               scn.partitions)
    worker = Worker(transport, arms, batch_size=scn.batch.size, max_wait_ms=scn.batch.max_wait_ms, name=s.name,
                    lease_ms=s.lease_ms, max_deliveries=s.max_deliveries, max_payload=s.max_payload,
                    max_batch_bytes=s.max_batch_bytes, device=device, precision=s.precision,
                    input_shape=input_shape(model), class_names=list(CLASSES), observer=observer)
    observer.attach(worker, model=scn.model, scenario=scn.name, arms=",".join(scn.arms), device=device,
                    precision=s.precision)
    return run_worker(worker, until_done=s.exit_when_done)


if __name__ == "__main__":
    sys.exit(main())
