"""Independent checks of the per-channel grid (src/quant/grid.py), RTN (rtn.py), BN folding and quantize()."""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from torchvision.models.resnet import BasicBlock

from src.models import SmallResNet
from src.quant import quantize
from src.quant.bn_fold import fold_batchnorm
from src.quant.grid import check_bits, init_grid
from src.quant.rtn import quantize_rtn


def weights(seed=0, shape=(8, 4, 3, 3)):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g) * torch.linspace(0.05, 2.0, shape[0]).view(-1, 1, 1, 1)


@pytest.mark.parametrize("symmetric", [False, True])
@pytest.mark.parametrize("bits", [1, 2, 3, 4, 8])
def test_integer_bits_levels(bits, symmetric):
    w = weights(bits)
    g = init_grid(w, bits, symmetric)
    q = g.codes(w)
    assert torch.equal(q, q.round()) and q.min() >= g.qmin and q.max() <= g.qmax
    assert g.qmax - g.qmin + 1 == 2 ** bits
    wq = g.fake_quant(w)
    assert torch.allclose(wq, g.scale.view(-1, 1, 1, 1) * (q - g.zero_point.view(-1, 1, 1, 1)))
    assert torch.equal(g.zero_point, g.zero_point.round())
    for c in range(w.shape[0]):
        assert len(torch.unique(wq[c])) <= 2 ** bits


def test_ternary_three_levels():
    w = weights(1)
    g = init_grid(w, 1.58)
    wq = g.fake_quant(w)
    assert (g.qmin, g.qmax) == (-1, 1) and torch.all(g.zero_point == 0)
    for c in range(w.shape[0]):
        d = g.scale[c]
        assert set(torch.unique(wq[c]).tolist()) == {-d.item(), 0.0, d.item()}


def _heavy_tailed(bits: float, channels: int = 6) -> tuple[torch.Tensor, float]:
    """Rows of a bulk that sits exactly on a unit grid plus one outlier, shuffled, each row scaled
    by a power of two (exact in float32); returns (weights, α*) where α* = the clipping factor that
    maps the range onto the bulk's grid.

    Ternary: bulk ±1 (32 each), outlier +4: min-max δ = 4, α* = 1/4 gives δ = 1.
    b bits (L = 2^b levels, asymmetric): bulk {0, …, L−1}, r copies each (r = 16 at 2 bits, 128 at
    4 bits), outlier 2(L−1): min-max s = 2, z = 0, α* = 1/2 gives s = 1, z = 0."""
    gen = torch.Generator().manual_seed(int(10 * bits))
    if bits == 1.58:
        row, alpha = torch.cat([torch.ones(32), -torch.ones(32), torch.tensor([4.0])]), 0.25
    else:
        levels = 2 ** int(bits)
        r = {2: 16, 4: 128}[int(bits)]
        row, alpha = torch.cat([torch.arange(levels).float().repeat(r), torch.tensor([2.0 * (levels - 1)])]), 0.5
    rows = [row[torch.randperm(len(row), generator=gen)] * 2.0 ** (c - 2) for c in range(channels)]
    return torch.stack(rows), alpha


@pytest.mark.parametrize("p", [2.0, 2.4])
@pytest.mark.parametrize("bits", [1.58, 2, 4])
def test_lp_search_clips_heavy_tails(bits, p):
    """Known answer: on ``_heavy_tailed`` rows the L_p search must clip, and by a computed margin.

    Per row (scale c = 2^k multiplies every error by c^p; written for c = 1):
    - ternary: min-max (δ = 4) rounds the whole bulk to 0: e_mm = 64·1^p = 64; at α* the bulk is
      exact and only the outlier pays (4 − 1)^p: e* = 3^p (9 at p = 2, 13.97 at p = 2.4);
    - b bits: min-max (s = 2) is exact on even bulk values and off by 1 on the L/2 odd ones:
      e_mm = r·L/2 (32 at 2 bits, 1024 at 4 bits); at α* the bulk is exact, the outlier 2(L−1) is
      clipped to L−1: e* = (L−1)^p (9 / 13.97 at 2 bits, 225 / 663.4 at 4 bits).
    α* is one of the search's candidates (1 − i/80, i = 60 or 40), so the search's error is ≤ e*:
    ratio e*/e_mm = 0.14 / 0.22 (ternary), 0.28 / 0.44 (2 bits), 0.22 / 0.65 (4 bits), each asserted
    with float32 slack 1e-5 relative. Min-max itself is checked against its analytic error."""
    w, alpha = _heavy_tailed(bits)
    if bits == 1.58:
        e_mm, e_star = 64.0, 3.0 ** p
    else:
        levels, r = 2 ** int(bits), {2: 16, 4: 128}[int(bits)]
        e_mm, e_star = r * levels / 2, (levels - 1.0) ** p
    c_p = (2.0 ** (torch.arange(w.shape[0], dtype=torch.float64) - 2)) ** p
    lp, mm = init_grid(w, bits, method="lp", p=p), init_grid(w, bits, method="minmax")
    err = lambda g: (w - g.fake_quant(w)).double().abs().pow(p).sum(1)  # noqa: E731
    assert torch.allclose(err(mm), e_mm * c_p, rtol=1e-6)
    assert torch.all(err(lp) <= e_star * c_p * (1 + 1e-5)), (err(lp) / c_p, e_star)
    assert torch.all(err(lp) <= (e_star / e_mm) * err(mm) * (1 + 1e-5))
    assert e_star / e_mm <= 0.65
    assert torch.all(lp.scale < mm.scale)  # it did clip


def test_absmean_and_twn_against_numpy():
    layer = torch.nn.Conv2d(4, 8, 3, bias=False)
    with torch.no_grad():
        layer.weight.copy_(weights(3))
    w = layer.weight.detach().numpy().reshape(8, -1).astype(np.float64)
    # BitNet b1.58 absmean: γ = mean|w|, ŵ = γ·clip(round(w/γ), −1, 1)
    gamma = np.abs(w).mean(1, keepdims=True)
    absmean = gamma * np.clip(np.round(w / gamma), -1, 1)
    # TWN: Δ = 0.7·mean|w|, α = mean of |w| over |w| > Δ, ŵ = α·sign(w)·[|w| > Δ]
    thr = 0.7 * np.abs(w).mean(1, keepdims=True)
    mask = np.abs(w) > thr
    alpha = (np.abs(w) * mask).sum(1, keepdims=True) / mask.sum(1, keepdims=True)
    twn = alpha * np.sign(w) * mask
    for init, expect in (("absmean", absmean), ("twn", twn)):
        m = torch.nn.Sequential(copy.deepcopy(layer))
        quantize_rtn(m, {"0": 1.58}, OmegaConf.create({"init": init}))
        got = m[0].weight.detach().numpy().reshape(8, -1)
        np.testing.assert_allclose(got, expect, rtol=1e-5, atol=1e-7)
    with pytest.raises(ValueError, match="ternary"):
        init_grid(layer.weight, 2, method="absmean")


@pytest.mark.parametrize("bad", [3.5, 0, 9, "abc"])
def test_check_bits_rejects(bad):
    with pytest.raises(ValueError) as e:
        check_bits(bad)
    msg = str(e.value)
    assert "bits" in msg and "1.58" in msg and "8" in msg


@pytest.mark.parametrize("good,expect", [(8, 8.0), (4, 4.0), (3, 3.0), (2, 2.0), (1.58, 1.58), ("4", 4.0)])
def test_check_bits_accepts(good, expect):
    assert check_bits(good) == expect


def _nontrivial_bn(model):
    torch.manual_seed(0)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            with torch.no_grad():
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.3, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.3, 0.3)
    return model.eval()


def test_bn_folding_preserves_outputs():
    model = _nontrivial_bn(SmallResNet(10, 1, 16))
    x = torch.randn(8, 1, 8, 8)
    with torch.no_grad():
        ref = model(x)
        folded = fold_batchnorm(copy.deepcopy(model))
        out = folded(x)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
    assert torch.allclose(out, ref, atol=1e-5, rtol=1e-5)


def test_bn_folding_keeps_post_add_relu():
    down = torch.nn.Sequential(torch.nn.Conv2d(4, 8, 1, 2, bias=False), torch.nn.BatchNorm2d(8))
    block = _nontrivial_bn(BasicBlock(4, 8, stride=2, downsample=down))
    x = torch.randn(4, 4, 8, 8)
    with torch.no_grad():
        ref = block(x)
        folded = fold_batchnorm(copy.deepcopy(block))
        out = folded(x)
    assert isinstance(folded.bn1, torch.nn.Identity) and isinstance(folded.bn2, torch.nn.Identity)
    assert isinstance(folded.downsample[1], torch.nn.Identity)
    assert (out >= 0).all() and (out == 0).any()                   # the post-addition ReLU still runs
    assert torch.allclose(out, ref, atol=1e-5, rtol=1e-5)


def test_quantize_none_returns_unchanged_copy():
    model = _nontrivial_bn(SmallResNet(10, 1, 16))
    for name in ("none", "fp"):
        res = quantize(model, 2, OmegaConf.create({"name": name}))
        assert res.model is not model and not res.model.training
        sd, ref = res.model.state_dict(), model.state_dict()
        assert sd.keys() == ref.keys() and all(torch.equal(sd[k], ref[k]) for k in sd)
        assert any(isinstance(m, torch.nn.BatchNorm2d) for m in res.model.modules())
