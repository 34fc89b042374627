"""Options and helpers every sub-command shares."""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

import torch
from tqdm import tqdm

from .. import data
from ..device import PRECISIONS, device_help
from ..experiments.machine import machine


def add_common(p: argparse.ArgumentParser) -> None:
    """``--data-dir`` and ``--seed``."""
    p.add_argument("--data-dir", default=None, help=f"data directory (default: ${data.ENV_VAR} or {data.DEFAULT_DIR})")
    p.add_argument("--seed", type=int, default=0, help="seed for every random draw (default 0)")


def add_device(p: argparse.ArgumentParser, default: str) -> None:
    """``--device``, read by ``dynbn.device.resolve_device`` (the same help text in every command)."""
    p.add_argument("--device", default=default, help=device_help(default))


def add_precision(p: argparse.ArgumentParser, default: str | None = "fp32") -> None:
    """``--precision``, read by ``dynbn.device.autocast`` (the same help text in every command; ``default``
    None: the command's settings fill it in, fp32 unless set)."""
    p.add_argument("--precision", default=default, choices=PRECISIONS,
                   help="the classifier's precision: fp32 (default), or bf16/fp16 under autocast (the detector and "
                        "the BN statistics stay float32)")


def add_threads(p: argparse.ArgumentParser) -> None:
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads (default 1: with 2, torch collapses when another process holds a core)")


def set_threads(n: int) -> None:
    if n:
        torch.set_num_threads(n)


def command_line(argv: list[str]) -> str:
    """The command as typed (``main``'s arguments), for the 'Regenerate:' line of a report."""
    return "dynbn " + shlex.join(argv)


def say(message: str) -> None:
    """Progress lines of the long commands (the library logs; the CLI prints), above any progress bar."""
    tqdm.write(message, file=sys.stdout)


def fail(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return 2


def write_report(out: Path, stem: str, result: dict, markdown, args: argparse.Namespace) -> None:
    """``out/stem.json`` and ``out/stem.md``; the JSON records the command and the machine."""
    result.setdefault("command", args.command_line)
    result.setdefault("machine", machine())
    (out / f"{stem}.json").write_text(json.dumps(result, indent=1, default=str))
    (out / f"{stem}.md").write_text(markdown(result, result["command"]))
