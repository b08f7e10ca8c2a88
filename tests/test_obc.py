"""OBC / OBQ (src/quant/obc.py): grid membership, export, optimality on tiny problems, robustness,
and that it beats RTN on a trained SmallResNet (digits)."""
from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

from src.data import load_dataset, normalize
from src.models import SmallResNet
from src.quant import quantize
from src.quant.bn_fold import fold_batchnorm
from src.quant.grid import ChannelGrid, init_grid
from src.quant.obc import layer_hessian, obq_layer, prepare_hessian, quantize_obc, reconstruction_error
from src.quant.policy import quantizable_layers


def obc_cfg(**kw):
    base = dict(name="obc", damp=0.01, row_batch="auto", block=32, outlier=True, init="lp", p=2.4, symmetric=False,
                fold_bn=True, sequential=True, fp_target=True, calib_batch=128, progress=False)
    base.update(kw)
    return OmegaConf.create(base)


def rtn_cfg():
    return OmegaConf.create(dict(name="rtn", init="lp", p=2.4, symmetric=False, fold_bn=True))


@pytest.fixture(scope="module")
def trained():
    """SmallResNet trained briefly (plain SGD) on scikit-learn digits; normalised train/test tensors."""
    torch.manual_seed(0)
    data = load_dataset(OmegaConf.create({"name": "digits"}), "outputs/data")
    xtr, xte = normalize(data.x_train, data.mean, data.std), normalize(data.x_test, data.mean, data.std)
    model = SmallResNet(10, 1, 16)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    epochs = 6
    for ep in range(epochs):
        model.train()
        perm = torch.randperm(len(xtr))
        for i in range(0, len(perm), 64):
            b = perm[i:i + 64]
            loss = F.cross_entropy(model(xtr[b]), data.y_train[b])
            opt.zero_grad()
            loss.backward()
            opt.step()
        for g in opt.param_groups:
            g["lr"] = 0.05 * (1 - (ep + 1) / epochs)
    model.eval()
    calib = xtr[torch.randperm(len(xtr), generator=torch.Generator().manual_seed(1))[:512]]
    return model, calib, xte, data.y_test


def accuracy(model, x, y):
    with torch.no_grad():
        return (model(x).argmax(1) == y).float().mean().item()


@pytest.fixture(scope="module")
def quantized(trained):
    model, calib, _, _ = trained
    return {b: quantize(model, b, obc_cfg(), "uniform", calib) for b in (4.0, 2.0, 1.58)}


@pytest.mark.parametrize("bits", [4.0, 2.0, 1.58])
def test_weights_on_grid_and_export(quantized, bits):
    res = quantized[bits]
    layers = dict(quantizable_layers(res.model))
    assert set(res.export) == set(layers)
    for name, layer in layers.items():
        w = layer.weight.detach().reshape(layer.weight.shape[0], -1)
        e = res.export[name]
        q = e["codes"].float().reshape(w.shape[0], -1)
        assert e["qmin"] <= q.min() and q.max() <= e["qmax"]
        rebuilt = e["scale"].view(-1, 1) * (q - e["zero_point"].float().view(-1, 1))
        assert torch.equal(w, rebuilt), name                      # weights == dequantize(export codes)
        for c in range(w.shape[0]):
            assert len(torch.unique(w[c])) <= (3 if bits == 1.58 else 2 ** int(bits))
        if bits == 1.58:
            delta = e["scale"].view(-1, 1)
            assert e["qmin"] == -1 and e["qmax"] == 1 and torch.all(e["zero_point"] == 0)
            assert torch.all((w == 0) | (w == delta) | (w == -delta))
            assert set(q.unique().tolist()) == {-1.0, 0.0, 1.0}    # all three levels, 0 included
        assert torch.isfinite(w).all()


def test_obc_beats_rtn_per_layer(trained):
    """On the FP inputs of every layer, OBQ's ‖WX − ŴX‖² is below RTN's on the same fixed grid."""
    model, calib, _, _ = trained
    fmodel = fold_batchnorm(__import__("copy").deepcopy(model)).eval()
    for name, layer in quantizable_layers(fmodel):
        H = layer_hessian(fmodel, layer, calib)
        W = layer.weight.detach().reshape(layer.weight.shape[0], -1)
        for bits in (4.0, 2.0, 1.58):
            grid = init_grid(W, bits)
            e_rtn = reconstruction_error(W, grid.fake_quant(W), H)
            codes, _ = obq_layer(W, H, grid, damp=0.01)
            e_obc = reconstruction_error(W, grid.dequantize(codes), H)
            assert e_obc < e_rtn, (name, bits, e_obc, e_rtn)


def test_obc_model_accuracy_beats_rtn(trained, quantized):
    model, calib, xte, yte = trained
    fp = accuracy(model, xte, yte)
    rtn2 = accuracy(quantize(model, 2.0, rtn_cfg(), "uniform", calib).model, xte, yte)
    obc2 = accuracy(quantized[2.0].model, xte, yte)
    assert obc2 > rtn2 + 0.1 and obc2 > fp - 0.05, (fp, rtn2, obc2)
    assert accuracy(quantized[4.0].model, xte, yte) > fp - 0.02


def test_two_weight_row_matches_brute_force():
    """One output row, two weights, 2-bit grid {0,1,2,3} (s = 1, z = 0), H = [[2, 1.6], [1.6, 2]].

    Why greedy is exact here. Step 2: once ŵ_q is fixed, the objective is a 1-D convex quadratic
    H_pp(ŵ_p − w_p*)² + const in the other weight with w_p* = w_p − (H_pq/H_pp)(ŵ_q − w_q), which is the
    OBS-compensated value; its minimiser over a uniform clamped grid is the nearest level, i.e. the
    rounded compensated value OBQ takes. Step 1: for any fixed ŵ_2 = v the objective is at least
    S·(w_2 − v)² with the Schur complement S = 2 − 1.6²/2 = 0.72. Greedy (equal [H⁻¹]_qq, so the smaller
    rounding error goes first) fixes ŵ_2 = 1 (|1.3 − 1| < |1.45 − 1|), compensates w_1 to 1.45 + 0.8·0.3
    = 1.69 → 2, total 0.257. Every other v has S·(1.3 − v)² ≥ 0.72·0.7² = 0.353 > 0.257, and v = 1 with
    the optimal ŵ_1 is what greedy found, so (2, 1) is the global optimum. RTN gives (1, 1): 1.017.
    """
    grid = ChannelGrid(torch.tensor([1.0]), torch.tensor([0.0]), 0, 3, 2.0)
    H = torch.tensor([[2.0, 1.6], [1.6, 2.0]], dtype=torch.float64)
    w = torch.tensor([[1.45, 1.3]])

    def f(q):
        d = (w[0] - torch.as_tensor(q, dtype=torch.float32)).double()
        return float(d @ H @ d)

    codes, _ = obq_layer(w, H, grid, damp=0.0)
    best = min(itertools.product(range(4), repeat=2), key=f)
    assert tuple(codes[0].tolist()) == best == (2, 1)
    assert f(codes[0]) == pytest.approx(0.257, abs=1e-6)
    assert f(grid.codes(w)[0]) > f(best) + 0.5                     # RTN is far from it


def test_second_weight_is_conditionally_optimal_random():
    """Random 2-weight rows: given OBQ's first choice, its second weight is the brute-force best."""
    gen = torch.Generator().manual_seed(0)
    grid = ChannelGrid(torch.tensor([0.5]), torch.tensor([1.0]), 0, 3, 2.0)  # levels {−0.5, 0, 0.5, 1}
    for _ in range(50):
        A = torch.randn(2, 2, generator=gen, dtype=torch.float64)
        H = A @ A.T + 0.1 * torch.eye(2, dtype=torch.float64)
        w = (torch.rand(1, 2, generator=gen) * 1.6 - 0.6)
        codes, _ = obq_layer(w, H, grid, damp=0.0, outlier=False)
        wh = grid.dequantize(codes)[0]
        Hinv = torch.linalg.inv(H)
        err = (grid.fake_quant(w)[0] - w[0]) ** 2 / torch.diagonal(Hinv)
        first = int(err.argmin())
        other = 1 - first
        levels = grid.dequantize(torch.arange(0.0, 4.0).view(1, -1))[0]

        def f(a, b):
            x = torch.empty(2)
            x[first], x[other] = a, b
            d = (w[0] - x).double()
            return float(d @ H @ d)

        assert wh[first] == grid.fake_quant(w)[0, first]
        best_other = min(levels.tolist(), key=lambda b: f(float(wh[first]), b))
        assert f(float(wh[first]), float(wh[other])) <= f(float(wh[first]), best_other) + 1e-9


def test_batched_lazy_loop_equals_plain_obq():
    """Row batching, lazy blocks and compaction give the same codes as the textbook per-row loop."""
    torch.manual_seed(0)
    d, rows = 24, 6
    X = torch.randn(60, d) @ torch.randn(d, d)
    H = 2 * (X.T @ X).double()
    W = torch.randn(rows, d)
    grid = init_grid(W, 2.0)
    Hd, Hinv, W0 = prepare_hessian(H, W, 0.01)
    ref = torch.empty(rows, d)
    for i in range(rows):                                          # plain OBQ, float64, full H⁻¹ downdates
        w, Hi, done = W0[i].double().clone(), Hinv.clone(), torch.zeros(d, dtype=torch.bool)
        s, z = grid.scale[i].double(), grid.zero_point[i].double()
        for _ in range(d):
            q = torch.clamp(torch.round(w / s) + z, grid.qmin, grid.qmax)
            err2 = (s * (q - z) - w) ** 2
            score = err2 / torch.diagonal(Hi)
            score = torch.where(err2 > (0.5 * s * (1 + 1e-4)) ** 2, -score, score)
            score[done] = float("inf")
            p = int(score.argmin())
            ref[i, p] = q[p]
            w -= Hi[:, p] * (w[p] - s * (q[p] - z)) / Hi[p, p]
            Hi -= torch.outer(Hi[:, p], Hi[p, :]) / Hi[p, p]
            done[p] = True
    for row_batch, block in ((1, 1), (4, 5), (6, 32)):
        codes, _ = obq_layer(W, H, grid, damp=0.01, row_batch=row_batch, block=block)
        assert torch.equal(codes, ref), (row_batch, block)


def test_no_nan_with_rank_deficient_calibration(trained):
    """Two calibration images (n ≪ d for every conv), and damp = 0: still finite and on the grid."""
    model, calib, _, _ = trained
    for damp in (0.01, 0.0):
        res = quantize(model, 2.0, obc_cfg(damp=damp), "uniform", calib[:2])
        for _, layer in quantizable_layers(res.model):
            assert torch.isfinite(layer.weight).all()


def test_dead_input_channel_gets_zero_weight():
    """A constant-zero input channel: H_ii = 0 → those weights are set to 0 and stay finite."""
    torch.manual_seed(0)
    model = SmallResNet(10, 2, 8).eval()
    x = torch.randn(16, 2, 8, 8)
    x[:, 1] = 0.0
    res = quantize(model, 2.0, obc_cfg(), "uniform", x)
    w = res.model.conv1.weight
    assert torch.isfinite(w).all()
    assert torch.all(w[:, 1] == 0)
    assert torch.all(res.export["conv1"]["codes"][:, 1].float() == res.export["conv1"]["zero_point"].float().view(-1, 1, 1))


def test_deterministic(trained):
    model, calib, _, _ = trained
    a = quantize(model, 1.58, obc_cfg(), "uniform", calib[:64])
    b = quantize(model, 1.58, obc_cfg(), "uniform", calib[:64])
    for k, v in a.model.state_dict().items():
        assert torch.equal(v, b.model.state_dict()[k]), k
    for name in a.export:
        assert torch.equal(a.export[name]["codes"], b.export[name]["codes"])


def test_independent_mode_and_grouped_conv_error(trained):
    model, calib, _, _ = trained
    res = quantize(model, 2.0, obc_cfg(sequential=False), "uniform", calib[:64])
    assert all(torch.isfinite(m.weight).all() for _, m in quantizable_layers(res.model))
    net = torch.nn.Sequential(torch.nn.Conv2d(4, 4, 3, groups=2))
    with pytest.raises(ValueError, match="groups"):
        quantize_obc(net, {"0": 2.0}, obc_cfg(), torch.randn(2, 4, 6, 6), "cpu")
