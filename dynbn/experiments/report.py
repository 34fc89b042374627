"""Markdown rendering of the reproduce report (JSON is the source of truth)."""

from __future__ import annotations

from .machine import machine_line
from .reproduce import ARMS

CAVEAT = (
    "Data caveat: the CIFAR-10 copy used here was decoded from JPEG files (quality-75-like, 4:2:0 "
    "chroma), so 'clean' means mildly JPEG-corrupted: ResNet-20 scores 81.0 % on it against 91.7 % on "
    "lossless CIFAR-10, and every corruption stacks on those artefacts. Corruptions are re-synthesised "
    "from the CIFAR-10-C recipe (motion blur and snow with our own motion-blur kernel, not ImageMagick), "
    "so figures are comparable in trend, not digit for digit, with the published CIFAR-10-C."
)


def _pct(v: float) -> str:
    return f"{100 * v:.1f}"


def reproduce_markdown(r: dict, command: str) -> str:
    """The report as Markdown: summary, per-severity, per-corruption tables, detector, K sweep."""
    sev = r["severities"]
    lines = [f"# dynbn reproduce ({r['model']}, {r['images']} test images per corruption and severity, seed {r['seed']})", "",
             f"Regenerate: `{command}`", "", machine_line(r.get("machine")), "", CAVEAT, "",
             "## Mean accuracy (%) over the 15 corruptions", "",
             "| arm | mean | " + " | ".join(f"s{s}" for s in sev) + " | clean |",
             "|---|---:|" + "---:|" * len(sev) + "---:|"]
    for arm in ARMS:
        a = r["arms"][arm]
        lines.append(f"| {arm} | {_pct(a['mean'])} | " + " | ".join(_pct(a["by_severity"][s]) for s in sev)
                     + f" | {_pct(r['clean'][arm])} |")
    lines += ["", "## Per corruption and severity (%): source / dynbn / oracle / bn_adapt", "",
              "| corruption | " + " | ".join(f"s{s}" for s in sev) + " |", "|---|" + "---|" * len(sev)]
    for c in r["arms"]["source"]["table"]:
        cells = [" / ".join(_pct(r["arms"][arm]["table"][c][s]) for arm in ARMS) for s in sev]
        lines.append(f"| {c} | " + " | ".join(cells) + " |")
    det = r["detector"]
    lines += ["", "## Detector", "",
              f"Accuracy {_pct(det['accuracy'])} % on corrupted test frames, {_pct(det['clean_accuracy'])} % on clean ones; "
              f"{det['macs'] / 1e6:.2f} M multiply-accumulates per frame, {100 * det['macs'] / det['model_macs']:.2f} % of "
              f"the classifier's {det['model_macs'] / 1e6:.1f} M (plus one 32x32 real FFT per channel).", "",
              "| severity | " + " | ".join(sev) + " |", "|---|" + "---:|" * len(sev),
              "| accuracy | " + " | ".join(_pct(det["by_severity"][s]) for s in sev) + " |", "",
              "| corruption | detector accuracy (%) |", "|---|---:|"]
    lines += [f"| {c} | {_pct(v)} |" for c, v in det["by_corruption"].items()]
    lines += ["", "Confusion matrix (rows: true domain, columns: detected; counts):", "",
              "| true \\ detected | " + " | ".join(d[:6] for d in det["domains"]) + " |",
              "|---|" + "---:|" * len(det["domains"])]
    lines += [f"| {d} | " + " | ".join(str(n) for n in row) + " |" for d, row in zip(det["domains"], det["confusion"])]
    lines += ["", f"## Table size K (images per domain; {r['fit']['sweep_images']} test frames per corruption and severity)", "",
              "| K | oracle | dynbn |", "|---:|---:|---:|"]
    lines += [f"| {k} | {_pct(v['oracle'])} | {_pct(v['dynbn'])} |" for k, v in r["k_sweep"].items()]
    t = r["timings_s"]
    lines += ["", f"Time: {t['total_s']:.0f} s in all on {r['torch_threads']} torch threads "
              f"(detector data {t['detector_data_s']:.0f} s, detector fit {t['detector_fit_s']:.0f} s, "
              f"tables {t['tables_s']:.0f} s, evaluation {t['evaluate_s']:.0f} s).", ""]
    return "\n".join(lines)
