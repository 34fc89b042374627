"""Weather corruptions: snow, frost, fog and (extra) spatter.

Each takes a uint8 batch (N, H, W, 3), a severity 1..5 and a ``numpy.random.Generator``
and returns uint8 by truncation. ``frost`` also needs ``frost_dir``, the folder holding
frost1.png .. frost5.jpg (``$DYNBN_DATA/frost``).
"""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np

from ._kernels import clipped_zoom, gaussian, to_uint8
from ._kernels import motion_blur as magick_motion_blur

# Only the first five are ever drawn by the reference (index from 0..4); frost6.jpg is unused.
FROST_FILES = ("frost1.png", "frost2.png", "frost3.png", "frost4.jpg", "frost5.jpg")
_frost_cache: dict[str, tuple[np.ndarray, ...]] = {}
_EMBOSS = np.array([[-2, -1, 0], [-1, 1, 1], [0, 1, 2]], dtype=np.float32)


def snow(x: np.ndarray, severity: int, rng: np.random.Generator, **_) -> np.ndarray:
    """Whiten the image, then add a motion-blurred snow layer and its 180-degree rotation."""
    c = ((0.1, 0.2, 1, 0.6, 8, 3, 0.95), (0.1, 0.2, 1, 0.5, 10, 4, 0.9),
         (0.15, 0.3, 1.75, 0.55, 10, 4, 0.9), (0.25, 0.3, 2.25, 0.6, 12, 6, 0.85),
         (0.3, 0.3, 1.25, 0.65, 14, 12, 0.8))[severity - 1]

    x = np.asarray(x, dtype=np.float32) / 255.0
    n, h, w = x.shape[:3]
    layer = clipped_zoom(rng.normal(size=(n, h, w), loc=c[0], scale=c[1]), c[2])
    layer[layer < c[3]] = 0
    layer = (np.clip(layer, 0, 1) * 255).astype(np.uint8)  # the 8-bit grey PNG ImageMagick saw
    angles = rng.uniform(-135, -45, size=n)
    layer = (magick_motion_blur(layer, c[4], c[5], angles) / 255.0)[..., np.newaxis]

    # OpenCV's float RGB->grey, on all images at once as one tall (N*H, W) picture.
    grey = cv2.cvtColor(x.reshape(n * h, w, 3), cv2.COLOR_RGB2GRAY).reshape(n, h, w, 1)
    x = c[6] * x + (1 - c[6]) * np.maximum(x, grey * 1.5 + 0.5)
    return to_uint8(x + layer + np.rot90(layer, k=2, axes=(1, 2)))


def load_frost(frost_dir: str | os.PathLike | None) -> tuple[np.ndarray, ...]:
    """The five frost overlays as RGB uint8, shrunk by 0.2 (bilinear); read once per folder."""
    if frost_dir is None:
        raise ValueError(
            "frost needs frost_dir, the folder holding frost1.png .. frost5.jpg "
            "($DYNBN_DATA/frost): set DYNBN_DATA or run `dynbn data fetch`")
    key = str(Path(frost_dir).expanduser().resolve())
    if key not in _frost_cache:
        overlays = []
        for name in FROST_FILES:
            path = Path(key) / name
            bgr = cv2.imread(str(path), cv2.IMREAD_COLOR) if path.is_file() else None  # alpha dropped
            if bgr is None:
                raise ValueError(
                    f"frost image {path} is missing or cannot be decoded: set DYNBN_DATA to a "
                    f"data directory whose frost/ holds {', '.join(FROST_FILES)}, "
                    f"or run `dynbn data fetch`")
            small = cv2.resize(bgr, (0, 0), fx=0.2, fy=0.2)
            overlays.append(np.ascontiguousarray(small[..., ::-1]))  # BGR -> RGB
        _frost_cache[key] = tuple(overlays)
    return _frost_cache[key]


def frost(x: np.ndarray, severity: int, rng: np.random.Generator,
          frost_dir: str | os.PathLike | None = None, **_) -> np.ndarray:
    """Blend a random crop of a random frost photo into the image on the 0..255 scale."""
    c = ((1, 0.2), (1, 0.3), (0.9, 0.4), (0.85, 0.4), (0.75, 0.45))[severity - 1]

    overlays = load_frost(frost_dir)
    n, h, w = x.shape[:3]
    heights = np.array([o.shape[0] for o in overlays])
    widths = np.array([o.shape[1] for o in overlays])
    if h >= heights.min() or w >= widths.min():
        raise ValueError(
            f"frost supports images up to {heights.min() - 1}x{widths.min() - 1} (H x W), the "
            f"shrunk overlays' size less one; got {h}x{w}")
    which = rng.integers(len(overlays), size=n)
    # Crop corners from [0, size - H) and [0, size - W): the reference's exclusive bound.
    tops = rng.integers(0, heights[which] - h)
    lefts = rng.integers(0, widths[which] - w)
    crops = np.empty_like(x)
    for i, (k, top, left) in enumerate(zip(which, tops, lefts)):
        crops[i] = overlays[k][top:top + h, left:left + w]
    return np.clip(c[0] * x + c[1] * crops, 0, 255).astype(np.uint8)


def plasma_fractal(n: int, mapsize: int, wibble_decay: float, rng: np.random.Generator) -> np.ndarray:
    """Diamond-square height maps, (n, mapsize, mapsize) in [0, 1], one per image.

    Every new point is a quarter of the sum of its four parents (the map wraps around)
    plus wibble * U(-wibble, wibble); wibble starts at 100 and shrinks by wibble_decay per octave.
    """
    assert mapsize & (mapsize - 1) == 0, "mapsize must be a power of two"
    m = np.empty((n, mapsize, mapsize))
    m[:, 0, 0] = 0
    step, wibble = mapsize, 100.0
    while step >= 2:
        half = step // 2
        corners = m[:, ::step, ::step]
        around = corners + np.roll(corners, -1, axis=1)
        around = around + np.roll(around, -1, axis=2)
        m[:, half::step, half::step] = around / 4 + wibble * rng.uniform(-wibble, wibble, around.shape)
        centres = m[:, half::step, half::step]
        # Points between two corners on a row, then between two corners on a column.
        around = centres + np.roll(centres, 1, axis=1) + (corners + np.roll(corners, -1, axis=2))
        m[:, ::step, half::step] = around / 4 + wibble * rng.uniform(-wibble, wibble, around.shape)
        around = centres + np.roll(centres, 1, axis=2) + (corners + np.roll(corners, -1, axis=1))
        m[:, half::step, ::step] = around / 4 + wibble * rng.uniform(-wibble, wibble, around.shape)
        step //= 2
        wibble /= wibble_decay
    m -= m.min(axis=(1, 2), keepdims=True)
    return m / m.max(axis=(1, 2), keepdims=True)


def fog(x: np.ndarray, severity: int, rng: np.random.Generator, **_) -> np.ndarray:
    """Add a plasma-fractal haze (same on all channels), then rescale by max/(max + strength)."""
    c = ((0.2, 3), (0.5, 3), (0.75, 2.5), (1, 2), (1.5, 1.75))[severity - 1]

    x = x / 255.0
    n, h, w = x.shape[:3]
    max_val = x.max(axis=(1, 2, 3), keepdims=True)
    mapsize = 1 << max(1, (max(h, w) - 1).bit_length())  # smallest power of two >= H, W: 32 for CIFAR
    x += c[0] * plasma_fractal(n, mapsize, c[1], rng)[:, :h, :w, np.newaxis]
    return to_uint8(x * max_val / (max_val + c[0]))


def spatter(x: np.ndarray, severity: int, rng: np.random.Generator, **_) -> np.ndarray:
    """Water drops (severities 1-3) or mud (4-5) from a thresholded smooth noise layer."""
    c = ((0.62, 0.1, 0.7, 0.7, 0.5, 0), (0.65, 0.1, 0.8, 0.7, 0.5, 0),
         (0.65, 0.3, 1, 0.69, 0.5, 0), (0.65, 0.1, 0.7, 0.69, 0.6, 1),
         (0.65, 0.1, 0.5, 0.68, 0.6, 1))[severity - 1]

    x = np.asarray(x, dtype=np.float32) / 255.0
    n, h, w = x.shape[:3]
    liquid = gaussian(rng.normal(size=(n, h, w), loc=c[0], scale=c[1]), c[2])
    liquid[liquid < c[3]] = 0
    if c[5] == 0:
        return _water(x, liquid, c[4])
    return _mud(x, liquid, c[3], c[4])


def _water_shading(layer_u8: np.ndarray) -> np.ndarray:
    """Embossed, equalised distance-to-edge map of one 8-bit liquid layer (float32)."""
    dist = cv2.distanceTransform(255 - cv2.Canny(layer_u8, 50, 150), cv2.DIST_L2, 5)
    _, dist = cv2.threshold(dist, 20, 20, cv2.THRESH_TRUNC)
    dist = cv2.equalizeHist(cv2.blur(dist, (3, 3)).astype(np.uint8))
    dist = cv2.filter2D(dist, cv2.CV_8U, _EMBOSS)
    return cv2.blur(dist, (3, 3)).astype(np.float32)


def _water(x: np.ndarray, liquid: np.ndarray, intensity: float) -> np.ndarray:
    """Add pale turquoise (175, 238, 238) water shaded by the liquid layer."""
    # The reference casts liquid*255 to uint8 unclipped; values above 1 (rare) wrap mod 256
    # as that cast does on x86. Done explicitly so no platform-defined cast is involved.
    layer_u8 = ((liquid * 255).astype(np.int64) & 0xFF).astype(np.uint8)
    shading = np.stack([_water_shading(img) for img in layer_u8])
    m = liquid * shading
    peak = m.max(axis=(1, 2), keepdims=True)
    # A layer with no liquid left would be 0/0 (NaN) in the reference; leave those images clean.
    m = np.divide(m, peak, out=np.zeros_like(m), where=peak > 0) * intensity
    colour = np.array([175, 238, 238]) / 255.0
    return to_uint8(x + m[..., np.newaxis] * colour)


def _mud(x: np.ndarray, liquid: np.ndarray, threshold: float, sigma: float) -> np.ndarray:
    """Cover the image with mud brown (63, 42, 20) where the smoothed liquid mask is >= 0.8."""
    m = gaussian((liquid > threshold).astype(np.float32), sigma)
    m[m < 0.8] = 0
    m = m[..., np.newaxis]
    colour = np.array([63 / 255.0, 42 / 255.0, 20 / 255.0], dtype=np.float32)
    return to_uint8(x * (1 - m) + colour * m)
