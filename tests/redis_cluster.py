"""A private 3-master Redis Cluster for tests: three redis-server processes in cluster mode, joined by
``redis-cli --cluster create``. Never touches the shared server on 6379."""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

import redis

from redis_server import free_port


class RedisCluster:
    """Start/stop a cluster of ``masters`` nodes (no replicas) on free ports of 127.0.0.1."""

    def __init__(self, folder: Path, masters: int = 3) -> None:
        self.folder = Path(folder)
        self.ports = [free_port() for _ in range(masters)]
        self.bus = [free_port() for _ in range(masters)]  # explicit: the default (port + 10000) may not exist
        self.procs: list[subprocess.Popen] = []

    @property
    def url(self) -> str:
        """Any node's URL: clients discover the others (and the slot map) from it."""
        return f"redis://127.0.0.1:{self.ports[0]}/0"

    def start(self) -> "RedisCluster":
        try:
            return self._start()
        except BaseException:
            self.stop()  # no node outlives a failed start
            raise

    def _start(self) -> "RedisCluster":
        binary, cli = shutil.which("redis-server"), shutil.which("redis-cli")
        if binary is None or cli is None:
            raise RuntimeError("redis-server and redis-cli must be installed (apt-get install redis-server)")
        for port, bus in zip(self.ports, self.bus):
            node = self.folder / str(port)
            node.mkdir(parents=True, exist_ok=True)
            self.procs.append(subprocess.Popen(
                [binary, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(node), "--cluster-enabled", "yes",
                 "--cluster-config-file", "nodes.conf", "--cluster-port", str(bus),
                 "--cluster-node-timeout", "2000", "--appendonly", "no",
                 "--save", "", "--protected-mode", "no", "--logfile", str(node / "redis.log")],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        for port in self.ports:
            self._wait(lambda p=port: redis.Redis(port=p, socket_connect_timeout=0.2).ping(), f"node {port}")
        subprocess.run([cli, "--cluster", "create", *[f"127.0.0.1:{p}" for p in self.ports], "--cluster-replicas", "0",
                        "--cluster-yes"], check=True, capture_output=True, timeout=60)
        for port in self.ports:
            self._wait(lambda p=port: redis.Redis(port=p).cluster("info")["cluster_state"] == "ok", f"cluster at {port}")
        return self

    @staticmethod
    def _wait(ready, what: str, timeout_s: float = 20.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                if ready():
                    return
            except (redis.ConnectionError, redis.ResponseError):
                pass
            time.sleep(0.05)
        raise RuntimeError(f"{what} not ready within {timeout_s:.0f} s")

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
        self.procs = []
