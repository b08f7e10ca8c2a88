"""The effect of each difference from the study's code, one switch at a time
(docs/study-differences.md).

    python -m benchmarks.protocol_effects [--targets 0,1] [--rows 0,4] [--tiny] [--out outputs/bench/protocol_effects.json] [overrides ...]

Every row is one job on the same pool and seed (extra arguments are Hydra overrides, e.g. an
``experiment=``), differing from its baseline row in one switch only; printed: test accuracy, LiRA
online AUC and TPR at 1 % FPR against the quantized target (and the FP target where the switch
changes the attack side), each the mean over the targets.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# --tiny: generated data, 4 pool models, 1 epoch, small calibration and budgets (seconds per row)
TINY = ["dataset=synthetic", "n_models=4", "train.epochs=1", "budget.n_calib=32", "budget.iters=4",
        "attack.bootstrap=10"]
ROWS = [  # (row label, quantizer + bits, the one switch)
    ("AdaRound 2 bit (default)", ["quant=adaround", "bits=2"], []),
    ("  1 calibration augmented", ["quant=adaround", "bits=2"], ["quant.calib_augment=crop_flip"]),
    ("  3 BN unfolded, raw output, λ 0.001", ["quant=adaround", "bits=2"],
     ["quant.fold_bn=false", "quant.activation_in_loss=false", "quant.reg_lambda=0.001"]),
    ("  6 independent target, all pool models refs", ["quant=adaround", "bits=2"], ["membership.target=independent"]),
    ("OBC 2 bit (default)", ["quant=obc", "bits=2"], []),
    ("  1 Hessian over 10 augmented passes", ["quant=obc", "bits=2"], ["quant.calib_augment=crop_flip", "quant.calib_passes=10"]),
    ("  2 BN re-estimated on train images", ["quant=obc", "bits=2"], ["quant.fold_bn=false", "quant.bn_tune=train"]),
    ("  2' BN re-estimated on members", ["quant=obc", "bits=2"], ["quant.fold_bn=false", "quant.bn_tune=members"]),
    ("OBC 1.58 bit (default)", ["quant=obc", "bits=1.58"], []),
    ("  4 affine ternary grid", ["quant=obc", "bits=1.58"], ["quant.ternary=affine"]),
    ("RTN 4 bit, all attacks (default)", ["quant=rtn", "bits=4", "attack=all"], []),
    ("  5 two random crop+flip queries", ["quant=rtn", "bits=4", "attack=all"], ["dataset.queries=[random_aug,random_aug]"]),
    ("  8 LiRA reference-code conventions", ["quant=rtn", "bits=4", "attack=all"],
     ["attack.fixed_variance=pooled_in", "attack.offline=two_sided"]),
]


def run_row(args: list[str], out: Path) -> dict:
    env = dict(os.environ, WANDB_MODE="disabled")
    p = subprocess.run([sys.executable, "-m", "src.main", *args, f"hydra.run.dir={out}"], cwd=REPO, env=env,
                       capture_output=True, text=True)
    if p.returncode:
        return {"error": (p.stderr.strip().splitlines() or ["?"])[-1]}
    r = json.loads((out / "results.json").read_text())

    def pick(block):
        return {f"{a}/{k}": block[a][k] for a in block for k in ("auc", "tpr_at_fpr_1e-2")}

    return {"test_acc": r["utility"]["test_acc"], "fp_test_acc": r["utility"]["fp_test_acc"],
            "quantized": pick(r["attacks"]), "fp": pick(r["fp_attacks"])}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.protocol_effects", description=__doc__.split("\n\n")[0])
    p.add_argument("--targets", default="0,1")
    p.add_argument("--out", default="outputs/bench/protocol_effects.json")
    p.add_argument("--rows", default=None, help="comma-separated row numbers (0-based; default: all)")
    p.add_argument("--tiny", action="store_true", help="a check of the code paths: tiny generated data and pool")
    p.add_argument("overrides", nargs="*")
    a = p.parse_args(argv)
    tiny = TINY if a.tiny else []
    common = [f"targets=[{a.targets}]", "logger=none", "progress=false", *tiny, *a.overrides]
    try:
        picked = sorted({int(r) for r in a.rows.split(",")}) if a.rows else list(range(len(ROWS)))
        assert all(0 <= r < len(ROWS) for r in picked)
    except (ValueError, AssertionError):
        p.error(f"--rows {a.rows}: allowed: comma-separated numbers from 0..{len(ROWS) - 1}")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for i, (label, base, switch) in ((i, ROWS[i]) for i in picked):
            res = run_row([*base, *switch, *common], Path(tmp) / str(i))
            rows.append({"row": label, "overrides": base + switch, **res})
            q, f = res.get("quantized", {}), res.get("fp", {})
            line = (f"{label:<40} acc {res.get('test_acc', float('nan')):.4f}  "
                    f"LiRA AUC q {q.get('lira_online/auc', float('nan')):.4f} fp {f.get('lira_online/auc', float('nan')):.4f}  "
                    f"TPR@1% q {q.get('lira_online/tpr_at_fpr_1e-2', float('nan')):.4f} "
                    f"fp {f.get('lira_online/tpr_at_fpr_1e-2', float('nan')):.4f}")
            print(line if "error" not in res else f"{label:<40} error: {res['error']}", flush=True)
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(rows, indent=1))
    print(f"written {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
