"""Every Redis key (and the consumer-group name) the streaming service uses, in one place.

Frames are sharded over ``partitions`` streams by camera (the simulator: camera index mod
``partitions``; ``partition_of`` hashes a camera id stably), so one worker
at a time owns a camera (see ``streamer.consumer``). All keys share a prefix, so several
runs can use one Redis without seeing each other; ``dynbn scenario run`` makes a fresh
prefix per run, the compose services use the fixed default.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

DEFAULT_PREFIX = "dynbn"
GROUP = "workers"


def partition_of(camera: str, partitions: int) -> int:
    """The frame stream of a camera: a stable hash (crc32, not Python's salted hash)."""
    return zlib.crc32(camera.encode()) % partitions


@dataclass(frozen=True)
class Keys:
    """Key names of one run (one prefix)."""

    prefix: str = DEFAULT_PREFIX

    def frames(self, partition: int) -> str:
        """Stream of frame messages for one partition of the cameras."""
        return f"{self.prefix}:frames:{partition}"

    @property
    def results(self) -> str:
        """Stream of result messages (one entry per frame, every arm's prediction in it)."""
        return f"{self.prefix}:results"

    @property
    def dead(self) -> str:
        """Dead-letter stream: malformed or too-often-delivered frames, with the reason."""
        return f"{self.prefix}:dead"

    @property
    def run(self) -> str:
        """Hash describing the run: scenario name, frames planned/published, done flag."""
        return f"{self.prefix}:run"

    @property
    def members(self) -> str:
        """Sorted set of live workers scored by last heartbeat (ms, Redis clock)."""
        return f"{self.prefix}:workers"

    def lease(self, partition: int) -> str:
        """String key holding the token of the worker that owns a partition (with a TTL)."""
        return f"{self.prefix}:lease:{partition}"

    def state(self, partition: int) -> str:
        """Hash camera -> JSON state of the stateful arms, written with each commit."""
        return f"{self.prefix}:state:{partition}"
