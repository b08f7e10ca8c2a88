"""Attack metrics from exact ROC curves (docs/attacks.md, "Metrics").

Convention: an example is predicted member when score ≥ threshold. The ROC is exact: one point per
distinct score value (tied scores enter together, as one point), from (0, 0) to (1, 1), no binning.

* AUC: trapezoid rule on the exact ROC (equals the Mann–Whitney probability P(s_m > s_n) + ½ P(=)).
* Balanced accuracy: max over thresholds of 1 − (FPR + FNR)/2 = max (1 + TPR − FPR)/2.
* TPR@FPR α: the largest TPR among ROC points with FPR ≤ α — a conservative step read (no
  interpolation between points). α is backed by floor(α·n_nonmembers) false positives
  (``fp_at_fpr_*``; 0.1 % of 25,000 is 25); when that is 0 the read is "TPR at zero false positives".
* Bootstrap CIs (percentile, 95 %): members and non-members resampled separately with replacement.
  Scores are sorted once; a replicate only re-weights the sorted examples (exactly equivalent to
  re-sorting the resampled set, O(N) per replicate).
* Across targets: mean and a t-based 95 % CI (df = T − 1); with one target the bootstrap CI if any.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

DEFAULT_FPRS = (1e-2, 1e-3, 1e-4)


def alpha_key(alpha: float) -> str:
    """'1e-2' for 0.01, '2.5e-3' for 0.0025: the suffix of the tpr_at_fpr_* / fp_at_fpr_* keys."""
    mant, exp = f"{float(alpha):e}".split("e")
    mant = mant.rstrip("0").rstrip(".")
    return f"{mant}e{int(exp)}"


def _check(scores: np.ndarray, is_member: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    s = np.asarray(scores, dtype=np.float64).ravel()
    y = np.asarray(is_member).ravel()
    if y.dtype != bool:
        if not np.isin(y, (0, 1)).all():
            raise ValueError("is_member must be boolean (or 0/1)")
        y = y.astype(bool)
    if s.shape != y.shape:
        raise ValueError(f"scores {s.shape} and is_member {y.shape} differ in length")
    if np.isnan(s).any():
        raise ValueError("scores contain NaN")
    if not y.any() or y.all():
        raise ValueError("need at least one member and one non-member for a ROC curve")
    return s, y


class _SortedScores:
    """Scores sorted once (descending) with tie-group ends, for exact weighted ROC curves."""

    def __init__(self, scores: np.ndarray, is_member: np.ndarray) -> None:
        s, y = _check(scores, is_member)
        order = np.argsort(-s, kind="mergesort")
        self.order = order  # sorted position → example index
        srt = s[order]
        self.ends = np.flatnonzero(np.r_[srt[1:] != srt[:-1], True])  # last index of each tie group
        self.y = y[order]
        self.pos_idx = np.flatnonzero(self.y)  # sorted positions of members
        self.neg_idx = np.flatnonzero(~self.y)

    def roc(self, w_pos: np.ndarray | None = None, w_neg: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(fpr, tpr) with integer per-example weights (multiplicities) on members/non-members."""
        n = self.y.size
        wp = np.zeros(n, dtype=np.int64)
        wn = np.zeros(n, dtype=np.int64)
        wp[self.pos_idx] = 1 if w_pos is None else w_pos
        wn[self.neg_idx] = 1 if w_neg is None else w_neg
        tp = np.cumsum(wp)[self.ends]
        fp = np.cumsum(wn)[self.ends]
        return np.r_[0.0, fp / fp[-1]], np.r_[0.0, tp / tp[-1]]


def roc_curve(scores: np.ndarray, is_member: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Exact ROC: (fpr, tpr), one point per distinct score (ties as one point), starting at (0, 0)."""
    return _SortedScores(scores, is_member).roc()


def auc(fpr: np.ndarray, tpr: np.ndarray) -> float:
    """Area under the ROC curve by the trapezoid rule."""
    fpr = np.asarray(fpr, dtype=np.float64)
    tpr = np.asarray(tpr, dtype=np.float64)
    return float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1])) / 2.0)


def balanced_accuracy(fpr: np.ndarray, tpr: np.ndarray) -> float:
    """max over thresholds of 1 − (FPR + FNR)/2 (≥ 0.5: the trivial thresholds are ROC points)."""
    return float(np.max(1.0 - (np.asarray(fpr) + 1.0 - np.asarray(tpr)) / 2.0))


def tpr_at_fpr(fpr: np.ndarray, tpr: np.ndarray, alpha: float) -> float:
    """Largest TPR among ROC points with FPR ≤ α (conservative step read; (0, 0) is always a point)."""
    fpr = np.asarray(fpr, dtype=np.float64)
    ok = fpr <= alpha
    return float(np.max(np.asarray(tpr)[ok])) if ok.any() else 0.0


def n_nonmembers_at(alpha: float, n_neg: int) -> int:
    """False positives that FPR ≤ α allows: the largest k with k / n_neg ≤ α, i.e. floor(α·n_neg),
    computed with the same floating comparison that :func:`tpr_at_fpr` makes."""
    k = int(math.floor(alpha * n_neg))
    while k + 1 <= n_neg and (k + 1) / n_neg <= alpha:
        k += 1
    while k > 0 and k / n_neg > alpha:
        k -= 1
    return max(0, min(k, n_neg))


def _point_metrics(fpr: np.ndarray, tpr: np.ndarray, fprs: Sequence[float]) -> dict[str, float]:
    out = {"auc": auc(fpr, tpr), "balanced_accuracy": balanced_accuracy(fpr, tpr)}
    for a in fprs:
        out[f"tpr_at_fpr_{alpha_key(a)}"] = tpr_at_fpr(fpr, tpr, a)
    return out


def attack_metrics(
    scores: np.ndarray,
    is_member: np.ndarray,
    fprs: Sequence[float] = DEFAULT_FPRS,
    n_bootstrap: int = 0,
    seed: int = 0,
) -> dict[str, Any]:
    """Metrics of one attack on one target.

    Keys: auc, balanced_accuracy, tpr_at_fpr_<α>, fp_at_fpr_<α> (false positives that α allows),
    n_members, n_nonmembers; with ``n_bootstrap`` > 0 also n_bootstrap and
    ci = {metric: [lo, hi]} (95 % percentile bootstrap, members/non-members resampled separately).
    """
    fprs = tuple(float(a) for a in fprs)
    ss = _SortedScores(scores, is_member)
    fpr, tpr = ss.roc()
    n_pos, n_neg = int(ss.pos_idx.size), int(ss.neg_idx.size)
    out: dict[str, Any] = _point_metrics(fpr, tpr, fprs)
    for a in fprs:
        out[f"fp_at_fpr_{alpha_key(a)}"] = n_nonmembers_at(a, n_neg)
    out["n_members"] = n_pos
    out["n_nonmembers"] = n_neg
    if n_bootstrap and n_bootstrap > 0:
        rng = np.random.default_rng(seed)
        reps: dict[str, list[float]] = {k: [] for k in _point_metrics(fpr, tpr, fprs)}
        for _ in range(int(n_bootstrap)):
            wp = np.bincount(rng.integers(0, n_pos, n_pos), minlength=n_pos)
            wn = np.bincount(rng.integers(0, n_neg, n_neg), minlength=n_neg)
            for k, v in _point_metrics(*ss.roc(wp, wn), fprs).items():
                reps[k].append(v)
        out["n_bootstrap"] = int(n_bootstrap)
        out["ci"] = {k: [float(np.percentile(v, 2.5)), float(np.percentile(v, 97.5))] for k, v in reps.items()}
    return out


# two-sided 97.5 % quantiles of Student's t for df = 1..30 (fallback when scipy is absent)
_T975 = (
    12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228,
    2.201, 2.179, 2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086,
    2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042,
)


def t_quantile_975(df: int) -> float:
    """0.975 quantile of Student's t with ``df`` degrees of freedom."""
    try:
        from scipy.stats import t

        return float(t.ppf(0.975, df))
    except ImportError:  # pragma: no cover - scipy ships with scikit-learn
        return _T975[df - 1] if df <= 30 else 1.96 + 2.4 / df


def is_rate(metric: str) -> bool:
    """Metrics that are probabilities (bounded to [0, 1]), as opposed to counts such as ``fp_at_fpr_*``."""
    return metric in ("auc", "balanced_accuracy") or metric.startswith("tpr_at_fpr_")


def aggregate(per_target: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Mean and 95 % CI of every numeric metric across targets.

    Returns {metric: {"mean", "std" (ddof 1; 0 for one target), "ci": [lo, hi], "n", "values"}}.
    CI: mean ± t_{0.975, T−1}·std/√T for T ≥ 2; for T = 1 the target's bootstrap CI when present,
    else [value, value]. For rates (AUC, balanced accuracy, TPR at FPR) the t-interval is clipped to
    [0, 1]: the true rate lies in that range, so clipping never lowers the interval's coverage.
    """
    if not per_target:
        raise ValueError("aggregate: no targets")
    keys = [k for k, v in per_target[0].items() if k not in ("ci", "n_bootstrap") and isinstance(v, (int, float, np.number)) and not isinstance(v, bool)]
    out: dict[str, dict[str, Any]] = {}
    t_n = len(per_target)
    for k in keys:
        vals = np.array([float(d[k]) for d in per_target])
        mean = float(vals.mean())
        if t_n >= 2:
            std = float(vals.std(ddof=1))
            half = t_quantile_975(t_n - 1) * std / math.sqrt(t_n)
            ci = [mean - half, mean + half]
            if is_rate(k):
                ci = [max(0.0, ci[0]), min(1.0, ci[1])]
        else:
            std = 0.0
            ci = list(per_target[0].get("ci", {}).get(k, [mean, mean]))
        out[k] = {"mean": mean, "std": std, "ci": [float(c) for c in ci], "n": t_n, "values": vals.tolist()}
    return out


def roc_points(
    fpr: np.ndarray, tpr: np.ndarray, n: int = 100, min_fpr: float = 1e-5
) -> tuple[np.ndarray, np.ndarray]:
    """Log-spaced downsample of a ROC for plots: grid FPRs from ``min_fpr`` to 1 and, for each, the
    conservative TPR (largest TPR at FPR ≤ grid value) — a valid, non-decreasing step curve."""
    fpr = np.asarray(fpr, dtype=np.float64)
    tpr = np.asarray(tpr, dtype=np.float64)
    grid = np.logspace(np.log10(min_fpr), 0.0, int(n))
    order = np.argsort(fpr, kind="mergesort")
    f, best = fpr[order], np.maximum.accumulate(tpr[order])
    idx = np.searchsorted(f, grid, side="right") - 1
    return grid, np.where(idx >= 0, best[np.maximum(idx, 0)], 0.0)


def pooled_roc(scores: Sequence[np.ndarray], is_member: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Exact ROC of all targets' examples together (scores and labels concatenated)."""
    if len(scores) != len(is_member) or not scores:
        raise ValueError("pooled_roc: need one label array per score array, at least one target")
    return roc_curve(np.concatenate([np.ravel(s) for s in scores]), np.concatenate([np.ravel(y) for y in is_member]))
