"""The workers' HTTP port: ``/metrics`` (Prometheus), ``/healthz``, ``/readyz``, ``/status.json`` and the live page.

    server = serve_http(observer, 9400)    # a daemon thread; server.shutdown() stops it

``/healthz`` is 200 while the process starts or its worker loops run; ``/readyz`` 200 only
once the bundle is loaded, Redis answers and the partitions are held, and 503 from the
moment SIGTERM starts the drain (as Triton's ``/v2/health/live`` and ``/v2/health/ready``).
``/`` is a single HTML file (``streamer/page/index.html``) that loads nothing from outside
and refreshes itself from ``/status.json``.
"""

from __future__ import annotations

import json
import logging
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from .observe import Observer

log = logging.getLogger("streamer")
PAGE = Path(__file__).with_name("page") / "index.html"


class PortInUse(OSError):
    """The metrics port is taken (another worker on this host?); the message says how to choose another."""


def serve_http(observer: Observer, port: int, host: str = "0.0.0.0") -> ThreadingHTTPServer:
    """Answer the endpoints for ``observer`` on ``host:port`` from a daemon thread (port 0 here: any free one)."""
    handler = type("Handler", (_Handler,), {"observer": observer})
    try:
        server = ThreadingHTTPServer((host, port), handler)
    except OSError as exc:
        raise PortInUse(f"metrics port {port}: {exc.strerror}; choose another with --metrics-port "
                        "(STREAMER_METRICS_PORT), or 0 to turn the port off") from None
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="http", daemon=True).start()
    log.info("metrics, health and the live page on http://%s:%d/", host, server.server_address[1])
    return server


class _Handler(BaseHTTPRequestHandler):
    observer: Observer

    def do_GET(self) -> None:  # noqa: N802 (the http.server API)
        path = self.path.split("?")[0]
        if path == "/metrics":
            self._send(200, CONTENT_TYPE_LATEST, generate_latest(self.observer.registry))
        elif path == "/healthz":
            ok = self.observer.live_ok()
            self._send(200 if ok else 503, "text/plain", b"ok\n" if ok else b"stopped\n")
        elif path == "/readyz":
            ok = self.observer.ready()
            self._send(200 if ok else 503, "text/plain", b"ready\n" if ok else f"{self.observer.state}\n".encode())
        elif path == "/status.json":
            self._send(200, "application/json", json.dumps(self.observer.status()).encode())
        elif path in ("/", "/index.html"):
            self._send(200, "text/html; charset=utf-8", PAGE.read_bytes())
        else:
            self._send(404, "text/plain", b"not found: try /, /metrics, /healthz, /readyz, /status.json\n")

    def _send(self, code: int, kind: str, body: bytes) -> None:
        self.send_response(code)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:  # scrapes every few seconds: not worth a log line each
        pass
