"""Calibration plumbing shared by the reconstruction methods (AdaRound, BRECQ, OBC).

The loops run through Lightning Fabric (``make_fabric``) so they use whatever device is available.
``capture`` records the input and output of one sub-module over the calibration set with a
forward hook, batched, so a method can reconstruct a layer or block from cached tensors.
"""
from __future__ import annotations

import torch
from lightning.fabric import Fabric
from torch import nn


def make_fabric(device: str | torch.device | None = None) -> Fabric:
    """A single-device Fabric: CUDA if available (or the device asked for), else CPU."""
    if device is None or str(device) == "auto":
        accelerator = "cuda" if torch.cuda.is_available() else "cpu"
    else:
        accelerator = "cuda" if str(device).startswith("cuda") else "cpu"
    fabric = Fabric(accelerator=accelerator, devices=1, precision="32-true")
    fabric.launch()
    return fabric


@torch.no_grad()
def capture(model: nn.Module, module: nn.Module, x: torch.Tensor, batch_size: int = 256,
            device: torch.device | str = "cpu", keep_output: bool = True) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Inputs (first positional arg) and outputs of ``module`` while ``model`` runs on ``x``.

    The whole model runs (simple and correct for any graph, including modules called twice:
    only the first call of ``module`` per batch is recorded). Returned on ``device``.
    """
    ins, outs = [], []

    seen = [False]

    def hook(_m, inp, out):
        if seen[0]:
            return
        seen[0] = True
        ins.append(inp[0].detach().to(device))
        if keep_output:
            outs.append(out.detach().to(device))

    h = module.register_forward_hook(hook)
    try:
        model.eval()
        for i in range(0, len(x), batch_size):
            seen[0] = False
            model(x[i:i + batch_size].to(device))
    finally:
        h.remove()
    return torch.cat(ins), (torch.cat(outs) if keep_output else None)
