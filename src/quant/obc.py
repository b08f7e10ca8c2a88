"""OBC / OBQ: Optimal Brain Quantization (Frantar & Alistarh, "Optimal Brain Compression", NeurIPS 2022).

Layer-wise objective (paper Eq. 1): for a layer with weight W [d_row, d_col] and calibration inputs X
[d_col, N] (im2col columns for a convolution), find Ŵ on the grid minimising ‖WX − ŴX‖². The loss
is a sum of independent row problems, each a quadratic with Hessian H = 2XXᵀ (shared by all rows).

OBQ quantizes one row w greedily, one weight at a time, the OBS way (paper Eq. 7 / Algorithm 3):

    q   = argmin_q (quant(w_q) − w_q)² / [H⁻¹]_qq                      (the cheapest weight next)
    δ_F = −H⁻¹_{:,q} · (w_q − quant(w_q)) / [H⁻¹]_qq                   (optimal compensation of the rest)
    H⁻¹ ← H⁻¹ − H⁻¹_{:,q} H⁻¹_{q,:} / [H⁻¹]_qq                          (Eq. 3: Gaussian elimination of q)

``quant`` is round-to-nearest on the row's grid, fixed per output channel before the loop (grid.py).
The update makes w_q = quant(w_q) exactly and zeroes row/column q of H⁻¹, so q never moves again.
Outliers (paper Sec. 5, "heuristics"): a weight pushed by the updates further than half a grid step
from its nearest level (it left the representable range) is quantized next (``outlier: true``).

Implementation (same arithmetic, fewer memory passes; rows of W are independent):
- Rows are processed ``B`` at a time with per-row copies H⁻¹ [B, r, r] (one elimination order per row).
- Lazy blocks: within a block of ``block`` eliminations H⁻¹ is not touched; the current column is
  H⁻¹_blk[:, q] − Σ_j v_j v_j[q] with the normalised elimination vectors v_j = H⁻¹_{:,q_j}/√[H⁻¹]_{q_j q_j}
  (a small matrix-vector product), and the diagonal is downdated exactly (diag −= v_j²). At the end
  of a block the eliminated coordinates are dropped (every row lost exactly ``block`` of them) and
  H⁻¹ ← H⁻¹_RR − V_Rᵀ V_R is one batched GEMM. Cost ≈ (2/3)·d_col³ flops per row, GEMM-bound.
- Robustness: H accumulates in float64; dead inputs (H_ii = 0) get H_ii = 1 and weight 0 (they cannot
  influence the output); relative dampening H += λ·mean(diag H)·I (λ = ``damp``); Cholesky inversion
  retried with 10× more dampening if it fails; every pivot [H⁻¹]_qq is clamped from below by 1/H_qq,
  a true lower bound for the inverse of any principal sub-matrix of an SPD matrix, so float32 drift
  cannot produce a division by ~0 or a negative pivot.
"""
from __future__ import annotations

import copy
import logging
import math
import time
from contextlib import contextmanager, nullcontext

import torch
import torch.nn.functional as F
from torch import nn

from .activation import calibrate as calibrate_act
from .activation import quantizers as act_quantizers
from .activation import remove as without_act_quant
from .calibration import make_fabric
from .grid import ChannelGrid, init_grid, is_ternary

log = logging.getLogger(__name__)


class _StopForward(Exception):
    """Raised by the capture hook once the layer's input is recorded: the rest of the net is not needed."""


# ---------------------------------------------------------------------------------------------------
# Hessian H = 2 X Xᵀ of one layer
# ---------------------------------------------------------------------------------------------------

def layer_columns(layer: nn.Module, inp: torch.Tensor) -> torch.Tensor:
    """The layer's input as rows x ∈ R^{d_col} [N, d_col] such that output = W x (+ bias).

    Conv2d: im2col (``F.unfold`` with the conv's kernel/stride/padding/dilation), one row per output
    position, ordered as the flattened weight (C_in, kh, kw). Linear: the flattened input rows.
    """
    if isinstance(layer, nn.Conv2d):
        if layer.groups != 1:
            raise ValueError(f"OBC: grouped convolutions (groups={layer.groups}) are not supported")
        if isinstance(layer.padding, str) or layer.padding_mode != "zeros":
            raise ValueError(f"OBC: conv padding={layer.padding!r}/padding_mode={layer.padding_mode!r} "
                             "not supported (need explicit integer zero padding)")
        cols = F.unfold(inp, layer.kernel_size, dilation=layer.dilation, padding=layer.padding,
                        stride=layer.stride)                        # [n, d_col, L]
        return cols.transpose(1, 2).reshape(-1, cols.shape[1])
    if isinstance(layer, nn.Linear):
        return inp.reshape(-1, inp.shape[-1])
    raise TypeError(f"OBC: cannot quantize {type(layer).__name__}; only Conv2d and Linear")


@torch.no_grad()
def layer_hessian(model: nn.Module, layer: nn.Module, x: torch.Tensor, batch_size: int = 128,
                  fp_model: nn.Module | None = None, fp_layer: nn.Module | None = None):
    """H = 2 Σ_n x̂_n x̂_nᵀ [d_col, d_col] in float64 over the calibration set ``x`` (on its device).

    The model runs batch by batch only up to ``layer`` (a pre-hook records its input and stops the
    forward), so with a partly quantized model x̂ comes from the quantized prefix. With ``fp_model``
    (and its copy ``fp_layer`` of the layer) it also returns G = 2 Σ_n x̂_n x_nᵀ, x the FP input.
    """
    acc: dict[str, torch.Tensor] = {}
    grab: dict[str, torch.Tensor] = {}

    def add(key, g):
        g = g.double()                                              # float32 Gram per batch, float64 sum
        if key in acc:
            acc[key].add_(g)
        else:
            acc[key] = g

    def make_hook(key, lay):
        def hook(_m, inp):
            grab[key] = layer_columns(lay, inp[0].detach().float())
            raise _StopForward
        return hook

    hooks = [layer.register_forward_pre_hook(make_hook("q", layer))]
    if fp_model is not None:
        hooks.append(fp_layer.register_forward_pre_hook(make_hook("fp", fp_layer)))
    try:
        model.eval()
        for i in range(0, len(x), batch_size):
            for key, net in (("q", model), ("fp", fp_model)):
                if net is None:
                    continue
                try:
                    net(x[i:i + batch_size])
                except _StopForward:
                    pass
            if "q" not in grab:
                raise RuntimeError("OBC: the layer was never called during the forward pass")
            xq = grab.pop("q")
            add("H", xq.T @ xq)
            if fp_model is not None:
                add("G", xq.T @ grab.pop("fp"))
    finally:
        for h in hooks:
            h.remove()
    if fp_model is None:
        return 2.0 * acc["H"]
    return 2.0 * acc["H"], 2.0 * acc["G"]


def prepare_hessian(H: torch.Tensor, W: torch.Tensor, damp: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Dead-input handling + relative dampening + inverse. Returns (H_damped, H⁻¹ float64, W with dead
    columns zeroed). Cholesky is retried with 10× the dampening if H is numerically not SPD."""
    H = H.clone().double()
    W = W.clone()
    dead = torch.diagonal(H) <= 0
    if dead.any():
        H[dead, dead] = 1.0
        W[:, dead] = 0.0
    mean_diag = torch.diagonal(H).mean().item()
    eye = torch.eye(H.shape[0], dtype=H.dtype, device=H.device)
    lam = max(float(damp), 0.0)
    for attempt in range(8):
        Hd = H + lam * mean_diag * eye
        L, info = torch.linalg.cholesky_ex(Hd)
        if int(info) == 0:
            Hinv = torch.cholesky_inverse(L)
            if torch.isfinite(Hinv).all():
                return Hd, Hinv, W
        lam = max(lam * 10.0, 1e-6)
        log.warning("OBC: Hessian not positive definite; retrying with damp=%g", lam)
    raise RuntimeError("OBC: could not invert the dampened Hessian")


# ---------------------------------------------------------------------------------------------------
# The OBQ loop over a batch of rows
# ---------------------------------------------------------------------------------------------------

def _fake_quant(w: torch.Tensor, s: torch.Tensor, z: torch.Tensor, qmin: int, qmax: int):
    codes = torch.clamp(torch.round(w / s) + z, qmin, qmax)
    return codes, s * (codes - z)


@torch.no_grad()
def obq_rows(W: torch.Tensor, Hinv: torch.Tensor, floor: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor,
             qmin: int, qmax: int, block: int = 64, outlier: bool = True) -> torch.Tensor:
    """OBQ of a batch of rows (module docstring). W [B, d] float32, Hinv [d, d] (shared start),
    floor [d] = 1/diag(H_damped), scale/zero [B]. Returns integer codes [B, d] (as float)."""
    B, d = W.shape
    dev = W.device
    ar = torch.arange(B, device=dev)
    s, z = scale.view(B, 1).float(), zero.view(B, 1).float()
    w = W.float().clone()
    Hi = Hinv.float().expand(B, d, d).clone()                      # per-row copies, compact coordinates
    diag = torch.diagonal(Hi, dim1=1, dim2=2).clone()
    floor = floor.float().expand(B, d).clone()
    idx = torch.arange(d, device=dev).expand(B, d).clone()         # original column of each compact slot
    codes_out = torch.empty(B, d, device=dev)
    half = 0.5 * s * (1.0 + 1e-4)
    r = d
    while r > 0:
        m = min(block, r)
        V = torch.zeros(B, m, r, device=dev)
        done = torch.zeros(B, r, dtype=torch.bool, device=dev)
        for j in range(m):
            codes, wq = _fake_quant(w, s, z, qmin, qmax)
            err2 = (wq - w).pow(2)
            score = err2 / diag.clamp_min(floor)
            if outlier:                                             # worst outlier first, before any regular one
                score = torch.where(err2 > half * half, -score, score)
            score.masked_fill_(done, float("inf"))
            p = score.argmin(1)                                     # [B]
            col = Hi[ar, p]                                         # row p = column p (symmetric) [B, r]
            if j:
                col = col - torch.einsum("bjr,bj->br", V[:, :j], V[ar, :j, p])
            c = col[ar, p].clamp_min(floor[ar, p])                  # pivot [H⁻¹]_qq
            wp, wqp = w[ar, p], wq[ar, p]
            w.sub_(col * ((wp - wqp) / c).unsqueeze(1))             # δ_F = −H⁻¹_{:,q}(w_q − quant(w_q))/[H⁻¹]_qq
            w[ar, p] = wqp
            codes_out[ar, idx[ar, p]] = codes[ar, p]
            v = col * c.rsqrt().unsqueeze(1)
            V[:, j] = v
            diag.sub_(v * v)
            done[ar, p] = True
        r_new = r - m
        if r_new == 0:
            break
        keep = (~done).nonzero()[:, 1].view(B, r_new)               # row-major: each row's kept slots in order
        Vk = V.gather(2, keep.unsqueeze(1).expand(B, m, r_new))
        del V
        # rows, then columns: two gathers with broadcast (stride-0) indices allocate only their
        # results. One advanced index Hi[b, keep, keepᵀ] gives the same values, but CUDA materialises
        # its three broadcast indices as int64 [B, k, k] tensors (6x the float32 result)
        Hi = Hi.gather(1, keep.unsqueeze(2).expand(B, r_new, r))
        Hi = Hi.gather(2, keep.unsqueeze(1).expand(B, r_new, r_new))
        Hi.baddbmm_(Vk.transpose(1, 2), Vk, alpha=-1.0)             # H⁻¹ ← H⁻¹_RR − V_Rᵀ V_R (Eq. 3, m times)
        del Vk
        w, floor, idx = w.gather(1, keep), floor.gather(1, keep), idx.gather(1, keep)
        diag = torch.diagonal(Hi, dim1=1, dim2=2).clone()
        r = r_new
    return codes_out


# bytes per element of each per-row vector obq_rows keeps alive at once (float32 w, diag, floor,
# codes_out, codes, wq, err2, score, col, v, the einsum product; int64 idx; bool done; slack for the
# small temporaries of one elimination step, and headroom for how an op decomposes)
_ROW_VECTOR_BYTES = 96


def obq_rows_peak_bytes(B: int, d: int, block: int = 64) -> int:
    """Planned peak of the tensors obq_rows allocates for B rows of width d (its inputs not counted).

    float32 [B, ·, ·] buffers per compaction r -> k = r - m (m = min(block, r)): during the block, Hi
    [B, r, r] and V [B, m, r]; Vk [B, m, k] is gathered from V, V released; the row gather adds
    [B, k, r] beside Hi; the column gather adds Hi's next value [B, k, k] once Hi [B, r, r] is
    released. The first compaction is the largest; without one (d <= block) only Hi and V exist."""
    vec = _ROW_VECTOR_BYTES * B * d
    m = min(block, d)
    peak = d * d + m * d
    r = d
    while r > m:
        k = r - m
        peak = max(peak, r * r + m * r + m * k, r * r + m * k + k * r, k * r + m * k + k * k)
        r, m = k, min(block, k)
        peak = max(peak, r * r + m * r)
    peak = 4 * B * peak
    return peak + vec


def obq_layer_fixed_bytes(rows: int, d: int) -> int:
    """Bytes obq_layer holds outside the row batches: H, H_damped, H⁻¹ (float64) and the identity of
    the dampening [d, d] (one of them transient), H⁻¹ float32 [d, d]; W, W*, codes [rows, d]."""
    return 8 * 4 * d * d + 4 * d * d + 3 * 4 * rows * d


def free_device_bytes(device: torch.device) -> int:
    """Memory a new allocation can use: free on the device plus what PyTorch's caching allocator holds
    but does not use (mem_get_info counts cached blocks as used)."""
    free, _ = torch.cuda.mem_get_info(device)
    return int(free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device))


def auto_row_batch(d: int, rows: int, device: torch.device, row_batch, max_mem_gb, block: int = 64) -> int:
    """Rows per batch: ``row_batch`` (int) or, for 'auto', all rows whose planned peak
    (``obq_rows_peak_bytes`` + ``obq_layer_fixed_bytes``) fits a memory budget: ``max_mem_gb``, else
    CPU 2 GiB, CUDA 60% of the memory free for PyTorch (``free_device_bytes``)."""
    if max_mem_gb is not None:
        budget = float(max_mem_gb) * 2**30
    elif device.type == "cuda":
        budget = 0.6 * free_device_bytes(device)
    else:
        budget = 2.0 * 2**30
    per_row = obq_rows_peak_bytes(1, d, block)
    fit = max(1, int((budget - obq_layer_fixed_bytes(rows, d)) // per_row))
    if row_batch in (None, "auto"):
        return max(1, min(rows, fit, 64 if device.type == "cpu" else rows))
    return max(1, min(rows, int(row_batch), fit))


@torch.no_grad()
def obq_layer(W: torch.Tensor, H: torch.Tensor, grid: ChannelGrid, damp: float = 0.01, row_batch=64,
              block: int = 64, outlier: bool = True, max_mem_gb=None, on_batch=None,
              G: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """OBQ of one layer. W [d_row, d_col], H = 2X̂X̂ᵀ [d_col, d_col] (undampened).

    With G = 2X̂Xᵀ (X: full-precision inputs, X̂: inputs from the quantized prefix) the target is the
    FP output WX: ‖WX − ŴX̂‖² = ‖WX − W*X̂‖² + ‖(W* − Ŵ)X̂‖² for the least-squares W* = W·Gᵀ·H⁻¹
    (normal equations), so OBQ runs on W* (ridge-regularised by the dampening).
    Returns (codes [d_row, d_col], the weights OBQ approximated)."""
    rows, d = W.shape
    Hd, Hinv, W0 = prepare_hessian(H, W, damp)
    if G is not None:
        W0 = (W0.double() @ G.T.to(W0.device) @ Hinv).float()
    floor = 1.0 / torch.diagonal(Hd)
    Hinv32 = Hinv.float()
    B = auto_row_batch(d, rows, W.device, row_batch, max_mem_gb, block)
    codes = torch.empty(rows, d, device=W.device)
    scale, zero = grid.scale.to(W.device), grid.zero_point.to(W.device)
    for i in range(0, rows, B):
        sl = slice(i, min(i + B, rows))
        codes[sl] = obq_rows(W0[sl].float(), Hinv32, floor, scale[sl], zero[sl], grid.qmin, grid.qmax,
                             block, outlier)
        if on_batch is not None:
            on_batch(sl.stop - sl.start)
    return codes, W0


def reconstruction_error(W: torch.Tensor, W_hat: torch.Tensor, H: torch.Tensor) -> float:
    """‖WX − ŴX‖²_F = ½ tr(ΔW H ΔWᵀ) with the undampened H = 2XXᵀ."""
    dW = (W - W_hat).double()
    return float(0.5 * ((dW @ H) * dW).sum())


# ---------------------------------------------------------------------------------------------------
# The method entry point
# ---------------------------------------------------------------------------------------------------

@contextmanager
def _cpu_threads(device: torch.device, n):
    """Intra-op threads for the OBQ loop on CPU (many small ops: extra threads mostly spin, ~10×
    slower on a shared machine). ``n`` = None leaves torch's setting; restored on exit."""
    if device.type != "cpu" or n is None:
        yield
        return
    old = torch.get_num_threads()
    torch.set_num_threads(int(n))
    try:
        yield
    finally:
        torch.set_num_threads(old)


def _progress(enabled: bool):
    if not enabled:
        return nullcontext(None)
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    transient=False)


@torch.no_grad()
def quantize_obc(model: nn.Module, layer_bits: dict[str, float], cfg, calib_x: torch.Tensor | None = None,
                 device=None, augment=None) -> dict:
    """OBQ every layer of ``layer_bits`` in forward order, in place (see module docstring).

    cfg keys (conf/quant/obc.yaml): damp, row_batch, block, outlier, init, p, symmetric, sequential,
    fp_target, calib_batch, max_mem_gb, cpu_threads, progress. Returns {layer name: grid.export(codes)}.
    """
    damp, block = float(cfg.get("damp", 0.01)), int(cfg.get("block", 64))
    outlier, row_batch, max_mem_gb = bool(cfg.get("outlier", True)), cfg.get("row_batch", "auto"), cfg.get("max_mem_gb")

    def solve(W, H, grid, G, on_batch):
        return obq_layer(W, H, grid, damp, row_batch, block, outlier, max_mem_gb, on_batch=on_batch, G=G)

    return quantize_with_hessians(model, layer_bits, cfg, calib_x, device, solve, "OBC", augment)


@torch.no_grad()
def quantize_with_hessians(model: nn.Module, layer_bits: dict[str, float], cfg, calib_x: torch.Tensor | None,
                           device, solve, label: str, augment=None) -> dict:
    """The layer loop shared by the Hessian-based methods (OBC, GPTQ): per layer in forward order,
    the per-channel grid, H = 2X̂X̂ᵀ (and G = 2X̂Xᵀ with ``fp_target``), ``solve(W, H, grid, G, on_batch)
    → (codes, target weights)``, then the weights are replaced in place.

    With ``sequential`` the Hessian of layer l is built from the inputs of the already-quantized
    prefix; otherwise all Hessians come from the FP model first (the OBC paper). With ``augment``
    (``quant.calib_augment=crop_flip``) H accumulates over ``quant.calib_passes`` randomly cropped and
    flipped copies of the calibration set (the study's code: 10 passes).

    With input quantizers (``quant.act_bits``) the loop is always sequential: each layer's input
    quantizer gets its MSE step on the quantized prefix, and H = 2X̂X̂ᵀ is built from the quantized
    inputs (X̂ after the quantizer); G, with ``fp_target``, from the FP model without quantizers.
    """
    if calib_x is None or len(calib_x) == 0:
        raise ValueError(f"{label} needs calibration images (calib_x)")
    fabric = make_fabric(device)
    dev = fabric.device
    model = model.to(dev).eval()
    x = calib_x.float()
    if augment is not None:
        gen = torch.Generator().manual_seed(int(cfg.get("seed", 0)) + 7_919)
        x = torch.cat([augment(x, gen) for _ in range(max(1, int(cfg.get("calib_passes", 1))))])
    x = x.to(dev)
    modules = dict(model.named_modules())
    act_q = act_quantizers(model)
    # with input quantizers every Hessian comes from the inputs the quantized network feeds the layer
    sequential = bool(cfg.get("sequential", False)) or bool(act_q)
    bs = int(cfg.get("calib_batch", 128))
    symmetric, p = bool(cfg.get("symmetric", False)), float(cfg.get("p", 2.4))
    init = cfg.get("init", "lp")

    fp_target = sequential and bool(cfg.get("fp_target", True))
    fp_model = without_act_quant(copy.deepcopy(model)).eval() if fp_target else None
    fp_modules = dict(fp_model.named_modules()) if fp_target else {}
    hessians: dict[str, torch.Tensor] = {}
    if not sequential:
        for name in layer_bits:
            hessians[name] = layer_hessian(model, modules[name], x, bs)

    export = {}
    with _progress(bool(cfg.get("progress", True))) as prog:
        overall = prog.add_task(f"{label} layers", total=len(layer_bits)) if prog else None
        for name, bits in layer_bits.items():
            t0 = time.perf_counter()
            layer = modules[name]
            Wt = layer.weight.data
            W = Wt.reshape(Wt.shape[0], -1).float()
            method = init if not (init in ("absmean", "twn") and not is_ternary(bits)) else "lp"
            grid = init_grid(W, bits, symmetric, method, p, ternary=cfg.get("ternary", "symmetric")).to(dev)
            G = None
            if name in act_q:  # its MSE step on the quantized prefix; H then sees the quantized input
                calibrate_act(model, [name], x, dev, bs)
            if not sequential:
                H = hessians.pop(name)
            elif fp_target:
                H, G = layer_hessian(model, layer, x, bs, fp_model, fp_modules[name])
            else:
                H = layer_hessian(model, layer, x, bs)
            task = prog.add_task(f"  {name} ({bits:g} b)", total=W.shape[0]) if prog else None
            with _cpu_threads(dev, cfg.get("cpu_threads", 1)):
                codes, W_tgt = solve(W, H, grid, G, (lambda n, t=task: prog.advance(t, n)) if prog else None)
            W_hat = grid.dequantize(codes)
            err = reconstruction_error(W_tgt, W_hat, H)          # ‖(W − Ŵ)X̂‖² (W* − Ŵ with fp_target)
            ref = reconstruction_error(W_tgt, torch.zeros_like(W), H)
            Wt.copy_(W_hat.reshape(Wt.shape).to(Wt.dtype))
            export[name] = grid.export(codes.reshape(Wt.shape))
            msg = f"{name}: ‖WX−ŴX‖²={err:.4g} (rel {err / max(ref, 1e-30):.3g}), {time.perf_counter() - t0:.1f}s"
            log.info("%s %s", label, msg)
            if prog:
                prog.update(task, description=f"  {msg}")
                prog.advance(overall)
            if not math.isfinite(err):
                raise FloatingPointError(f"{label} produced a non-finite reconstruction error for {name}")
    model.cpu().eval()
    return export
