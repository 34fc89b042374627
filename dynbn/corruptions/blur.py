"""Blur corruptions: defocus, glass, motion, zoom and (extra) gaussian blur.

Each takes a uint8 batch (N, H, W, 3), a severity 1..5 and a ``numpy.random.Generator``
and returns uint8 by truncation (motion blur: ImageMagick's rounding, see the package docstring).
"""

from __future__ import annotations

import functools

import cv2
import numpy as np

from ._kernels import clipped_zoom, filter2d, gaussian, to_uint8
from ._kernels import motion_blur as magick_motion_blur


@functools.lru_cache(maxsize=8)
def _disk(radius: float, alias_blur: float) -> np.ndarray:
    """Normalised indicator of a disk on a 17x17 grid, anti-aliased by a 3x3 Gaussian (float32)."""
    grid = np.arange(-8, 8 + 1)  # every radius in the table is <= 8
    xx, yy = np.meshgrid(grid, grid)
    disk = np.array(xx ** 2 + yy ** 2 <= radius ** 2, dtype=np.float32)
    disk /= np.sum(disk)
    kernel = cv2.GaussianBlur(disk, ksize=(3, 3), sigmaX=alias_blur)
    kernel.setflags(write=False)
    return kernel


def defocus_blur(x: np.ndarray, severity: int, rng: np.random.Generator, **_) -> np.ndarray:
    """Convolve every channel with an anti-aliased disk (OpenCV filter2D, reflect-101 border)."""
    c = ((0.3, 0.4), (0.4, 0.5), (0.5, 0.6), (1, 0.2), (1.5, 0.1))[severity - 1]

    x = x / 255.0
    # The full 17x17 kernel, zeros included: filter2D picks its algorithm (direct or DFT)
    # from the kernel size, and the rounding of that choice decides the uint8 truncation.
    return to_uint8(filter2d(x, _disk(c[0], c[1])))


def glass_blur(x: np.ndarray, severity: int, rng: np.random.Generator, **_) -> np.ndarray:
    """Gaussian blur, copy each pixel from a random up/left neighbour, Gaussian blur again."""
    c = ((0.05, 1, 1), (0.25, 1, 1), (0.4, 1, 1), (0.25, 1, 2), (0.4, 1, 2))[severity - 1]

    sigma, shift, iterations = c
    x = (gaussian(x / 255.0, sigma) * 255).astype(np.uint8)
    n, h, w = x.shape[:3]
    # The reference visits rows h-1 .. shift+1 (descending, columns likewise, inner) and sets
    # pixel (r, q) to the value at (r + dy, q + dx) with dx, dy drawn from [-shift, shift).
    # With shift 1 (every severity) the source is never to the right or below, so it has not
    # been visited yet in this pass: the whole pass is one gather from the pass's input.
    assert shift == 1, "the vectorised pixel shuffle relies on a maximum shift of 1"
    rows = np.arange(h - shift, shift, -1)
    cols = np.arange(w - shift, shift, -1)
    batch = np.arange(n)[:, None, None]
    for _ in range(iterations):
        d = rng.integers(-shift, shift, size=(n, rows.size, cols.size, 2))  # (dx, dy) per visit
        src = x[batch, rows[None, :, None] + d[..., 1], cols[None, None, :] + d[..., 0]]
        x[batch, rows[None, :, None], cols[None, None, :]] = src  # src is a copy: safe
    return to_uint8(gaussian(x / 255.0, sigma))


def motion_blur(x: np.ndarray, severity: int, rng: np.random.Generator, **_) -> np.ndarray:
    """ImageMagick motion blur (radius, sigma) at a random angle in [-45, 45] degrees."""
    c = ((6, 1), (6, 1.5), (6, 2), (8, 2), (9, 2.5))[severity - 1]

    angles = rng.uniform(-45, 45, size=len(x))
    return magick_motion_blur(x, c[0], c[1], angles)


def zoom_blur(x: np.ndarray, severity: int, rng: np.random.Generator, **_) -> np.ndarray:
    """Average the image with centre zooms of itself by factors 1.00, 1.01, ... (1.00 included)."""
    # np.arange's float end point quirk is part of the table: 7, 12, 16, 21, 26 factors.
    c = (np.arange(1, 1.06, 0.01), np.arange(1, 1.11, 0.01), np.arange(1, 1.16, 0.01),
         np.arange(1, 1.21, 0.01), np.arange(1, 1.26, 0.01))[severity - 1]

    x = (x / 255.0).astype(np.float32)
    n, h, w, ch = x.shape
    planes = x.transpose(0, 3, 1, 2).reshape(n * ch, h, w).astype(np.float64)  # (N*3, H, W)
    out = np.zeros(planes.shape, dtype=np.float32)
    for zoom_factor in c:
        # SciPy zooms a float32 image in double and rounds the copy to float32 once.
        out += clipped_zoom(planes, float(zoom_factor)).astype(np.float32)
    out = out.reshape(n, ch, h, w).transpose(0, 2, 3, 1)  # back to (N, H, W, 3)
    return to_uint8((x + out) / (len(c) + 1))


def gaussian_blur(x: np.ndarray, severity: int, rng: np.random.Generator, **_) -> np.ndarray:
    """Gaussian filter of std c pixels on every channel (scikit-image defaults)."""
    c = (0.4, 0.6, 0.7, 0.8, 1.0)[severity - 1]

    return to_uint8(gaussian(x / 255.0, c))
