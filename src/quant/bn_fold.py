"""Fold BatchNorm into the preceding convolution (inference form), as PTQ reference pipelines do.

For y = γ·(conv(x) + b − μ)/√(σ² + ε) + β:  W' = W·γ/√(σ²+ε) per output channel,
b' = (b − μ)·γ/√(σ²+ε) + β. The BN module is replaced by ``nn.Identity`` *in place of the attribute*
so every forward (including torchvision's BasicBlock, which calls ``self.bn1``/``self.bn2`` by name)
keeps its structure; ReLU modules are never touched.
"""
from __future__ import annotations

import torch
from torch import nn


@torch.no_grad()
def fold_conv_bn(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> None:
    inv = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    conv.weight.mul_(inv.view(-1, 1, 1, 1))
    b = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
    new_b = (b - bn.running_mean) * inv + bn.bias
    conv.bias = nn.Parameter(new_b.clone())


def fold_batchnorm(model: nn.Module) -> nn.Module:
    """Fold every (conv, BN) pair in place: ``convK``/``bnK`` siblings and conv→BN in ``Sequential``s."""
    for parent in list(model.modules()):
        if isinstance(parent, nn.Sequential):
            children = list(parent._modules.items())
            for (_, a), (nb, b) in zip(children, children[1:]):
                if isinstance(a, nn.Conv2d) and isinstance(b, nn.BatchNorm2d):
                    fold_conv_bn(a, b)
                    parent._modules[nb] = nn.Identity()
        for name, child in list(parent._modules.items()):
            if isinstance(child, nn.BatchNorm2d) and name.startswith("bn"):
                conv = parent._modules.get("conv" + name[2:])
                if isinstance(conv, nn.Conv2d):
                    fold_conv_bn(conv, child)
                    parent._modules[name] = nn.Identity()
    return model
