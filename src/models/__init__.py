"""Architectures, built by name from the ``model`` config group. Each declares the structure the
reconstruction-based quantizers need (src/models/structure.py)."""
from __future__ import annotations

from collections.abc import Callable, Mapping

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

__all__ = ["MODELS", "Block", "CifarResNet18", "SmallResNet", "Structure", "VGG11BN", "WideResNet", "build_model",
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
