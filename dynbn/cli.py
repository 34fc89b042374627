"""The ``dynbn`` command line: data, fit, reproduce (and the streaming commands)."""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

from . import data


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data-dir", default=None, help=f"data directory (default: ${data.ENV_VAR} or {data.DEFAULT_DIR})")
    p.add_argument("--seed", type=int, default=0, help="seed for every random draw (default 0)")


def cmd_data(args) -> int:
    if args.action == "fetch":
        print(f"data directory ready: {data.fetch(args.data_dir)}")
        return 0
    problems = data.verify(args.data_dir)
    for line in problems:
        print(line)
    print("ok" if not problems else f"{len(problems)} problems in {data.data_dir(args.data_dir)}")
    return 1 if problems else 0


def cmd_fit(args) -> int:
    from .evaluate import ReproduceConfig
    from .fitting import build
    from .models import build_model

    cfg = ReproduceConfig.quick(args.seed) if args.quick else ReproduceConfig()
    cfg.fit.seed = cfg.fit.detector.seed = args.seed
    model = build_model(args.model, args.data_dir)
    train = data.load_cifar10("train", args.data_dir)
    detector, tables, timings = build(model, train, cfg.fit, data.frost_dir(args.data_dir))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    detector.save(out / "detector.safetensors")
    tables[cfg.fit.table_images].save(out / f"bn_table-{args.model}.safetensors")
    print(f"wrote {out}/detector.safetensors and {out}/bn_table-{args.model}.safetensors ({timings})")
    return 0


def cmd_reproduce(args) -> int:
    from .evaluate import ReproduceConfig, reproduce
    from .report import reproduce_markdown

    cfg = ReproduceConfig.quick(args.seed) if args.quick else ReproduceConfig()
    cfg.model = args.model
    cfg.fit.seed = cfg.fit.detector.seed = args.seed
    cfg.fit.severity_images = 0  # the paper's table: no arm here reads the severity head or its entries
    if args.images:
        cfg.test_images = args.images
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    result = reproduce(cfg, args.data_dir, log=lambda m: print(m, flush=True))
    command = "dynbn " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    (out / "reproduce.json").write_text(json.dumps(result, indent=1))
    (out / "reproduce.md").write_text(reproduce_markdown(result, command))
    a = result["arms"]
    print("mean accuracy: " + ", ".join(f"{arm} {a[arm]['mean']:.3f}" for arm in a)
          + f"; detector {result['detector']['accuracy']:.3f}; {time.perf_counter() - start:.0f} s")
    print(f"wrote {out / 'reproduce.json'} and {out / 'reproduce.md'}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dynbn", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("data", help="fill (fetch) or check (verify) the data directory")
    p.add_argument("action", choices=["fetch", "verify"])
    _common(p)
    p.set_defaults(func=cmd_data)

    p = sub.add_parser("fit", help="train the detector and calibrate the BN table; save both")
    _common(p)
    p.add_argument("--model", default="resnet20")
    p.add_argument("--quick", action="store_true", help="small training sets (seconds, lower accuracy)")
    p.add_argument("--out", required=True)
    p.set_defaults(func=cmd_fit)

    p = sub.add_parser("reproduce", help="the paper's table: source / dynbn / oracle / bn_adapt per corruption")
    _common(p)
    p.add_argument("--model", default="resnet20")
    p.add_argument("--quick", action="store_true", help="400 test images, severities 3 and 5 (< 3 minutes)")
    p.add_argument("--images", type=int, default=None, help="test images per corruption and severity")
    p.add_argument("--out", required=True)
    p.set_defaults(func=cmd_reproduce)

    for register in _extensions():
        register(sub)
    return parser


def _extensions():
    """Subcommands that live with the code they drive (benchmarks, scenarios)."""
    found = []
    for module, attr in (("dynbn.stream_bench", "register"), ("dynbn.compact", "register"),
                         ("dynbn.severity", "register"), ("streamer.cli", "register")):
        try:
            mod = __import__(module, fromlist=[attr])
        except ModuleNotFoundError as exc:
            if exc.name != module:
                raise
            continue
        found.append(getattr(mod, attr))
    return found


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except data.DataError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
