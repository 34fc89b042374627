"""Tune the vote rule (and bn_ema's momentum) on streams of corrupted TRAINING images.

Nothing here touches the test split. For each period N in ``periods`` a one-camera stream
of training frames is built from the images ``fitting.split_train`` holds out of the
detector's and the table's fitting (``dynbn.stream``, purpose "tune": its own corruption draws),
the detector's probabilities are computed once, and every rule of the grid is replayed on
them (the vote depends only on a camera's probability sequence, not on batching).

A rule is scored by the classifier's *expected* accuracy with the statistics it selects:
``A[true, used]``, the accuracy of training frames of domain ``true`` normalised with the
statistics of domain ``used``, measured once on ``cost_frames`` frames per domain. Picking a
neighbouring domain (shot noise for Gaussian noise) thus costs what it really costs, not a
full error. The score is the mean over the periods (each period weighted equally), so the
rule must do well when shifts are frequent and when they are rare. Ties go to the simpler
rule (smaller window, hold, margin).

bn_ema's per-frame momentum and bn_prior's prior strength are scored by running the arm
on the first ``baseline_frames`` frames of each stream at each batch size in
``baseline_batch_sizes``; bn_ema takes the best momentum, bn_prior's N is reported only
(it keeps the authors' default).
"""

from __future__ import annotations

import itertools
import time
from dataclasses import asdict, dataclass

import numpy as np
import torch

from ..domains import DEFAULT_DOMAINS
from ..fitting import split_train
from ..methods import BNEMA, BNPrior
from ..bn.per_sample import DomainSwitch
from ..spectrum import to_tensor
from ..stream import Stream, build_stream, periodic_schedules
from ..vote import VoteRule, clean_index, replay


@dataclass
class TuneConfig:
    """The tuning streams and the grids searched."""

    periods: tuple[int, ...] = (1, 4, 16, 64, 256)
    frames: int = 2048
    severity: int = 5
    seed: int = 0
    cost_frames: int = 48
    windows: tuple[int, ...] = (1, 2, 3, 4, 6, 8)
    margins: tuple[float, ...] = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7)
    holds: tuple[int, ...] = (1, 2, 3)
    clean_discounts: tuple[float, ...] = (0.0, 1.0, 2.0, 3.0, 4.0)
    momenta: tuple[float, ...] = (0.01, 0.03, 0.1, 0.3)
    priors: tuple[float, ...] = (2, 4, 8, 16, 64)
    baseline_frames: int = 256
    baseline_batch_sizes: tuple[int, ...] = (1, 16)
    domains: tuple[str, ...] = DEFAULT_DOMAINS

    @classmethod
    def quick(cls, **kw) -> "TuneConfig":
        return cls(frames=1024, cost_frames=32, baseline_frames=192, **kw)


def training_streams(cfg: TuneConfig, train, frost_dir) -> dict[int, Stream]:
    """One single-camera stream per period, from the training images held out of fitting."""
    pool = split_train(train, cfg.seed)[1].subset(None, cfg.seed)  # never seen by the detector or the table
    out = {}
    for period in cfg.periods:
        rng = np.random.default_rng([cfg.seed, 21, period])
        schedules = periodic_schedules(cfg.domains, period, cfg.frames, 1, rng, cfg.severity)
        out[period] = build_stream(pool.images, pool.labels, schedules, cfg.domains, cfg.seed, frost_dir, "tune")
    return out


@torch.no_grad()
def accuracy_matrix(model, table, detector, streams: dict[int, Stream], per_domain: int) -> np.ndarray:
    """``A[t, u]``: accuracy of frames of domain t (detector order) normalised with domain u's statistics."""
    names = list(detector.domains)
    images, labels, truth = (np.concatenate([getattr(s, k) for s in streams.values()]) for k in ("images", "labels", "domain"))
    stream_domains = next(iter(streams.values())).domains
    truth = np.array([names.index(stream_domains[d]) for d in truth])
    switch = DomainSwitch(model, table, names)
    A = np.full((len(names), len(names)), np.nan)
    for t in np.unique(truth):
        rows = np.flatnonzero(truth == t)[:per_domain]
        x, y = to_tensor(images[rows]), torch.from_numpy(labels[rows])
        for u in range(len(names)):
            pred = switch.forward(x, torch.full((len(x),), u)).argmax(1)
            A[t, u] = (pred == y).float().mean().item()
    return A


def score_rules(cfg: TuneConfig, probs: dict[int, np.ndarray], truth: dict[int, np.ndarray], A: np.ndarray,
                clean: int | None = None) -> list[dict]:
    """Expected accuracy and domain accuracy of every rule of the grid, per period and averaged
    (``clean``: the clean domain's index, which the clean discount applies to)."""
    results = []
    for w, m, h, k in itertools.product(cfg.windows, cfg.margins, cfg.holds, cfg.clean_discounts):
        rule = VoteRule(w, m, h, k)
        per = {}
        for period, p in probs.items():
            used = replay(rule, p, clean)
            per[period] = {"expected_accuracy": float(A[truth[period], used].mean()),
                           "domain_accuracy": float((used == truth[period]).mean())}
        results.append({"rule": asdict(rule), "per_period": per,
                        "objective": float(np.mean([v["expected_accuracy"] for v in per.values()]))})
    return results


def best_rule(results: list[dict]) -> VoteRule:
    """Highest objective; among equals (to 1e-9), the simplest rule."""
    top = max(r["objective"] for r in results)
    tied = [r for r in results if r["objective"] >= top - 1e-9]
    pick = min(tied, key=lambda r: (r["rule"]["window"], r["rule"]["hold"], r["rule"]["margin"],
                                    r["rule"]["clean_discount"]))
    return VoteRule(**pick["rule"])


def score_baseline(make, streams: dict[int, Stream], batch_sizes, frames: int) -> dict:
    """Mean accuracy of a stateful arm over the streams' first frames, per batch size."""
    out = {}
    for b in batch_sizes:
        accs = []
        for stream in streams.values():
            method = make()
            correct, seen = 0, 0
            for batch in stream.batches(b):
                if batch.rows.start >= frames:
                    break
                pred = method(batch.x, batch.cameras, batch.truth).argmax(1).numpy()
                correct += int((pred == stream.labels[batch.rows]).sum())
                seen += len(pred)
            accs.append(correct / seen)
        out[str(b)] = float(np.mean(accs))
    out["mean"] = float(np.mean([out[str(b)] for b in batch_sizes]))
    return out


def tune(cfg: TuneConfig, model, table, detector, train, frost_dir, log=print) -> dict:
    """Build the training streams, score every rule and momentum; returns the report dict."""
    t0 = time.perf_counter()
    streams = training_streams(cfg, train, frost_dir)
    names = list(detector.domains)
    probs, truth = {}, {}
    for period, s in streams.items():
        x = torch.cat([b.x for b in s.batches(512)])
        probs[period] = torch.cat([detector.predict_proba(x[i:i + 512]) for i in range(0, len(x), 512)]).double().numpy()
        truth[period] = np.array([names.index(s.domains[d]) for d in s.domain])
    A = accuracy_matrix(model, table, detector, streams, cfg.cost_frames)
    log(f"accuracy matrix: right statistics {np.nanmean(np.diag(A)):.3f}, wrong {np.nanmean(A[~np.eye(len(A), dtype=bool)]):.3f}")
    results = score_rules(cfg, probs, truth, A, clean_index(names))
    rule = best_rule(results)
    log(f"best vote rule: {rule}")
    ema = {str(m): score_baseline(lambda: BNEMA(model, m), streams, cfg.baseline_batch_sizes, cfg.baseline_frames)
           for m in cfg.momenta}
    momentum = float(max(ema, key=lambda k: ema[k]["mean"]))
    log(f"bn_ema momentum per frame: {momentum} ({ {k: round(v['mean'], 3) for k, v in ema.items()} })")
    prior = {str(n): score_baseline(lambda: BNPrior(model, n), streams, cfg.baseline_batch_sizes, cfg.baseline_frames)
             for n in cfg.priors}
    log(f"bn_prior N (report only): { {k: round(v['mean'], 3) for k, v in prior.items()} }")
    frame_rule = next(r for r in results if r["rule"] == asdict(VoteRule(1, 0.0, 1)))
    return {"config": asdict(cfg), "best_rule": asdict(rule), "frame_rule_objective": frame_rule["objective"],
            "best_objective": max(r["objective"] for r in results), "accuracy_matrix": A.tolist(),
            "domains": names, "rules": results, "bn_ema_momentum": momentum, "bn_ema": ema, "bn_prior": prior,
            "seconds": round(time.perf_counter() - t0, 1), "torch_threads": torch.get_num_threads()}
