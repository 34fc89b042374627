"""The frequent-shift benchmark (``dynbn stream-bench``): every arm on the same streams.

For each shift period N a stream of corrupted CIFAR-10 test frames is built (``dynbn.stream``:
C cameras, period-N schedules joined at a random phase, one severity); for each batch size B
the stream is cut into batches of B arrivals and every arm sees every batch, arms taking
turns batch by batch (so a burst of load from another process hits all arms alike). Arms are
``reset()`` before each (N, B). Reported per (N, B, arm): accuracy, accuracy in the first k
frames after each shift, time per frame relative to ``source``, the switch delay of the arms
that pick a domain per frame, and accuracy around a shift (for plots). Every accuracy carries
a 95 % interval from a bootstrap over (camera, segment) blocks, and the recommended arm is
compared with every other arm per B, paired on the same frames and block draws
(``dynbn.uncertainty``).

``realtime`` adds the real-time protocol of Alfarra et al. ("Evaluation of test-time adaptation
under computational time constraints", ICML 2024): frames arrive at the rate the plain model
sustains, so an arm costing k times ``source`` (k: its total time over every batch of that B in
this run over source's, so that costs that come in bursts, like rotta's update every 64 frames,
count) adapts on one batch in ceil(k) and classifies the batches in
between with its current state, unchanged (``Method.predict``; an arm that carries no state
between batches has only the pretrained model, with the checkpoint's statistics).

``BenchConfig.device`` runs the arms elsewhere than the CPU: the model, detector and table move there
(``make_arms``), each batch moves once before the arms take it, and an arm's time ends when the device
has finished its work (``dynbn.device.synchronize``).
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from ..device import autocast, synchronize
from ..domains import DEFAULT_DOMAINS, components
from ..methods import REGISTRY, build_method
from ..methods.dynbn_open import UNKNOWN
from ..progress import progress
from .machine import machine
from ..stream import Stream, build_stream, periodic_schedules
from ..uncertainty import RESAMPLES, block_bootstrap, block_ids, paired

RECOMMENDED = "dynbn_vote"   # the arm the paired comparisons are made for


@dataclass
class BenchConfig:
    """One benchmark run; ``quick()`` is the few-minute variant."""

    periods: tuple[int, ...] = (1, 4, 16, 64, 256)
    batch_sizes: tuple[int, ...] = (1, 16, 64)
    cameras: int = 1
    frames: int = 4096            # arrivals per stream, all cameras together
    severity: int = 5
    seed: int = 0
    first_k: int = 8              # "first k frames after a shift"
    before: int = 8               # frames before a shift kept in the around-shift curves
    after: int = 32               # frames after a shift kept in the around-shift curves
    phase: bool = True
    domains: tuple[str, ...] = DEFAULT_DOMAINS     # what the streams carry (--streams held-out: EXTRA; mixtures: MIXTURES)
    arms: tuple[str, ...] = tuple(REGISTRY)
    arm_kwargs: dict = field(default_factory=dict)
    streams: str = "seen"         # "seen" (the detector's corruptions), "held-out" (EXTRA) or "mixtures" (MIXTURES)
    split: str = "test"           # "test", or "train": training images held out of fitting (for design choices)
    labels: str = "iid"           # label order: iid, dirichlet:DELTA or video:L (dynbn.labels)
    resamples: int = RESAMPLES    # block-bootstrap resamples for the intervals
    recommended: str = RECOMMENDED  # the arm compared, paired, with every other arm
    realtime: bool = False        # also the real-time protocol (a second table; needs the source arm)
    device: str = "cpu"           # where the arms run: model, detector, BN table and batches (a resolved torch device)
    precision: str = "fp32"       # the classifier's precision: fp32, or bf16/fp16 under autocast (dynbn.device.autocast)

    @classmethod
    def quick(cls, **kw) -> "BenchConfig":
        return cls(frames=1024, **kw)


@dataclass
class ArmRun:
    """What one arm produced on one (stream, batch size)."""

    preds: np.ndarray                      # T predicted classes
    seconds: list[float]                   # per batch
    active: np.ndarray | None = None       # T domain names' indices the arm used (dynbn arms)


def _used_domains(method) -> torch.Tensor | None:
    for attr in ("last_index", "last_detected"):
        value = getattr(method, attr, None)
        if value is not None:
            return value
    return None


def run_combo(arms: dict, stream: Stream, batch_size: int, log=None, device: str = "cpu",
              precision: str = "fp32") -> dict[str, ArmRun]:
    """Every arm on every batch of the stream, in turns; returns their predictions and timings.

    Each batch moves to ``device`` once, before the arms take it (the copy is no arm's cost); an arm's
    time ends when the device has finished its work. The arms run under ``autocast(device, precision)``."""
    runs = {name: ArmRun(np.full(len(stream), -1), [], None) for name in arms}
    names = list(arms)
    last_log = time.perf_counter()
    for b, batch in enumerate(stream.batches(batch_size)):
        x = batch.x.to(device)
        synchronize(device)
        for j in range(len(names)):
            name = names[(b + j) % len(names)]  # rotate who goes first: no arm always meets a cold cache
            t0 = time.perf_counter()
            with autocast(device, precision):
                logits = arms[name](x, batch.cameras, batch.truth)
            synchronize(device)
            runs[name].seconds.append(time.perf_counter() - t0)
            runs[name].preds[batch.rows] = logits.argmax(1).cpu().numpy()
            used = _used_domains(arms[name])
            if used is not None:
                if runs[name].active is None:
                    runs[name].active = np.full(len(stream), -1)
                runs[name].active[batch.rows] = used.cpu().numpy()
        if log and time.perf_counter() - last_log > 30:
            log(f"    ... {batch.rows.stop}/{len(stream)} frames")
            last_log = time.perf_counter()
    return runs


def adapt_every(k: float) -> int:
    """The real-time cadence of an arm costing ``k`` times the plain model: it adapts on one batch in this many."""
    return max(1, math.ceil(round(k, 6)))


def run_realtime(arms: dict, stream: Stream, batch_size: int, every: dict[str, int],
                 device: str = "cpu", precision: str = "fp32") -> dict[str, np.ndarray]:
    """Predictions under the real-time protocol: arm ``a`` adapts (``forward``) on batches 0, every[a],
    2 every[a], ... and classifies the batches in between with ``predict``; returns per-frame predictions.
    (The batches in between see the state the last adapted batch left; strictly, they would arrive while
    that update is still running and see the state before it, one update earlier.)"""
    preds = {name: np.full(len(stream), -1) for name in arms}
    for b, batch in enumerate(stream.batches(batch_size)):
        x = batch.x.to(device)
        for name, arm in arms.items():
            call = arm if b % every[name] == 0 else arm.predict
            with autocast(device, precision):
                preds[name][batch.rows] = call(x, batch.cameras, batch.truth).argmax(1).cpu().numpy()
    return preds


def realtime_tables(cfg: BenchConfig, arms: dict, streams: dict[int, Stream], offline: dict, blocks: dict,
                    cost: dict[str, dict[str, float]], log=None) -> dict:
    """The real-time protocol on the offline run's streams: ``cost[str(B)][arm]`` is the arm's k at B (its total
    time over source's, from the offline run). Arms whose cadence is 1 keep their offline per-frame correctness
    (``offline``: (N, B) -> arm -> correct); the others run again. Returns k, cadence,
    rows (accuracy with 95 % intervals per (N, B, arm)) and the paired comparisons, as the offline report."""
    k = {str(b): {arm: cost[str(b)][arm] for arm in cfg.arms} for b in cfg.batch_sizes}
    every = {b: {arm: adapt_every(k[b][arm]) for arm in cfg.arms} for b in k}
    kept, rows = {}, []
    for period, stream in streams.items():
        for batch_size in cfg.batch_sizes:
            cadence = every[str(batch_size)]
            slow = {name: arm for name, arm in arms.items() if cadence[name] > 1}
            for arm in slow.values():
                arm.reset()
            preds = run_realtime(slow, stream, batch_size, cadence, cfg.device, cfg.precision)
            correct = {arm: (preds[arm] == stream.labels if arm in slow else offline[(period, batch_size)][arm])
                       for arm in cfg.arms}
            kept[(period, batch_size)] = correct
            cis = block_bootstrap(correct, blocks[period], cfg.resamples,
                                  np.random.default_rng([cfg.seed, 32, period, batch_size]))
            batches = -(-len(stream) // batch_size)
            rows += [{"period": period, "batch_size": batch_size, "arm": arm, "accuracy": cis[arm]["accuracy"],
                      "ci95": cis[arm]["ci95"], "every": cadence[arm],
                      "adapted": (-(-batches // cadence[arm]) / batches) if arm in slow else 1.0}  # batches' share
                     for arm in cfg.arms]
            if log:
                log(f"realtime N={period:<4} B={batch_size:<3} " + " ".join(
                    f"{a} {correct[a].mean():.3f}" + (f"(1/{cadence[a]})" if a in slow else "") for a in cfg.arms))
    return {"k": k, "every": every, "rows": rows, "comparisons": comparisons(kept, blocks, cfg)}


def switch_delays(stream: Stream, correct_domain: np.ndarray) -> tuple[float, float, int]:
    """Mean frames from a shift until the arm's domain is right, fraction of shifts where it gets there, shifts."""
    delays, reached, shifts = [], 0, 0
    for cam in np.unique(stream.camera):
        rows = np.flatnonzero(stream.camera == cam)  # arrival order = the camera's own order
        segs = stream.segment[rows]
        for seg in np.unique(segs[segs > 0]):
            hit = np.flatnonzero(correct_domain[rows[segs == seg]])
            shifts += 1
            if len(hit):
                reached += 1
                delays.append(int(hit[0]))
    mean = float(np.mean(delays)) if delays else float("nan")
    return mean, (reached / shifts if shifts else float("nan")), shifts


def around_shift(stream: Stream, correct: np.ndarray, before: int, after: int) -> list[float | None]:
    """Accuracy at offsets -before .. after-1 from a shift (offset 0: first frame of the new segment)."""
    out = []
    for offset in range(-before, after):
        if offset < 0:  # the last frames of a segment that is followed by another
            nxt = _has_next(stream)
            mask = (stream.until_shift == -offset - 1) & nxt
        else:
            mask = (stream.since_shift == offset) & (stream.segment > 0)
        out.append(float(correct[mask].mean()) if mask.any() else None)
    return out


def _has_next(stream: Stream) -> np.ndarray:
    """Whether each frame's segment is followed by another one in its camera."""
    last = {int(c): int(stream.segment[stream.camera == c].max()) for c in np.unique(stream.camera)}
    return stream.segment < np.array([last[int(c)] for c in stream.camera])


def time_per_frame(seconds: list[float], batch_size: int, frames: int) -> float:
    """Median over batches of seconds per frame (robust to other processes' bursts)."""
    sizes = np.minimum(batch_size, frames - batch_size * np.arange(len(seconds)))
    return float(np.median(np.array(seconds) / sizes))


def domain_right(used: np.ndarray, truth: np.ndarray, known: list[str]) -> np.ndarray:
    """Whether the domain an arm used is right: the true one; for a corruption outside the
    detector's domains, "unknown"; for a mixture "a+b", either component."""
    right = used == truth
    unseen = ~np.isin(truth, known)
    right[unseen] = [u == UNKNOWN or u in components(t) for u, t in zip(used[unseen], truth[unseen])]
    return right


def correctness(stream: Stream, runs: dict[str, ArmRun]) -> dict[str, np.ndarray]:
    """Per arm, whether each frame's prediction is right."""
    return {arm: run.preds == stream.labels for arm, run in runs.items()}


def comparisons(kept: dict[tuple[int, int], dict[str, np.ndarray]], blocks: dict[int, np.ndarray],
                cfg: BenchConfig) -> list[dict]:
    """Per batch size and arm: the recommended arm's accuracy minus the arm's, averaged over the periods,
    with a 95 % interval from a bootstrap over each period's blocks done jointly (``uncertainty.paired``)."""
    if cfg.recommended not in cfg.arms:
        return []
    out = []
    for b in cfg.batch_sizes:
        rng = np.random.default_rng([cfg.seed, 31, b])
        res = paired([(kept[(n, b)], blocks[n]) for n in cfg.periods], cfg.recommended, cfg.resamples, rng)
        out += [{"batch_size": b, "arm": arm, **res[arm]} for arm in cfg.arms if arm in res]
    return out


def summarise(stream: Stream, runs: dict[str, ArmRun], period: int, batch_size: int, cfg: BenchConfig,
              domain_names: list[str]) -> tuple[list[dict], dict]:
    """Rows of the report for one (N, B) and the around-shift curves."""
    for arm, run in runs.items():
        if (run.preds < 0).any():
            raise RuntimeError(f"arm {arm} left {(run.preds < 0).sum()} frames without a prediction")
    # the same block draws for every arm of the cell: the intervals of two arms are comparable
    cis = block_bootstrap(correctness(stream, runs), block_ids(stream.camera, stream.segment), cfg.resamples,
                          np.random.default_rng([cfg.seed, 30, period, batch_size]))
    src = runs.get("source")
    first = (stream.since_shift < cfg.first_k) & (stream.segment > 0)
    truth_names = np.array(stream.domains)[stream.domain]
    opened = runs.get("dynbn_open")
    # the frames dynbn_open calls unknown: how every arm does on them shows what each policy would give them
    flagged = opened.active == len(domain_names) if opened is not None and opened.active is not None else None
    rows, curves = [], {}
    for arm, run in runs.items():
        correct = run.preds == stream.labels
        tpf = time_per_frame(run.seconds, batch_size, len(stream))
        row = {"period": period, "batch_size": batch_size, "arm": arm, "accuracy": float(correct.mean()),
               "ci95": cis[arm]["ci95"],
               "frames": len(stream), "first_k": cfg.first_k,
               "first_k_accuracy": float(correct[first].mean()) if first.any() else None,
               "time_per_frame_ms": 1e3 * tpf,
               "by_domain": {d: [int(correct[truth_names == d].sum()), int((truth_names == d).sum())]
                             for d in sorted(set(truth_names))}}  # [right, frames] per streamed domain
        if flagged is not None:
            row["on_unknown"] = [int(correct[flagged].sum()), int(flagged.sum())]  # [right, frames]
        if src is not None:
            ratios = np.array(run.seconds) / np.array(src.seconds)
            row["relative_time"] = float(np.median(ratios))
            row["relative_time_total"] = float(sum(run.seconds) / sum(src.seconds))
        if run.active is not None:
            right = domain_right(np.array(domain_names + [UNKNOWN])[run.active], truth_names, domain_names)
            delay, reached, shifts = switch_delays(stream, right)
            row.update(domain_accuracy=float(right.mean()), switch_delay=delay, switch_reached=reached, shifts=shifts,
                       unknown_rate=float((run.active == len(domain_names)).mean()),
                       unknown_by_domain={d: int((run.active[truth_names == d] == len(domain_names)).sum())
                                          for d in sorted(set(truth_names))})
        rows.append(row)
        curves[arm] = around_shift(stream, correct, cfg.before, cfg.after)
    return rows, curves


def pooled_times(ratios: dict[tuple[int, str], list[float]]) -> dict[str, dict]:
    """Per batch size and arm: median over the batches of every period of (arm time / source time).

    Compute per frame does not depend on N, and a quick run has few batches per (N, B) at
    B = 64 (4 of them), too few for a median to shrug off another process's burst.
    """
    out: dict[str, dict] = {}
    for (b, arm), values in ratios.items():
        out.setdefault(str(b), {})[arm] = {"relative_time": float(np.median(values)), "batches": len(values)}
    return out


def make_arms(cfg: BenchConfig, model, table, detector) -> dict:
    """Every arm of the run, on one shared model; the model and detector move to ``cfg.device`` (in place),
    the arms read the table there."""
    model, detector, table = model.to(cfg.device), detector.to(cfg.device), table.to(cfg.device)
    return {name: build_method(name, model, table=table, detector=detector, **cfg.arm_kwargs.get(name, {}))
            for name in cfg.arms}


def run_bench(cfg: BenchConfig, model, table, detector, test, frost_dir, log=print) -> dict:
    """The whole benchmark on ``test`` (shuffled with the seed; with ``cfg.split == "train"``, the
    training images ``fitting.split_train`` holds out of fitting); returns the report dict."""
    t_start = time.perf_counter()
    pool = test.subset(None, cfg.seed)
    purpose = "test" if cfg.split == "test" else "tune"  # training frames get their own corruption draws
    arms = make_arms(cfg, model, table, detector)
    rows, curves, ratios = [], {}, {}
    totals: dict[str, dict[str, list[float]]] = {}  # B -> arm -> [its seconds, source's seconds], every period
    kept, blocks = {}, {}  # per (N, B) every arm's per-frame correctness; per N the frames' blocks
    streams = {}           # per N the stream (the real-time protocol runs on the same frames)
    if cfg.realtime and "source" not in cfg.arms:
        raise ValueError("the real-time protocol measures every arm's cost against source: include the source arm")
    bar = progress(desc="stream-bench", total=len(cfg.periods) * len(cfg.batch_sizes), unit="run")
    for period in cfg.periods:
        rng = np.random.default_rng([cfg.seed, 20, period])
        frames_per_camera = -(-cfg.frames // cfg.cameras)
        schedules = periodic_schedules(cfg.domains, period, frames_per_camera, cfg.cameras, rng, cfg.severity, cfg.phase)
        stream = build_stream(pool.images, pool.labels, schedules, cfg.domains, cfg.seed, frost_dir, purpose,
                              labels_order=cfg.labels)
        blocks[period] = block_ids(stream.camera, stream.segment)
        if cfg.realtime:
            streams[period] = stream
        for batch_size in cfg.batch_sizes:
            t0 = time.perf_counter()
            for arm in arms.values():
                arm.reset()
            runs = run_combo(arms, stream, batch_size, log, cfg.device, cfg.precision)
            if "source" in runs:
                for arm, run in runs.items():
                    ratios.setdefault((batch_size, arm), []).extend(np.array(run.seconds) / np.array(runs["source"].seconds))
                    pair = totals.setdefault(str(batch_size), {}).setdefault(arm, [0.0, 0.0])
                    pair[0] += sum(run.seconds)
                    pair[1] += sum(runs["source"].seconds)
            kept[(period, batch_size)] = correctness(stream, runs)
            combo_rows, combo_curves = summarise(stream, runs, period, batch_size, cfg, list(detector.domains))
            rows += combo_rows
            curves[f"{period}/{batch_size}"] = combo_curves
            acc = {r["arm"]: r["accuracy"] for r in combo_rows}
            log(f"N={period:<4} B={batch_size:<3} ({time.perf_counter() - t0:5.1f} s) "
                + " ".join(f"{a} {v:.3f}" for a, v in acc.items()))
            bar.update()
    bar.close()
    cost = {b: {arm: own / src for arm, (own, src) in per.items()} for b, per in totals.items()}
    realtime = realtime_tables(cfg, arms, streams, kept, blocks, cost, log) if cfg.realtime else None
    vote = arms.get("dynbn_vote")
    prior = arms.get("dynbn_open") or arms.get("dynbn_prior")
    opened = arms.get("dynbn_open")
    return {"severity": cfg.severity, "cameras": cfg.cameras, "seed": cfg.seed, "frames": cfg.frames,
            "streams": cfg.streams, "split": cfg.split, "labels": cfg.labels,
            "periods": list(cfg.periods), "batch_sizes": list(cfg.batch_sizes), "arms": list(cfg.arms),
            "domains": list(cfg.domains), "phase": cfg.phase, "first_k": cfg.first_k,
            "curve_offsets": [-cfg.before, cfg.after - 1],
            "vote_rule": asdict(vote.rule) if vote is not None else None,
            "vote_severity": ({"used": vote.severity, "corruption_weight": vote.corruption_weight}
                              if vote is not None else None),
            # the prior strength of dynbn_prior/dynbn_open: N0 + growth * n for a group of n frames
            "dynbn_prior_rule": ({"prior": prior.prior, "growth": prior.growth} if prior is not None else None),
            # dynbn_open's ramp: open-set scores from start to threshold lean towards the checkpoint's statistics
            "dynbn_open_ramp": ({"start": opened.ramp[0], "threshold": opened.ramp[1]}
                                if opened is not None and opened.ramp is not None else None),
            "arm_kwargs": {a: {k: str(v) for k, v in kw.items()} for a, kw in cfg.arm_kwargs.items()},
            "rows": rows, "curves": curves, "resamples": cfg.resamples, "recommended": cfg.recommended,
            "comparisons": comparisons(kept, blocks, cfg), "relative_time_pooled": pooled_times(ratios),
            **({"realtime": realtime} if realtime is not None else {}),
            "torch_threads": torch.get_num_threads(), "device": cfg.device, "precision": cfg.precision,
            "machine": machine(),
            "bench_seconds": round(time.perf_counter() - t_start, 1)}

