"""``dynbn data``, ``dynbn fit`` and ``dynbn reproduce``, and the parser that joins every sub-command."""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

from streamer.connection import RedisSetupError
from tqdm.contrib.logging import logging_redirect_tqdm

from .. import corruptions, data
from ..bundle import fit_bundle
from ..device import resolve_device
from ..domains import CLEAN
from ..fitting import FitConfig
from ..experiments.report import reproduce_markdown
from ..experiments.reproduce import ReproduceConfig, reproduce
from . import scenario, serve, stream, studies
from .common import add_common, add_device, command_line, fail, say, write_report


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
    """Fit a bundle (model, detector, BN table, manifest) into --out; bad inputs -> `error: ...`, exit 2."""
    start = time.perf_counter()
    try:
        classes = _read_classes(args.classes) if args.classes else None
        config = _fit_config(args.domains, args.quick, args.seed) if args.domains else None
        bundle = fit_bundle(args.model, args.out, weights=args.weights, images=args.images, quick=args.quick,
                            seed=args.seed, data_dir=args.data_dir, input_size=args.size, class_names=classes,
                            config=config, log=say)
    except (ValueError, data.DataError) as exc:  # BundleError and WeightsError are ValueErrors
        return fail(str(exc))
    r, fit = bundle.manifest["fit_results"], bundle.manifest["fit"]
    held_out = "" if "clean_bias" not in r else (
        f"; held-out {'accuracy' if fit['labels'] == 'given' else 'agreement with clean predictions'}: "
        f"clean {r['held_out_clean_accuracy']:.3f}, corrupted {r['held_out_corrupted_accuracy']:.3f}, "
        f"clean bias {r['clean_bias']:.2f}")
    print(f"wrote bundle {args.out}: {bundle.model_spec}, {len(bundle.domains)} domains, {fit['images']} images "
          f"({fit['origin']}){held_out}; open-set threshold {r['open_set_threshold']:.1f}; "
          f"{time.perf_counter() - start:.0f} s")
    return 0


def _fit_config(domains: str, quick: bool, seed: int) -> FitConfig:
    """The quick or full recipe over the domains named in ``--domains`` (clean first when named)."""
    names = [d.strip() for d in domains.split(",") if d.strip()]
    bad = [d for d in names if d != CLEAN and d not in corruptions.ALL]
    if bad or len(set(names)) != len(names) or len(names) < 2:
        raise ValueError(f"--domains {domains!r}: give two or more distinct names from {CLEAN}, "
                         f"{', '.join(corruptions.ALL)}" + (f" ({', '.join(bad)} unknown)" if bad else ""))
    config = FitConfig.quick(seed) if quick else FitConfig(seed=seed)
    config.detector.seed = seed
    config.domains = tuple(sorted(names, key=lambda d: d != CLEAN))
    return config


def _read_classes(path: str) -> list[str]:
    """Class names from a text file, one a line (blank lines skipped)."""
    try:
        lines = Path(path).read_text().splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"--classes {path}: cannot read it ({exc}); give a text file with one class name a line") from exc
    return [line.strip() for line in lines if line.strip()]


def _positive_float(text: str) -> float:
    """argparse type: a float > 0 (``--soft-temperature``)."""
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {text!r}")
    return value


def _positive_int(text: str) -> int:
    """argparse type: an integer > 0 (``--detector-images``)."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected an integer > 0, got {text!r}")
    return value


def cmd_reproduce(args) -> int:
    cfg = ReproduceConfig.quick(args.seed) if args.quick else ReproduceConfig()
    cfg.model = args.model
    cfg.fit.seed = cfg.fit.detector.seed = args.seed
    if args.no_severity:  # the paper's table: no arm reads a severity head or its entries, so none is fitted
        cfg.severity, cfg.fit.severity_images = False, 0
    if args.images:
        cfg.test_images = args.images
    if args.detector_images:
        cfg.fit.detector_images = args.detector_images
    cfg.soft_temperature = args.soft_temperature
    try:
        cfg.device = resolve_device(args.device)
    except ValueError as exc:
        return fail(str(exc))
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

    p = sub.add_parser("fit", help="fit a bundle: the model, its corruption detector and BN table, and a manifest")
    add_common(p)
    p.add_argument("--model", default="resnet20", help="resnet20/32/44/56 or tv:NAME (torchvision; default resnet20)")
    p.add_argument("--weights", default=None,
                   help="state dict file for --model (.safetensors or torch.save; default: the shipped checkpoint)")
    p.add_argument("--images", default=None,
                   help="fit on these images: a folder or an .npz with 'images' (and 'labels'); default CIFAR-10 train")
    p.add_argument("--size", type=int, default=None, help="input size the model sees, in pixels (default 32)")
    p.add_argument("--classes", default=None, help="text file with the class names, one a line")
    p.add_argument("--domains", default=None, help="comma-separated domains to fit (default: clean and the 15 "
                                                   "benchmark corruptions; frost needs an input size <= 62)")
    p.add_argument("--quick", action="store_true", help="small training sets (about a minute, lower accuracy)")
    p.add_argument("--out", required=True, help="bundle folder to write (new, empty, or an earlier bundle)")
    p.set_defaults(func=cmd_fit)

    p = sub.add_parser("reproduce", help="the paper's table: source / dynbn / oracle / bn_adapt per corruption")
    add_common(p)
    p.add_argument("--model", default="resnet20")
    p.add_argument("--quick", action="store_true", help="400 test images, severities 3 and 5 (< 3 minutes)")
    p.add_argument("--images", type=int, default=None, help="test images per corruption and severity")
    p.add_argument("--detector-images", type=_positive_int, default=None,
                   help="detector training images per domain and severity (default 3200; 400 with --quick)")
    p.add_argument("--soft-temperature", type=_positive_float, default=None,
                   help="dynbn arm: mix every domain's entry by softmax(detector logits / T) (dynbn_soft) instead of "
                        "taking the detected domain's (default: the detected domain's)")
    p.add_argument("--no-severity", action="store_true",
                   help="dynbn arm: the detected domain's entry alone, the paper's table (default: mixed with its "
                        "severity entries by the detector's severity head, as the product's arms do)")
    add_device(p, "cpu")  # the committed reports were made on the CPU
    p.add_argument("--out", required=True)
    p.set_defaults(func=cmd_reproduce)

    stream.register(sub)
    studies.register(sub)
    scenario.register(sub)
    serve.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    args.command_line = command_line(argv)  # as typed, for the reports' 'Regenerate:' line
    logging.basicConfig(level=logging.INFO, format="%(message)s")  # the library logs its progress
    try:
        with logging_redirect_tqdm():  # log lines print above the progress bars, not through them
            return args.func(args)
    except (data.DataError, RedisSetupError) as exc:  # a missing file; a password or TLS setting Redis refuses
        return fail(str(exc))


if __name__ == "__main__":
    sys.exit(main())
