"""Paired differences of attack metrics: quantized target vs its full-precision original.

Both targets are attacked on the same examples with the same membership labels, so the natural
question "did quantization change the leakage?" is about Δ = metric(quantized) − metric(FP) on the
*same* examples. Separate CIs for each metric ignore that the two score sets are strongly correlated
and overstate the noise in Δ. The paired bootstrap resamples examples once per replicate — members
and non-members separately, with replacement, as the single-metric bootstrap does — and computes
both metrics on that same resample; the 2.5/97.5 percentiles of the replicate Δs give a 95 % CI.
Δ is *significant* when that CI excludes 0. Across targets: the mean Δ with a t-interval (df = T − 1).
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from .metrics import (DEFAULT_FPRS, _point_metrics, _SortedScores, bootstrap_draws, percentile_ci, reordered,
                      replicate_metrics, t_quantile_975)

PAIRED_METRICS = ("auc",)  # plus tpr_at_fpr_<α> for every α


def paired_bootstrap(scores_q: np.ndarray, scores_fp: np.ndarray, is_member: np.ndarray,
                     fprs: Sequence[float] = DEFAULT_FPRS, n_bootstrap: int = 200, seed: int = 0,
                     orders: tuple[np.ndarray, np.ndarray] | None = None) -> dict[str, Any]:
    """{metric: {"delta", "ci": [lo, hi], "significant"}} for AUC and TPR at each FPR, one target.

    With ``n_bootstrap`` = 0 the CI is [Δ, Δ] and ``significant`` is None (no noise estimate).
    ``orders``: the two score sets' descending orders, if already made (src/attacks/metrics.py)."""
    y = np.asarray(is_member, dtype=bool).ravel()
    q, fp = (_SortedScores(s, y, o) for s, o in zip((scores_q, scores_fp), orders or (None, None)))
    keys = [k for k in _point_metrics(*q.roc(), fprs) if k == "auc" or k.startswith("tpr_at_fpr_")]
    mq, mfp = _point_metrics(*q.roc(), fprs), _point_metrics(*fp.roc(), fprs)
    delta = {k: mq[k] - mfp[k] for k in keys}
    if not n_bootstrap:
        return {k: {"delta": delta[k], "ci": [delta[k], delta[k]], "significant": None} for k in keys}
    mem, non = np.flatnonzero(y), np.flatnonzero(~y)
    rank = np.empty(y.size, dtype=np.int64)  # example index → its rank among members (or non-members)
    rank[mem], rank[non] = np.arange(mem.size), np.arange(non.size)
    # the same draws as attack_metrics(seed) makes; here slot i is the i-th member in example order,
    # so both score sets weight the same examples alike
    counts = bootstrap_draws(mem.size, non.size, int(n_bootstrap), seed).counts()
    a, c = (replicate_metrics(ss, reordered(*counts, rank[ss.order[ss.pos_idx]], rank[ss.order[ss.neg_idx]]), fprs,
                              balanced=False) for ss in (q, fp))
    ci = percentile_ci({k: a[k] - c[k] for k in keys})
    out = {}
    for k in keys:
        lo, hi = ci[k]
        out[k] = {"delta": delta[k], "ci": [lo, hi], "significant": bool(lo > 0 or hi < 0)}
    return out


def aggregate_paired(per_target: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean Δ over targets with a t-interval (T ≥ 2), or the one target's paired-bootstrap CI;
    ``per_target`` keeps each target's Δ and CI."""
    if not per_target:
        raise ValueError("aggregate_paired: no targets")
    out = {}
    for k in per_target[0]:
        d = np.array([p[k]["delta"] for p in per_target], dtype=np.float64)
        if len(d) >= 2:
            half = t_quantile_975(len(d) - 1) * float(d.std(ddof=1)) / math.sqrt(len(d))
            ci = [float(d.mean() - half), float(d.mean() + half)]
            sig = bool(ci[0] > 0 or ci[1] < 0)
            kind = "t over targets"
        else:
            ci, sig, kind = list(per_target[0][k]["ci"]), per_target[0][k]["significant"], "paired bootstrap"
        out[k] = {"delta": float(d.mean()), "ci": ci, "significant": sig, "ci_kind": kind,
                  "per_target": [p[k] for p in per_target]}
    return out
