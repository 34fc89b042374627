"""Severity-aware BN tables: one entry per (corruption, severity) against one per corruption.

The default table keys statistics by corruption only, calibrated on frames of mixed
severities. A severity-aware table has one entry per (corruption, severity) (domain names
like ``"fog@5"``: 15 x 5 + clean = 76 entries), each calibrated on K frames of that exact
severity, and a detector with one class per entry picks it. ``dynbn severity-tables``
measures, on corrupted CIFAR-10 test frames, the accuracy of (``ARMS``):

- ``source``: the checkpoint's statistics;
- ``corruption_oracle`` / ``corruption_detected``: one table per corruption (the recipe of
  ``fitting.build``) with the true corruption / the 16-class detector's pick;
- ``severity_oracle``: the entry of the true (corruption, severity);
- ``severity_hard``: the entry the 76-class detector ranks first;
- ``severity_interpolated``: the corruption whose probabilities summed over severities are
  largest, with statistics mixed over its five severity entries in proportion to their
  renormalised probabilities (``interpolation_weights``, ``DomainSwitch`` weights);
- ``bn_adapt``: test-time statistics of batches of 16 frames of one corruption (reference).

Here every frame is on its own. ``dynbn_vote`` uses the same entries differently: it sums the
severity evidence over a camera's segment and keeps half the weight on the corruption's entry
(``dynbn.vote.Votes.levels``, ``dynbn.methods.dynbn.DynBNVote``), which gains where this
per-frame choice does not.

Both detectors train on the same frames (``sampling.domain_samples``) and share the clean
logit bias tuned for the 16-class one. The report gives the accuracies, both detectors'
corruption accuracy and the 76-class one's exact-severity accuracy, the table and detector
sizes, the timings, and a recommendation based on a paired comparison of the deployable arms.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field

import torch

from .. import data
from ..bn.compact import bytes_per_domain
from ..bn.per_sample import DomainSwitch
from ..bn.table import BNTable, fingerprint
from ..detector import Detector, DetectorConfig
from ..domains import BENCHMARK, CLEAN
from ..fitting import FitConfig, build, split_train
from ..methods import build_method
from ..models import build_model
from ..sampling import SEVERITIES, apply, domain_samples, rng_for
from ..severity import fit_head, interpolation_weights, severity_name, severity_tables
from ..spectrum import to_tensor
from .machine import machine_line
from .report import CAVEAT


ARMS = ("source", "corruption_oracle", "corruption_detected", "severity_oracle", "severity_hard",
        "severity_interpolated", "bn_adapt")


LABELS = {"source": "source", "corruption_oracle": "per-corruption oracle",
          "corruption_detected": "per-corruption detected", "severity_oracle": "per-severity oracle",
          "severity_hard": "per-severity hard", "severity_interpolated": "per-severity interpolated",
          "bn_adapt": "bn_adapt (batch 16)"}


# paired comparisons reported (first arm minus second, on the same frames)
COMPARISONS = (("severity_interpolated", "corruption_detected"), ("severity_hard", "corruption_detected"),
               ("severity_interpolated", "severity_hard"), ("severity_oracle", "corruption_oracle"))


Z = 2.0  # a gain counts when it exceeds Z paired standard errors


def fit_severity_detector(fit_part: data.Split, cfg: FitConfig, clean_bias: float, frost_dir) -> tuple[Detector, dict]:
    """The 76-class detector, trained on the 16-class detector's frames with (corruption, severity) labels.

    ``fit_part`` is the fitting part of the training split (``fitting.split_train``), as in
    ``fitting.build``; the clean logit gets ``clean_bias`` (the 16-class detector's tuned one).
    Returns (detector, timings).
    """
    t0 = time.perf_counter()
    frames, domain_idx, _ = domain_samples(fit_part, cfg.domains, cfg.detector_images, "detector", cfg.seed, frost_dir)
    t1 = time.perf_counter()
    detector = fit_head(frames, domain_idx, cfg.domains, cfg.detector_images, cfg.detector, cfg.detector.hidden)
    detector.logit_bias[detector.domains.index(CLEAN)] = clean_bias
    return detector, {"severity_detector_data_s": t1 - t0, "severity_detector_fit_s": time.perf_counter() - t1}


@dataclass
class SeverityConfig:
    """One run of ``dynbn severity-tables``; ``quick()`` is the three-minute variant, ``full()`` the default."""

    images: int = 1000                          # test images per corruption and severity
    severities: tuple[int, ...] = SEVERITIES    # test severities
    severity_table_images: int = 256            # K per (corruption, severity) entry
    bn_adapt_batch: int = 16
    eval_batch: int = 512                       # a multiple of bn_adapt_batch: only each domain's last batch is short
    fit: FitConfig = field(default_factory=FitConfig)  # detectors and the per-corruption table

    @property
    def seed(self) -> int:
        return self.fit.seed

    @classmethod
    def full(cls, seed: int = 0) -> "SeverityConfig":
        return cls(fit=FitConfig(seed=seed, detector=DetectorConfig(seed=seed), severity_images=0))

    @classmethod
    def quick(cls, seed: int = 0) -> "SeverityConfig":
        fit = FitConfig.quick(seed)
        fit.severity_images = 0  # this report fits its own 76-class detector and entries
        return cls(images=200, severities=(3, 5), severity_table_images=128, fit=fit)


class Arms:
    """Every arm's predictions on a batch of frames of one known domain, timed per arm."""

    def __init__(self, model, table16: BNTable, detector16: Detector, table76: BNTable, detector76: Detector,
                 bn_adapt_batch: int) -> None:

        self.model, self.detector16, self.detector76 = model, detector16, detector76
        self.domains16, self.domains76 = list(detector16.domains), list(detector76.domains)
        self.switch16 = DomainSwitch(model, table16, self.domains16)
        self.switch76 = DomainSwitch(model, table76, self.domains76)
        self.bn_adapt, self.bn_adapt_batch = build_method("bn_adapt", model), bn_adapt_batch
        self.seconds = {name: 0.0 for name in ARMS + ("detector16", "detector76")}

    def _timed(self, name: str, fn):
        t0 = time.perf_counter()
        out = fn()
        self.seconds[name] += time.perf_counter() - t0
        return out

    @torch.no_grad()
    def __call__(self, x: torch.Tensor, corruption: str, severity: int) -> tuple[dict, dict]:
        """(arm -> predicted classes, detector outputs) for frames of ``corruption`` at ``severity``."""
        n = len(x)
        true16 = torch.full((n,), self.domains16.index(corruption))
        true76 = torch.full((n,), self.domains76.index(severity_name(corruption, severity)))
        picked16 = self._timed("detector16", lambda: self.detector16(x)).argmax(1)
        logits76 = self._timed("detector76", lambda: self.detector76(x))
        hard = logits76.argmax(1)
        weights, detected = interpolation_weights(logits76)
        runs = {
            "source": lambda: self.model(x),
            "corruption_oracle": lambda: self.switch16.forward(x, true16),
            "corruption_detected": lambda: self.switch16.forward(x, picked16),
            "severity_oracle": lambda: self.switch76.forward(x, true76),
            "severity_hard": lambda: self.switch76.forward(x, hard),
            "severity_interpolated": lambda: self.switch76.forward(x, weights=weights),
            "bn_adapt": lambda: torch.cat([self.bn_adapt(x[i:i + self.bn_adapt_batch])
                                           for i in range(0, n, self.bn_adapt_batch)]),
        }
        preds = {name: self._timed(name, run).argmax(1) for name, run in runs.items()}
        detections = {"corruption16": picked16 == true16, "corruption76": detected == true16, "exact76": hard == true76}
        return preds, detections


def paired_gain(a: torch.Tensor, b: torch.Tensor) -> dict:
    """Accuracy of ``a`` minus that of ``b`` (per-frame correctness on the same frames) and its standard error."""
    d = a.double() - b.double()
    return {"gain": d.mean().item(), "se": (d.std() / len(d) ** 0.5).item(), "frames": len(d)}


def run_severity(cfg: SeverityConfig, root=None, log=print) -> dict:
    """Fit both detectors and both tables from training images, evaluate every arm on test frames."""

    t_start = time.perf_counter()
    torch.manual_seed(cfg.seed)
    model = build_model("resnet20", root)
    frost = data.frost_dir(root)
    train = data.load_cifar10("train", root)
    test = data.load_cifar10("test", root).subset(cfg.images, cfg.seed)
    y = torch.from_numpy(test.labels)
    t0 = time.perf_counter()
    detector16, tables, fit_timings = build(model, train, cfg.fit, frost, log=log)
    timings = {f"build_{k}": v for k, v in fit_timings.items() if k.endswith("_s")}
    timings["build_s"] = time.perf_counter() - t0
    table16 = tables[cfg.fit.table_images]
    clean_bias = float(detector16.logit_bias[detector16.domains.index(CLEAN)])
    fit_part, _ = split_train(train, cfg.fit.seed)
    detector76, detector_timings = fit_severity_detector(fit_part, cfg.fit, clean_bias, frost)
    timings.update(detector_timings)
    log(f"76-class detector fitted ({sum(detector_timings.values()):.0f} s)")
    t0 = time.perf_counter()
    table76 = severity_tables(model, fit_part, cfg.severity_table_images, cfg.seed, frost)
    timings["severity_tables_s"] = time.perf_counter() - t0
    log(f"{len(table76.domains) - 1} severity tables with K = {cfg.severity_table_images} ({timings['severity_tables_s']:.0f} s)")

    arms = Arms(model, table16, detector16, table76, detector76, cfg.bn_adapt_batch)
    correct = {arm: {} for arm in ARMS}        # arm -> (corruption, severity) -> per-frame correctness
    detected = {}                              # (corruption, severity) -> detector outputs' correctness

    def evaluate(key, x, corruption, severity):
        parts = [arms(x[i:i + cfg.eval_batch], corruption, severity) for i in range(0, len(x), cfg.eval_batch)]
        for arm in ARMS:
            correct[arm][key] = torch.cat([p[arm] for p, _ in parts]) == y
        detected[key] = {k: torch.cat([d[k] for _, d in parts]) for k in parts[0][1]}

    t0 = time.perf_counter()
    for c in BENCHMARK:
        for s in cfg.severities:
            evaluate((c, s), to_tensor(apply(test.images, c, s, rng_for(cfg.seed, "test", c, s), frost)), c, s)
            log(f"{c:>18} s{s}: " + "  ".join(f"{a} {correct[a][(c, s)].float().mean():.3f}" for a in ARMS))
    evaluate((CLEAN, 0), to_tensor(test.images), CLEAN, 0)
    timings["evaluate_s"] = time.perf_counter() - t0
    timings["total_s"] = time.perf_counter() - t_start
    return summarise(cfg, model, (detector16, detector76), (table16, table76), correct, detected, arms.seconds,
                     clean_bias, timings)


def _acc(values: torch.Tensor) -> float:
    return values.float().mean().item()


def _cat(per_key: dict, keys) -> torch.Tensor:
    """Per-frame values of several (corruption, severity) keys in one tensor (equal frames per key)."""
    return torch.cat([per_key[k] for k in keys])


def summarise(cfg, model, detectors, tables, correct, detected, arm_seconds, clean_bias, timings) -> dict:
    """The report dict (JSON-able) from per-frame correctness of arms and detectors."""

    sev = [str(s) for s in cfg.severities]
    keys = {s: [(c, int(s)) for c in BENCHMARK] for s in sev}
    corrupted = [k for s in sev for k in keys[s]]
    arms = {arm: {"by_severity": {s: _acc(_cat(correct[arm], keys[s])) for s in sev},
                  "mean": _acc(_cat(correct[arm], corrupted)), "clean": _acc(correct[arm][(CLEAN, 0)]),
                  "table": {c: {s: _acc(correct[arm][(c, int(s))]) for s in sev} for c in BENCHMARK}}
            for arm in ARMS}
    comparisons = {}
    for a, b in COMPARISONS:
        comparisons[f"{a} - {b}"] = {
            "corrupted": paired_gain(_cat(correct[a], corrupted), _cat(correct[b], corrupted)),
            "by_severity": {s: paired_gain(_cat(correct[a], keys[s]), _cat(correct[b], keys[s]))["gain"] for s in sev},
            "clean": paired_gain(correct[a][(CLEAN, 0)], correct[b][(CLEAN, 0)])}
    layers = fingerprint(model)
    n_total = sum(len(v) for v in correct["source"].values())
    tabs = {}
    for name, table, detector, k in (("per_corruption", tables[0], detectors[0], cfg.fit.table_images),
                                     ("per_severity", tables[1], detectors[1], cfg.severity_table_images)):
        stored = len(table.domains) - 1  # clean is the checkpoint's own statistics: the model carries it
        tabs[name] = {"entries": len(table.domains), "stored_entries": stored, "images_per_entry": k,
                      "calibration_frames": stored * k,
                      "bytes": bytes_per_domain(layers, "float32", domains=stored)["total"],
                      "detector_classes": len(detector.domains),
                      "detector_parameters": sum(p.numel() for p in detector.mlp.parameters()),
                      "detector_macs": detector.macs()}
    det = {name: {"by_severity": {s: _acc(_cat({k: v[name] for k, v in detected.items()}, keys[s])) for s in sev},
                  "mean": _acc(torch.cat([detected[k][name] for k in corrupted]))}
           for name in ("corruption16", "corruption76", "exact76")}
    for name in ("corruption16", "corruption76"):  # clean frames kept on the checkpoint's statistics
        det[name]["clean_kept"] = _acc(detected[(CLEAN, 0)][name])
    result = {
        "config": asdict(cfg), "model": "resnet20", "severities": sev, "corruptions": list(BENCHMARK),
        "arms": arms, "comparisons": comparisons, "detectors": det, "tables": tabs,
        "clean_bias": clean_bias,
        "model_bytes": 4 * sum(p.numel() for p in model.parameters()),
        "timings_s": {k: round(v, 1) for k, v in timings.items()},
        "eval_ms_per_frame": {k: round(1000 * v / n_total, 3) for k, v in arm_seconds.items()},
        "torch_threads": torch.get_num_threads(),
    }
    result["recommendation"] = recommend(result)
    return result


def recommend(r: dict) -> dict:
    """Per-severity tables (the better of hard and interpolated) or one table per corruption, from the numbers.

    Per-severity tables are recommended when the better severity-aware arm beats
    ``corruption_detected`` on corrupted frames by more than Z paired standard errors and
    does not lose on clean frames by more than Z standard errors; otherwise the smaller
    per-corruption table is.
    """
    arms, comp, tabs = r["arms"], r["comparisons"], r["tables"]
    mode = max(("severity_interpolated", "severity_hard"), key=lambda a: arms[a]["mean"])
    vs = comp[f"{mode} - corruption_detected"]
    gain, se = vs["corrupted"]["gain"], vs["corrupted"]["se"]
    clean_gain, clean_se = vs["clean"]["gain"], vs["clean"]["se"]
    small, big = tabs["per_corruption"], tabs["per_severity"]
    by_sev = ", ".join(f"s{s} {100 * g:+.1f}" for s, g in vs["by_severity"].items())
    oracle = comp["severity_oracle - corruption_oracle"]["corrupted"]["gain"]
    interp = comp["severity_interpolated - severity_hard"]["corrupted"]
    facts = (f"{LABELS[mode].capitalize()} scores {100 * arms[mode]['mean']:.1f} % against "
             f"{100 * arms['corruption_detected']['mean']:.1f} % for one table per corruption with the 16-class "
             f"detector ({100 * gain:+.1f} points, paired SE {100 * se:.1f}; by severity {by_sev}; clean frames "
             f"{100 * clean_gain:+.1f}). It costs {big['entries']} entries and {big['bytes']:,} B of statistics "
             f"against {small['entries']} and {small['bytes']:,} B ({big['bytes'] / small['bytes']:.0f}x; the "
             f"model's weights take {r['model_bytes']:,} B), plus "
             f"{big['detector_parameters'] - small['detector_parameters']:,} detector parameters. Interpolated minus hard selection: "
             f"{100 * interp['gain']:+.1f} points (SE {100 * interp['se']:.1f}). With the true domain, per-severity "
             f"entries gain {100 * oracle:+.1f} points over per-corruption ones")
    if gain > Z * se and clean_gain >= -Z * clean_se:
        selection = mode.removeprefix("severity_")
        return {"choice": f"per-severity tables, {selection}",
                "text": f"Use per-(corruption, severity) tables with {selection} selection: {facts}."}
    if gain <= 0:
        reason = "the better severity-aware arm does not beat it"
    elif gain <= Z * se:
        reason = f"the severity-aware gain is within {Z:g} paired standard errors"
    else:
        reason = f"the severity-aware arm loses more than {Z:g} standard errors on clean frames"
    return {"choice": "one table per corruption", "text": f"Keep one table per corruption: {reason}. {facts}."}


def severity_markdown(r: dict, command: str) -> str:
    """The report as Markdown: accuracy per severity and per corruption, detectors, sizes, recommendation."""

    pct = lambda v: f"{100 * v:.1f}"  # noqa: E731
    sev, arms, cfg = r["severities"], r["arms"], r["config"]
    head = "| " + " | ".join(LABELS[a] for a in ARMS) + " |"
    rule = "|---|" + "---:|" * len(ARMS)
    last = sev[-1]
    lines = [f"# dynbn severity-tables (ResNet-20, {cfg['images']} test images per corruption and severity, "
             f"seed {cfg['fit']['seed']})", "", f"Regenerate: `{command}`", "", machine_line(r.get("machine")), "", CAVEAT, "",
             "Arms: source = checkpoint statistics; per-corruption = one entry per corruption (severities mixed) "
             "chosen by the true corruption (oracle) or the 16-class detector; per-severity = one entry per "
             "(corruption, severity) chosen by the truth (oracle), by the 76-class detector's top class (hard), or "
             "as the mixture of the detected corruption's five severity entries weighted by their renormalised "
             "probabilities (interpolated); bn_adapt = statistics of each batch of "
             f"{cfg['bn_adapt_batch']} consecutive frames of one corruption (the last batch per corruption and "
             f"severity holds the remaining {cfg['images'] % cfg['bn_adapt_batch'] or cfg['bn_adapt_batch']}).", "",
             f"## Accuracy (%), mean over the {len(r['corruptions'])} corruptions", "",
             "| severity " + head, rule]
    for s in sev:
        lines.append(f"| s{s} | " + " | ".join(pct(arms[a]["by_severity"][s]) for a in ARMS) + " |")
    lines += ["| mean | " + " | ".join(pct(arms[a]["mean"]) for a in ARMS) + " |",
              "| clean | " + " | ".join(pct(arms[a]["clean"]) for a in ARMS) + " |",
              "", "Paired differences on the same frames (points; SE over corrupted frames):", ""]
    for name, c in r["comparisons"].items():
        a, b = name.split(" - ")
        lines.append(f"- {LABELS[a]} - {LABELS[b]}: {100 * c['corrupted']['gain']:+.1f} "
                     f"(SE {100 * c['corrupted']['se']:.1f}; " + ", ".join(f"s{s} {100 * g:+.1f}"
                                                                       for s, g in c["by_severity"].items())
                     + f"; clean {100 * c['clean']['gain']:+.1f})")
    lines += ["", f"## Per corruption at severity {last} (%)", "", "| corruption " + head, rule]
    for c in r["corruptions"]:
        lines.append(f"| {c} | " + " | ".join(pct(arms[a]["table"][c][last]) for a in ARMS) + " |")
    det, tabs = r["detectors"], r["tables"]
    lines += ["", "## Detectors (% of test frames)", "",
              "| severity | 16-class: corruption | 76-class: corruption | 76-class: exact severity |",
              "|---|---:|---:|---:|"]
    for s in sev:
        lines.append(f"| s{s} | " + " | ".join(pct(det[n]["by_severity"][s]) for n in ("corruption16", "corruption76",
                                                                                         "exact76")) + " |")
    lines += [f"| mean | {pct(det['corruption16']['mean'])} | {pct(det['corruption76']['mean'])} | "
              f"{pct(det['exact76']['mean'])} |",
              f"| clean kept clean | {pct(det['corruption16']['clean_kept'])} | "
              f"{pct(det['corruption76']['clean_kept'])} | |", "",
              f"Both detectors train on the same frames ({cfg['fit']['detector_images']} per domain and severity) "
              f"and share the clean logit bias tuned for the 16-class one ({r['clean_bias']:.2f}). The 76-class "
              "corruption is the argmax of its probabilities summed over severities.", "",
              "## Sizes", "",
              "| table | entries | stored entries | bytes (float32) | K per entry | calibration frames "
              "| detector classes | detector parameters | detector MACs |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for name, t in tabs.items():
        lines.append(f"| {name.replace('_', ' ')} | {t['entries']} | {t['stored_entries']} | {t['bytes']:,} | "
                     f"{t['images_per_entry']} | {t['calibration_frames']:,} | {t['detector_classes']} | "
                     f"{t['detector_parameters']:,} | {t['detector_macs']:,} |")
    lines += ["", "Clean is the checkpoint's own statistics: the model carries it, so it costs no bytes. The "
              "per-corruption entries mix severities 1-5; each per-severity entry is calibrated on frames of one "
              "severity.", "", "## Recommendation", "", r["recommendation"]["text"], ""]
    t, ms = r["timings_s"], r["eval_ms_per_frame"]
    lines += [f"Time: {t['total_s']:.0f} s with {r['torch_threads']} torch thread(s): fitting.build "
              f"(16-class detector, per-corruption table, their tuning) {t['build_s']:.0f} s, 76-class detector {t['severity_detector_data_s']:.0f} s data + "
              f"{t['severity_detector_fit_s']:.0f} s fit, per-severity tables {t['severity_tables_s']:.0f} s, "
              f"evaluation {t['evaluate_s']:.0f} s. Evaluation cost per frame (ms): "
              + ", ".join(f"{LABELS.get(k, k)} {v:.2f}" for k, v in ms.items()) + ".", ""]
    return "\n".join(lines)

