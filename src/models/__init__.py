"""Architectures, built by name from the ``model`` config group. Each declares the structure the
reconstruction-based quantizers need (src/models/structure.py)."""
from __future__ import annotations

from collections.abc import Callable, Mapping

import torch
from torch import nn

from .resnet import CifarResNet18, SmallResNet, residual_blocks
from .structure import Block, Structure, structure_of
from .vgg import VGG11BN
from .wide_resnet import WideResNet

# name → builder(options, num_classes, in_channels); options = the ``model`` config node's keys
MODELS: dict[str, Callable[[dict, int, int], nn.Module]] = {
    "resnet18": lambda o, c, i: CifarResNet18(c, i, int(o.get("width") or 64)),
    "smallcnn": lambda o, c, i: SmallResNet(c, i, int(o.get("width") or 16)),
    "wrn28_2": lambda o, c, i: WideResNet(c, i, int(o.get("depth", 28)), int(o.get("widen", 2))),
    "vgg11_bn": lambda o, c, i: VGG11BN(c, i, int(o.get("width") or 64)),
}

__all__ = ["MODELS", "Block", "min_image_size",
           "CifarResNet18", "SmallResNet", "Structure", "VGG11BN", "WideResNet", "build_model",
           "residual_blocks", "structure_of"]


def build_model(model, num_classes: int, in_channels: int, width: int | None = None) -> nn.Module:
    """``model``: the ``model`` config node (name plus its own keys) or a name; ``width`` overrides the
    node's base width (resnet18 64, smallcnn 16, vgg11_bn 64 by default)."""
    opts = dict(model) if isinstance(model, Mapping) or hasattr(model, "items") else {"name": model}
    if width is not None:
        opts["width"] = width
    name = opts.get("name")
    if name not in MODELS:
        raise ValueError(f"model.name={name!r} is not known; allowed: {', '.join(MODELS)}")
    return MODELS[name](opts, num_classes, in_channels)


def _forward_ok(model: nn.Module, in_channels: int, size: int) -> bool:
    try:
        model(torch.empty(1, in_channels, size, size, device="meta"))
        return True
    except (RuntimeError, ValueError):  # a pooling or conv left with an empty feature map
        return False


def min_image_size(model, in_channels: int = 3, limit: int = 1024) -> int | None:
    """Smallest square input side the architecture accepts, found by forwarding one image on the meta
    device (shapes only, no memory or compute): every stride and pooling of the real model counts,
    whatever its depth or options. None if even ``limit`` px fails."""
    with torch.device("meta"):
        net = build_model(model, 10, in_channels).eval()
    lo, hi = 1, 1
    while not _forward_ok(net, in_channels, hi):  # doubling, then bisection: sizes are monotone
        if hi >= limit:
            return None
        lo, hi = hi + 1, min(2 * hi, limit)
    while lo < hi:
        mid = (lo + hi) // 2
        if _forward_ok(net, in_channels, mid):
            hi = mid
        else:
            lo = mid + 1
    return hi
