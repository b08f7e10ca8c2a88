"""The quantization interface: one function for every method (docs/quantizers.md).

``quantize(model, bits, qcfg, policy, calib_x)`` copies the full-precision model, folds BatchNorm
(``quant.fold_bn``, default true, as PTQ reference pipelines do), assigns per-layer bits with the
``bitwidth`` policy and its overrides (src/quant/policy.py) and hands the copy to the method, which
replaces the weight of each Conv2d/Linear it is given by fake-quantized float weights on that layer's
own grid and returns the integer export (codes, scales, zero points). Layers left at full precision
(``fp``) are not given to the method at all, so no step of it can touch them.

Each method has the signature ``fn(model, layer_bits, cfg, calib_x, device) -> export`` and modifies
``model`` in place; ``calib_x`` holds normalised calibration images (the target's members by default).
A method is one module, one line in :data:`QUANTIZERS` and one ``conf/quant/<name>.yaml``.
"""
from __future__ import annotations

import copy
import importlib
import time
from dataclasses import dataclass, field

import torch
from torch import nn

from .activation import attach as attach_act_quant
from .activation import calibrate as calibrate_act
from .activation import check_act_bits, check_act_input
from .activation import describe as describe_act
from .activation import quantizers as act_quantizers
from .bn_fold import fold_batchnorm
from .grid import check_bits
from .policy import Overrides
from .policy import layer_bits as policy_layer_bits
from .policy import quantized as quantized_layers

_HESSIAN_SPEED = ("row_batch", "max_mem_gb", "cpu_threads", "calib_batch")


@dataclass(frozen=True)
class Quantizer:
    """A registry entry: where the method lives and what the rest of the system needs to know."""

    module: str
    fn: str
    needs_calibration: bool = True   # calibration images (and an iteration budget, where it has one)
    speed_keys: tuple[str, ...] = ()  # config keys that change speed or display only: not in the cache key
    strength_key: str | None = None   # matched-utility controls: the key that sets their strength (bits do not apply)
    iterative: bool = True            # has an iteration budget (``iters``); OBC/GPTQ are one-shot
    reports_convergence: bool = False  # takes ``diagnostics`` and records per-unit rounding convergence
    version: int = 1                  # raised whenever the method's output changes: in the cache key

    def load(self):
        return getattr(importlib.import_module(self.module), self.fn)


QUANTIZERS: dict[str, Quantizer] = {
    "rtn": Quantizer("src.quant.rtn", "quantize_rtn", needs_calibration=False, iterative=False),
    "adaround": Quantizer("src.quant.adaround", "quantize_adaround", reports_convergence=True),
    "brecq": Quantizer("src.quant.brecq", "quantize_brecq", reports_convergence=True),
    "qdrop": Quantizer("src.quant.qdrop", "quantize_qdrop", reports_convergence=True),
    "obc": Quantizer("src.quant.obc", "quantize_obc", speed_keys=_HESSIAN_SPEED, iterative=False),
    "gptq": Quantizer("src.quant.gptq", "quantize_gptq", speed_keys=_HESSIAN_SPEED, iterative=False),
    "noise": Quantizer("src.quant.noise", "perturb_noise", needs_calibration=False, strength_key="sigma",
                       iterative=False),
    "prune": Quantizer("src.quant.prune", "prune_magnitude", needs_calibration=False,
                       strength_key="sparsity", iterative=False),
}
FULL_PRECISION = ("none", "fp")
# views of the registry, for the call sites that need one fact
METHODS = tuple(QUANTIZERS)
NEEDS_CALIBRATION = tuple(n for n, q in QUANTIZERS.items() if q.needs_calibration)
CONTROLS = {n: q.strength_key for n, q in QUANTIZERS.items() if q.strength_key}


def quant_config(name: str, overrides: tuple[str, ...] = ()):
    """``conf/quant/<name>.yaml`` as a job composes it (the protocol's keys resolved), as a plain
    OmegaConf node: for code that quantizes outside a job (benchmarks)."""
    from pathlib import Path

    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from omegaconf import OmegaConf

    overrides = [f"quant={name}", *overrides]
    if GlobalHydra.instance().is_initialized():  # inside a Hydra app or context: compose from its config
        cfg = compose("config", overrides=overrides)
    else:
        with initialize_config_dir(config_dir=str(Path(__file__).resolve().parents[2] / "conf"), version_base="1.3"):
            cfg = compose("config", overrides=overrides)
    return OmegaConf.create(OmegaConf.to_container(cfg.quant, resolve=True))


@dataclass
class QuantResult:
    model: nn.Module
    layer_bits: dict[str, float | str] = field(default_factory=dict)  # every layer: bits or "fp"
    export: dict = field(default_factory=dict)
    seconds: float = 0.0
    act: dict = field(default_factory=dict)   # input quantizers (``quant.act_bits``): {layer: {bits, signed, step}}
    convergence: list = field(default_factory=list)  # learned rounding: per unit, see rounding.unit_convergence


def quantize(model: nn.Module, bits: float, qcfg, policy: str = "uniform", calib_x: torch.Tensor | None = None,
             dataset: str = "", device: str | torch.device | None = None, augment=None,
             overrides: Overrides | None = None) -> QuantResult:
    """``augment(x, generator)``: random crop + flip of normalised calibration images
    (``quant.calib_augment=crop_flip``), for the methods that take calibration data.
    ``overrides``: ``bitwidth.only|first|last|layers`` on top of ``policy``."""
    name = qcfg.name
    if name in FULL_PRECISION:
        return QuantResult(copy.deepcopy(model).eval())
    if name not in QUANTIZERS:
        raise ValueError(f"quant.name={name!r}: allowed: {', '.join(FULL_PRECISION + METHODS)}")
    bits = check_bits(bits)
    t0 = time.perf_counter()
    qmodel = copy.deepcopy(model).cpu().eval()
    if qcfg.get("fold_bn", True):
        fold_batchnorm(qmodel)
    bits_per_layer = policy_layer_bits(qmodel, bits, policy, dataset, overrides)
    if name in CONTROLS:  # weights stay float32: bits do not apply
        bits_per_layer = {n: 32.0 for n in bits_per_layer}
    method = QUANTIZERS[name].load()
    layers = quantized_layers(bits_per_layer)
    act_bits = check_act_bits(qcfg.get("act_bits"))
    if act_bits is not None:
        if name in CONTROLS:
            raise ValueError(f"quant.act_bits: applies to quantizers only, not to the control quant={name}")
        if calib_x is None or len(calib_x) == 0:
            raise ValueError("quant.act_bits: activation ranges need calibration images (calib_x is empty)")
        # the layer that reads the image: the first of the model in forward order
        attach_act_quant(qmodel, layers, act_bits, check_act_input(qcfg.get("act_input", "8")),
                          first_layer=next(iter(bits_per_layer), None))
    diagnostics: dict = {}
    kwargs = {"augment": augment} if augment else {}
    if QUANTIZERS[name].reports_convergence:
        kwargs["diagnostics"] = diagnostics
    export = method(qmodel, layers, qcfg, calib_x, device, **kwargs)
    if act_bits is not None:  # methods that do not calibrate activations themselves (RTN): ranges on the result
        pending = [n for n, q in act_quantizers(qmodel).items() if not q.calibrated]
        dev = torch.device(device) if device is not None else torch.device("cpu")
        calibrate_act(qmodel.to(dev), pending, calib_x.float(), dev)
    qmodel = qmodel.cpu().eval()
    modules = dict(qmodel.named_modules())
    for name, entry in export.items():  # float bias (BN folded in) so each layer can be rebuilt from the export
        bias = modules[name].bias
        entry["bias"] = None if bias is None else bias.detach().float().cpu().clone()
    return QuantResult(qmodel, bits_per_layer, export, time.perf_counter() - t0, describe_act(qmodel),
                       diagnostics.get("convergence", []))
