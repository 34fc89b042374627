"""Per-sample BatchNorm statistics: one forward serves a batch that mixes domains.

At inference BN is ``x * scale + shift`` per channel. ``DomainBatchNorm2d`` holds a bank
of statistics, one row per domain, and gathers each sample's row (or a probability-weighted
mixture of rows), so a frame's output depends on its own domain only, never on its
batch-mates. ``DomainSwitch`` turns a model's BatchNorm2d modules into this subclass in place (same
objects, same parameter and buffer tensors, no copies), so ``state_dict`` keys, hot-swap
(``bn_table.swap``) and training code keep working on the same model.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .bn_table import BNTable, bn_layers


class DomainBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d that, when given per-sample domains, normalises each sample with its own row."""

    bank_mean: torch.Tensor  # D x C
    bank_var: torch.Tensor   # D x C

    def select(self, index: torch.Tensor | None = None, weights: torch.Tensor | None = None) -> None:
        """Use bank row ``index[b]`` (B,) or mixture ``weights[b]`` (B x D) for sample b; None: plain BN."""
        self._index, self._weights = index, weights

    def _sample_stats(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self._weights is not None:
            w = self._weights.to(self.bank_mean.dtype)
            mean = w @ self.bank_mean  # B x C
            second = w @ (self.bank_var + self.bank_mean**2)
            return mean, (second - mean**2).clamp_min(0.0)  # moments of the mixture
        return self.bank_mean[self._index], self.bank_var[self._index]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if getattr(self, "_index", None) is None and getattr(self, "_weights", None) is None:
            return super().forward(x)
        if self._index is not None and len(self._index) == len(x) and bool((self._index == self._index[0]).all()):
            row = int(self._index[0])  # whole batch in one domain: the fused kernel is faster
            return F.batch_norm(x, self.bank_mean[row], self.bank_var[row], self.weight, self.bias, False, 0.0, self.eps)
        mean, var = self._sample_stats()
        if len(mean) != len(x):
            raise ValueError(f"{len(mean)} per-sample domains for a batch of {len(x)} frames")
        scale = torch.rsqrt(var + self.eps)
        if self.weight is not None:
            scale = scale * self.weight
        shift = -mean * scale
        if self.bias is not None:
            shift = shift + self.bias
        return torch.addcmul(shift[:, :, None, None], x, scale[:, :, None, None])  # one pass: B x C x H x W


def _convert(bn: nn.BatchNorm2d) -> DomainBatchNorm2d:
    """Turn a plain BatchNorm2d into a DomainBatchNorm2d in place: same object, same tensors."""
    if type(bn) is not nn.BatchNorm2d:
        raise TypeError(f"per-sample statistics support plain nn.BatchNorm2d, not {type(bn).__name__}")
    bn.__class__ = DomainBatchNorm2d
    bn.select(None, None)
    return bn


class DomainSwitch:
    """Per-sample BN statistics for a model: install a bank, then select domains per forward."""

    def __init__(self, model: nn.Module, table: BNTable, domains: list[str] | None = None) -> None:
        table.check(model)
        self.model = model
        self.domains = list(domains or table.domains)
        self.layers: dict[str, DomainBatchNorm2d] = {}
        for name, bn in bn_layers(model).items():
            self.layers[name] = bn if isinstance(bn, DomainBatchNorm2d) else _convert(bn)
        self.load_bank(table)

    def load_bank(self, table: BNTable) -> None:
        """(Re)fill this switch's banks from a table, in ``self.domains`` order.

        The banks live in the switch, not in the layers, so several switches (say, tables
        of different sizes) can share one model; ``select`` lends them to the layers.
        """
        self.banks = {}
        for name, bn in self.layers.items():
            mean, var = table.stacked(name, self.domains)
            device = bn.running_mean.device
            self.banks[name] = (mean.to(device), var.to(device))

    def index(self, names: list[str]) -> torch.Tensor:
        """Domain names -> bank row indices (KeyError naming an unknown domain)."""
        lookup = {d: i for i, d in enumerate(self.domains)}
        missing = sorted({n for n in names if n not in lookup})
        if missing:
            raise KeyError(f"domains {missing} not in the bank {self.domains}")
        return torch.tensor([lookup[n] for n in names], dtype=torch.long)

    def select(self, index: torch.Tensor | None = None, weights: torch.Tensor | None = None) -> None:
        """Choose rows for the next forwards; ``select()`` with nothing restores plain BN."""
        for name, bn in self.layers.items():
            bn.bank_mean, bn.bank_var = self.banks[name]
            device = bn.bank_mean.device
            bn.select(None if index is None else index.to(device), None if weights is None else weights.to(device))

    @torch.no_grad()
    def forward(self, x: torch.Tensor, index: torch.Tensor | None = None, weights: torch.Tensor | None = None) -> torch.Tensor:
        """Logits of the model with per-sample statistics (rows ``index`` or mixture ``weights``)."""
        self.select(index, weights)
        try:
            return self.model(x)
        finally:
            self.select()
