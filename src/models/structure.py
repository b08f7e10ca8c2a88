"""What the reconstruction-based quantizers need to know about an architecture, declared by it.

AdaRound puts the activation that follows a layer inside its loss, and BRECQ reconstructs whole
blocks against their output after the block's last activation. Neither can be read off layer names
reliably (a VGG has no ``BasicBlock``; a pre-activation block has its ReLU *before* the conv), so a
model declares, after BatchNorm folding:

- ``blocks``: BRECQ's reconstruction units in forward order. Each ``Block`` is a module whose own
  forward maps the block input to the block output (so shared sub-modules, such as torchvision
  BasicBlock's one ReLU used twice, keep running as in the network), the module whose first input
  is the block input (``entry``; None = the network input) and the module whose output is the block
  output (``exit``).
- ``relu_after``: the Conv2d/Linear layers whose output goes straight into a ReLU.

A model exposes them as ``ptq_structure() -> Structure``; :func:`structure_of` refuses one that does
not, in one line. RTN, OBC and GPTQ only need the Conv2d/Linear layers and work on any model.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from torch import nn


@dataclass
class Block:
    name: str
    module: nn.Module
    entry: str | None
    exit: str


@dataclass
class Structure:
    blocks: list[Block]
    relu_after: set[str] = field(default_factory=set)


def structure_of(model: nn.Module, method: str = "this quantizer") -> Structure:
    fn = getattr(model, "ptq_structure", None)
    if fn is None:
        raise ValueError(f"{method} needs the model's declared structure (blocks and the layers that feed a ReLU), "
                         f"but {type(model).__name__} has no ptq_structure(); see src/models/structure.py")
    return fn()


def qualified_names(model: nn.Module, module: nn.Module) -> dict[str, str]:
    """Conv2d/Linear weights inside ``module`` → the qualified names of those layers in ``model``
    (found by identity, so a block may be any module holding the model's own layers)."""
    where = {id(m): n for n, m in model.named_modules()}
    return {(f"{n}.weight" if n else "weight"): where[id(m)] for n, m in module.named_modules()
            if isinstance(m, (nn.Conv2d, nn.Linear)) and id(m) in where}
