"""Noise corruptions: gaussian, shot, impulse and (extra) speckle noise.

Each takes a uint8 batch (N, H, W, 3), a severity 1..5 and a ``numpy.random.Generator``,
works on x = pixel / 255 and returns uint8 by truncation.
"""

from __future__ import annotations

import numpy as np

from ._kernels import to_uint8


def gaussian_noise(x: np.ndarray, severity: int, rng: np.random.Generator, **_) -> np.ndarray:
    """Add i.i.d. normal noise of std c to every pixel and channel."""
    c = (0.04, 0.06, 0.08, 0.09, 0.10)[severity - 1]

    x = x / 255.0
    return to_uint8(x + rng.normal(size=x.shape, scale=c))


def shot_noise(x: np.ndarray, severity: int, rng: np.random.Generator, **_) -> np.ndarray:
    """Replace each value by Poisson(x * c) / c: photon noise with c photons at full scale."""
    c = (500, 250, 100, 75, 50)[severity - 1]

    x = x / 255.0
    return to_uint8(rng.poisson(x * c) / c)


def impulse_noise(x: np.ndarray, severity: int, rng: np.random.Generator, **_) -> np.ndarray:
    """Set a fraction c of all values (each channel on its own) to 0 or 1, half each."""
    c = (0.01, 0.02, 0.03, 0.05, 0.07)[severity - 1]

    x = x / 255.0
    # scikit-image's random_noise(mode="s&p"): a Bernoulli(c) flip mask and a fair salt coin.
    flipped = rng.random(x.shape) < c
    salted = rng.random(x.shape) < 0.5
    x[flipped & salted] = 1.0
    x[flipped & ~salted] = 0.0
    return to_uint8(x)


def speckle_noise(x: np.ndarray, severity: int, rng: np.random.Generator, **_) -> np.ndarray:
    """Multiplicative noise: x + x * N(0, c)."""
    c = (0.06, 0.10, 0.12, 0.16, 0.20)[severity - 1]

    x = x / 255.0
    return to_uint8(x + x * rng.normal(size=x.shape, scale=c))
