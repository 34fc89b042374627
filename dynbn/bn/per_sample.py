"""Per-sample BatchNorm: the one way the arms patch BN layers and the one copy of its arithmetic.

At inference BN is ``x * scale + shift`` per channel (``affine``). Arms of a benchmark share
one model object and never change its tensors: each replaces every BN layer's ``forward``
for the duration of its own call (``patched_bn``) and restores it afterwards, keeping its
state (EMA statistics, mixture components, banks) in itself. So arms can run one after
another, even interleaved batch by batch, on the same model, and ``state_dict`` keys,
hot-swap (``table.swap``) and training code see a plain model between calls.

With per-sample statistics (``apply_rows``) each sample is normalised with its own
(mean, var) only, so a frame's output never depends on its batch-mates. ``DomainSwitch``
holds a bank of statistics, one row per domain, and normalises sample b with row
``index[b]`` or a probability-weighted mixture of rows.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import contextmanager
from functools import partial
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..device import full_precision
from .table import BNTable, bn_layers

LayerForward = Callable[[torch.Tensor], torch.Tensor]


@contextmanager
def patched_bn(layers: dict[str, nn.BatchNorm2d], make: Callable[[str, nn.BatchNorm2d], LayerForward]):
    """Within the block, BN layer ``name`` (of ``layers``, from ``bn_layers``) runs ``make(name, layer)``.

    Methods look their layers up once (``bn_layers(model)``) and pass them here: at batch
    size 1 a walk over the model's modules per call is a visible share of the frame's time.
    """
    try:
        for name, bn in layers.items():
            # an instance attribute shadows the class's forward; set in the instance's dict directly, which is
            # what nn.Module.__setattr__ ends in for a function, at a tenth of its checks' cost (per layer, per call)
            bn.__dict__["forward"] = make(name, bn)
        yield
    finally:
        for bn in layers.values():
            bn.__dict__.pop("forward", None)


def source_stats(model: nn.Module) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """A copy of every BN layer's running (mean, var): the source statistics."""
    return {name: (bn.running_mean.detach().clone(), bn.running_var.detach().clone())
            for name, bn in bn_layers(model).items()}


def float32(x: torch.Tensor) -> torch.Tensor:
    """``x`` as float32 when it is bf16 or fp16 (activations under ``--precision``), else ``x`` itself: moments
    are differences of close numbers, which a 16-bit type would lose."""
    return x.float() if x.dtype in (torch.bfloat16, torch.float16) else x


def batch_moments(x: torch.Tensor, unbiased: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and variance of ``B x C x H x W`` activations over batch and pixels: (C,), (C,).

    E[x^2] - E[x]^2 from two plain reductions: on CPU ``torch.var_mean`` over dims (0, 2, 3)
    costs about half a ResNet-20 forward more than these, and BN inputs have std comparable
    to their mean, so the cancellation is harmless (clamped at 0 all the same).
    """
    x = float32(x)
    mean = x.mean(dim=(0, 2, 3))
    var = ((x * x).mean(dim=(0, 2, 3)) - mean * mean).clamp_min(0.0)
    if unbiased:
        n = x.numel() // x.shape[1]
        var = var * (n / max(n - 1, 1))
    return mean, var


def instance_moments(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample, per-channel mean and (biased) variance over pixels: ``B x C`` each (same recipe)."""
    x = float32(x)
    mean = x.mean(dim=(2, 3))
    return mean, ((x * x).mean(dim=(2, 3)) - mean * mean).clamp_min(0.0)


def mixture_moments(weights: torch.Tensor, mean: torch.Tensor, var: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and variance (B x C) of the mixture of rows ``mean``, ``var`` (D x C) weighted by ``weights`` (B x D).

    mean = sum_d w_d mean_d and var = sum_d w_d (var_d + mean_d^2) - mean^2: the moments of
    the mixture distribution, not the mixture of variances (which ignores how far apart the
    domains' means are). Clamped at 0 against cancellation.
    """
    w = weights.to(mean.device, mean.dtype)
    with full_precision(w):
        mixed = w @ mean
        second = w @ (var + mean**2)
    return mixed, (second - mixed**2).clamp_min(0.0)


class FlatBN(NamedTuple):
    """Several BN layers' weight, bias and eps side by side (sum C each), for ``affine`` of all at once."""

    weight: torch.Tensor
    bias: torch.Tensor
    eps: torch.Tensor


def flat_bn(layers: dict[str, nn.BatchNorm2d]) -> FlatBN:
    """``layers``' parameters side by side, in their order (weight 1 and bias 0 where a layer has none)."""
    def part(bn, value):
        if isinstance(value, torch.Tensor):
            return value.detach()
        return torch.full((bn.num_features,), value, device=bn.running_mean.device)
    bns = list(layers.values())
    return FlatBN(torch.cat([part(bn, 1.0 if bn.weight is None else bn.weight) for bn in bns]),
                  torch.cat([part(bn, 0.0 if bn.bias is None else bn.bias) for bn in bns]),
                  torch.cat([part(bn, float(bn.eps)) for bn in bns]))


def spans(layers: dict[str, nn.BatchNorm2d]) -> dict[str, tuple[int, int]]:
    """Each layer's slice of the side-by-side channels of ``flat_bn``."""
    ends = np.cumsum([0] + [bn.num_features for bn in layers.values()])
    return {name: (int(a), int(b)) for name, a, b in zip(layers, ends[:-1], ends[1:])}


def normalise(x: torch.Tensor, bn: nn.BatchNorm2d, mean: torch.Tensor, var: torch.Tensor) -> torch.Tensor:
    """BN with given (C,) statistics and the layer's own affine parameters (fused kernel)."""
    return F.batch_norm(x, mean, var, bn.weight, bn.bias, False, 0.0, bn.eps)


def affine(bn: nn.BatchNorm2d | FlatBN, mean: torch.Tensor, var: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Inference BN as ``x * scale + shift``: (scale, shift) for statistics of any leading shape (..., C).

    ``bn``: a BN layer, or a ``FlatBN`` of several layers' channels side by side.
    """
    scale = torch.rsqrt(var + bn.eps)
    if bn.weight is not None:
        scale = scale * bn.weight.detach()
    shift = -mean * scale
    if bn.bias is not None:
        shift = shift + bn.bias.detach()
    return scale, shift


def apply_rows(x: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """``x[b] * scale[b] + shift[b]`` per channel for ``B x C`` scale and shift, in one pass.

    ``addcmul`` is one kernel over the activations, as cheap as plain BN's; viewing the
    batch as one sample of B*C channels for ``F.batch_norm`` measured 30 % slower on CPU.
    """
    if scale.shape != x.shape[:2]:
        raise ValueError(f"per-sample statistics of shape {tuple(scale.shape)} for activations {tuple(x.shape)}")
    return torch.addcmul(shift[:, :, None, None], x, scale[:, :, None, None])  # B x C x H x W


def normalise_per_sample(x: torch.Tensor, bn: nn.BatchNorm2d, mean: torch.Tensor, var: torch.Tensor) -> torch.Tensor:
    """BN with per-sample statistics ``mean``, ``var`` (B x C) and the layer's affine parameters."""
    return apply_rows(x, *affine(bn, mean, var))


def row_forwards(layers: dict[str, nn.BatchNorm2d], scale: torch.Tensor, shift: torch.Tensor) -> dict[str, LayerForward]:
    """Every layer's per-sample BN from one ``B x (all channels)`` scale and shift (``flat_bn``'s order).

    Sample b of layer l is ``x[b] * scale[b, l's span] + shift[b, l's span]``, one ``addcmul`` per
    layer. The spans are cut by one ``split`` per tensor, not by slicing and reshaping per layer:
    at batch size 1 those views (six per layer) cost more than the layer's own arithmetic.
    """
    if scale.shape != shift.shape or scale.ndim != 2:
        raise ValueError(f"per-sample scale {tuple(scale.shape)} and shift {tuple(shift.shape)} must be B x C alike")
    sizes = [bn.num_features for bn in layers.values()]
    if scale.shape[1] != sum(sizes):
        raise ValueError(f"per-sample maps of {scale.shape[1]} channels for layers of {sum(sizes)} channels")
    scales = scale[:, :, None, None].split(sizes, dim=1)
    shifts = shift[:, :, None, None].split(sizes, dim=1)
    return {name: partial(_scale_shift, s, t) for name, s, t in zip(layers, scales, shifts)}


def _scale_shift(scale: torch.Tensor, shift: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``x * scale + shift`` for ``B x C x 1 x 1`` scale and shift (``apply_rows`` without its checks)."""
    return torch.addcmul(shift, x, scale)


def plain_bn_layers(model: nn.Module) -> dict[str, nn.BatchNorm2d]:
    """``bn_layers(model)``, insisting on plain ``nn.BatchNorm2d``: a subclass's own forward would be dropped."""
    layers = bn_layers(model)
    for name, bn in layers.items():
        if type(bn) is not nn.BatchNorm2d:
            raise TypeError(f"per-sample statistics support plain nn.BatchNorm2d, not {type(bn).__name__} "
                            f"(layer {name!r}): patching would replace its own forward")
    return layers


class DomainSwitch:
    """Per-sample BN statistics for a model: a bank of rows, one per domain, chosen per sample per forward."""

    def __init__(self, model: nn.Module, table: BNTable, domains: list[str] | None = None) -> None:
        table.check(model)
        self.model = model
        self.domains = list(domains or table.domains)
        self.layers = plain_bn_layers(model)
        self.load_bank(table)

    def load_bank(self, table: BNTable) -> None:
        """(Re)fill this switch's banks from a table, in ``self.domains`` order.

        The banks live in the switch, not in the layers, so several switches (say, tables
        of different sizes) can share one model.
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

    @torch.no_grad()
    def forward(self, x: torch.Tensor, index: torch.Tensor | None = None, weights: torch.Tensor | None = None) -> torch.Tensor:
        """Logits of the model with per-sample statistics: rows ``index`` (B,) or mixture ``weights`` (B x D).

        With neither, the model's own BN (running statistics, or batch statistics in training mode).
        """
        if index is None and weights is None:
            return self.model(x)
        if index is not None and weights is not None:
            raise ValueError("per-sample statistics take rows (index) or mixture weights, not both")
        rows = index if weights is None else weights
        if len(rows) != len(x):
            raise ValueError(f"{len(rows)} per-sample domains for a batch of {len(x)} frames")
        make = self._mixture(weights) if weights is not None else self._rows(index)
        with patched_bn(self.layers, make):
            return self.model(x)

    def _rows(self, index: torch.Tensor) -> Callable[[str, nn.BatchNorm2d], LayerForward]:
        """Layer forwards where sample b uses bank row ``index[b]``."""
        if len(index) and bool((index == index[0]).all()):
            row = int(index[0])  # whole batch in one domain: the fused kernel is faster, same as hot-swapping

            def one(name, bn):
                mean, var = self.banks[name]
                return lambda h: normalise(h, bn, mean[row], var[row])
            return one

        def each(name, bn):
            mean, var = self.banks[name]
            rows = index.to(mean.device)
            return lambda h: normalise_per_sample(h, bn, mean[rows], var[rows])
        return each

    def _mixture(self, weights: torch.Tensor) -> Callable[[str, nn.BatchNorm2d], LayerForward]:
        """Layer forwards where sample b uses the mixture of the bank's rows weighted by ``weights[b]``."""
        def make(name, bn):
            mean, var = mixture_moments(weights, *self.banks[name])
            return lambda h: normalise_per_sample(h, bn, mean, var)
        return make
