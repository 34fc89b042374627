"""Digital and colour corruptions: brightness, contrast, elastic transform, pixelate, JPEG,
and (extra) saturate.

Each takes a uint8 batch (N, H, W, 3), a severity 1..5 and a ``numpy.random.Generator``
and returns uint8 by truncation (pixelate and JPEG: Pillow's own uint8 output).
"""

from __future__ import annotations

import io

import cv2
import numpy as np
from PIL import Image
from scipy.ndimage import map_coordinates

from ._kernels import gaussian, hsv_to_rgb, rgb_to_hsv, to_uint8

# The CIFAR script's IMSIZE: elastic constants are this many pixels times a fraction, and
# stay in pixels for other image sizes.
_ELASTIC_SIZE = 32


def brightness(x: np.ndarray, severity: int, rng: np.random.Generator, **_) -> np.ndarray:
    """Add c to the HSV value channel."""
    c = (0.05, 0.10, 0.15, 0.20, 0.30)[severity - 1]

    hsv = rgb_to_hsv(x / 255.0)
    hsv[..., 2] = np.clip(hsv[..., 2] + c, 0, 1)
    return to_uint8(hsv_to_rgb(hsv))


def contrast(x: np.ndarray, severity: int, rng: np.random.Generator, **_) -> np.ndarray:
    """Scale every channel's deviation from its per-image mean by c."""
    c = (0.75, 0.50, 0.40, 0.30, 0.15)[severity - 1]

    x = x / 255.0
    means = np.mean(x, axis=(1, 2), keepdims=True)
    return to_uint8((x - means) * c + means)


def saturate(x: np.ndarray, severity: int, rng: np.random.Generator, **_) -> np.ndarray:
    """Set HSV saturation to S * scale + offset (severities 1-2 desaturate, 3-5 oversaturate)."""
    c = ((0.3, 0), (0.1, 0), (1.5, 0), (2, 0.1), (2.5, 0.2))[severity - 1]

    hsv = rgb_to_hsv(x / 255.0)
    hsv[..., 1] = np.clip(hsv[..., 1] * c[0] + c[1], 0, 1)
    return to_uint8(hsv_to_rgb(hsv))


def elastic_transform(x: np.ndarray, severity: int, rng: np.random.Generator, **_) -> np.ndarray:
    """Random affine jitter, then bilinear resampling along a smooth random displacement field."""
    s = _ELASTIC_SIZE
    c = ((s * 0, s * 0, s * 0.08), (s * 0.05, s * 0.2, s * 0.07), (s * 0.08, s * 0.06, s * 0.06),
         (s * 0.1, s * 0.04, s * 0.05), (s * 0.1, s * 0.03, s * 0.03))[severity - 1]

    alpha, sigma, jitter = c
    image = np.asarray(x, dtype=np.float32) / 255.0
    n, h, w = image.shape[:3]
    centre = np.float32((h, w)) // 2
    half = min(h, w) // 3
    src = np.float32([centre + half, [centre[0] + half, centre[1] - half], centre - half])
    dst = src + rng.uniform(-jitter, jitter, size=(n,) + src.shape).astype(np.float32)
    noise = rng.uniform(-1, 1, size=(2, n, h, w))  # dx fields, then dy fields
    dx = (gaussian(noise[0], sigma, mode="reflect", truncate=3) * alpha).astype(np.float32)
    dy = (gaussian(noise[1], sigma, mode="reflect", truncate=3) * alpha).astype(np.float32)
    rows, cols, chans = np.meshgrid(np.arange(h), np.arange(w), np.arange(3), indexing="ij")
    out = np.empty_like(image)
    # Per image: OpenCV's warp and SciPy's resampler are cheap at 32x32, and calling them as
    # the reference does keeps their exact interpolation and border rules.
    for i in range(n):
        matrix = cv2.getAffineTransform(src, dst[i])
        warped = cv2.warpAffine(image[i], matrix, (w, h), borderMode=cv2.BORDER_REFLECT_101)
        coords = (rows + dy[i, :, :, None], cols + dx[i, :, :, None], chans)
        out[i] = map_coordinates(warped, coords, order=1, mode="reflect")
    return to_uint8(out)


def pixelate(x: np.ndarray, severity: int, rng: np.random.Generator, **_) -> np.ndarray:
    """Pillow BOX resize down by c (30/28/27/24/20 px for 32) and BOX back up."""
    c = (0.95, 0.90, 0.85, 0.75, 0.65)[severity - 1]

    n, h, w = x.shape[:3]
    small = (int(w * c), int(h * c))
    out = np.empty_like(x)
    for i, img in enumerate(x):
        pil = Image.fromarray(img).resize(small, Image.Resampling.BOX)
        out[i] = np.asarray(pil.resize((w, h), Image.Resampling.BOX))
    return out


def jpeg_compression(x: np.ndarray, severity: int, rng: np.random.Generator, **_) -> np.ndarray:
    """Pillow JPEG encode and decode at quality c (Pillow's default chroma subsampling)."""
    c = (80, 65, 58, 50, 40)[severity - 1]

    out = np.empty_like(x)
    for i, img in enumerate(x):
        buffer = io.BytesIO()
        Image.fromarray(img).save(buffer, "JPEG", quality=c)
        buffer.seek(0)
        with Image.open(buffer) as decoded:
            out[i] = np.asarray(decoded.convert("RGB"))
    return out
