"""Helpers shared by the streaming tests: a tiny scenario and its (cheaply) fitted artifacts."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

from streamer.arms import build_arms
from streamer.artifacts import load_or_fit
from streamer.scenario import parse

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


@pytest.fixture(autouse=True)
def one_torch_thread():
    """Streaming tests run torch on one thread: with two, torch collapses when another process holds a core."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
