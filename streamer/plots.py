"""PNG plots of a run: accuracy over time with shift boundaries, and accuracy per arm."""

from __future__ import annotations

from collections import defaultdict

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def plot_accuracy_over_time(results, path, window: int = 8) -> None:
    """Per-arm accuracy averaged over cameras at each frame index (moving average), shifts dashed."""
    hits = defaultdict(lambda: defaultdict(list))   # arm -> seq -> [hit]
    shifts = set()
    for r in results:
        if r.truth is None or r.truth.label < 0:
            continue
        if r.truth.since_shift == 0 and r.seq > 0:
            shifts.add(r.seq)
        for arm, p in r.preds.items():
            hits[arm][r.seq].append(p == r.truth.label)
    fig, ax = plt.subplots(figsize=(10, 4))
    for arm, by_seq in hits.items():
        seqs = np.array(sorted(by_seq))
        acc = np.array([np.mean(by_seq[s]) for s in seqs])
        kernel = np.ones(min(window, len(acc)))
        smooth = np.convolve(acc, kernel, "same") / np.convolve(np.ones_like(acc), kernel, "same")  # edge-corrected
        ax.plot(seqs, 100 * smooth, label=arm, lw=1.2)
    for s in sorted(shifts)[:200]:  # with many staggered shifts the lines would hide the curves
        ax.axvline(s, color="grey", lw=0.4, ls="--", alpha=0.5)
    ax.set(xlabel="frame index (per camera)", ylabel=f"accuracy % (mean over cameras, {window}-frame average)",
           title="Accuracy over time; dashed: shift boundaries", ylim=(0, 100))
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_per_arm(rep: dict, path) -> None:
    """Bar chart: overall accuracy per arm."""
    arms = list(rep["results"])
    acc = [100 * (rep["results"][a]["accuracy"] or 0.0) for a in arms]
    fig, ax = plt.subplots(figsize=(max(4, 1.3 * len(arms)), 3.5))
    bars = ax.bar(arms, acc, color="tab:blue")
    ax.bar_label(bars, fmt="%.1f")
    ax.set(ylabel="accuracy %", ylim=(0, 100), title=f"Accuracy per arm ({rep['frames_published']} frames)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
