"""Classifiers: CIFAR ResNet-20/32/44/56 (He et al. 2015, option-A shortcuts) and torchvision models.

Every model returned here takes float frames ``B x 3 x H x W`` in [0, 1]: input
normalisation lives inside the ``Normalized`` wrapper, never in the caller.
"""

from __future__ import annotations

import os
import pickle
import re
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file as load_safetensors
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

    def __init__(self, net: nn.Module, mean=IMAGENET_MEAN, std=IMAGENET_STD, input_size: int = 32,
                 spec: str | None = None) -> None:
        super().__init__()
        self.net = net
        self.input_size = input_size
        self.spec = spec  # the build_model spec it came from (None when built by hand); bundles check it
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
    model = architecture(f"resnet{depth}")
    try:
        model.net.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise DataError(f"{path} does not fit ResNet-{depth}: {exc}") from exc
    return model


def torchvision_model(name: str, num_classes: int = 10, seed: int = 0, input_size: int = 32) -> Normalized:
    """A randomly initialised torchvision classifier (no download), wrapped to take [0, 1] frames."""
    torch.manual_seed(seed)
    return architecture(f"tv:{name}", num_classes, input_size)


class WeightsError(ValueError):
    """A weights file is missing, damaged or does not fit the architecture; the message names the file and the fix."""


def parse_spec(spec: str) -> tuple[str, str | int]:
    """``"resnet20"`` -> ``("cifar", 20)``, ``"tv:resnet18"`` -> ``("tv", "resnet18")``; ValueError otherwise."""
    if spec.startswith("tv:") and len(spec) > 3:
        return "tv", spec[3:]
    if spec.startswith("resnet") and spec[6:].isdigit() and int(spec[6:]) in CIFAR_DEPTHS:
        return "cifar", int(spec[6:])
    raise ValueError(f"unknown model {spec!r}: use resnet20/32/44/56 or tv:<torchvision name>, e.g. tv:resnet18")


def architecture(spec: str, num_classes: int = 10, input_size: int = 32) -> Normalized:
    """The model a spec names, randomly initialised: reads no weights and needs no data directory."""
    kind, name = parse_spec(spec)
    if kind == "cifar":
        # channels-last convolutions run about 25 % faster on CPU (bench/model_speed.py)
        net = CifarResNet(CIFAR_DEPTHS[name], num_classes).to(memory_format=torch.channels_last)
    else:
        import torchvision

        try:
            net = torchvision.models.get_model(name, weights=None, num_classes=num_classes)
        except ValueError as exc:
            raise ValueError(f"unknown torchvision model {name!r} in {spec!r} ({exc}); "
                             "see torchvision.models.list_models()") from exc
    return Normalized(net, input_size=input_size, spec=spec).eval()


def read_weights(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """A state dict from ``.safetensors`` or a ``torch.save`` file (tensors only, never arbitrary objects).

    Accepts a plain state dict or ``{"state_dict": ...}``; strips ``module.`` (DataParallel) and a
    ``net.`` prefix on every key (a dynbn ``Normalized`` model's, as in a bundle's model.safetensors).
    """
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"weights file not found: {path}")
    try:
        if path.suffix == ".safetensors":
            blob = load_safetensors(str(path))
        else:
            blob = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        # weights_only refuses any class but tensors and containers: name the one it met (torch's own
        # message suggests weights_only=False, which would run the file's code)
        found = re.search(r"GLOBAL (\S+) was not an allowed global", str(exc))
        if found is None:
            raise WeightsError(f"{path.name} is damaged or not a weights file (not a torch.save archive); "
                               "save it again (torch.save(model.state_dict(), FILE) or safetensors)") from exc
        raise WeightsError(f"{path.name} holds objects other than tensors (a pickled {found.group(1)}), which are "
                           "never unpickled; save the state dict instead: torch.save(model.state_dict(), FILE) "
                           "or safetensors") from exc
    except Exception as exc:  # truncated zip, bad safetensors header ...
        raise WeightsError(f"{path.name} is damaged or not a weights file ({exc}); save it again "
                           "(torch.save(model.state_dict(), FILE) or safetensors)") from exc
    state = blob.get("state_dict", blob) if isinstance(blob, dict) else blob
    if not isinstance(state, dict) or not state:
        raise WeightsError(f"{path.name}: expected a state dict (name -> tensor), got {type(state).__name__}")
    odd = sorted(str(k) for k, v in state.items() if not isinstance(v, torch.Tensor))
    if odd:
        raise WeightsError(f"{path.name}: entries {odd[:5]} are not tensors; save model.state_dict() alone")
    state = {k.removeprefix("module."): v for k, v in state.items()}
    if all(k.startswith("net.") for k in state):
        state = {k[4:]: v for k, v in state.items()}
    return state


def classifier_key(net: nn.Module) -> str:
    """The state_dict key of the classifier's weight: the last Linear (or, failing that, Conv2d) layer."""
    heads = [n for n, m in net.named_modules() if isinstance(m, nn.Linear)]
    heads = heads or [n for n, m in net.named_modules() if isinstance(m, nn.Conv2d)]
    return f"{heads[-1]}.weight"


def _fit_problems(net: nn.Module, state: dict[str, torch.Tensor]) -> list[str]:
    """Missing, unexpected and wrongly shaped keys of ``state`` against ``net``'s state dict."""
    want = net.state_dict()
    problems = [f"missing {k}" for k in want if k not in state]
    problems += [f"unexpected {k}" for k in state if k not in want]
    problems += [f"{k} has shape {tuple(state[k].shape)}, the model needs {tuple(v.shape)}"
                 for k, v in want.items() if k in state and state[k].shape != v.shape]
    return problems


def load_weights(spec: str, path: str | os.PathLike, num_classes: int | None = None, input_size: int = 32) -> Normalized:
    """The architecture of ``spec`` holding a user's weights (strict); the class count is read from them."""
    state, name = read_weights(path), Path(path).name
    probe = architecture(spec, 10, input_size)
    key = classifier_key(probe.net)
    if key not in state:
        raise WeightsError(f"{name} has no classifier weight {key!r}: is it a {spec} state dict? "
                           f"Its first keys: {list(state)[:4]}")
    found = int(state[key].shape[0])
    if num_classes is not None and num_classes != found:
        raise WeightsError(f"{name} has {found} classes ({key} is {tuple(state[key].shape)}), {num_classes} were asked for")
    model = probe if found == 10 else architecture(spec, found, input_size)
    problems = _fit_problems(model.net, state)
    if problems:
        shown = "; ".join(problems[:6]) + (f"; ... {len(problems) - 6} more" if len(problems) > 6 else "")
        raise WeightsError(f"{name} does not fit {spec} ({len(problems)} problems: {shown}); "
                           "was it saved from another architecture? Pass the matching --model")
    model.net.load_state_dict(state, strict=True)
    return model.eval()


def build_model(spec: str, root: str | os.PathLike | None = None, weights: str | os.PathLike | None = None,
                num_classes: int | None = None, input_size: int | None = None) -> Normalized:
    """Model from a short spec: ``resnet20`` .. ``resnet56`` (pretrained) or ``tv:resnet18`` (torchvision).

    ``weights``: a user's state dict file (``read_weights``) instead of the shipped checkpoint
    (CIFAR ResNets) or the random initialisation (torchvision); ``num_classes`` is then read
    from it unless given. ``input_size``: the frame side the model will see (32 by default).
    """
    kind, name = parse_spec(spec)
    size = input_size or 32
    if weights is not None:
        return load_weights(spec, weights, num_classes, size)
    if kind == "tv":
        return torchvision_model(name, num_classes or 10, input_size=size)
    if num_classes not in (None, 10):
        raise ValueError(f"the shipped {spec} checkpoint has 10 classes, not {num_classes}: pass weights for another count")
    model = load_cifar_resnet(name, root)
    model.input_size, model.spec = size, spec
    return model


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
        model(torch.zeros(1, 3, input_size, input_size, device=next(model.parameters()).device))
    for h in handles:
        h.remove()
    return macs
