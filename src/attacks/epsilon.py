"""Empirical lower bound on the differential-privacy ε that an attack's ROC certifies
(Jagielski et al. 2020, "Auditing Differentially Private Machine Learning"; Nasr et al. 2021).

An (ε, δ = 0)-DP training algorithm bounds every membership test: TPR ≤ e^ε·FPR and, for the
complementary decision, TNR ≤ e^ε·FNR. Each ROC threshold therefore certifies

    ε ≥ log(TPR / FPR)   and   ε ≥ log((1 − FPR) / (1 − TPR)).

The rates are estimates from finitely many members P and non-members N, so each is replaced by its
exact (Clopper–Pearson) bound on the conservative side — two-sided 95 % intervals, i.e. each bound
at level 2.5 %:

    ε_lb = max over thresholds of max( log(TPR_lo / FPR_hi), log((1 − FPR_hi) / (1 − TPR_lo)) ),

clipped at 0. Conservative on both sides: the numerator takes its lower bound and the denominator
its upper bound (1 − FPR_hi is a lower bound on TNR, 1 − TPR_lo an upper bound on FNR). It is a
statement about this pool's training run, not a privacy guarantee, and with one target model it
treats examples as the independent trials (the usual audit convention).
"""
from __future__ import annotations

import numpy as np

from .metrics import _SortedScores


def clopper_pearson(k: np.ndarray, n: int, confidence: float = 0.95) -> tuple[np.ndarray, np.ndarray]:
    """Exact two-sided binomial interval for k successes out of n (element-wise)."""
    from scipy.stats import beta

    k = np.asarray(k, dtype=np.float64)
    a = (1.0 - confidence) / 2.0
    with np.errstate(invalid="ignore"):
        lo = np.where(k > 0, beta.ppf(a, k, n - k + 1), 0.0)
        hi = np.where(k < n, beta.ppf(1 - a, k + 1, n - k), 1.0)
    return lo, hi


def epsilon_lower_bound(scores: np.ndarray, is_member: np.ndarray, confidence: float = 0.95) -> dict:
    """{"epsilon", "threshold", "tpr", "fpr", "side"}: the best certified ε over the ROC's thresholds
    (a threshold τ predicts "member" for score ≥ τ), and where it is attained."""
    ss = _SortedScores(scores, is_member)
    n_pos, n_neg = int(ss.pos_idx.size), int(ss.neg_idx.size)
    tp = np.cumsum(ss.y)[ss.ends]  # counts at each distinct score, scores descending
    fp = np.cumsum(~ss.y)[ss.ends]
    tpr_lo, _ = clopper_pearson(tp, n_pos, confidence)
    _, fpr_hi = clopper_pearson(fp, n_neg, confidence)
    with np.errstate(divide="ignore", invalid="ignore"):
        e1 = np.log(tpr_lo) - np.log(fpr_hi)
        e2 = np.log1p(-fpr_hi) - np.log1p(-tpr_lo)
    e1, e2 = np.nan_to_num(e1, nan=-np.inf), np.nan_to_num(e2, nan=-np.inf)
    i1, i2 = int(np.argmax(e1)), int(np.argmax(e2))
    side, i, eps = ("tpr/fpr", i1, e1[i1]) if e1[i1] >= e2[i2] else ("tnr/fnr", i2, e2[i2])
    srt = np.asarray(scores, dtype=np.float64).ravel()[ss.order]
    return {"epsilon": float(max(0.0, eps)), "threshold": float(srt[ss.ends[i]]),
            "tpr": float(tp[i] / n_pos), "fpr": float(fp[i] / n_neg), "side": side,
            "confidence": float(confidence)}
