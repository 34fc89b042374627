"""``dynbn stream-bench`` and ``dynbn tune-vote``: the frequent-shift benchmark and the vote's tuning.

Both need a detector and a BN table: ``--artifacts DIR`` loads those written by
``dynbn fit --out DIR``; without it they are fitted here from corrupted training images
(small sets with ``--quick``) and saved under ``OUT/artifacts`` for the next run.

An arm's settings (its constructor's keywords, ``dynbn.methods.registry.settings_of``) are
given as ``--arm NAME.key=value`` (repeatable; the value is read as YAML, so ``2``, ``0.5``,
``false`` and ``1,0.3,1,3`` mean what they say) or as ``--arms-config FILE.yaml`` holding
``{NAME: {key: value}}``, the shape of a scenario's ``arm_settings``; ``--arm`` wins.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict
from pathlib import Path

import yaml

from .. import data
from ..bn.table import BNTable
from ..bundle import load_bundle
from ..detector import Detector
from ..device import resolve_device
from ..domains import EXTRA, MIXTURES
from ..labels import parse_order
from ..experiments.stream_bench import BenchConfig, run_bench
from ..experiments.stream_plots import write_plots
from ..experiments.stream_report import stream_markdown
from ..experiments.stream_tune import TuneConfig, tune
from ..fitting import FitConfig, build, split_train
from ..methods.registry import REGISTRY, arm_kwargs
from ..models import build_model
from .common import add_common, add_device, add_precision, add_threads, fail, say, set_threads, write_report

STREAMS = {"seen": None, "held-out": EXTRA, "mixtures": MIXTURES}  # what the streams carry (None: the fit's domains)


def _ints(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


def _arm_setting(text: str) -> tuple[str, str, object]:
    """``NAME.key=value`` -> (name, key, value read as YAML)."""
    target, eq, raw = text.partition("=")
    name, dot, key = target.partition(".")
    if not (eq and dot and name and key):
        raise argparse.ArgumentTypeError(f"expected NAME.key=value such as bn_prior.prior=2, got {text!r}")
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError as exc:
        raise argparse.ArgumentTypeError(f"{text!r}: the value is not valid YAML ({exc})") from None
    return name.strip(), key.strip(), value


def arm_settings(config: str | None, pairs: list[tuple[str, str, object]]) -> dict[str, dict]:
    """The arms' plain settings: ``--arms-config`` first, each ``--arm`` over it."""
    settings: dict[str, dict] = {}
    if config:
        try:
            loaded = yaml.safe_load(Path(config).read_text())
        except (OSError, yaml.YAMLError) as exc:
            raise ValueError(f"--arms-config {config}: {exc}") from None
        if not isinstance(loaded, dict) or not all(isinstance(v, dict) for v in loaded.values()):
            raise ValueError(f"--arms-config {config}: expected a mapping {{arm: {{setting: value}}}}")
        settings = {str(k): dict(v) for k, v in loaded.items()}
    for name, key, value in pairs:
        settings.setdefault(name, {})[key] = value
    return settings


def artifacts(args, model, out: Path):
    """(detector, table, info): loaded from ``--artifacts`` or fitted now and saved under out/artifacts."""
    if args.artifacts:
        src = Path(args.artifacts)
        if (src / "manifest.json").exists():  # a bundle (`dynbn fit --out`): checked against the model
            bundle = load_bundle(src, model)
            return bundle.detector, bundle.table, {"artifacts": str(src), "bundle": bundle.manifest.get("results")}
        detector = Detector.load(src / "detector.safetensors")
        table = BNTable.load(src / f"bn_table-{args.model}.safetensors", model)
        return detector, table, {"artifacts": str(src)}
    cfg = FitConfig.quick(args.seed) if args.quick else FitConfig(seed=args.seed)
    # the detector's own seed (weights and batch order) can be set apart from the data's, to measure
    # how much the arms that read the detector move between fits of the same data
    cfg.detector.seed = args.seed if args.detector_seed is None else args.detector_seed
    train = data.load_cifar10("train", args.data_dir)
    detector, tables, timings = build(model, train, cfg, data.frost_dir(args.data_dir), log=say)
    table = tables[cfg.table_images]
    dest = out / "artifacts"
    dest.mkdir(parents=True, exist_ok=True)
    detector.save(dest / "detector.safetensors")
    table.save(dest / f"bn_table-{args.model}.safetensors")
    seconds = {k: round(v, 1) for k, v in timings.items() if isinstance(v, (int, float))}
    say(f"fitted detector and BN table ({seconds} s); saved to {dest}")
    return detector, table, {"fit": asdict(cfg), "fit_timings": timings, "saved_to": str(dest)}


def bench_config(args) -> BenchConfig:
    """The run the options describe; ValueError naming what is wrong."""
    kw = dict(periods=args.periods, batch_sizes=args.batch_sizes, cameras=args.cameras, severity=args.severity,
              seed=args.seed, phase=not args.no_phase, streams=args.streams, split=args.split,
              labels=str(parse_order(args.labels)), realtime=args.realtime)
    cfg = BenchConfig.quick(**kw) if args.quick else BenchConfig(**kw)
    cfg.device = resolve_device(args.device)
    cfg.precision = args.precision
    if args.frames:
        cfg.frames = args.frames
    if STREAMS[args.streams] is not None:
        cfg.domains = STREAMS[args.streams]
        cfg.arms = tuple(a for a in cfg.arms if a != "dynbn_oracle")  # no table entry for these domains
    if args.arms:
        cfg.arms = tuple(a.strip() for a in args.arms.split(","))
        unknown = sorted(set(cfg.arms) - set(REGISTRY))
        if unknown:
            raise ValueError(f"unknown arms {unknown}; choose from {', '.join(REGISTRY)}")
        if args.streams != "seen" and "dynbn_oracle" in cfg.arms:
            raise ValueError(f"dynbn_oracle needs a table entry for every streamed domain; the {args.streams} "
                             "streams have none")
    settings = arm_settings(args.arms_config, args.arm or [])
    stray = sorted(set(settings) - set(cfg.arms))
    if stray:
        raise ValueError(f"settings given for arms {stray} that this run does not include ({', '.join(cfg.arms)})")
    cfg.arm_kwargs = {name: arm_kwargs(name, s) for name, s in settings.items()}
    return cfg


def cmd_stream_bench(args) -> int:
    start = time.perf_counter()
    set_threads(args.threads)
    if args.artifacts and args.detector_seed is not None:
        return fail("--detector-seed refits the detector; it cannot apply to the one loaded by --artifacts")
    try:
        cfg = bench_config(args)
    except ValueError as exc:
        return fail(str(exc))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    model = build_model(args.model, args.data_dir)
    detector, table, info = artifacts(args, model, out)
    if args.split == "train":
        frames = split_train(data.load_cifar10("train", args.data_dir), args.seed)[1]
    else:
        frames = data.load_cifar10("test", args.data_dir)
    result = run_bench(cfg, model, table, detector, frames, data.frost_dir(args.data_dir), say)
    if args.detector_seed is not None:
        result["detector_seed"] = args.detector_seed
    result.update(info, model=args.model, command=args.command_line, total_seconds=round(time.perf_counter() - start, 1))
    write_report(out, "stream_bench", result, lambda r, _: stream_markdown(r), args)
    plots = write_plots(result, out)
    say(f"wrote {out / 'stream_bench.json'}, {out / 'stream_bench.md'} and {len(plots)} plots "
        f"in {result['total_seconds']:.0f} s")
    return 0


def cmd_tune_vote(args) -> int:
    set_threads(args.threads)
    if args.artifacts and args.detector_seed is not None:
        return fail("--detector-seed refits the detector; it cannot apply to the one loaded by --artifacts")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    model = build_model(args.model, args.data_dir)
    detector, table, _ = artifacts(args, model, out)
    cfg = TuneConfig.quick(seed=args.seed, severity=args.severity) if args.quick else \
        TuneConfig(seed=args.seed, severity=args.severity)
    train = data.load_cifar10("train", args.data_dir)
    result = tune(cfg, model, table, detector, train, data.frost_dir(args.data_dir), say)
    (out / "vote_tuning.json").write_text(json.dumps(result, indent=1, default=str))
    r = result["best_rule"]
    say(f"DEFAULT_RULE = VoteRule(window={r['window']}, margin={r['margin']}, hold={r['hold']}, "
        f"clean_discount={r['clean_discount']})  # dynbn/vote.py; try it with "
        f"--arm dynbn_vote.rule={r['window']},{r['margin']},{r['hold']},{r['clean_discount']}")
    say(f"MOMENTUM = {result['bn_ema_momentum']}  # dynbn/methods/bn_ema.py; --arm bn_ema.momentum={result['bn_ema_momentum']}")
    say(f"wrote {out / 'vote_tuning.json'} ({result['seconds']:.0f} s)")
    return 0


def _shared(p: argparse.ArgumentParser) -> None:
    add_common(p)
    p.add_argument("--model", default="resnet20")
    p.add_argument("--severity", type=int, choices=range(1, 6), default=5, help="corruption severity (default 5)")
    p.add_argument("--artifacts", default=None, help="a bundle (`dynbn fit --out`) or an earlier run's artifacts/ folder (default: fit here)")
    p.add_argument("--detector-seed", type=int, default=None,
                   help="seed of the detector's weights and batch order only (default: --seed): the spread over "
                        "detector seeds is the fit's own noise")
    p.add_argument("--quick", action="store_true", help="small fit and few frames (minutes)")
    add_threads(p)
    p.add_argument("--out", required=True)


def register(subparsers) -> None:
    """Add ``stream-bench`` and ``tune-vote`` to the ``dynbn`` command."""
    p = subparsers.add_parser("stream-bench", help="dynbn vs test-time adaptation on streams with frequent shifts")
    _shared(p)
    p.add_argument("--periods", type=_ints, default=(1, 4, 16, 64, 256), help="shift periods N (default 1,4,16,64,256)")
    p.add_argument("--batch-sizes", type=_ints, default=(1, 16, 64), help="batch sizes B (default 1,16,64)")
    p.add_argument("--cameras", type=int, default=1, help="cameras, each with its own schedule (default 1)")
    p.add_argument("--frames", type=int, default=None, help="arrivals per stream (default 4096; 1024 with --quick)")
    p.add_argument("--no-phase", action="store_true", help="every camera starts at a segment boundary")
    p.add_argument("--streams", choices=list(STREAMS), default="seen",
                   help="seen: the fitted corruptions; held-out: the 4 extra ones the detector and tables never saw; "
                        "mixtures: two corruptions at once (default seen)")
    p.add_argument("--split", choices=["test", "train"], default="test",
                   help="stream test images, or the training images held out of fitting (for design choices)")
    p.add_argument("--labels", default="iid", metavar="ORDER",
                   help="label order: iid (default), dirichlet:DELTA (class runs, e.g. 0.1) or video:L (each image "
                        "held L frames, jittered)")
    p.add_argument("--realtime", action="store_true",
                   help="also the real-time protocol: an arm costing k times source adapts on one batch in ceil(k)")
    p.add_argument("--arms", default=None, help="comma-separated subset of the arms (default: all)")
    p.add_argument("--arm", type=_arm_setting, action="append", metavar="NAME.key=value",
                   help="an arm's setting, repeatable: bn_prior.prior=2, dynbn_vote.rule=1,0.3,1,3, dynbn_open.ramp=false")
    p.add_argument("--arms-config", default=None, metavar="FILE.yaml", help="arms' settings {arm: {setting: value}}")
    add_device(p, "cpu")  # the committed reports were made on the CPU
    add_precision(p)
    p.set_defaults(func=cmd_stream_bench)

    p = subparsers.add_parser("tune-vote", help="tune the vote rule and bn_ema's momentum on training streams")
    _shared(p)
    p.set_defaults(func=cmd_tune_vote)
