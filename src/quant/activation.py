"""Activation quantization (``quant.act_bits``): the input of every quantized layer is fake-quantized.

Each quantized Conv2d/Linear gets an :class:`ActQuantizer` as its submodule ``act_quant`` and a forward
pre-hook that passes the layer's input through it, so the layer computes with quantized inputs wherever
it is called (inside a block's own forward too) and the layer names stay those of the weights. Putting
the quantizer at the consumer's input is equivalent to quantizing every ReLU output that feeds a layer
(BRECQ's reference setting quantizes module outputs); a tensor read by two layers (a ResNet block's
input, read by ``conv1`` and the 1x1 ``downsample``) gets one quantizer per reader.

The grid is per tensor, zero point 0, step s:

    x̂ = s · clamp(round(x / s), q_min, q_max),

unsigned (q_min = 0, q_max = 2^b − 1) where the calibration inputs are non-negative (every input after a
ReLU), signed (−2^(b−1) … 2^(b−1) − 1) otherwise (the normalised image at the first layer). The
initial step is the MSE search of the PTQ papers: s = α · max|x| / q_max over α = 0.01, 0.02, …, 1,
keeping the α with the smallest ‖x − x̂‖² on the calibration inputs (:func:`mse_step`).

BRECQ learns s with the rounding, by the straight-through estimator of LSQ (Esser et al. 2020): the
gradient of x̂ w.r.t. s is round(x/s) − x/s inside the range and q_min or q_max outside; the other
methods keep the calibrated s. ``ActQuantizer.grad_scale`` multiplies that gradient by LSQ's
g = 1/√(N·q_max) (N: elements of the quantized tensor), as QDrop's reference setting does.

During a QDrop reconstruction (src/quant/qdrop.py) a quantizer's ``drop`` receives (x, x̂) and
returns, per element, x or x̂; it is set only for the reconstruction loop and None otherwise.
"""
from __future__ import annotations

import contextlib
import math
from typing import Callable, Iterable

import torch
from torch import nn

from .calibration import capture

ACT_BITS = (8, 6, 4, 3, 2)
INPUT_CHOICES = ("8", "fp", "act")   # quant.act_input: the network input at the first layer


def check_act_bits(value, key: str = "quant.act_bits") -> int | None:
    """``None`` (weights only) or one of :data:`ACT_BITS`; anything else raises one line."""
    if value is None:
        return None
    try:
        bits = float(value)
    except (TypeError, ValueError):
        bits = float("nan")
    if bits not in ACT_BITS:
        raise ValueError(f"{key}={value}: allowed: null (weights only), {', '.join(map(str, ACT_BITS))}")
    return int(bits)


def check_act_input(value, key: str = "quant.act_input") -> str:
    v = str(value)
    if v not in INPUT_CHOICES:
        raise ValueError(f"{key}={value}: allowed: 8 (the image at 8 bits), fp (not quantized), "
                         f"act (at quant.act_bits)")
    return v


def _round_ste(x: torch.Tensor) -> torch.Tensor:
    return (x.round() - x).detach() + x


def _levels(bits: int, signed: bool) -> tuple[int, int]:
    return (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2 ** bits - 1)


def fake_quant(x: torch.Tensor, step: torch.Tensor | float, qmin: int, qmax: int) -> torch.Tensor:
    return torch.clamp(_round_ste(x / step), qmin, qmax) * step


def scale_grad(t: torch.Tensor, g: float) -> torch.Tensor:
    """``t`` in the forward pass (exactly: t + (a − a)), its gradient multiplied by ``g`` (LSQ)."""
    a = t * g
    return t.detach() + (a - a.detach())


class ActQuantizer(nn.Module):
    """Per-tensor uniform fake quantizer of a layer input; ``step`` is a parameter (learned by BRECQ)."""

    def __init__(self, bits: int, signed: bool = False, step: float = 1.0):
        super().__init__()
        self.bits = int(bits)
        self.signed = bool(signed)
        self.step = nn.Parameter(torch.tensor(float(step)), requires_grad=False)
        self.enabled = True
        self.calibrated = False
        self.grad_scale = False   # LSQ's gradient scale 1/√(N·q_max) on the step (QDrop)
        self.drop: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None  # QDrop, while reconstructing

    @property
    def levels(self) -> tuple[int, int]:
        return _levels(self.bits, self.signed)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.enabled:
            return x
        qmin, qmax = self.levels
        step = self.step.abs().clamp_min(1e-12)
        if self.grad_scale and step.requires_grad:
            step = scale_grad(step, 1.0 / math.sqrt(x.numel() * qmax))
        xq = fake_quant(x, step, qmin, qmax)
        return xq if self.drop is None else self.drop(x, xq)

    def describe(self) -> dict:
        return {"bits": self.bits, "signed": self.signed, "step": float(self.step.detach().abs())}


def _quantize_input(module: nn.Module, args):
    aq = getattr(module, "act_quant", None)
    if aq is None:
        return None
    return (aq(args[0]),) + tuple(args[1:])


def attach(model: nn.Module, layers: Iterable[str], bits: int, input_bits: str = "8",
           first_layer: str | None = None) -> list[str]:
    """Give every layer in ``layers`` an input quantizer at ``bits``; ``first_layer`` (the one that reads
    the image) gets ``input_bits``: "8", "act" (= ``bits``) or "fp" (none). Returns the layers that got one."""
    out = []
    for name in layers:
        b = bits
        if name == first_layer:
            if input_bits == "fp":
                continue
            b = 8 if input_bits == "8" else bits
        layer = model.get_submodule(name)
        layer.act_quant = ActQuantizer(b)
        layer.register_forward_pre_hook(_quantize_input)
        out.append(name)
    return out


def restore(model: nn.Module, spec: dict | None) -> None:
    """Rebuild the quantizers recorded by :func:`describe` (a cached model's ``act``) before its state
    dict is loaded."""
    for name, entry in (spec or {}).items():
        layer = model.get_submodule(name)
        layer.act_quant = ActQuantizer(int(entry["bits"]), bool(entry["signed"]), float(entry["step"]))
        layer.act_quant.calibrated = True
        layer.register_forward_pre_hook(_quantize_input)


def quantizers(model: nn.Module, names: Iterable[str] | None = None) -> dict[str, ActQuantizer]:
    """The input quantizers of ``model`` (of the layers ``names`` only, if given), in model order."""
    wanted = None if names is None else set(names)
    return {n: m.act_quant for n, m in model.named_modules()
            if isinstance(getattr(m, "act_quant", None), ActQuantizer) and (wanted is None or n in wanted)}


def describe(model: nn.Module) -> dict:
    """``{layer: {bits, signed, step}}`` of every input quantizer (results.json, cache)."""
    return {n: q.describe() for n, q in quantizers(model).items()}


def remove(model: nn.Module) -> nn.Module:
    """Drop every input quantizer (the hooks then pass inputs through): the FP reference of a method."""
    for _, m in model.named_modules():
        if isinstance(getattr(m, "act_quant", None), ActQuantizer):
            del m.act_quant
    return model


@contextlib.contextmanager
def bypassed(qs: Iterable[ActQuantizer]):
    """Quantizers passed through for the duration (their layer sees the raw input)."""
    qs = list(qs)
    saved = [q.enabled for q in qs]
    for q in qs:
        q.enabled = False
    try:
        yield
    finally:
        for q, s in zip(qs, saved):
            q.enabled = s


@torch.no_grad()
def mse_step(x: torch.Tensor, bits: int, signed: bool, grid: int = 100, max_elements: int = 1 << 22) -> float:
    """The step s = α·max|x|/q_max, α ∈ {1/grid, …, 1}, with the smallest Σ(x − x̂)² (first on ties).

    Beyond ``max_elements`` values an evenly strided subset is searched (the error is a mean over values,
    so a strided subset of millions estimates it to far below the spacing of the candidates)."""
    flat = x.detach().float().reshape(-1)
    if flat.numel() > max_elements:
        flat = flat[:: -(-flat.numel() // max_elements)]
    qmin, qmax = _levels(bits, signed)
    top = float(flat.abs().max()) if signed else float(flat.clamp_min(0).max())
    if top <= 0:
        return 1.0
    best, best_err = top / qmax, float("inf")
    for i in range(1, grid + 1):
        s = (i / grid) * top / qmax
        err = float((fake_quant(flat, s, qmin, qmax) - flat).pow(2).sum())
        if err < best_err:
            best, best_err = s, err
    return best


@torch.no_grad()
def calibrate(model: nn.Module, names: Iterable[str], x: torch.Tensor, device, batch_size: int = 256) -> None:
    """Set the MSE step of each named layer's input quantizer, in forward order, from the inputs the
    model feeds that layer with every other quantizer as it is (earlier ones on: the quantized prefix).
    The sign of the grid follows the inputs: unsigned when none is negative."""
    qs = quantizers(model, names)
    for name, q in qs.items():
        with bypassed([q]):
            inp, _ = capture(model, model.get_submodule(name), x, batch_size, device, keep_output=False)
        q.signed = bool(inp.min() < 0)
        q.step.data.fill_(mse_step(inp, q.bits, q.signed))
        q.calibrated = True
