"""GPTQ vs OBC on one ResNet-18-sized layer (layer4's 3×3 convs: W is 512 × 4608), side by side.

    python -m benchmarks.gptq_vs_obc [--rows 512] [--cols 4608] [--obc-rows 2] [--bits 2] [--device cpu]

Both methods solve the same problem (same H = 2XXᵀ from random correlated inputs, same per-channel
grid). GPTQ runs the whole layer. OBC's greedy per-row order costs ≈ (2/3)·d³ per row and rows are
independent, so it runs ``--obc-rows`` rows and its full-layer time is projected linearly in rows
(printed as such). Reported: seconds, the speed-up, and ‖WX − ŴX‖² of each method and of RTN on the
rows OBC quantized.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch


def run(rows: int, cols: int, obc_rows: int, bits: float, device: str, out: str | None) -> dict:
    from src.quant.gptq import gptq_layer
    from src.quant.grid import init_grid
    from src.quant.obc import obq_layer, reconstruction_error

    g = torch.Generator().manual_seed(0)
    n = 2 * cols
    basis = torch.randn(cols, 64, generator=g)
    X = (basis @ torch.randn(64, n, generator=g) + torch.randn(cols, n, generator=g)).to(device)
    H = (2 * X @ X.T).double()
    W = (torch.randn(rows, cols, generator=g) / cols ** 0.5).to(device)
    grid = init_grid(W, bits, False, "lp", 2.4).to(device)

    def sync():
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    sync()
    t0 = time.perf_counter()
    codes, _ = gptq_layer(W, H, grid)
    sync()
    t_gptq = time.perf_counter() - t0
    sub = slice(0, obc_rows)
    sub_grid = type(grid)(grid.scale[sub], grid.zero_point[sub], grid.qmin, grid.qmax, grid.bits)
    t0 = time.perf_counter()
    codes_obc, _ = obq_layer(W[sub], H, sub_grid, row_batch=obc_rows)
    sync()
    t_obc_rows = time.perf_counter() - t0
    t_obc = t_obc_rows * rows / obc_rows
    err = {"rtn": reconstruction_error(W[sub], grid.dequantize(grid.codes(W))[sub], H),
           "gptq": reconstruction_error(W[sub], grid.dequantize(codes)[sub], H),
           "obc": reconstruction_error(W[sub], sub_grid.dequantize(codes_obc), H)}
    res = {"layer": [rows, cols], "bits": bits, "device": device, "gptq_seconds": t_gptq,
           "obc_seconds_measured": t_obc_rows, "obc_rows_measured": obc_rows, "obc_seconds_projected": t_obc,
           "speedup": t_obc / t_gptq, "error_on_obc_rows": err}
    print(f"layer {rows}×{cols}, {bits:g} bits, {device}")
    print(f"  GPTQ, whole layer                      {t_gptq:9.2f} s")
    print(f"  OBC, {obc_rows} rows measured                  {t_obc_rows:9.2f} s")
    print(f"  OBC, whole layer (projected ×{rows // obc_rows})       {t_obc:9.1f} s")
    print(f"  speed-up GPTQ vs OBC                   {res['speedup']:9.1f} ×   (target ≥ 10×)")
    print("  ‖WX−ŴX‖² on those rows: " + ", ".join(f"{k} {v:.4g}" for k, v in err.items()))
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(json.dumps(res, indent=1))
        print(f"written {out}")
    return res


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(prog="python -m benchmarks.gptq_vs_obc", description=__doc__.split("\n\n")[0])
    p.add_argument("--rows", type=int, default=512)
    p.add_argument("--cols", type=int, default=4608)
    p.add_argument("--obc-rows", type=int, default=2)
    p.add_argument("--bits", type=float, default=2.0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", default="outputs/bench/gptq_vs_obc.json")
    a = p.parse_args(argv)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    return run(a.rows, a.cols, a.obc_rows, a.bits, a.device, a.out)


if __name__ == "__main__":
    main()
