"""Shared fixtures: the data directory (DYNBN_DATA), the real pretrained model, real frames."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import settings

from redis_server import RedisServer
from streaming import arms_for, artifacts_root, tiny

from dynbn.bundle import fit_bundle
from dynbn.detector import DetectorConfig
from dynbn.fitting import FitConfig
from simulator.sources import CifarSource

torch.set_num_threads(min(2, torch.get_num_threads()))
# workers and `dynbn serve` started by tests keep their HTTP port off unless a test asks for one: several run at once
os.environ["STREAMER_METRICS_PORT"] = "0"

# Hypothesis: by default (and in CI) the "ci" profile: derandomized, so every run tries the same examples
# and a failure reproduces; bounded examples (tests that set max_examples keep theirs); no database, no
# deadline (2 shared cores make timings noisy). Explore new examples locally with the randomised profile:
#   HYPOTHESIS_PROFILE=random .venv/bin/python -m pytest tests/test_vote.py
# a failure there prints a @reproduce_failure blob that replays it (--hypothesis-seed=N fixes the seed).
settings.register_profile("ci", max_examples=50, derandomize=True, database=None, deadline=None, print_blob=True)
settings.register_profile("random", deadline=None, print_blob=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread for a module: with two, torch slows down many-fold when another process holds a core."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="session")
def data_dir() -> Path:
    root = os.environ.get("DYNBN_DATA")
    if not root:
        pytest.fail("set DYNBN_DATA to the data directory (cifar10/, frost/, models/); .ci/run does this")
    return Path(root)


@pytest.fixture(scope="session")
def test_split(data_dir):
    from dynbn.data import load_cifar10

    return load_cifar10("test", data_dir).subset(512, seed=0)


@pytest.fixture(scope="session")
def train_split(data_dir):
    from dynbn.data import load_cifar10

    return load_cifar10("train", data_dir)


@pytest.fixture()
def resnet20(data_dir):
    from dynbn.models import load_cifar_resnet

    return load_cifar_resnet(20, data_dir)


@pytest.fixture(scope="module")
def resnet20_module(one_thread, data_dir):
    """The real ResNet-20, one per test module, for module-scoped fixtures built on it (tables)."""
    from dynbn.models import load_cifar_resnet

    return load_cifar_resnet(20, data_dir)


@pytest.fixture(scope="session")
def frames(test_split) -> torch.Tensor:
    """256 real test frames as float B x 3 x 32 x 32 in [0, 1]."""
    from dynbn.spectrum import to_tensor

    return to_tensor(test_split.images[:256])


def rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """A private redis-server (free port, AOF) for one test module; never the shared server on 6379."""
    srv = RedisServer(tmp_path_factory.mktemp("redis")).start()
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def env(tmp_path_factory, data_dir):
    """What the streaming tests share: the artifacts root with the tiny scenario fitted once (before any worker
    process starts: they load the cache), the data directory, CIFAR-10 test frames, a scratch folder."""
    root = artifacts_root(tmp_path_factory)
    arms_for(tiny(), root, data_dir)
    return {"root": root, "data_dir": data_dir, "source": CifarSource("test", 0, data_dir),
            "folder": tmp_path_factory.mktemp("stream")}


@pytest.fixture(scope="session")
def bundle(tmp_path_factory, data_dir) -> Path:
    """A small bundle (three domains, a few frames each): fitted in seconds, served like any other."""
    cfg = FitConfig(domains=("clean", "gaussian_noise", "fog"), detector_images=24, table_images=32, severity_images=16,
                    detector=DetectorConfig(epochs=3, seed=0), seed=0)
    out = tmp_path_factory.mktemp("bundle") / "b"
    fit_bundle("resnet20", out, config=cfg, data_dir=data_dir, log=lambda *_: None)
    return out
