"""A decision threshold the attacker can set without the target's ground truth, and what it achieves.

ROC metrics pick every threshold with the target's labels in hand. A real attacker must fix τ
beforehand (Revisiting LiRA under realistic assumptions, 2025): here from the reference models
alone. Each of a few references plays the target in turn, attacked by the remaining references with
the same attack; τ is the empirical (1 − α) quantile of the scores of those pseudo-targets'
non-members (so that at most a fraction α of them score above τ). On the real target, "member" is
predicted for score > τ, and we report the TPR and FPR it actually gets, and the precision (PPV)
at membership priors π:

    PPV(π) = π·TPR / (π·TPR + (1 − π)·FPR)

(undefined, None, when nothing is predicted member). A realised FPR far above α shows that the
references' scores are not calibrated for the target — e.g. FP references against a quantized one.
"""
from __future__ import annotations

import numpy as np

PRIORS = (0.01, 0.1, 0.5)


def reference_quantile(out_scores: np.ndarray, alpha: float) -> float:
    """τ with #{s > τ} ≤ α·n among the pseudo-targets' non-member scores (the smallest such order statistic)."""
    s = np.sort(np.asarray(out_scores, dtype=np.float64).ravel())
    if s.size == 0:
        raise ValueError("reference_quantile: no reference non-member scores")
    allowed = int(np.floor(alpha * s.size))  # scores that may lie above τ
    return float(s[s.size - 1 - allowed])


def ppv(tpr: float, fpr: float, prior: float) -> float | None:
    den = prior * tpr + (1.0 - prior) * fpr
    return None if den <= 0 else float(prior * tpr / den)


def threshold_metrics(scores: np.ndarray, is_member: np.ndarray, tau: float, priors=PRIORS) -> dict:
    s = np.asarray(scores, dtype=np.float64).ravel()
    y = np.asarray(is_member, dtype=bool).ravel()
    tpr, fpr = float((s[y] > tau).mean()), float((s[~y] > tau).mean())
    return {"threshold": float(tau), "tpr": tpr, "fpr": fpr, "ppv": {f"{p:g}": ppv(tpr, fpr, p) for p in priors}}
