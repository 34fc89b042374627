"""Severity-aware BN tables and the detector's severity head.

A severity-aware table has one entry per (corruption, severity) (domain names like
``"fog@5"``: 15 x 5 + clean = 76 entries), each calibrated on K frames of that exact severity,
and a head with one class per entry reads the severity. ``fitting.build`` attaches the head to
the detector and adds the entries to the table; ``dynbn_vote`` mixes them per camera
(``dynbn.vote.Votes.levels``). The study comparing them with one entry per corruption is
``dynbn.experiments.severity`` (``dynbn severity-tables``).
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import torch
import torch.nn.functional as F

from .bn.table import BNTable, calibrate, current_stats, fingerprint
from .data import Split
from .detector import Detector, DetectorConfig, fit
from .domains import BENCHMARK, CLEAN
from .progress import progress
from .sampling import SEVERITIES, apply, draw, rng_for
from .spectrum import to_tensor


def severity_name(domain: str, severity: int) -> str:
    """The severity-aware domain name: ``"fog@5"``; clean has no severity and stays ``"clean"``."""
    return CLEAN if domain == CLEAN else f"{domain}@{severity}"


def severity_domains(corruptions=BENCHMARK) -> list[str]:
    """Clean, then every corruption at severities 1..5, corruption-major: 1 + 5 x len(corruptions) names."""
    return [CLEAN] + [severity_name(c, s) for c in corruptions for s in SEVERITIES]


def sample_severities(n_domains: int, per_severity: int) -> np.ndarray:
    """The severity of every frame ``sampling.domain_samples`` returns: domain-major, then SEVERITIES."""
    return np.tile(np.repeat(SEVERITIES, per_severity), n_domains)


def severity_labels(domain_idx: np.ndarray, severity: np.ndarray, domains, names: list[str]) -> np.ndarray:
    """Class indices into ``names`` of frames given as (index into ``domains``, severity)."""
    lookup = {name: i for i, name in enumerate(names)}
    return np.array([lookup[severity_name(domains[d], int(s))] for d, s in zip(domain_idx, severity)], dtype=np.int64)


def interpolation_weights(logits: torch.Tensor, n_severities: int = len(SEVERITIES)) -> tuple[torch.Tensor, torch.Tensor]:
    """Mixture weights over the severity-aware domains, and the detected corruption, per frame.

    ``logits``: B x (1 + C * S) over ``severity_domains()`` (clean first, corruption-major).
    The corruption is the argmax of the probabilities summed over its S severities (index
    into ``[clean] + corruptions``, 0 = clean); its S entries get their probabilities
    renormalised to sum to 1, every other entry 0 (clean: all mass on clean). Summing and
    renormalising are done on logits (logsumexp, softmax within the group): the same values
    as from probabilities, without underflow.
    """
    grouped = logits[:, 1:].reshape(len(logits), -1, n_severities)  # B x C x S
    corruption_logits = torch.cat([logits[:, :1], grouped.logsumexp(2)], 1)  # B x (1 + C)
    detected = corruption_logits.argmax(1)
    onehot = F.one_hot(detected, corruption_logits.shape[1]).to(logits.dtype)
    within = grouped.softmax(2)  # B x C x S: severity probabilities given the corruption
    weights = torch.cat([onehot[:, :1], (onehot[:, 1:, None] * within).flatten(1)], 1)
    return weights, detected


def fit_head(frames: np.ndarray, domain_idx: np.ndarray, domains, per_severity: int, config: DetectorConfig,
             hidden: tuple[int, int]) -> Detector:
    """A detector over ``severity_domains`` trained on the detector's frames (``sampling.domain_samples``
    order over ``domains``, ``per_severity`` frames each: domain-major, then severities), with
    ``config``'s recipe and ``hidden`` units."""
    names = severity_domains([d for d in domains if d != CLEAN])
    labels = severity_labels(domain_idx, sample_severities(len(domains), per_severity), domains, names)
    return fit(to_tensor(frames), torch.from_numpy(labels), names, replace(config, hidden=hidden))


def severity_tables(model: torch.nn.Module, fit_part: Split, k: int, seed: int, frost_dir,
                    corruptions=BENCHMARK) -> BNTable:
    """A BN table over ``severity_domains(corruptions)``: K frames of one severity per entry.

    Entry ``"c@s"`` is calibrated on K frames drawn from ``fit_part`` and corrupted by
    ``rng_for(seed, "table", c, s)``; clean is the checkpoint's own statistics (as in
    ``fitting.build_tables``). Calibrated one corruption at a time to bound memory.
    """
    stats = {CLEAN: current_stats(model)}
    for c in progress(corruptions, desc="severity tables", unit="corruption"):
        pools = {}
        for s in SEVERITIES:
            rng = rng_for(seed, "table", c, s)
            pick = draw(rng, len(fit_part), k)
            pools[severity_name(c, s)] = to_tensor(apply(fit_part.images[pick], c, s, rng, frost_dir))
        stats.update(calibrate(model, pools).stats)
    return BNTable(layers=fingerprint(model), stats=stats, meta={"images_per_domain": str(k)})

