"""Domain names: 'clean' plus one per corruption; a domain is what a BN table entry is keyed by."""

from __future__ import annotations

CLEAN = "clean"
BENCHMARK = (
    "gaussian_noise", "shot_noise", "impulse_noise", "defocus_blur", "glass_blur",
    "motion_blur", "zoom_blur", "snow", "frost", "fog", "brightness", "contrast",
    "elastic_transform", "pixelate", "jpeg_compression",
)
EXTRA = ("speckle_noise", "gaussian_blur", "spatter", "saturate")
DEFAULT_DOMAINS = (CLEAN,) + BENCHMARK
