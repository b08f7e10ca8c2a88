"""AdaRound's learned rounding, shared by AdaRound and BRECQ (Nagel et al. 2020, Sec. 3.3–3.4).

For a weight W on a per-channel grid (scale s, zero point z, codes in [qmin, qmax]):

    W̃ = s · (clamp(⌊W/s⌋ + h(V) + z, qmin, qmax) − z),                                   (AdaRound eq. 22)
    h(V) = clamp(σ(V)(ζ − γ) + γ, 0, 1),   ζ = 1.1, γ = −0.1      (rectified sigmoid, eq. 23)
    f_reg(V) = Σ_ij 1 − |2h(V_ij) − 1|^β                                                   (eq. 24)

V starts where h(V) equals the fractional part W/s − ⌊W/s⌋, i.e. W̃ = W before clamping, and the
hard rounding that ends the optimisation (h = 1 where V ≥ 0, else 0) is then plain round-to-nearest.
β is annealed linearly from ``b_start`` to ``b_end`` after a warm-up fraction during which the
regulariser is off (``BetaSchedule``). The grid's convention matches ``grid.ChannelGrid``
(q = round(w/s) + z, ŵ = s(q − z)); ternary grids (qmin = −1, qmax = 1, z = 0) need nothing special.
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn
from torch.func import functional_call

from .activation import bypassed
from .activation import calibrate as calibrate_act
from .activation import quantizers as act_quantizers
from .activation import remove as without_act_quant
from .calibration import capture, make_fabric
from .grid import ChannelGrid, init_grid, is_ternary

ZETA, GAMMA = 1.1, -0.1


def rectified_sigmoid(v: torch.Tensor) -> torch.Tensor:
    return torch.clamp(torch.sigmoid(v) * (ZETA - GAMMA) + GAMMA, 0.0, 1.0)


def inverse_rectified_sigmoid(h: torch.Tensor) -> torch.Tensor:
    """V with rectified_sigmoid(V) = h for h ∈ [0, 1) (finite: σ(V) ∈ [1/12, 11/12])."""
    sig = ((h - GAMMA) / (ZETA - GAMMA)).clamp(1e-6, 1 - 1e-6)
    return torch.log(sig) - torch.log1p(-sig)


class AdaRoundWeight(nn.Module):
    """The rounding variables V of one weight tensor and the (soft or hard) quantized weight."""

    def __init__(self, weight: torch.Tensor, grid: ChannelGrid):
        super().__init__()
        w = weight.detach().float()
        shape = (-1,) + (1,) * (w.dim() - 1)
        s = grid.scale.detach().float().to(w.device).view(shape)
        z = grid.zero_point.detach().float().to(w.device).view(shape)
        w_floor = torch.floor(w / s)
        self.register_buffer("scale", s)
        self.register_buffer("zero_point", z)
        self.register_buffer("w_floor", w_floor)
        self.qmin, self.qmax = int(grid.qmin), int(grid.qmax)
        self.V = nn.Parameter(inverse_rectified_sigmoid(w / s - w_floor))

    def h(self) -> torch.Tensor:
        return rectified_sigmoid(self.V)

    def soft_weight(self) -> torch.Tensor:
        q = torch.clamp(self.w_floor + self.h() + self.zero_point, self.qmin, self.qmax)
        return self.scale * (q - self.zero_point)

    @torch.no_grad()
    def hard_codes(self) -> torch.Tensor:
        """Integer codes (as float) after hard rounding: up where V ≥ 0."""
        return torch.clamp(self.w_floor + (self.V >= 0).float() + self.zero_point, self.qmin, self.qmax)

    @torch.no_grad()
    def hard_weight(self) -> torch.Tensor:
        return self.scale * (self.hard_codes() - self.zero_point)

    def regularizer(self, beta: float) -> torch.Tensor:
        """Σ 1 − |2h(V) − 1|^β (summed, as in the paper and its reference setting)."""
        return (1.0 - (2.0 * self.h() - 1.0).abs().pow(beta)).sum()


@dataclass
class BetaSchedule:
    """β of the rounding regulariser: off during the first ``warmup``·iters iterations, then linear
    from ``b_start`` to ``b_end`` (AdaRound Sec. 4 / appendix, reference setting).

    ``settle`` (0 in the papers) reserves the last ``settle``·iters iterations for a settling phase:
    β stays at ``b_end`` and λ grows geometrically to ``settle_gain``·λ, so that the regulariser
    finally outweighs the reconstruction term and every h(V) reaches 0 or 1 while the other
    variables of the unit can still adapt; the hard rounding that follows then keeps the network
    that was optimised (:func:`unit_convergence` measures it)."""

    iters: int
    warmup: float = 0.2
    b_start: float = 20.0
    b_end: float = 2.0
    settle: float = 0.0
    settle_gain: float = 1.0

    @property
    def start(self) -> int:
        return int(self.warmup * self.iters)

    @property
    def settle_start(self) -> int:
        return self.iters - int(round(self.settle * self.iters))

    def active(self, t: int) -> bool:
        return t >= self.start

    def __call__(self, t: int) -> float:
        if t < self.start:
            return self.b_start
        rel = (t - self.start) / max(self.settle_start - self.start, 1)
        return self.b_end + (self.b_start - self.b_end) * max(0.0, 1.0 - rel)

    def lambda_scale(self, t: int) -> float:
        """λ's factor at iteration t: 1, then up to ``settle_gain`` over the settling phase."""
        if t < self.settle_start:
            return 1.0
        return float(self.settle_gain) ** ((t - self.settle_start + 1) / max(self.iters - self.settle_start, 1))


# --------------------------------------------------------------------------------------------------
# The reconstruction loop shared by AdaRound (one layer per unit) and BRECQ (one block per unit).
# --------------------------------------------------------------------------------------------------

@dataclass
class Unit:
    """A piece of the network reconstructed as a whole.

    ``module`` is called as ``module(x)`` (its own forward, so shared sub-modules such as
    BasicBlock's single ReLU keep running twice); ``params`` maps the parameter name *inside*
    ``module`` (e.g. ``"conv2.weight"``) to the qualified name of the quantized layer in the model.
    ``entry`` is the qualified name of the module whose first input is the unit input (None: the
    model input); ``exit`` the module whose output is the unit output (for gradient hooks).
    """

    name: str
    module: nn.Module
    params: dict[str, str]
    entry: str | None
    exit: str


class _Rounders(nn.Module):
    """All rounding variables of one unit; ``forward`` gives the soft weights and the regulariser."""

    def __init__(self, rounders: dict[str, AdaRoundWeight]):
        super().__init__()
        self.keys = list(rounders)
        self.r = nn.ModuleList(rounders.values())

    def forward(self, beta: float | None):
        weights = {k: r.soft_weight() for k, r in zip(self.keys, self.r)}
        reg = sum(r.regularizer(beta) for r in self.r) if beta is not None else None
        return weights, reg


def layer_grid(weight: torch.Tensor, bits: float, cfg):
    method = cfg.get("init", "lp")
    if method in ("absmean", "twn") and not is_ternary(bits):
        method = "lp"  # ternary-only scale inits; other layers (e.g. 8-bit ends) use the L_p search
    return init_grid(weight, bits, bool(cfg.get("symmetric", False)), method, float(cfg.get("p", 2.4)),
                     ternary=cfg.get("ternary", "symmetric"))


@torch.no_grad()
def _batched(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, bs: int = 256) -> torch.Tensor:
    return torch.cat([fn(x[i:i + bs]) for i in range(0, len(x), bs)])


SETTLED_EPS = 0.01   # h within this of 0 or 1: hardening moves the weight by at most 1 % of a grid step


def unsettled_count(h: torch.Tensor, eps: float = SETTLED_EPS) -> int:
    """How many rounding variables h(V) are still strictly inside (eps, 1 − eps): the ones whose hard
    rounding at the end changes the weight the optimisation saw by more than eps of a step."""
    return int(((h > eps) & (h < 1.0 - eps)).sum())


@torch.no_grad()
def reconstruction_loss(module: nn.Module, weights: dict, x: torch.Tensor, y: torch.Tensor,
                        omega: torch.Tensor | None = None, bs: int = 256) -> float:
    """The reconstruction term of the objective (channel sum, mean over the rest) over all of ``x``."""
    total, count = 0.0, 0
    for i in range(0, len(x), bs):
        err = (functional_call(module, weights, (x[i:i + bs],)) - y[i:i + bs]).pow(2)
        if omega is not None:
            err = err * omega[i:i + bs]
        e = err.sum(1)
        total += float(e.sum())
        count += e.numel()
    return total / max(count, 1)


@torch.no_grad()
def unit_convergence(core: "_Rounders", module: nn.Module, x: torch.Tensor, y: torch.Tensor,
                     omega: torch.Tensor | None, iters: int) -> dict:
    """Did the rounding settle before it was hardened? The share of h(V) not yet at 0 or 1, and the
    reconstruction loss on the calibration set with the soft weights that were optimised and with the
    hard weights that are kept (AdaRound Sec. 4: the regulariser drives h to {0, 1} by the end of the
    schedule; where it has not, the kept network is not the optimised one)."""
    n_total = sum(r.V.numel() for r in core.r)
    n_unsettled = sum(unsettled_count(r.h()) for r in core.r)
    soft = {k: r.soft_weight() for k, r in zip(core.keys, core.r)}
    hard = {k: r.hard_weight() for k, r in zip(core.keys, core.r)}
    return {"iters": int(iters), "n_vars": int(n_total), "unsettled": n_unsettled / max(n_total, 1),
            "soft_loss": reconstruction_loss(module, soft, x, y, omega),
            "hard_loss": reconstruction_loss(module, hard, x, y, omega)}


# A unit counts as converged when at most UNSETTLED_MAX of its h(V) are unsettled and hardening raises
# its reconstruction loss by at most HARD_SOFT_MAX: then the network that is kept is, to within 10 % of
# the optimised objective, the one that was optimised (the AdaRound paper's own end state: h ≈ 0 or 1).
UNSETTLED_MAX = 0.01
HARD_SOFT_MAX = 1.1


def convergence_summary(per_target: dict) -> dict:
    """The worst unit over all targets: ``{"units", "max_unsettled", "max_hard_over_soft",
    "converged", "worst"}`` from ``{target: [unit_convergence records]}``; empty when none were recorded."""
    units = [(t, u) for t, recs in per_target.items() for u in recs or []]
    if not units:
        return {}

    def ratio(u):
        return u["hard_loss"] / u["soft_loss"] if u["soft_loss"] > 0 else (1.0 if u["hard_loss"] == 0 else math.inf)

    t_u, u_u = max(units, key=lambda tu: tu[1]["unsettled"])
    t_r, u_r = max(units, key=lambda tu: ratio(tu[1]))
    max_unsettled, max_ratio = float(u_u["unsettled"]), float(ratio(u_r))
    return {"units": len(units), "max_unsettled": max_unsettled, "max_hard_over_soft": max_ratio,
            "converged": bool(max_unsettled <= UNSETTLED_MAX and max_ratio <= HARD_SOFT_MAX),
            "worst": {"unsettled": f"target {t_u} {u_u['unit']}", "hard_over_soft": f"target {t_r} {u_r['unit']}"}}


def convergence_warning(summary: dict) -> str | None:
    """One line when the learned rounding did not settle (None when it did or was not recorded)."""
    if not summary or summary["converged"]:
        return None
    return (f"rounding not settled: up to {100 * summary['max_unsettled']:.1f} % of h(V) unsettled "
            f"({summary['worst']['unsettled']}; limit {100 * UNSETTLED_MAX:g} %), hard/soft reconstruction loss up "
            f"to {summary['max_hard_over_soft']:.2f}x ({summary['worst']['hard_over_soft']}; limit {HARD_SOFT_MAX:g}x); "
            f"raise quant.iters or quant.lr (docs/quantizers.md, 'Convergence')")


def reconstruct(model: nn.Module, layer_bits: dict[str, float], cfg, calib_x: torch.Tensor, device,
                build_units: Callable[[nn.Module], list[Unit]], title: str,
                weight_fn: Callable | None = None, augment: Callable | None = None,
                learn_act_steps: bool = False, act_drop=None, diagnostics: dict | None = None) -> dict:
    """Quantize ``model`` in place, unit by unit in forward order (see AdaRound / BRECQ docstrings).

    Per unit: x̂ = unit input in the already-quantized model, y = unit output of the FP model on
    its FP input (asymmetric reconstruction); minimise
        mean_batch,spatial Σ_channels ω ⊙ (unit(x̂; W̃) − y)²  +  λ Σ_layers f_reg(V)
    with Adam on V (ω = 1, or BRECQ's Fisher weights from ``weight_fn``). The reconstruction term
    sums over the channel axis and averages over the rest, the regulariser sums over all weights
    (the reference setting that λ = 0.01 was tuned for). Then hard rounding, weights written back.

    With ``augment`` (``quant.calib_augment=crop_flip``, the study's code) every step draws a fresh
    random crop + flip of its calibration batch, and the unit's inputs and FP target are recomputed
    for it through both models, instead of being captured once on the fixed images.

    With input quantizers (``quant.act_bits``, src/quant/activation.py) the unit's own quantizers get
    their MSE steps on the quantized prefix before the unit is captured, x̂ is the raw input (the unit
    quantizes it itself, through its layers' hooks) and the FP target comes from a copy without
    quantizers. ``learn_act_steps`` (BRECQ): their steps are learned jointly with V, by Adam at
    ``quant.act_lr`` with cosine decay to 0 (the BRECQ reference setting). ``act_drop`` (QDrop,
    src/quant/qdrop.py) is attached to the unit's quantizers for its loop and told each step's
    quantized-prefix and FP inputs.

    ``diagnostics``: if given, ``diagnostics["convergence"]`` receives one :func:`unit_convergence`
    record per unit (plus its name and layers), measured just before hardening.
    """
    if calib_x is None or len(calib_x) == 0:
        raise ValueError(f"quant.name={cfg.get('name')}: needs calibration images (calib_x is empty)")
    fabric = make_fabric(device)
    dev = fabric.device
    iters, bs = int(cfg.get("iters", 20000)), int(cfg.get("batch_size", 32))
    lam, lr = float(cfg.get("reg_lambda", 0.01)), float(cfg.get("lr", 1e-3))
    sched = BetaSchedule(iters, float(cfg.get("warmup", 0.2)), float(cfg.get("b_start", 20)),
                         float(cfg.get("b_end", 2)), float(cfg.get("settle", 0.0)), float(cfg.get("settle_gain", 1.0)))
    if not 0.0 <= sched.settle <= 1.0 - sched.warmup:
        raise ValueError(f"quant.settle={sched.settle}: allowed: a fraction in [0, 1 - quant.warmup]")
    gen = torch.Generator().manual_seed(int(cfg.get("seed", 0)))

    grad_flags = {n: p.requires_grad for n, p in model.named_parameters()}
    model.requires_grad_(False).eval()
    fp_model = without_act_quant(copy.deepcopy(model)).eval()
    model.to(dev)
    fp_model.to(dev)
    calib_x = calib_x.float()
    q_units, fp_units = build_units(model), build_units(fp_model)
    covered = [q for u in q_units for q in u.params.values()]
    missing = set(layer_bits) - set(covered)
    if missing:
        raise RuntimeError(f"{title}: layers not covered by any unit: {sorted(missing)}")
    modules = dict(model.named_modules())

    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    export: dict = {}
    progress = Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                        TextColumn("loss {task.fields[loss]:.4g}"), TimeElapsedColumn(),
                        disable=not bool(cfg.get("progress", True)))
    with progress:
        for qu, fu in zip(q_units, fp_units):
            names = {k: q for k, q in qu.params.items() if q in layer_bits}
            if not names:
                continue
            act_q = act_quantizers(model, names.values())
            calibrate_act(model, act_q, calib_x, dev)

            def unit_io(x, fu=fu, qu=qu, act_q=act_q):
                """(quantized-prefix input, FP target) of this unit for images ``x``."""
                x_fp = x.to(dev) if fu.entry is None else capture(fp_model, fp_model.get_submodule(fu.entry), x,
                                                                  device=dev, keep_output=False)[0]
                with bypassed(act_q.values()):  # the unit quantizes its own inputs
                    x_q = x.to(dev) if qu.entry is None else capture(model, model.get_submodule(qu.entry), x,
                                                                     device=dev, keep_output=False)[0]
                return x_q, _batched(fu.module, x_fp), x_fp

            x_q, target, x_fp = unit_io(calib_x) if augment is None else (None, None, None)
            x_fp = x_fp if act_drop is not None else None
            grids = {q: layer_grid(modules[q].weight, layer_bits[q], cfg) for q in names.values()}
            omega = weight_fn(model, fp_model, qu, grids, calib_x) if weight_fn is not None else None

            core = _Rounders({k: AdaRoundWeight(modules[q].weight, grids[q]) for k, q in names.items()})
            opt = torch.optim.Adam(core.parameters(), lr=lr)
            rounders, opt = fabric.setup(core, opt)
            steps = [q.step for q in act_q.values()] if learn_act_steps and iters > 0 else []
            for p_ in steps:
                p_.requires_grad_(True)
            act_opt = torch.optim.Adam(steps, lr=float(cfg.get("act_lr", 4e-5))) if steps else None
            act_sched = torch.optim.lr_scheduler.CosineAnnealingLR(act_opt, T_max=iters, eta_min=0.0) \
                if act_opt else None
            if act_drop is not None:
                act_drop.attach(act_q, fp_model)
            task = progress.add_task(f"{title} {qu.name}", total=iters, loss=float("nan"))
            every = max(1, iters // 50)
            n = len(calib_x)
            # all batch indices drawn up front (same sequence as drawing per step) and moved to the
            # device once: no host-to-device copy, hence no implicit sync, inside the loop
            order = torch.stack([torch.randperm(n, generator=gen)[:bs] for _ in range(iters)]).to(dev) \
                if iters > 0 else None
            aug_gen = torch.Generator().manual_seed(int(cfg.get("seed", 0)) + 7_919)
            for t in range(iters):
                idx = order[t]
                beta = sched(t) if sched.active(t) else None
                if augment is None:
                    xb, yb = x_q[idx], target[idx]
                    xf = x_fp[idx] if x_fp is not None else None
                else:  # a fresh augmented batch, pushed through the (partly quantized) prefix and the FP model
                    xb, yb, xf = unit_io(augment(calib_x[idx.cpu()], aug_gen))
                if act_drop is not None:
                    act_drop.step(xb, xf, fu.module)
                weights, reg = rounders(beta)
                out = functional_call(qu.module, weights, (xb,))
                err = (out - yb).pow(2)
                if omega is not None:
                    err = err * omega[idx]
                rec = err.sum(1).mean()
                loss = rec + lam * sched.lambda_scale(t) * reg if reg is not None else rec
                opt.zero_grad(set_to_none=True)
                if act_opt is not None:
                    act_opt.zero_grad(set_to_none=True)
                fabric.backward(loss)
                opt.step()
                if act_opt is not None:
                    act_opt.step()
                    act_sched.step()
                if (t + 1) % every == 0 or t + 1 == iters:  # host sync only every `every` steps
                    rec_value = float(rec.detach())
                    if not math.isfinite(rec_value):
                        raise FloatingPointError(f"{title} {qu.name}: non-finite reconstruction loss at "
                                                 f"iteration {t + 1}")
                    progress.update(task, completed=t + 1, loss=rec_value)
            if act_drop is not None:  # measured and kept as evaluated: every activation quantized
                act_drop.detach()
            if diagnostics is not None:
                if x_q is None:  # augmented draws: measure on the fixed calibration images
                    x_q, target, _ = unit_io(calib_x)
                rec = unit_convergence(core, qu.module, x_q, target, omega, iters)
                diagnostics.setdefault("convergence", []).append({"unit": qu.name, "layers": list(names.values()),
                                                                  **rec})
            with torch.no_grad():
                for k, r in zip(core.keys, core.r):
                    q = names[k]
                    codes = r.hard_codes()
                    modules[q].weight.copy_(grids[q].dequantize(codes).to(modules[q].weight))
                    export[q] = grids[q].export(codes)
            for p_ in steps:
                p_.requires_grad_(False)
            del x_q, target, omega, x_fp
    for n_, p in model.named_parameters():
        p.requires_grad_(grad_flags.get(n_, True))
    model.cpu().eval()
    return export
