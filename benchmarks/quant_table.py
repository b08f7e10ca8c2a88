"""Utility of every quantizer at every bit-width on the embedded default, with timings.

    python -m benchmarks.quant_table [--bits 4,3,2,1.58] [--methods rtn,adaround,brecq,obc,gptq]
                                     [--out outputs/bench/quant_table.json] [overrides ...]

Pool model 0 of the default Hydra config (digits, smallcnn; composed with hydra's compose API, so
the quant budgets are the embedded default's) is trained or loaded from the artifact cache, then
quantized by each method at each bit-width, calibrating on the model's own members
(``pipeline.calibration_indices``) exactly as a job does. Rows FP, RTN, AdaRound, BRECQ, OBC, GPTQ;
columns test accuracy per bit-width and seconds per method (summed over bit-widths). Extra
arguments are Hydra overrides (e.g. ``dataset=synthetic``).
"""
from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

REPO = Path(__file__).resolve().parents[1]
NAMES = {"none": "FP", "rtn": "RTN", "adaround": "AdaRound", "brecq": "BRECQ", "qdrop": "QDrop", "obc": "OBC", "gptq": "GPTQ"}


def compose_cfg(overrides: list[str]):
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose(config_name="config", overrides=["logger=none", "progress=false", *overrides])
    OmegaConf.set_struct(cfg, False)  # the job adds seed/progress to cfg.quant, as the pipeline does
    return cfg


def run(bits: list[float], methods: list[str], out: str, overrides: list[str] | None = None) -> dict:
    from src import pipeline as P
    from src.cache import ArtifactStore
    from src.data import load_dataset, normalize
    from src.quant import NEEDS_CALIBRATION, quantize
    from src.training.pool import evaluate_accuracy, resolve_device

    overrides = list(overrides or [])
    cfg = compose_cfg(overrides)
    data = load_dataset(cfg.dataset, cfg.paths.data_dir)
    keep = P.membership(cfg, data)
    store = ArtifactStore(cfg.paths.cache_dir, lock=cfg.get("cache_lock", "soft"))
    device = resolve_device(cfg.get("device", "auto"))
    t0 = time.perf_counter()
    fp_model, info = P.get_pool_model(cfg, data, keep, 0, store, device)
    res = {"dataset": cfg.dataset.name, "model": cfg.model.name, "index": 0, "device": device, "bits": bits,
           "fp": {"test_acc": info["test_acc"], "train_acc": info["train_acc"],
                  "seconds_train_or_load": time.perf_counter() - t0},
           "methods": {}}
    for m in methods:
        row = {"acc": {}, "seconds": {}, "errors": {}}
        for b in bits:
            try:
                qc = compose_cfg([*overrides, f"quant={m}", f"bits={b}"])
                calib_x = None  # RTN and the controls look only at the weights
                if m in NEEDS_CALIBRATION:
                    source, idx = P.calibration_indices(qc, data, keep, 0)
                    x_src = data.x_test if source == "test" else data.x_train
                    calib_x = normalize(x_src[torch.from_numpy(idx)], data.mean, data.std)
                qcfg = OmegaConf.merge(OmegaConf.to_container(qc.quant, resolve=True), {"seed": int(qc.seed), "progress": False})
                r = quantize(fp_model, float(b), qcfg, qc.bitwidth.policy, calib_x, qc.dataset.name, device)
                row["acc"][str(b)] = evaluate_accuracy(r.model, data.x_test, data.y_test, data.mean, data.std, device)
                row["seconds"][str(b)] = r.seconds
                row["config"] = {k: v for k, v in OmegaConf.to_container(qc.quant, resolve=True).items()
                                 if k in ("iters", "n_calib", "calibration", "batch_size", "damp")}
            except Exception as e:  # a method still being written or failing: report and go on
                row["errors"][str(b)] = f"{type(e).__name__}: {str(e).splitlines()[0][:160] if str(e) else ''}"
        row["seconds_total"] = sum(row["seconds"].values())
        res["methods"][m] = row
    print(format_table(res))
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(out).with_suffix(".json.tmp")
    tmp.write_text(json.dumps(res, indent=1))
    os.replace(tmp, out)
    print(f"written {out}")
    return res


def format_table(res: dict) -> str:
    bits = [str(b) for b in res["bits"]]
    head = f"{'method':<10}" + "".join(f"{b + ' bit':>10}" for b in bits) + f"{'seconds':>10}"
    lines = [f"pool model 0 of {res['dataset']}/{res['model']} (device {res['device']}): test accuracy", head,
             "-" * len(head)]
    fp = f"{res['fp']['test_acc']:.4f}"
    lines.append(f"{'FP':<10}" + "".join(f"{fp:>10}" for _ in bits) + f"{'-':>10}")
    for m, row in res["methods"].items():
        cells = "".join(f"{row['acc'][b]:>10.4f}" if b in row["acc"] else f"{'ERR':>10}" for b in bits)
        lines.append(f"{NAMES.get(m, m):<10}{cells}{row['seconds_total']:>10.1f}")
        for b, err in row["errors"].items():
            lines.append(f"    {m} at {b} bits: {err}")
    return "\n".join(lines)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(prog="python -m benchmarks.quant_table", description=__doc__.split("\n\n")[0])
    p.add_argument("--bits", default="4,3,2,1.58")
    p.add_argument("--methods", default="rtn,adaround,brecq,obc,gptq")
    p.add_argument("--out", default="outputs/bench/quant_table.json")
    p.add_argument("overrides", nargs="*", help="Hydra overrides for the composed config")
    a = p.parse_args(argv)
    bits = [float(b) for b in a.bits.split(",") if b.strip()]
    methods = [m.strip() for m in a.methods.split(",") if m.strip()]
    return run(bits, methods, a.out, a.overrides)


if __name__ == "__main__":
    main()
