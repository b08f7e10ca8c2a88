"""WRN-28-2 and VGG-11-BN through every quantizer and bit policy, and the structure they declare:
AdaRound's activation map and BRECQ's block outputs are checked against the network's own forward."""
from __future__ import annotations

import json

import pytest
import torch
from omegaconf import OmegaConf
from torch import nn

from src.models import build_model
from src.quant import quantize
from src.quant.adaround import layer_units, relu_followed_layers
from src.quant.bn_fold import fold_batchnorm
from src.quant.brecq import block_units
from src.quant.policy import quantizable_layers
from src.validate import ConfigError, validate

TINY = {"wrn28_2": {"name": "wrn28_2", "depth": 10, "widen": 1},  # every layer type of WRN-28-2, 1 block/group
        "vgg11_bn": {"name": "vgg11_bn", "width": 4}}
QCFG = {
    "rtn": dict(name="rtn", init="lp", p=2.4, symmetric=False, fold_bn=True),
    "adaround": dict(name="adaround", iters=8, batch_size=16, lr=1e-3, reg_lambda=0.01, warmup=0.2, b_start=20,
                     b_end=2, init="lp", p=2.4, symmetric=False, fold_bn=True, progress=False),
    "brecq": dict(name="brecq", iters=8, batch_size=16, lr=1e-3, reg_lambda=0.01, warmup=0.2, b_start=20, b_end=2,
                  loss="mse", init="lp", p=2.4, symmetric=False, fold_bn=True, progress=False),
    "obc": dict(name="obc", damp=0.01, row_batch="auto", block=32, outlier=True, init="lp", p=2.4, symmetric=False,
                fold_bn=True, sequential=False, calib_batch=64, progress=False),
    "gptq": dict(name="gptq", damp=0.01, block_size=32, act_order=False, init="lp", p=2.4, symmetric=False,
                 fold_bn=True, sequential=True, fp_target=False, calib_batch=64, progress=False),
}


def _model(arch: str) -> nn.Module:
    """The tiny model with BatchNorm statistics of real activations (a few train-mode passes)."""
    torch.manual_seed(0)
    model = build_model(OmegaConf.create(TINY[arch]), 10, 3)
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(torch.randn(32, 3, 32, 32))
    return model.eval()


@pytest.fixture(scope="module", params=list(TINY))
def arch(request):
    return request.param, _model(request.param), torch.randn(48, 3, 32, 32, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("method", list(QCFG))
@pytest.mark.parametrize("policy,bits", [("uniform", 2.0), ("8bit_ends", 1.58), ("paper", 1.58)])
def test_every_quantizer_and_policy_puts_weights_on_the_grid(arch, method, policy, bits):
    """Each Conv2d/Linear weight equals scale·(codes − zero_point) of its export, with at most as many
    levels per output channel as its bits allow (3 for ternary, 256 for the 8-bit layers)."""
    name, model, calib = arch
    res = quantize(model, bits, OmegaConf.create(QCFG[method]), policy, calib, "cifar10")
    layers = dict(quantizable_layers(res.model))
    assert set(res.export) == set(layers) == set(res.layer_bits)
    for lname, e in res.export.items():
        codes = e["codes"].float()
        shape = (-1,) + (1,) * (codes.dim() - 1)
        w = e["scale"].view(shape) * (codes - e["zero_point"].float().view(shape))
        torch.testing.assert_close(layers[lname].weight, w, rtol=0, atol=1e-6 * float(w.abs().max()))
        b = res.layer_bits[lname]
        cap = 3 if b == 1.58 else 2 ** int(b)
        assert max(len(torch.unique(c)) for c in codes.reshape(codes.shape[0], -1)) <= cap, (name, lname)
    if policy != "uniform":
        assert res.layer_bits["fc"] == 8.0
    with torch.no_grad():
        assert torch.isfinite(res.model(calib)).all()


def _captured(model: nn.Module, names: list[str], x: torch.Tensor, outputs: bool = True) -> dict:
    """Outputs (or first inputs) of the named modules during one forward of ``model``."""
    got, hooks = {}, []
    for n in names:
        m = model.get_submodule(n)
        if outputs:
            hooks.append(m.register_forward_hook(lambda _m, _i, o, n=n: got.__setitem__(n, o.detach().clone())))
        else:
            hooks.append(m.register_forward_pre_hook(lambda _m, i, n=n: got.__setitem__(n, i[0].detach().clone())))
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    return got


def test_adaround_uses_the_declared_activation_map(arch):
    """The layers AdaRound wraps with a ReLU are exactly those the architecture feeds into a ReLU
    (WRN: each pre-activation block's conv1 only; VGG: every conv), and each such unit applied to the
    layer's input in the network reproduces the output of the network's own ReLU after it."""
    name, model, calib = arch
    folded = fold_batchnorm(_model(name))
    convs = [n for n, m in folded.named_modules() if isinstance(m, nn.Conv2d)]
    if name == "wrn28_2":
        expect = {n for n in convs if n.endswith(".conv1")}
        relu_of = {n: n.removesuffix("conv1") + "relu1" for n in expect}
    else:
        expect = set(convs)
        relu_of = {n: n.removesuffix(".0") + ".2" for n in expect}
    assert relu_followed_layers(folded) == expect
    names = [n for n, _ in quantizable_layers(folded)]
    inputs = _captured(folded, names, calib, outputs=False)
    relu_out = _captured(folded, list(relu_of.values()), calib)
    for unit in layer_units(folded, names):
        has_relu = any(isinstance(m, nn.ReLU) for m in unit.module)
        assert has_relu == (unit.name in expect)
        if has_relu:
            with torch.no_grad():
                torch.testing.assert_close(unit.module(inputs[unit.name]), relu_out[relu_of[unit.name]])


def test_brecq_blocks_end_after_their_last_activation(arch):
    """Every BRECQ unit, run on its captured entry input, reproduces the network's value at the unit's
    exit (VGG: the stage's ReLU output; WRN: the block's output, the residual sum), and together the
    units hold every quantizable layer exactly once."""
    name, model, calib = arch
    folded = fold_batchnorm(_model(name))
    names = [n for n, _ in quantizable_layers(folded)]
    units = block_units(folded, names)
    assert sorted(q for u in units for q in u.params.values()) == sorted(names)
    entries = _captured(folded, [u.entry for u in units if u.entry], calib, outputs=False)
    exits = _captured(folded, [u.exit for u in units], calib)
    for u in units:
        x = calib if u.entry is None else entries[u.entry]
        with torch.no_grad():
            torch.testing.assert_close(u.module(x), exits[u.exit])
        if name == "vgg11_bn" and u.name != "head":
            assert isinstance(folded.get_submodule(u.exit)[-1], nn.ReLU)
            assert (exits[u.exit] >= 0).all()


def test_undeclared_model_refused_by_reconstruction_methods():
    """A model without ptq_structure(): AdaRound/BRECQ refuse in one line; RTN/OBC/GPTQ need no declaration."""
    net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 10)).eval()
    calib = torch.randn(16, 3, 32, 32)
    for method in ("adaround", "brecq"):
        with pytest.raises(ValueError, match="has no ptq_structure") as e:
            quantize(net, 2.0, OmegaConf.create(QCFG[method]), "uniform", calib)
        assert "\n" not in str(e.value)
    for method in ("rtn", "obc", "gptq"):
        assert quantize(net, 2.0, OmegaConf.create(QCFG[method]), "uniform", calib).export
    with pytest.raises(ValueError, match="6n \\+ 4"):
        build_model(OmegaConf.create({"name": "wrn28_2", "depth": 12, "widen": 2}), 10, 3)


def test_wrn28_2_is_the_reference_size():
    """WRN-28-2 on CIFAR-10 has 1,467,610 parameters (the count reported for LiRA's reference network)."""
    model = build_model(OmegaConf.create({"name": "wrn28_2", "depth": 28, "widen": 2}), 10, 3)
    assert sum(p.numel() for p in model.parameters()) == 1_467_610


@pytest.mark.parametrize("arch_name", list(TINY))
def test_new_architectures_end_to_end(arch_name, tiny_cfg, run_job):
    """``model=wrn28_2`` / ``model=vgg11_bn`` through the pipeline with BRECQ and GPTQ on generated data."""
    size = [f"model.{k}={v}" for k, v in TINY[arch_name].items() if k != "name"]
    for quant in ("brecq", "gptq"):
        _, job = run_job(tiny_cfg(
            f"model={arch_name}", *size, "dataset.image_size=32", "dataset.channels=3", "dataset.num_classes=10",
            "dataset.n_train=96", "dataset.n_test=32", "train.epochs=1", f"quant={quant}", "budget.n_calib=16",
            "budget.iters=20", "bits=2", "attack.bootstrap=10"), quant)
        res = json.loads((job / "results.json").read_text())
        assert res["config"]["model"]["name"] == arch_name and set(res["quant"]["layer_bits"].values()) == {2.0}
    with pytest.raises(ConfigError, match="model.depth"):
        validate(tiny_cfg("model=wrn28_2", "model.depth=0"))
    with pytest.raises(ConfigError, match="model.depth=12: a Wide ResNet has depth 6n"):
        validate(tiny_cfg("model=wrn28_2", "model.depth=12"))
