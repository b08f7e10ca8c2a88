"""Re-estimating BatchNorm statistics after quantization (the study's code, after OBC).

Quantizing the convolutions shifts the distribution of their outputs, so the running mean and
variance the FP model learnt no longer match. With BatchNorm left unfolded (``quant.fold_bn=false``)
they can be re-estimated: reset, then ``batches`` forward passes in train mode (no gradients, no
weight change) over batches of ``batch_size`` drawn from a set of training images, with the
cumulative average (momentum None) so every batch counts equally. The study draws its images from the
whole training set, members and non-members alike (``quant.bn_tune=train``): that lets the deployed
model see non-members, which is a change of protocol for a membership experiment; ``members``
re-estimates on the target's own members only, the clean variant.
"""
from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

SOURCES = ("none", "members", "train")


@torch.no_grad()
def retune_batchnorm(model: nn.Module, images: torch.Tensor, batches: int = 100, batch_size: int = 128,
                     generator: torch.Generator | None = None, augment: Callable | None = None,
                     device: str = "cpu") -> torch.Tensor:
    """Re-estimate every BatchNorm's running statistics on normalised ``images``; returns the indices
    (into ``images``) of every example it used, in order."""
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not bns:
        raise ValueError("quant.bn_tune: the model has no BatchNorm left to re-estimate; "
                         "needs quant.fold_bn=false")
    momenta = [bn.momentum for bn in bns]
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None  # cumulative average over all batches
    model.to(device).train()
    used = []
    try:
        for _ in range(int(batches)):
            idx = torch.randint(0, len(images), (min(int(batch_size), len(images)),), generator=generator)
            x = images[idx]
            model((augment(x, generator) if augment is not None else x).to(device))
            used.append(idx)
    finally:
        for bn, m in zip(bns, momenta):
            bn.momentum = m
        model.cpu().eval()
    return torch.cat(used)
