"""GPTQ (Frantar, Ashkboos, Hoefler & Alistarh, "GPTQ: Accurate Post-Training Quantization for
Generative Pre-trained Transformers", ICLR 2023): OBQ made scalable.

Same layer objective as OBC (‖WX − ŴX‖², Hessian H = 2XXᵀ shared by every row; src/quant/obc.py
builds H, im2col for convolutions), three changes (paper Sec. 3, Algorithm 1):

1. **Fixed column order** for all rows (left to right, or by descending diag(H) with ``act_order``)
   instead of OBQ's greedy per-row order: every row shares one H⁻¹ sequence.
2. **Cholesky reformulation**: the rows of H⁻¹ that OBS needs, after eliminating columns 1..j−1, are
   the rows of the upper Cholesky factor U of H⁻¹ (H⁻¹ = UᵀU), scaled by U_jj. Quantizing column j:

       q_j = quant(w_j),   e = (w_j − q_j) / U_jj,   w_{j:} ← w_{j:} − e · U_{j, j:}

3. **Lazy batch updates**: within a block of ``block_size`` (128) columns only the block is updated;
   the accumulated errors E then update the remaining columns with one GEMM, W_{:, rest} −= E·U_{blk, rest}.

Relative dampening H += λ·mean(diag H)·I (λ = ``damp``, 0.01) and dead inputs are handled as in OBC.
The grid is the per-output-channel grid of the other methods, fixed before the loop.
"""
from __future__ import annotations

import torch
from torch import nn

from .grid import ChannelGrid
from .obc import _fake_quant, prepare_hessian, quantize_with_hessians


@torch.no_grad()
def gptq_layer(W: torch.Tensor, H: torch.Tensor, grid: ChannelGrid, damp: float = 0.01, block_size: int = 128,
               act_order: bool = False, G: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """GPTQ of one layer. W [d_row, d_col], H = 2X̂X̂ᵀ [d_col, d_col] (undampened).
    Returns (codes [d_row, d_col] in the original column order, the weights GPTQ approximated)."""
    rows, d = W.shape
    Hd, Hinv, W0 = prepare_hessian(H, W, damp)
    if G is not None:  # target the FP output WX from quantized-prefix inputs X̂ (see obc.obq_layer)
        W0 = (W0.double() @ G.T.to(W0.device) @ Hinv).float()
    perm = torch.argsort(torch.diagonal(Hd), descending=True) if act_order else torch.arange(d, device=W.device)
    Hp = Hd[perm][:, perm]
    U = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(Hp)), upper=True).float()
    Wp = W0[:, perm].float().clone()
    s, z = grid.scale.to(W.device).view(rows, 1).float(), grid.zero_point.to(W.device).view(rows, 1).float()
    codes = torch.empty(rows, d, device=W.device)
    for i1 in range(0, d, block_size):
        i2 = min(i1 + block_size, d)
        W1 = Wp[:, i1:i2].clone()
        E = torch.empty(rows, i2 - i1, device=W.device)
        U1 = U[i1:i2, i1:i2]
        for j in range(i2 - i1):
            c, q = _fake_quant(W1[:, j:j + 1], s, z, grid.qmin, grid.qmax)
            codes[:, i1 + j] = c[:, 0]
            e = (W1[:, j] - q[:, 0]) / U1[j, j]
            W1[:, j:] -= e.unsqueeze(1) * U1[j, j:].unsqueeze(0)
            E[:, j] = e
        Wp[:, i2:] -= E @ U[i1:i2, i2:]
    out = torch.empty_like(codes)
    out[:, perm] = codes
    return out, W0


@torch.no_grad()
def quantize_gptq(model: nn.Module, layer_bits: dict[str, float], cfg, calib_x: torch.Tensor | None = None,
                  device=None, augment=None) -> dict:
    """GPTQ every layer of ``layer_bits`` in forward order, in place. cfg keys (conf/quant/gptq.yaml):
    damp, block_size, act_order, init, p, symmetric, sequential, fp_target, calib_batch, progress."""
    damp, block_size, act_order = float(cfg.get("damp", 0.01)), int(cfg.get("block_size", 128)), bool(
        cfg.get("act_order", False))

    def solve(W, H, grid, G, on_batch):
        out = gptq_layer(W, H, grid, damp, block_size, act_order, G)
        if on_batch is not None:
            on_batch(W.shape[0])
        return out

    return quantize_with_hessians(model, layer_bits, cfg, calib_x, device, solve, "GPTQ", augment)
