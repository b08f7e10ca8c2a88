"""Matched-utility controls: Gaussian weight noise and magnitude pruning do what they are set to."""
import math

import pytest
import torch
from omegaconf import OmegaConf
from torch import nn

from src.quant import quantize
from src.quant.noise import perturb_noise
from src.quant.prune import prune_magnitude


def _net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 64, 3), nn.ReLU(), nn.Flatten(), nn.Linear(64 * 6 * 6, 128))


@pytest.mark.parametrize("sigma", [0.05, 0.3])
def test_noise_is_sigma_times_each_channels_std(sigma):
    """Per output channel the added noise has std σ·std(W_c). Channels hold 27 (conv) and 2304 (fc)
    weights; the std of a sample std is ≈ 1/√(2n) relative, so the mean ratio over 64/128 channels is
    within 0.1·σ (≥ 4 sd for the conv, far more for fc) and the noise mean is ≈ 0."""
    net = _net()
    before = [m.weight.detach().clone() for m in (net[0], net[3])]
    perturb_noise(net, {"0": 4, "3": 4}, OmegaConf.create({"sigma": sigma, "seed": 3}))
    for w0, m in zip(before, (net[0], net[3])):
        d = (m.weight - w0).flatten(1)
        ratio = d.std(dim=1) / w0.flatten(1).std(dim=1, unbiased=False)
        assert abs(ratio.mean().item() / sigma - 1) < 0.1
        assert abs(d.mean().item()) < 0.1 * sigma * w0.std().item()
    again = _net()
    perturb_noise(again, {"0": 4, "3": 4}, OmegaConf.create({"sigma": sigma, "seed": 3}))
    assert torch.equal(again[3].weight, net[3].weight)  # seeded
    zero = _net()
    perturb_noise(zero, {"0": 4, "3": 4}, OmegaConf.create({"sigma": 0.0, "seed": 3}))
    assert torch.equal(zero[3].weight, _net()[3].weight)


@pytest.mark.parametrize("sparsity", [0.3, 0.9])
def test_layer_pruning_zeros_exactly_the_smallest(sparsity):
    """Each layer: exactly ⌊s·n⌋ weights become 0, every pruned |w| ≤ every kept |w|, others unchanged."""
    net, ref = _net(), _net()
    prune_magnitude(net, {"0": 4, "3": 4}, OmegaConf.create({"sparsity": sparsity, "scope": "layer"}))
    for m, r in ((net[0], ref[0]), (net[3], ref[3])):
        w, w0 = m.weight.flatten(), r.weight.flatten()
        zero = w == 0
        assert zero.sum().item() == math.floor(sparsity * w.numel())
        assert w0[zero].abs().max() <= w0[~zero].abs().min()
        assert torch.equal(w[~zero], w0[~zero]) and torch.equal(m.bias, r.bias)


def test_global_pruning_uses_one_threshold():
    """One magnitude threshold over both layers: ⌊s·N⌋ zeros in total, unevenly spread."""
    net, ref = _net(), _net()
    prune_magnitude(net, {"0": 4, "3": 4}, OmegaConf.create({"sparsity": 0.5, "scope": "global"}))
    w = torch.cat([net[0].weight.flatten(), net[3].weight.flatten()])
    w0 = torch.cat([ref[0].weight.flatten(), ref[3].weight.flatten()])
    zero = w == 0
    assert zero.sum().item() == w.numel() // 2
    assert w0[zero].abs().max() <= w0[~zero].abs().min()
    per_layer = [(net[i].weight == 0).float().mean().item() for i in (0, 3)]
    assert abs(per_layer[0] - per_layer[1]) > 0.05  # the two layers' weight scales differ


def test_controls_through_quantize_keep_float_weights():
    """Via the quantize() interface: no bits apply (32 recorded per layer), no integer export."""
    res = quantize(_net(), 2, OmegaConf.create({"name": "prune", "sparsity": 0.5, "scope": "layer"}))
    assert set(res.layer_bits.values()) == {32.0} and res.export == {}
    assert (res.model[3].weight == 0).float().mean().item() == pytest.approx(0.5, abs=1e-3)
    with pytest.raises(ValueError, match="quant.scope='x': allowed: layer, global"):
        quantize(_net(), 2, OmegaConf.create({"name": "prune", "sparsity": 0.5, "scope": "x"}))
