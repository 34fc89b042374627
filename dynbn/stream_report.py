"""Markdown for ``stream_bench.json``: accuracy tables, catch-up periods, timing, acceptance."""

from __future__ import annotations

from .methods import BASELINES, bn_ema, bn_prior, tent, unmix_tns
from .report import CAVEAT

ACCEPT_MAX_PERIOD = 16       # dynbn_vote >= every baseline for N <= this
ACCEPT_B1_MARGIN = 0.20      # at B = 1, dynbn_vote >= bn_adapt + this
ACCEPT_TIME_B64 = 1.10       # dynbn_vote's relative time at B = 64


ARMS_NOTE = (
    f"Arms: source (checkpoint statistics); bn_adapt (test-batch statistics); bn_prior (Schneider et al. 2020, "
    f"prior strength N = {bn_prior.PRIOR_STRENGTH}); bn_ema (moving average per camera, momentum "
    f"{bn_ema.MOMENTUM} per frame, tuned on training streams); tent (Wang et al. 2021: Adam lr {tent.LR}, one "
    f"step per batch, continual); unmix_tns (Tomar et al. 2024: K = {unmix_tns.COMPONENTS}, authors' defaults); "
    "dynbn_frame (detected domain per frame); dynbn_vote (detector + per-camera vote); dynbn_oracle (true domain).")


def _pct(v) -> str:
    return "–" if v is None else f"{100 * v:.1f}"


def _cell(rows, period, b, arm, key="accuracy"):
    for r in rows:
        if r["period"] == period and r["batch_size"] == b and r["arm"] == arm:
            return r.get(key)
    return None


def _pooled(r: dict, b: int, arm: str):
    return r.get("relative_time_pooled", {}).get(str(b), {}).get(arm, {}).get("relative_time")


def _table(r: dict, key: str, fmt, pooled: bool = False) -> list[str]:
    lines = []
    extra = " all N |" if pooled else ""
    for b in r["batch_sizes"]:
        lines += [f"**B = {b}**", "", "| arm | " + " | ".join(f"N={n}" for n in r["periods"]) + f" |{extra}",
                  "|---|" + "---:|" * (len(r["periods"]) + pooled)]
        for arm in r["arms"]:
            cells = [fmt(_cell(r["rows"], n, b, arm, key)) for n in r["periods"]]
            if pooled:
                cells.append(f"**{fmt(_pooled(r, b, arm))}**")
            lines.append(f"| {arm} | " + " | ".join(cells) + " |")
        lines.append("")
    return lines


def catch_up(r: dict) -> dict[tuple[int, str], int | None]:
    """(B, baseline) -> the smallest period at which the baseline is at least as accurate as dynbn_vote."""
    out = {}
    for b in r["batch_sizes"]:
        for arm in BASELINES:
            if arm not in r["arms"] or "dynbn_vote" not in r["arms"]:
                continue
            out[(b, arm)] = next((n for n in r["periods"]
                                  if _cell(r["rows"], n, b, arm) >= _cell(r["rows"], n, b, "dynbn_vote")), None)
    return out


def acceptance(r: dict) -> list[tuple[str, bool, str]]:
    """The issue's acceptance checks: (statement, holds, detail)."""
    rows, checks = r["rows"], []
    if "dynbn_vote" not in r["arms"]:
        return checks
    losses = [f"N={n} B={b} {arm} {_pct(_cell(rows, n, b, arm))} > {_pct(_cell(rows, n, b, 'dynbn_vote'))}"
              for n in r["periods"] if n <= ACCEPT_MAX_PERIOD for b in r["batch_sizes"]
              for arm in BASELINES if arm in r["arms"] and _cell(rows, n, b, arm) > _cell(rows, n, b, "dynbn_vote")]
    checks.append((f"dynbn_vote >= every test-time baseline at every N <= {ACCEPT_MAX_PERIOD}, every B",
                   not losses, "; ".join(losses) or "no loss"))
    if 1 in r["batch_sizes"] and "bn_adapt" in r["arms"]:
        gaps = {n: _cell(rows, n, 1, "dynbn_vote") - _cell(rows, n, 1, "bn_adapt") for n in r["periods"]}
        checks.append((f"B = 1: dynbn_vote >= bn_adapt + {ACCEPT_B1_MARGIN:.2f} (every N)",
                       min(gaps.values()) >= ACCEPT_B1_MARGIN,
                       ", ".join(f"N={n}: +{100 * g:.1f}" for n, g in gaps.items())))
    if 64 in r["batch_sizes"] and "source" in r["arms"]:
        pooled = _pooled(r, 64, "dynbn_vote")
        times = ", ".join(f"N={n}: {_cell(rows, n, 64, 'dynbn_vote', 'relative_time'):.2f}" for n in r["periods"])
        if pooled is not None:
            checks.append((f"B = 64: dynbn_vote relative time <= {ACCEPT_TIME_B64:.2f} (median over all B = 64 batches)",
                           pooled <= ACCEPT_TIME_B64, f"{pooled:.2f}; per N: {times}"))
    return checks


def _intro(r: dict) -> list[str]:
    rule = r.get("vote_rule") or {}
    overrides = "; ".join(f"{a}: {kw}" for a, kw in (r.get("arm_kwargs") or {}).items()) or "none"
    return [f"# dynbn stream-bench ({r.get('model', 'resnet20')}, severity {r['severity']}, {r['cameras']} camera(s), "
            f"{r['frames']} frames per stream, seed {r['seed']})", "",
            f"Regenerate: `{r.get('command', 'dynbn stream-bench')}`", "", CAVEAT, "",
            "Each period N has one stream of shuffled CIFAR-10 test frames; every camera changes corruption every N "
            f"frames ({'joining its schedule at a random phase' if r.get('phase', True) else 'all starting on a shift'}); "
            "batches are B consecutive arrivals, so they straddle shifts and mix cameras. All arms see identical "
            "batches, taking turns batch by batch; arms are reset before each (N, B). "
            f"dynbn_vote rule: window {rule.get('window')}, margin {rule.get('margin')}, hold {rule.get('hold')}; "
            f"hyper-parameters overridden on the command line: {overrides}. {r.get('torch_threads', 1)} torch thread(s).",
            "", ARMS_NOTE, ""]


def _domain_choice(r: dict) -> list[str]:
    lines = ["## Domain choice of the dynbn arms", "",
             "Switch delay: frames from a shift until the arm uses the new domain's statistics (mean over the "
             "shifts where it does before the next shift; 'reached' is that fraction). The choice does not depend "
             "on the batch size.", "",
             "| N | arm | domain accuracy | switch delay | reached | shifts |", "|---:|---|---:|---:|---:|---:|"]
    first_b = min(r["batch_sizes"])
    for row in r["rows"]:
        if "switch_delay" in row and row["batch_size"] == first_b:
            lines.append(f"| {row['period']} | {row['arm']} | {_pct(row['domain_accuracy'])} | "
                         f"{row['switch_delay']:.2f} | {_pct(row['switch_reached'])} | {row['shifts']} |")
    return lines + [""]


def _catch_up_table(r: dict) -> list[str]:
    arms = [a for a in BASELINES if a in r["arms"]]
    lines = ["## Where a test-time baseline catches up with dynbn_vote", "",
             "Smallest period N at which the baseline is at least as accurate as dynbn_vote.", "",
             "| B | " + " | ".join(arms) + " |", "|---:|" + "---|" * len(arms)]
    cu = catch_up(r)
    for b in r["batch_sizes"]:
        lines.append(f"| {b} | " + " | ".join("never" if cu.get((b, a)) is None else f"N={cu[(b, a)]}" for a in arms) + " |")
    return lines + [""]


def stream_markdown(r: dict) -> str:
    """The report as Markdown (JSON is the source of truth)."""
    lines = _intro(r) + ["## Accuracy (%)", ""] + _table(r, "accuracy", _pct)
    lines += [f"## Accuracy (%) in the first {r['first_k']} frames after a shift", ""]
    lines += _table(r, "first_k_accuracy", _pct)
    lines += ["## Compute time per frame relative to source", "",
              "Median over batches of (arm's time / source's time on the same batch); 'all N' pools the "
              "batches of every period (compute per frame does not depend on N; few batches per cell at B = 64 "
              "make single cells noisy on a shared machine).", ""]
    lines += _table(r, "relative_time", lambda v: "–" if v is None else f"{v:.2f}", pooled=True)
    lines += _domain_choice(r) + _catch_up_table(r) + ["## Acceptance", ""]
    lines += [f"- {'PASS' if ok else 'FAIL'}: {what} ({detail})" for what, ok, detail in acceptance(r)]
    lines += ["", f"Benchmark {r.get('bench_seconds', 0):.0f} s, whole command {r.get('total_seconds', 0):.0f} s.", ""]
    return "\n".join(lines)
