"""Batched building blocks shared by the corruptions.

Every kernel takes a batch with the image axes at positions 1 and 2, i.e. (N, H, W) or
(N, H, W, C), and gives each image exactly what the reference's per-image library call
(scikit-image, SciPy, ImageMagick) gives it: the batch axis never mixes images.
"""

from __future__ import annotations

import functools
import math

import cv2
import numpy as np
from scipy import ndimage

# cv2 refuses Mats with more channels than this (CV_CN_MAX: 512 in OpenCV 4, 128 in 5).
_CV_MAX_CHANNELS = 128
# ImageMagick's constant sqrt(2*pi), kept so the kernel rounds as in its C source.
_MAGICK_SQ2PI = 2.50662827463100024161235523934010416269302368164062


def to_uint8(x: np.ndarray) -> np.ndarray:
    """Clip to [0, 1], scale by 255 and truncate (the reference's plain uint8 cast, not rounding)."""
    return (np.clip(x, 0, 1) * 255).astype(np.uint8)


def gaussian(x: np.ndarray, sigma: float, mode: str = "nearest", truncate: float = 4.0) -> np.ndarray:
    """scikit-image ``filters.gaussian`` applied to each image (and channel) of a batch.

    The batch and channel axes get sigma 0, which SciPy skips entirely, so the result is
    bit-identical to filtering one image at a time. Defaults are scikit-image's.
    """
    sigmas = (0.0, sigma, sigma) + (0.0,) * (x.ndim - 3)
    return ndimage.gaussian_filter(x, sigmas, mode=mode, truncate=truncate)


@functools.lru_cache(maxsize=256)
def _zoom_matrix(n: int, z: float) -> np.ndarray:
    """The (n, n) linear map of one axis under the reference's ``clipped_zoom``.

    Centre-crop ceil(n/z) samples, SciPy order-1 zoom (output sample k reads input
    coordinate k*(in-1)/(out-1)), then centre-trim back to n samples.
    """
    crop = int(np.ceil(n / z))
    top = (n - crop) // 2
    out = int(round(crop * z))  # SciPy's output length
    step = (crop - 1) / (out - 1) if out > 1 else 1.0
    trim = (out - n) // 2
    coords = np.arange(out, dtype=np.float64)[trim:trim + n] * step
    lo = np.floor(coords).astype(np.int64)
    frac = coords - lo
    rows = np.arange(n)
    m = np.zeros((n, n))
    m[rows, top + lo] += 1.0 - frac
    m[rows, top + np.minimum(lo + 1, crop - 1)] += frac
    m.setflags(write=False)
    return m


def clipped_zoom(x: np.ndarray, z: float) -> np.ndarray:
    """Centre zoom by z, bilinear, same size out, of every (H, W) plane of x (M, H, W) float64."""
    # Dense 32x32 maps: BLAS does the whole batch faster than gathering the two taps.
    return _zoom_matrix(x.shape[1], z) @ x @ _zoom_matrix(x.shape[2], z).T


def filter2d(x: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """OpenCV ``filter2D`` (reflect-101 border) on every channel of every image of (N, H, W, C)."""
    n, h, w, c = x.shape
    # cv2 filters each channel of a Mat independently, so the batch rides in the channels.
    stacked = x.transpose(1, 2, 0, 3).reshape(h, w, n * c)
    parts = [cv2.filter2D(np.ascontiguousarray(stacked[:, :, i:i + _CV_MAX_CHANNELS]), -1, kernel)
             for i in range(0, n * c, _CV_MAX_CHANNELS)]
    parts = [p.reshape(h, w, -1) for p in parts]  # cv2 drops a channel axis of length 1
    return np.concatenate(parts, axis=2).reshape(h, w, n, c).transpose(2, 0, 1, 3)


def rgb_to_hsv(rgb: np.ndarray) -> np.ndarray:
    """scikit-image ``rgb2hsv`` on (..., 3) floats in [0, 1]."""
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    v = rgb.max(-1)
    delta = v - rgb.min(-1)
    grey = delta == 0
    with np.errstate(invalid="ignore", divide="ignore"):
        s = np.where(grey, 0.0, delta / v)
        # On ties scikit-image lets blue overwrite green overwrite red; keep that order.
        h = np.where(b == v, 4.0 + (r - g) / delta,
                     np.where(g == v, 2.0 + (b - r) / delta, (g - b) / delta))
    h = np.where(grey, 0.0, (h / 6.0) % 1.0)
    return np.stack([h, s, v], axis=-1)


def hsv_to_rgb(hsv: np.ndarray) -> np.ndarray:
    """scikit-image ``hsv2rgb`` on (..., 3) floats."""
    h, s, v = hsv[..., 0], hsv[..., 1], hsv[..., 2]
    sector = np.floor(h * 6)
    f = h * 6 - sector
    p = v * (1 - s)
    q = v * (1 - f * s)
    t = v * (1 - (1 - f) * s)
    sector = sector.astype(np.uint8) % 6
    choices = [np.stack(c, axis=-1) for c in
               ((v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q))]
    return np.choose(sector[..., np.newaxis], choices)


@functools.lru_cache(maxsize=64)
def _motion_kernel(radius: float, sigma: float) -> tuple[float, ...]:
    """ImageMagick's one-sided Gaussian weights w_j, j = 0 .. 2*ceil(radius), summing to 1."""
    width = int(2.0 * math.ceil(radius) + 1.0)  # GetOptimalKernelWidth1D for radius > 0
    weights = [math.exp(-(j * j) / (2.0 * sigma * sigma)) / (_MAGICK_SQ2PI * sigma) for j in range(width)]
    total = 0.0
    for wj in weights:  # sequential sum, as the C loop (Python's sum() compensates)
        total += wj
    return tuple(wj / total for wj in weights)


def motion_offsets(width: int, angles: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """ImageMagick's integer sample offsets (dy, dx), each (N, width), for angles in degrees."""
    rad = np.pi * np.asarray(angles, dtype=np.float64) / 180.0
    px = width * np.array([math.sin(a) for a in rad])  # point.x: drives the row offset
    py = width * np.array([math.cos(a) for a in rad])  # point.y: drives the column offset
    norm = np.hypot(px, py)[:, None]
    j = np.arange(width, dtype=np.float64)[None, :]
    dx = np.ceil(j * py[:, None] / norm - 0.5).astype(np.intp)
    dy = np.ceil(j * px[:, None] / norm - 0.5).astype(np.intp)
    return dy, dx


def motion_blur(u8: np.ndarray, radius: float, sigma: float, angles: np.ndarray) -> np.ndarray:
    """ImageMagick ``MotionBlurImage`` of 8-bit (N, H, W[, C]) images, one angle per image.

    out(y, x) = sum_j w_j * in(y + dy_j, x + dx_j), edge pixels repeated outside the image,
    accumulated in double on ImageMagick's 16-bit scale and quantised as IM6 Q16 does
    (round to 16 bit, then to 8 bit when written as PNG). See the package docstring.
    """
    weights = _motion_kernel(radius, sigma)
    width = len(weights)
    dy, dx = motion_offsets(width, angles)
    n, h, w = u8.shape[:3]
    pad = width - 1
    spec = ((0, 0), (pad, pad), (pad, pad)) + ((0, 0),) * (u8.ndim - 3)
    padded = np.pad(u8, spec, mode="edge")  # EdgeVirtualPixelMethod, ImageMagick's default
    hp, wp = h + 2 * pad, w + 2 * pad
    flat = padded.reshape((n * hp * wp,) + u8.shape[3:])
    # Flat index of each output pixel's own sample; a per-image scalar shifts it by (dy, dx).
    base = (np.arange(n)[:, None, None] * hp + np.arange(h)[None, :, None] + pad) * wp \
        + np.arange(w)[None, None, :] + pad
    acc = np.zeros(u8.shape, dtype=np.float64)
    for j, wj in enumerate(weights):
        shift = (dy[:, j] * wp + dx[:, j])[:, None, None]
        sample = flat[base + shift].astype(np.float64) * 257.0  # 8-bit -> 16-bit quantum
        acc += wj * sample
    quantum = np.floor(np.clip(acc, 0.0, 65535.0) + 0.5).astype(np.int64)  # ClampToQuantum
    return (((quantum + 128) - ((quantum + 128) >> 8)) >> 8).astype(np.uint8)  # ScaleQuantumToChar
