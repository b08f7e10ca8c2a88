"""Matched-utility control: Gaussian noise on the weights instead of quantization.

Is a leakage reduction specific to quantization, or would any perturbation that costs the same
accuracy do the same? Each output channel c of every Conv2d/Linear weight gets

    W_c ← W_c + σ · std(W_c) · ε,   ε ~ N(0, I),

with σ = ``quant.sigma`` relative to that channel's own weight spread (quantization error also
scales with the channel's range). Sweeping σ traces a privacy–utility curve to compare the
quantizers against at equal test accuracy. Seeded (``quant.seed``); no calibration data.
"""
from __future__ import annotations

import torch
from torch import nn


@torch.no_grad()
def perturb_noise(model: nn.Module, layer_bits: dict[str, float], cfg, calib_x=None, device=None) -> dict:
    sigma = float(cfg.get("sigma", 0.1))
    g = torch.Generator().manual_seed(int(cfg.get("seed", 0)))
    modules = dict(model.named_modules())
    for name in layer_bits:  # every quantizable layer, in forward order (the generator's draws follow it)
        w = modules[name].weight
        std = w.flatten(1).std(dim=1, unbiased=False).view(-1, *([1] * (w.dim() - 1)))
        w.add_(sigma * std * torch.randn(w.shape, generator=g, dtype=w.dtype))
    return {}  # float weights: no integer export
