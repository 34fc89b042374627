"""``dynbn data``, ``dynbn fit`` and ``dynbn reproduce``, and the parser that joins every sub-command."""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

from tqdm.contrib.logging import logging_redirect_tqdm

from .. import data
from ..experiments.report import reproduce_markdown
from ..experiments.reproduce import ReproduceConfig, reproduce
from ..fitting import FitConfig, build
from ..models import build_model
from . import scenario, stream, studies
from .common import add_common, command_line, say, write_report


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
    cfg = FitConfig.quick(args.seed) if args.quick else FitConfig(seed=args.seed)
    cfg.detector.seed = args.seed
    model = build_model(args.model, args.data_dir)
    train = data.load_cifar10("train", args.data_dir)
    detector, tables, timings = build(model, train, cfg, data.frost_dir(args.data_dir), log=say)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    detector.save(out / "detector.safetensors")
    tables[cfg.table_images].save(out / f"bn_table-{args.model}.safetensors")
    print(f"wrote {out}/detector.safetensors and {out}/bn_table-{args.model}.safetensors ({timings})")
    return 0


def cmd_reproduce(args) -> int:
    cfg = ReproduceConfig.quick(args.seed) if args.quick else ReproduceConfig()
    cfg.model = args.model
    cfg.fit.seed = cfg.fit.detector.seed = args.seed
    cfg.fit.severity_images = 0  # the paper's table: no arm here reads the severity head or its entries
    if args.images:
        cfg.test_images = args.images
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    result = reproduce(cfg, args.data_dir, log=say)
    write_report(out, "reproduce", result, reproduce_markdown, args)
    a = result["arms"]
    print("mean accuracy: " + ", ".join(f"{arm} {a[arm]['mean']:.3f}" for arm in a)
          + f"; detector {result['detector']['accuracy']:.3f}; {time.perf_counter() - start:.0f} s")
    print(f"wrote {out / 'reproduce.json'} and {out / 'reproduce.md'}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dynbn", description="Dynamic BatchNorm statistics for streams of corrupted frames.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("data", help="fill (fetch) or check (verify) the data directory")
    p.add_argument("action", choices=["fetch", "verify"])
    add_common(p)
    p.set_defaults(func=cmd_data)

    p = sub.add_parser("fit", help="train the detector and calibrate the BN table; save both")
    add_common(p)
    p.add_argument("--model", default="resnet20")
    p.add_argument("--quick", action="store_true", help="small training sets (about a minute, lower accuracy)")
    p.add_argument("--out", required=True)
    p.set_defaults(func=cmd_fit)

    p = sub.add_parser("reproduce", help="the paper's table: source / dynbn / oracle / bn_adapt per corruption")
    add_common(p)
    p.add_argument("--model", default="resnet20")
    p.add_argument("--quick", action="store_true", help="400 test images, severities 3 and 5 (< 3 minutes)")
    p.add_argument("--images", type=int, default=None, help="test images per corruption and severity")
    p.add_argument("--out", required=True)
    p.set_defaults(func=cmd_reproduce)

    stream.register(sub)
    studies.register(sub)
    scenario.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    args.command_line = command_line(argv)  # as typed, for the reports' 'Regenerate:' line
    logging.basicConfig(level=logging.INFO, format="%(message)s")  # the library logs its progress
    try:
        with logging_redirect_tqdm():  # log lines print above the progress bars, not through them
            return args.func(args)
    except data.DataError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
