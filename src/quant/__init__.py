"""The quantization interface: one function for every method (REFERENCE.md "Quantizers").

``quantize(model, bits, qcfg, policy, calib_x)`` copies the full-precision model, folds BatchNorm
(``quant.fold_bn``, default true, as PTQ reference pipelines do), assigns per-layer bits with the
``bitwidth`` policy and hands the copy to the method, which replaces each Conv2d/Linear weight by
fake-quantized float weights on its grid and returns the integer export (codes, scales, zero points).

Each method has the signature ``fn(model, layer_bits, cfg, calib_x, device) -> export`` and modifies
``model`` in place; ``calib_x`` holds normalised calibration images (the target's members by default).
"""
from __future__ import annotations

import copy
import importlib
import time
from dataclasses import dataclass, field

import torch
from torch import nn

from .bn_fold import fold_batchnorm
from .grid import check_bits
from .policy import layer_bits as policy_layer_bits

METHODS = {
    "rtn": ("src.quant.rtn", "quantize_rtn"),
    "adaround": ("src.quant.adaround", "quantize_adaround"),
    "brecq": ("src.quant.brecq", "quantize_brecq"),
    "obc": ("src.quant.obc", "quantize_obc"),
    "gptq": ("src.quant.gptq", "quantize_gptq"),
    "noise": ("src.quant.noise", "perturb_noise"),   # matched-utility controls: not quantizers,
    "prune": ("src.quant.prune", "prune_magnitude"),  # their strength, not bits, sets the accuracy cost
}
CONTROLS = {"noise": "sigma", "prune": "sparsity"}  # control → the key that sets its strength
FULL_PRECISION = ("none", "fp")
NEEDS_CALIBRATION = ("adaround", "brecq", "obc", "gptq")  # RTN looks at the weights only


@dataclass
class QuantResult:
    model: nn.Module
    layer_bits: dict[str, float] = field(default_factory=dict)
    export: dict = field(default_factory=dict)
    seconds: float = 0.0


def quantize(model: nn.Module, bits: float, qcfg, policy: str = "uniform", calib_x: torch.Tensor | None = None,
             dataset: str = "", device: str | torch.device | None = None) -> QuantResult:
    name = qcfg.name
    if name in FULL_PRECISION:
        return QuantResult(copy.deepcopy(model).eval())
    if name not in METHODS:
        raise ValueError(f"quant.name={name!r}: allowed: {', '.join(FULL_PRECISION + tuple(METHODS))}")
    bits = check_bits(bits)
    t0 = time.perf_counter()
    qmodel = copy.deepcopy(model).cpu().eval()
    if qcfg.get("fold_bn", True):
        fold_batchnorm(qmodel)
    bits_per_layer = policy_layer_bits(qmodel, bits, policy, dataset)
    if name in CONTROLS:  # weights stay float32: bits do not apply
        bits_per_layer = {n: 32.0 for n in bits_per_layer}
    module, fn = METHODS[name]
    method = getattr(importlib.import_module(module), fn)
    export = method(qmodel, bits_per_layer, qcfg, calib_x, device)
    qmodel = qmodel.cpu().eval()
    modules = dict(qmodel.named_modules())
    for name, entry in export.items():  # float bias (BN folded in) so each layer can be rebuilt from the export
        bias = modules[name].bias
        entry["bias"] = None if bias is None else bias.detach().float().cpu().clone()
    return QuantResult(qmodel, bits_per_layer, export, time.perf_counter() - t0)
