"""Markdown for ``stream_bench.json``: accuracy tables, catch-up periods, timing, acceptance."""

from __future__ import annotations

from ..methods import BASELINES, bn_ema, bn_prior, tent, unmix_tns
from .report import CAVEAT

ACCEPT_MAX_PERIOD = 16       # dynbn_vote >= every baseline for N <= this
ACCEPT_B1_MARGIN = 0.20      # at B = 1, dynbn_vote >= bn_adapt + this
ACCEPT_TIME_B64 = 1.10       # dynbn_vote's relative time at B = 64


def _prior_rule(r: dict) -> str:
    """dynbn_prior/dynbn_open's prior strength as the run used it (runs before the growing prior: N = 16)."""
    rule = r.get("dynbn_prior_rule")
    if not rule:
        return f"N = {bn_prior.PRIOR_STRENGTH}"
    growth = f" + {rule['growth']:g} n" if rule["growth"] else ""
    return f"N = {rule['prior']:g}{growth}"


def _ramp_note(r: dict) -> str:
    """dynbn_open's ramp as the run used it (nothing for runs from before it)."""
    ramp = r.get("dynbn_open_ramp")
    if ramp is None:
        return ""
    return (f"; a known frame whose open-set score lies between {ramp['start']:.1f} and the threshold "
            f"{ramp['threshold']:.1f} leans linearly towards the checkpoint's statistics")


def arms_note(r: dict) -> str:
    """The arms, in words, with the parameters this run used."""
    n = _prior_rule(r)
    return (
        f"Arms: source (checkpoint statistics); bn_adapt (test-batch statistics); bn_prior (Schneider et al. 2020, "
        f"prior strength N = {bn_prior.PRIOR_STRENGTH}); bn_ema (moving average per camera, momentum "
        f"{bn_ema.MOMENTUM} per frame, tuned on training streams); tent (Wang et al. 2021: Adam lr {tent.LR}, one "
        f"step per batch, continual); unmix_tns (Tomar et al. 2024: K = {unmix_tns.COMPONENTS}, authors' defaults); "
        "dynbn_frame (detected domain per frame, its table entry); dynbn_vote (detector + per-camera vote, and with a "
        "severity head the camera's severity estimate); dynbn_open (dynbn_prior "
        "that calls frames beyond the open-set threshold unknown and normalises them with the checkpoint's statistics "
        f"mixed {n} : n with those of the camera's unknown frames in the batch{_ramp_note(r)}); "
        "dynbn_soft (statistics mixed by the detector's probabilities); dynbn_prior (dynbn_vote's statistics "
        f"as the prior, {n}, on the statistics of the frame's camera-and-segment group in "
        "the batch; frames voted clean keep the clean entry); dynbn_oracle (true domain, its entry with severities "
        "mixed)." + _later_peers(r))


def _later_peers(r: dict) -> str:
    """The peers added after the first reports, named only when the run had them (older reports render as they were)."""
    ran = {row["arm"] for row in r.get("rows", [])}
    notes = {"lame": "lame (Boudiaf et al. 2022: Laplacian adjustment of the batch's outputs over an RBF affinity "
                     "of the features, its scale the distance to the 5th nearest frame; no backward pass)",
             "rotta": "rotta (Yuan et al. 2023: robust BN, a class-balanced memory of 64 frames, a teacher-student "
                      "update every 64 frames)"}
    named = [text for arm, text in notes.items() if arm in ran]
    return (" Also: " + "; ".join(named) + ".") if named else ""


OPEN_MARGIN = 0.03      # held-out corruptions: dynbn_open >= dynbn_vote + this
OPEN_SEEN_LOSS = 0.01   # seen corruptions: dynbn_open >= dynbn_vote - this
STREAMS_NOTE = {
    "seen": "Streams carry the 15 corruptions the detector and the tables were built on (and clean frames).",
    "held-out": "Streams carry only the 4 extra corruptions (speckle_noise, gaussian_blur, spatter, saturate), which "
                "the detector and the tables never saw: no arm has a right table, and 'domain accuracy' counts "
                "'unknown' as right.",
    "mixtures": "Streams carry two corruptions at once (first+second, both at the run's severity; "
                "dynbn.domains.MIXTURES), which no table entry matches: soft mixing against hard selection. "
                "'Domain accuracy' counts either component as right.",
}


def _pct(v) -> str:
    return "–" if v is None else f"{100 * v:.1f}"


def _with_ci(row: dict | None) -> str:
    """An accuracy with its 95 % interval, "62.1 [58.3, 65.9]" (just the accuracy when the row has none)."""
    if row is None:
        return "–"
    ci = row.get("ci95")
    return _pct(row["accuracy"]) + (f" [{_pct(ci[0])}, {_pct(ci[1])}]" if ci else "")


def _row(rows, period, b, arm):
    return next((r for r in rows if r["period"] == period and r["batch_size"] == b and r["arm"] == arm), None)


def _cell(rows, period, b, arm, key="accuracy"):
    for r in rows:
        if r["period"] == period and r["batch_size"] == b and r["arm"] == arm:
            return r.get(key)
    return None


def _pooled(r: dict, b: int, arm: str):
    return r.get("relative_time_pooled", {}).get(str(b), {}).get(arm, {}).get("relative_time")


def _table(r: dict, key: str, fmt, pooled: bool = False, row_fmt=None) -> list[str]:
    """One table per B: an arm per line, a period per column; ``row_fmt`` formats the whole row instead."""
    lines = []
    extra = " all N |" if pooled else ""
    for b in r["batch_sizes"]:
        lines += [f"**B = {b}**", "", "| arm | " + " | ".join(f"N={n}" for n in r["periods"]) + f" |{extra}",
                  "|---|" + "---:|" * (len(r["periods"]) + pooled)]
        for arm in r["arms"]:
            cells = [row_fmt(_row(r["rows"], n, b, arm)) if row_fmt else fmt(_cell(r["rows"], n, b, arm, key))
                     for n in r["periods"]]
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


def acceptance(r: dict, arm: str = "dynbn_vote") -> list[tuple[str, bool, str]]:
    """The issue's acceptance checks, for ``arm`` (the issue's: dynbn_vote): (statement, holds, detail)."""
    rows, checks = r["rows"], []
    if arm not in r["arms"]:
        return checks
    losses = [f"N={n} B={b} {base} {_pct(_cell(rows, n, b, base))} > {_pct(_cell(rows, n, b, arm))}"
              for n in r["periods"] if n <= ACCEPT_MAX_PERIOD for b in r["batch_sizes"]
              for base in BASELINES if base in r["arms"] and _cell(rows, n, b, base) > _cell(rows, n, b, arm)]
    checks.append((f"{arm} >= every test-time baseline at every N <= {ACCEPT_MAX_PERIOD}, every B",
                   not losses, "; ".join(losses) or "no loss"))
    if 1 in r["batch_sizes"] and "bn_adapt" in r["arms"]:
        gaps = {n: _cell(rows, n, 1, arm) - _cell(rows, n, 1, "bn_adapt") for n in r["periods"]}
        checks.append((f"B = 1: {arm} >= bn_adapt + {ACCEPT_B1_MARGIN:.2f} (every N)",
                       min(gaps.values()) >= ACCEPT_B1_MARGIN,
                       ", ".join(f"N={n}: +{100 * g:.1f}" for n, g in gaps.items())))
    if 64 in r["batch_sizes"] and "source" in r["arms"]:
        pooled = _pooled(r, 64, arm)
        times = ", ".join(f"N={n}: {_cell(rows, n, 64, arm, 'relative_time'):.2f}" for n in r["periods"])
        if pooled is not None:
            checks.append((f"B = 64: {arm} relative time <= {ACCEPT_TIME_B64:.2f} (median over all B = 64 batches)",
                           pooled <= ACCEPT_TIME_B64, f"{pooled:.2f}; per N: {times}"))
    return checks


def _mean_over_periods(r: dict, b: int, arm: str) -> float:
    return sum(_cell(r["rows"], n, b, arm) for n in r["periods"]) / len(r["periods"])


def open_set_acceptance(r: dict, arm: str = "dynbn_open") -> list[tuple[str, bool, str]]:
    """Issue 5's checks for ``arm`` (the issue's: dynbn_open), per batch size, on accuracy averaged over N."""
    checks, arms = [], set(r["arms"])
    if arm not in arms or "dynbn_vote" not in arms:
        return checks
    streams = r.get("streams", "seen")
    for b in [b for b in r["batch_sizes"] if b in (1, 16)] if streams == "held-out" else r["batch_sizes"]:
        open_, vote = _mean_over_periods(r, b, arm), _mean_over_periods(r, b, "dynbn_vote")
        if streams == "held-out":
            refs = {a: _mean_over_periods(r, b, a) for a in ("source", "bn_prior") if a in arms}
            if refs:
                best = max(refs, key=refs.get)
                checks.append((f"held-out, B = {b}: {arm} >= best of source and bn_prior", open_ >= refs[best],
                               f"{_pct(open_)} against {best} {_pct(refs[best])}"))
            checks.append((f"held-out, B = {b}: {arm} >= dynbn_vote + {OPEN_MARGIN:.2f}",
                           open_ >= vote + OPEN_MARGIN, f"{_pct(open_)} against {_pct(vote)}"))
        elif streams == "seen":
            checks.append((f"seen corruptions, B = {b}: {arm} >= dynbn_vote - {OPEN_SEEN_LOSS:.2f}",
                           open_ >= vote - OPEN_SEEN_LOSS, f"{_pct(open_)} against {_pct(vote)}"))
    return checks


PEERS = ("source",) + BASELINES   # the arms the recommended one must beat, paired


def peer_acceptance(r: dict) -> list[tuple[str, bool, str]]:
    """The honest-benchmark checks on the paired comparisons (mean over the periods) of the recommended arm
    against every peer, per B. Correlated label orders (``dirichlet``, ``video``) and B = 1: the whole 95 %
    interval above 0 for every peer. iid at B > 1, where batch statistics are at their best: no peer ahead
    beyond its interval (no interval entirely below 0). Reports without comparisons: none."""
    if "comparisons" not in r:
        return []
    rec, iid = r["recommended"], r.get("labels", "iid") == "iid"
    checks = []
    for b in r["batch_sizes"]:
        rows = [c for c in r["comparisons"] if c["batch_size"] == b and c["arm"] in PEERS]
        if not rows:
            continue
        strict = not iid or b == 1
        bad = [c for c in rows if (c["ci95"][0] <= 0 if strict else c["ci95"][1] < 0)]
        worst = min(rows, key=lambda c: c["ci95"][0])
        detail = (", ".join(f"{c['arm']} {100 * c['diff']:+.1f} [{100 * c['ci95'][0]:+.1f}, {100 * c['ci95'][1]:+.1f}]"
                            for c in bad) if bad else
                  f"closest: {worst['arm']} {100 * worst['diff']:+.1f} "
                  f"[{100 * worst['ci95'][0]:+.1f}, {100 * worst['ci95'][1]:+.1f}]")
        what = (f"B = {b}: {rec} beats every peer, paired 95 % interval above 0 (mean over N)" if strict else
                f"B = {b}: no peer ahead of {rec} beyond the paired 95 % interval (mean over N)")
        checks.append((what, not bad, detail))
    return checks


def _checks(r: dict, vote_arm: str, open_arm: str) -> list[str]:
    """The markdown lines of the issues' checks, for ``vote_arm`` and ``open_arm``."""
    seen = r.get("streams", "seen") == "seen"
    checks = (acceptance(r, vote_arm) if seen else []) + open_set_acceptance(r, open_arm)
    if seen and vote_arm == r.get("recommended"):
        checks += peer_acceptance(r)
    return [f"- {'PASS' if ok else 'FAIL'}: {what} ({detail})" for what, ok, detail in checks]


_FRAMES = {"test": "test frames",
           "train": "training frames (the images held out of the detector's and the tables' fitting; not the test "
                    "split: for design choices)"}


def _machine(m: dict | None) -> str:
    """The report's machine (reports made before it was recorded say nothing)."""
    if not m:
        return ""
    cpu = f" ({m['cpu']})" if m.get("cpu") else ""
    return (f"; torch {m['torch']}, {m['cpus']} CPUs{cpu} with {m['cpu_capability']} vector instructions (the same "
            "command on a CPU that rounds differently fits another detector, and the dynbn figures move)")


def _severity_note(sev: dict | None) -> str:
    """How dynbn_vote (and dynbn_prior, dynbn_open) chose a corrupted frame's statistics."""
    if not sev:  # reports made before the severity estimate existed
        return ("dynbn_vote statistics: one table entry per corruption (this report predates the severity "
                "estimate: add --arm dynbn_vote.severity=false to its command to regenerate it); ")
    if not sev["used"]:
        return "dynbn_vote statistics: one table entry per corruption (severities mixed); "
    w = sev["corruption_weight"]
    return (f"dynbn_vote statistics: the voted corruption's entry (weight {w:g}) mixed with its entries per "
            f"severity (weight {1 - w:g}, shared by the camera's severity estimate over its current segment); ")


def _intro(r: dict) -> list[str]:
    rule = r.get("vote_rule") or {}
    overrides = "; ".join(f"{a}: {kw}" for a, kw in (r.get("arm_kwargs") or {}).items()) or "none"
    return ([f"# dynbn stream-bench ({r.get('model', 'resnet20')}, severity {r['severity']}, {r['cameras']} camera(s), "
            f"{r['frames']} frames per stream, seed {r['seed']}"
            + (f", detector seed {r['detector_seed']}" if "detector_seed" in r else "") + ")", "",
            f"Regenerate: `{r.get('command', 'dynbn stream-bench')}`", "", CAVEAT, "",
            f"Each period N has one stream of shuffled CIFAR-10 {_FRAMES[r.get('split', 'test')]}; every camera changes corruption every N "
            f"frames ({'joining its schedule at a random phase' if r.get('phase', True) else 'all starting on a shift'}); "
            "batches are B consecutive arrivals, so they straddle shifts and mix cameras. All arms see identical "
            "batches, taking turns batch by batch; arms are reset before each (N, B). "
            f"dynbn_vote rule: window {rule.get('window')}, margin {rule.get('margin')}, hold {rule.get('hold')}"
            # reports made before the clean discount existed name three values
            + (f", clean discount {rule['clean_discount']}" if "clean_discount" in rule else "") + "; "
            + _severity_note(r.get("vote_severity"))
            + f"hyper-parameters overridden on the command line: {overrides}. {r.get('torch_threads', 1)} torch thread(s)"
            + _machine(r.get("machine")) + ".",
            "", STREAMS_NOTE[r.get("streams", "seen")], ""]
            # reports made before the label order existed were iid and carry no line for it
            + ([labels_note(r["labels"]), ""] if "labels" in r else [])
            # fp32 reports (every one before --precision existed) carry no line for it
            + ([f"Precision: `{r['precision']}` (the classifier under autocast; the detector and the BN "
                "statistics stay float32).", ""] if r.get("precision", "fp32") != "fp32" else [])
            + [arms_note(r), ""])


def labels_note(spec: str) -> str:
    """One line naming the label order of the streams."""
    kind, _, arg = spec.partition(":")
    what = {"iid": "every frame an independent draw from the shuffled pool",
            "dirichlet": f"classes in long runs, Dirichlet-ordered with concentration {arg} (the NOTE/RoTTA "
                         "non-i.i.d. protocol)",
            "video": f"each image held in view for {arg} consecutive frames of its camera, with a shift of up to "
                     "2 pixels and a few percent brightness change per frame"}.get(kind, spec)
    return f"Label order: `{spec}`: {what}."


def _domain_choice(r: dict) -> list[str]:
    lines = ["## Domain choice of the dynbn arms", "",
             "Switch delay: frames from a shift until the arm uses the new domain's statistics (mean over the "
             "shifts where it does before the next shift; 'reached' is that fraction). The choice does not depend "
             "on the batch size.", "",
             "| N | arm | domain accuracy | unknown | switch delay | reached | shifts |",
             "|---:|---|---:|---:|---:|---:|---:|"]
    first_b = min(r["batch_sizes"])
    for row in r["rows"]:
        if "switch_delay" in row and row["batch_size"] == first_b:
            lines.append(f"| {row['period']} | {row['arm']} | {_pct(row['domain_accuracy'])} | "
                         f"{_pct(row.get('unknown_rate'))} | {row['switch_delay']:.2f} | {_pct(row['switch_reached'])} "
                         f"| {row['shifts']} |")
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


def _by_domain(r: dict) -> list[str]:
    """Accuracy per streamed domain, pooled over every period, at the smallest batch size."""
    b = min(r["batch_sizes"])
    rows = [x for x in r["rows"] if x["batch_size"] == b and "by_domain" in x]
    domains = sorted({d for x in rows for d in x["by_domain"]})
    if not rows or len(domains) > 20:
        return []
    lines = [f"## Accuracy (%) per streamed domain, B = {b}, all periods pooled", "",
             "Unknown: share of the domain's frames dynbn_open called unknown.", "",
             "| domain | " + " | ".join(r["arms"]) + " | unknown |", "|---|" + "---:|" * (len(r["arms"]) + 1)]
    for d in domains:
        cells = []
        for arm in r["arms"]:
            right = sum(x["by_domain"].get(d, [0, 0])[0] for x in rows if x["arm"] == arm)
            total = sum(x["by_domain"].get(d, [0, 0])[1] for x in rows if x["arm"] == arm)
            cells.append(_pct(right / total) if total else "–")
        opened = [x for x in rows if x["arm"] == "dynbn_open" and "unknown_by_domain" in x]
        unknown = sum(x["unknown_by_domain"].get(d, 0) for x in opened)
        total = sum(x["by_domain"].get(d, [0, 0])[1] for x in opened)
        lines.append(f"| {d} | " + " | ".join(cells) + f" | {_pct(unknown / total) if total else '–'} |")
    return lines + [""]


def _on_unknown(r: dict) -> list[str]:
    """Accuracy of every arm on the frames dynbn_open calls unknown, pooled over the periods."""
    if not any("on_unknown" in x for x in r["rows"]):
        return []
    lines = ["## Accuracy (%) on the frames dynbn_open calls unknown, all periods pooled", "",
             "What each arm's statistics give the frames beyond the open-set threshold: the evidence for "
             "dynbn_open's choice of policy for them.", "",
             "| B | frames | " + " | ".join(r["arms"]) + " |", "|---:|---:|" + "---:|" * len(r["arms"])]
    for b in r["batch_sizes"]:
        pooled = {arm: [0, 0] for arm in r["arms"]}  # [right, frames] over the periods
        for x in r["rows"]:
            if x["batch_size"] == b and "on_unknown" in x:
                pooled[x["arm"]] = [p + q for p, q in zip(pooled[x["arm"]], x["on_unknown"])]
        frames = pooled[r["arms"][0]][1]  # every arm is scored on the same frames
        lines.append(f"| {b} | {frames} | " + " | ".join(
            _pct(right / n) if n else "–" for right, n in pooled.values()) + " |")
    return lines + [""]


def _comparisons(r: dict, title: str = "## Paired comparisons") -> list[str]:
    """The paired comparisons of the recommended arm with every other arm (reports made before them: none)."""
    if "comparisons" not in r:
        return []
    rec = r["recommended"]
    lines = [f"{title}: {rec} against every other arm", "",
             f"Difference in accuracy ({rec} minus the arm, points), averaged over the periods N; both arms are scored "
             f"on the same frames and the 95 % interval comes from a bootstrap over (camera, segment) blocks "
             f"({r.get('resamples')} resamples) that draws the same blocks for both arms, each period's stream "
             "resampled in every draw. 'Above 0': the whole interval is above 0.", "",
             "| B | arm | diff | 95 % interval | above 0 |", "|---:|---|---:|---|---|"]
    for c in r["comparisons"]:
        lo, hi = c["ci95"]
        lines.append(f"| {c['batch_size']} | {c['arm']} | {100 * c['diff']:+.1f} | [{100 * lo:+.1f}, {100 * hi:+.1f}] "
                     f"| {'yes' if lo > 0 else 'no'} |")
    return lines + [""]


def _realtime(r: dict) -> list[str]:
    """The real-time protocol's tables (runs without ``--realtime``: none)."""
    rt = r.get("realtime")
    if rt is None:
        return []
    lines = ["## Real-time protocol", "",
             "After Alfarra et al. (ICML 2024): frames arrive at the rate source sustains, so an arm costing k times "
             "source (k: its total time over every batch of that B in this run over source's, so that costs that come "
             "in bursts, like rotta's update every 64 frames, count) adapts on one batch in ceil(k) and classifies the batches in between with its current "
             "state, unchanged; an arm that carries no state between batches (bn_adapt, bn_prior, lame, dynbn_frame, "
             "dynbn_soft, dynbn_oracle) has only the pretrained model, so it classifies those batches as source does. "
             "Cost and cadence per B (k, and 1/ceil(k) where the arm skips):", "",
             "| arm | " + " | ".join(f"B={b}" for b in r["batch_sizes"]) + " |",
             "|---|" + "---:|" * len(r["batch_sizes"])]
    rows = rt["rows"]
    for arm in r["arms"]:
        cells = []
        for b in r["batch_sizes"]:
            k, every = rt["k"][str(b)][arm], rt["every"][str(b)][arm]
            skips = any(x["arm"] == arm and x["batch_size"] == b and x["adapted"] < 1 for x in rows)
            cells.append(f"{k:.2f}" + (f" (1/{every})" if skips else ""))
        lines.append(f"| {arm} | " + " | ".join(cells) + " |")
    lines += ["", "Accuracy (%) under the real-time protocol, 95 % intervals as above:", ""]
    lines += _table({**r, "rows": rows}, "accuracy", _pct, row_fmt=_with_ci)
    return lines + _comparisons({**r, "comparisons": rt["comparisons"]}, "### Paired comparisons, real-time")


def stream_markdown(r: dict) -> str:
    """The report as Markdown (JSON is the source of truth)."""
    intervals = any("ci95" in x for x in r["rows"])
    lines = _intro(r) + ["## Accuracy (%)", ""]
    if intervals:
        lines += [f"In brackets: 95 % interval from a bootstrap over (camera, segment) blocks ({r.get('resamples')} "
                  "resamples; frames of one segment are not independent).", ""]
    lines += _table(r, "accuracy", _pct, row_fmt=_with_ci if intervals else None) + _comparisons(r) + _realtime(r)
    lines += [f"## Accuracy (%) in the first {r['first_k']} frames after a shift", ""]
    lines += _table(r, "first_k_accuracy", _pct)
    lines += ["## Compute time per frame relative to source", "",
              "Median over batches of (arm's time / source's time on the same batch); 'all N' pools the "
              "batches of every period (compute per frame does not depend on N; few batches per cell at B = 64 "
              "make single cells noisy on a shared machine).", ""]
    lines += _table(r, "relative_time", lambda v: "–" if v is None else f"{v:.2f}", pooled=True)
    lines += _domain_choice(r) + _by_domain(r) + _on_unknown(r) + _catch_up_table(r)
    lines += ["## Acceptance", ""] if r.get("split", "test") == "test" else [
        "## The acceptance checks on training streams (design evidence; the acceptance is on the test split)", ""]
    lines += _checks(r, "dynbn_vote", "dynbn_open")
    if r.get("streams") == "mixtures":
        lines += [f"- B = {b}: dynbn_soft {_pct(_mean_over_periods(r, b, 'dynbn_soft'))}, dynbn_vote (hard) "
                  f"{_pct(_mean_over_periods(r, b, 'dynbn_vote'))}, dynbn_frame (hard, no vote) "
                  f"{_pct(_mean_over_periods(r, b, 'dynbn_frame'))} (mean over N)"
                  for b in r["batch_sizes"] if {"dynbn_soft", "dynbn_vote", "dynbn_frame"} <= set(r["arms"])]
    if "dynbn_prior" in r["arms"]:
        lines += ["", "## The same checks for dynbn_prior (beyond the issues)", "",
                  "dynbn_prior mixes each frame's table entry with the statistics of its camera-and-segment group "
                  f"in the batch ({_prior_rule(r)} : n), so, unlike dynbn_vote, a frame's result depends "
                  "on its group-mates; these lines apply the checks above to it (a check that needs dynbn_open "
                  "applies to dynbn_prior in its place). They are not the issues' acceptance.", ""]
        lines += _checks(r, "dynbn_prior", "dynbn_prior")
        if r.get("streams") == "mixtures":
            lines += [f"- B = {b}: dynbn_prior {_pct(_mean_over_periods(r, b, 'dynbn_prior'))}, dynbn_vote "
                      f"{_pct(_mean_over_periods(r, b, 'dynbn_vote'))} (mean over N)"
                      for b in r["batch_sizes"] if "dynbn_vote" in r["arms"]]
    lines += ["", f"Benchmark {r.get('bench_seconds', 0):.0f} s, whole command {r.get('total_seconds', 0):.0f} s.", ""]
    return "\n".join(lines)
