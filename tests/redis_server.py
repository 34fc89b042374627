"""A private redis-server for tests: free port, temporary folder, AOF (fsync always by default).

AOF makes a restart keep every acknowledged write (streams, groups, pending entries),
which the restart test relies on; ``aof=False`` keeps nothing on disk (benchmarks that time
the workers, not the disk). Never touches the shared server on 6379.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from pathlib import Path

import redis


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RedisServer:
    """Start/stop/restart one redis-server process on 127.0.0.1:port."""

    def __init__(self, folder: Path, port: int | None = None, fsync: str = "always",
                 password: str | None = None, tls: bool = False, aof: bool = True) -> None:
        self.folder, self.port, self.fsync, self.aof = Path(folder), port or free_port(), fsync, aof
        self.password, self.tls = password, tls
        self.folder.mkdir(parents=True, exist_ok=True)
        self.proc: subprocess.Popen | None = None
        if tls:
            self._certificate()

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"{'rediss' if self.tls else 'redis'}://{auth}127.0.0.1:{self.port}/0"

    @property
    def ca(self) -> str | None:
        return str(self.folder / "cert.pem") if self.tls else None

    def _certificate(self) -> None:
        """A self-signed certificate for 127.0.0.1 (openssl), which is also the clients' CA."""
        subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                        "-keyout", str(self.folder / "key.pem"), "-out", str(self.folder / "cert.pem"),
                        "-subj", "/CN=localhost", "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"],
                       check=True, capture_output=True, timeout=60)

    def _args(self) -> list[str]:
        port = ["--port", str(self.port)]
        if self.tls:
            cert, key = str(self.folder / "cert.pem"), str(self.folder / "key.pem")
            port = ["--port", "0", "--tls-port", str(self.port), "--tls-cert-file", cert, "--tls-key-file", key,
                    "--tls-ca-cert-file", cert, "--tls-auth-clients", "no"]
        return port + (["--requirepass", self.password] if self.password else [])

    def start(self) -> "RedisServer":
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not installed (apt-get install redis-server)")
        self.proc = subprocess.Popen(
            [binary, *self._args(), "--bind", "127.0.0.1", "--dir", str(self.folder),
             "--appendonly", "yes" if self.aof else "no", "--appendfsync", self.fsync, "--save", "", "--protected-mode", "no"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                if self.client().ping():
                    return self
            except redis.ConnectionError:
                time.sleep(0.05)
        raise RuntimeError(f"redis-server did not answer on port {self.port}")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()  # SIGTERM: redis flushes the AOF and exits
            self.proc.wait(10)
        self.proc = None

    def restart(self, down_s: float = 1.0) -> None:
        self.stop()
        time.sleep(down_s)
        self.start()

    def client(self) -> redis.Redis:
        return redis.Redis.from_url(self.url, socket_connect_timeout=0.2, ssl_ca_certs=self.ca) if self.tls \
            else redis.Redis.from_url(self.url, socket_connect_timeout=0.2)
