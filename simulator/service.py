"""The simulator service, ``python -m simulator``: settings (``SIM_`` prefix; ``REDIS_URL``) and main()."""

from __future__ import annotations

import logging
import signal
import sys

from pydantic import AliasChoices, Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from dynbn.data import frost_dir
from streamer.completion import exit_on_sigterm, retrying, service_connect
from streamer.keys import DEFAULT_PREFIX, Keys
from streamer.connection import TRANSIENT
from streamer.redis_transport import RedisTransport
from streamer.scenario import load, resolve
from streamer.settings import REDIS_URL

from streamer.transport import AlreadyPublished

from .publisher import Publisher
from .sources import make_source


class SimSettings(BaseSettings):
    """``python -m simulator``: publish one scenario to Redis, then exit."""

    model_config = SettingsConfigDict(env_prefix="SIM_")

    redis_url: str = REDIS_URL
    redis_ca: str | None = None
    prefix: str = DEFAULT_PREFIX
    scenario: str = "default"
    artifacts: str | None = None
    data_dir: str | None = Field(None, validation_alias=AliasChoices("DYNBN_DATA", "SIM_DATA_DIR"))
    max_backlog: int = Field(2000, ge=1, description="frames not yet acknowledged by a worker before publishing waits")
    reset: bool = Field(False, description="delete the prefix's keys (a previous run) before publishing")
    log_level: str = "INFO"


def main() -> int:
    """Publish the scenario's frames to Redis, then mark the run done and exit."""
    settings = SimSettings()
    logging.basicConfig(level=settings.log_level, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    exit_on_sigterm()  # until publishing starts: SIGTERM ends the start-up, its retries included (exit 143)
    scn = load(resolve(settings.scenario))
    client = service_connect(settings.redis_url, 3, settings.redis_ca)
    transport = RedisTransport(client, Keys(settings.prefix), scn.partitions)
    if settings.reset:
        retrying(transport.reset, "reset")
    retrying(transport.setup, "setup")  # Publisher.run repeats it (idempotent), retrying on its own
    pub = Publisher(scn, transport, make_source(scn, settings.data_dir, settings.artifacts),
                    frost_dir=frost_dir(settings.data_dir), max_backlog=settings.max_backlog)
    signal.signal(signal.SIGTERM, lambda *_: pub.stop())
    try:
        n = pub.run()
    except AlreadyPublished as exc:
        logging.getLogger("simulator").error("%s", exc)
        return 2
    except TRANSIENT as exc:
        if not pub.stopped:
            raise
        logging.getLogger("simulator").error("stopped while Redis was unavailable (%s): the run is not marked done", exc)
        return 128 + signal.SIGTERM
    logging.getLogger("simulator").warning("simulator done: published=%d scenario=%s", n, scn.name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
