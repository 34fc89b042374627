"""Offline evaluation: the paper's table (``dynbn reproduce``).

For each corruption and severity, the same seeded test subset is corrupted once and fed to
four arms: ``source`` (checkpoint statistics), ``dynbn`` (statistics of the detected
domain, per frame), ``oracle`` (statistics of the true domain) and ``bn_adapt`` (statistics
of shuffled test batches of 200). The detector's accuracy is reported per severity and
corruption, with its confusion matrix, and the oracle/dynbn accuracy for several table
sizes K.
"""

from __future__ import annotations

import time
from itertools import product
from dataclasses import dataclass, field

import numpy as np
import torch

from .. import data
from ..detector import config_dict
from ..domains import BENCHMARK, CLEAN
from ..fitting import FitConfig, build
from ..sampling import apply, rng_for
from ..methods import BNAdapt, DynBNFrame, DynBNOracle, Source
from ..models import build_model, model_macs
from ..progress import progress
from ..spectrum import to_tensor

ARMS = ("source", "dynbn", "oracle", "bn_adapt")


@dataclass
class ReproduceConfig:
    """One run of the table; ``quick()`` is the few-minute variant."""

    model: str = "resnet20"
    test_images: int = 10000
    severities: tuple[int, ...] = (1, 2, 3, 4, 5)
    corruptions: tuple[str, ...] = BENCHMARK
    bn_adapt_batch: int = 200
    k_sweep: tuple[int, ...] = (16, 64, 256, 1024)
    sweep_images: int = 500         # test frames per corruption/severity for the K sweep
    eval_batch: int = 500
    fit: FitConfig = field(default_factory=FitConfig)

    @property
    def seed(self) -> int:
        return self.fit.seed

    @classmethod
    def quick(cls, seed: int = 0) -> "ReproduceConfig":
        return cls(test_images=400, severities=(3, 5), k_sweep=(16, 64, 256), sweep_images=100, fit=FitConfig.quick(seed))


def _batched(method, x: torch.Tensor, batch: int, truth: list[str] | None = None) -> torch.Tensor:
    preds = []
    for start in range(0, len(x), batch):
        t = None if truth is None else truth[start:start + batch]
        preds.append(method(x[start:start + batch], None, t).argmax(1))
    return torch.cat(preds)


def run_arms(arms: dict, x: torch.Tensor, y: torch.Tensor, domain: str, cfg: ReproduceConfig) -> dict[str, torch.Tensor]:
    """Per-frame correctness (bool tensor) of every arm on frames that all belong to ``domain``."""
    out = {}
    truth = [domain] * len(x)
    for name, method in arms.items():
        batch = cfg.bn_adapt_batch if name == "bn_adapt" else cfg.eval_batch
        out[name] = _batched(method, x, batch, truth) == y
    return out


def reproduce(cfg: ReproduceConfig, root=None, log=print) -> dict:
    """Fit on training images, evaluate on corrupted test images; returns the report dict."""
    t_start = time.perf_counter()
    torch.manual_seed(cfg.seed)
    model = build_model(cfg.model, root)
    frost = data.frost_dir(root)
    train = data.load_cifar10("train", root)
    test = data.load_cifar10("test", root).subset(cfg.test_images, cfg.seed)
    detector, tables, timings = build(model, train, cfg.fit, frost, list(cfg.k_sweep), log)
    table = tables[cfg.fit.table_images]
    arms = {"source": Source(model), "dynbn": DynBNFrame(model, table, detector),
            "oracle": DynBNOracle(model, table), "bn_adapt": BNAdapt(model)}
    y = torch.from_numpy(test.labels)
    domains = list(detector.domains)
    acc = {arm: {} for arm in ARMS}          # arm -> (corruption, severity) -> accuracy
    confusion = np.zeros((len(domains), len(domains)), dtype=np.int64)
    det_acc, sweep = {}, {k: {"oracle": [], "dynbn": []} for k in tables}
    sweep_arms = {k: {"oracle": DynBNOracle(model, tab), "dynbn": DynBNFrame(model, tab, detector)}
                  for k, tab in tables.items()}
    t_eval = time.perf_counter()
    for c, s in progress(list(product(cfg.corruptions, cfg.severities)), desc="reproduce", unit="cell"):
        x = to_tensor(apply(test.images, c, s, rng_for(cfg.seed, "test", c, s), frost))
        correct = run_arms(arms, x, y, c, cfg)
        for arm, ok in correct.items():
            acc[arm][(c, s)] = ok.float().mean().item()
        detected = _batched(lambda b, *_: detector(b), x, cfg.eval_batch)
        det_acc[(c, s)] = (detected == domains.index(c)).float().mean().item()
        np.add.at(confusion[domains.index(c)], detected.numpy(), 1)
        for k, sub in sweep_arms.items():
            n = cfg.sweep_images
            ok = ({a: correct[a][:n] for a in sub} if k == cfg.fit.table_images  # same table: reuse
                  else run_arms(sub, x[:n], y[:n], c, cfg))
            for arm, value in ok.items():
                sweep[k][arm].append(value.float().mean().item())
        log(f"{c:>18} s{s}: " + "  ".join(f"{a} {acc[a][(c, s)]:.3f}" for a in ARMS) + f"  detector {det_acc[(c, s)]:.3f}")
    clean_x = to_tensor(test.images)
    clean = {a: ok.float().mean().item() for a, ok in run_arms(arms, clean_x, y, CLEAN, cfg).items()}
    clean_detected = _batched(lambda b, *_: detector(b), clean_x, cfg.eval_batch)
    np.add.at(confusion[domains.index(CLEAN)], clean_detected.numpy(), 1)
    timings["evaluate_s"] = time.perf_counter() - t_eval
    timings["total_s"] = time.perf_counter() - t_start
    return _summarise(cfg, acc, det_acc, clean, clean_detected, domains, confusion, sweep, detector, model, timings)


def _mean(values) -> float:
    values = list(values)
    return float(np.mean(values)) if values else float("nan")


def _summarise(cfg, acc, det_acc, clean, clean_detected, domains, confusion, sweep, detector, model, timings) -> dict:
    sev = [str(s) for s in cfg.severities]
    arms = {
        arm: {"mean": _mean(table.values()),
              "by_severity": {str(s): _mean(v for (c, t), v in table.items() if t == s) for s in cfg.severities},
              "by_corruption": {c: _mean(v for (k, t), v in table.items() if k == c) for c in cfg.corruptions},
              "table": {c: {str(s): table[(c, s)] for s in cfg.severities} for c in cfg.corruptions}}
        for arm, table in acc.items()
    }
    clean_domain = domains.index(CLEAN)
    return {
        "images": cfg.test_images, "seed": cfg.seed, "model": cfg.model, "severities": sev,
        "arms": arms,
        "clean": {"source": clean["source"], "dynbn": clean["dynbn"], "oracle": clean["oracle"], "bn_adapt": clean["bn_adapt"]},
        "detector": {
            "accuracy": _mean(det_acc.values()),
            "by_severity": {str(s): _mean(v for (c, t), v in det_acc.items() if t == s) for s in cfg.severities},
            "by_corruption": {c: _mean(v for (k, t), v in det_acc.items() if k == c) for c in cfg.corruptions},
            "clean_accuracy": (clean_detected == clean_domain).float().mean().item(),
            "domains": domains, "confusion": confusion.tolist(),
            "macs": detector.macs(), "model_macs": model_macs(model),
            "config": config_dict(cfg.fit.detector),
        },
        "k_sweep": {str(k): {arm: _mean(v) for arm, v in d.items()} for k, d in sweep.items()},
        "fit": {"detector_images_per_corruption_severity": cfg.fit.detector_images,
                "table_images": cfg.fit.table_images, "sweep_images": cfg.sweep_images},
        "clean_bias": timings.pop("clean_bias_evidence", None),
        "timings_s": {k: round(v, 1) for k, v in timings.items()},
        "torch_threads": torch.get_num_threads(),
    }
