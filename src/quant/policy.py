"""Per-layer bit policies (config group ``bitwidth``); ``bits`` itself stays a top-level scalar.

- ``uniform``: every quantizable layer at ``bits``.
- ``8bit_ends``: first conv and last linear at 8 bits, the rest at ``bits``.
- ``paper``: the study's rule: last layer at 8 bits when bits < 2, and always on TinyImageNet.

On top of any policy, per-layer overrides (``bitwidth.*``; a value is a bit-width or ``fp`` = left at
full precision, untouched by the quantizer), applied in this order, a later one winning per layer:

- ``only``: a layer, a block the model declares (``stem``, ``layer1.0``, ``head``) or any module
  holding layers (``layer2``): that part at ``bits``, every other layer ``fp``. The policy is not
  consulted: the point is to see what quantizing this part alone does.
- ``first`` / ``last``: the first / last quantizable layer in forward order.
- ``layers``: ``{<layer name>: <bits|fp>}``.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from torch import nn

from .grid import check_bits

POLICIES = ("uniform", "8bit_ends", "paper")
FP = "fp"
OVERRIDE_KEYS = ("only", "first", "last", "layers")


def quantizable_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Conv2d and Linear layers in definition (= forward, for our models) order."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]


def precision(value, key: str) -> float | str:
    """A per-layer precision: a valid bit-width (as grid.check_bits returns it) or ``fp``."""
    if isinstance(value, str) and value.strip().lower() == FP:
        return FP
    try:
        return check_bits(value, key)
    except ValueError:
        raise ValueError(f"{key}={value}: not a valid precision; allowed: 1, 2, 3, 4, 5, 6, 7, 8, "
                         f"1.58 (ternary) or fp (full precision)") from None


def fmt_precision(value) -> str:
    return FP if value == FP else f"{float(value):g}"


@dataclass(frozen=True)
class Overrides:
    """``bitwidth.only|first|last|layers`` (see module docstring), values already checked."""

    only: str | None = None
    first: float | str | None = None
    last: float | str | None = None
    layers: tuple[tuple[str, float | str], ...] = field(default_factory=tuple)

    @classmethod
    def of(cls, node) -> "Overrides":
        """From the ``bitwidth`` config node (or a dict); raises ValueError with one line on a bad value."""
        get = (lambda k: node.get(k)) if node is not None else (lambda k: None)
        only = get("only")
        if only is not None and (not isinstance(only, str) or not only.strip()):
            raise ValueError(f"bitwidth.only={only}: must be a layer or block name")
        layers = get("layers") or {}
        if not hasattr(layers, "items"):
            raise ValueError(f"bitwidth.layers={layers}: must be a mapping, e.g. bitwidth.layers={{fc:8}}")
        return cls(
            only=only.strip() if only is not None else None,
            first=None if get("first") is None else precision(get("first"), "bitwidth.first"),
            last=None if get("last") is None else precision(get("last"), "bitwidth.last"),
            layers=tuple((str(k), precision(v, f"bitwidth.layers.{k}")) for k, v in layers.items()),
        )

    def active(self) -> bool:
        return any(v not in (None, ()) for v in (self.only, self.first, self.last, self.layers))

    def describe(self) -> str | None:
        """Short label of the overrides for tables and run names, e.g. ``last 4``; None when inactive."""
        parts = []
        if self.only is not None:
            parts.append(f"only {self.only}")
        for key in ("first", "last"):
            if getattr(self, key) is not None:
                parts.append(f"{key} {fmt_precision(getattr(self, key))}")
        parts += [f"{n} {fmt_precision(v)}" for n, v in self.layers]
        return ", ".join(parts) or None

    def as_dict(self) -> dict:
        return {"only": self.only, "first": self.first, "last": self.last, "layers": dict(self.layers)}


def parts(model: nn.Module) -> dict[str, list[str]]:
    """Every name ``bitwidth.only`` accepts → the quantizable layers it covers: the declared blocks
    (when the model declares them), then every module that holds at least one layer."""
    names = [n for n, _ in quantizable_layers(model)]
    out: dict[str, list[str]] = {}
    declare = getattr(model, "ptq_structure", None)
    if declare is not None:
        from ..models.structure import qualified_names

        for b in declare().blocks:
            out[b.name] = [q for q in names if q in set(qualified_names(model, b.module).values())]
    for mod_name, _ in model.named_modules():
        if mod_name:
            covered = [q for q in names if q == mod_name or q.startswith(mod_name + ".")]
            if covered:
                out.setdefault(mod_name, covered)
    return out


def layer_bits(model: nn.Module, bits: float, policy: str, dataset: str = "",
               overrides: Overrides | None = None) -> dict[str, float | str]:
    """Precision of every quantizable layer, in forward order: bits, or ``fp`` (left untouched)."""
    if policy not in POLICIES:
        raise ValueError(f"bitwidth.policy={policy!r}: allowed: {', '.join(POLICIES)}")
    names = [n for n, _ in quantizable_layers(model)]
    out: dict[str, float | str] = {n: float(bits) for n in names}
    if not names:
        return out
    first, last = names[0], names[-1]
    if policy == "8bit_ends":
        out[first] = out[last] = 8.0
    elif policy == "paper" and (bits < 2 or dataset == "tinyimagenet"):
        out[last] = 8.0
    ov = overrides or Overrides()
    check_names(model, ov)
    if ov.only is not None:
        inside = set(parts(model)[ov.only])
        out = {n: (float(bits) if n in inside else FP) for n in names}
    if ov.first is not None:
        out[first] = ov.first
    if ov.last is not None:
        out[last] = ov.last
    for n, v in ov.layers:
        out[n] = v
    return out


def check_names(model: nn.Module, ov: Overrides) -> None:
    """One-line ValueError for a layer (``bitwidth.layers``) or part (``bitwidth.only``) the model lacks."""
    names = [n for n, _ in quantizable_layers(model)]
    for n, _ in ov.layers:
        if n not in names:
            raise ValueError(f"bitwidth.layers: {type(model).__name__} has no layer {n!r}; "
                             f"its layers: {', '.join(names)}")
    if ov.only is not None:
        allowed = parts(model)
        if ov.only not in allowed:
            raise ValueError(f"bitwidth.only={ov.only}: {type(model).__name__} has no such layer or block; "
                             f"allowed: {', '.join(allowed)}")


def quantized(bits_per_layer: dict[str, float | str]) -> dict[str, float]:
    """The layers a quantizer gets: every one not left at full precision."""
    return {n: b for n, b in bits_per_layer.items() if b != FP}
