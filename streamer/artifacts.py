"""Fitted artifacts (detector + BN table) for a scenario, fitted once and cached on disk.

The cache folder is keyed by the model spec and a hash of the fit configuration, so a
changed config never reuses stale files. Concurrent workers fitting the same key wait on
a file lock; files are written to a temporary name and renamed, so a reader never sees a
half-written table.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import time
from dataclasses import asdict
from pathlib import Path

from dynbn import data
from dynbn.bn.table import BNTable
from dynbn.detector import Detector, DetectorConfig
from dynbn.fitting import FitConfig, build
from dynbn.models import build_model

from .scenario import Scenario

DEFAULT_DIR = Path("~/.cache/dynbn/artifacts")
ENV_VAR = "DYNBN_ARTIFACTS"


def fit_config(scn: Scenario) -> FitConfig:
    """The FitConfig a scenario asks for (training images only)."""
    f = scn.fit
    return FitConfig(domains=tuple(scn.domains()), detector_images=f.detector_images, table_images=f.table_images,
                     severity_images=f.severity_images,
                     detector=DetectorConfig(epochs=f.epochs, seed=f.seed), seed=f.seed)


def cache_key(model: str, cfg: FitConfig) -> str:
    """``{model}-{hash of the fit config}``: the cache sub-folder."""
    # v2: detectors carry the open-set statistics and the clean bias comes from the wider grid;
    # v3: detectors carry a severity head and tables an entry per (corruption, severity);
    # v4: the open-set score has a covariance per domain; v5: detectors carry the start of dynbn_open's ramp
    blob = json.dumps({"model": model, "fit": asdict(cfg), "v": 5}, sort_keys=True, default=list)
    return f"{model.replace(':', '_')}-{hashlib.sha256(blob.encode()).hexdigest()[:12]}"


def artifacts_dir(path: str | os.PathLike | None = None) -> Path:
    """Explicit folder, then ``$DYNBN_ARTIFACTS``, then ~/.cache/dynbn/artifacts."""
    return Path(path or os.environ.get(ENV_VAR) or DEFAULT_DIR).expanduser()


def load_or_fit(scn: Scenario, root: str | os.PathLike | None = None, data_dir=None, log=print):
    """(model, detector, table) for the scenario: loaded from the cache or fitted and saved."""
    model = build_model(scn.model, data_dir)
    cfg = fit_config(scn)
    folder = artifacts_dir(root) / cache_key(scn.model, cfg)
    folder.mkdir(parents=True, exist_ok=True)
    det_path, table_path = folder / "detector.safetensors", folder / "bn_table.safetensors"
    with open(folder / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # a second worker waits here for the first one's fit
        if not (det_path.is_file() and table_path.is_file()):
            start = time.perf_counter()
            log(f"fitting detector and BN table for {scn.model} on {len(cfg.domains)} domains (cached in {folder})")
            train = data.load_cifar10("train", data_dir)
            detector, tables, _ = build(model, train, cfg, data.frost_dir(data_dir), log=log)
            _atomic(detector.save, det_path)
            _atomic(tables[cfg.table_images].save, table_path)
            (folder / "fit.json").write_text(json.dumps({"model": scn.model, "fit": asdict(cfg)}, indent=1, default=list))
            log(f"fitted in {time.perf_counter() - start:.0f} s")
    return model, Detector.load(det_path), BNTable.load(table_path, model)


def _atomic(save, path: Path) -> None:
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    save(tmp)
    tmp.replace(path)
