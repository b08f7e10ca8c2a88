"""ResNets of torchvision ``BasicBlock``s with a CIFAR stem: the paper's ResNet-18 and a small one."""
from __future__ import annotations

import torch
from torch import nn
from torchvision.models.resnet import BasicBlock

from .structure import Block, Structure


class _Stem(nn.Module):
    """conv1 → bn1 → relu of a ResNet, holding the model's own modules (bn1 is Identity once folded)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.conv1, self.bn1, self.relu = model.conv1, model.bn1, model.relu

    def forward(self, x):
        return self.relu(self.bn1(self.conv1(x)))


class _ResNetStructure:
    """Stem (exit: its ReLU), every BasicBlock (its own forward: conv1, relu, conv2, + shortcut, relu),
    head fc; ReLU follows the stem conv and each block's conv1 (conv2 feeds the residual addition)."""

    def ptq_structure(self) -> Structure:
        blocks = [Block("stem", _Stem(self), None, "relu")]
        blocks += [Block(n, b, n, n) for n, b in residual_blocks(self)]
        blocks.append(Block("head", self.fc, "fc", "fc"))
        return Structure(blocks, {"conv1"} | {f"{n}.conv1" for n, _ in residual_blocks(self)})


class SmallResNet(_ResNetStructure, nn.Module):
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


class CifarResNet18(_ResNetStructure, nn.Module):
    """ResNet-18 (He et al. 2016) with the CIFAR stem of the paper: 3×3 stride-1 conv1, no max-pool.

    Stages of 2 torchvision ``BasicBlock``s at widths w, 2w, 4w, 8w; ``width=64`` is the standard
    ResNet-18 (11.2M parameters on CIFAR-10). A smaller base width keeps every layer type and stride
    of the paper's network at a fraction of the cost (tests, CPU checks). Initialisation as torchvision's
    ResNet: Kaiming-normal (fan-out) convolutions, BatchNorm γ=1, β=0.
    """

    def __init__(self, num_classes: int = 10, in_channels: int = 3, width: int = 64):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, width, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        stages, c_in = [], width
        for i, stride in enumerate((1, 2, 2, 2)):
            c_out = width * 2 ** i
            down = None
            if stride != 1 or c_in != c_out:
                down = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))
            stages.append(nn.Sequential(BasicBlock(c_in, c_out, stride, down), BasicBlock(c_out, c_out)))
            c_in = c_out
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(c_in, num_classes)
        init_like_torchvision(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def init_like_torchvision(model: nn.Module) -> None:
    """torchvision's ResNet initialisation: Kaiming-normal (fan-out) convolutions, BatchNorm γ=1, β=0."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def residual_blocks(model: nn.Module) -> list[tuple[str, BasicBlock]]:
    """All BasicBlocks of a ResNet-style model, in forward order, with their qualified names."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, BasicBlock)]
