"""``dynbn scenario ...``: run a scenario end to end, list or check scenario files, make a demo video."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from simulator.embedded import print_summary, run_scenario
from simulator.sources import write_demo_video
from streamer.scenario import SCENARIO_DIR, ScenarioError, load, resolve, shipped

from ..device import resolve_device
from .common import add_device, add_precision, fail


def cmd_run(args) -> int:
    """Run a scenario in this process and print its report table; 1 if a frame lacks its one result."""
    try:
        device = resolve_device(args.device)
    except ValueError as exc:
        return fail(str(exc))
    if args.threads:
        torch.set_num_threads(args.threads)
    scn = load(resolve(args.scenario))
    if args.frames:
        scn = scn.model_copy(update={"frames_per_camera": args.frames})
    url = args.redis_url or os.environ.get("REDIS_URL")
    out = Path(args.out)
    rep = run_scenario(scn, out, redis_url=url, artifacts=args.artifacts, data_dir=args.data_dir,
                       workers=args.workers, prefix=args.prefix, serve_page=args.serve_page, device=device,
                       precision=args.precision)
    print_summary(rep, out)
    return 0 if rep["missing_results"] == 0 and rep["duplicate_results"] == 0 else 1


def cmd_list(args) -> int:
    """One line per shipped scenario."""
    for name in shipped():
        scn = load(SCENARIO_DIR / f"{name}.yaml")
        print(f"{name:18} {scn.cameras} cameras x {scn.frames_per_camera} frames, {scn.schedule.kind} schedule, "
              f"source {scn.source.kind}, arms {', '.join(scn.arms)}")
    return 0


def cmd_check(args) -> int:
    """Validate a scenario file; print every problem."""
    try:
        scn = load(resolve(args.scenario))
    except ScenarioError as exc:
        print(f"error: {exc}")
        return 1
    print(f"ok: {scn.name}, {scn.total_frames} frames")
    return 0


def cmd_video(args) -> int:
    """Write a short demo video."""
    print(f"wrote {write_demo_video(args.out, frames=args.frames, root=args.data_dir)}")
    return 0


def register(sub) -> None:
    """Add ``dynbn scenario {run,list,check,video}``."""
    p = sub.add_parser("scenario", help="streaming scenarios: run one end to end (embedded or through Redis)")
    ss = p.add_subparsers(dest="action", required=True)
    r = ss.add_parser("run", help="simulator + worker + report in one process; prints the report table")
    r.add_argument("scenario", nargs="?", default=None, help="a YAML/JSON file or a shipped name (default: default)")
    r.add_argument("--out", required=True, help="folder for report.json, report.md and plots")
    r.add_argument("--redis-url", default=None, help="go through Redis streams (default: $REDIS_URL, else in memory)")
    r.add_argument("--artifacts", default=None, help="cache of fitted detector/tables (default ~/.cache/dynbn/artifacts)")
    r.add_argument("--data-dir", default=None, help="data directory (default: $DYNBN_DATA)")
    r.add_argument("--workers", type=int, default=1, help="worker threads in this process (default 1)")
    r.add_argument("--frames", type=int, default=None, help="override frames per camera")
    r.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's choice)")
    add_device(r, "auto")
    add_precision(r)
    r.add_argument("--prefix", default=None, help="Redis key prefix (default: a fresh one per run)")
    r.add_argument("--serve-page", type=int, default=0, metavar="PORT",
                   help="serve the live page, /metrics and the health endpoints on this port while it runs")
    r.set_defaults(func=cmd_run)
    ls = ss.add_parser("list", help="the scenarios shipped in scenarios/")
    ls.set_defaults(func=cmd_list)
    c = ss.add_parser("check", help="validate a scenario file and list every problem")
    c.add_argument("scenario")
    c.set_defaults(func=cmd_check)
    v = ss.add_parser("video", help="write a short demo video (PyAV, H.264 when available)")
    v.add_argument("out")
    v.add_argument("--frames", type=int, default=240)
    v.add_argument("--data-dir", default=None)
    v.set_defaults(func=cmd_video)
