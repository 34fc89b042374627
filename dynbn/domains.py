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

# Two corruptions at once ("first+second": ``second`` is applied to the output of ``first``),
# the realistic pairs of `dynbn stream-bench --streams mixtures`: weather or optics first, then the
# sensor's noise or the codec.
MIXTURES = (
    "fog+gaussian_noise", "defocus_blur+jpeg_compression", "snow+shot_noise", "motion_blur+impulse_noise",
    "contrast+gaussian_noise", "zoom_blur+pixelate", "frost+jpeg_compression", "brightness+motion_blur",
)


def components(domain: str) -> tuple[str, ...]:
    """The corruptions a domain name stands for, in order: ``"fog+gaussian_noise"`` -> both."""
    return tuple(domain.split("+"))
