"""BRECQ (Li et al. 2021, "BRECQ: Pushing the Limit of Post-Training Quantization by Block
Reconstruction"), weight-only.

The AdaRound rounding variables (``rounding.AdaRoundWeight``) of all layers of one *block* are
optimised jointly against the block's full-precision output, one block at a time in forward order,
the block input coming from the already-quantized prefix (asymmetric, as in the reference setting).
Blocks of our ResNets (BatchNorm folded first):

- stem: ``conv1`` [+ folded ``bn1``] + ``relu`` [+ ``maxpool`` when the model has one];
- each torchvision ``BasicBlock`` (conv1, relu, conv2, + downsample/identity, relu), run through
  *its own* ``forward`` with the conv weights substituted by ``torch.func.functional_call``: the
  block's single ReLU module is used twice and must never be swapped, or the post-addition ReLU
  silently disappears;
- head: ``fc`` (its input, captured at ``fc``, is already avgpool+flatten of the last block);
- any other Conv2d/Linear not inside these: its own unit (identity activation).

Loss (``quant.loss``):

- ``mse`` (default, the reference code's default): E‖ẑ − z‖², summed over channels, averaged
  over batch and positions.
- ``fisher``: the paper's Fisher-diagonal objective, eq. (10):
      min E[ Δzᵀ diag((∂L/∂z_1)², …, (∂L/∂z_a)²) Δz ],   z = block output,
  with the squared gradient taken in expectation over the FP model's own predictive distribution,
  i.e. the diagonal Fisher information of the FP model w.r.t. z (label-free: calibration images
  come without labels):  F_z(x) = Σ_y p_FP(y|x) (∂ −log p_FP(y|x) / ∂z)².
  This is also the diagonal Gauss–Newton curvature of L = KL(p_FP ‖ p_Q) at the FP point, the
  loss REFERENCE.md names; the *plain* gradient of that KL is zero at the FP point, which is why the
  reference code evaluates it on a partly quantized model and adds 1 to |g|. We tried that variant
  (KL gradient with the current block at round-to-nearest, g²/mean g²): on the SmallResNet/digits
  model it put 84–98 % of the stem's weight on 10 % of the examples and lost 8–11 accuracy points
  against plain MSE at 2 / 1.58 bits, while the FP Fisher lost ≤ 2 or gained. Exact over classes when
  there are ≤ ``fisher_samples`` (default 16) of them, else a Monte-Carlo estimate with that many
  labels drawn from p_FP per example. ω is divided by its mean over the calibration set (mean 1),
  so λ keeps the meaning it has with ``mse``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..models import residual_blocks
from .rounding import Unit, reconstruct

LOSSES = ("mse", "fisher")


class _Stem(nn.Module):
    """conv1 → bn1 → relu [→ maxpool] of a ResNet, holding references to the model's own modules."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.conv1, self.bn1, self.relu = model.conv1, getattr(model, "bn1", nn.Identity()), model.relu
        self.maxpool = getattr(model, "maxpool", nn.Identity())

    def forward(self, x):
        return self.maxpool(self.relu(self.bn1(self.conv1(x))))


def _weights_of(module: nn.Module, prefix: str) -> dict[str, str]:
    return {(f"{n}.weight" if n else "weight"): (f"{prefix}.{n}" if n else prefix)
            for n, m in module.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))}


def block_units(model: nn.Module, layer_names: list[str]) -> list[Unit]:
    """Stem, BasicBlocks, head, then left-over layers, sorted into forward (definition) order."""
    units: list[Unit] = []
    if isinstance(getattr(model, "conv1", None), nn.Conv2d) and isinstance(getattr(model, "relu", None), nn.ReLU):
        exit_ = "maxpool" if hasattr(model, "maxpool") else "relu"
        units.append(Unit("stem", _Stem(model), {"conv1.weight": "conv1"}, None, exit_))
    for name, block in residual_blocks(model):
        units.append(Unit(name, block, _weights_of(block, name), name, name))
    if isinstance(getattr(model, "fc", None), nn.Linear):
        units.append(Unit("head", model.fc, {"weight": "fc"}, "fc", "fc"))
    covered = {q for u in units for q in u.params.values()}
    for name in layer_names:
        if name not in covered:
            layer = model.get_submodule(name)
            units.append(Unit(name, layer, {"weight": name}, name, name))
    order = {n: i for i, n in enumerate(layer_names)}
    units = [u for u in units if any(q in order for q in u.params.values())]
    return sorted(units, key=lambda u: min(order[q] for q in u.params.values() if q in order))


def fisher_weights(fp_model: nn.Module, calib_x: torch.Tensor, unit: Unit, samples: int = 16,
                   generator: torch.Generator | None = None, batch_size: int = 128) -> torch.Tensor:
    """ω = F_z / mean(F_z): diagonal Fisher of the FP model's predictive distribution w.r.t. the unit
    output z, per calibration example and element (see module docstring).

    F_z = Σ_y p(y|x) (∂ −log p(y|x) / ∂z)². Exact (one backward pass per class) when the number of
    classes is ≤ ``samples``; otherwise a Monte-Carlo estimate with ``samples`` labels drawn from
    p(·|x) per example. The gradient is taken at a hook on the unit's exit module and flows
    back through the FP suffix only (examples are independent: BN is folded / in eval mode)."""
    dev = next(fp_model.parameters()).device
    leaf: list[torch.Tensor] = []

    def hook(_m, _inp, out):
        if leaf:
            return None
        z = out.detach().requires_grad_(True)
        leaf.append(z)
        return z

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


def quantize_brecq(model: nn.Module, layer_bits: dict[str, float], cfg, calib_x, device=None) -> dict:
    loss = cfg.get("loss", "mse")
    if loss not in LOSSES:
        raise ValueError(f"quant.loss={loss!r}: allowed: {', '.join(LOSSES)}")
    names = list(layer_bits)
    weight_fn = FisherWeights(int(cfg.get("fisher_samples", 16)), int(cfg.get("seed", 0))) if loss == "fisher" else None
    return reconstruct(model, layer_bits, cfg, calib_x, device, lambda m: block_units(m, names), "BRECQ", weight_fn)


class FisherWeights:
    """``weight_fn`` for ``rounding.reconstruct``: Fisher weights of each unit from the FP model."""

    def __init__(self, samples: int = 16, seed: int = 0):
        self.samples = samples
        self.generator = torch.Generator().manual_seed(seed)

    def __call__(self, qmodel: nn.Module, fp_model: nn.Module, unit: Unit, grids: dict, calib_x: torch.Tensor):
        # only ``unit.exit`` (a module name, the same in both models) is used: the gradient is the FP model's
        return fisher_weights(fp_model, calib_x, unit, self.samples, self.generator)
