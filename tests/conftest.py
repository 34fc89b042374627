"""Shared fixtures: the data directory (DYNBN_DATA), the real pretrained model, real frames."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

torch.set_num_threads(min(2, torch.get_num_threads()))


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
