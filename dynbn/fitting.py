"""Build what dynbn needs before deployment: the corruption detector and the BN table.

Both come from corrupted TRAINING images only (the test split is never touched here).
Every random draw comes from a generator seeded with (seed, purpose, domain, severity),
so each piece is reproducible on its own and independent of the order pieces are built.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from . import corruptions
from .bn_table import BNTable, calibrate
from .data import Split
from .detector import Detector, DetectorConfig, fit
from .domains import CLEAN, DEFAULT_DOMAINS
from .spectrum import to_tensor

SEVERITIES = (1, 2, 3, 4, 5)
_PURPOSE = {"detector": 1, "table": 2, "test": 3}


@dataclass
class FitConfig:
    """How the detector and the BN table are built (training split only)."""

    domains: tuple[str, ...] = DEFAULT_DOMAINS
    detector_images: int = 400      # per corruption and severity; clean gets 5x, so domains are balanced
    table_images: int = 1024        # K: images per domain for its BN statistics (severities mixed)
    detector: DetectorConfig = field(default_factory=DetectorConfig)
    seed: int = 0


def rng_for(seed: int, purpose: str, domain: str, severity: int) -> np.random.Generator:
    """The generator for one (purpose, domain, severity) piece of work."""
    index = (CLEAN,) + corruptions.ALL
    return np.random.default_rng([seed, _PURPOSE[purpose], index.index(domain), severity])


def apply(images: np.ndarray, domain: str, severity: int, rng: np.random.Generator, frost_dir) -> np.ndarray:
    """Corrupt uint8 frames with one domain at one severity ('clean' returns them unchanged)."""
    if domain == CLEAN:
        return images
    return corruptions.corrupt(images, domain, severity, rng, frost_dir=frost_dir)


def detector_set(train: Split, cfg: FitConfig, frost_dir) -> tuple[np.ndarray, np.ndarray]:
    """Corrupted training frames (uint8) and their domain indices, balanced over domains."""
    frames, labels = [], []
    for d, domain in enumerate(cfg.domains):
        for s in SEVERITIES:
            rng = rng_for(cfg.seed, "detector", domain, s)
            pick = rng.choice(len(train), cfg.detector_images, replace=False)
            frames.append(apply(train.images[pick], domain, s, rng, frost_dir))
            labels.append(np.full(cfg.detector_images, d))
    return np.concatenate(frames), np.concatenate(labels)


def table_frames(train: Split, domain: str, k: int, seed: int, frost_dir) -> np.ndarray:
    """K training frames of one domain, severities drawn uniformly per frame (uint8)."""
    rng = rng_for(seed, "table", domain, 0)
    pick = rng.choice(len(train), k, replace=False)
    severity = rng.integers(1, 6, size=k)
    out = train.images[pick].copy()
    for s in SEVERITIES:
        rows = np.flatnonzero(severity == s)
        if len(rows):
            out[rows] = apply(out[rows], domain, s, rng_for(seed, "table", domain, s), frost_dir)
    return out


def build_tables(model: nn.Module, train: Split, domains, ks: list[int], seed: int, frost_dir) -> dict[int, BNTable]:
    """One table per K; smaller K use the first K frames of the largest K's sample (nested)."""
    pools = {d: to_tensor(table_frames(train, d, max(ks), seed, frost_dir)) for d in domains}
    return {k: calibrate(model, {d: pool[:k] for d, pool in pools.items()}) for k in ks}


def build(model: nn.Module, train: Split, cfg: FitConfig, frost_dir, ks: list[int] | None = None, log=print):
    """Fit the detector and calibrate the tables; returns (detector, {K: table}, timings)."""
    timings = {}
    t0 = time.perf_counter()
    frames, labels = detector_set(train, cfg, frost_dir)
    timings["detector_data_s"] = time.perf_counter() - t0
    log(f"detector training set: {len(frames)} frames, {len(cfg.domains)} domains")
    t0 = time.perf_counter()
    detector = fit(to_tensor(frames), torch.from_numpy(labels), list(cfg.domains), cfg.detector)
    timings["detector_fit_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    tables = build_tables(model, train, cfg.domains, sorted(set(ks or []) | {cfg.table_images}), cfg.seed, frost_dir)
    timings["tables_s"] = time.perf_counter() - t0
    log(f"BN tables for K in {sorted(tables)} ({timings['tables_s']:.0f} s)")
    return detector, tables, timings
