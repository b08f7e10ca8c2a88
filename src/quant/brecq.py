"""BRECQ (Li et al. 2021, "BRECQ: Pushing the Limit of Post-Training Quantization by Block
Reconstruction"), weight-only.

The AdaRound rounding variables (``rounding.AdaRoundWeight``) of all layers of one *block* are
optimised jointly against the block's full-precision output, one block at a time in forward order,
the block input coming from the already-quantized prefix (asymmetric, as in the reference setting).
Blocks are declared by each model (src/models/structure.py); for our ResNets (BatchNorm folded first):

- stem: ``conv1`` [+ folded ``bn1``] + ``relu``;
- each torchvision ``BasicBlock`` (conv1, relu, conv2, + downsample/identity, relu), run through
  *its own* ``forward`` with the conv weights substituted by ``torch.func.functional_call``: the
  block's single ReLU module is used twice and must never be swapped, or the post-addition ReLU
  silently disappears;
- head: ``fc`` (its input, captured at ``fc``, is already avgpool+flatten of the last block);
- any other Conv2d/Linear not inside these: its own unit (identity activation).

Loss (``quant.loss``), all instances of the paper's eq. (10),
    min E[ Δzᵀ diag(ω_1, …, ω_a) Δz ],   z = block output, Δz = ẑ − z,
differing only in the per-example, per-element weights ω:

- ``mse`` (default, the reference code's default): ω = 1, i.e. E‖ẑ − z‖², summed over channels,
  averaged over batch and positions.
- ``fisher``: ω = the diagonal Fisher information of the *FP* model w.r.t. z, in expectation over
  its own predictive distribution (label-free: calibration images come without labels):
      F_z(x) = Σ_y p_FP(y|x) (∂ −log p_FP(y|x) / ∂z)².
  This is also the diagonal Gauss–Newton curvature of KL(p_FP ‖ p_Q) at the FP point (where the
  plain gradient of that KL is zero). Exact over classes when there are ≤ ``fisher_samples``
  (default 16) of them, else a Monte-Carlo estimate with that many labels drawn from p_FP per
  example.
- ``fisher_kl``: the squared-gradient weights as docs/quantizers.md words them, eq. (10) with
  L = KL(p_Q ‖ p_FP) per calibration example:
      ω(x) = (∂ KL(p_Q(·|x) ‖ p_FP(·|x)) / ∂z)²,
  where p_Q is the network whose already-reconstructed prefix is quantized, whose *current* block
  is at round-to-nearest (hard rounding of its initial AdaRound V) and whose suffix after the block
  is full precision; p_FP is the FP model. Computed once per block, before its optimisation, by
  autograd w.r.t. the block output tensor (a leaf substituted at the block's exit; the KL's gradient
  w.r.t. the logits, p_Q ⊙ (d − E_{p_Q} d) with d = log p_Q − log p_FP, is written out and
  back-propagated, so that it is exactly zero where p_Q = p_FP). The KL is summed
  over the examples of a batch, so each example gets the gradient of its own KL (BN folded / eval
  mode: examples are independent). If every gradient is zero (p_Q = p_FP exactly) ω falls back to 1.
  (How this differs from the BRECQ reference code: docs/quantizers.md, "BRECQ".)

For ``fisher`` and ``fisher_kl``, ω is divided by its mean over the calibration set (all examples
and elements; mean 1), so λ keeps the meaning it has with ``mse``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..models.structure import qualified_names, structure_of
from .rounding import AdaRoundWeight, Unit, reconstruct

LOSSES = ("mse", "fisher", "fisher_kl")


def block_units(model: nn.Module, layer_names: list[str]) -> list[Unit]:
    """The model's declared blocks (src/models/structure.py), then left-over layers as their own
    units (identity activation), sorted into forward (definition) order."""
    units = [Unit(b.name, b.module, qualified_names(model, b.module), b.entry, b.exit)
             for b in structure_of(model, "BRECQ").blocks]
    covered = {q for u in units for q in u.params.values()}
    for name in layer_names:
        if name not in covered:
            layer = model.get_submodule(name)
            units.append(Unit(name, layer, {"weight": name}, name, name))
    order = {n: i for i, n in enumerate(layer_names)}
    units = [u for u in units if any(q in order for q in u.params.values())]
    return sorted(units, key=lambda u: min(order[q] for q in u.params.values() if q in order))


def _leaf_hook():
    """A forward hook that swaps a module's first output per forward for a detached leaf tensor that
    requires grad (collected in the returned list), so gradients can be taken w.r.t. the unit output
    while only the suffix of the network stays in the graph. Clear the list before each forward."""
    leaf: list[torch.Tensor] = []

    def hook(_m, _inp, out):
        if leaf:
            return None
        z = out.detach().requires_grad_(True)
        leaf.append(z)
        return z

    return leaf, hook


def fisher_weights(fp_model: nn.Module, calib_x: torch.Tensor, unit: Unit, samples: int = 16,
                   generator: torch.Generator | None = None, batch_size: int = 128) -> torch.Tensor:
    """ω = F_z / mean(F_z): diagonal Fisher of the FP model's predictive distribution w.r.t. the unit
    output z, per calibration example and element (see module docstring).

    F_z = Σ_y p(y|x) (∂ −log p(y|x) / ∂z)². Exact (one backward pass per class) when the number of
    classes is ≤ ``samples``; otherwise a Monte-Carlo estimate with ``samples`` labels drawn from
    p(·|x) per example. The gradient is taken at a hook on the unit's exit module and flows
    back through the FP suffix only (examples are independent: BN is folded / in eval mode)."""
    dev = next(fp_model.parameters()).device
    leaf, hook = _leaf_hook()

    fisher: list[torch.Tensor] = []
    handle = fp_model.get_submodule(unit.exit).register_forward_hook(hook)
    try:
        with torch.enable_grad():
            for i in range(0, len(calib_x), batch_size):
                leaf.clear()
                logp = F.log_softmax(fp_model(calib_x[i:i + batch_size].to(dev)), dim=1)
                p = logp.detach().exp()
                n, k = p.shape
                exact = k <= samples
                draws = k if exact else samples
                labels = None if exact else torch.multinomial(p.cpu(), samples, replacement=True,
                                                              generator=generator).to(dev)
                f = torch.zeros_like(leaf[0])
                shape = (n,) + (1,) * (f.dim() - 1)
                for d in range(draws):
                    y = torch.full((n,), d, device=dev) if exact else labels[:, d]
                    nll = -logp.gather(1, y.view(-1, 1)).sum()
                    (g,) = torch.autograd.grad(nll, leaf[0], retain_graph=d + 1 < draws)
                    wy = p.gather(1, y.view(-1, 1)).view(shape) if exact else 1.0 / samples
                    f += wy * g.pow(2)
                fisher.append(f)
    finally:
        handle.remove()
    f = torch.cat(fisher)
    return f / f.mean().clamp_min(1e-30)


def kl_grad_weights(qmodel: nn.Module, fp_model: nn.Module, calib_x: torch.Tensor, unit: Unit, grids: dict,
                    batch_size: int = 128) -> torch.Tensor:
    """ω = g² / mean(g²), g = ∂ KL(p_Q ‖ p_FP) / ∂z per calibration example (``fisher_kl``, see the
    module docstring). ``qmodel`` has the prefix before ``unit`` quantized and the rest FP; the unit's
    layers (the keys of ``grids``) are set to round-to-nearest for the computation and restored after.
    """
    dev = next(qmodel.parameters()).device
    layers = {q: qmodel.get_submodule(q) for q in grids}
    saved = {q: m.weight.detach().clone() for q, m in layers.items()}
    leaf, hook = _leaf_hook()

    grads: list[torch.Tensor] = []
    handle = qmodel.get_submodule(unit.exit).register_forward_hook(hook)
    try:
        with torch.no_grad():
            for q, m in layers.items():
                rtn = AdaRoundWeight(saved[q], grids[q]).hard_weight()  # hard rounding of the initial V
                m.weight.copy_(rtn.to(m.weight))
        with torch.enable_grad():
            for i in range(0, len(calib_x), batch_size):
                xb = calib_x[i:i + batch_size].to(dev)
                with torch.no_grad():
                    logp_fp = F.log_softmax(fp_model(xb), dim=1)
                leaf.clear()
                logits = qmodel(xb)
                with torch.no_grad():
                    # ∂/∂logits of Σ_examples KL(p_Q ‖ p_FP) = p_Q ⊙ (d − E_{p_Q}[d]), d = log p_Q − log p_FP,
                    # written out so that it is exactly zero where p_Q = p_FP
                    logp_q = F.log_softmax(logits, dim=1)
                    p_q, d = logp_q.exp(), logp_q - logp_fp
                    dlogits = p_q * (d - (p_q * d).sum(1, keepdim=True))
                (g,) = torch.autograd.grad(logits, leaf[0], grad_outputs=dlogits)
                grads.append(g.detach().pow(2))
    finally:
        handle.remove()
        with torch.no_grad():
            for q, m in layers.items():
                m.weight.copy_(saved[q])
    w = torch.cat(grads)
    mean = w.mean()
    if not torch.isfinite(mean) or mean <= 0:
        return torch.ones_like(w)
    return w / mean


def quantize_brecq(model: nn.Module, layer_bits: dict[str, float], cfg, calib_x, device=None, augment=None,
                   diagnostics: dict | None = None) -> dict:
    loss = cfg.get("loss", "mse")
    if loss not in LOSSES:
        raise ValueError(f"quant.loss={loss!r}: allowed: {', '.join(LOSSES)}")
    names = list(layer_bits)
    weight_fn = None
    if loss == "fisher":
        weight_fn = FisherWeights(int(cfg.get("fisher_samples", 16)), int(cfg.get("seed", 0)))
    elif loss == "fisher_kl":
        weight_fn = KLGradWeights()
    if weight_fn is not None and augment is not None:
        raise ValueError(f"quant.loss={loss}: its weights belong to fixed calibration images; "
                         f"allowed with quant.calib_augment=crop_flip: mse")
    return reconstruct(model, layer_bits, cfg, calib_x, device, lambda m: block_units(m, names), "BRECQ", weight_fn,
                       augment, learn_act_steps=bool(cfg.get("act_learn", True)), diagnostics=diagnostics)


class FisherWeights:
    """``weight_fn`` for ``rounding.reconstruct``: Fisher weights of each unit from the FP model."""

    def __init__(self, samples: int = 16, seed: int = 0):
        self.samples = samples
        self.generator = torch.Generator().manual_seed(seed)

    def __call__(self, qmodel: nn.Module, fp_model: nn.Module, unit: Unit, grids: dict, calib_x: torch.Tensor):
        # only ``unit.exit`` (a module name, the same in both models) is used: the gradient is the FP model's
        return fisher_weights(fp_model, calib_x, unit, self.samples, self.generator)


class KLGradWeights:
    """``weight_fn`` for ``rounding.reconstruct``: squared KL(p_Q ‖ p_FP) gradients (``fisher_kl``),
    computed on the partly quantized model with the current unit at round-to-nearest."""

    def __call__(self, qmodel: nn.Module, fp_model: nn.Module, unit: Unit, grids: dict, calib_x: torch.Tensor):
        return kl_grad_weights(qmodel, fp_model, calib_x, unit, grids)
