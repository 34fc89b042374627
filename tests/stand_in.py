"""A BN table and a detector shaped as a fitted bundle's, without fitting: what every arm reads.

Shared by tests/test_device.py and bench/gpu.py (which puts tests/ on its path, as for redis_server).
"""

from __future__ import annotations

import torch

from dynbn.bn.table import BNTable, current_stats, fingerprint
from dynbn.detector import Detector
from dynbn.domains import CLEAN, DEFAULT_DOMAINS
from dynbn.sampling import SEVERITIES
from dynbn.severity import severity_domains, severity_name


def stand_in(model: torch.nn.Module, domains=DEFAULT_DOMAINS, size: int = 32) -> tuple[BNTable, Detector]:
    """An entry per domain and per (corruption, severity), each the model's own statistics with the variances
    scaled a little; an untrained detector over ``domains`` for ``size`` px frames, with an untrained severity
    head (eval mode; torch's global seed set to 0 for its weights)."""
    corrupted = [d for d in domains if d != CLEAN]
    names = list(domains) + [severity_name(c, s) for c in corrupted for s in SEVERITIES]
    stats = current_stats(model)
    table = BNTable(fingerprint(model), {name: {k: v * (1 + 0.01 * i) if "var" in k else v.clone() for k, v in stats.items()}
                                         for i, name in enumerate(names)})
    torch.manual_seed(0)
    detector = Detector(list(domains), size, size)
    detector.attach_severity(Detector(severity_domains(corrupted), size, size, hidden=(64, 32)), SEVERITIES)
    return table, detector.eval()
