"""Per-output-channel uniform weight grids (docs/quantizers.md, "Common steps").

A grid maps a weight w of output channel c to an integer code q ∈ [qmin, qmax] and back:
    q = clamp(round(w / s_c) + z_c, qmin, qmax),   ŵ = s_c · (q − z_c).
b ∈ {1..8} bits give 2^b levels: asymmetric (default, qmin = 0, qmax = 2^b − 1, z_c chosen so that
the channel's clipped range [lo, hi] ∋ 0 fits) or symmetric (qmin = −2^(b−1), qmax = 2^(b−1) − 1, z = 0).
1.58 bits is ternary: three levels {−δ, 0, +δ} (qmin = −1, qmax = 1, z = 0) whatever ``symmetric`` says;
``ternary="affine"`` (the study's code) is instead the asymmetric grid with three codes {0, 1, 2}:
s = (hi − lo)/2, z = round(−lo/s) = round(−2·lo/(hi − lo)), which is one-sided ({0, δ, 2δ} or
{−2δ, −δ, 0}) when the channel's range lies mostly on one side of 0.

The clipping range is initialised by a search for the minimum ‖W − Q(W)‖_p per channel over shrunk
ranges α·[lo, hi] (p = 2.4 by default, as in the BRECQ/AdaRound reference setting); ``minmax`` skips
the search. For ternary RTN, ``absmean`` (BitNet b1.58: δ = mean|w|) and ``twn`` (threshold
0.7·mean|w|, δ = mean of the surviving |w|) are offered as baselines.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

TERNARY = 1.58
VALID_BITS = (1, 2, 3, 4, 5, 6, 7, 8, TERNARY)
INIT_METHODS = ("lp", "minmax", "absmean", "twn")
TERNARY_GRIDS = ("symmetric", "affine")


def check_bits(bits: float, key: str = "bits") -> float:
    """Validate a bit-width: an integer 1..8, or 1.58 (ternary). Returns it as a float."""
    try:
        b = float(bits)
    except (TypeError, ValueError):
        b = float("nan")
    if not any(abs(b - v) < 1e-9 for v in VALID_BITS):
        raise ValueError(f"{key}={bits}: not a valid bit-width; allowed: 1, 2, 3, 4, 5, 6, 7, 8 or 1.58 (ternary)")
    return TERNARY if abs(b - TERNARY) < 1e-9 else float(int(b))


def is_ternary(bits: float) -> bool:
    return abs(float(bits) - TERNARY) < 1e-9


def n_levels(bits: float) -> int:
    return 3 if is_ternary(bits) else 2 ** int(bits)


@dataclass
class ChannelGrid:
    """Grid of one weight tensor: scale/zero_point have one entry per output channel."""

    scale: torch.Tensor       # [C_out] float, > 0
    zero_point: torch.Tensor  # [C_out] float holding integers
    qmin: int
    qmax: int
    bits: float

    def _shape(self, w: torch.Tensor):
        return (-1,) + (1,) * (w.dim() - 1)

    def codes(self, w: torch.Tensor) -> torch.Tensor:
        """Round-to-nearest integer codes (as float) of ``w`` on this grid."""
        s, z = self.scale.view(self._shape(w)), self.zero_point.view(self._shape(w))
        return torch.clamp(torch.round(w / s) + z, self.qmin, self.qmax)

    def dequantize(self, q: torch.Tensor) -> torch.Tensor:
        s, z = self.scale.view(self._shape(q)), self.zero_point.view(self._shape(q))
        return s * (q - z)

    def fake_quant(self, w: torch.Tensor) -> torch.Tensor:
        return self.dequantize(self.codes(w))

    def to(self, device) -> "ChannelGrid":
        return ChannelGrid(self.scale.to(device), self.zero_point.to(device), self.qmin, self.qmax, self.bits)

    def export(self, q: torch.Tensor) -> dict:
        """Integer codes + scales + zero points: enough to rebuild the weight independently."""
        dtype = torch.int8 if self.qmin >= -128 and self.qmax <= 127 else torch.int16
        return {"codes": q.round().to(dtype).cpu(), "scale": self.scale.detach().float().cpu(),
                "zero_point": self.zero_point.detach().round().to(torch.int16).cpu(),
                "qmin": self.qmin, "qmax": self.qmax, "bits": self.bits}


def _range_grid(lo: torch.Tensor, hi: torch.Tensor, bits: float, symmetric: bool,
                ternary: str = "symmetric") -> ChannelGrid:
    """Grid whose representable range covers [lo, hi] (lo ≤ 0 ≤ hi) per channel."""
    eps = 1e-8
    if is_ternary(bits) and ternary == "affine":
        scale = ((hi - lo) / 2).clamp_min(eps)
        return ChannelGrid(scale, torch.clamp(torch.round(-lo / scale), 0, 2), 0, 2, bits)
    if is_ternary(bits):
        delta = torch.maximum(hi.abs(), lo.abs()).clamp_min(eps)
        return ChannelGrid(delta, torch.zeros_like(delta), -1, 1, bits)
    b = int(bits)
    if symmetric:
        qmin, qmax = -(2 ** (b - 1)), 2 ** (b - 1) - 1  # b = 1: levels {−s, 0}
        amax = torch.maximum(hi.abs(), lo.abs()).clamp_min(eps)
        scale = amax / max(qmax, 1)
        return ChannelGrid(scale, torch.zeros_like(scale), qmin, qmax, bits)
    qmin, qmax = 0, 2 ** b - 1
    scale = ((hi - lo) / (qmax - qmin)).clamp_min(eps)
    zp = torch.clamp(torch.round(-lo / scale), qmin, qmax)
    return ChannelGrid(scale, zp, qmin, qmax, bits)


def init_grid(w: torch.Tensor, bits: float, symmetric: bool = False, method: str = "lp", p: float = 2.4,
              n_candidates: int = 80, ternary: str = "symmetric") -> ChannelGrid:
    """Choose the per-channel grid of weight ``w`` [C_out, ...] (see module docstring)."""
    if method not in INIT_METHODS:
        raise ValueError(f"quant.init={method!r}: allowed: {', '.join(INIT_METHODS)}")
    if ternary not in TERNARY_GRIDS:
        raise ValueError(f"quant.ternary={ternary!r}: allowed: {', '.join(TERNARY_GRIDS)}")
    affine = is_ternary(bits) and ternary == "affine"
    w2 = w.detach().reshape(w.shape[0], -1).float()
    if method in ("absmean", "twn") and not affine:
        if not is_ternary(bits):
            raise ValueError(f"quant.init={method}: only defined for ternary weights (bits=1.58), got bits={bits}")
        absw = w2.abs()
        if method == "absmean":
            delta = absw.mean(1).clamp_min(1e-8)
        else:
            thr = 0.7 * absw.mean(1, keepdim=True)
            mask = absw > thr
            delta = ((absw * mask).sum(1) / mask.sum(1).clamp_min(1)).clamp_min(1e-8)
        return ChannelGrid(delta, torch.zeros_like(delta), -1, 1, TERNARY)
    lo = w2.min(1).values.clamp(max=0.0)
    hi = w2.max(1).values.clamp(min=0.0)
    if (is_ternary(bits) and not affine) or symmetric:
        amax = torch.maximum(lo.abs(), hi)
        lo, hi = -amax, amax
    best = _range_grid(lo, hi, bits, symmetric, ternary)
    if method == "minmax":
        return best
    best_err = (w2 - best.fake_quant(w2)).abs().pow(p).sum(1)
    for i in range(1, n_candidates):
        alpha = 1.0 - i / n_candidates
        g = _range_grid(lo * alpha, hi * alpha, bits, symmetric, ternary)
        err = (w2 - g.fake_quant(w2)).abs().pow(p).sum(1)
        better = err < best_err
        if better.any():
            best_err = torch.where(better, err, best_err)
            best.scale = torch.where(better, g.scale, best.scale)
            best.zero_point = torch.where(better, g.zero_point, best.zero_point)
    return best


def twn_codes(w: torch.Tensor, grid: ChannelGrid) -> torch.Tensor:
    """TWN codes: sign(w) where |w| > 0.7·mean|w| of the channel, else 0."""
    w2 = w.reshape(w.shape[0], -1)
    thr = 0.7 * w2.abs().mean(1, keepdim=True)
    return (torch.sign(w2) * (w2.abs() > thr)).reshape(w.shape).float()
