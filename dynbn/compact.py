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

``dynbn compact-tables`` measures, for each representation, the bytes per domain and the
oracle accuracy (true domain's statistics) on corrupted CIFAR-10 test frames.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from . import data
from .bn_table import STATS, BNTable, fingerprint
from .domains import BENCHMARK, CLEAN, DEFAULT_DOMAINS

KINDS = ("float32", "float16", "lowrank", "lowrank-fp16")
EXACT = (CLEAN,)
MAX_RANK = len(BENCHMARK) - 1  # the default table's centred stack of corrupted domains has at most this rank
TOLERANCE = 0.005  # accuracy drop vs float32 the recommendation accepts, at every severity (0.5 points)
BN_EPS = 1e-5  # nn.BatchNorm2d's default eps, for errors measured in units of the channel's std
_HALF_MAX = float(torch.finfo(torch.float16).max)
_HALF_TINY = float(torch.finfo(torch.float16).tiny)  # smallest normal float16


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
        raise ValueError(f"{what}: values beyond float16's range (|x| > {_HALF_MAX:g}); keep this table in float32")
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


def representations(ranks) -> list[tuple[str, str, int | None]]:
    """(name, kind, rank) of every representation the experiment compares, float32 first."""
    out = [("float32", "float32", None), ("float16", "float16", None)]
    for kind in ("lowrank", "lowrank-fp16"):
        out += [(f"{kind} r={r}", kind, r) for r in ranks]
    return out


@dataclass
class CompactConfig:
    """One run of ``dynbn compact-tables``; ``quick()`` is the two-minute variant."""

    images: int = 1000                          # test images per corruption and severity
    severities: tuple[int, ...] = (1, 2, 3, 4, 5)
    ranks: tuple[int, ...] = (1, 2, 4, 8)
    table_images: int = 1024                    # K, as in `dynbn reproduce`
    eval_batch: int = 500
    seed: int = 0

    @classmethod
    def quick(cls, seed: int = 0) -> "CompactConfig":
        from .evaluate import ReproduceConfig

        return cls(images=200, severities=(3, 5), table_images=ReproduceConfig.quick(seed).fit.table_images, seed=seed)


def _float16_range(table: BNTable, domains: list[str]) -> dict:
    """Range of the compressed domains' variances against float16's, and their float16 round-trip error."""
    var = torch.cat([table.stacked(layer, domains)[1].flatten() for layer in table.layers])
    rel = ((var.half().float() - var).abs() / var).max().item()
    return {"var_min": var.min().item(), "var_max": var.max().item(), "var_max_rel_error": rel,
            "below_smallest_normal": int((var < _HALF_TINY).sum()), "smallest_normal": _HALF_TINY}


@torch.no_grad()
def run_compact(cfg: CompactConfig, root=None, log=print) -> dict:
    """Fit a BN table for ResNet-20, compact it every way, measure bytes and oracle accuracy."""
    from .fitting import apply, build_tables, rng_for, split_train
    from .models import build_model
    from .per_sample import DomainSwitch
    from .spectrum import to_tensor

    t_start = time.perf_counter()
    torch.manual_seed(cfg.seed)
    model = build_model("resnet20", root)
    frost = data.frost_dir(root)
    fit_part, _ = split_train(data.load_cifar10("train", root), cfg.seed)
    test = data.load_cifar10("test", root).subset(cfg.images, cfg.seed)
    y = torch.from_numpy(test.labels)
    k = cfg.table_images
    table = build_tables(model, fit_part, DEFAULT_DOMAINS, [k], cfg.seed, frost)[k]
    compressed = [d for d in table.domains if d not in EXACT]
    t_fit = time.perf_counter() - t_start
    log(f"BN table with K = {k} for {len(table.domains)} domains ({t_fit:.0f} s)")

    shapes = {"resnet20": fingerprint(model), "resnet50": fingerprint(build_model("tv:resnet50"))}
    reps, switches = {}, {}
    for name, kind, rank in representations(cfg.ranks):
        approx = from_compact(to_compact(table, kind, rank))
        switches[name] = DomainSwitch(model, approx, table.domains)
        reps[name] = {"kind": kind, "rank": rank,
                      "bytes": {m: bytes_per_domain(s, kind, rank, len(compressed)) for m, s in shapes.items()},
                      "error": reconstruction_error(table, approx, compressed), "accuracy": {}}

    def accuracy(forward, x) -> float:
        preds = torch.cat([forward(x[i:i + cfg.eval_batch]).argmax(1) for i in range(0, len(x), cfg.eval_batch)])
        return (preds == y).sum().item() / len(y)

    source = {}
    t_eval = time.perf_counter()
    for c in BENCHMARK:
        for s in cfg.severities:
            x = to_tensor(apply(test.images, c, s, rng_for(cfg.seed, "test", c, s), frost))
            index = torch.full((len(x),), table.domains.index(c))
            source[(c, s)] = accuracy(model, x)
            for name, switch in switches.items():
                reps[name]["accuracy"][(c, s)] = accuracy(lambda b: switch.forward(b, index[:len(b)]), x)
            log(f"{c:>18} s{s}: source {source[(c, s)]:.3f}  float32 {reps['float32']['accuracy'][(c, s)]:.3f}")
    clean = accuracy(model, to_tensor(test.images))
    timings = {"table_s": t_fit, "evaluate_s": time.perf_counter() - t_eval, "total_s": time.perf_counter() - t_start}
    parameters = sum(p.numel() for p in model.parameters())
    return _summarise(cfg, table, compressed, shapes, reps, source, clean, parameters, timings)


def _by_severity(acc: dict, severities) -> dict[str, float]:
    return {str(s): float(np.mean([v for (_, t), v in acc.items() if t == s])) for s in severities}


def _summarise(cfg, table, compressed, shapes, reps, source, clean, parameters, timings) -> dict:
    sev = [str(s) for s in cfg.severities]
    reference = _by_severity(reps["float32"]["accuracy"], cfg.severities)
    out_reps = {}
    for name, r in reps.items():
        by_sev = _by_severity(r["accuracy"], cfg.severities)
        drop = {s: reference[s] - by_sev[s] for s in sev}
        out_reps[name] = {"kind": r["kind"], "rank": r["rank"], "bytes": r["bytes"], "error": r["error"],
                          "accuracy": {"by_severity": by_sev, "mean": float(np.mean(list(by_sev.values()))),
                                       "table": {c: {str(s): r["accuracy"][(c, s)] for s in cfg.severities}
                                                 for c in BENCHMARK}},
                          "drop": {"by_severity": drop, "mean": float(np.mean(list(drop.values()))),
                                   "max": max(drop.values())}}
    return {
        "config": asdict(cfg), "model": "resnet20", "severities": sev,
        "table": {"images_per_domain": cfg.table_images, "domains": table.domains, "compressed": compressed,
                  "exact": [d for d in table.domains if d not in compressed],
                  "float16": _float16_range(table, compressed)},
        "layers": {m: {"bn_layers": len(s), "channels": sum(s.values())} for m, s in shapes.items()},
        "resnet20_parameters": parameters,
        "source": {"by_severity": _by_severity(source, cfg.severities), "clean": clean},
        "representations": out_reps,
        "recommendation": recommend(out_reps),
        "timings_s": {k: round(v, 1) for k, v in timings.items()},
        "torch_threads": torch.get_num_threads(),
    }


def recommend(reps: dict) -> str:
    """The representation with the fewest bytes per extra ResNet-20 domain whose drop stays within TOLERANCE.

    float32 (drop 0) always qualifies, so there is always an answer.
    """
    fine = [name for name, r in reps.items() if r["drop"]["max"] <= TOLERANCE]
    return min(fine, key=lambda n: (reps[n]["bytes"]["resnet20"]["marginal"], reps[n]["bytes"]["resnet20"]["amortised"]))


def compact_markdown(r: dict, command: str) -> str:
    """The report as Markdown: bytes and oracle accuracy per representation, notes, recommendation."""
    from .report import CAVEAT

    pct = lambda v: f"{100 * v:.1f}"  # noqa: E731
    sev, reps, cfg = r["severities"], r["representations"], r["config"]
    d = len(r["table"]["compressed"])
    lines = [f"# dynbn compact-tables (ResNet-20, {cfg['images']} test images per corruption and severity, "
             f"seed {cfg['seed']})", "", f"Regenerate: `{command}`", "", CAVEAT, "",
             f"Bytes per domain: marginal = what one more domain adds; amortised = shared part / D + marginal, "
             f"D = {d} corrupted domains. Oracle accuracy (%): each frame normalised with its true corruption's "
             f"statistics, mean over the {len(BENCHMARK)} corruptions; drop in points against float32 "
             "(negative: a gain).", "",
             "| representation | ResNet-20 B/domain marginal | ResNet-20 amortised | ResNet-50 B/domain marginal "
             "| ResNet-50 amortised | " + " | ".join(f"oracle s{s}" for s in sev)
             + " | drop vs float32 (" + "/".join(f"s{s}" for s in sev) + ") |",
             "|---|---:|---:|---:|---:|" + "---:|" * len(sev) + "---:|"]
    for name, rep in reps.items():
        b20, b50 = rep["bytes"]["resnet20"], rep["bytes"]["resnet50"]
        lines.append(f"| {name} | {b20['marginal']:,} | {b20['amortised']:,.0f} | {b50['marginal']:,} | "
                     f"{b50['amortised']:,.0f} | " + " | ".join(pct(rep["accuracy"]["by_severity"][s]) for s in sev)
                     + " | " + " / ".join(f"{round(100 * rep['drop']['by_severity'][s], 1) + 0.0:+.1f}" for s in sev)
                     + " |")  # + 0.0 turns -0.0 into 0.0
    lines.append("| source (no table) | 0 | 0 | 0 | 0 | "
                 + " | ".join(pct(r["source"]["by_severity"][s]) for s in sev) + " | |")
    f16, lay = r["table"]["float16"], r["layers"]
    best = r["recommendation"]
    b_best, b_ref = reps[best]["bytes"]["resnet20"], reps["float32"]["bytes"]["resnet20"]
    lines += ["", "Notes:", "",
              f"- The table: K = {r['table']['images_per_domain']} training images per domain. "
              f"'{', '.join(r['table']['exact'])}' is the checkpoint's own statistics: every representation keeps "
              f"it exactly and counts no bytes for it (the model carries it), and it is not part of the low-rank "
              f"basis. Clean test accuracy is therefore the same for all: {pct(r['source']['clean'])} %.",
              f"- BN layers: ResNet-20 {lay['resnet20']['bn_layers']} layers, {lay['resnet20']['channels']:,} "
              f"channels; ResNet-50 (torchvision) {lay['resnet50']['bn_layers']} layers, "
              f"{lay['resnet50']['channels']:,} channels (bytes only: they depend on BN shapes alone).",
              f"- float16 stores variances directly: relative error at most 2^-11 in float16's normal range, where "
              f"a float16 log-variance would err by |log v| x 2^-11. The corrupted domains' variances span "
              f"{f16['var_min']:.3g} .. {f16['var_max']:.3g}; none rounds to 0 or overflows; "
              f"{f16['below_smallest_normal']} lie below float16's smallest normal {f16['smallest_normal']:.3g}; "
              f"the largest relative error of a variance is {100 * f16['var_max_rel_error']:.3f} %.",
              "- Low rank: per BN layer, means and log-variances each get a centre (C), a basis (r x C) and "
              "per-domain coefficients (r); lowrank-fp16 stores all three in float16. RMS reconstruction error "
              "(mean shift in channel std / log-variance): "
              + "; ".join(f"{n} {x['error']['mean_shift_rms']:.2g} / {x['error']['log_var_rms']:.2g}"
                          for n, x in reps.items() if x["kind"] != "float32") + ".",
              "",
              f"**Recommendation** (fewest bytes per extra ResNet-20 domain among those within "
              f"{100 * TOLERANCE:.1f} points of float32 at every severity, on {cfg['images'] * len(BENCHMARK):,} "
              f"frames per severity): {best}, {b_best['marginal']:,} B per extra domain and "
              f"{b_best['amortised']:,.0f} B amortised over D = {d} (float32: {b_ref['marginal']:,} B), for a drop "
              f"of at most {100 * max(reps[best]['drop']['max'], 0):.1f} points. Low rank pays in the marginal "
              f"cost of adding domains; at D = {d} its shared centres and basis weigh on the amortised cost. "
              f"Any of these is small next to the weights: ResNet-20 has {r['resnet20_parameters']:,} parameters "
              f"({4 * r['resnet20_parameters']:,} B in float32).",
              "", f"Time: {r['timings_s']['total_s']:.0f} s with {r['torch_threads']} torch thread(s) (table "
                  f"{r['timings_s']['table_s']:.0f} s, evaluation {r['timings_s']['evaluate_s']:.0f} s).", ""]
    return "\n".join(lines)


def _ranks(text: str) -> tuple[int, ...]:
    """``--ranks``: comma-separated integers in 1 .. MAX_RANK, deduplicated and sorted."""
    try:
        values = sorted({int(v) for v in text.split(",") if v.strip()})
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values or values[0] < 1 or values[-1] > MAX_RANK:
        raise argparse.ArgumentTypeError(
            f"ranks must be integers in 1 .. {MAX_RANK} (the {len(BENCHMARK)} corrupted domains' centred stack "
            f"has rank at most {MAX_RANK}), got {text!r}")
    return tuple(values)


def cmd_compact_tables(args) -> int:
    torch.set_num_threads(args.threads)
    cfg = CompactConfig.quick(args.seed) if args.quick else CompactConfig(seed=args.seed)
    cfg.ranks = args.ranks
    if args.images:
        cfg.images = args.images
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    result = run_compact(cfg, args.data_dir, log=lambda m: print(m, flush=True))
    command = "dynbn " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    (out / "compact_tables.json").write_text(json.dumps(result, indent=1))
    (out / "compact_tables.md").write_text(compact_markdown(result, command))
    print(f"recommendation: {result['recommendation']}; {result['timings_s']['total_s']:.0f} s")
    print(f"wrote {out / 'compact_tables.json'} and {out / 'compact_tables.md'}")
    return 0


def register(subparsers) -> None:
    """Add ``compact-tables`` to the ``dynbn`` command."""
    p = subparsers.add_parser("compact-tables", help="bytes per domain vs oracle accuracy for compact BN tables")
    p.add_argument("--data-dir", default=None, help=f"data directory (default: ${data.ENV_VAR} or {data.DEFAULT_DIR})")
    p.add_argument("--seed", type=int, default=0, help="seed for every random draw (default 0)")
    p.add_argument("--quick", action="store_true", help="K = 256, 200 test images, severities 3 and 5 (< 2 minutes)")
    p.add_argument("--images", type=int, default=None, help="test images per corruption and severity")
    p.add_argument("--ranks", type=_ranks, default=(1, 2, 4, 8), help=f"low-rank ranks, 1 .. {MAX_RANK} (default 1,2,4,8)")
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads (default 1: with 2, torch collapses when another process holds a core)")
    p.add_argument("--out", required=True)
    p.set_defaults(func=cmd_compact_tables)
