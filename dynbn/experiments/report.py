"""Markdown rendering of the reproduce report (JSON is the source of truth)."""

from __future__ import annotations

from ..domains import CLEAN
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


GAP_TOP = 5  # costliest confusions listed per severity


def _gap_lines(gap: dict | None, sev: list[str], arm: str = "dynbn_frame") -> list[str]:
    """The detector's share of the gap: oracle - dynbn per severity, split over the confusion matrix's cells."""
    if not gap:
        return []
    soft = arm != "dynbn_frame"
    lines = ["", "## Where dynbn loses to the oracle", "",
             "Both arms read the same table, so oracle - dynbn splits exactly over the cells (true, detected) of the "
             "confusion matrix: a cell costs (1 / frames) x its frames' (oracle correct - dynbn correct), in accuracy "
             "points; " + (f"the dynbn arm here is {arm}, whose mixture differs from the true entry even where the most "
                           "probable domain is right, so the diagonal carries a cost (negative: the mixture beats the "
                           "true entry)" if soft else "correctly detected frames cost nothing")
             + f". The {GAP_TOP} costliest off-diagonal cells per severity "
             "(per confused frame: the cell's cost spread over its own frames):", "",
             "| severity | gap | confused frames | true -> detected: cost (share of frames, per confused frame) | "
             f"top {GAP_TOP} | other cells | diagonal | sent to clean |",
             "|---|---:|---:|---|---:|---:|---:|---:|"]
    rows = [(s, gap["by_severity"][s]) for s in sev] + [("all", gap["all"]), ("clean", gap["clean"])]
    for name, g in rows:
        top = g["cells"][:GAP_TOP]
        shown = sum(c["cost"] for c in top)
        rest = sum(c["cost"] for c in g["cells"][GAP_TOP:])
        cells = "; ".join(f"{c['true']} -> {c['detected']}: {100 * c['cost']:.2f} ({100 * c['share']:.1f} %, "
                          f"{100 * c['cost_per_frame']:.0f})" for c in top)
        to_clean = sum(c["cost"] for c in g["cells"] if c["detected"] == CLEAN)
        lines.append(f"| {name} | {100 * g['gap']:.2f} | {100 * g['confused_share']:.1f} % | {cells} | "
                     f"{100 * shown:.2f} | {100 * rest:.2f} | {100 * g['diagonal_cost']:.2f} | {100 * to_clean:.2f} |")
    lines += ["", "gap = top cells + other cells + diagonal" + ("." if soft else " (the diagonal is 0 up to floating-point ties)")
              + "; sent to clean: the cost of the corrupted frames the detector left with the checkpoint's statistics "
              "(part of the other columns)."]
    return lines


def reproduce_markdown(r: dict, command: str) -> str:
    """The report as Markdown: summary, per-severity, per-corruption tables, detector, K sweep."""
    sev = r["severities"]
    lines = [f"# dynbn reproduce ({r['model']}, {r['images']} test images per corruption and severity, seed {r['seed']})", "",
             f"Regenerate: `{command}`", "", machine_line(r.get("machine")), "", CAVEAT, "",
             f"dynbn arm: {r.get('dynbn_arm', 'dynbn_frame')}; detector trained on "
             f"{r['fit']['detector_images_per_corruption_severity']} images per domain and severity.", "",
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
    lines += _gap_lines(r.get("gap"), sev, r.get("dynbn_arm", "dynbn_frame"))
    lines += ["", f"## Table size K (images per domain; {r['fit']['sweep_images']} test frames per corruption and severity)", "",
              "| K | oracle | dynbn |", "|---:|---:|---:|"]
    lines += [f"| {k} | {_pct(v['oracle'])} | {_pct(v['dynbn'])} |" for k, v in r["k_sweep"].items()]
    t = r["timings_s"]
    lines += ["", f"Time: {t['total_s']:.0f} s in all on {r['torch_threads']} torch threads "
              f"(detector data {t['detector_data_s']:.0f} s, detector fit {t['detector_fit_s']:.0f} s, "
              f"tables {t['tables_s']:.0f} s, evaluation {t['evaluate_s']:.0f} s).", ""]
    return "\n".join(lines)
