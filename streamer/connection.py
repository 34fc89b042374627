"""Connecting to Redis: one server or a Cluster from the same URL, and which failures are worth a retry.

``connect(url)`` asks the server whether it is a cluster node and returns the matching client.
``TRANSIENT`` are the errors of a Redis that is down, restarting or slow: callers retry them.
``setup_error`` names the permanent ones (wrong or missing password, TLS on one side only, a
certificate not trusted) as ``RedisSetupError``, whose message says the cause and the fix:
retrying them cannot help, and redis-py raises a refused password as a ConnectionError.
"""

from __future__ import annotations

import socket
import ssl
from urllib.parse import urlsplit

import redis
from redis.backoff import ExponentialBackoff
from redis.cluster import RedisCluster
from redis.retry import Retry

# what a lost or slow Redis connection raises: retried by the worker, the publisher and the waits
TRANSIENT = (redis.ConnectionError, redis.TimeoutError, ConnectionError, TimeoutError)


def client(url: str, retries: int = 3, ca_certs: str | None = None) -> redis.Redis:
    """A client for one Redis server at a ``redis://`` or ``rediss://`` (TLS) URL, password included in
    the URL; connects on first use. ``retries`` > 0 lets redis-py retry with exponential backoff; the
    worker passes 0 and retries itself, because a silently retried XREADGROUP may have delivered
    entries whose reply was lost (the worker re-claims its pending entries after any error)."""
    return redis.Redis.from_url(url, health_check_interval=15, retry_on_error=[redis.ConnectionError, redis.TimeoutError],
                                **_options(retries, url, ca_certs))


def _options(retries: int, url: str, ca_certs: str | None) -> dict:
    extra = {"ssl_ca_certs": ca_certs} if ca_certs and url.startswith("rediss://") else {}
    return dict(socket_timeout=15, socket_connect_timeout=5, retry=Retry(ExponentialBackoff(cap=2.0, base=0.05), retries),
                **extra)


def connect(url: str, retries: int = 3, ca_certs: str | None = None) -> redis.Redis | RedisCluster:
    """``client(url)``, or a ``RedisCluster`` client when the server is a cluster node (any node's URL will do).

    Asks the server (``INFO cluster``, one try), so the same URL form serves both. Raises
    ``RedisSetupError`` when the server refuses this client for good (see ``setup_error``), and
    one of ``TRANSIENT`` while it does not answer (callers retry).
    """
    try:
        with client(url, 0, ca_certs) as first:
            cluster = int(first.info("cluster").get("cluster_enabled", 0))
    except TRANSIENT as exc:
        permanent = setup_error(exc, url)
        if permanent:
            raise permanent from exc
        raise
    return RedisCluster.from_url(url, **_options(retries, url, ca_certs)) if cluster else client(url, retries, ca_certs)


class RedisSetupError(Exception):
    """Redis refuses this client for good: wrong or missing password, TLS on one side only, a certificate
    not trusted. Retrying cannot help (it is not one of ``TRANSIENT``); the message names the cause and the fix."""


_NO_CREDENTIALS = ("Authentication required", "HELLO must be called")  # NOAUTH replies: no password was sent


def setup_error(exc: BaseException, url: str | None = None) -> RedisSetupError | None:
    """The permanent cause behind a failed command as a ``RedisSetupError``, or None when it may pass.

    redis-py raises a refused password as a ConnectionError, hence this check before any retry. Given
    the ``url`` (a first contact), a server that dropped the connection or never answered is probed in
    the other protocol: that tells a TLS mismatch from a Redis that is not up yet.
    """
    parts = urlsplit(url or "")
    host, port = parts.hostname, parts.port or 6379
    where = f"Redis at {host}:{port}" if host else "Redis"
    if isinstance(exc, redis.AuthenticationError):
        if any(text in str(exc) for text in _NO_CREDENTIALS):
            return RedisSetupError(f"no password given, but {where} requires one: put it in the URL, "
                                   f"{parts.scheme or 'redis'}://:PASSWORD@{host or 'HOST'}:{port}/0")
        return RedisSetupError(f"wrong password: {where} refused the user name or password in the URL ({exc})")
    causes = []
    while exc is not None and len(causes) < 8:
        causes.append(exc)
        exc = exc.__cause__ or exc.__context__
    untrusted = next((c for c in causes if isinstance(c, ssl.SSLCertVerificationError)), None)
    if untrusted:
        return RedisSetupError(f"certificate not trusted: {where} presented a certificate that failed verification "
                               f"({untrusted.verify_message}); give the CA that signed it (STREAMER_REDIS_CA or "
                               "SIM_REDIS_CA) and a host name the certificate is valid for")
    if not host or not isinstance(causes[0], TRANSIENT) or any(
            isinstance(c, (ConnectionRefusedError, socket.gaierror)) for c in causes):
        return None
    if parts.scheme == "redis" and _speaks_tls(host, port):
        return RedisSetupError(f"TLS expected: {where} speaks TLS only; use a rediss:// URL")
    if parts.scheme == "rediss" and _answers_plain(host, port):
        return RedisSetupError(f"server does not speak TLS: {where} answers in plain text; use a redis:// URL "
                               "(or the server's TLS port)")
    return None


def _speaks_tls(host: str, port: int) -> bool:
    """Whether host:port completes a TLS handshake (certificate unchecked: only the protocol matters)."""
    context = ssl.create_default_context()
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    try:
        with socket.create_connection((host, port), timeout=2) as sock, context.wrap_socket(sock):
            return True
    except OSError:
        return False


def _answers_plain(host: str, port: int) -> bool:
    """Whether host:port answers a plain-text PING the way Redis does (``+PONG``, or ``-NOAUTH ...``)."""
    try:
        with socket.create_connection((host, port), timeout=2) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(1) in (b"+", b"-")
    except OSError:
        return False
