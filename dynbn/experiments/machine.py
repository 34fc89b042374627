"""The machine a report was made on: its figures depend on it beyond the seed.

The detector's fit is chaotic: a CPU whose vector instructions round differently (or another
torch build) fits another detector, and every dynbn figure moves by a point or two. Reports
record this so that "regenerates identically" is checked on the same kind of machine.
"""

from __future__ import annotations

import os
import platform
from pathlib import Path

import torch


def cpu_model() -> str:
    """The CPU's model name (Linux: /proc/cpuinfo), else what the platform module says."""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text(errors="replace").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def machine() -> dict:
    """torch version, CPU model, vector instructions torch uses, CPU count, torch threads."""
    return {"torch": torch.__version__, "cpu": cpu_model(), "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "cpus": os.cpu_count(), "torch_threads": torch.get_num_threads()}


def machine_line(m: dict | None) -> str:
    """One Markdown line naming the machine ('' for reports made before it was recorded)."""
    if not m:
        return ""
    cpu = f" ({m['cpu']})" if m.get("cpu") else ""
    return (f"Machine: torch {m['torch']}, {m['cpus']} CPUs{cpu} with {m['cpu_capability']} vector instructions"
            + (f", {m['torch_threads']} torch thread(s)" if "torch_threads" in m else "") + ".")
