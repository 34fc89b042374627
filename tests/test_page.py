"""The live page in a real browser: headless Chromium loads a serving worker's page while three cameras
publish, and the rendered DOM shows every camera's row at its current condition. A screenshot of the page
is kept in test-artifacts/live-page.png (docs/images/live-page.png is a copy of one)."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import urllib.request
import uuid
from pathlib import Path

import numpy as np
import pytest
from redis_server import RedisServer, free_port
from streaming import joined, wait_until

from dynbn import corrupt
from dynbn.data import load_cifar10
from streamer.client import Client

ROOT = Path(__file__).resolve().parent.parent
DYNBN = str(Path(sys.executable).parent / "dynbn")
ARTIFACTS = ROOT / "test-artifacts"
CAMERAS = {"gate": None, "dock": ("fog", 5), "yard": ("gaussian_noise", 5)}  # each camera's steady weather
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


def chromium(*args: str) -> str:
    """Headless Chromium (as root it needs --no-sandbox); returns stdout."""
    if CHROMIUM is None:
        pytest.fail("Chromium is not installed: .ci/run installs it (apt-get install chromium)")
    proc = subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                           "--no-first-run", "--virtual-time-budget=4000", *args],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout


def rows(dom: str) -> dict[str, str]:
    """camera -> the condition its row shows, from the page's rendered DOM."""
    found = re.findall(r'<tr data-camera="([^"]+)"[^>]*>(.*?)</tr>', dom, flags=re.S)
    return {cam: re.search(r'<td class="condition[^"]*">([^<]*)</td>', row).group(1) for cam, row in found}


def test_the_live_page_shows_every_publishing_camera_at_its_condition(bundle, tmp_path):
    server = RedisServer(tmp_path / "redis").start()
    port, prefix = free_port(), f"page{uuid.uuid4().hex[:6]}"
    serve = subprocess.Popen([DYNBN, "serve", "--bundle", str(bundle), "--redis-url", server.url, "--prefix", prefix,
                              "--batch", "16", "--metrics-port", str(port), "--threads", "1"],
                             stdout=open(tmp_path / "serve.log", "w"), stderr=subprocess.STDOUT,
                             env={**os.environ, "PYTHONPATH": str(ROOT)})
    stop = threading.Event()
    images = load_cifar10("test").images[:200]

    def camera(name: str, weather) -> None:
        frames = images if weather is None else corrupt(images, *weather, np.random.default_rng(0))
        client, i = Client(server.url, prefix), 0
        while not stop.wait(0.05):           # 20 frames/s, until the test is done
            client.publish(name, frames[i % len(frames)])
            i += 1
        client.close()

    publishers = [threading.Thread(target=camera, args=item) for item in CAMERAS.items()]
    try:
        for th in publishers:
            th.start()
        status = f"http://127.0.0.1:{port}/status.json"
        wait_until(lambda: len(_status(status).get("cameras", [])) == 3 and
                   all(c["frames"] >= 20 for c in _status(status)["cameras"]), 120, "20 frames of each camera")
        before = {c["camera"]: c["condition"] for c in _status(status)["cameras"]}
        dom = chromium("--dump-dom", f"http://127.0.0.1:{port}/")
        after = {c["camera"]: c["condition"] for c in _status(status)["cameras"]}
        ARTIFACTS.mkdir(exist_ok=True)
        (ARTIFACTS / "live-page.html").write_text(dom)
        chromium("--window-size=1200,360", f"--screenshot={ARTIFACTS / 'live-page.png'}", f"http://127.0.0.1:{port}/")
    finally:
        stop.set()
        for th in publishers:
            joined(th, 10)
        serve.send_signal(signal.SIGTERM)
        serve.wait(30)
        server.stop()
    shown = rows(dom)
    assert set(shown) == set(CAMERAS), dom[-2000:]
    for cam in CAMERAS:
        if before[cam] == after[cam]:  # steady while the browser looked: the page must show it
            assert shown[cam] == before[cam], (cam, shown, before)
    assert sum(before[c] == after[c] for c in CAMERAS) >= 2, (before, after)  # steady weather: not all flickering
    assert (ARTIFACTS / "live-page.png").stat().st_size > 10_000


def _status(url: str) -> dict:
    try:
        with urllib.request.urlopen(url, timeout=5) as reply:
            return json.loads(reply.read())
    except OSError:
        return {}
