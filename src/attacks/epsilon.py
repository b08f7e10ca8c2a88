"""Empirical lower bound on the differential-privacy ε that an attack's scores certify
(Jagielski et al. 2020, "Auditing Differentially Private Machine Learning"; Nasr et al. 2021).

An (ε, δ = 0)-DP training algorithm bounds every membership test: TPR ≤ e^ε·FPR and, for the
complementary decision, TNR ≤ e^ε·FNR. A threshold τ ("member" for score ≥ τ) therefore certifies

    ε ≥ log(TPR_lo / FPR_hi)   and   ε ≥ log((1 − FPR_hi) / (1 − TPR_lo)),

with TPR_lo, FPR_hi the ends of exact two-sided 95 % Clopper–Pearson intervals of the rates
(each end at level 2.5 %). Both sides use the same two ends, so when both ends hold (probability
≥ 95 % by the union bound) both sides hold: the side costs nothing, the threshold does.

* ``eps_lower_bound`` (the reported bound): a seeded random quarter of each class selects the
  threshold (the one maximising the certified ε on that quarter, cut halfway to the next lower
  score); the other three quarters certify it alone. Given the selection quarter, the certifying
  counts are exact binomials at one fixed threshold, so P(ε_lb > ε) ≤ 5 %. Chosen by power measured
  with Laplace scores of known ε (benchmarks/epsilon_coverage.py, mean bound at n = 750 / 5,000
  per class, ε = 1, 2, 4): a quarter selecting beats a half (0.69/1.57/3.08 vs 0.60/1.45/2.95 at
  750), and matches or beats a Bonferroni correction over six thresholds fixed at the exact
  non-member quantiles (0.57/1.54/3.06; at 5,000 0.85/1.79/3.58 vs 0.83/1.76/3.61) and one
  reference-calibrated threshold at FPR 1 % (0.07/1.05/3.27), which wins only when the best
  threshold happens to sit at its FPR. It needs only the target's scores, so scores.npz alone
  recomputes it; the alternatives need reference scores that the job does not keep.
* ``eps_at_thresholds``: thresholds fixed without the target's scores (e.g. quantiles of reference
  models' scores), certified on all examples with a Bonferroni correction over them.
* ``eps_max_over_thresholds``: the maximum over every ROC threshold of the per-threshold bound, with
  no correction for that selection. An optimistic estimate, NOT a 95 % bound (with Laplace scores of
  known ε it exceeds the truth in far more than 5 % of draws); kept only for comparison with tools
  that report it.

It is a statement about one training run, whose examples are the trials; not a DP audit of the
training algorithm (that needs many training runs with and without a canary).
"""
from __future__ import annotations

from functools import lru_cache

import numpy as np

from .metrics import _check


@lru_cache(maxsize=1024)  # a job's targets × attacks × subsets have many sizes; n + 1 floats each
def _cp_end(n: int, confidence: float, upper: bool) -> np.ndarray:
    """The lower (or upper) Clopper–Pearson end for k = 0..n, computed once per n: counts index it."""
    from scipy.stats import beta

    k = np.arange(n + 1, dtype=np.float64)
    a = (1.0 - confidence) / 2.0
    with np.errstate(invalid="ignore"):
        if upper:
            end = np.where(k < n, beta.ppf(1 - a, k + 1, n - k), 1.0)
        else:
            end = np.where(k > 0, beta.ppf(a, k, n - k + 1), 0.0)
    end.flags.writeable = False
    return end


def clopper_pearson(k, n: int, confidence: float = 0.95) -> tuple[np.ndarray, np.ndarray]:
    """Exact two-sided binomial interval for integer k successes out of n (element-wise)."""
    k = np.asarray(k, dtype=np.int64)
    return _cp_end(n, confidence, False)[k], _cp_end(n, confidence, True)[k]


def _sides(tp: np.ndarray, fp: np.ndarray, n_pos: int, n_neg: int, confidence: float):
    """log(TPR_lo / FPR_hi) and log((1 − FPR_hi) / (1 − TPR_lo)) for integer counts (any shape)."""
    tpr_lo = _cp_end(n_pos, confidence, False)[tp]
    fpr_hi = _cp_end(n_neg, confidence, True)[fp]
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.log(tpr_lo) - np.log(fpr_hi), np.log1p(-fpr_hi) - np.log1p(-tpr_lo)


def _certified(tp: np.ndarray, fp: np.ndarray, n_pos: int, n_neg: int, confidence: float) -> np.ndarray:
    """The larger of both sides' bounds; −inf where neither is defined (0/0)."""
    e1, e2 = _sides(tp, fp, n_pos, n_neg, confidence)
    return np.fmax(np.nan_to_num(e1, nan=-np.inf), np.nan_to_num(e2, nan=-np.inf))


def _as_batch(scores, is_member) -> tuple[np.ndarray, np.ndarray]:
    """(D, N) scores and (N,) labels shared by the D rows (a row is one draw or one target)."""
    s = np.asarray(scores, dtype=np.float64)
    s2 = s.reshape(1, -1) if s.ndim == 1 else s
    _, y = _check(s2[0], is_member)
    if s2.ndim != 2 or s2.shape[1] != y.size:
        raise ValueError(f"scores {s.shape} do not match is_member {y.shape}")
    if np.isnan(s2).any():
        raise ValueError("scores contain NaN")
    return s2, y


def _one_row(scores, is_member) -> tuple[np.ndarray, np.ndarray]:
    s, y = _as_batch(scores, is_member)
    if s.shape[0] != 1:
        raise ValueError("expected one row of scores (1-D)")
    return s, y


def _roc_counts(s: np.ndarray, y: np.ndarray):
    """Per row, scores descending with TP/FP counts at each position and a mask of tie-group ends
    (only there is the position a threshold: tied scores enter together)."""
    order = np.argsort(-s, axis=1, kind="stable")
    srt = np.take_along_axis(s, order, axis=1)
    ys = y[order]
    tp, fp = np.cumsum(ys, axis=1), np.cumsum(~ys, axis=1)
    end = np.ones(s.shape, dtype=bool)
    end[:, :-1] = srt[:, 1:] != srt[:, :-1]
    return srt, tp, fp, end


def _max_over_thresholds(s: np.ndarray, y: np.ndarray, confidence: float, midpoint: bool = False):
    """Per row: (best ε, its threshold, its TP, its FP) over all ROC thresholds. The threshold is the
    lowest score predicted member, or with ``midpoint`` halfway to the next lower score (the same
    counts here, a less biased cut for other examples)."""
    srt, tp, fp, end = _roc_counts(s, y)
    e = np.where(end, _certified(tp, fp, int(y.sum()), int((~y).sum()), confidence), -np.inf)
    i = np.argmax(e, axis=1)[:, None]
    pick = lambda a: np.take_along_axis(a, i, axis=1)[:, 0]  # noqa: E731
    tau = pick(srt)
    if midpoint:
        below = np.take_along_axis(srt, np.minimum(i + 1, s.shape[1] - 1), axis=1)[:, 0]
        with np.errstate(invalid="ignore"):
            mid = tau + (below - tau) / 2  # no overflow for huge scores
        tau = np.where(np.isfinite(mid) & (below < tau), mid, tau)
    return pick(e), tau, pick(tp), pick(fp)


SELECT_FRACTION = 0.25


def _split(y: np.ndarray, seed: int, fraction: float = SELECT_FRACTION) -> np.ndarray:
    """Boolean mask of the selection part: a seeded random ``fraction`` of the members and of the
    non-members (at least one of each, and at least one of each left to certify)."""
    rng = np.random.default_rng(seed)
    sel = np.zeros(y.size, dtype=bool)
    for idx in (np.flatnonzero(y), np.flatnonzero(~y)):
        if idx.size < 2:
            raise ValueError("eps_lower_bound needs at least two members and two non-members")
        k = min(max(int(round(fraction * idx.size)), 1), idx.size - 1)
        sel[rng.permutation(idx)[:k]] = True
    return sel


def _split_bound(s: np.ndarray, y: np.ndarray, confidence: float, seed: int, fraction: float = SELECT_FRACTION):
    """Per row: (certified ε, threshold, TP, FP, n_pos, n_neg) of the selection/certification split."""
    sel = _split(y, seed, fraction)
    ya, yb = y[sel], y[~sel]
    _, tau, _, _ = _max_over_thresholds(s[:, sel], ya, confidence, midpoint=True)
    pred = s[:, ~sel] >= tau[:, None]
    tp, fp = (pred & yb).sum(axis=1), (pred & ~yb).sum(axis=1)
    n_pos, n_neg = int(yb.sum()), int((~yb).sum())
    return _certified(tp, fp, n_pos, n_neg, confidence), tau, tp, fp, n_pos, n_neg


def _result(eps, tau, tp, fp, n_pos, n_neg, confidence, level=None, **extra) -> dict:
    e1, e2 = _sides(np.asarray(tp), np.asarray(fp), n_pos, n_neg, confidence if level is None else level)
    return {"epsilon": float(max(0.0, eps)), "threshold": float(tau),
            "side": "tpr/fpr" if np.nan_to_num(e1, nan=-np.inf) >= np.nan_to_num(e2, nan=-np.inf) else "tnr/fnr",
            "tpr": float(tp / n_pos), "fpr": float(fp / n_neg), "n_members": int(n_pos),
            "n_nonmembers": int(n_neg), "confidence": float(confidence), **extra}


def eps_lower_bound(scores: np.ndarray, is_member: np.ndarray, confidence: float = 0.95, seed: int = 0,
                    fraction: float = SELECT_FRACTION) -> dict:
    """A ``confidence`` lower bound on ε: threshold chosen on a seeded random ``fraction`` of each
    class, certified on the rest. {"epsilon", "threshold", "side", "tpr", "fpr", "n_members",
    "n_nonmembers"} (rates and counts of the certifying part) plus "confidence", "method", "seed"."""
    s, y = _one_row(scores, is_member)
    e, tau, tp, fp, n_pos, n_neg = _split_bound(s, y, confidence, seed, fraction)
    return _result(e[0], tau[0], tp[0], fp[0], n_pos, n_neg, confidence, method="split", seed=int(seed),
                   select_fraction=float(fraction))


def _at_thresholds(s: np.ndarray, y: np.ndarray, taus: np.ndarray, confidence: float):
    """Per row: (certified ε, threshold, TP, FP), Bonferroni over the fixed thresholds ``taus``."""
    pred = s[:, None, :] >= taus[None, :, None]
    tp, fp = (pred & y).sum(axis=2), (pred & ~y).sum(axis=2)
    level = 1.0 - (1.0 - confidence) / taus.size
    e = _certified(tp, fp, int(y.sum()), int((~y).sum()), level)
    i = np.argmax(e, axis=1)
    r = np.arange(s.shape[0])
    return e[r, i], taus[i], tp[r, i], fp[r, i]


def eps_at_thresholds(scores: np.ndarray, is_member: np.ndarray, thresholds, confidence: float = 0.95) -> dict:
    """A ``confidence`` lower bound on ε from thresholds fixed without these scores (e.g. quantiles
    of reference models' scores), all examples certifying: Bonferroni over the k thresholds, each
    Clopper–Pearson interval at level (1 − confidence)/k."""
    s, y = _one_row(scores, is_member)
    taus = np.asarray(thresholds, dtype=np.float64).ravel()
    e, tau, tp, fp = _at_thresholds(s, y, taus, confidence)
    level = 1.0 - (1.0 - confidence) / taus.size
    return _result(e[0], tau[0], tp[0], fp[0], int(y.sum()), int((~y).sum()), confidence, level,
                   method="bonferroni", n_thresholds=int(taus.size))


def eps_max_over_thresholds(scores: np.ndarray, is_member: np.ndarray, confidence: float = 0.95) -> dict:
    """Optimistic estimate, NOT a ``confidence`` bound: the best per-threshold bound over every ROC
    threshold, with no correction for choosing it on the same data (the kind of value tools such
    as tensorflow_privacy and PrivacyGuard report). Kept only for comparison with them."""
    s, y = _one_row(scores, is_member)
    e, tau, tp, fp = _max_over_thresholds(s, y, confidence)
    return _result(e[0], tau[0], tp[0], fp[0], int(y.sum()), int((~y).sum()), confidence,
                   method="max_over_thresholds")


def eps_over_targets(per_target: list[dict]) -> float:
    """One value valid for a set of targets: the minimum of their bounds. If each bound holds with
    probability ≥ 95 %, then with probability ≥ 95 % every target's ε is at least the minimum (it
    fails only if the bound of the target with the smallest ε fails), with no multiplicity
    correction. The mean of bounds is a bound for nothing."""
    return float(min(p["epsilon"] for p in per_target))
