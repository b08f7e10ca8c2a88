"""Per-layer bit policies (config group ``bitwidth``); ``bits`` itself stays a top-level scalar.

- ``uniform``: every quantizable layer at ``bits``.
- ``8bit_ends``: first conv and last linear at 8 bits, the rest at ``bits``.
- ``paper``: the study's rule: last layer at 8 bits when bits < 2, and always on TinyImageNet.
"""
from __future__ import annotations

from torch import nn

POLICIES = ("uniform", "8bit_ends", "paper")


def quantizable_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Conv2d and Linear layers in definition (= forward, for our models) order."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]


def layer_bits(model: nn.Module, bits: float, policy: str, dataset: str = "") -> dict[str, float]:
    if policy not in POLICIES:
        raise ValueError(f"bitwidth.policy={policy!r}: allowed: {', '.join(POLICIES)}")
    names = [n for n, _ in quantizable_layers(model)]
    out = {n: float(bits) for n in names}
    if not names:
        return out
    first, last = names[0], names[-1]
    if policy == "8bit_ends":
        out[first] = out[last] = 8.0
    elif policy == "paper" and (bits < 2 or dataset == "tinyimagenet"):
        out[last] = 8.0
    return out
