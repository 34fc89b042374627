"""CLI for the frequent-shift benchmark: ``dynbn stream-bench`` and ``dynbn tune-vote``.

Both need a detector and a BN table: ``--artifacts DIR`` loads those written by
``dynbn fit --out DIR``; without it they are fitted here from corrupted training images
(small sets with ``--quick``) and saved under ``OUT/artifacts`` for the next run.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from dataclasses import asdict
from pathlib import Path

import torch

from . import data


def _ints(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


def _rule(text: str):
    from .vote import VoteRule

    try:
        parts = text.split(",")
        if len(parts) not in (3, 4):
            raise ValueError(f"{len(parts)} values")
        w, m, h = parts[:3]
        return VoteRule(int(w), float(m), int(h), float(parts[3]) if len(parts) == 4 else 0.0)
    except ValueError as exc:
        raise argparse.ArgumentTypeError("--vote-rule takes WINDOW,MARGIN,HOLD[,CLEAN_DISCOUNT] such as 2,0.3,1 "
                                         f"or 1,0.2,1,3 ({exc})") from None


def quick_fit(seed: int):
    """The ``--quick`` recipe: ``dynbn reproduce --quick``'s (400 frames per domain and severity for
    the detector, 15 epochs; 256 frames per domain for the table).

    Until the detector shrank to (256, 128) hidden units the quick recipe also cut the detector's
    set to 150 frames per domain and severity. At the smaller size 400 frames fit in about 30 s
    on one thread (the whole quick fit in 75 s on a slow day) and raise the share of severity-5
    test frames whose domain the detector names from about 69 % to 73 %.
    """
    from .evaluate import ReproduceConfig

    return ReproduceConfig.quick(seed).fit


def _seed_conflict(args) -> bool:
    """True (after saying why) when --detector-seed is given with --artifacts, which it cannot refit."""
    if args.artifacts and args.detector_seed is not None:
        print("error: --detector-seed refits the detector; it cannot apply to the one loaded by --artifacts",
              file=sys.stderr)
        return True
    return False


def artifacts(args, model, out: Path, log=print):
    """(detector, table, info): loaded from ``--artifacts`` or fitted now and saved under out/artifacts."""
    from .bn_table import BNTable
    from .detector import Detector
    from .fitting import FitConfig, build

    if args.artifacts:
        src = Path(args.artifacts)
        detector = Detector.load(src / "detector.safetensors")
        table = BNTable.load(src / f"bn_table-{args.model}.safetensors", model)
        return detector, table, {"artifacts": str(src)}
    cfg = quick_fit(args.seed) if args.quick else FitConfig(seed=args.seed)
    # the detector's own seed (weights and batch order) can be set apart from the data's, to measure
    # how much the arms that read the detector move between fits of the same data
    cfg.detector.seed = args.seed if args.detector_seed is None else args.detector_seed
    train = data.load_cifar10("train", args.data_dir)
    detector, tables, timings = build(model, train, cfg, data.frost_dir(args.data_dir), log=log)
    table = tables[cfg.table_images]
    dest = out / "artifacts"
    dest.mkdir(parents=True, exist_ok=True)
    detector.save(dest / "detector.safetensors")
    table.save(dest / f"bn_table-{args.model}.safetensors")
    seconds = {k: round(v, 1) for k, v in timings.items() if isinstance(v, (int, float))}
    log(f"fitted detector and BN table ({seconds} s); saved to {dest}")
    return detector, table, {"fit": asdict(cfg), "fit_timings": timings, "saved_to": str(dest)}


def _move_ramp(args, detector, log) -> dict:
    """``--open-ramp Q``: restart dynbn_open's ramp at quantile Q of the held-out training frames' scores
    (the frames the fit set the threshold on, drawn again with the same seed)."""
    from .fitting import FitConfig, split_train, tuning_samples
    from .open_set import move_ramp
    from .spectrum import to_tensor

    cfg = quick_fit(args.seed) if args.quick else FitConfig(seed=args.seed)
    held = split_train(data.load_cifar10("train", args.data_dir), cfg.seed)[1]
    frames = tuning_samples(held, cfg, data.frost_dir(args.data_dir), detector.domains)[0]
    low = move_ramp(detector, to_tensor(frames), args.open_ramp)
    log(f"dynbn_open's ramp starts at score {low:.1f} (quantile {args.open_ramp}; threshold "
        f"{float(detector.ood_threshold):.1f})")
    return {"quantile": args.open_ramp, "start": low}


def cmd_stream_bench(args) -> int:
    from .methods import REGISTRY
    from .models import build_model
    from .stream_bench import BenchConfig, run_bench
    from .stream_plots import write_plots
    from .stream_report import stream_markdown

    start = time.perf_counter()
    torch.set_num_threads(args.threads)
    log = lambda m: print(m, flush=True)  # noqa: E731
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    kw = dict(periods=args.periods, batch_sizes=args.batch_sizes, cameras=args.cameras, severity=args.severity,
              seed=args.seed, phase=not args.no_phase)
    cfg = BenchConfig.quick(**kw) if args.quick else BenchConfig(**kw)
    if args.frames:
        cfg.frames = args.frames
    if args.held_out or args.mixtures:
        from .domains import EXTRA, MIXTURES

        # no table entry exists for these streams' domains, so there is no oracle
        cfg.streams, cfg.domains = ("held-out", EXTRA) if args.held_out else ("mixtures", MIXTURES)
        cfg.arms = tuple(a for a in cfg.arms if a != "dynbn_oracle")
    if args.arms:
        cfg.arms = tuple(a.strip() for a in args.arms.split(","))
        unknown = sorted(set(cfg.arms) - set(REGISTRY))
        if unknown:
            print(f"error: unknown arms {unknown}; choose from {', '.join(REGISTRY)}", file=sys.stderr)
            return 2
        if cfg.streams != "seen" and "dynbn_oracle" in cfg.arms:
            print(f"error: dynbn_oracle needs a table entry for every streamed domain; the {cfg.streams} streams "
                  "have none", file=sys.stderr)
            return 2
    if _seed_conflict(args):
        return 2
    model = build_model(args.model, args.data_dir)
    detector, table, info = artifacts(args, model, out, log)
    if args.open_ramp is not None:
        info["open_ramp"] = _move_ramp(args, detector, log)
    if args.tune_vote:
        tuning = _tune(args, model, table, detector, out, log)
        cfg.arm_kwargs = {"dynbn_vote": {"rule": _rule_from(tuning)}, "bn_ema": {"momentum": tuning["bn_ema_momentum"]}}
    if args.vote_rule:
        cfg.arm_kwargs.setdefault("dynbn_vote", {})["rule"] = args.vote_rule
    if args.prior is not None:
        cfg.arm_kwargs.setdefault("bn_prior", {})["prior"] = args.prior
    if args.dynbn_prior is not None:
        for arm in ("dynbn_prior", "dynbn_open"):
            cfg.arm_kwargs.setdefault(arm, {})["prior"] = args.dynbn_prior
    if args.dynbn_prior_growth is not None:
        for arm in ("dynbn_prior", "dynbn_open"):
            cfg.arm_kwargs.setdefault(arm, {})["growth"] = args.dynbn_prior_growth
    if args.open_unknown_prior is not None:
        cfg.arm_kwargs.setdefault("dynbn_open", {})["unknown_prior"] = args.open_unknown_prior
    if args.no_ramp:
        cfg.arm_kwargs.setdefault("dynbn_open", {})["ramp"] = False
    for arm in ("dynbn_vote", "dynbn_prior", "dynbn_open"):
        if args.no_severity:
            cfg.arm_kwargs.setdefault(arm, {})["severity"] = False
        if args.corruption_weight is not None:
            cfg.arm_kwargs.setdefault(arm, {})["corruption_weight"] = args.corruption_weight
    if args.ema_momentum is not None:
        cfg.arm_kwargs.setdefault("bn_ema", {})["momentum"] = args.ema_momentum
    if args.train_split:
        from .fitting import split_train

        cfg.split = "train"
        frames = split_train(data.load_cifar10("train", args.data_dir), args.seed)[1]
    else:
        frames = data.load_cifar10("test", args.data_dir)
    result = run_bench(cfg, model, table, detector, frames, data.frost_dir(args.data_dir), log)
    if args.detector_seed is not None:  # (never with --artifacts: refused above)
        result["detector_seed"] = args.detector_seed
    result.update(info, model=args.model, command="dynbn " + " ".join(shlex.quote(a) for a in sys.argv[1:]),
                  total_seconds=round(time.perf_counter() - start, 1))
    (out / "stream_bench.json").write_text(json.dumps(result, indent=1, default=str))
    (out / "stream_bench.md").write_text(stream_markdown(result))
    plots = write_plots(result, out)
    log(f"wrote {out / 'stream_bench.json'}, {out / 'stream_bench.md'} and {len(plots)} plots "
        f"in {result['total_seconds']:.0f} s")
    return 0


def _rule_from(tuning: dict):
    from .vote import VoteRule

    return VoteRule(**tuning["best_rule"])


def _tune(args, model, table, detector, out: Path, log) -> dict:
    from .stream_tune import TuneConfig, tune

    cfg = TuneConfig.quick(seed=args.seed, severity=args.severity) if args.quick else \
        TuneConfig(seed=args.seed, severity=args.severity)
    train = data.load_cifar10("train", args.data_dir)
    result = tune(cfg, model, table, detector, train, data.frost_dir(args.data_dir), log)
    (out / "vote_tuning.json").write_text(json.dumps(result, indent=1, default=str))
    return result


def cmd_tune_vote(args) -> int:
    from .models import build_model

    torch.set_num_threads(args.threads)
    log = lambda m: print(m, flush=True)  # noqa: E731
    if _seed_conflict(args):
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    model = build_model(args.model, args.data_dir)
    detector, table, _ = artifacts(args, model, out, log)
    result = _tune(args, model, table, detector, out, log)
    r = result["best_rule"]
    log(f"DEFAULT_RULE = VoteRule(window={r['window']}, margin={r['margin']}, hold={r['hold']}, "
        f"clean_discount={r['clean_discount']})  # dynbn/vote.py")
    log(f"MOMENTUM = {result['bn_ema_momentum']}  # dynbn/methods/bn_ema.py")
    log(f"wrote {out / 'vote_tuning.json'} ({result['seconds']:.0f} s)")
    return 0


def _shared(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data-dir", default=None, help=f"data directory (default: ${data.ENV_VAR} or {data.DEFAULT_DIR})")
    p.add_argument("--seed", type=int, default=0, help="seed for every random draw (default 0)")
    p.add_argument("--model", default="resnet20")
    p.add_argument("--severity", type=int, choices=range(1, 6), default=5, help="corruption severity (default 5)")
    p.add_argument("--artifacts", default=None, help="folder written by `dynbn fit --out` (default: fit here)")
    p.add_argument("--detector-seed", type=int, default=None,
                   help="seed of the detector's weights and batch order only (default: --seed); with a fixed "
                        "--seed, it refits the same frames, so the spread over detector seeds is the fit's own noise")
    p.add_argument("--quick", action="store_true", help="small fit and few frames (minutes)")
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads (default 1: with 2, torch collapses when another process holds a core)")
    p.add_argument("--out", required=True)


def register(subparsers) -> None:
    """Add ``stream-bench`` and ``tune-vote`` to the ``dynbn`` command."""
    p = subparsers.add_parser("stream-bench", help="dynbn vs test-time adaptation on streams with frequent shifts")
    _shared(p)
    p.add_argument("--periods", type=_ints, default=(1, 4, 16, 64, 256), help="shift periods N (default 1,4,16,64,256)")
    p.add_argument("--batch-sizes", type=_ints, default=(1, 16, 64), help="batch sizes B (default 1,16,64)")
    p.add_argument("--cameras", type=int, default=1, help="cameras, each with its own schedule (default 1)")
    p.add_argument("--frames", type=int, default=None, help="arrivals per stream (default 4096; 256 with --quick)")
    p.add_argument("--arms", default=None, help="comma-separated subset of the arms (default: all)")
    p.add_argument("--no-phase", action="store_true", help="every camera starts at a segment boundary")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--held-out", action="store_true",
                       help="stream only the 4 extra corruptions, which the detector and the tables never saw")
    which.add_argument("--mixtures", action="store_true",
                       help="stream two corruptions at once (dynbn.domains.MIXTURES), soft against hard selection")
    p.add_argument("--train-split", action="store_true",
                   help="stream the training images held out of fitting instead of the test split (for design choices)")
    p.add_argument("--vote-rule", type=_rule, default=None, help="WINDOW,MARGIN,HOLD[,CLEAN_DISCOUNT] overriding the tuned vote rule")
    p.add_argument("--tune-vote", action="store_true", help="re-tune the vote and bn_ema on training streams first")
    p.add_argument("--prior", type=float, default=None, help="bn_prior's prior strength N (default: the authors' 16)")
    p.add_argument("--dynbn-prior", type=float, default=None,
                   help="prior strength N0 of dynbn_prior and dynbn_open, table entry and unknown frames alike; "
                        "a group of n frames gets N = N0 + g * n (default 6)")
    p.add_argument("--dynbn-prior-growth", type=float, default=None,
                   help="growth g of that prior strength per frame of the group (default 3; 0: bn_prior's N : n)")
    p.add_argument("--open-unknown-prior", type=float, default=None,
                   help="prior strength N0 of dynbn_open's unknown frames only (default: the same as the known frames')")
    p.add_argument("--open-ramp", type=float, default=None, metavar="Q",
                   help="start dynbn_open's ramp at quantile Q of the held-out training frames' open-set scores "
                        "(default: where the fit put it, 0.8)")
    p.add_argument("--no-ramp", action="store_true",
                   help="dynbn_open's hard rule: a known frame's table entry whole up to the open-set threshold "
                        "(default: leaning linearly towards the checkpoint's statistics from the ramp's start)")
    p.add_argument("--no-severity", action="store_true",
                   help="dynbn_vote, dynbn_prior and dynbn_open use one table entry per corruption, not the severity estimate")
    p.add_argument("--corruption-weight", type=float, default=None,
                   help="weight of the corruption's own entry beside its severity entries (default 0.5)")
    p.add_argument("--ema-momentum", type=float, default=None, help="bn_ema's per-frame momentum (default: tuned)")
    p.set_defaults(func=cmd_stream_bench)

    p = subparsers.add_parser("tune-vote", help="tune the vote rule and bn_ema's momentum on training streams")
    _shared(p)
    p.set_defaults(func=cmd_tune_vote)
