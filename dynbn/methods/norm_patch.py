"""Helpers for the statistics-based arms: swap each BN layer's forward for one call only.

Arms of a benchmark share one model object. The arms here never change its tensors: they
replace every BatchNorm layer's ``forward`` for the duration of their own call and restore
it afterwards, keeping their state (EMA statistics, mixture components) in the method. So
arms can run one after another, even interleaved batch by batch, on the same model.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn

from ..bn_table import bn_layers

LayerForward = Callable[[torch.Tensor], torch.Tensor]


@contextmanager
def patched_bn(model: nn.Module, make: Callable[[str, nn.BatchNorm2d], LayerForward]):
    """Within the block, BN layer ``name`` runs ``make(name, layer)`` instead of its own forward."""
    layers = bn_layers(model)
    try:
        for name, bn in layers.items():
            bn.forward = make(name, bn)  # an instance attribute shadows the class's forward
        yield
    finally:
        for bn in layers.values():
            bn.__dict__.pop("forward", None)


def source_stats(model: nn.Module) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """A copy of every BN layer's running (mean, var): the source statistics."""
    return {name: (bn.running_mean.detach().clone(), bn.running_var.detach().clone())
            for name, bn in bn_layers(model).items()}


def batch_moments(x: torch.Tensor, unbiased: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and variance of ``B x C x H x W`` activations over batch and pixels: (C,), (C,).

    E[x^2] - E[x]^2 from two plain reductions: on CPU ``torch.var_mean`` over dims (0, 2, 3)
    costs about half a ResNet-20 forward more than these, and BN inputs have std comparable
    to their mean, so the cancellation is harmless (clamped at 0 all the same).
    """
    mean = x.mean(dim=(0, 2, 3))
    var = ((x * x).mean(dim=(0, 2, 3)) - mean * mean).clamp_min(0.0)
    if unbiased:
        n = x.numel() // x.shape[1]
        var = var * (n / max(n - 1, 1))
    return mean, var


def instance_moments(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample, per-channel mean and (biased) variance over pixels: ``B x C`` each (same recipe)."""
    mean = x.mean(dim=(2, 3))
    return mean, ((x * x).mean(dim=(2, 3)) - mean * mean).clamp_min(0.0)


def normalise(x: torch.Tensor, bn: nn.BatchNorm2d, mean: torch.Tensor, var: torch.Tensor) -> torch.Tensor:
    """BN with given (C,) statistics and the layer's own affine parameters (fused kernel)."""
    return F.batch_norm(x, mean, var, bn.weight, bn.bias, False, 0.0, bn.eps)


def normalise_per_sample(x: torch.Tensor, bn: nn.BatchNorm2d, mean: torch.Tensor, var: torch.Tensor) -> torch.Tensor:
    """BN with per-sample statistics ``mean``, ``var`` (B x C) and the layer's affine parameters.

    The batch is viewed as one sample of B*C channels, each with its own statistics, so the
    fused eval-mode kernel of plain BN does the work (no extra passes over the activations).
    """
    n, c, height, width = x.shape
    if mean.shape != (n, c):
        raise ValueError(f"per-sample statistics of shape {tuple(mean.shape)} for activations {tuple(x.shape)}")
    weight = None if bn.weight is None else bn.weight.repeat(n)
    bias = None if bn.bias is None else bn.bias.repeat(n)
    flat = x.reshape(1, n * c, height, width)  # 1 x B*C x H x W
    return F.batch_norm(flat, mean.reshape(-1), var.reshape(-1), weight, bias, False, 0.0, bn.eps).view(n, c, height, width)


def rows_forward(bn: nn.BatchNorm2d, means: torch.Tensor, variances: torch.Tensor, index: torch.Tensor) -> LayerForward:
    """BN where sample b uses row ``index[b]`` of per-domain statistics ``means``, ``variances`` (D x C).

    A batch in one domain uses that row with the plain kernel; a mixed batch goes through
    ``normalise_per_sample``. Either way no sample's output depends on another's.
    """
    if bool((index == index[0]).all()):
        mean, var = means[int(index[0])], variances[int(index[0])]
        return lambda h: F.batch_norm(h, mean, var, bn.weight, bn.bias, False, 0.0, bn.eps)
    mean, var = means[index], variances[index]  # B x C
    return lambda h: normalise_per_sample(h, bn, mean, var)
