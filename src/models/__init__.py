"""Architectures, built by name from the `model` config group.

Both models share torchvision's ResNet naming (``conv1``, ``bn1``, ``relu``, ``layerK`` holding
``BasicBlock``s, ``avgpool``, ``fc``) so the block-wise quantizers (BRECQ) see one structure:
stem (conv1+bn1+relu), each residual ``BasicBlock``, head (fc).
"""
from __future__ import annotations

import torch
from torch import nn
from torchvision.models import resnet18 as tv_resnet18
from torchvision.models.resnet import BasicBlock

MODELS = ("resnet18", "smallcnn")


class SmallResNet(nn.Module):
    """A small ResNet (stem + 2 BasicBlocks + linear head) that trains in seconds on 8×8 digits.

    It reuses torchvision's ``BasicBlock`` on purpose: the block's single ReLU module runs twice
    (after bn1 and after the residual addition), the pitfall block reconstruction must respect.
    """

    def __init__(self, num_classes: int = 10, in_channels: int = 1, width: int = 16):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, width, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.layer1 = nn.Sequential(BasicBlock(width, width))
        down = nn.Sequential(nn.Conv2d(width, 2 * width, 1, 2, bias=False), nn.BatchNorm2d(2 * width))
        self.layer2 = nn.Sequential(BasicBlock(width, 2 * width, stride=2, downsample=down))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(2 * width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer2(self.layer1(x))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def cifar_resnet18(num_classes: int = 10, in_channels: int = 3) -> nn.Module:
    """torchvision ResNet-18 with the CIFAR stem of the paper: 3×3 stride-1 conv1, no max-pool."""
    model = tv_resnet18(weights=None, num_classes=num_classes)
    model.conv1 = nn.Conv2d(in_channels, 64, kernel_size=3, stride=1, padding=1, bias=False)
    model.maxpool = nn.Identity()
    return model


def build_model(name: str, num_classes: int, in_channels: int, width: int = 16) -> nn.Module:
    if name == "resnet18":
        return cifar_resnet18(num_classes, in_channels)
    if name == "smallcnn":
        return SmallResNet(num_classes, in_channels, width)
    raise ValueError(f"model.name={name!r} is not known; allowed: {', '.join(MODELS)}")


def residual_blocks(model: nn.Module) -> list[tuple[str, BasicBlock]]:
    """All BasicBlocks of a ResNet-style model, in forward order, with their qualified names."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, BasicBlock)]
