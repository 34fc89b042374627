"""Where and how the classifier runs: the device, the precision, and frames' way onto the device.

``resolve_device`` is the one parser of ``--device`` (and ``STREAMER_DEVICE``), shared by ``dynbn
reproduce``, ``dynbn stream-bench``, ``dynbn scenario run``, ``dynbn serve`` and the scenario worker
(through ``streamer.lifecycle``); ``synchronize`` waits for a device's queued work, so that a clock read
after it times the work and not its launch. ``autocast`` is what ``--precision`` selects;
``FrameLoader`` turns a batch of uint8 frames into the float batch the arms take, on the device.
"""

from __future__ import annotations

import contextlib

import numpy as np
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


PRECISIONS = ("fp32", "bf16", "fp16")  # what --precision takes


def autocast(device: str | torch.device, precision: str = "fp32"):
    """The context the classifier runs in at ``precision``: nothing for fp32, else ``torch.autocast`` on the
    device's type with bfloat16 or float16 (convolutions and matrix products in that type; what
    ``--precision`` selects). Arms keep their statistics arithmetic and the detector in float32
    (``full_precision``)."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision {precision!r}: use {', '.join(PRECISIONS)}")
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=torch.device(device).type, dtype=dtype)


def full_precision(x: torch.Tensor):
    """Within the block, no autocast on the device of ``x`` (any tensor there; a no-op outside autocast): for
    arithmetic that must stay float32 under ``autocast`` (the detector; mixing BN statistics, whose variance
    is a difference of close numbers)."""
    if not torch.is_autocast_enabled(x.device.type):
        return contextlib.nullcontext()
    return torch.autocast(device_type=x.device.type, enabled=False)


def activation_dtype(x: torch.Tensor) -> torch.dtype:
    """The type a model's activations have when it runs on ``x`` here: autocast's type where it is on, else
    ``x``'s own."""
    if torch.is_autocast_enabled(x.device.type):
        return torch.get_autocast_dtype(x.device.type)
    return x.dtype


class FrameLoader:
    """uint8 frames (``H x W x 3`` numpy arrays) -> one float ``B x 3 x H x W`` batch in [0, 1] on ``device``.

    The frames are copied into a reused uint8 host buffer, which moves to the device in one copy; the
    conversion to float happens there. On CUDA the buffers are pinned (page-locked), so the copy runs
    without blocking the host, and there are two, used in turn: the next batch's frames are written into
    one while the other's copy may still be running (each buffer waits, before it is written, for the copy
    that last read it). On the CPU there is one plain buffer and the conversion reads it directly. Either
    way the batch equals ``spectrum.to_tensor(np.stack(frames))`` on the device, bit for bit.
    """

    def __init__(self, shape: tuple[int, int, int], device: str | torch.device = "cpu", capacity: int = 64) -> None:
        if len(shape) != 3 or shape[2] != 3:
            raise ValueError(f"frames are H x W x 3, got shape {tuple(shape)}")
        self.shape, self.device = tuple(int(s) for s in shape), torch.device(device)
        self.pinned = self.device.type == "cuda"
        self._buffers: list[torch.Tensor] = []
        self._copied: list = []   # per buffer: the CUDA event recorded after its last copy (None: none pending)
        self._turn = 0
        self._allocate(capacity)

    def _allocate(self, capacity: int) -> None:
        """Fresh buffers of ``capacity`` frames (two pinned ones on CUDA, one plain one on the CPU)."""
        count = 2 if self.pinned else 1
        self._buffers = [torch.empty((capacity, *self.shape), dtype=torch.uint8, pin_memory=self.pinned)
                         for _ in range(count)]
        self._copied = [None] * count

    @property
    def capacity(self) -> int:
        return len(self._buffers[0])

    def load(self, frames) -> torch.Tensor:
        """The frames as one float batch on the device; ValueError naming the first frame of another shape
        or type (the buffer grows when a batch is larger than it)."""
        for i, f in enumerate(frames):
            if f.shape != self.shape or f.dtype != np.uint8:
                raise ValueError(f"frame {i} is {f.dtype} {tuple(f.shape)}; this loader takes uint8 {self.shape}")
        if len(frames) > self.capacity:
            self._allocate(len(frames))
        turn = self._turn
        self._turn = (turn + 1) % len(self._buffers)
        if self._copied[turn] is not None:
            self._copied[turn].synchronize()  # its previous copy has read the buffer
        host = self._buffers[turn][:len(frames)]
        view = host.numpy()
        for i, f in enumerate(frames):
            view[i] = f
        batch = host.to(self.device, non_blocking=self.pinned)
        if self.pinned:
            self._copied[turn] = torch.cuda.Event()
            self._copied[turn].record()
        return batch.permute(0, 3, 1, 2).float().div_(255.0)
