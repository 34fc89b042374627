"""``dynbn serve``, ``dynbn publish``, ``dynbn results`` and ``dynbn events``: the served deployment."""

from __future__ import annotations

import json
import os
import sys
import time

import redis
from simulator.frames import SourceError, open_frames
from streamer.client import Client, ServiceMismatch
from streamer.completion import exit_on_sigterm
from streamer.keys import DEFAULT_PREFIX
from streamer.serve import ServeSettings, serve
from streamer.web import PortInUse

from .. import data
from ..bundle import BundleError
from ..device import device_help
from ..progress import progress
from .common import add_precision, fail

DEFAULT_URL = "redis://127.0.0.1:6379/0"


def _url(args) -> str:
    return args.redis_url or os.environ.get("REDIS_URL") or DEFAULT_URL


def cmd_serve(args) -> int:
    """Serve a bundle until SIGTERM/SIGINT (SIGTERM while still starting: exit 143)."""
    exit_on_sigterm()  # loading the bundle and waiting for Redis end at once; serving installs its own handler
    given = {k: getattr(args, k) for k in ("bundle", "redis_url", "prefix", "arm", "device", "precision", "batch", "max_wait_ms",
                                           "partitions", "retention", "retention_s", "max_batch_bytes", "name", "threads",
                                           "metrics_port")}
    try:
        settings = ServeSettings(**{k: v for k, v in given.items() if v is not None})
        return serve(settings)
    except (BundleError, ServiceMismatch, ValueError, PortInUse, redis.ResponseError) as exc:  # RedisSetupError: see main
        return fail(str(exc))


def _client(args, **kw) -> Client:
    return Client(_url(args), args.prefix, partitions=getattr(args, "partitions", None), **kw)


def cmd_publish(args) -> int:
    """Publish a video, URL, image folder or npz as one camera's frames."""
    try:
        frost = data.frost_dir(args.data_dir) if (args.corrupt or "").startswith("frost") else None  # its overlays
        frames = open_frames(args.source, args.size, loop=args.loop, corrupt=args.corrupt, seed=args.seed,
                             frost_dir=frost)
    except (SourceError, data.DataError) as exc:
        return fail(str(exc))
    try:
        client = _client(args, max_backlog=args.max_backlog, encoding=args.encoding)
    except (ServiceMismatch, ValueError, redis.RedisError) as exc:
        return fail(str(exc))
    fps = args.fps if args.fps is not None else 0.0
    total = None if args.loop else frames.total
    if args.count:
        total = args.count if total is None else min(total, args.count)
    bar = progress(desc=f"publish {args.camera}", total=total, unit="frame")
    start, sent = time.monotonic(), 0
    try:
        for frame in frames:
            if fps > 0:
                time.sleep(max(0.0, start + sent / fps - time.monotonic()))
            client.publish(args.camera, frame)
            sent += 1
            bar.update(1)
            if args.count and sent >= args.count:
                break
    except SourceError as exc:
        return fail(f"{exc} (after {sent} frames published)")
    except KeyboardInterrupt:
        pass
    finally:
        bar.close()
        frames.close()
    print(f"published {sent} frames of camera {args.camera} ({time.monotonic() - start:.1f} s)", file=sys.stderr)
    return 0


def _print_lines(reader, count: int | None) -> int:
    """Print each item as a JSON line, stop after ``count``; 1 if the reader ended (timeout) before that."""
    printed = 0
    try:
        for item in reader:
            print(json.dumps(item), flush=True)
            printed += 1
            if count and printed >= count:
                break
    except (KeyboardInterrupt, BrokenPipeError):  # Ctrl-C, or `dynbn results | head`
        return 0
    print(f"cursor (resume with --after): {reader.cursor}", file=sys.stderr)
    if count and printed < count:
        print(f"error: {printed} of {count} lines before the timeout", file=sys.stderr)
        return 1
    return 0


def _read(args, kind: str) -> int:
    try:
        client = _client(args)
        reader = (client.results if kind == "results" else client.events)(
            camera=args.camera, after=args.after, follow=args.follow or bool(args.count), timeout_s=args.timeout)
    except (ServiceMismatch, ValueError, redis.RedisError) as exc:
        return fail(str(exc))
    return _print_lines(reader, args.count)


def cmd_results(args) -> int:
    return _read(args, "results")


def cmd_events(args) -> int:
    return _read(args, "events")


def _redis(p) -> None:
    p.add_argument("--redis-url", default=None, help=f"redis:// or rediss:// URL, a cluster node's too "
                                                     f"(default: $REDIS_URL, else {DEFAULT_URL})")
    p.add_argument("--prefix", default=DEFAULT_PREFIX, help=f"key prefix of the deployment (default {DEFAULT_PREFIX})")
    p.add_argument("--partitions", type=int, default=None, help="partitions of the deployment (default: as in Redis, "
                                                                 "8 for a new one)")


def register(sub) -> None:
    """Add ``serve``, ``publish``, ``results`` and ``events``."""
    p = sub.add_parser("serve", help="serve a bundle: consume camera frames from Redis until SIGTERM")
    p.add_argument("--bundle", required=True, help="a folder written by `dynbn fit`")
    _redis(p)
    p.add_argument("--arm", default=None, help="the method to serve (default dynbn_vote)")
    p.add_argument("--device", default=None, help=device_help("auto"))
    add_precision(p, default=None)  # None: STREAMER_PRECISION, else fp32
    p.add_argument("--batch", type=int, default=None, help="frames per batch at most (default 64)")
    p.add_argument("--max-wait-ms", type=int, default=None, help="wait after a batch's first frame (default 20)")
    p.add_argument("--retention", type=int, default=None, help="results/events kept per partition (default 100000)")
    p.add_argument("--retention-s", type=float, default=None,
                   help="also delete results/events older than this many seconds (default: keep by count only)")
    p.add_argument("--max-batch-bytes", type=int, default=None,
                   help="frame bytes one batch reads at most, plus one entry (default 64 MiB)")
    p.add_argument("--metrics-port", type=int, default=None,
                   help="HTTP port of /metrics, /healthz, /readyz and the live page / (default 9400; 0: off)")
    p.add_argument("--name", default=None, help="worker name (default: random)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("publish", help="publish a video, stream URL, image folder or npz as one camera")
    p.add_argument("source", help="video file, URL (rtsp://, http://), image folder or .npz")
    p.add_argument("--camera", required=True, help="camera id: 1-64 characters of [A-Za-z0-9_.:-]")
    _redis(p)
    p.add_argument("--fps", type=float, default=None, help="frames per second (default: as fast as the service takes them)")
    p.add_argument("--loop", action="store_true", help="start over at the end of the source")
    p.add_argument("--count", type=int, default=None, help="stop after this many frames")
    p.add_argument("--corrupt", default=None, help="apply a corruption for demos, NAME:SEVERITY, e.g. fog:3")
    p.add_argument("--size", type=int, default=32, help="frame side in pixels: the bundle's input size (default 32)")
    p.add_argument("--encoding", choices=["raw", "png", "jpeg"], default="raw")
    p.add_argument("--max-backlog", type=int, default=1000, help="unacknowledged frames before publishing waits")
    p.add_argument("--seed", type=int, default=0, help="seed of --corrupt's random draws")
    p.add_argument("--data-dir", default=None, help="data directory (frost overlays for --corrupt frost)")
    p.set_defaults(func=cmd_publish)

    for kind, func in (("results", cmd_results), ("events", cmd_events)):
        p = sub.add_parser(kind, help=f"print the deployment's {kind} as JSON lines")
        _redis(p)
        p.add_argument("--camera", default=None, help="one camera only")
        p.add_argument("--follow", action="store_true", help="keep waiting for new ones")
        p.add_argument("--count", type=int, default=None, help="stop after N lines (waits for them)")
        p.add_argument("--after", default=None, help="resume after a reader's cursor (PARTITION:ID,...)")
        p.add_argument("--timeout", type=float, default=None, help="give up after S seconds (exit 1 if --count not reached)")
        p.set_defaults(func=func)
