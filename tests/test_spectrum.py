"""Spectrum: the paper's normalisation, shapes, and sensitivity to what the detector needs."""

import math

import numpy as np
import pytest
import torch

from dynbn.spectrum import EPS, feature_dim, spectrum, to_tensor


def test_formula_on_a_constant_frame():
    x = torch.full((1, 3, 32, 32), 0.25)
    s = spectrum(x)
    assert s.shape == (1, 3, 32, 17)
    # |F| of a constant c is c * n at DC and 0 elsewhere: log(c / eps + 1), then log(1) = 0
    assert math.isclose(s[0, 0, 0, 0].item(), math.log(0.25 / EPS + 1), rel_tol=1e-5)
    assert s[0, :, 1:, :].abs().max() < 1e-4 and s[0, :, :, 1:].abs().max() < 1e-4


def test_rfft_keeps_all_information_of_the_full_amplitude():
    x = torch.rand(2, 3, 32, 32)
    full = torch.log1p(torch.fft.fft2(x).abs() / (EPS * 1024))
    assert torch.allclose(spectrum(x), full[..., :17], atol=1e-5)
    # the dropped columns are mirror images of kept ones
    assert torch.allclose(full[..., 1, 20], full[..., 31, 12], atol=1e-5)


def test_noise_raises_high_frequencies_blur_lowers_them(frames):
    x = frames[:64]
    noisy = (x + 0.1 * torch.randn(x.shape, generator=torch.Generator().manual_seed(0))).clamp(0, 1)
    blurred = torch.nn.functional.avg_pool2d(x, 3, 1, 1, count_include_pad=False)
    high = (slice(None), slice(None), slice(12, 20), slice(12, 17))
    base = spectrum(x)[high].mean()
    assert spectrum(noisy)[high].mean() > base + 0.5
    assert spectrum(blurred)[high].mean() < 0.5 * base


def test_to_tensor_accepts_uint8_hwc_and_rejects_bad_input():
    img = np.random.default_rng(0).integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)
    t = to_tensor(img)
    assert t.shape == (4, 3, 32, 32) and t.dtype == torch.float32
    assert torch.allclose(t[1, 2], torch.from_numpy(img[1, :, :, 2]).float() / 255)
    assert to_tensor(img[0]).shape == (1, 3, 32, 32)
    with pytest.raises(ValueError, match="uint8"):
        to_tensor(img.astype(np.float32))
    with pytest.raises(ValueError, match="3, H, W"):
        to_tensor(torch.rand(2, 4, 32, 32))


def test_feature_dim():
    assert feature_dim(32, 32) == 3 * 32 * 17 == spectrum(torch.rand(1, 3, 32, 32)).numel()
