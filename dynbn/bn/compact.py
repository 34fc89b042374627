"""Compact BN tables: what one more domain costs in memory, and what a smaller table costs in accuracy.

A ``BNTable`` holds, per domain, the running mean and variance of every BN layer as float32.
Representations (``KINDS``):

- ``float32``: the table as calibrated (the reference).
- ``float16``: every mean and variance rounded to half precision. Variances are stored as
  they are, not as logarithms: rounding errs by at most 2^-11 relative across float16's
  normal range (6.1e-5 .. 65504), whereas a float16 log-variance errs by |log v| * 2^-11
  (more for every variance outside [1/e, e]; nine times more at 1e-4). ``to_compact``
  refuses a table whose values overflow or whose variances would round to 0.
- ``lowrank`` (rank r): per BN layer and statistic, the domains' means (D x C) and
  log-variances (D x C) are stored as their mean over domains (C), a basis of the top r
  right singular vectors of the centred stack (r x C) and per-domain coefficients (D x r).
  Log-variances keep every reconstructed variance positive, and corruptions scale
  variances multiplicatively. Rank D - 1 reconstructs the stack exactly.
- ``lowrank-fp16``: the same with every stored array (centre, basis, coefficients) in float16.

Exact domains (default: ``clean``) hold the checkpoint's own statistics, which the model
already carries: every representation keeps them verbatim, at no cost, and they are not
part of the basis. D counts the other domains.

The study that measures them is ``dynbn.experiments.compact`` (``dynbn compact-tables``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..domains import BENCHMARK, CLEAN
from .table import STATS, BNTable


KINDS = ("float32", "float16", "lowrank", "lowrank-fp16")


EXACT = (CLEAN,)


MAX_RANK = len(BENCHMARK) - 1  # the default table's centred stack of corrupted domains has at most this rank


BN_EPS = 1e-5  # nn.BatchNorm2d's default eps, for errors measured in units of the channel's std


HALF_MAX = float(torch.finfo(torch.float16).max)


HALF_TINY = float(torch.finfo(torch.float16).tiny)  # smallest normal float16


@dataclass
class CompactTable:
    """A BN table in one compact representation; ``from_compact`` turns it back into a ``BNTable``.

    ``per_domain[d]`` holds what domain d alone needs (its statistics, or its coefficients
    for low rank); ``shared`` what all compressed domains share (centres and bases);
    ``exact`` the domains kept verbatim because the model already carries them.
    Low-rank keys are ``"{layer}.running_mean"`` and ``"{layer}.log_running_var"``, with
    ``.centre`` and ``.basis`` suffixes in ``shared``.
    """

    kind: str
    rank: int | None
    layers: dict[str, int]
    domains: list[str]
    exact: dict[str, dict[str, torch.Tensor]]
    shared: dict[str, torch.Tensor]
    per_domain: dict[str, dict[str, torch.Tensor]]
    meta: dict[str, str]

    @property
    def shared_bytes(self) -> int:
        return sum(t.nbytes for t in self.shared.values())

    def domain_bytes(self, domain: str) -> int:
        return sum(t.nbytes for t in self.per_domain[domain].values())


def _check_kind(kind: str, rank: int | None) -> None:
    if kind not in KINDS:
        raise ValueError(f"unknown representation {kind!r}; choose from {', '.join(KINDS)}")
    if kind.startswith("lowrank") and rank is None:
        raise ValueError(f"{kind} needs a rank")
    if not kind.startswith("lowrank") and rank is not None:
        raise ValueError(f"{kind} takes no rank (got {rank})")


def _half(t: torch.Tensor, what: str, positive: bool = False) -> torch.Tensor:
    """``t`` in float16; ValueError if a value overflows or (``positive``) a nonzero value rounds to 0."""
    h = t.to(torch.float16)
    if not torch.isfinite(h).all():
        raise ValueError(f"{what}: values beyond float16's range (|x| > {HALF_MAX:g}); keep this table in float32")
    if positive and bool(((h == 0) & (t != 0)).any()):
        raise ValueError(f"{what}: a variance of {t[t > 0].min().item():.3g} rounds to 0 in float16; "
                         "keep this table in float32 or use a low-rank (log-variance) representation")
    return h


def to_compact(table: BNTable, kind: str, rank: int | None = None, exact: tuple[str, ...] = EXACT) -> CompactTable:
    """The table in one representation of ``KINDS``; ``rank`` (1 .. D-1) for the low-rank ones."""
    _check_kind(kind, rank)
    kept = [d for d in table.domains if d in exact]
    domains = [d for d in table.domains if d not in exact]
    out = CompactTable(kind=kind, rank=rank, layers=dict(table.layers), domains=table.domains,
                       exact={d: {k: v.clone() for k, v in table.stats[d].items()} for d in kept},
                       shared={}, per_domain={d: {} for d in domains}, meta=dict(table.meta))
    if kind == "float32":
        out.per_domain = {d: {k: v.clone() for k, v in table.stats[d].items()} for d in domains}
    elif kind == "float16":
        out.per_domain = {d: {k: _half(v, f"{d}/{k}", positive=k.endswith("running_var"))
                              for k, v in table.stats[d].items()} for d in domains}
    else:
        if not 1 <= rank <= len(domains) - 1:
            raise ValueError(f"rank must lie in 1 .. {len(domains) - 1} (D - 1 for the {len(domains)} "
                             f"compressed domains), got {rank}")
        store = _half if kind == "lowrank-fp16" else (lambda t, what: t)
        for layer in table.layers:
            mean, var = table.stacked(layer, domains)
            for key, stack in ((f"{layer}.running_mean", mean), (f"{layer}.log_running_var", var.log())):
                stack = stack.double()  # float64 SVD: rank D - 1 then reconstructs to float32 precision
                centre = stack.mean(0)
                basis = torch.linalg.svd(stack - centre, full_matrices=False).Vh[:rank]  # min(rank, C) x C
                coef = (stack - centre) @ basis.T  # D x min(rank, C)
                out.shared[f"{key}.centre"] = store(centre.float(), f"{key}.centre")
                out.shared[f"{key}.basis"] = store(basis.float(), f"{key}.basis")
                for i, d in enumerate(domains):
                    out.per_domain[d][key] = store(coef[i].float(), f"{d}/{key}")
    return out


def from_compact(compact: CompactTable) -> BNTable:
    """The float32 ``BNTable`` a compact table stands for, domains in their original order."""
    if not compact.kind.startswith("lowrank"):
        rebuilt = {d: {k: v.float() for k, v in entry.items()} for d, entry in compact.per_domain.items()}
    else:
        rebuilt = {d: {} for d in compact.per_domain}
        for layer in compact.layers:
            for stat, key in (("running_mean", f"{layer}.running_mean"), ("running_var", f"{layer}.log_running_var")):
                centre, basis = compact.shared[f"{key}.centre"].float(), compact.shared[f"{key}.basis"].float()
                for d, entry in compact.per_domain.items():
                    value = centre + entry[key].float() @ basis
                    rebuilt[d][f"{layer}.{stat}"] = value.exp() if stat == "running_var" else value
    stats = {d: compact.exact[d] if d in compact.exact else rebuilt[d] for d in compact.domains}
    name = compact.kind if compact.rank is None else f"{compact.kind} r={compact.rank}"
    meta = dict(compact.meta, representation=name)
    return BNTable(layers=dict(compact.layers), stats=stats, meta=meta)


def bytes_per_domain(layers: dict[str, int], kind: str, rank: int | None = None,
                     domains: int = len(BENCHMARK)) -> dict:
    """Storage of a representation, from BN layer shapes (``bn_table.fingerprint``), for ``domains`` compressed domains.

    ``marginal``: bytes one more domain adds (its coefficients, for low rank); ``shared``:
    bytes stored once (centres and bases); ``amortised``: shared / domains + marginal.
    Exact domains (clean) cost nothing: the model carries them.
    """
    _check_kind(kind, rank)
    item = 2 if kind in ("float16", "lowrank-fp16") else 4
    n_stats = len(STATS)
    if kind.startswith("lowrank"):
        marginal = n_stats * item * sum(min(rank, c) for c in layers.values())
        shared = n_stats * item * sum(c + min(rank, c) * c for c in layers.values())
    else:
        marginal, shared = n_stats * item * sum(layers.values()), 0
    return {"marginal": marginal, "shared": shared, "amortised": shared / domains + marginal,
            "total": shared + domains * marginal}


def reconstruction_error(reference: BNTable, approx: BNTable, domains: list[str]) -> dict[str, float]:
    """RMS errors over the given domains, layers and channels.

    ``mean_rms``: of the means; ``mean_shift_rms``: of the mean error in units of the
    channel's std (what BN feels); ``log_var_rms``: of the log-variances. Rank-r low rank
    is the best rank-r fit around the domains' centre for ``mean_rms`` and ``log_var_rms``.
    """
    mean_err, shift, log_err = [], [], []
    for layer in reference.layers:
        mean, var = reference.stacked(layer, domains)
        mean2, var2 = approx.stacked(layer, domains)
        mean_err.append((mean2 - mean).flatten())
        shift.append(((mean2 - mean) / (var + BN_EPS).sqrt()).flatten())
        log_err.append((var2.log() - var.log()).flatten())
    rms = lambda parts: torch.cat(parts).double().pow(2).mean().sqrt().item()  # noqa: E731
    return {"mean_rms": rms(mean_err), "mean_shift_rms": rms(shift), "log_var_rms": rms(log_err)}

