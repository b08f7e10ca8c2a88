"""AdaRound and BRECQ (src/quant/rounding.py, adaround.py, brecq.py) on a small trained ResNet.

CPU only; one module-scoped SmallResNet trained for a few seconds on scikit-learn digits.

Budget of the reconstructions compared against RTN: ``ITERS`` = 300 Adam steps at ``LR`` = 1e-2.
Adam moves each rounding variable V by about lr per step, and V starts inside ±2.4 (the logit of
h ∈ [1/12, 11/12]); at the default lr 1e-3 and 200 steps V travels ≤ 0.2 and about 1 stem weight
in 144 flips, so "beats RTN" would be decided by float noise. 300 × 1e-2 allows a travel of 3
(as 3000 steps at 1e-3), enough for any weight to change its rounding, and the effects below are
then large on every kernel tried (torch AVX-512, AVX2 and ``ATEN_CPU_CAPABILITY=default``): summed
layer error 0.22–0.25 × RTN's (AdaRound, 2 bits), 0.26–0.58 × (BRECQ's three losses).
"""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf
from torch import nn
from torch.func import functional_call

from _helpers import digits_resnet
from src.models import residual_blocks
from src.quant import quantize
from src.quant.adaround import layer_units, quantize_adaround, relu_followed_layers
from src.quant.bn_fold import fold_batchnorm
from src.quant.brecq import block_units, fisher_weights, kl_grad_weights, quantize_brecq
from src.quant.calibration import capture
from src.quant.grid import ChannelGrid, init_grid
from src.quant.policy import layer_bits as policy_layer_bits
from src.quant.rounding import AdaRoundWeight, BetaSchedule, rectified_sigmoid
from src.quant.rtn import quantize_rtn

ITERS, LR = 300, 1e-2  # see the module docstring


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    model, x, xte, data = digits_resnet(str(tmp_path_factory.mktemp("data")), epochs=8)
    with torch.no_grad():
        acc = (model(xte).argmax(1) == data.y_test).float().mean().item()
    assert acc > 0.9
    return model, x[:512], xte, data.y_test


def cfg(name: str, **kw):
    base = {"name": name, "iters": ITERS, "batch_size": 32, "lr": LR, "reg_lambda": 0.01, "warmup": 0.2,
            "b_start": 20, "b_end": 2, "init": "lp", "p": 2.4, "symmetric": False, "fold_bn": True,
            "loss": "mse", "progress": False, "seed": 0}
    base.update(kw)
    return OmegaConf.create(base)


def folded(model):
    m = copy.deepcopy(model).eval()
    fold_batchnorm(m)
    return m, policy_layer_bits(m, 2, "uniform")


def run(method, model, bits, calib, **kw):
    m, _ = folded(model)
    lb = policy_layer_bits(m, bits, "uniform")
    fn = {"rtn": quantize_rtn, "adaround": quantize_adaround, "brecq": quantize_brecq}[method]
    export = fn(m, lb, cfg(method, **kw), calib, "cpu")
    return m, export, lb


@pytest.fixture(scope="module")
def results(trained):
    model, calib, _, _ = trained
    return {key: run(method, model, bits, calib, **kw) for key, method, bits, kw in [
        ("rtn2", "rtn", 2, {}), ("ada2", "adaround", 2, {}), ("brecq2", "brecq", 2, {}),
        ("fisher2", "brecq", 2, {"loss": "fisher"}), ("fisherkl2", "brecq", 2, {"loss": "fisher_kl"}),
        ("rtn3", "rtn", 1.58, {}),
        ("ada3", "adaround", 1.58, {}), ("brecq3", "brecq", 1.58, {})]}


# ---------------------------------------------------------------------------------------- rounding

def test_rounding_init_is_identity_and_hard_is_nearest():
    torch.manual_seed(0)
    w = torch.randn(8, 4, 3, 3)
    grid = init_grid(w, 4, False, "lp", 2.4)
    r = AdaRoundWeight(w, grid)
    inside = (grid.codes(w) > grid.qmin) & (grid.codes(w) < grid.qmax)
    assert torch.allclose(r.soft_weight()[inside], w[inside], atol=1e-5)
    assert torch.equal(r.hard_codes(), grid.codes(w))
    h = rectified_sigmoid(torch.tensor([-100.0, 0.0, 100.0]))
    assert h.tolist() == [0.0, 0.5, 1.0]


def test_beta_schedule():
    s = BetaSchedule(100, 0.2, 20, 2)
    assert not s.active(19) and s.active(20)
    assert s(20) == 20 and abs(s(60) - 11) < 1e-9 and abs(s(100) - 2) < 1e-9


# ---------------------------------------------------------------------------------------- grids

METHOD_OF = {"ada2": ("adaround", "mse"), "brecq2": ("brecq", "mse"), "fisher2": ("brecq", "fisher"),
             "fisherkl2": ("brecq", "fisher_kl"), "ada3": ("adaround", "mse"), "brecq3": ("brecq", "mse")}


def _export_grid(e) -> ChannelGrid:
    return ChannelGrid(e["scale"], e["zero_point"].float(), e["qmin"], e["qmax"], e["bits"])


def _unit_objectives(fp: nn.Module, q: nn.Module, export: dict, lb, method: str, loss: str,
                     calib: torch.Tensor) -> dict[str, tuple[float, float]]:
    """Per unit (layer for AdaRound, block for BRECQ): the reconstruction term the method minimises,
    Σ ω ⊙ (unit(x̂; Ŵ) − unit_FP(x))², with the learned rounding Ŵ and with nearest rounding of the FP
    weights on the same grid, both on the same input x̂ (the unit's input in the learned model; the
    prefix is the same in both). ω = 1 (mse), the FP Fisher (fisher, exact: 10 classes) or the squared
    KL gradient of the model whose prefix is quantized, unit at nearest, suffix FP (fisher_kl)."""
    names = list(lb)
    build = layer_units if method == "adaround" else block_units
    fus, qus = build(fp, names), build(q, names)
    out = {}
    for i, (fu, qu) in enumerate(zip(fus, qus)):
        grids = {n: _export_grid(export[n]) for n in qu.params.values()}
        nearest = {k: grids[n].fake_quant(fp.get_submodule(n).weight.detach()) for k, n in qu.params.items()}
        omega = 1.0
        if loss == "fisher":
            omega = fisher_weights(fp, calib, fu, samples=16)
        elif loss == "fisher_kl":
            state = copy.deepcopy(fp)  # the model as the loop saw it before this unit: prefix learned, rest FP
            for u in qus[:i]:
                for n in u.params.values():
                    state.get_submodule(n).weight.data.copy_(q.get_submodule(n).weight)
            omega = kl_grad_weights(state, fp, calib, build(state, names)[i], grids)
        x = calib if fu.entry is None else capture(fp, fp.get_submodule(fu.entry), calib, keep_output=False)[0]
        xq = calib if qu.entry is None else capture(q, q.get_submodule(qu.entry), calib, keep_output=False)[0]
        with torch.no_grad():
            y = fu.module(x)
            learned = (omega * (qu.module(xq) - y).pow(2)).sum().item()
            near = (omega * (functional_call(qu.module, nearest, (xq,)) - y).pow(2)).sum().item()
        out[qu.name] = (learned, near)
    return out


@pytest.mark.parametrize("key", ["ada2", "brecq2", "fisher2", "fisherkl2", "ada3", "brecq3"])
def test_weights_on_grid_and_match_export(trained, results, key):
    """Export = weights, on the grid; and the rounding is learned, not nearest.

    Learned codes are the floor or the ceiling of the FP weight's grid position (AdaRound only
    chooses up or down). Against nearest rounding of the same FP weights on the same grid (the hard
    rounding of the initial V, where the optimisation starts):
    - they differ on ≥ 3 % of all quantized weights (measured 10.6–14.7 % for the six
      configurations on AVX-512, AVX2 and ``ATEN_CPU_CAPABILITY=default``, and with three other
      training seeds on AVX2, and with 2 threads: ≥ 3.5× margin);
    - the reconstruction term the method minimises (``_unit_objectives``), summed over units, is
      ≤ 0.85 × nearest's on the same inputs (measured 0.28–0.70, the worst at 1.58 bits). Not per
      unit: hard rounding after the annealing is not guaranteed below nearest for every unit, and
      the 144-weight stem under ``fisher_kl`` (whose ω puts most weight on few examples) came
      within 0.97 of it for one training seed.
    """
    model, calib, _, _ = trained
    m, export, lb = results[key]
    fp, _ = folded(model)
    modules = dict(m.named_modules())
    assert set(export) == set(lb)
    for name, bits in lb.items():
        w = modules[name].weight.detach()
        e = export[name]
        shape = (-1,) + (1,) * (w.dim() - 1)
        deq = e["scale"].view(shape) * (e["codes"].float() - e["zero_point"].float().view(shape))
        assert torch.allclose(w, deq, atol=1e-6), name
        assert int(e["codes"].min()) >= e["qmin"] and int(e["codes"].max()) <= e["qmax"]
        for c in range(w.shape[0]):
            vals = torch.unique(w[c])
            if bits == 1.58:
                s = e["scale"][c]
                allowed = torch.stack([-s, torch.zeros(()), s])
                assert all(torch.isclose(v, allowed, atol=1e-6).any() for v in vals), (name, c)
                assert e["qmin"] == -1 and e["qmax"] == 1 and int(e["zero_point"][c]) == 0
            else:
                assert len(vals) <= 2 ** int(bits)

    flipped = total = 0
    for name in lb:
        wf = fp.get_submodule(name).weight.detach()
        g = _export_grid(export[name])
        shape = (-1,) + (1,) * (wf.dim() - 1)
        below = torch.floor(wf / g.scale.view(shape)) + g.zero_point.view(shape)
        codes = export[name]["codes"].float()
        assert torch.all((codes == below.clamp(g.qmin, g.qmax)) | (codes == (below + 1).clamp(g.qmin, g.qmax))), name
        flipped += int((codes != g.codes(wf)).sum())
        total += codes.numel()
    assert flipped / total >= 0.03, (flipped, total)

    method, loss = METHOD_OF[key]
    obj = _unit_objectives(fp, m, export, lb, method, loss, calib)
    assert sum(v[0] for v in obj.values()) <= 0.85 * sum(v[1] for v in obj.values()), obj


def test_model_comes_back_on_cpu_in_eval(results):
    for m, _, _ in results.values():
        assert not m.training and all(p.device.type == "cpu" for p in m.parameters())


# ---------------------------------------------------------------------------------------- errors

def _layer_errors(fp: nn.Module, q: nn.Module, calib: torch.Tensor, names) -> dict[str, float]:
    """‖f_a(W x) − f_a(Ŵ x̂)‖² per layer: x from the FP model, x̂ from the quantized one."""
    relu = relu_followed_layers(fp)
    out = {}
    for name in names:
        lf, lq = fp.get_submodule(name), q.get_submodule(name)
        x = capture(fp, lf, calib, keep_output=False)[0]
        xq = capture(q, lq, calib, keep_output=False)[0]
        with torch.no_grad():
            a, b = lf(x), lq(xq)
            if name in relu:
                a, b = a.relu(), b.relu()
        out[name] = (a - b).pow(2).sum().item()
    return out


def _block_errors(fp: nn.Module, q: nn.Module, calib: torch.Tensor, names) -> dict[str, float]:
    out = {}
    for uf, uq in zip(block_units(fp, names), block_units(q, names)):
        x = calib if uf.entry is None else capture(fp, fp.get_submodule(uf.entry), calib, keep_output=False)[0]
        xq = calib if uq.entry is None else capture(q, q.get_submodule(uq.entry), calib, keep_output=False)[0]
        with torch.no_grad():
            out[uf.name] = (uf.module(x) - uq.module(xq)).pow(2).sum().item()
    return out


def test_adaround_beats_rtn_summed_over_layers(trained, results):
    """2 bits: Σ_layers ‖f_a(Wx) − f_a(Ŵx̂)‖² of AdaRound ≤ 0.5 × RTN's.

    Measured 0.22–0.25 on AVX-512, AVX2 and ``ATEN_CPU_CAPABILITY=default`` and ≤ 0.32 with three other
    training seeds (AVX2): ≥ 1.6× margin. A sum, not each layer: a layer's error also depends on its
    input x̂, which comes from a different prefix in the two models, so per-layer order is not
    something AdaRound promises (its own per-layer objective is checked against nearest rounding in
    ``test_weights_on_grid_and_match_export``)."""
    model, calib, _, _ = trained
    fp, lb = folded(model)
    rtn = _layer_errors(fp, results["rtn2"][0], calib, lb)
    ada = _layer_errors(fp, results["ada2"][0], calib, lb)
    assert sum(ada.values()) <= 0.5 * sum(rtn.values()), (ada, rtn)


@pytest.mark.parametrize("key,bound", [("brecq2", 0.6), ("fisher2", 0.6), ("fisherkl2", 0.8)])
def test_brecq_beats_rtn_summed_over_blocks(trained, results, key, bound):
    """2 bits: Σ_blocks ‖z − ẑ‖² (block outputs, FP input vs quantized prefix) of BRECQ ≤ bound × RTN's.

    Measured ratios (AVX-512 / AVX2 / ``ATEN_CPU_CAPABILITY=default``; worst of three other training
    seeds on AVX2): mse 0.27 / 0.26 / 0.26; 0.31 — fisher 0.34 / 0.38 / 0.29; 0.38 — fisher_kl
    0.49 / 0.58 / 0.51; 0.54. Bounds 0.6 / 0.6 / 0.8 keep a ≥ 1.37× margin. fisher_kl's looser bound:
    it minimises a KL-weighted error, not this unweighted one. Summed, as for AdaRound: each
    block's input differs between the two models."""
    model, calib, _, _ = trained
    fp, lb = folded(model)
    rtn = _block_errors(fp, results["rtn2"][0], calib, lb)
    br = _block_errors(fp, results[key][0], calib, lb)
    assert list(br) == ["stem", "layer1.0", "layer2.0", "head"]
    assert sum(br.values()) <= bound * sum(rtn.values()), (br, rtn)


@pytest.mark.parametrize("bits,keys", [(2, ("ada2", "brecq2", "fisher2", "fisherkl2")), (1.58, ("ada3", "brecq3"))])
def test_accuracy_beats_rtn(trained, results, bits, keys):
    """Test accuracy > RTN's + 0.05. Measured (AVX-512, AVX2, ``ATEN_CPU_CAPABILITY=default``, 1 and 2
    threads): RTN 0.23–0.51 at 2 bits and 0.19–0.20 at 1.58; the methods 0.83–0.98 (the lowest
    fisher_kl at 2 bits), ≥ 0.3 above RTN each time."""
    _, _, xte, yte = trained
    rtn_key = "rtn2" if bits == 2 else "rtn3"

    def acc(m):
        with torch.no_grad():
            return (m(xte).argmax(1) == yte).float().mean().item()
    for k in keys:
        assert acc(results[k][0]) > acc(results[rtn_key][0]) + 0.05, k


# ---------------------------------------------------------------------------------------- structure

def test_brecq_keeps_post_addition_relu(trained, results):
    """BasicBlock's one ReLU runs twice; BRECQ must not swap it (else the post-add ReLU vanishes)."""
    _, calib, _, _ = trained
    m = results["brecq2"][0]
    for name, block in residual_blocks(m):
        assert isinstance(block.relu, nn.ReLU)
        out = capture(m, block, calib, keep_output=True)[1]
        assert (out >= 0).all() and (out == 0).any(), name
    relus = [n for n, mod in m.named_modules() if isinstance(mod, nn.ReLU)]
    assert relus == ["relu", "layer1.0.relu", "layer2.0.relu"]

    def block_fwd(b, x):
        y = F.relu(F.conv2d(x, b.conv1.weight, b.conv1.bias, b.conv1.stride, b.conv1.padding))
        y = F.conv2d(y, b.conv2.weight, b.conv2.bias, b.conv2.stride, b.conv2.padding)
        idn = x if b.downsample is None else F.conv2d(x, b.downsample[0].weight, b.downsample[0].bias,
                                                       b.downsample[0].stride)
        return F.relu(y + idn)

    with torch.no_grad():
        x = calib[:64]
        h = F.relu(F.conv2d(x, m.conv1.weight, m.conv1.bias, 1, 1))
        h = block_fwd(m.layer2[0], block_fwd(m.layer1[0], h))
        manual = F.linear(h.mean((2, 3)), m.fc.weight, m.fc.bias)
        assert torch.allclose(m(x), manual, atol=1e-4)


def test_determinism(trained):
    model, calib, _, _ = trained
    a = run("brecq", model, 2, calib[:128], iters=40)[0]
    b = run("brecq", model, 2, calib[:128], iters=40)[0]
    for (n, p), (_, q) in zip(a.named_parameters(), b.named_parameters()):
        assert torch.equal(p, q), n


def test_quantize_interface_and_validation(trained):
    model, calib, _, _ = trained
    res = quantize(model, 4, cfg("adaround", iters=20), "8bit_ends", calib[:64], device="cpu")
    assert res.layer_bits["conv1"] == 8.0 and res.layer_bits["layer1.0.conv1"] == 4.0
    assert set(res.export) == set(res.layer_bits)
    assert all(not isinstance(mod, nn.BatchNorm2d) for mod in res.model.modules())
    with pytest.raises(ValueError, match="quant.loss"):
        quantize(model, 2, cfg("brecq", loss="hessian"), "uniform", calib[:64], device="cpu")
    with pytest.raises(ValueError, match="calibration"):
        quantize(model, 2, cfg("brecq"), "uniform", calib[:0], device="cpu")


def test_fisher_weights_exact_vs_monte_carlo(trained):
    """The Monte-Carlo Fisher (labels drawn from p_FP, 8 per call < 10 classes) averages to the exact one.

    Correlation over the 32·16·8·8 elements of the exact ω and the mean of R = 40 MC calls ≥ 0.97.
    The MC noise is ruled by the rarest classes: ∂(−log p_y)/∂logits = p − e_y is ≈ 0 for the
    predicted class and ≈ 1 for a class of tiny p_y, so with the trained model's p (min ≈ 1e-7)
    F is carried by labels almost never drawn and the correlation at 160 labels was 0.85–0.94
    depending on the machine. The logits are therefore divided by 4 (fc scaled: every p_y ≥ 0.008,
    the same code path); the noise-to-signal variance ratio k/(8R) then has k ≈ 2 (measured on
    AVX-512, AVX2, ``ATEN_CPU_CAPABILITY=default``), i.e. an expected correlation ≈ 0.997 at R = 40;
    0.97 would need k ≥ 19."""
    model, calib, _, _ = trained
    fp, lb = folded(model)
    with torch.no_grad():
        fp.fc.weight.mul_(0.25)
        fp.fc.bias.mul_(0.25)
    unit = block_units(fp, list(lb))[1]  # layer1.0
    exact = fisher_weights(fp, calib[:32], unit, samples=16)
    gen = torch.Generator().manual_seed(0)
    mc = torch.stack([fisher_weights(fp, calib[:32], unit, samples=8, generator=gen) for _ in range(40)]).mean(0)
    assert exact.shape == mc.shape == (32, 16, 8, 8)
    assert abs(exact.mean().item() - 1) < 1e-4 and (exact >= 0).all()
    assert torch.corrcoef(torch.stack([exact.flatten(), mc.flatten()]))[0, 1] >= 0.97


@pytest.mark.parametrize("unit_index", [0, 1, 2, 3])
def test_fisher_kl_weights(trained, unit_index):
    """fisher_kl: ω = (∂KL(p_Q‖p_FP)/∂z)² / mean, prefix quantized, current block at RTN, suffix FP."""
    model, calib, _, _ = trained
    fp, lb = folded(model)
    x = calib[:64]
    q = copy.deepcopy(fp)
    units = block_units(q, list(lb))
    # quantize the prefix (units before unit_index) to nearest, as an already-reconstructed prefix
    rtn_q, _ = folded(model)
    quantize_rtn(rtn_q, lb, cfg("rtn"), None, "cpu")
    for u in units[:unit_index]:
        for name in u.params.values():
            q.get_submodule(name).weight.data.copy_(rtn_q.get_submodule(name).weight)
    unit = units[unit_index]
    grids = {n: init_grid(q.get_submodule(n).weight, 2, False, "lp", 2.4) for n in unit.params.values()}
    before = {n: p.clone() for n, p in q.named_parameters()}
    w = kl_grad_weights(q, fp, x, unit, grids, batch_size=24)  # batches of uneven size on purpose
    for n, p in q.named_parameters():  # the unit's weights are restored
        assert torch.equal(p, before[n]), n
    out = capture(fp, fp.get_submodule(unit.exit), x, keep_output=True)[1]
    assert w.shape == out.shape
    assert torch.isfinite(w).all() and (w >= 0).all()
    assert abs(w.mean().item() - 1) < 1e-4
    assert w.std() > 0

    # independent check on one example: float64 autograd of the KL itself w.r.t. the unit output.
    # Tolerance relative to the largest weight: ω is a float32 forward + backward through ≤ 5 layers,
    # and elements near 0 carry the absolute error of the large ones (a relative test failed on one
    # element in 1024 on AVX2). Measured max|Δ| / max|ω| ≤ 6.4e-6 over the four units on AVX-512,
    # AVX2 and ``ATEN_CPU_CAPABILITY=default``; 1e-4 keeps a 15× margin, while the other KL direction,
    # a missing square or normalisation changes ω by a large fraction of max|ω|.
    for n in unit.params.values():
        lay = q.get_submodule(n)
        lay.weight.data.copy_(grids[n].dequantize(grids[n].codes(lay.weight)))
    q64, fp64, x64 = copy.deepcopy(q).double(), copy.deepcopy(fp).double(), x[:1].double()
    z = capture(q64, q64.get_submodule(unit.exit), x64, keep_output=True)[1].clone().requires_grad_(True)
    h = q64.get_submodule(unit.exit).register_forward_hook(lambda _m, _i, _o: z)
    try:
        logq = F.log_softmax(q64(x64), 1)
    finally:
        h.remove()
    logp = F.log_softmax(fp64(x64), 1).detach()
    (g,) = torch.autograd.grad((logq.exp() * (logq - logp)).sum(), z)
    ref = g.pow(2) / g.pow(2).mean()
    raw = kl_grad_weights(q, fp, x[:1], unit, {}, batch_size=1)  # grids={} keeps the weights set above
    assert (raw.double() - ref).abs().max() <= 1e-4 * ref.abs().max(), (raw.double() - ref).abs().max()


def test_fisher_kl_falls_back_to_mse_when_nothing_changes(trained):
    """p_Q = p_FP exactly (no prefix, no unit layers changed): all gradients zero → ω = 1."""
    model, calib, _, _ = trained
    fp, lb = folded(model)
    unit = block_units(fp, list(lb))[1]
    w = kl_grad_weights(copy.deepcopy(fp), fp, calib[:16], unit, {})
    assert torch.equal(w, torch.ones_like(w))
