"""The simulator service, ``python -m simulator``: settings (``SIM_`` prefix; ``REDIS_URL``) and main()."""

from __future__ import annotations

import logging
import signal
import sys

from pydantic import AliasChoices, Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from dynbn.data import frost_dir
from streamer.completion import retrying
from streamer.keys import DEFAULT_PREFIX, Keys
from streamer.redis_transport import RedisTransport, connect
from streamer.scenario import load, resolve
from streamer.settings import REDIS_URL

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
    max_backlog: int = Field(2000, ge=1, description="undelivered + pending frames before publishing waits")
    maxlen: int = Field(50_000, ge=100, description="MAXLEN ~ of each frame stream; keep >> max_backlog")
    reset: bool = Field(False, description="delete the prefix's keys (a previous run) before publishing")
    log_level: str = "INFO"


def main() -> int:
    """Publish the scenario's frames to Redis, then mark the run done and exit."""
    settings = SimSettings()
    logging.basicConfig(level=settings.log_level, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    scn = load(resolve(settings.scenario))
    if settings.maxlen < 4 * settings.max_backlog:
        raise SystemExit(f"SIM_MAXLEN {settings.maxlen} must be >= 4 x SIM_MAX_BACKLOG {settings.max_backlog}: "
                         "trimming could otherwise drop frames not yet acked")
    client = retrying(lambda: connect(settings.redis_url, 3, settings.redis_ca), "connect")
    transport = RedisTransport(client, Keys(settings.prefix),
                               scn.partitions, settings.maxlen)
    if settings.reset:
        transport.reset()
    pub = Publisher(scn, transport, make_source(scn, settings.data_dir, settings.artifacts),
                    frost_dir=frost_dir(settings.data_dir), max_backlog=settings.max_backlog)
    signal.signal(signal.SIGTERM, lambda *_: pub.stop())
    n = pub.run()
    logging.getLogger("simulator").warning("simulator done: published=%d scenario=%s", n, scn.name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
