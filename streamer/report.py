"""The report service, ``python -m streamer.report``: wait for the run to complete, then write its report.

Settings come from the environment (``STREAMER_``, ``REDIS_URL``; see ``streamer.settings``);
what the report holds is ``streamer.summary``.
"""

from __future__ import annotations

import logging
import sys
import time

from .completion import exit_on_sigterm, retrying, service_connect, wait_complete
from .keys import Keys
from .redis_transport import RedisTransport
from .settings import ReportSettings
from .summary import parse_results, summarize, table, write

log = logging.getLogger("streamer")


def main() -> int:
    """Wait for the run to complete, then write the report from the results stream."""
    s = ReportSettings()
    logging.basicConfig(level=s.log_level, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    exit_on_sigterm()  # waiting for a run can take long: SIGTERM ends it at any moment (exit 143)
    transport = RedisTransport(service_connect(s.redis_url, 3, s.redis_ca), Keys(s.prefix), 1)
    born = time.time()
    run = retrying(transport.get_run, "report")
    while "partitions" not in run or (s.run_max_age_s and float(run["started"]) < born - s.run_max_age_s):
        time.sleep(1.0)  # the simulator has not started (this run) yet
        run = retrying(transport.get_run, "report")
    transport.partitions = int(run["partitions"])
    if not wait_complete(transport, s.wait_s, stall_s=s.stall_s):
        log.error("run not complete; reporting what is there (frames still waiting count as queued)")
    results = parse_results(transport.results())
    rep = summarize(results, transport.dead_letters(), transport.get_run(), transport.name, transport.last_seqs(),
                    transport.queued())
    path = write(rep, results, s.out)
    print(table(rep))
    log.warning("report written: %s", path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
