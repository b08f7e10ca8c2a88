"""Recompute the ε values of a finished job from its scores.npz (and the seed in its results.json).

    python -m src.report.epsilon JOB_DIR [--attack lira_online] [--confidence 0.95] [--seed S]

Prints, per block (quantized targets, matched references, FP targets), attack and target: the valid
95 % lower bound (src/attacks/epsilon.py ``eps_lower_bound``), the old uncorrected maximum over ROC
thresholds beside it, and the value valid for all targets at once (their minimum). Works on jobs
written before the bound changed, whose results.json still holds the old value.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from src.attacks.epsilon import SELECT_FRACTION, eps_lower_bound, eps_max_over_thresholds, eps_over_targets
from src.report.labels import target_label

# scores.npz array prefix → results.json block
BLOCKS = (("attack_", "attacks"), ("matched_attack_", "attacks_matched"), ("fp_attack_", "fp_attacks"))


def job_epsilons(job_dir: str | Path, attacks=None, confidence: float = 0.95, seed: int | None = None,
                 fraction: float = SELECT_FRACTION) -> list[dict]:
    """One dict per (block, attack): {"block", "attack", "eps_lower_bound" (min over targets),
    "eps_max_over_thresholds" (mean over targets), "stored" (results.json's eps_lower_bound),
    "per_target": [{"target", "label" (its display name), "eps_lower_bound", "eps_max_over_thresholds",
    "threshold", "side"}]}."""
    job = Path(job_dir)
    z = np.load(job / "scores.npz")
    res_path = job / "results.json"
    res = json.loads(res_path.read_text()) if res_path.exists() else {}
    if seed is None:
        seed = int((res.get("config") or {}).get("seed", 0))
    keep, tids = z["keep"], [int(t) for t in z["target_ids"]]
    labels = {t: target_label(res.get("config"), t) for t in tids}
    out = []
    for prefix, block in BLOCKS:
        names = sorted(k[len(prefix):] for k in z.files if k.startswith(prefix))
        for name in names:
            if attacks and name not in attacks:
                continue
            per = []
            for i, t in enumerate(tids):
                s = z[f"{prefix}{name}"][i]
                b = eps_lower_bound(s, keep[t], confidence, seed, fraction)
                per.append({"target": t, "label": labels[t], "epsilon": b["epsilon"], "threshold": b["threshold"],
                            "side": b["side"],
                            "eps_max_over_thresholds": eps_max_over_thresholds(s, keep[t], confidence)["epsilon"]})
            stored = ((res.get(block) or {}).get(name) or {}).get("eps_lower_bound")
            out.append({"block": block, "attack": name, "eps_lower_bound": eps_over_targets(per),
                        "eps_max_over_thresholds": float(np.mean([p["eps_max_over_thresholds"] for p in per])),
                        "stored": stored,
                        "per_target": [{"target": p["target"], "label": p["label"], "eps_lower_bound": p["epsilon"],
                                        "eps_max_over_thresholds": p["eps_max_over_thresholds"],
                                        "threshold": p["threshold"], "side": p["side"]} for p in per]})
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m src.report.epsilon", description=__doc__.splitlines()[0])
    p.add_argument("job_dir")
    p.add_argument("--attack", action="append", help="only this attack (repeatable)")
    p.add_argument("--confidence", type=float, default=0.95)
    p.add_argument("--seed", type=int, default=None, help="split seed (default: the job's seed)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    a = p.parse_args(argv)
    if not (Path(a.job_dir) / "scores.npz").exists():
        print(f"error: no scores.npz in {a.job_dir}", file=sys.stderr)
        return 2
    rows = job_epsilons(a.job_dir, a.attack, a.confidence, a.seed)
    if a.json:
        print(json.dumps(rows, indent=1))
        return 0
    pct = f"{a.confidence:.0%}"
    w = max([6] + [len(t["label"]) for r in rows for t in r["per_target"]])  # a checkpoint's name is wider
    print(f"{'block':<16} {'attack':<14} {'target':>{w}}  {'ε ≥ (' + pct + ')':>10}  {'old max':>8}  "
          "threshold / side")
    for r in rows:
        for t in r["per_target"]:
            print(f"{r['block']:<16} {r['attack']:<14} {t['label']:>{w}}  {t['eps_lower_bound']:>10.3f}  "
                  f"{t['eps_max_over_thresholds']:>8.3f}  {t['threshold']:.4g} / {t['side']}")
        stored = "" if r["stored"] is None else f"  (results.json eps_lower_bound: {r['stored']:.3f})"
        print(f"{r['block']:<16} {r['attack']:<14} {'all':>{w}}  {r['eps_lower_bound']:>10.3f}  "
              f"{r['eps_max_over_thresholds']:>8.3f}  min over targets / mean of old{stored}")
    print(f"\nε ≥: {pct} lower bound (threshold chosen on {SELECT_FRACTION:.0%} of each class, certified on "
          "the rest); 'all' = valid for every target at once. old max: uncorrected maximum over ROC "
          "thresholds, an optimistic estimate, not a bound.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
