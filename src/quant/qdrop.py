"""QDrop (Wei et al. 2022, "QDrop: Randomly Dropping Quantization for Extremely Low-bit Post-Training
Quantization").

BRECQ's block reconstruction (src/quant/brecq.py: the same blocks, AdaRound rounding variables, MSE
block-output loss, λ and β schedule) with quantized activations whose quantization is randomly
*dropped* while the weights are tuned: in every iteration, each element of each quantized activation
the block computes with is independently either kept at its full-precision value, with probability
p (``quant.drop_prob``, 0.5 in the paper), or quantized. p = 0 is BRECQ with quantized activations;
p = 1 reconstructs with FP activations. The drop exists only inside the reconstruction loop: the
finished model, and every evaluation, quantizes every activation.

Where the drop applies (this project quantizes each layer's *input*, src/quant/activation.py):

- the block input, read by the block's first layers (a BasicBlock's ``conv1`` and 1×1 ``downsample``):
  per element, the FP value is the *full-precision model's* block input, the quantized one is the
  quantized prefix's block input through the layer's quantizer, i.e. u = x_FP where the mask says
  drop, else Q(x̂). Both readers of the tensor share one mask per iteration (it is one tensor in the
  network). This is how the paper's reference setting forms a block's input from the quantized and
  FP paths.
- activations inside the block (a BasicBlock's ``conv2`` input): the FP value is the block's own
  unquantized activation on this iteration's (mixed) input.

An input is recognised as "block input side" when it does not depend on the block's rounding
variables (no gradient flows to it); its FP value is then the FP model's value of the same tensor,
which for a layer that reads the block input directly is the FP block input itself.

The activation steps are initialised by the MSE search and learned with the rounding by LSQ
(Esser et al. 2020), Adam at ``quant.act_lr`` with cosine decay, with LSQ's gradient scale
1/√(N·q_max) (``quant.act_grad_scale``, as QDrop's reference setting). Without ``quant.act_bits``
there is no activation to drop and QDrop is BRECQ's weight-only reconstruction.
"""
from __future__ import annotations

import torch
from torch import nn

from .brecq import block_units
from .rounding import reconstruct


def check_drop_prob(value, key: str = "quant.drop_prob") -> float:
    """p ∈ [0, 1]; anything else raises one line."""
    try:
        p = float(value)
    except (TypeError, ValueError):
        p = float("nan")
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"{key}={value}: the probability of keeping an activation at full precision; "
                         f"allowed: a number in [0, 1] (paper: 0.5)")
    return p


class ActivationDrop:
    """The drop mechanism of one QDrop reconstruction, for ``rounding.reconstruct(act_drop=...)``.

    ``attach`` gives the unit's input quantizers a ``drop`` for the duration of the unit's loop,
    ``step`` receives each iteration's inputs, ``detach`` removes it. Masks come from a generator of
    their own, so the batch order is the one BRECQ draws with the same seed."""

    def __init__(self, p: float, seed: int = 0, grad_scale: bool = True):
        self.p = float(p)
        self.seed = int(seed)
        self.grad_scale = bool(grad_scale)
        self.generator: torch.Generator | None = None
        self.quantizers: dict = {}
        self._fp_layers: dict[str, nn.Module] = {}
        self._input = self._fp_input = self._fp_unit = None
        self._masks: dict[int, torch.Tensor] = {}
        self._fp_values: dict[str, torch.Tensor] | None = None

    def attach(self, quantizers: dict, fp_model: nn.Module) -> None:
        if self.generator is None:  # one stream for the whole model, on the reconstruction's device
            dev = next(fp_model.parameters()).device
            self.generator = torch.Generator(device=dev).manual_seed(self.seed)
        self.quantizers = dict(quantizers)
        self._fp_layers = {n: fp_model.get_submodule(n) for n in self.quantizers}
        for name, q in self.quantizers.items():
            q.drop = self._dropper(name)
            q.grad_scale = self.grad_scale

    def detach(self) -> None:
        for q in self.quantizers.values():
            q.drop = None
            q.grad_scale = False
        self.quantizers, self._fp_layers = {}, {}
        self._input = self._fp_input = self._fp_unit = self._fp_values = None
        self._masks = {}

    def step(self, x_q: torch.Tensor, x_fp: torch.Tensor | None, fp_unit: nn.Module) -> None:
        """This iteration's unit input from the quantized prefix and from the FP model (same examples)."""
        self._input, self._fp_input, self._fp_unit = x_q, x_fp, fp_unit
        self._masks, self._fp_values = {}, None

    def mask(self, like: torch.Tensor) -> torch.Tensor:
        """True where the element keeps its FP value: independent, with probability p."""
        return torch.rand(like.shape, generator=self.generator, device=like.device) < self.p

    def _fp_value(self, name: str, x: torch.Tensor) -> torch.Tensor:
        """The FP model's value of the tensor that layer ``name`` reads (block-input side only)."""
        if x is self._input:
            return self._fp_input
        if self._fp_values is None:  # once per iteration: run the FP unit and record its layers' inputs
            self._fp_values = {}
            handles = [m.register_forward_pre_hook(lambda _m, a, n=n: self._fp_values.__setitem__(n, a[0]))
                       for n, m in self._fp_layers.items()]
            try:
                with torch.no_grad():
                    self._fp_unit(self._fp_input)
            finally:
                for h in handles:
                    h.remove()
        return self._fp_values[name]

    def _dropper(self, name: str):
        def drop(x: torch.Tensor, xq: torch.Tensor) -> torch.Tensor:
            if self._input is None:  # outside an iteration (never reached by reconstruct): no drop
                return xq
            if x.requires_grad or self._fp_input is None:  # inside the block: its own unquantized value
                return torch.where(self.mask(x), x, xq)
            key = id(x)  # one mask per tensor: the readers of the block input share it
            if key not in self._masks:
                self._masks[key] = self.mask(x)
            return torch.where(self._masks[key], self._fp_value(name, x), xq)
        return drop


def quantize_qdrop(model: nn.Module, layer_bits: dict[str, float], cfg, calib_x, device=None, augment=None,
                   diagnostics: dict | None = None) -> dict:
    p = check_drop_prob(cfg.get("drop_prob", 0.5))
    names = list(layer_bits)
    drop = ActivationDrop(p, int(cfg.get("seed", 0)) + 104_729, bool(cfg.get("act_grad_scale", True)))
    try:
        return reconstruct(model, layer_bits, cfg, calib_x, device, lambda m: block_units(m, names), "QDrop",
                           augment=augment, learn_act_steps=bool(cfg.get("act_learn", True)), act_drop=drop,
                           diagnostics=diagnostics)
    finally:
        drop.detach()  # also after an error: no quantizer of the model keeps dropping
