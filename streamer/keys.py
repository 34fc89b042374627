"""Every Redis key (and the consumer-group name) the streaming service uses, in one place.

Frames are sharded over ``partitions`` streams by camera, and one worker at a time owns a
partition (see ``streamer.consumer``); which partition a camera uses only has to stay the
same for that camera. ``dynbn publish`` and the client use ``partition_of`` (crc32 of the
camera id: any publisher finds it without asking anyone); the scenario simulator, which
numbers its cameras, puts camera i in partition i mod ``partitions`` (an even spread). All keys share a prefix, so several
runs can use one Redis without seeing each other; ``dynbn scenario run`` makes a fresh
prefix per run, the compose services and ``dynbn serve`` use the fixed default.

Redis Cluster: a worker's commit (one Lua script) touches a partition's frames, results,
dead letters, events, lease and camera state together, so those keys carry the hash tag
``{pN}`` and land in one slot (so do its ``published`` hash, which a publish updates with its frame); the partitions spread over the cluster's nodes. The run,
service and member keys are read or written one at a time.
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

    def _part(self, partition: int, what: str) -> str:
        return f"{self.prefix}:{{p{partition}}}:{what}"

    def frames(self, partition: int) -> str:
        """Stream of frame messages for one partition of the cameras."""
        return self._part(partition, "frames")

    def results(self, partition: int) -> str:
        """Stream of result messages of one partition (one entry per frame)."""
        return self._part(partition, "results")

    def dead(self, partition: int) -> str:
        """Dead-letter stream of one partition: malformed or too-often-delivered frames, with the reason."""
        return self._part(partition, "dead")

    def events(self, partition: int) -> str:
        """Condition changes of the partition's cameras (a camera turned foggy, back to clean, ...)."""
        return self._part(partition, "events")

    def published(self, partition: int) -> str:
        """Hash camera -> seq of its last frame appended to the partition (publishes recognise repeats by it)."""
        return self._part(partition, "published")

    def lease(self, partition: int) -> str:
        """String key holding the token of the worker that owns a partition (with a TTL)."""
        return self._part(partition, "lease")

    def state(self, partition: int) -> str:
        """Hash camera -> JSON state of the stateful arms, written with each commit."""
        return self._part(partition, "state")

    @property
    def run(self) -> str:
        """Hash describing a scenario run: scenario name, frames planned/published, done flag."""
        return f"{self.prefix}:run"

    @property
    def service(self) -> str:
        """Hash describing a served deployment: partitions, bundle, arm (``dynbn serve`` writes it)."""
        return f"{self.prefix}:service"

    @property
    def members(self) -> str:
        """Sorted set of live workers scored by last heartbeat (ms, Redis clock)."""
        return f"{self.prefix}:workers"
