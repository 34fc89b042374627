"""Helpers shared by the streaming tests: a tiny scenario and its (cheaply) fitted artifacts, one-worker
runs, and waits that fail the test after a deadline instead of hanging."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
import torch
import yaml

from simulator.publisher import Publisher
from streamer.arms import build_arms
from streamer.artifacts import load_or_fit
from streamer.consumer import Worker
from streamer.scenario import parse
from streamer.summary import parse_results
from streamer.transport import MemoryTransport

TINY = {
    "name": "tiny", "model": "resnet20", "cameras": 3, "frames_per_camera": 24,
    "schedule": {"kind": "periodic", "period": 8},
    "corruptions": ["clean", "gaussian_noise", "contrast"], "severities": [5],
    "arms": ["source", "dynbn_vote"], "batch": {"size": 16, "max_wait_ms": 20},
    "fit": {"domains": "scenario", "detector_images": 20, "table_images": 32, "epochs": 3,
            "severity_images": 16},
    "partitions": 2, "seed": 0,
}


def tiny(**override):
    """The tiny scenario as a validated Scenario (fit config shared by every test: one fit per session)."""
    return parse({**TINY, **override})


def write_scenario(folder: Path, **override) -> Path:
    path = Path(folder) / f"scenario-{abs(hash(repr(sorted(override.items())))) % 10**8}.yaml"
    path.write_text(yaml.safe_dump({**TINY, **override}))
    return path


def artifacts_root(tmp_path_factory) -> Path:
    """One artifacts folder per test session (load_or_fit fits once, then loads)."""
    return tmp_path_factory.getbasetemp() / "artifacts"


def arms_for(scn, root, data_dir):
    """Fitted (model, detector, table) and fresh arms for a scenario."""
    model, det, table = load_or_fit(scn, root, data_dir, log=lambda *_: None)
    return build_arms(scn.arms, model, table, det, scn.arm_settings)


def consume(scn, env, batch=None, transport=None, **kw):
    """Publish a scenario, consume it with one worker until done; returns (transport, worker).

    ``env`` holds the artifacts ``root``, the ``data_dir`` and the frame ``source``."""
    t = transport or MemoryTransport(scn.partitions)
    Publisher(scn, t, env["source"], max_backlog=10**6).run()
    w = Worker(t, arms_for(scn, env["root"], env["data_dir"]), batch_size=batch or scn.batch.size,
               max_wait_ms=scn.batch.max_wait_ms, **kw)
    w.startup()
    w.run(until_done=True)
    w.shutdown()
    return t, w


def preds(t):
    """(camera, seq) -> every arm's class, of the results a transport holds."""
    return {(r.camera, r.seq): r.preds for r in parse_results(t.results())}


def take(reader, n: int):
    """The first ``n`` items of a (blocking) reader, without asking it for one more."""
    for i, item in enumerate(reader):
        yield item
        if i + 1 >= n:
            return


def wait_until(ready, timeout_s: float, what: str, poll_s: float = 0.02) -> None:
    """Poll ``ready()`` until it is true; fail the test naming ``what`` once ``timeout_s`` has passed."""
    deadline = time.monotonic() + timeout_s
    while not ready():
        if time.monotonic() > deadline:
            pytest.fail(f"gave up after {timeout_s:g} s waiting for {what}")
        time.sleep(poll_s)


def joined(thread: threading.Thread, timeout_s: float) -> None:
    """Join a thread; fail the test if it is still running after ``timeout_s``."""
    thread.join(timeout_s)
    if thread.is_alive():
        pytest.fail(f"thread {thread.name} still running after {timeout_s:g} s")


@pytest.fixture(autouse=True)
def one_torch_thread():
    """Streaming tests run torch on one thread: with two, torch collapses when another process holds a core."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
