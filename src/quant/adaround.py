"""AdaRound (Nagel et al. 2020, "Up or Down? Adaptive Rounding for Post-Training Quantization").

Layer by layer in forward order, learn whether each weight rounds up or down on its (fixed,
L_p-initialised) per-channel grid by minimising the asymmetric reconstruction objective (eq. 25)

    ‖f_a(W x) − f_a(W̃ x̂)‖²_F  +  λ Σ_ij (1 − |2h(V_ij) − 1|^β)

where x is the layer's input in the full-precision model, x̂ its input in the model whose earlier
layers are already quantized, and W̃ the soft-quantized weight of ``rounding.AdaRoundWeight``.
f_a is the activation that follows the layer inside the network, as the model declares it
(``Structure.relu_after``, src/models/structure.py): in a ResNet ReLU after the stem ``conv1`` and
after each BasicBlock's ``conv1``; identity for a BasicBlock's ``conv2`` (its output is added to the
residual before the ReLU), for ``downsample`` convs and for the final ``fc`` (and any other layer).
BatchNorm is folded beforehand (``quant.fold_bn``), so the layer's bias is the folded one.
"""
from __future__ import annotations

from torch import nn

from ..models import structure_of
from .rounding import Unit, reconstruct


def relu_followed_layers(model: nn.Module) -> set[str]:
    """Qualified names of the layers whose output goes straight into a ReLU (after folded BN),
    as the model declares them."""
    return set(structure_of(model, "AdaRound").relu_after)


def layer_units(model: nn.Module, layer_names: list[str], activation_in_loss: bool = True) -> list[Unit]:
    """One unit per layer: the layer followed by its activation f_a (a fresh ReLU instance, so no
    module of the model is replaced or shared). ``activation_in_loss=False`` (the study's code, with
    BatchNorm not folded) reconstructs every layer's raw output, f_a = identity."""
    relu = relu_followed_layers(model) if activation_in_loss else set()
    units = []
    for name in layer_names:
        layer = model.get_submodule(name)
        module = nn.Sequential(layer, nn.ReLU()) if name in relu else nn.Sequential(layer)
        units.append(Unit(name, module, {"0.weight": name}, name, name))
    return units


def quantize_adaround(model: nn.Module, layer_bits: dict[str, float], cfg, calib_x, device=None, augment=None,
                      diagnostics: dict | None = None) -> dict:
    names = list(layer_bits)
    act = bool(cfg.get("activation_in_loss", True))
    return reconstruct(model, layer_bits, cfg, calib_x, device, lambda m: layer_units(m, names, act), "AdaRound",
                       augment=augment, diagnostics=diagnostics)
