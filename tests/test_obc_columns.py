"""OBC's layer inputs checked against torch's own layers: the im2col columns (``layer_columns``) against
``F.conv2d`` / ``F.linear``, and the Hessian H = 2XXᵀ (``layer_hessian``) against output errors
computed with ``F.conv2d`` on inputs captured by a plain forward hook, so a wrong H cannot hide
behind OBQ and RTN being measured with the same H."""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from src.quant.obc import layer_columns, layer_hessian, reconstruction_error

# (C_in, C_out, kernel, stride, padding, dilation): square and non-square, 1×1, strided, dilated
CONVS = [
    (3, 5, 3, 1, 1, 1),
    (3, 5, 3, 2, 0, 1),
    (2, 4, 3, 1, 2, 2),
    (4, 6, (3, 2), (2, 1), (1, 0), (1, 2)),
    (3, 4, 1, 2, 0, 1),
    (2, 3, 5, 3, 2, 1),
]


def _conv(spec, bias=True, seed=0):
    c_in, c_out, k, s, p, d = spec
    torch.manual_seed(seed)
    return nn.Conv2d(c_in, c_out, k, stride=s, padding=p, dilation=d, bias=bias).double()


@pytest.mark.parametrize("spec", CONVS)
def test_conv_columns_reproduce_conv2d(spec):
    """cols @ W_flatᵀ + b, reshaped, equals F.conv2d in float64 (non-square 11×9 input, batch 3).

    float64: both sides sum ≤ 4·5·5 = 100 products, rounding ≲ 100·1.1e-16 of the largest term;
    1e-10 × max|out| is far above that and far below any misplaced column (an O(1) change)."""
    conv = _conv(spec)
    x = torch.randn(3, spec[0], 11, 9, dtype=torch.float64)
    with torch.no_grad():
        ref = F.conv2d(x, conv.weight, conv.bias, conv.stride, conv.padding, conv.dilation)
        cols = layer_columns(conv, x)
        n, c_out, h, w = ref.shape
        assert cols.shape == (n * h * w, conv.weight[0].numel())
        out = cols @ conv.weight.reshape(c_out, -1).T + conv.bias
        out = out.reshape(n, h, w, c_out).permute(0, 3, 1, 2)
    assert (out - ref).abs().max() <= 1e-10 * ref.abs().max()


def test_linear_columns_reproduce_linear():
    torch.manual_seed(0)
    lin = nn.Linear(7, 4).double()
    x = torch.randn(5, 3, 7, dtype=torch.float64)  # leading dims flattened into rows
    with torch.no_grad():
        ref = F.linear(x, lin.weight, lin.bias).reshape(-1, 4)
        out = layer_columns(lin, x) @ lin.weight.T + lin.bias
    assert (out - ref).abs().max() <= 1e-10 * ref.abs().max()


def test_unsupported_layers_are_refused():
    with pytest.raises(ValueError, match="groups"):
        layer_columns(nn.Conv2d(4, 4, 3, groups=2), torch.randn(1, 4, 6, 6))
    with pytest.raises(ValueError, match="padding"):
        layer_columns(nn.Conv2d(2, 2, 3, padding="same"), torch.randn(1, 2, 6, 6))
    with pytest.raises(ValueError, match="padding"):
        layer_columns(nn.Conv2d(2, 2, 3, padding=1, padding_mode="reflect"), torch.randn(1, 2, 6, 6))
    with pytest.raises(TypeError, match="Conv1d"):
        layer_columns(nn.Conv1d(2, 2, 3), torch.randn(1, 2, 6))


def _net(spec):
    """A prefix (conv + ReLU) in front of the layer under test, so its input is not the model input."""
    torch.manual_seed(1)
    return nn.Sequential(nn.Conv2d(2, spec[0], 3, padding=1), nn.ReLU(), _conv(spec, seed=2).float()).eval()


def _captured_input(model, layer, x):
    seen = []
    h = layer.register_forward_hook(lambda _m, inp, _o: seen.append(inp[0].detach()))
    with torch.no_grad():
        model(x)
    h.remove()
    return torch.cat(seen)


@pytest.mark.parametrize("spec", CONVS)
def test_hessian_gives_conv_output_error(spec):
    """½ tr(ΔW H ΔWᵀ) = ‖conv(x, ΔW)‖² for random ΔW, H from ``layer_hessian`` (batches of 3 of 7
    images: accumulation across batches), the right side from F.conv2d on hook-captured inputs.

    Both sides are sums of squares (no cancellation); H sums float32 Gram matrices of ≤ 7·6·5 = 210
    columns per entry in float64, so its relative error is ≲ 210·6e-8 ≈ 1.3e-5. rtol 1e-4 keeps a
    margin and is far below what a transposed or shifted column order gives (≥ 10 % here)."""
    model = _net(spec)
    layer = model[2]
    x = torch.randn(7, 2, 11, 9)
    H = layer_hessian(model, layer, x, batch_size=3)
    xin = _captured_input(model, layer, x).double()
    gen = torch.Generator().manual_seed(3)
    W = layer.weight.detach().double()
    for _ in range(3):
        dW = torch.randn(W.shape, generator=gen, dtype=torch.float64)
        direct = F.conv2d(xin, dW, None, layer.stride, layer.padding, layer.dilation).pow(2).sum().item()
        via_h = reconstruction_error(W.reshape(W.shape[0], -1), (W - dW).reshape(W.shape[0], -1), H)
        assert via_h == pytest.approx(direct, rel=1e-4)


def test_cross_hessian_gives_fp_inner_products():
    """With an FP copy whose prefix differs (the sequential, fp_target mode): G = 2X̂Xᵀ, so
    ½ tr(A G Bᵀ) = ⟨conv(x̂, A), conv(x, B)⟩, x̂ the input in the changed model, x in the FP one."""
    spec = CONVS[3]
    fp_model = _net(spec)
    model = copy.deepcopy(fp_model)
    with torch.no_grad():
        model[0].weight.mul_(0.8).add_(0.05)
    x = torch.randn(5, 2, 11, 9)
    H, G = layer_hessian(model, model[2], x, batch_size=2, fp_model=fp_model, fp_layer=fp_model[2])
    xq = _captured_input(model, model[2], x).double()
    xf = _captured_input(fp_model, fp_model[2], x).double()
    lay = model[2]
    gen = torch.Generator().manual_seed(4)
    A, B = (torch.randn(lay.weight.shape, generator=gen, dtype=torch.float64) for _ in range(2))
    conv = lambda inp, w: F.conv2d(inp, w, None, lay.stride, lay.padding, lay.dilation)  # noqa: E731
    direct = (conv(xq, A) * conv(xf, B)).sum().item()
    via_g = 0.5 * float((A.reshape(A.shape[0], -1) @ G * B.reshape(B.shape[0], -1)).sum())
    scale = (conv(xq, A).pow(2).sum() * conv(xf, B).pow(2).sum()).sqrt().item()  # Cauchy–Schwarz bound
    assert abs(via_g - direct) <= 1e-4 * scale
    assert 0.5 * float((A.reshape(A.shape[0], -1) @ H * A.reshape(A.shape[0], -1)).sum()) == \
        pytest.approx(conv(xq, A).pow(2).sum().item(), rel=1e-4)                # H is X̂'s, not X's
