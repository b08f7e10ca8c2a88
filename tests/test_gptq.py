"""GPTQ (src/quant/gptq.py) against independent computations: RTN for a diagonal Hessian, the plain
OBS update sequence it reformulates, and its error against RTN in and out of sample."""
from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf

from src.quant import quantize
from src.quant.gptq import gptq_layer
from src.quant.grid import init_grid
from src.quant.obc import prepare_hessian, reconstruction_error
from tests.test_obc import accuracy, rtn_cfg, trained  # noqa: F401  (module-scoped digits model)


def gptq_cfg(**kw):
    base = dict(name="gptq", damp=0.01, block_size=128, act_order=False, init="lp", p=2.4, symmetric=False,
                fold_bn=True, sequential=True, fp_target=False, calib_batch=128, progress=False)
    return OmegaConf.create(base | kw)


def _inputs(d, n, seed, draw=0, rank=8):
    """Correlated layer inputs (low rank + noise, uneven scales): the case where compensating one
    weight's rounding error with the others pays. ``seed`` fixes the distribution (the basis),
    ``draw`` the sample: held-out inputs share the first and not the second."""
    basis = torch.randn(d, rank, generator=torch.Generator().manual_seed(seed)) * torch.linspace(0.3, 2.0, d).view(d, 1)
    g = torch.Generator().manual_seed(10_000 + draw)
    return basis @ torch.randn(rank, n, generator=g) + 0.3 * torch.randn(d, n, generator=g)


def naive_obs(W, H, grid, damp):
    """The OBS sequence GPTQ reformulates, written out in float64 with the explicit inverse: quantize
    column j, spread its error over the later columns with H⁻¹_{j,:}/[H⁻¹]_jj, eliminate j from H⁻¹."""
    _, Hinv, W0 = prepare_hessian(H, W, damp)
    w, Hi = W0.double().clone(), Hinv.clone()
    s, z = grid.scale.double().view(-1, 1), grid.zero_point.double().view(-1, 1)
    codes = torch.empty_like(w)
    for j in range(w.shape[1]):
        c = torch.clamp(torch.round(w[:, j:j + 1] / s) + z, grid.qmin, grid.qmax)
        q = s * (c - z)
        codes[:, j] = c[:, 0]
        err = (w[:, j] - q[:, 0]) / Hi[j, j]
        w -= err.unsqueeze(1) * Hi[j].unsqueeze(0)
        Hi -= torch.outer(Hi[:, j], Hi[j]) / Hi[j, j]
    return codes


@pytest.mark.parametrize("bits", [4.0, 2.0, 1.58])
def test_diagonal_hessian_is_rtn(bits):
    """With a diagonal H no column's error can be compensated by another: GPTQ must round every
    weight to its nearest level, exactly RTN's codes."""
    torch.manual_seed(0)
    W = torch.randn(16, 40)
    H = torch.diag(torch.rand(40, dtype=torch.float64) + 0.5)
    grid = init_grid(W, bits, False, "lp", 2.4)
    codes, _ = gptq_layer(W, H, grid, damp=0.01, block_size=16)
    assert torch.equal(codes, grid.codes(W).float())


@pytest.mark.parametrize("block_size,act_order", [(7, False), (128, False), (16, True)])
def test_cholesky_lazy_form_equals_plain_obs(block_size, act_order):
    """The Cholesky rows and lazy block updates are an exact rewrite of the OBS sequence: the codes
    equal the float64 reference except where float32 rounding lands a weight within ~1e-6 of a
    rounding boundary (allowed: ≤ 1 % of 1,536 weights), and the errors agree within 0.5 %."""
    X = _inputs(48, 300, 1)
    H = (2 * X @ X.T).double()
    W = torch.randn(32, 48, generator=torch.Generator().manual_seed(2))
    grid = init_grid(W, 2.0, False, "lp", 2.4)
    perm = torch.argsort(torch.diagonal(H), descending=True) if act_order else torch.arange(48)
    ref = torch.empty(32, 48, dtype=torch.float64)
    ref[:, perm] = naive_obs(W[:, perm], H[perm][:, perm], grid, 0.01)
    codes, _ = gptq_layer(W, H, grid, damp=0.01, block_size=block_size, act_order=act_order)
    assert (codes.double() != ref).float().mean().item() <= 0.01
    e, e_ref = (reconstruction_error(W, grid.dequantize(c.float()), H) for c in (codes, ref))
    assert abs(e - e_ref) <= 0.005 * e_ref


@pytest.mark.parametrize("bits", [4.0, 2.0])
def test_gptq_beats_rtn_in_and_out_of_sample(bits):
    """On correlated inputs GPTQ's ‖WX − ŴX‖² on its calibration inputs, and the output error on
    2,000 held-out inputs of the same distribution, are both below half of RTN's (measured: 0.20–0.26
    of RTN's on this layer at 4 and 2 bits, identical under ATEN_CPU_CAPABILITY=default; half leaves
    ~2× room)."""
    X, X_test = _inputs(64, 512, 3, draw=0), _inputs(64, 2000, 3, draw=1)
    H = (2 * X @ X.T).double()
    W = torch.randn(48, 64, generator=torch.Generator().manual_seed(5))
    grid = init_grid(W, bits, False, "lp", 2.4)
    W_rtn = grid.dequantize(grid.codes(W))
    codes, _ = gptq_layer(W, H, grid)
    W_gptq = grid.dequantize(codes)
    assert reconstruction_error(W, W_gptq, H) < 0.5 * reconstruction_error(W, W_rtn, H)
    out = [((W - Wq) @ X_test).pow(2).sum().item() for Wq in (W_gptq, W_rtn)]
    assert out[0] < 0.5 * out[1], out


def test_gptq_model_beats_rtn_at_2_bits(trained):  # noqa: F811
    """The shipped default (sequential, as the paper) on the trained digits SmallResNet at 2 bits:
    RTN collapses (measured 54 % here, 15 % under ATEN_CPU_CAPABILITY=default: 2-bit RTN is fragile)
    while GPTQ keeps 91–92 % (FP 99 %). Bars: ≥ 20 points above RTN and within 15 points of FP
    (6–7 points of room)."""
    model, calib, xte, yte = trained
    fp = accuracy(model, xte, yte)
    rtn = accuracy(quantize(model, 2.0, rtn_cfg(), "uniform", calib).model, xte, yte)
    res = quantize(model, 2.0, gptq_cfg(), "uniform", calib)
    gptq = accuracy(res.model, xte, yte)
    assert gptq >= rtn + 0.20 and gptq > fp - 0.15, (fp, rtn, gptq)
    for name, e in res.export.items():  # weights on the 2-bit grid: ≤ 4 levels per output channel
        assert max(len(torch.unique(c)) for c in e["codes"].reshape(e["codes"].shape[0], -1)) <= 4, name
