"""Round-to-nearest: every weight to its nearest level of the per-channel grid. The floor every PTQ
method must beat (docs/quantizers.md)."""
from __future__ import annotations

import torch
from torch import nn

from .grid import init_grid, is_ternary, twn_codes


@torch.no_grad()
def quantize_rtn(model: nn.Module, layer_bits: dict[str, float], cfg, calib_x=None, device=None) -> dict:
    modules = dict(model.named_modules())
    export = {}
    for name, bits in layer_bits.items():
        layer = modules[name]
        method = cfg.get("init", "lp")
        if method in ("absmean", "twn") and not is_ternary(bits):
            method = "lp"  # ternary-only baselines; other layers of the policy (e.g. 8-bit ends) use L_p
        grid = init_grid(layer.weight, bits, bool(cfg.get("symmetric", False)), method, float(cfg.get("p", 2.4)),
                         ternary=cfg.get("ternary", "symmetric"))
        q = twn_codes(layer.weight, grid) if method == "twn" else grid.codes(layer.weight)
        layer.weight.copy_(grid.dequantize(q))
        export[name] = grid.export(q)
    return export
