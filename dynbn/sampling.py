"""Corrupted training frames, reproducibly: every draw from a generator seeded with
(seed, purpose, domain, severity), so each piece is independent of the order pieces are built."""

from __future__ import annotations

import numpy as np

from . import corruptions
from .data import Split
from .domains import CLEAN, components


SEVERITIES = (1, 2, 3, 4, 5)


_PURPOSE = {"detector": 1, "table": 2, "test": 3, "tune": 4}


def rng_for(seed: int, purpose: str, domain: str, severity: int) -> np.random.Generator:
    """The generator for one (purpose, domain, severity) piece of work."""
    index = (CLEAN,) + corruptions.ALL
    return np.random.default_rng([seed, _PURPOSE[purpose], index.index(domain), severity])


def draw(rng: np.random.Generator, n: int, k: int) -> np.ndarray:
    """k row indices out of n without replacement; when k > n (a user's small image set), every row
    about equally often (whole permutations): each repeat gets its own random corruption."""
    if k <= n:
        return rng.choice(n, k, replace=False)  # the draw every CIFAR-10 figure was made with
    return np.concatenate([rng.permutation(n) for _ in range(-(-k // n))])[:k]


def apply(images: np.ndarray, domain: str, severity: int, rng: np.random.Generator, frost_dir) -> np.ndarray:
    """Corrupt uint8 frames with one domain at one severity ('clean' returns them unchanged).

    A composed domain ``"a+b"`` applies ``a`` then ``b``, each at ``severity``, from the same generator.
    """
    if domain == CLEAN:
        return images
    for part in components(domain):
        images = corruptions.corrupt(images, part, severity, rng, frost_dir=frost_dir)
    return images


def domain_samples(split: Split, domains, per_severity: int, purpose: str, seed: int, frost_dir):
    """``per_severity`` random frames per domain and severity: (uint8 frames, domain indices, class labels)."""
    frames, domain_idx, labels = [], [], []
    for d, domain in enumerate(domains):
        for s in SEVERITIES:
            rng = rng_for(seed, purpose, domain, s)
            pick = draw(rng, len(split), per_severity)
            frames.append(apply(split.images[pick], domain, s, rng, frost_dir))
            domain_idx.append(np.full(per_severity, d))
            labels.append(split.labels[pick])
    return np.concatenate(frames), np.concatenate(domain_idx), np.concatenate(labels)

