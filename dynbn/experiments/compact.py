"""The compact-table study (``dynbn compact-tables``): bytes per domain against oracle accuracy.

For each representation of ``dynbn.bn.compact`` it measures the bytes per domain and the
oracle accuracy (true domain's statistics) on corrupted CIFAR-10 test frames.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass

import numpy as np
import torch

from .. import data
from ..bn.compact import EXACT, HALF_TINY, bytes_per_domain, from_compact, reconstruction_error, to_compact
from ..bn.per_sample import DomainSwitch
from ..bn.table import BNTable, fingerprint
from ..domains import BENCHMARK, DEFAULT_DOMAINS
from ..fitting import FitConfig, build_tables, split_train
from ..models import build_model
from ..sampling import apply, rng_for
from ..spectrum import to_tensor
from .machine import machine_line
from .report import CAVEAT


TOLERANCE = 0.005  # accuracy drop vs float32 the recommendation accepts, at every severity (0.5 points)


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
        return cls(images=200, severities=(3, 5), table_images=FitConfig.quick(seed).table_images, seed=seed)


def _float16_range(table: BNTable, domains: list[str]) -> dict:
    """Range of the compressed domains' variances against float16's, and their float16 round-trip error."""
    var = torch.cat([table.stacked(layer, domains)[1].flatten() for layer in table.layers])
    rel = ((var.half().float() - var).abs() / var).max().item()
    return {"var_min": var.min().item(), "var_max": var.max().item(), "var_max_rel_error": rel,
            "below_smallest_normal": int((var < HALF_TINY).sum()), "smallest_normal": HALF_TINY}


@torch.no_grad()
def run_compact(cfg: CompactConfig, root=None, log=print) -> dict:
    """Fit a BN table for ResNet-20, compact it every way, measure bytes and oracle accuracy."""

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

    pct = lambda v: f"{100 * v:.1f}"  # noqa: E731
    sev, reps, cfg = r["severities"], r["representations"], r["config"]
    d = len(r["table"]["compressed"])
    lines = [f"# dynbn compact-tables (ResNet-20, {cfg['images']} test images per corruption and severity, "
             f"seed {cfg['seed']})", "", f"Regenerate: `{command}`", "", machine_line(r.get("machine")), "", CAVEAT, "",
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

