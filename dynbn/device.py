"""Which torch device a command or a worker runs on: the one parser of ``--device`` (and ``STREAMER_DEVICE``).

``resolve_device`` is shared by ``dynbn reproduce``, ``dynbn stream-bench``, ``dynbn scenario run``,
``dynbn serve`` and the scenario worker (through ``streamer.lifecycle``); ``synchronize`` waits for a
device's queued work, so that a clock read after it times the work and not its launch.
"""

from __future__ import annotations

import torch

SPECS = "auto, cpu, cuda or cuda:N"  # what --device takes, as the help texts and errors name it


def resolve_device(spec: str = "auto") -> str:
    """``auto`` (the first CUDA device, else the CPU), ``cpu``, ``cuda`` or ``cuda:N``; ValueError otherwise."""
    if spec == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if spec == "cpu":
        return spec
    if spec == "cuda" or (spec.startswith("cuda:") and spec[5:].isdigit()):
        if not torch.cuda.is_available():
            raise ValueError(f"--device {spec}: torch sees no CUDA device here (use --device cpu or auto)")
        if ":" in spec and int(spec[5:]) >= torch.cuda.device_count():
            raise ValueError(f"--device {spec}: this machine has {torch.cuda.device_count()} CUDA device(s)")
        return spec
    raise ValueError(f"--device {spec!r}: use {SPECS}")


def device_help(default: str) -> str:
    """The ``--device`` help text of every command, naming its default first."""
    others = ", ".join(s for s in ("auto", "cpu", "cuda") if s != default)
    return f"{default} (default), {others} or cuda:N"


def synchronize(device: str | torch.device) -> None:
    """Wait for the work queued on ``device`` (CUDA runs asynchronously; the CPU needs no wait)."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)
