"""Classifiers: CIFAR ResNet-20/32/44/56 (He et al. 2015, option-A shortcuts) and torchvision models.

Every model returned here takes float frames ``B x 3 x H x W`` in [0, 1]: input
normalisation lives inside the ``Normalized`` wrapper, never in the caller.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .data import CHECKPOINTS, DataError, data_dir

# the akamaster checkpoints were trained on ImageNet statistics, not CIFAR's (see models/README)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CIFAR_DEPTHS = {20: 3, 32: 5, 44: 7, 56: 9}  # depth -> basic blocks per stage


class BasicBlock(nn.Module):
    """conv-BN-ReLU-conv-BN plus a parameter-free shortcut (subsample + zero channels)."""

    def __init__(self, in_planes: int, planes: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.pad = planes // 4 if (stride != 1 or in_planes != planes) else 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        shortcut = x
        if self.pad:
            # option A: every second pixel, planes/4 zero channels on each side
            shortcut = F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, self.pad, self.pad))
        return F.relu(out + shortcut)


class CifarResNet(nn.Module):
    """ResNet-(6n+2) for 32x32 inputs: widths 16/32/64, global pooling, linear head."""

    def __init__(self, blocks: int, num_classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.layer1 = self._stage(16, 16, blocks, 1)
        self.layer2 = self._stage(16, 32, blocks, 2)
        self.layer3 = self._stage(32, 64, blocks, 2)
        self.linear = nn.Linear(64, num_classes)

    @staticmethod
    def _stage(in_planes: int, planes: int, blocks: int, stride: int) -> nn.Sequential:
        layers = [BasicBlock(in_planes, planes, stride)]
        layers += [BasicBlock(planes, planes, 1) for _ in range(blocks - 1)]
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer3(self.layer2(self.layer1(out)))
        out = out.mean(dim=(2, 3))  # B x 64
        return self.linear(out)


class Normalized(nn.Module):
    """Wrap a classifier so it takes [0, 1] RGB frames and normalises them itself."""

    def __init__(self, net: nn.Module, mean=IMAGENET_MEAN, std=IMAGENET_STD, input_size: int = 32) -> None:
        super().__init__()
        self.net = net
        self.input_size = input_size
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = ((x - self.mean) / self.std).contiguous(memory_format=torch.channels_last)
        return self.net(x)


def checkpoint_path(depth: int, root: str | os.PathLike | None = None) -> Path:
    """Where the akamaster checkpoint for ResNet-{depth} lives in the data directory."""
    if depth not in CIFAR_DEPTHS:
        raise ValueError(f"CIFAR ResNet depth must be one of {sorted(CIFAR_DEPTHS)}, got {depth}")
    name = next(n for n in CHECKPOINTS if n.startswith(f"resnet{depth}-"))
    return data_dir(root) / "models" / name


def load_cifar_resnet(depth: int = 20, root: str | os.PathLike | None = None) -> Normalized:
    """The pretrained CIFAR ResNet, in eval mode, taking [0, 1] frames."""
    path = checkpoint_path(depth, root)
    if not path.is_file():
        raise DataError(f"checkpoint not found: {path}. Set DYNBN_DATA or run `dynbn data fetch`.")
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated zip, wrong format, ...
        raise DataError(f"{path} is damaged or not a checkpoint ({exc}); re-download with `dynbn data fetch`.") from exc
    state = blob.get("state_dict", blob) if isinstance(blob, dict) else None
    if not isinstance(state, dict):
        raise DataError(f"{path}: expected a dict with 'state_dict', got {type(blob).__name__}")
    state = {k.removeprefix("module."): v for k, v in state.items()}
    net = CifarResNet(CIFAR_DEPTHS[depth])
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise DataError(f"{path} does not fit ResNet-{depth}: {exc}") from exc
    # channels-last convolutions run about 25 % faster on CPU (bench/model_speed.py)
    return Normalized(net.to(memory_format=torch.channels_last)).eval()


def torchvision_model(name: str, num_classes: int = 10, seed: int = 0, input_size: int = 32) -> Normalized:
    """A randomly initialised torchvision classifier (no download), wrapped to take [0, 1] frames."""
    import torchvision

    torch.manual_seed(seed)
    net = torchvision.models.get_model(name, weights=None, num_classes=num_classes)
    return Normalized(net, input_size=input_size).eval()


def build_model(spec: str, root: str | os.PathLike | None = None) -> Normalized:
    """Model from a short spec: ``resnet20`` .. ``resnet56`` (pretrained) or ``tv:resnet18`` (torchvision)."""
    if spec.startswith("tv:"):
        return torchvision_model(spec[3:])
    if spec.startswith("resnet") and spec[6:].isdigit():
        return load_cifar_resnet(int(spec[6:]), root)
    raise ValueError(f"unknown model {spec!r}: use resnet20/32/44/56 or tv:<torchvision name>, e.g. tv:resnet18")


def model_macs(model: nn.Module, input_size: int = 32) -> int:
    """Multiply-accumulates of one forward pass on one frame (conv and linear layers)."""
    macs = 0

    def hook(module: nn.Module, inputs, output) -> None:
        nonlocal macs
        if isinstance(module, nn.Conv2d):
            kernel = module.weight[0].numel()  # in/groups * kh * kw
            macs += output[0].numel() * kernel
        elif isinstance(module, nn.Linear):
            macs += module.in_features * module.out_features

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    with torch.no_grad():
        model(torch.zeros(1, 3, input_size, input_size))
    for h in handles:
        h.remove()
    return macs
