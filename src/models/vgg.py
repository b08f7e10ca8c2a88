"""VGG-11 with BatchNorm (Simonyan & Zisserman 2015, configuration A), the plain CIFAR variant.

Eight conv3×3–BN–ReLU stages (64, M, 128, M, 256, 256, M, 512, 512, M, 512, 512, M; M = 2×2
max-pool) and one linear classifier on the pooled features; ``width`` scales every stage (64 =
standard). No residual blocks: BRECQ's reconstruction units are the conv–BN–ReLU stages, each
reconstructed against its output after the ReLU, and every conv feeds its ReLU directly (after BN
folding, which the ``Sequential`` conv→BN rule handles).
"""
from __future__ import annotations

import torch
from torch import nn

from .resnet import init_like_torchvision
from .structure import Block, Structure

VGG11 = (1, "M", 2, "M", 4, 4, "M", 8, 8, "M", 8, 8, "M")  # multiples of width/8


class VGG11BN(nn.Module):
    def __init__(self, num_classes: int = 10, in_channels: int = 3, width: int = 64):
        super().__init__()
        layers, c_in = [], in_channels
        for v in VGG11:
            if v == "M":
                layers.append(nn.MaxPool2d(2))
            else:
                c_out = width * v
                layers.append(nn.Sequential(nn.Conv2d(c_in, c_out, 3, 1, 1), nn.BatchNorm2d(c_out), nn.ReLU()))
                c_in = c_out
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)  # 1×1 already at 32×32; pools larger inputs
        self.fc = nn.Linear(c_in, num_classes)
        init_like_torchvision(self)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.avgpool(self.features(x)), 1))

    def ptq_structure(self) -> Structure:
        stages = [f"features.{i}" for i, m in enumerate(self.features) if isinstance(m, nn.Sequential)]
        blocks = [Block(n, self.get_submodule(n), n, n) for n in stages]
        blocks.append(Block("head", self.fc, "fc", "fc"))
        return Structure(blocks, {f"{n}.0" for n in stages})
