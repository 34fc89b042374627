"""Per-domain BatchNorm statistics: calibrate, save, load (checked), and hot-swap in place.

A table holds, for every domain and every BatchNorm layer of one model, the running mean
and variance, keyed like the model's ``state_dict``: ``"{domain}/{layer}.running_mean"``.
On disk it is a safetensors file whose metadata records the domain order and the model's
layer fingerprint; loading checks every key and shape and names any mismatch.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn

STATS = ("running_mean", "running_var")


def bn_layers(model: nn.Module) -> dict[str, nn.BatchNorm2d]:
    """Every BatchNorm2d of the model by its state_dict prefix; raises if there is none."""
    layers = {name: m for name, m in model.named_modules() if isinstance(m, nn.BatchNorm2d)}
    if not layers:
        raise ValueError(f"{type(model).__name__} has no BatchNorm2d layer: dynbn swaps BN statistics and needs some")
    for name, m in layers.items():
        if m.running_mean is None:
            raise ValueError(f"BatchNorm layer {name!r} tracks no running statistics (track_running_stats=False)")
    return layers


def fingerprint(model: nn.Module) -> dict[str, int]:
    """Layer name -> channel count: what a table must match to fit a model."""
    return {name: m.num_features for name, m in bn_layers(model).items()}


class TableMismatch(ValueError):
    """A BN table does not fit the model: the message lists the offending keys."""


@dataclass
class BNTable:
    """Statistics per domain: ``stats[domain][f"{layer}.{running_mean|running_var}"] = (C,) tensor``."""

    layers: dict[str, int]
    stats: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)
    meta: dict[str, str] = field(default_factory=dict)

    @property
    def domains(self) -> list[str]:
        return list(self.stats)

    def flat(self) -> dict[str, torch.Tensor]:
        """The state_dict-like view: ``"{domain}/{layer}.running_mean" -> tensor``."""
        return {f"{d}/{k}": v for d, entry in self.stats.items() for k, v in entry.items()}

    def check(self, model: nn.Module) -> None:
        """Raise TableMismatch naming every missing, unexpected or wrongly shaped key."""
        expected = fingerprint(model)
        problems = []
        for domain, entry in self.stats.items():
            want = {f"{layer}.{s}": c for layer, c in expected.items() for s in STATS}
            for key in sorted(set(want) - set(entry)):
                problems.append(f"missing {domain}/{key}")
            for key in sorted(set(entry) - set(want)):
                problems.append(f"unexpected {domain}/{key} (no such BN layer in the model)")
            for key in sorted(set(want) & set(entry)):
                if tuple(entry[key].shape) != (want[key],):
                    problems.append(f"{domain}/{key} has shape {tuple(entry[key].shape)}, the model needs ({want[key]},)")
        if problems:
            shown = "; ".join(problems[:8]) + (f"; ... {len(problems) - 8} more" if len(problems) > 8 else "")
            raise TableMismatch(f"BN table does not fit this model ({len(problems)} problems): {shown}. "
                                "Was it calibrated for another model? Re-run calibration for this one.")

    def save(self, path: str | os.PathLike) -> None:
        """Write as safetensors, with the domain order and layer fingerprint in the metadata."""
        meta = dict(self.meta, domains=json.dumps(self.domains), layers=json.dumps(self.layers))
        save_file({k: v.contiguous() for k, v in self.flat().items()}, str(path), metadata=meta)

    @classmethod
    def load(cls, path: str | os.PathLike, model: nn.Module | None = None) -> "BNTable":
        """Read a table; with a model, check that it fits (TableMismatch otherwise)."""
        try:
            flat = load_file(str(path))
            with safe_open(str(path), framework="pt") as fh:
                meta = dict(fh.metadata() or {})
        except Exception as exc:  # safetensors raises its own error types for damaged files
            raise ValueError(f"{path}: not a readable safetensors BN table ({exc})") from exc
        try:
            domains, layers = json.loads(meta.pop("domains")), json.loads(meta.pop("layers"))
        except (KeyError, json.JSONDecodeError) as exc:
            raise ValueError(f"{path}: metadata lacks 'domains'/'layers'; not a dynbn BN table") from exc
        stats: dict[str, dict[str, torch.Tensor]] = {d: {} for d in domains}
        for key, value in flat.items():
            domain, _, rest = key.partition("/")
            if domain not in stats:
                raise ValueError(f"{path}: key {key!r} names domain {domain!r}, not in the listed domains {domains}")
            stats[domain][rest] = value
        table = cls(layers=layers, stats=stats, meta=meta)
        if model is not None:
            table.check(model)
        return table

    def to(self, device: str | torch.device) -> "BNTable":
        """The table with every entry on ``device`` (a new table; tensors already there are shared, not copied)."""
        return BNTable(dict(self.layers), {d: {k: v.to(device) for k, v in entry.items()} for d, entry in self.stats.items()},
                       dict(self.meta))

    def stacked(self, layer: str, domains: list[str] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Means and variances of one layer for the given domains: two ``(D, C)`` tensors."""
        domains = domains or self.domains
        mean = torch.stack([self.stats[d][f"{layer}.running_mean"] for d in domains])
        var = torch.stack([self.stats[d][f"{layer}.running_var"] for d in domains])
        return mean, var


def current_stats(model: nn.Module) -> dict[str, torch.Tensor]:
    """A copy of the model's present BN statistics, keyed ``"{layer}.running_mean"``."""
    return {f"{n}.{s}": getattr(m, s).detach().clone() for n, m in bn_layers(model).items() for s in STATS}


def source_table(model: nn.Module, domain: str = "source") -> BNTable:
    """A one-domain table holding the checkpoint's own statistics."""
    return BNTable(layers=fingerprint(model), stats={domain: current_stats(model)})


@torch.no_grad()
def swap(model: nn.Module, table: BNTable, domain: str) -> None:
    """Hot-swap: copy one domain's statistics into the model's BN buffers in place (no new tensors)."""
    if domain not in table.stats:
        raise KeyError(f"domain {domain!r} not in the BN table; it has {table.domains}")
    entry = table.stats[domain]
    for name, m in bn_layers(model).items():
        m.running_mean.copy_(entry[f"{name}.running_mean"])
        m.running_var.copy_(entry[f"{name}.running_var"])


@torch.no_grad()
def calibrate(model: nn.Module, frames_by_domain: dict[str, torch.Tensor], batch_size: int = 256) -> BNTable:
    """Estimate each domain's BN statistics from its frames (float ``N x 3 x H x W`` in [0, 1]).

    Uses BN's cumulative average (momentum=None) over batches in train mode, the usual
    test-time BN recipe; the model's own statistics, momentum and mode are restored after.
    """
    layers = bn_layers(model)
    saved = current_stats(model)
    momenta = {n: m.momentum for n, m in layers.items()}
    counters = {n: m.num_batches_tracked.clone() for n, m in layers.items() if m.num_batches_tracked is not None}
    was_training = model.training
    table = BNTable(layers=fingerprint(model))
    try:
        for domain, frames in frames_by_domain.items():
            for m in layers.values():
                m.reset_running_stats()
                m.momentum = None
            model.train()
            for start in range(0, len(frames), batch_size):
                model(frames[start:start + batch_size])
            table.stats[domain] = current_stats(model)
        table.meta["images_per_domain"] = json.dumps({d: len(f) for d, f in frames_by_domain.items()})
    finally:
        for n, m in layers.items():
            m.momentum = momenta[n]
            m.running_mean.copy_(saved[f"{n}.running_mean"])
            m.running_var.copy_(saved[f"{n}.running_var"])
            if n in counters:
                m.num_batches_tracked.copy_(counters[n])
        model.train(was_training)
    return table
