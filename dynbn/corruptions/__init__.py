"""The 15 CIFAR-10-C corruptions and 4 extras, 5 severities, batched and seeded.

A restatement of hendrycks/robustness ``make_cifar_c.py`` following
``shared/spec/cifar10c-parameters.md``: the same constants, the same order of operations,
float results cast to uint8 by truncation (254.9 -> 254), JPEG and pixelate through Pillow.
Differences from the reference script, all deliberate:

* Randomness comes from the ``numpy.random.Generator`` passed in (never the global RNG),
  one independent draw per image; a batch draws each kind of value for all its images at
  once, so outputs depend on the seed and on the batch, not on the reference's stream.
* Work is vectorised over the batch. Where the reference loops (glass blur's pixel
  shuffle) the loop is replaced by an equivalent gather; see ``blur.glass_blur``.
* scikit-image and ImageMagick are not used. Their pieces are re-implemented here:
  Gaussian filters (scikit-image defaults: ``nearest`` border, truncate 4), RGB<->HSV,
  salt-and-pepper noise (a Bernoulli(c) mask per value, as scikit-image >= 0.19 does; older
  versions salted an exact count of ceil(c * size / 2) positions), and motion blur.
* spatter: an image whose liquid layer vanishes entirely is returned unchanged where the
  reference divides 0 by 0.

Motion blur (``motion_blur`` and the snow layer) versus ImageMagick's ``MotionBlurImage``
(MagickCore/effect.c, called through Wand by the reference). Kept identical: the kernel
width 2*ceil(radius)+1; the weights exp(-j^2 / (2 sigma^2)), j = 0 .. width-1, divided by
their sum, i.e. a ONE-SIDED Gaussian: a pixel averages itself with the pixels ahead of it
along the angle, never behind (the blur is not centred); sample j of pixel (y, x) at
(y + ceil(j*sin(a) - 0.5), x + ceil(j*cos(a) - 0.5)) with a in degrees, y down; pixels
outside the image repeat the nearest edge pixel (ImageMagick's default virtual pixels);
the sum accumulated in double on the 16-bit quantum scale (8-bit value * 257). Differs:
(1) rounding emulates IM6 Q16 without HDRI (round to 16 bit, then to 8 bit as the PNG
writer does); an HDRI build (IM7's default) rounds once, so a rare pixel may differ by one
level; (2) no PNG round trip and no BGR swap (both lossless in the reference); (3) images
with an alpha channel are not supported (ImageMagick weights by alpha; ours are opaque);
(4) not compared against a real ImageMagick binary (none is available here): the tests pin
the kernel, direction and rounding against an independent per-pixel implementation.

Every registry function has the signature ``fn(x, severity, rng, **kw)`` with x a uint8
batch (N, H, W, 3); only ``frost`` reads a keyword (``frost_dir``), and the others accept
and ignore keywords so callers can pass the same ones to all. ``corrupt`` is the checked
entry point. All corruptions take any H x W >= 8; frost needs H <= 62 and W <= 104 (its
shrunk overlays); elastic constants stay in CIFAR pixels for other sizes.
"""

from __future__ import annotations

import os
from typing import Callable

import numpy as np

from .blur import defocus_blur, gaussian_blur, glass_blur, motion_blur, zoom_blur
from .digital import brightness, contrast, elastic_transform, jpeg_compression, pixelate, saturate
from .noise import gaussian_noise, impulse_noise, shot_noise, speckle_noise
from .weather import fog, frost, snow, spatter

__all__ = ["ALL", "BENCHMARK", "EXTRA", "REGISTRY", "SEVERITIES", "corrupt"]

BENCHMARK: tuple[str, ...] = (
    "gaussian_noise", "shot_noise", "impulse_noise", "defocus_blur", "glass_blur",
    "motion_blur", "zoom_blur", "snow", "frost", "fog", "brightness", "contrast",
    "elastic_transform", "pixelate", "jpeg_compression",
)
EXTRA: tuple[str, ...] = ("speckle_noise", "gaussian_blur", "spatter", "saturate")
ALL: tuple[str, ...] = BENCHMARK + EXTRA
SEVERITIES = (1, 2, 3, 4, 5)

REGISTRY: dict[str, Callable[..., np.ndarray]] = {fn.__name__: fn for fn in (
    gaussian_noise, shot_noise, impulse_noise, defocus_blur, glass_blur, motion_blur,
    zoom_blur, snow, frost, fog, brightness, contrast, elastic_transform, pixelate,
    jpeg_compression, speckle_noise, gaussian_blur, spatter, saturate,
)}
assert tuple(REGISTRY) == ALL

MIN_SIDE = 8
# Images per call into a corruption: bounds the float64 temporaries (~25 MB each at
# 32x32) at no cost in speed. Fixed, so a seed always gives the same output.
_CHUNK = 1000


def corrupt(images: np.ndarray, name: str, severity: int, rng: np.random.Generator,
            frost_dir: str | os.PathLike | None = None) -> np.ndarray:
    """Corrupt uint8 RGB images (N, H, W, 3) or one (H, W, 3); returns the same shape, uint8.

    frost_dir: folder with frost1.png .. frost5.jpg (``$DYNBN_DATA/frost``); frost only.
    Raises ValueError naming the bad value for a bad array, name, severity or frost folder,
    TypeError when rng is not a ``numpy.random.Generator``.
    """
    _check(images, name, severity, rng)
    batch = np.ascontiguousarray(images[np.newaxis] if images.ndim == 3 else images)
    fn = REGISTRY[name]
    out = np.empty_like(batch)
    for start in range(0, len(batch), _CHUNK):
        out[start:start + _CHUNK] = fn(batch[start:start + _CHUNK], int(severity), rng, frost_dir=frost_dir)
    return out[0] if images.ndim == 3 else out


def _check(images: object, name: object, severity: object, rng: object) -> None:
    """Raise a ValueError (TypeError for rng) naming the first bad argument."""
    if not isinstance(images, np.ndarray):
        raise ValueError(f"images must be a numpy uint8 array, got {type(images).__name__}")
    if images.dtype != np.uint8:
        raise ValueError(f"images must be uint8 (0..255), got dtype {images.dtype}; "
                         f"convert floats in [0, 1] with (x * 255).astype(np.uint8)")
    if images.ndim not in (3, 4):
        raise ValueError(f"images must be (N, H, W, 3) or (H, W, 3), got ndim {images.ndim} "
                         f"(shape {images.shape})")
    if images.shape[-1] != 3:
        raise ValueError(f"images must have 3 RGB channels last, got {images.shape[-1]} "
                         f"(shape {images.shape})")
    if min(images.shape[-3:-1]) < MIN_SIDE:
        raise ValueError(f"images must be at least {MIN_SIDE}x{MIN_SIDE}, got shape {images.shape}")
    if not isinstance(name, str) or name not in REGISTRY:
        raise ValueError(f"unknown corruption {name!r}; valid names: {', '.join(ALL)}")
    valid_type = isinstance(severity, (int, np.integer)) and not isinstance(severity, bool)
    if not valid_type or severity not in SEVERITIES:
        raise ValueError(f"severity must be one of {SEVERITIES}, got {severity!r}")
    if not isinstance(rng, np.random.Generator):
        raise TypeError(f"rng must be a numpy.random.Generator (np.random.default_rng(seed)), "
                        f"got {type(rng).__name__}")
