"""Open set: let the detector say "unknown" for a corruption it was never trained on.

A detector trained on 15 corruptions names one of them for any frame. The open-set score
reads the detector's last hidden layer: a Gaussian per domain is fitted on the detector's own
training frames, and a frame's score is its smallest, over the domains, -2 log density (up
to a constant): squared Mahalanobis distance to the domain's mean under the domain's own
covariance, plus that covariance's log-determinant. Each covariance is shrunk towards the
pooled one (``SHRINK`` = 0.1 of it; Friedman 1989, "Regularized discriminant analysis"); with
``shrink=1`` the score is Lee et al.'s (2018, "A simple unified framework for detecting
out-of-distribution samples"), one shared covariance. The threshold is a quantile of the
scores of *held-out training* frames of the known domains (``split_train``'s tuning part),
so a chosen share of known frames (``1 - quantile``, 2 % by default) is called unknown; no
test frame and no unseen corruption is used to set it. A lower quantile of the same scores
(``RAMP``, 80 %) is where dynbn_open's ramp starts: from there up to the threshold a known
frame's table entry leans more and more towards the checkpoint's statistics
(``dynbn.methods.dynbn_open`` gives the rule and the measurements behind it).

Why a covariance per domain. With one shared covariance the known domains that spread
widest in feature space take the false alarms: on held-out training frames of the seed-0
quick detector (severities 1, 3 and 5, threshold at 2 % of them), 19 % of pixelate frames at
severity 5 were called unknown. With a covariance per domain no known domain at severity 5
passes 7 % (snow), and more of the unseen corruptions are caught: spatter 35 % against 29 %,
saturate 12 % against 8 %, while speckle noise and Gaussian blur, which the noise and
defocus tables help, stay at 2 % and 2 % (5 % and 3 % before). On streams of corrupted
training images (512 frames per period, 1 camera, severity 5) dynbn_open gains at B = 1,
16 and 64: 57.1 / 58.4 / 59.5 % against 56.4 / 57.9 / 58.2 on the 4 held-out corruptions
and 62.7 / 60.9 / 60.6 against 62.5 / 60.8 / 60.5 on the seen ones (mean over N; with the
prior of N = 16 then in use). Shrinking by 0.5 instead of 0.1 gave 56.7 at B = 1.

Why this layer and this kind of score: in exploratory trials with the quick detector
(severity 5, known held-out training frames against each extra corruption) the distance on
this layer separated spatter from the known domains best, and it leaves speckle noise and
Gaussian blur alone, as do the maximum softmax probability and the energy score: to every
score those look like Gaussian noise and defocus blur, whose tables help them (``dynbn
stream-bench --streams held-out`` reports accuracy per corruption), so a score that does *not* flag
them is what we want. Spatter, where a noise table loses to the source statistics, is the
one a score must catch. Other layers were measured the same way (shared covariance, 2 % of
known frames flagged): the first hidden layer flags 32 % of spatter frames, the input
spectrum (256 principal components) 30 %, this layer 26 %, and a Gaussian on the
classifier's first-layer channel statistics 1 %. On quick training streams the first hidden
layer lifted dynbn_open by 0.3 points at B = 1 and 0.2 at B = 16 on the held-out corruptions,
within the spread between detector fits, and was not taken.

Scores averaged over a camera's frames were tried too (on the same training streams, B = 1):
over its last 4 or 8 frames they catch more spatter (58 % and 71 % of it with one shared
covariance) but straddle shifts, and dynbn_open scored 57.0 and 56.8 against 57.1 per frame;
averaged since the vote last switched, 57.1. The per-frame score keeps no state.
"""

from __future__ import annotations

import numpy as np
import torch

from .detector import Detector

QUANTILE = 0.98  # share of known held-out frames the detector still accepts (2 % false alarms)
RAMP = 0.80      # share of known held-out frames below the ramp: their table entry is used whole
SHRINK = 0.1     # each domain's covariance: (1 - SHRINK) its own + SHRINK the pooled one
RIDGE = 1e-3     # added to the covariance's diagonal (features are post-ReLU, some are always 0)


@torch.no_grad()
def _features(detector: Detector, x: torch.Tensor, chunk: int = 4096) -> torch.Tensor:
    detector.eval()
    return torch.cat([detector.penultimate(x[i:i + chunk]) for i in range(0, len(x), chunk)])


@torch.no_grad()
def fit_open_set(detector: Detector, frames: torch.Tensor, labels: torch.Tensor, held_out: torch.Tensor,
                 quantile: float = QUANTILE, shrink: float = SHRINK, ramp: float = RAMP) -> dict:
    """Fill the detector's open-set buffers; returns the evidence (threshold, known share kept).

    ``frames``/``labels``: the detector's training frames and domain indices; ``held_out``:
    frames of the known domains that took no part in training, for the threshold; ``shrink``:
    weight of the pooled covariance in each domain's (1: one shared covariance, as in Lee et al.);
    ``ramp``: the quantile of the same held-out scores where dynbn_open's ramp starts (``ramp ==
    quantile``: no ramp, the hard rule).
    """
    if not 0.5 <= quantile < 1.0:
        raise ValueError(f"quantile must be in [0.5, 1), got {quantile}")
    if not 0.0 <= ramp <= quantile:
        raise ValueError(f"the ramp must start at a quantile in [0, quantile = {quantile}], got {ramp}")
    if not 0.0 <= shrink <= 1.0:
        raise ValueError(f"shrink must be in [0, 1], got {shrink}")
    h = _features(detector, frames).double()
    d = len(detector.domains)
    counts = torch.bincount(labels, minlength=d)
    if (counts < 2).any():
        raise ValueError(f"every domain needs training frames for the open set; counts {counts.tolist()}")
    means = torch.stack([h[labels == k].mean(0) for k in range(d)])
    centred = h - means[labels]
    pooled = centred.T @ centred / len(h)
    ridge = RIDGE * torch.eye(h.shape[1], dtype=torch.float64)
    covs = []
    for k in range(d):
        own = centred[labels == k]
        covs.append((1 - shrink) * (own.T @ own / len(own)) + shrink * pooled + ridge)
    covs = torch.stack(covs)
    detector.ood_means.copy_(means.float())
    detector.ood_precision.copy_(torch.linalg.inv(covs).float())
    detector.ood_logdet.copy_(torch.logdet(covs).float())
    detector.ood_threshold.fill_(float("inf"))
    _, dist = detector.logits_and_distance(held_out)
    threshold = float(np.quantile(dist.numpy(), quantile))
    detector.ood_threshold.fill_(threshold)
    low = _start_ramp(detector, dist, ramp)
    return {"quantile": quantile, "shrink": shrink, "threshold": threshold, "ramp": ramp, "ramp_low": low,
            "held_out_frames": len(held_out), "known_kept": float((dist <= threshold).float().mean())}


@torch.no_grad()
def move_ramp(detector: Detector, held_out: torch.Tensor, ramp: float) -> float:
    """Start dynbn_open's ramp at the ``ramp`` quantile of the scores of ``held_out`` (the known domains'
    held-out training frames that set the threshold); returns the new start. For measuring other
    starts on a fitted detector (the design table in ``methods/dynbn_open.py``)."""
    return _start_ramp(detector, detector.logits_and_distance(held_out)[1], ramp)


def _start_ramp(detector: Detector, scores: torch.Tensor, ramp: float) -> float:
    """Set ``ood_low`` to the ``ramp`` quantile of the held-out open-set ``scores``; returns it."""
    if not 0.0 <= ramp < 1.0:
        raise ValueError(f"the ramp must start at a quantile in [0, 1), got {ramp}")
    low = float(np.quantile(scores.numpy(), ramp))
    detector.ood_low.fill_(low)
    return low
