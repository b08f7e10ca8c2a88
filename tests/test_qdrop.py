"""QDrop (src/quant/qdrop.py): BRECQ's block reconstruction with activation quantization randomly
dropped per element during the reconstruction, never afterwards.

CPU only; untrained small ResNets on random images for the mechanism, a SmallResNet trained for a few
seconds on digits for the W2A2 comparison."""
from __future__ import annotations

import copy

import pytest
import torch
from omegaconf import OmegaConf
from torch import nn

from _helpers import digits_resnet, quant_cfg, random_images, smallcnn
from src.quant import activation, quantize
from src.quant.bn_fold import fold_batchnorm
from src.quant.brecq import quantize_brecq
from src.quant.calibration import capture
from src.quant.qdrop import ActivationDrop, check_drop_prob, quantize_qdrop


def _steps(res) -> dict[str, float]:
    return {n: e["step"] for n, e in res.act.items()}


def test_p0_is_brecq_with_learned_steps(monkeypatch):
    """drop_prob=0 (and BRECQ's un-scaled step gradient) gives BRECQ's codes and learned steps
    exactly: the masks are drawn (the mechanism runs, all-false) from a generator of their own, so
    BRECQ's batch order is untouched. Equality is exact: where(False, x, x̂) returns x̂ bit for bit."""
    drawn = []
    mask = ActivationDrop.mask
    monkeypatch.setattr(ActivationDrop, "mask", lambda self, like: drawn.append(1) or mask(self, like))
    m, x = smallcnn(), random_images()
    common = ("quant.act_bits=4", "quant.iters=60", "quant.n_calib=96", "quant.lr=1e-2")
    brecq = quantize(m, 2, quant_cfg("brecq", *common), "uniform", x, "digits", "cpu")
    qd = quantize(m, 2, quant_cfg("qdrop", *common, "quant.drop_prob=0", "quant.act_grad_scale=false"), "uniform", x,
                  "digits", "cpu")
    assert len(drawn) > 60  # one or more masks per step of every block
    assert brecq.export.keys() == qd.export.keys()
    for n in brecq.export:
        assert torch.equal(brecq.export[n]["codes"], qd.export[n]["codes"]), n
    assert _steps(brecq) == _steps(qd)
    fixed = quantize(m, 2, quant_cfg("brecq", *common, "quant.act_learn=false"), "uniform", x, "digits", "cpu")
    assert _steps(fixed) != _steps(qd)  # the steps were learned, not left at their MSE start


def _record_drops(monkeypatch):
    """Hooks on every input quantizer while it drops: (x, output, x̂ = full quantization, FP candidate)."""
    records: list[tuple] = []
    current = {}
    step, attach = ActivationDrop.step, ActivationDrop.attach

    def on_step(self, x_q, x_fp, unit):
        current["x_fp"] = x_fp
        current["t"] = current.get("t", -1) + 1
        step(self, x_q, x_fp, unit)

    def hook(q, inp, out):
        if q.drop is None:
            return
        x = inp[0]
        with torch.no_grad():
            xq = activation.fake_quant(x, q.step.abs(), *q.levels)
        inner = x.requires_grad
        x_fp = current["x_fp"]  # the FP model's block input: the candidate where the block input is read
        fp = None if inner or x_fp.shape != x.shape else x_fp.detach()
        records.append((q.name_, current["t"], inner, x.detach(), out.detach(), xq, fp))

    def on_attach(self, qs, fp_model):
        attach(self, qs, fp_model)
        for n, q in qs.items():
            q.name_ = n
            if not getattr(q, "_hooked", False):
                q.register_forward_hook(hook)
                q._hooked = True

    monkeypatch.setattr(ActivationDrop, "step", on_step)
    monkeypatch.setattr(ActivationDrop, "attach", on_attach)
    return records


def test_drop_is_per_element_with_rate_p_and_never_at_eval(monkeypatch):
    """Measured on forward hooks of the quantizers during a p = 0.3 reconstruction (smallcnn, 4-bit
    activations): every element of a quantizer's output is either its full quantization x̂ or its FP
    value (the block's own activation inside a block; the FP model's block input at the block input),
    and among elements where the two differ the FP share is p within 5 binomial standard errors
    (≈ 10⁵ elements: σ ≈ 0.0015). Per element: two neighbouring channels are dropped together at rate
    p² (independent masks; a per-channel or per-tensor mask would give p). The readers of the block
    input (conv1 and the 1×1 downsample of layer2.0) share one mask. After the reconstruction no
    quantizer drops: the output is x̂ everywhere, the same in two forwards."""
    records = _record_drops(monkeypatch)
    m, x = smallcnn(), random_images()
    p = 0.3
    res = quantize(m, 2, quant_cfg("qdrop", "quant.act_bits=4", "quant.iters=20", "quant.n_calib=96",
                               f"quant.drop_prob={p}"), "uniform", x, "digits", "cpu")
    dropped = eligible = both = pairs = 0
    entry_masks: dict[tuple, list] = {}
    for name, t, inner, xin, out, xq, fp in records:
        cand = xin if inner else fp
        assert cand is not None, name
        is_fp, is_q = out == cand, out == xq
        assert bool((is_fp | is_q).all()), name  # nothing but the two candidates
        differ = cand != xq
        d = is_fp & differ
        dropped += int(d.sum())
        eligible += int(differ.sum())
        if out.dim() == 4 and out.shape[1] > 1:
            e2 = differ[:, :-1] & differ[:, 1:]
            both += int((d[:, :-1] & d[:, 1:] & e2).sum())
            pairs += int(e2.sum())
        if not inner and name.startswith("layer2.0"):
            entry_masks.setdefault((t,), []).append((d, differ))
    rate = dropped / eligible
    se = (p * (1 - p) / eligible) ** 0.5
    assert eligible > 50_000 and abs(rate - p) < 5 * se, (rate, eligible)
    joint = both / pairs
    assert abs(joint - p * p) < 5 * (p * p * (1 - p * p) / pairs) ** 0.5, joint
    shared = [v for v in entry_masks.values() if len(v) == 2]
    assert shared
    for (d1, e1), (d2, e2) in shared:
        common = e1 & e2
        assert torch.equal(d1[common], d2[common])

    qs = activation.quantizers(res.model)
    assert qs and all(q.drop is None and not q.grad_scale for q in qs.values())
    seen = []
    hooks = [q.register_forward_hook(lambda q, i, o: seen.append(
        torch.equal(o, activation.fake_quant(i[0], q.step.abs(), *q.levels)))) for q in qs.values()]
    with torch.no_grad():
        a, b = res.model(x), res.model(x)
    for h in hooks:
        h.remove()
    assert seen and all(seen) and torch.equal(a, b)


def test_grad_scale_is_lsqs():
    """act_grad_scale: the step's gradient is LSQ's 1/√(N·q_max) times the un-scaled one (N elements
    of the quantized tensor), the forward value unchanged."""
    x = torch.rand(4, 3, 5, 5) * 3
    grads, outs = [], []
    for scaled in (False, True):
        q = activation.ActQuantizer(4, step=0.2)
        q.step.requires_grad_(True)
        q.grad_scale = scaled
        out = q(x)
        out.sum().backward()
        grads.append(float(q.step.grad))
        outs.append(out.detach())
    assert torch.equal(outs[0], outs[1])
    assert grads[1] == pytest.approx(grads[0] / (x.numel() * 15) ** 0.5, rel=1e-5)


def test_weight_only_is_brecq():
    """Without act_bits there is nothing to drop: QDrop's weights equal BRECQ's (the same keys)."""
    m, x = smallcnn(), random_images()
    common = ("quant.iters=40", "quant.n_calib=96", "quant.lr=1e-2")
    a = quantize(m, 2, quant_cfg("brecq", *common), "uniform", x, "digits", "cpu")
    b = quantize(m, 2, quant_cfg("qdrop", *common), "uniform", x, "digits", "cpu")
    sa, sb = a.model.state_dict(), b.model.state_dict()
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_notes_and_bad_drop_prob(tiny_cfg):
    from src.validate import config_warnings

    note = [w for w in config_warnings(tiny_cfg("quant=qdrop"), ["quant=qdrop"]) if "nothing to drop" in w]
    assert len(note) == 1 and "\n" not in note[0]
    assert not [w for w in config_warnings(tiny_cfg("quant=qdrop", "quant.act_bits=4"), ["quant=qdrop"])
                if "nothing to drop" in w]
    lp = config_warnings(tiny_cfg("quant=qdrop", "quant.act_bits=4", "quant.p=1.5"), ["quant=qdrop", "quant.p=1.5"])
    assert any("quant.p=1.5" in w and "quant.drop_prob" in w for w in lp), lp
    for bad in (1.5, -0.1, "abc"):
        with pytest.raises(ValueError, match=r"quant.drop_prob=.*\[0, 1\]"):
            check_drop_prob(bad)
    assert check_drop_prob(0) == 0.0 and check_drop_prob(1) == 1.0


def test_quant_key(tiny_cfg):
    """Weight-only QDrop keys no drop setting (the models are identical); W/A QDrop does."""
    from src.pipeline import quant_key

    pool_key = {"kind": "model", "x": 1}
    wo = quant_key(tiny_cfg("quant=qdrop"), pool_key)["quant"]
    assert "drop_prob" not in wo and "act_grad_scale" not in wo
    wa = quant_key(tiny_cfg("quant=qdrop", "quant.act_bits=4"), pool_key)["quant"]
    assert wa["drop_prob"] == 0.5 and wa["act_grad_scale"] is True
    assert quant_key(tiny_cfg("quant=qdrop", "quant.act_bits=4", "quant.drop_prob=0.25"), pool_key) != \
        quant_key(tiny_cfg("quant=qdrop", "quant.act_bits=4"), pool_key)


@pytest.fixture(scope="module")
def trained_resnet(tmp_path_factory):
    model, x, xte, _ = digits_resnet(str(tmp_path_factory.mktemp("data")), epochs=8)
    fold_batchnorm(model)
    return model, x, xte


@pytest.mark.slow
def test_w2a2_block_heldout_error_vs_brecq(trained_resnet):
    """W2A2 on one block (layer2.0 of a SmallResNet trained on digits, 128 calibration images, 500
    steps at lr 1e-2): the block-output error on 1,000+ held-out test images, every activation
    quantized, for QDrop (p = 0.5) and BRECQ.

    QDrop is *not* below BRECQ here, and the test documents it instead of asserting it: measured on
    this block (3 seeds; AMD EPYC Zen 4) QDrop's held-out error was 10.1–10.8 against BRECQ's
    9.9–10.0 (32 calibration images: 10.0–10.3 against 9.8; 2,000 steps at lr 1e-3: 12.4–13.0
    against 11.2–11.6). QDrop's argument is flatness: weights tuned with half the quantization
    noise generalise better to test inputs *and to the errors that earlier quantized blocks add to a
    block's input*. On one block with an FP prefix the second part is absent, and the evaluation
    condition (every activation quantized) is exactly BRECQ's training condition, so BRECQ's
    objective matches what is measured while QDrop optimises half of the time for FP activations.
    The check against the authors' code (docs/quantizers.md) shows the mechanism is theirs. What is
    asserted: both reconstructions beat round-to-nearest weights with the same calibrated activation
    grid by a wide margin (×0.8; both remove far more of RTN's error on every CPU tried), and QDrop
    stays within 25 % of BRECQ (measured: ≤ 8 %)."""
    model, x, xte = trained_resnet
    blk = "layer2.0"
    layers = [n for n, m in model.named_modules() if n.startswith(blk + ".") and isinstance(m, (nn.Conv2d, nn.Linear))]
    cfg = OmegaConf.create({"iters": 500, "batch_size": 32, "lr": 1e-2, "reg_lambda": 0.01, "warmup": 0.2,
                            "b_start": 20, "b_end": 2, "init": "lp", "p": 2.4, "symmetric": False, "progress": False,
                            "seed": 0, "act_lr": 4e-5, "act_learn": True, "drop_prob": 0.5})
    calib = x[:128]
    xin = capture(model, model.get_submodule(blk), xte, keep_output=False)[0]
    with torch.no_grad():
        ref = model.get_submodule(blk)(xin)

    def heldout(fn, iters):
        m = copy.deepcopy(model)
        activation.attach(m, layers, 2)
        c = cfg.copy()
        c.iters = iters
        fn(m, {n: 2.0 for n in layers}, c, calib)
        if iters == 0:
            activation.calibrate(m, layers, calib, "cpu")
        with torch.no_grad():
            return (m.get_submodule(blk)(xin) - ref).pow(2).sum(1).mean().item()

    rtn = heldout(quantize_brecq, 0)  # zero steps: hard rounding of the initial V = round-to-nearest
    brecq, qdrop = heldout(quantize_brecq, 500), heldout(quantize_qdrop, 500)
    assert brecq < 0.8 * rtn and qdrop < 0.8 * rtn, (rtn, brecq, qdrop)
    assert qdrop < 1.25 * brecq, (brecq, qdrop)
