"""``dynbn compact-tables`` and ``dynbn severity-tables``: the two studies of the BN table's form."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..bn.compact import MAX_RANK
from ..domains import BENCHMARK
from ..experiments.compact import CompactConfig, compact_markdown, run_compact
from ..experiments.severity import SeverityConfig, run_severity, severity_markdown
from .common import add_common, add_threads, say, set_threads, write_report


def _ranks(text: str) -> tuple[int, ...]:
    """``--ranks``: comma-separated integers in 1 .. MAX_RANK, deduplicated and sorted."""
    try:
        values = sorted({int(v) for v in text.split(",") if v.strip()})
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values or values[0] < 1 or values[-1] > MAX_RANK:
        raise argparse.ArgumentTypeError(
            f"ranks must be integers in 1 .. {MAX_RANK} (the {len(BENCHMARK)} corrupted domains' centred stack "
            f"has rank at most {MAX_RANK}), got {text!r}")
    return tuple(values)


def _int_at_least(minimum: int, requirement: str, kind: str):
    """An argparse type: an integer >= ``minimum``, with messages naming ``requirement``/``kind``."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {kind}, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be {requirement}, got {value}")
        return value
    return parse


def _out_dir(text: str) -> Path:
    """``--out``: a directory, created if missing; an existing file is refused."""
    path = Path(text)
    if path.exists() and not path.is_dir():
        raise argparse.ArgumentTypeError(f"{text!r} exists and is not a directory")
    return path


def cmd_compact_tables(args) -> int:
    set_threads(args.threads)
    cfg = CompactConfig.quick(args.seed) if args.quick else CompactConfig(seed=args.seed)
    cfg.ranks = args.ranks
    if args.images:
        cfg.images = args.images
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    result = run_compact(cfg, args.data_dir, log=say)
    write_report(out, "compact_tables", result, compact_markdown, args)
    print(f"recommendation: {result['recommendation']}; {result['timings_s']['total_s']:.0f} s")
    print(f"wrote {out / 'compact_tables.json'} and {out / 'compact_tables.md'}")
    return 0


def cmd_severity_tables(args) -> int:
    set_threads(args.threads)
    cfg = SeverityConfig.quick(args.seed) if args.quick else SeverityConfig.full(args.seed)
    args.out.mkdir(parents=True, exist_ok=True)
    result = run_severity(cfg, args.data_dir, log=say)
    write_report(args.out, "severity_tables", result, severity_markdown, args)
    print(f"recommendation: {result['recommendation']['choice']}; {result['timings_s']['total_s']:.0f} s")
    print(f"wrote {args.out / 'severity_tables.json'} and {args.out / 'severity_tables.md'}")
    return 0


def register(subparsers) -> None:
    """Add ``compact-tables`` and ``severity-tables`` to the ``dynbn`` command."""
    p = subparsers.add_parser("compact-tables", help="bytes per domain vs oracle accuracy for compact BN tables")
    add_common(p)
    p.add_argument("--quick", action="store_true", help="K = 256, 200 test images, severities 3 and 5 (< 2 minutes)")
    p.add_argument("--images", type=int, default=None, help="test images per corruption and severity")
    p.add_argument("--ranks", type=_ranks, default=(1, 2, 4, 8), help=f"low-rank ranks, 1 .. {MAX_RANK} (default 1,2,4,8)")
    add_threads(p)
    p.add_argument("--out", required=True)
    p.set_defaults(func=cmd_compact_tables)

    p = subparsers.add_parser("severity-tables",
                              help="BN tables per (corruption, severity), hard or interpolated, vs one per corruption")
    p.add_argument("--data-dir", default=None, help="data directory (default: $DYNBN_DATA)")
    p.add_argument("--seed", type=_int_at_least(0, "a non-negative integer", "a non-negative integer"), default=0,
                   help="seed for every random draw (default 0)")
    p.add_argument("--quick", action="store_true",
                   help="200 test images, severities 3 and 5, K = 128 per severity entry, small detectors (~3 minutes)")
    p.add_argument("--threads", type=_int_at_least(1, "at least 1", "an integer"), default=1,
                   help="torch threads (default 1: with 2, torch collapses when another process holds a core)")
    p.add_argument("--out", type=_out_dir, required=True, help="directory for severity_tables.json and .md")
    p.set_defaults(func=cmd_severity_tables)
