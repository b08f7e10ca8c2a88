"""Every attack's metrics for a set of targets: per target, across targets and pooled over them
(src/attacks/metrics.py, src/attacks/pooled.py); shared by results.json's attack blocks and the
joint-release block."""
from __future__ import annotations

import numpy as np


def evaluate_attacks(cfg, keep: np.ndarray, scores: dict[int, dict[str, np.ndarray]], weights=None,
                     views: dict | None = None, names=None, orders=None) -> dict:
    """Every attack's metrics (``names``, default the job's attacks) per target, across targets and
    pooled; ``views`` (if given) receives each attack's pooled view {attack: PooledScores}, whose reads
    the pooled paired Δ reuses; ``orders`` (a ScoreOrders, if given) keeps each target's sorted
    scores for the evidence that reads them again."""
    from src.attacks.metrics import aggregate, alpha_key, attack_metrics, roc_points
    from src.attacks.pooled import PooledScores, pooled_metrics

    fprs = tuple(float(f) for f in cfg.attack.get("fprs", (1e-2, 1e-3, 1e-4)))
    n_boot = int(cfg.attack.get("bootstrap", 200))
    out = {}
    for name in (names or cfg.attack.names):
        per_target = [attack_metrics(s[name], keep[t], fprs=fprs, n_bootstrap=n_boot, seed=int(cfg.seed),
                                     order=None if orders is None else orders.of(s[name]))
                      for t, s in scores.items()]
        stats = aggregate(per_target)  # {metric: {mean, std, ci, n, values}}
        agg = {k: v["mean"] for k, v in stats.items()}
        agg["std"] = {k: v["std"] for k, v in stats.items()}
        agg["ci"] = {k: v["ci"] for k, v in stats.items()}
        agg["ci_kind"] = "t over targets" if len(per_target) > 1 else "bootstrap (members/non-members resampled)"
        agg["n_targets"] = len(per_target)
        # a TPR at FPR α < 1/N non-members rests on zero false positives: kept, but flagged
        agg["resolved"] = {f"tpr_at_fpr_{alpha_key(a)}": all(p[f"fp_at_fpr_{alpha_key(a)}"] >= 1 for p in per_target)
                           for a in fprs}
        view = PooledScores([s[name] for s in scores.values()], [keep[t] for t in scores])
        if views is not None:
            views[name] = view
        # the pooled ROC (all targets' examples, one threshold) with its interval (src/attacks/pooled.py)
        agg["pooled"] = pooled_metrics(None, None, fprs, weights, view=view)
        fpr, tpr = view.roc()
        pf, pt = roc_points(fpr, tpr)
        agg["per_target"] = per_target
        agg["targets"] = list(scores)
        agg["roc"] = {"fpr": [float(v) for v in pf], "tpr": [float(v) for v in pt]}
        out[name] = agg
    return out
