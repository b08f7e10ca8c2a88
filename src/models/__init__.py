"""Architectures, built by name from the ``model`` config group. Each declares the structure the
reconstruction-based quantizers need (src/models/structure.py)."""
from __future__ import annotations

from collections.abc import Mapping

from torch import nn

from .resnet import CifarResNet18, SmallResNet, residual_blocks
from .structure import Block, Structure, structure_of
from .vgg import VGG11BN
from .wide_resnet import WideResNet

MODELS = ("resnet18", "smallcnn", "wrn28_2", "vgg11_bn")

__all__ = ["MODELS", "Block", "CifarResNet18", "SmallResNet", "Structure", "VGG11BN", "WideResNet", "build_model",
           "residual_blocks", "structure_of"]


def build_model(model, num_classes: int, in_channels: int, width: int | None = None) -> nn.Module:
    """``model``: the ``model`` config node (name plus its own keys) or a name. ``width`` is the base
    width (resnet18 64, smallcnn 16, vgg11_bn 64 by default); wrn28_2 takes ``depth`` and ``widen``."""
    opts = dict(model) if isinstance(model, Mapping) or hasattr(model, "items") else {"name": model}
    name = opts.get("name")
    width = width if width is not None else opts.get("width")
    if name == "resnet18":
        return CifarResNet18(num_classes, in_channels, int(width or 64))
    if name == "smallcnn":
        return SmallResNet(num_classes, in_channels, int(width or 16))
    if name == "wrn28_2":
        return WideResNet(num_classes, in_channels, int(opts.get("depth", 28)), int(opts.get("widen", 2)))
    if name == "vgg11_bn":
        return VGG11BN(num_classes, in_channels, int(width or 64))
    raise ValueError(f"model.name={name!r} is not known; allowed: {', '.join(MODELS)}")
