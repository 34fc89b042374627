"""Start-up against a Redis that refuses us or is not there yet, as the real entry points meet it.

Credentials and TLS mistakes are permanent: every entry point says which (exit 2) at once instead
of retrying. A Redis that is not up yet is retried with a log line per retry, and SIGTERM ends
those retries. ``dynbn data fetch`` without network names each file it could not download.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import redis
from redis_server import RedisServer, free_port
from streaming import artifacts_root, tiny, write_scenario

from dynbn.bundle import fit_bundle
from dynbn.detector import DetectorConfig
from dynbn.fitting import FitConfig
from streamer.artifacts import load_or_fit

ROOT = Path(__file__).resolve().parent.parent
DYNBN = str(Path(sys.executable).parent / "dynbn")
PASSWORD = "s3cret"


@pytest.fixture(scope="module")
def servers(tmp_path_factory):
    """A plain redis-server with a password and, if this redis-server has TLS, a TLS one (self-signed)."""
    folder = tmp_path_factory.mktemp("startup")
    plain = RedisServer(folder / "plain", password=PASSWORD).start()
    try:
        tls = RedisServer(folder / "tls", tls=True).start()
    except (RuntimeError, OSError, subprocess.CalledProcessError):  # no TLS in this redis-server, or no openssl
        tls = None
    yield plain, tls
    plain.stop()
    if tls:
        tls.stop()


@pytest.fixture(scope="module")
def inputs(tmp_path_factory, data_dir):
    """What the entry points need before they connect: a scenario and its artifacts, a bundle, frames."""
    folder = tmp_path_factory.mktemp("inputs")
    load_or_fit(tiny(), artifacts_root(tmp_path_factory), data_dir, log=lambda *_: None)
    cfg = FitConfig(domains=("clean", "gaussian_noise", "fog"), detector_images=24, table_images=32,
                    severity_images=16, detector=DetectorConfig(epochs=3, seed=0), seed=0)
    fit_bundle("resnet20", folder / "bundle", config=cfg, data_dir=data_dir, log=lambda *_: None)
    np.savez(folder / "frames.npz", images=np.zeros((4, 32, 32, 3), np.uint8))
    return {"scenario": write_scenario(folder), "artifacts": artifacts_root(tmp_path_factory),
            "bundle": folder / "bundle", "frames": folder / "frames.npz", "out": folder / "report"}


def command(entry: str, inputs: dict) -> list[str]:
    """The command line of one entry point; each reads the Redis URL from $REDIS_URL."""
    return {
        "publish": [DYNBN, "publish", str(inputs["frames"]), "--camera", "c1"],
        "results": [DYNBN, "results", "--timeout", "1"],
        "events": [DYNBN, "events", "--timeout", "1"],
        "serve": [DYNBN, "serve", "--bundle", str(inputs["bundle"]), "--device", "cpu", "--threads", "1"],
        "simulator": [sys.executable, "-m", "simulator"],
        "worker": [sys.executable, "-m", "streamer.worker"],
        "report": [sys.executable, "-m", "streamer.report"],
    }[entry]


def environ(url: str, inputs: dict) -> dict:
    keep = {k: v for k, v in os.environ.items() if not k.endswith("REDIS_CA") and k != "REDIS_URL"}
    return {**keep, "PYTHONPATH": str(ROOT), "REDIS_URL": url, "SIM_SCENARIO": str(inputs["scenario"]),
            "STREAMER_SCENARIO": str(inputs["scenario"]), "SIM_ARTIFACTS": str(inputs["artifacts"]),
            "STREAMER_ARTIFACTS": str(inputs["artifacts"]), "STREAMER_OUT": str(inputs["out"]),
            "STREAMER_THREADS": "1"}


def url_for(cause: str, servers) -> str:
    plain, tls = servers
    if tls is None and cause in ("TLS expected", "certificate not trusted"):
        pytest.skip("this redis-server was built without TLS")
    return {
        "wrong password": f"redis://:wrong@127.0.0.1:{plain.port}/0",
        "no password given": f"redis://127.0.0.1:{plain.port}/0",
        "TLS expected": f"redis://127.0.0.1:{tls.port if tls else 0}/0",
        "server does not speak TLS": f"rediss://:{PASSWORD}@127.0.0.1:{plain.port}/0",
        "certificate not trusted": f"rediss://127.0.0.1:{tls.port if tls else 0}/0",  # no CA given
    }[cause]


ENTRY_POINTS = ["publish", "results", "events", "serve", "simulator", "worker", "report"]
CASES = [(entry, "wrong password") for entry in ENTRY_POINTS] + [
    ("results", "no password given"), ("results", "TLS expected"), ("results", "server does not speak TLS"),
    ("results", "certificate not trusted"), ("publish", "no password given"), ("simulator", "TLS expected"),
    ("report", "certificate not trusted")]


@pytest.mark.parametrize(("entry", "cause"), CASES)
def test_a_credential_or_tls_mistake_is_named_and_exits_2_at_once(entry, cause, servers, inputs):
    url = url_for(cause, servers)
    done = subprocess.run(command(entry, inputs), env=environ(url, inputs), cwd=ROOT, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 2, done.stderr[-2000:]
    assert f"error: {cause}" in done.stderr, done.stderr[-2000:]
    assert "Traceback" not in done.stderr and "redis unavailable" not in done.stderr
    assert PASSWORD not in done.stderr  # the URL's password is never echoed


@pytest.mark.parametrize("entry", ["simulator", "serve", "worker"])
def test_sigterm_ends_the_retries_while_redis_is_not_up_yet(entry, inputs):
    """Nothing listens on the port: the service logs a retry, then SIGTERM ends it (exit 143).

    The child starts with SIGTERM ignored, as a container's PID 1 effectively does for a signal it has
    no handler for: only a handler the service installs itself makes SIGTERM work there."""
    proc = subprocess.Popen(command(entry, inputs), env=environ(f"redis://127.0.0.1:{free_port()}/0", inputs),
                            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGTERM, signal.SIG_IGN))
    lines: list[str] = []

    def pump():
        for line in proc.stderr:
            lines.append(line)

    threading.Thread(target=pump, daemon=True).start()
    try:
        deadline = time.monotonic() + 120
        while not any("redis unavailable" in line and "retry" in line for line in lines):
            assert proc.poll() is None and time.monotonic() < deadline, "no retry line: " + "".join(lines)[-2000:]
            time.sleep(0.1)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 143, "".join(lines)[-2000:]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_retrying_stops_when_asked():
    """The worker's wait for Redis while joining ends once its stop event is set (SIGTERM's handler sets it)."""
    from streamer.completion import Stopped, retrying

    stop = threading.Event()
    threading.Timer(0.3, stop.set).start()

    def down():
        raise redis.ConnectionError("Connection refused")

    ended = []

    def wait():
        try:
            retrying(down, "test", attempts=1000, stop=stop)
        except BaseException as exc:  # Stopped is a SystemExit
            ended.append(exc)

    waiting = threading.Thread(target=wait, daemon=True)
    waiting.start()
    waiting.join(30)
    assert ended and isinstance(ended[0], Stopped) and ended[0].code == 143


def test_the_simulator_retries_every_start_up_step(servers, inputs, monkeypatch, caplog):
    """Redis drops away after the connect: reset and setup are retried (a log line each), not a traceback."""
    import simulator.service as service
    from streamer.redis_transport import RedisTransport

    class Flaky(RedisTransport):
        calls: list[str] = []

        def _once(self, name):
            self.calls.append(name)
            if self.calls.count(name) == 1:
                raise redis.ConnectionError("Connection reset by peer")

        def reset(self):
            self._once("reset")
            return super().reset()

        def setup(self):
            self._once("setup")
            return super().setup()

    class Publisher:  # publishing itself is tested elsewhere
        def __init__(self, *args, **kw):
            pass

        def run(self):
            return 0

    plain, _ = servers
    for key, value in environ(plain.url, inputs).items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("SIM_RESET", "true")
    monkeypatch.setattr(service, "RedisTransport", Flaky)
    monkeypatch.setattr(service, "Publisher", Publisher)
    monkeypatch.setattr(service, "make_source", lambda *a, **kw: None)
    handler = signal.getsignal(signal.SIGTERM)
    try:
        with caplog.at_level(logging.WARNING):
            assert service.main() == 0
    finally:
        signal.signal(signal.SIGTERM, handler)
    assert Flaky.calls == ["reset", "reset", "setup", "setup"]
    assert "reset: redis unavailable" in caplog.text and "setup: redis unavailable" in caplog.text


def test_data_fetch_without_network_names_each_file_and_how_to_place_it(tmp_path):
    """Every download goes through a proxy where nothing listens: no network, as far as urllib can tell."""
    dead = f"http://127.0.0.1:{free_port()}"
    env = {k: v for k, v in os.environ.items() if k.lower() != "no_proxy"}
    env.update(http_proxy=dead, https_proxy=dead, HTTP_PROXY=dead, HTTPS_PROXY=dead, PYTHONPATH=str(ROOT))
    done = subprocess.run([DYNBN, "data", "fetch", "--data-dir", str(tmp_path / "data")], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr[-2000:]
    assert "Traceback" not in done.stderr
    assert "error: could not download" in done.stderr
    assert "resnet20-12fca82f.th" in done.stderr and str(tmp_path / "data" / "models" / "resnet20-12fca82f.th") in done.stderr
    assert "cifar-10-python.tar.gz" in done.stderr and "copy the file to the path" in done.stderr
    assert "DYNBN_DATA" in done.stderr
