"""Frame -> normalised Fourier amplitude spectrum, the detector's input.

    S(x) = log(|F(x)| / (eps * n) + 1)

F is the 2-D DFT of each colour channel of a [0, 1] frame; n = H * W, so |F| / n is the
amplitude per pixel (the DC term becomes the channel mean). eps = 1e-3 puts the amplitude
of typical high-frequency content of a 32x32 frame (about 1e-3..1e-2 per pixel) in the
steep part of the log, where noise, blur and compression differ most; the +1 keeps
S >= 0 and finite for empty bands. The amplitude of a real image is symmetric, so the
real FFT (W // 2 + 1 columns) loses nothing and halves the detector's input.
"""

from __future__ import annotations

import numpy as np
import torch

EPS = 1e-3


def to_tensor(frames: np.ndarray | torch.Tensor) -> torch.Tensor:
    """uint8 ``(..., H, W, 3)`` or float ``(..., 3, H, W)`` in [0, 1] -> float32 ``(B, 3, H, W)``."""
    if isinstance(frames, np.ndarray):
        if frames.dtype != np.uint8 or frames.shape[-1] != 3:
            raise ValueError(f"numpy frames must be uint8 (..., H, W, 3) RGB, got {frames.dtype} {frames.shape}")
        t = torch.from_numpy(np.ascontiguousarray(frames)).reshape(-1, *frames.shape[-3:])
        return t.permute(0, 3, 1, 2).float().div_(255.0)  # B x 3 x H x W
    if not torch.is_floating_point(frames) or frames.ndim < 3 or frames.shape[-3] != 3:
        raise ValueError(f"tensor frames must be float (..., 3, H, W) in [0, 1], got {frames.dtype} {tuple(frames.shape)}")
    return frames.reshape(-1, *frames.shape[-3:]).float()


def spectrum(x: torch.Tensor, eps: float = EPS) -> torch.Tensor:
    """Normalised log-amplitude spectrum of float frames ``(..., 3, H, W)``: ``(..., 3, H, W//2+1)``."""
    if x.ndim < 3 or x.shape[-3] != 3:
        raise ValueError(f"spectrum expects (..., 3, H, W) frames, got shape {tuple(x.shape)}")
    n = x.shape[-1] * x.shape[-2]
    amplitude = torch.fft.rfft2(x.float(), norm="backward").abs()
    return torch.log1p(amplitude / (eps * n))


def feature_dim(height: int, width: int) -> int:
    """Length of the flattened spectrum of one ``3 x height x width`` frame."""
    return 3 * height * (width // 2 + 1)
