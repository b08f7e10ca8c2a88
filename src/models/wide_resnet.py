"""Wide ResNet (Zagoruyko & Komodakis 2016), the network LiRA's reference code trains on CIFAR-10.

WRN-d-k: a 3×3 stem conv to 16 channels, three groups of n = (d − 4)/6 pre-activation blocks at
16k, 32k, 64k channels (stride 1, 2, 2), then BN → ReLU → global average pool → fc. A pre-activation
block computes

    a = ReLU(BN_in(x)),   y = conv2(ReLU(BN(conv1(a)))),   out = y + (shortcut(a) if shapes change else x)

with a 1×1 shortcut conv on the activated input where channels or stride change. Naming: the BN
after conv1 is ``bn1`` so that BatchNorm folding (src/quant/bn_fold.py, ``convK``/``bnK`` siblings)
folds exactly that pair; ``bn_in`` and ``bn_out`` precede a ReLU whose output also feeds the
shortcut, so they cannot be folded into a single conv and stay (per-channel affine in eval mode).
"""
from __future__ import annotations

import torch
from torch import nn

from .resnet import init_like_torchvision
from .structure import Block, Structure


class PreActBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int):
        super().__init__()
        self.bn_in = nn.BatchNorm2d(c_in)
        self.relu_in = nn.ReLU()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.shortcut = nn.Conv2d(c_in, c_out, 1, stride, bias=False) if stride != 1 or c_in != c_out else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.relu_in(self.bn_in(x))
        y = self.conv2(self.relu1(self.bn1(self.conv1(a))))
        return y + (self.shortcut(a) if self.shortcut is not None else x)


class WideResNet(nn.Module):
    def __init__(self, num_classes: int = 10, in_channels: int = 3, depth: int = 28, widen: int = 2):
        super().__init__()
        if depth < 10 or (depth - 4) % 6:
            raise ValueError(f"model.depth={depth}: a Wide ResNet has depth 6n + 4 with n ≥ 1 (10, 16, 22, 28, ...)")
        n = (depth - 4) // 6
        widths = [16 * widen, 32 * widen, 64 * widen]
        self.conv1 = nn.Conv2d(in_channels, 16, 3, 1, 1, bias=False)
        c_in, groups = 16, []
        for g, (w, stride) in enumerate(zip(widths, (1, 2, 2))):
            groups.append(nn.Sequential(*[PreActBlock(c_in if i == 0 else w, w, stride if i == 0 else 1)
                                          for i in range(n)]))
            c_in = w
        self.group1, self.group2, self.group3 = groups
        self.bn_out = nn.BatchNorm2d(c_in)
        self.relu = nn.ReLU()
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(c_in, num_classes)
        init_like_torchvision(self)
        nn.init.zeros_(self.fc.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.group3(self.group2(self.group1(self.conv1(x))))
        return self.fc(torch.flatten(self.avgpool(self.relu(self.bn_out(x))), 1))

    def ptq_structure(self) -> Structure:
        """Stem conv, each pre-activation block (its own forward, incl. the input BN-ReLU and the
        shortcut), head fc. Only each block's conv1 feeds a ReLU directly (through its folded bn1);
        conv2 and the shortcut feed the addition, the stem conv feeds an unfolded BN."""
        blocks = [Block("stem", self.conv1, None, "conv1")]
        names = [n for n, m in self.named_modules() if isinstance(m, PreActBlock)]
        blocks += [Block(n, self.get_submodule(n), n, n) for n in names]
        blocks.append(Block("head", self.fc, "fc", "fc"))
        return Structure(blocks, {f"{n}.conv1" for n in names})
