"""PNG plots for ``stream_bench.json``: accuracy against period, accuracy around a shift."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; never needs a display
import matplotlib.pyplot as plt  # noqa: E402

STYLE = {"dynbn_vote": dict(lw=2.5, color="black"), "dynbn_oracle": dict(ls="--", color="grey"),
         "dynbn_frame": dict(ls=":", color="black"), "dynbn_prior": dict(lw=2.5, color="tab:cyan")}


def accuracy_vs_period(r: dict, out: Path) -> list[Path]:
    """One plot per batch size: accuracy against N (log scale), one line per arm."""
    paths = []
    for b in r["batch_sizes"]:
        fig, ax = plt.subplots(figsize=(6, 4))
        for arm in r["arms"]:
            pts = sorted((row["period"], row["accuracy"]) for row in r["rows"]
                         if row["batch_size"] == b and row["arm"] == arm)
            ax.plot([p for p, _ in pts], [100 * a for _, a in pts], marker="o", label=arm, **STYLE.get(arm, {}))
        ax.set_xscale("log", base=2)
        ax.set_xlabel("shift period N (frames per corruption)")
        ax.set_ylabel("accuracy (%)")
        ax.set_title(f"severity {r['severity']}, {r['cameras']} camera(s), batch size {b}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, ncol=2)
        fig.tight_layout()
        path = out / f"accuracy_vs_period_b{b}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        paths.append(path)
    return paths


def _shifts(r: dict, period: int) -> int:
    return max((row.get("shifts", 0) for row in r["rows"] if row["period"] == period), default=0)


def curve_period(r: dict) -> int:
    """N = 64 when its stream has >= 32 shifts (curves reach 32 frames past a shift), else the
    smallest N >= 16 (the most shifts among periods long enough to show a recovery)."""
    if 64 in r["periods"] and _shifts(r, 64) >= 32:
        return 64
    return min((n for n in r["periods"] if n >= 16), default=max(r["periods"]))


def around_shift(r: dict, out: Path) -> list[Path]:
    """Accuracy against frames since a shift, one panel per batch size (period: ``curve_period``)."""
    period = curve_period(r)
    lo, hi = r["curve_offsets"]
    offsets = [o for o in range(lo, hi + 1) if o < period]
    fig, axes = plt.subplots(1, len(r["batch_sizes"]), figsize=(5 * len(r["batch_sizes"]), 4), squeeze=False)
    for ax, b in zip(axes[0], r["batch_sizes"]):
        curves = r["curves"].get(f"{period}/{b}", {})
        for arm, values in curves.items():
            pts = [(o, 100 * v) for o, v in zip(offsets, values) if v is not None]
            if pts:
                ax.plot(*zip(*pts), label=arm, **STYLE.get(arm, {}))
        ax.axvline(-0.5, color="red", lw=0.8)
        ax.set_xlabel("frames since the shift (camera's own frames)")
        ax.set_ylabel("accuracy (%)")
        ax.set_title(f"N={period}, B={b} ({_shifts(r, period)} shifts)")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7, ncol=2)
    fig.tight_layout()
    path = out / f"around_shift_n{period}.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return [path]


def write_plots(r: dict, out: Path) -> list[Path]:
    """Every plot of the report into ``out``; returns their paths."""
    out = Path(out)
    return accuracy_vs_period(r, out) + around_shift(r, out)
