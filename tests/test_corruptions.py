"""Pins the CIFAR-10-C facts of shared/spec/cifar10c-parameters.md on dynbn.corruptions.

Reference checks are written independently of the implementation: per-image library calls
(Pillow, OpenCV, SciPy, colorsys) or plain loops restating the spec, compared exactly.
"""

from __future__ import annotations

import colorsys
import io
import math
import os
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from dynbn.corruptions import ALL, BENCHMARK, EXTRA, REGISTRY, SEVERITIES, corrupt
from dynbn.corruptions.weather import FROST_FILES, load_frost, plasma_fractal

# Corruptions that draw no random numbers: the seed must not matter.
DETERMINISTIC = {"defocus_blur", "zoom_blur", "brightness", "contrast", "pixelate",
                 "jpeg_compression", "gaussian_blur", "saturate"}


def smooth_images(n: int, h: int = 32, w: int = 32, seed: int = 0) -> np.ndarray:
    """Deterministic 'real-ish' uint8 images: smooth colour waves plus one hard-edged box."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
    out = np.empty((n, h, w, 3), dtype=np.uint8)
    for i in range(n):
        freq, phase = rng.uniform(1, 6, size=(3, 2)), rng.uniform(0, 2 * np.pi, size=3)
        img = np.stack([0.5 + 0.35 * np.sin(2 * np.pi * (f[0] * yy + f[1] * xx) + p)
                        for f, p in zip(freq, phase)], axis=-1)
        top, left = rng.integers(0, h // 2), rng.integers(0, w // 2)
        img[top:top + h // 3, left:left + w // 3] = rng.uniform(0.1, 0.9, size=3)
        out[i] = (img * 255).astype(np.uint8)
    return out


def sample_images(n: int) -> np.ndarray:
    """The first n CIFAR-10 test images when DYNBN_DATA is set, else smooth_images(n)."""
    root = os.environ.get("DYNBN_DATA")
    if root and (Path(root) / "cifar10" / "test.npz").is_file():
        return np.load(Path(root) / "cifar10" / "test.npz")["images"][:n]
    return smooth_images(n)


def run(x, name, severity, seed=0, request=None, **kw):
    """corrupt() with a fresh seeded Generator; frost gets $DYNBN_DATA/frost via data_dir."""
    if name == "frost" and "frost_dir" not in kw:
        kw["frost_dir"] = request.getfixturevalue("data_dir") / "frost"
    return corrupt(x, name, severity, np.random.default_rng(seed), **kw)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """Mean over images of the PSNR (dB) between two uint8 batches."""
    mse = ((a.astype(np.float64) - b) ** 2).mean(axis=(1, 2, 3))
    return float(np.mean(10 * np.log10(255.0 ** 2 / np.maximum(mse, 1e-10))))


# ---------------------------------------------------------------- API and generic behaviour

def test_names_follow_the_script_order():
    assert BENCHMARK == ("gaussian_noise", "shot_noise", "impulse_noise", "defocus_blur",
                         "glass_blur", "motion_blur", "zoom_blur", "snow", "frost", "fog",
                         "brightness", "contrast", "elastic_transform", "pixelate",
                         "jpeg_compression")
    assert EXTRA == ("speckle_noise", "gaussian_blur", "spatter", "saturate")
    assert ALL == BENCHMARK + EXTRA and tuple(REGISTRY) == ALL
    assert SEVERITIES == (1, 2, 3, 4, 5)


@pytest.mark.parametrize("name", ALL)
def test_every_severity_returns_changed_uint8_of_same_shape(name, request):
    x = sample_images(6)
    for severity in SEVERITIES:
        y = run(x, name, severity, request=request)
        assert y.dtype == np.uint8 and y.shape == x.shape
        assert (y != x).any(), f"{name} severity {severity} left the images unchanged"
    single = run(x[0], name, 3, request=request)
    assert single.shape == x[0].shape and single.dtype == np.uint8


@pytest.mark.parametrize("name", ALL)
def test_same_seed_same_output_other_seed_differs(name, request):
    x = sample_images(4)
    a, b = run(x, name, 3, seed=1, request=request), run(x, name, 3, seed=1, request=request)
    np.testing.assert_array_equal(a, b)
    c = run(x, name, 3, seed=2, request=request)
    assert (a == c).all() if name in DETERMINISTIC else (a != c).any()


@pytest.mark.parametrize("name", ALL)
def test_other_image_sizes(name, request):
    x = smooth_images(2, h=40, w=48)
    y = run(x, name, 5, request=request)
    assert y.shape == x.shape and y.dtype == np.uint8


def test_input_is_not_modified(request):
    x = sample_images(3)
    before = x.copy()
    for name in ALL:
        run(x, name, 5, request=request)
    np.testing.assert_array_equal(x, before)


# Severity pairs (name, s) for which PSNR(s + 1) > PSNR(s) is expected from the spec's own
# constants, so damage is not asserted to grow there:
#  glass_blur 1->2, 2->3, 4->5: sigma grows while the shuffle stays; blurring before the
#    shuffle makes neighbours alike, so the shuffle's pixel error shrinks more than the blur
#    adds (3->4 is monotone: the second shuffle pass dominates).
#  frost 3->4, 4->5: the image weight drops (0.9, 0.85, 0.75) while the frost weight barely
#    rises (0.4, 0.4, 0.45); the darkening cancels part of the frost's brightening.
#  elastic_transform 1->...->5: the affine jitter shrinks (2.56 .. 0.96 px) and dominates
#    the elastic field at 32x32.
#  saturate 2->3: severities 1-2 desaturate (scale 0.3, 0.1), 3-5 oversaturate (1.5 ..).
NON_MONOTONE = {("glass_blur", 1), ("glass_blur", 2), ("glass_blur", 4), ("frost", 3),
                ("frost", 4), ("saturate", 2)} | {("elastic_transform", s) for s in range(1, 5)}


@pytest.mark.parametrize("name", ALL)
def test_damage_does_not_fall_with_severity(name, request):
    x = sample_images(64)
    scores = [psnr(x, run(x, name, s, request=request)) for s in SEVERITIES]
    for s in SEVERITIES[:-1]:
        if (name, s) not in NON_MONOTONE:
            # 0.1 dB: motion blur 3 and 4 differ only in kernel taps weighing < 1e-9.
            assert scores[s] <= scores[s - 1] + 0.1, f"{name}: PSNR by severity {scores}"


# ---------------------------------------------------------------- bad inputs

@pytest.mark.parametrize("images, fragment", [
    (np.zeros((2, 32, 32, 3), dtype=np.float32), "float32"),
    (np.zeros((32, 32), dtype=np.uint8), "ndim 2"),
    (np.zeros((1, 2, 32, 32, 3), dtype=np.uint8), "ndim 5"),
    (np.zeros((2, 32, 32, 4), dtype=np.uint8), "got 4"),
    (np.zeros((2, 4, 4, 3), dtype=np.uint8), "at least"),
    ([[0, 0, 0]], "list"),
])
def test_bad_images_raise_value_error_naming_the_problem(images, fragment):
    with pytest.raises(ValueError, match=fragment):
        corrupt(images, "contrast", 1, np.random.default_rng(0))


def test_bad_name_severity_rng_raise():
    x = smooth_images(1)
    with pytest.raises(ValueError, match="'fogg'.*valid names: gaussian_noise, shot_noise"):
        corrupt(x, "fogg", 1, np.random.default_rng(0))
    for severity in (0, 6, True, 2.0, "3"):
        with pytest.raises(ValueError, match="severity"):
            corrupt(x, "fog", severity, np.random.default_rng(0))
    with pytest.raises(TypeError, match="Generator"):
        corrupt(x, "fog", 1, 0)


def test_frost_needs_its_images(tmp_path, data_dir):
    x = smooth_images(1)
    with pytest.raises(ValueError, match="DYNBN_DATA"):
        corrupt(x, "frost", 1, np.random.default_rng(0))
    with pytest.raises(ValueError, match=r"frost1\.png.*DYNBN_DATA.*dynbn data fetch"):
        corrupt(x, "frost", 1, np.random.default_rng(0), frost_dir=tmp_path)
    for name in FROST_FILES:
        (tmp_path / name).write_bytes((data_dir / "frost" / name).read_bytes())
    (tmp_path / "frost4.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(ValueError, match=r"frost4\.jpg"):
        corrupt(x, "frost", 1, np.random.default_rng(0), frost_dir=tmp_path)
    with pytest.raises(ValueError, match="up to 62x104"):
        corrupt(smooth_images(1, 64, 64), "frost", 1, np.random.default_rng(0),
                frost_dir=data_dir / "frost")


# ---------------------------------------------------------------- output cast

def test_truncation_not_rounding():
    # Grey 100 has V = 100/255; brightness 1 adds 0.05, i.e. 12.75 levels: 112, not 113.
    grey = np.full((1, 32, 32, 3), 100, dtype=np.uint8)
    assert (corrupt(grey, "brightness", 1, np.random.default_rng(0)) == 112).all()
    # Contrast 1 (c = 0.75) on a 0/255 checkerboard: 255*(0.5 +- 0.375) = 31.875, 223.125.
    board = (np.indices((32, 32)).sum(0) % 2 * 255).astype(np.uint8)[None, ..., None].repeat(3, -1)
    assert set(np.unique(corrupt(board, "contrast", 1, np.random.default_rng(0)))) == {31, 223}


# ---------------------------------------------------------------- noise

def _grey(n=64, value=128):
    return np.full((n, 32, 32, 3), value, dtype=np.uint8)


@pytest.mark.parametrize("severity, std", list(zip(SEVERITIES, (0.04, 0.06, 0.08, 0.09, 0.10))))
def test_gaussian_noise_std(severity, std):
    noise = corrupt(_grey(), "gaussian_noise", severity, np.random.default_rng(0)) / 255.0 - 128 / 255.0
    assert noise.std() == pytest.approx(std, rel=0.03)


@pytest.mark.parametrize("severity, c", list(zip(SEVERITIES, (500, 250, 100, 75, 50))))
def test_shot_noise_is_poisson_over_c(severity, c):
    y = corrupt(_grey(), "shot_noise", severity, np.random.default_rng(0)) / 255.0
    x = 128 / 255.0
    assert y.var() == pytest.approx(x / c, rel=0.05)
    assert y.mean() == pytest.approx(x - 0.5 / 255, abs=0.5 / 255)  # truncation costs half a level


@pytest.mark.parametrize("severity, amount", list(zip(SEVERITIES, (0.01, 0.02, 0.03, 0.05, 0.07))))
def test_impulse_noise_fraction(severity, amount):
    y = corrupt(_grey(), "impulse_noise", severity, np.random.default_rng(0))
    assert set(np.unique(y)) <= {0, 128, 255}
    assert (y != 128).mean() == pytest.approx(amount, rel=0.05)
    assert (y == 255).mean() == pytest.approx(amount / 2, rel=0.1)


@pytest.mark.parametrize("severity, std", list(zip(SEVERITIES, (0.06, 0.10, 0.12, 0.16, 0.20))))
def test_speckle_noise_is_multiplicative(severity, std):
    y = corrupt(_grey(value=100), "speckle_noise", severity, np.random.default_rng(0)) / 255.0
    assert y.std() == pytest.approx(100 / 255.0 * std, rel=0.03)


# ---------------------------------------------------------------- digital / colour

@pytest.mark.parametrize("severity, quality", list(zip(SEVERITIES, (80, 65, 58, 50, 40))))
def test_jpeg_equals_pillow_at_spec_quality(severity, quality):
    x = sample_images(8)
    expected = []
    for img in x:
        buffer = io.BytesIO()
        Image.fromarray(img).save(buffer, "JPEG", quality=quality)
        expected.append(np.asarray(Image.open(io.BytesIO(buffer.getvalue()))))
    np.testing.assert_array_equal(corrupt(x, "jpeg_compression", severity, np.random.default_rng(0)),
                                  np.stack(expected))


@pytest.mark.parametrize("severity, side", list(zip(SEVERITIES, (30, 28, 27, 24, 20))))
def test_pixelate_is_box_down_and_back(severity, side):
    x = sample_images(8)
    expected = [np.asarray(Image.fromarray(img).resize((side, side), Image.BOX).resize((32, 32), Image.BOX))
                for img in x]
    np.testing.assert_array_equal(corrupt(x, "pixelate", severity, np.random.default_rng(0)),
                                  np.stack(expected))


def _via_colorsys(x: np.ndarray, edit) -> tuple[np.ndarray, np.ndarray]:
    """Per-pixel colorsys reference: float result *255 and a mask of values safely off-integer."""
    out = np.empty(x.shape, dtype=np.float64)
    for idx in np.ndindex(x.shape[:-1]):
        h, s, v = colorsys.rgb_to_hsv(*(x[idx] / 255.0))
        out[idx] = colorsys.hsv_to_rgb(*edit(h, s, v))
    scaled = np.clip(out, 0, 1) * 255
    # colorsys rounds differently in the last bits; compare where that cannot flip truncation.
    safe = np.abs(scaled - np.round(scaled)) > 1e-9
    return scaled, safe


@pytest.mark.parametrize("severity, c", list(zip(SEVERITIES, (0.05, 0.10, 0.15, 0.20, 0.30))))
def test_brightness_adds_c_to_hsv_value(severity, c):
    x = sample_images(2)
    expected, safe = _via_colorsys(x, lambda h, s, v: (h, s, min(max(v + c, 0.0), 1.0)))
    y = corrupt(x, "brightness", severity, np.random.default_rng(0))
    assert safe.mean() > 0.5
    np.testing.assert_array_equal(y[safe], expected.astype(np.uint8)[safe])
    assert np.abs(y - expected.astype(int)).max() <= 1


@pytest.mark.parametrize("severity, c", list(zip(SEVERITIES, ((0.3, 0), (0.1, 0), (1.5, 0),
                                                              (2, 0.1), (2.5, 0.2)))))
def test_saturate_scales_hsv_saturation(severity, c):
    x = sample_images(2)
    expected, safe = _via_colorsys(x, lambda h, s, v: (h, min(max(s * c[0] + c[1], 0.0), 1.0), v))
    y = corrupt(x, "saturate", severity, np.random.default_rng(0))
    assert safe.mean() > 0.25  # unchanged V and clipped S land exactly on integers
    np.testing.assert_array_equal(y[safe], expected.astype(np.uint8)[safe])
    assert np.abs(y - expected.astype(int)).max() <= 1


@pytest.mark.parametrize("severity, c", list(zip(SEVERITIES, (0.75, 0.50, 0.40, 0.30, 0.15))))
def test_contrast_formula(severity, c):
    x = np.random.default_rng(severity).integers(0, 256, size=(4, 32, 32, 3), dtype=np.uint8)
    expected = []
    for img in x:
        f = img / 255.0
        means = np.mean(f, axis=(0, 1), keepdims=True)
        expected.append(np.uint8(np.clip((f - means) * c + means, 0, 1) * 255))
    np.testing.assert_array_equal(corrupt(x, "contrast", severity, np.random.default_rng(0)),
                                  np.stack(expected))


# ---------------------------------------------------------------- blur

def _skimage_gaussian(img: np.ndarray, sigma: float) -> np.ndarray:
    """scikit-image filters.gaussian(multichannel) = SciPy with nearest border, truncate 4."""
    return ndimage.gaussian_filter(img, (sigma, sigma, 0), mode="nearest", truncate=4.0)


def test_glass_blur_equals_the_sequential_reference_loop():
    x = sample_images(2)
    for severity in (3, 5):
        sigma, shift, iterations = ((0.4, 1, 1), (0.4, 1, 2))[severity // 4]
        # Replays the implementation's draws: per pass, (dx, dy) for every visited pixel.
        draws = np.random.default_rng(7)
        offsets = [draws.integers(-shift, shift, size=(2, 30, 30, 2)) for _ in range(iterations)]
        expected = []
        for n, img in enumerate(x):
            a = np.uint8(_skimage_gaussian(img / 255.0, sigma) * 255)
            for d in offsets:
                for i, h in enumerate(range(32 - shift, shift, -1)):
                    for j, w in enumerate(range(32 - shift, shift, -1)):
                        dx, dy = d[n, i, j]
                        # The reference's tuple "swap" of two NumPy views: a copy, not a swap.
                        a[h, w], a[h + dy, w + dx] = a[h + dy, w + dx], a[h, w]
            expected.append(np.uint8(np.clip(_skimage_gaussian(a / 255.0, sigma), 0, 1) * 255))
        np.testing.assert_array_equal(corrupt(x, "glass_blur", severity, np.random.default_rng(7)),
                                      np.stack(expected))


def _clipped_zoom(img: np.ndarray, z: float) -> np.ndarray:
    h = img.shape[0]
    ch = int(np.ceil(h / z))
    top = (h - ch) // 2
    img = ndimage.zoom(img[top:top + ch, top:top + ch], (z, z, 1), order=1)
    trim = (img.shape[0] - h) // 2
    return img[trim:trim + h, trim:trim + h]


def test_zoom_blur_equals_scipy_clipped_zooms():
    x = sample_images(3)
    ends = (1.06, 1.11, 1.16, 1.21, 1.26)
    assert [len(np.arange(1, e, 0.01)) for e in ends] == [7, 12, 16, 21, 26]  # spec's counts
    for severity in (2, 5):
        factors = np.arange(1, ends[severity - 1], 0.01)
        expected = []
        for img in x:
            f = (img / 255.0).astype(np.float32)
            acc = np.zeros_like(f)
            for z in factors:
                acc += _clipped_zoom(f, z)
            expected.append(np.uint8(np.clip((f + acc) / (len(factors) + 1), 0, 1) * 255))
        np.testing.assert_array_equal(corrupt(x, "zoom_blur", severity, np.random.default_rng(0)),
                                      np.stack(expected))


@pytest.mark.parametrize("severity", SEVERITIES)
def test_defocus_blur_equals_opencv_per_channel(severity):
    radius, alias = ((0.3, 0.4), (0.4, 0.5), (0.5, 0.6), (1, 0.2), (1.5, 0.1))[severity - 1]
    grid = np.arange(-8, 9)
    xx, yy = np.meshgrid(grid, grid)
    disk = np.array(xx ** 2 + yy ** 2 <= radius ** 2, dtype=np.float32)
    assert disk.sum() == (1, 1, 1, 5, 9)[severity - 1]  # pixels the disk covers
    kernel = cv2.GaussianBlur(disk / disk.sum(), (3, 3), sigmaX=alias)
    x = sample_images(3)
    expected = [np.uint8(np.clip(np.stack([cv2.filter2D(img[..., ch] / 255.0, -1, kernel)
                                           for ch in range(3)], -1), 0, 1) * 255) for img in x]
    np.testing.assert_array_equal(corrupt(x, "defocus_blur", severity, np.random.default_rng(0)),
                                  np.stack(expected))


def _magick_motion_blur(img: np.ndarray, radius: float, sigma: float, angle: float) -> np.ndarray:
    """Per-pixel restatement of ImageMagick 6 Q16 MotionBlurImage for an opaque 8-bit image."""
    width = int(2 * math.ceil(radius) + 1)
    weights = [math.exp(-j * j / (2 * sigma * sigma)) for j in range(width)]
    weights = [wj / math.fsum(weights) for wj in weights]
    a = math.radians(angle)
    steps = [(math.ceil(j * math.sin(a) - 0.5), math.ceil(j * math.cos(a) - 0.5)) for j in range(width)]
    h, w = img.shape[:2]
    out = np.empty_like(img)
    for y in range(h):
        for x in range(w):
            acc = sum(wj * 257.0 * img[min(max(y + dy, 0), h - 1), min(max(x + dx, 0), w - 1)].astype(float)
                      for wj, (dy, dx) in zip(weights, steps))
            quantum = np.floor(np.clip(acc, 0, 65535) + 0.5).astype(int)  # 16-bit pixel
            out[y, x] = np.round(quantum / 257.0)  # 8-bit PNG sample
    return out


def test_motion_blur_matches_a_per_pixel_imagemagick_restatement():
    from dynbn.corruptions._kernels import motion_blur

    x = sample_images(2)
    angles = np.array([-37.3, 12.9])
    got = motion_blur(x, 9, 2.5, angles)
    for img, angle, out in zip(x, angles, got):
        diff = np.abs(out.astype(int) - _magick_motion_blur(img, 9, 2.5, angle))
        assert diff.max() <= 1 and (diff > 0).mean() < 0.002  # sums in another order


def test_motion_blur_is_one_sided_along_the_angle():
    from dynbn.corruptions._kernels import motion_blur

    dot = np.zeros((1, 32, 32, 3), dtype=np.uint8)
    dot[0, 16, 16] = 255
    out = motion_blur(dot, 6, 2, np.array([0.0]))[0, ..., 0].astype(int)
    weights = np.exp(-np.arange(13) ** 2 / 8.0)
    weights /= weights.sum()
    # Pixel x averages x, x+1, .., x+12, so the dot spreads to x = 16, 15, .., 4 only.
    expected = np.zeros(32, dtype=int)
    expected[16 - np.arange(13)] = np.round(255 * weights)
    np.testing.assert_array_equal(out[16], expected)
    assert out[np.arange(32) != 16].sum() == 0
    down = motion_blur(dot, 6, 2, np.array([90.0]))[0, ..., 0]
    assert down[:16 + 1, 16].sum() > 0 and down[17:, 16].sum() == 0  # 90 degrees: rows above


@pytest.mark.parametrize("severity, sigma", list(zip(SEVERITIES, (0.4, 0.6, 0.7, 0.8, 1.0))))
def test_gaussian_blur(severity, sigma):
    x = sample_images(3)
    expected = [np.uint8(np.clip(_skimage_gaussian(img / 255.0, sigma), 0, 1) * 255) for img in x]
    np.testing.assert_array_equal(corrupt(x, "gaussian_blur", severity, np.random.default_rng(0)),
                                  np.stack(expected))


# ---------------------------------------------------------------- weather

def _plasma_reference(mapsize: int, decay: float, rng: np.random.Generator) -> np.ndarray:
    """One diamond-square map, restated from the spec with explicit loops over points."""
    m = np.zeros((mapsize, mapsize))
    step, wibble = mapsize, 100.0
    while step >= 2:
        half = step // 2
        at = lambda r, c: m[r % mapsize, c % mapsize]  # noqa: E731 - the map wraps around
        noise = rng.uniform(-wibble, wibble, (mapsize // step,) * 2)
        for i, r in enumerate(range(half, mapsize, step)):
            for j, c in enumerate(range(half, mapsize, step)):
                m[r, c] = (at(r - half, c - half) + at(r + half, c - half) + at(r - half, c + half)
                           + at(r + half, c + half)) / 4 + wibble * noise[i, j]
        for rows, cols in ((range(0, mapsize, step), range(half, mapsize, step)),
                           (range(half, mapsize, step), range(0, mapsize, step))):
            noise = rng.uniform(-wibble, wibble, (len(rows), len(cols)))
            for i, r in enumerate(rows):
                for j, c in enumerate(cols):
                    m[r, c] = (at(r - half, c) + at(r + half, c) + at(r, c - half) + at(r, c + half)) / 4 \
                        + wibble * noise[i, j]
        step //= 2
        wibble /= decay
    m -= m.min()
    return m / m.max()


def test_plasma_fractal_is_diamond_square():
    got = plasma_fractal(1, 32, 2.5, np.random.default_rng(3))[0]
    np.testing.assert_allclose(got, _plasma_reference(32, 2.5, np.random.default_rng(3)), atol=1e-12)
    assert got.min() == 0 and got.max() == 1


def test_fog_formula():
    x = sample_images(2)
    maps = plasma_fractal(2, 32, 1.75, np.random.default_rng(0))
    f = x / 255.0
    top = f.max(axis=(1, 2, 3), keepdims=True)
    expected = np.uint8(np.clip((f + 1.5 * maps[..., None]) * top / (top + 1.5), 0, 1) * 255)
    np.testing.assert_array_equal(corrupt(x, "fog", 5, np.random.default_rng(0)), expected)


def test_frost_overlays_are_shrunk_first_five(data_dir):
    shapes = [o.shape for o in load_frost(data_dir / "frost")]
    assert shapes == [(120, 180, 3), (63, 112, 3), (63, 112, 3), (70, 105, 3), (99, 132, 3)]


def test_frost_blends_a_crop_of_an_overlay(data_dir):
    overlays = load_frost(data_dir / "frost")
    black = np.zeros((12, 32, 32, 3), dtype=np.uint8)
    out = corrupt(black, "frost", 2, np.random.default_rng(0), frost_dir=data_dir / "frost")
    used = set()
    for img in out:
        hits = []
        for k, overlay in enumerate(overlays):
            scaled = np.uint8(np.clip(0.3 * overlay.astype(np.float64), 0, 255))
            windows = np.lib.stride_tricks.sliding_window_view(scaled, (32, 32, 3))[:, :, 0]
            match = np.argwhere((windows == img).all(axis=(2, 3, 4)))
            hits += [(k, top, left) for top, left in match]
        assert hits, "output is not 0.3 x any 32x32 window of the five overlays"
        k, top, left = hits[0]
        # Corners come from [0, size - 32): the reference's exclusive upper bound.
        assert top < overlays[k].shape[0] - 32 and left < overlays[k].shape[1] - 32
        used.add(k)
    assert len(used) > 1


def test_snow_whitens_and_adds_flakes():
    x = sample_images(8)
    for severity in SEVERITIES:
        y = corrupt(x, "snow", severity, np.random.default_rng(0)).astype(int)
        assert (y >= x.astype(int) - 1).all()  # whitening blends x with max(x, ..): never darker
        assert y.mean() > x.mean()


def test_spatter_mud_is_brown():
    x = np.full((16, 32, 32, 3), 255, dtype=np.uint8)
    y = corrupt(x, "spatter", 5, np.random.default_rng(0)).astype(int)
    covered = y != 255  # uncovered white stays exactly 255
    assert covered.any()
    # Under full cover a white pixel becomes (63, 42, 20); partial cover mixes toward it.
    r, g, b = y[..., 0], y[..., 1], y[..., 2]
    mixed = covered.any(-1)
    assert (r[mixed] >= g[mixed]).all() and (g[mixed] >= b[mixed]).all()


# ---------------------------------------------------------------- one image, reference steps
# With one image the batched draws come in the reference's per-image order, so the script's
# steps can be replayed verbatim on a Generator with the same seed.

def test_elastic_transform_replays_the_reference_steps():
    img = sample_images(1)
    for severity in (1, 4):
        alpha, sigma, jitter = ((0, 0, 2.56), (3.2, 1.28, 1.6))[severity // 4]
        rng = np.random.default_rng(11)
        f = img[0].astype(np.float32) / 255.0
        pts1 = np.float32([[26, 26], [26, 6], [6, 6]])  # centre 16 +- 32 // 3
        pts2 = pts1 + rng.uniform(-jitter, jitter, size=pts1.shape).astype(np.float32)
        f = cv2.warpAffine(f, cv2.getAffineTransform(pts1, pts2), (32, 32), borderMode=cv2.BORDER_REFLECT_101)
        dx, dy = ((ndimage.gaussian_filter(rng.uniform(-1, 1, size=(32, 32)), sigma, mode="reflect",
                                           truncate=3) * alpha).astype(np.float32) for _ in range(2))
        xx, yy, zz = np.meshgrid(np.arange(32), np.arange(32), np.arange(3))
        coords = (yy + dy[..., None]).reshape(-1), (xx + dx[..., None]).reshape(-1), zz.reshape(-1)
        expected = np.uint8(np.clip(ndimage.map_coordinates(f, coords, order=1, mode="reflect")
                                    .reshape(32, 32, 3), 0, 1) * 255)
        np.testing.assert_array_equal(corrupt(img, "elastic_transform", severity,
                                              np.random.default_rng(11))[0], expected)


def test_snow_replays_the_reference_steps():
    from dynbn.corruptions._kernels import motion_blur  # stands in for ImageMagick

    img = sample_images(1)
    c = (0.25, 0.3, 2.25, 0.6, 12, 6, 0.85)  # severity 4
    rng = np.random.default_rng(5)
    f = img[0].astype(np.float32) / 255.0
    layer = _clipped_zoom(rng.normal(size=(32, 32), loc=c[0], scale=c[1])[..., None], c[2])
    layer[layer < c[3]] = 0
    layer = (np.clip(layer[..., 0], 0, 1) * 255).astype(np.uint8)
    layer = motion_blur(layer[None], c[4], c[5], rng.uniform(-135, -45, size=1))[0][..., None] / 255.0
    grey = cv2.cvtColor(f, cv2.COLOR_RGB2GRAY).reshape(32, 32, 1)
    f = c[6] * f + (1 - c[6]) * np.maximum(f, grey * 1.5 + 0.5)
    expected = np.uint8(np.clip(f + layer + np.rot90(layer, k=2), 0, 1) * 255)
    np.testing.assert_array_equal(corrupt(img, "snow", 4, np.random.default_rng(5))[0], expected)


@pytest.mark.parametrize("severity", [2, 5])
def test_spatter_replays_the_reference_steps(severity):
    c = ((0.65, 0.1, 0.8, 0.7, 0.5, 0), (0.65, 0.1, 0.5, 0.68, 0.6, 1))[severity // 5]
    img = sample_images(1)
    rng = np.random.default_rng(9)
    f = img[0].astype(np.float32) / 255.0
    liquid = ndimage.gaussian_filter(rng.normal(size=(32, 32), loc=c[0], scale=c[1]), c[2], mode="nearest")
    liquid[liquid < c[3]] = 0
    if c[5] == 0:
        dist = 255 - cv2.Canny((liquid * 255).astype(np.uint8), 50, 150)
        dist = cv2.distanceTransform(dist, cv2.DIST_L2, 5)
        _, dist = cv2.threshold(dist, 20, 20, cv2.THRESH_TRUNC)
        dist = cv2.equalizeHist(cv2.blur(dist, (3, 3)).astype(np.uint8))
        dist = cv2.filter2D(dist, cv2.CV_8U, np.float32([[-2, -1, 0], [-1, 1, 1], [0, 1, 2]]))
        m = liquid * cv2.blur(dist, (3, 3)).astype(np.float32)
        m = m / m.max() * c[4]
        expected = np.clip(f + m[..., None] * (np.array([175, 238, 238]) / 255.0), 0, 1)
    else:
        m = ndimage.gaussian_filter((liquid > c[3]).astype(np.float32), c[4], mode="nearest")
        m[m < 0.8] = 0
        brown = np.float32([63 / 255.0, 42 / 255.0, 20 / 255.0]) * m[..., None]
        expected = np.clip(f * (1 - m[..., None]) + brown, 0, 1)
    np.testing.assert_array_equal(corrupt(img, "spatter", severity, np.random.default_rng(9))[0],
                                  np.uint8(expected * 255))
