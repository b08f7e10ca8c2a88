"""Per-example shifts: does quantization move the *same* examples' exposure, or reshuffle it?

Aggregate metrics can stay put while individual examples change places. For one attack and one
target: the members most exposed on the full-precision target (top 1 % and 10 % of members by the
FP score) and the fraction of them still in the top 1 % / 10 % of members by the quantized score;
and the Spearman rank correlation of FP vs quantized scores over all examples.
"""
from __future__ import annotations

import math

import numpy as np


def top_retained(fp: np.ndarray, q: np.ndarray, frac: float) -> float:
    """|top(fp) ∩ top(q)| / |top(fp)|, top = the ⌈frac·n⌉ highest scores (ties broken by index)."""
    n = len(fp)
    k = max(1, math.ceil(frac * n))
    a = set(np.argsort(-np.asarray(fp), kind="mergesort")[:k].tolist())
    b = set(np.argsort(-np.asarray(q), kind="mergesort")[:k].tolist())
    return len(a & b) / k


def per_example_shift(fp_scores: np.ndarray, q_scores: np.ndarray, is_member: np.ndarray) -> dict:
    from scipy.stats import spearmanr

    fp = np.asarray(fp_scores, dtype=np.float64).ravel()
    q = np.asarray(q_scores, dtype=np.float64).ravel()
    y = np.asarray(is_member, dtype=bool).ravel()
    rho = spearmanr(fp, q).statistic if np.ptp(fp) > 0 and np.ptp(q) > 0 else float("nan")
    return {"top1_retained": top_retained(fp[y], q[y], 0.01), "top10_retained": top_retained(fp[y], q[y], 0.10),
            "spearman": float(rho)}
