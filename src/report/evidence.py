"""Evidence beyond one ROC per target: is the quantized-vs-FP difference real, and where does it sit?

For every attack of a job, added to its block in results.json:

* ``paired``: Δ = metric(quantized) − metric(FP) for AUC and TPR at each FPR, with a paired
  bootstrap CI per target and a t-interval over targets (src/attacks/paired.py).
* ``subsets``: the attack's metrics on {calibration members vs all non-members} and {other members
  vs all non-members}, for the quantized and the FP target; with non-member calibration, the
  calibration non-members (as positives) against the other non-members.
* ``eps_lower_bound``: a 95 % lower bound on ε valid for every target at once (the minimum of the
  per-target bounds in ``eps_lower_bound_per_target``); ``eps_max_over_thresholds``: the mean over
  targets of the uncorrected maximum over ROC thresholds, an optimistic estimate kept for
  comparison, not a bound (src/attacks/epsilon.py).
* ``per_example``: top-1 %/10 % exposed members retained, Spearman of FP vs quantized scores.
* ``reference_threshold``: a threshold fixed from the references only, its realised TPR/FPR and the
  precision at membership priors 1 %, 10 %, 50 % (src/attacks/threshold.py).

Everything is recomputable from scores.npz (+ ``quant.calib_idx`` in results.json).
"""
from __future__ import annotations

import numpy as np

from src.attacks.epsilon import eps_lower_bound, eps_max_over_thresholds, eps_over_targets
from src.attacks.metrics import ScoreOrders, aggregate, attack_metrics, subset_order
from src.attacks.paired import aggregate_paired, paired_bootstrap
from src.attacks.shifts import per_example_shift
from src.attacks.threshold import PRIORS, reference_quantile, threshold_metrics


def _mean(values):
    vals = [v for v in values if v is not None and not (isinstance(v, float) and np.isnan(v))]
    return float(np.mean(vals)) if vals else None


def _summarise(per_target: list[dict]) -> dict:
    stats = aggregate(per_target)
    out = {k: v["mean"] for k, v in stats.items()}
    out["ci"] = {k: v["ci"] for k, v in stats.items()}
    return out


def subset_metrics(scores: dict, keep: np.ndarray, calib: dict, name: str, fprs, n_boot: int, seed: int,
                   orders: ScoreOrders | None = None) -> dict:
    """``calib``: {target: (source, indices)}. Metrics per subset, averaged over targets; a subset's
    scores are ordered by reading the whole set's order (``orders``) instead of sorting again."""
    orders = orders or ScoreOrders()
    subsets: dict[str, list] = {}
    # over ≥ 2 targets the interval is the t-interval over targets (aggregate), which reads no
    # per-target bootstrap interval: draw replicates only for a single target
    n_boot = n_boot if len(calib) == 1 else 0
    for t, (source, idx) in calib.items():
        if source not in ("members", "nonmembers") or len(idx) == 0:
            return {}
        mem = keep[t]
        in_calib = np.zeros(mem.size, dtype=bool)
        in_calib[idx] = True
        if source == "members":  # positives: a subset of the members; negatives: every non-member
            parts = {"calibration_members": in_calib, "other_members": mem & ~in_calib}
            negatives = ~mem
        else:  # does calibrating on x make x look like a member? positives: calibration non-members
            parts = {"calibration_nonmembers": in_calib}
            negatives = ~mem & ~in_calib
        for part, pos in parts.items():
            sel = pos | negatives
            subsets.setdefault(part, []).append(
                {kind: attack_metrics(s[sel], pos[sel], fprs=fprs, n_bootstrap=n_boot, seed=seed,
                                      order=subset_order(orders.of(s), sel))
                 for kind, s in (("quantized", scores[t]["q"][name]), ("fp", scores[t]["fp"][name]))})
    return {part: {kind: _summarise([p[kind] for p in per]) for kind in ("quantized", "fp")}
            for part, per in subsets.items()}


def _threshold(scores_t: dict, keep_t: np.ndarray, out_scores: dict | None, name: str, alpha: float) -> dict | None:
    if out_scores is None:
        return None
    return threshold_metrics(scores_t[name], keep_t, reference_quantile(out_scores[name], alpha))


def _threshold_summary(per_target: list) -> dict | None:
    if any(p is None for p in per_target):
        return None
    return {"threshold": _mean([p["threshold"] for p in per_target]),
            "tpr": _mean([p["tpr"] for p in per_target]), "fpr": _mean([p["fpr"] for p in per_target]),
            "ppv": {f"{pr:g}": _mean([p["ppv"][f"{pr:g}"] for p in per_target]) for pr in PRIORS},
            "per_target": per_target}


def epsilon_summary(scores: dict, keep: np.ndarray, name: str, seed: int) -> dict:
    """ε keys of an attack block from {target: {attack: scores}}: each target's valid bound (with the
    old estimate beside it), the minimum over targets as the value for the set."""
    per_target = []
    for t, s in scores.items():
        b = eps_lower_bound(s[name], keep[t], seed=seed)
        per_target.append({"target": int(t), **b,
                           "eps_max_over_thresholds": eps_max_over_thresholds(s[name], keep[t])["epsilon"]})
    return {"eps_lower_bound": eps_over_targets(per_target),
            "eps_max_over_thresholds": float(np.mean([p["eps_max_over_thresholds"] for p in per_target])),
            "eps_lower_bound_per_target": per_target}


def quantized_evidence(cfg, keep: np.ndarray, q_scores: dict, fp_scores: dict, q_out: dict, calib: dict,
                       orders: ScoreOrders | None = None) -> dict:
    """{attack: extra keys} for a block of quantized-target scores ``q_scores`` {t: {attack: [N]}};
    ``fp_scores`` the FP targets' scores, ``q_out`` {t: pseudo-target non-member scores or None};
    ``orders``: the scores' sorted orders, kept from their metrics (src/report/evaluate.py)."""
    fprs = tuple(float(f) for f in cfg.attack.get("fprs", (1e-2, 1e-3, 1e-4)))
    n_boot, seed = int(cfg.attack.get("bootstrap", 200)), int(cfg.seed)
    alpha = float(cfg.attack.get("threshold_fpr", 0.01))
    both = {t: {"q": q_scores[t], "fp": fp_scores[t]} for t in q_scores}
    orders = orders or ScoreOrders()
    out = {}
    for name in cfg.attack.names:
        paired = [paired_bootstrap(q_scores[t][name], fp_scores[t][name], keep[t], fprs, n_boot, seed,
                                   orders=(orders.of(q_scores[t][name]), orders.of(fp_scores[t][name])))
                  for t in q_scores]
        shifts = [per_example_shift(fp_scores[t][name], q_scores[t][name], keep[t]) for t in q_scores]
        out[name] = {
            "paired": aggregate_paired(paired),
            "subsets": subset_metrics(both, keep, calib, name, fprs, n_boot, seed, orders),
            **epsilon_summary(q_scores, keep, name, seed),
            "per_example": {k: _mean([s[k] for s in shifts]) for k in shifts[0]} | {"per_target": shifts},
            "reference_threshold": _threshold_summary(
                [_threshold(q_scores[t], keep[t], q_out.get(t), name, alpha) for t in q_scores]),
        }
    return out


def fp_evidence(cfg, keep: np.ndarray, fp_scores: dict, fp_out: dict) -> dict:
    """ε lower bound and reference-calibrated threshold of the FP targets (the baseline of Δ)."""
    alpha = float(cfg.attack.get("threshold_fpr", 0.01))
    out = {}
    for name in cfg.attack.names:
        out[name] = {**epsilon_summary(fp_scores, keep, name, int(cfg.seed)),
                     "reference_threshold": _threshold_summary(
                         [_threshold(fp_scores[t], keep[t], fp_out.get(t), name, alpha) for t in fp_scores])}
    return out
