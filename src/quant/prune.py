"""Matched-utility control: magnitude pruning instead of quantization (Han et al. 2015).

The fraction ``quant.sparsity`` of the smallest-magnitude weights of the Conv2d/Linear layers is set
to zero, either in each layer separately (``quant.scope: layer``) or with one magnitude threshold
over all layers together (``scope: global``, which prunes over-parameterised layers harder).
Biases are kept. Like ``quant=noise``, a perturbation whose strength is swept to trace a
privacy–utility curve; no calibration data.
"""
from __future__ import annotations

import math

import torch
from torch import nn

SCOPES = ("layer", "global")


def _prune_smallest(weights: list[torch.Tensor], sparsity: float) -> None:
    """Zero the ⌊sparsity·n⌋ smallest |w| of ``weights`` taken together (ties broken by position)."""
    flat = torch.cat([w.abs().flatten() for w in weights])
    k = int(math.floor(sparsity * flat.numel()))
    if k == 0:
        return
    drop = torch.zeros(flat.numel(), dtype=torch.bool)
    drop[torch.argsort(flat, stable=True)[:k]] = True
    start = 0
    for w in weights:
        n = w.numel()
        w.masked_fill_(drop[start:start + n].view_as(w), 0.0)
        start += n


@torch.no_grad()
def prune_magnitude(model: nn.Module, layer_bits: dict[str, float], cfg, calib_x=None, device=None) -> dict:
    sparsity, scope = float(cfg.get("sparsity", 0.5)), cfg.get("scope", "layer")
    if scope not in SCOPES:
        raise ValueError(f"quant.scope={scope!r}: allowed: {', '.join(SCOPES)}")
    modules = dict(model.named_modules())
    weights = [modules[name].weight for name in layer_bits]
    if scope == "global":
        _prune_smallest(weights, sparsity)
    else:
        for w in weights:
            _prune_smallest([w], sparsity)
    return {}
