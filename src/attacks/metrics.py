"""Attack metrics from exact ROC curves (docs/attacks.md, "Metrics").

Convention: an example is predicted member when score ≥ threshold. The ROC is exact: one point per
distinct score value (tied scores enter together, as one point), from (0, 0) to (1, 1), no binning.

* AUC: trapezoid rule on the exact ROC (equals the Mann–Whitney probability P(s_m > s_n) + ½ P(=)).
* Balanced accuracy: max over thresholds of 1 − (FPR + FNR)/2 = max (1 + TPR − FPR)/2.
* TPR@FPR α: the largest TPR among ROC points with FPR ≤ α — a conservative step read (no
  interpolation between points). α is backed by floor(α·n_nonmembers) false positives
  (``fp_at_fpr_*``; 0.1 % of 25,000 is 25); when that is 0 the read is "TPR at zero false positives".
* Bootstrap CIs (percentile, 95 %): members and non-members resampled separately with replacement.
  Scores are sorted once (their order kept for the paired Δ and the calibration subsets:
  :class:`ScoreOrders`); a replicate only re-weights the sorted examples (exactly equivalent to
  re-sorting the resampled set), and all replicates are read at once from running totals of their
  multiplicities, drawn once per (members, non-members, seed) and shared by every attack.
* Across targets: mean and a t-based 95 % CI (df = T − 1); with one target the bootstrap CI if any.
"""
from __future__ import annotations

import math
from collections import OrderedDict
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
    """Scores sorted once (descending) with tie-group ends, for exact weighted ROC curves.

    Bootstrap replicates are read from it without re-sorting (:func:`replicate_metrics`): a
    replicate's ROC changes only at the non-members' tie groups, so it needs, per such group, how
    many members and non-members rank above it and through it (``b_*``, indices into cumulative
    counts), and per non-member the members ranked above its group (``lo_ext``, for TPR at FPR).
    ``order``: the scores' :func:`descending_order`, if already made (:class:`ScoreOrders`)."""

    def __init__(self, scores: np.ndarray, is_member: np.ndarray, order: np.ndarray | None = None) -> None:
        s, y = _check(scores, is_member)
        if order is None:
            order = descending_order(s)
        elif order.shape != s.shape:
            raise ValueError(f"order {order.shape} and scores {s.shape} differ in length")
        self.order = order  # sorted position → example index
        srt = s[order]
        self.ends = np.flatnonzero(np.append(srt[1:] != srt[:-1], True))  # last index of each tie group
        self.y = y[order]
        self.pos_idx = np.flatnonzero(self.y)  # sorted positions of members
        self.neg_idx = np.flatnonzero(~self.y)
        self.n_pos, self.n_neg = int(self.pos_idx.size), int(self.neg_idx.size)
        starts = np.concatenate(([0], self.ends[:-1] + 1))
        m0 = _running_count(self.y)  # members before each position
        n0 = _running_count(~self.y)
        m_lo, m_hi, n_lo, n_hi = m0[starts], m0[self.ends + 1], n0[starts], n0[self.ends + 1]
        has_neg = n_hi > n_lo
        self.b_lo, self.b_hi, self.b_nlo, self.b_nhi = m_lo[has_neg], m_hi[has_neg], n_lo[has_neg], n_hi[has_neg]
        # no ties that involve a non-member: one group per non-member, no member in it
        self.b_simple = bool(np.array_equal(self.b_lo, self.b_hi) and np.all(self.b_nhi - self.b_nlo == 1))
        if self.b_simple:  # each non-member its own group: the members above it
            self.lo_ext = np.append(self.b_lo, self.n_pos)
        else:
            group = np.repeat(np.arange(self.ends.size), np.diff(self.ends, prepend=-1))
            self.lo_ext = np.append(m_lo[group[self.neg_idx]], self.n_pos)

    def roc(self, w_pos: np.ndarray | None = None, w_neg: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(fpr, tpr) with integer per-example weights (multiplicities) on members/non-members."""
        n = self.y.size
        wp = np.zeros(n, dtype=np.int64)
        wn = np.zeros(n, dtype=np.int64)
        wp[self.pos_idx] = 1 if w_pos is None else w_pos
        wn[self.neg_idx] = 1 if w_neg is None else w_neg
        tp = np.cumsum(wp)[self.ends]
        fp = np.cumsum(wn)[self.ends]
        return np.concatenate(([0.0], fp / fp[-1])), np.concatenate(([0.0], tp / tp[-1]))


def descending_order(scores: np.ndarray) -> np.ndarray:
    """Example indices by descending score, tied scores in index order (a stable sort)."""
    return np.argsort(-np.asarray(scores, dtype=np.float64).ravel(), kind="mergesort")


def subset_order(order: np.ndarray, subset: np.ndarray) -> np.ndarray:
    """The :func:`descending_order` of ``scores[subset]`` (boolean mask) read off ``order``, that of
    ``scores``: the sorted examples in the subset keep their sequence (ties too, as index order
    within the subset is index order), renumbered as positions in the subset."""
    position = np.cumsum(subset) - 1  # example index → its position in the subset
    return position[order[subset[order]]]


class ScoreOrders:
    """Each score array's :func:`descending_order`, made once and read by every metric on it: per
    target, the paired Δ and, through :func:`subset_order`, the calibration subsets. It keeps the
    arrays it has sorted, so that an array's id names that array for as long as the orders are kept
    (the arrays are read, never changed, meanwhile: a job's scores once computed)."""

    def __init__(self) -> None:
        self._orders: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    def of(self, scores: np.ndarray) -> np.ndarray:
        if id(scores) not in self._orders:
            self._orders[id(scores)] = (scores, descending_order(scores))
        return self._orders[id(scores)][1]


def _running_count(mask: np.ndarray) -> np.ndarray:
    """[n] bool → [n + 1] int64: how many are True before each position (0 first)."""
    out = np.zeros(mask.size + 1, dtype=np.int64)
    np.cumsum(mask, out=out[1:])
    return out


def cumulative(counts: np.ndarray) -> np.ndarray:
    """[B, n] integer multiplicities → [B, n + 1] running totals starting at 0 (int32: exact)."""
    out = np.zeros((counts.shape[0], counts.shape[1] + 1), dtype=np.int32)
    np.cumsum(counts, axis=1, out=out[:, 1:])
    return out


class Totals:
    """Running totals of B replicates' multiplicities in one sorted order (``cum_pos`` [B, n_pos + 1],
    ``cum_neg`` [B, n_neg + 1], from :func:`cumulative`) and the reads that depend on them alone: the
    replicates' totals, the non-members' multiplicities, each non-member's FPR + 1 (balanced
    accuracy) and the non-members each α allows above the threshold (TPR at FPR). With one draw slot
    per sorted member / non-member (:func:`attack_metrics`) every attack on the same (members,
    non-members) reads the same totals, so these are made once per draws, when first read.

    Given the non-members' multiplicities ``d_neg`` instead of ``cum_neg``, their running totals are
    made only when read in full (ties among non-members, balanced accuracy): AUC reads the
    multiplicities and TPR at FPR only the first running totals."""

    def __init__(self, cum_pos: np.ndarray, cum_neg: np.ndarray | None = None, d_neg: np.ndarray | None = None) -> None:
        if cum_neg is None and d_neg is None:
            raise ValueError("Totals: need the non-members' running totals or their multiplicities")
        self.cum_pos, self._cum_neg = cum_pos, cum_neg
        self.n_neg = cum_neg.shape[1] - 1 if cum_neg is not None else d_neg.shape[1]
        self.tp_all = cum_pos[:, -1].astype(np.float64)
        # every replicate's total (a sum of integers: the same float either way)
        self.fp_all = (cum_neg[:, -1] if cum_neg is not None else d_neg.sum(axis=1)).astype(np.float64)
        self._d_neg, self._rate1 = d_neg, None
        self._allowed: dict[tuple, list[np.ndarray]] = {}

    @property
    def cum_neg(self) -> np.ndarray:
        """[B, n_neg + 1] the non-members' running totals, in sorted order."""
        if self._cum_neg is None:
            self._cum_neg = cumulative(self._d_neg)
        return self._cum_neg

    @property
    def d_neg(self) -> np.ndarray:
        """[B, n_neg] the non-members' multiplicities, in sorted order."""
        if self._d_neg is None:
            self._d_neg = np.diff(self._cum_neg, axis=1)
        return self._d_neg

    @property
    def rate1(self) -> np.ndarray:
        """[B, n_neg] FPR + 1 at the ROC point just above each non-member (no non-member ties)."""
        if self._rate1 is None:
            self._rate1 = self.cum_neg[:, :-1] / self.fp_all[:, None] + 1.0
        return self._rate1

    def _cum_neg_head(self, top: int) -> np.ndarray:
        """The first ``top`` columns of :attr:`cum_neg`, without making the rest."""
        return self._cum_neg[:, :top] if self._cum_neg is not None else cumulative(self._d_neg[:, :top - 1])

    def allowed(self, fprs: tuple[float, ...]) -> list[np.ndarray]:
        """Per α, [B] the non-members ranked above each replicate's threshold: the last running
        total with FPR ≤ α (FPR is non-decreasing). Read on the first columns only, unless some
        replicate has not passed the largest α there."""
        if fprs not in self._allowed:
            fp_all = self.fp_all
            top = min(self.n_neg + 1, int(2 * max(fprs, default=0) * fp_all.max()) + 16)
            fpr = self._cum_neg_head(top) / fp_all[:, None]
            if top < self.n_neg + 1 and not np.all(fpr[:, -1] > max(fprs)):
                fpr = self.cum_neg / fp_all[:, None]
            self._allowed[fprs] = [(fpr <= a).sum(axis=1) - 1 for a in fprs]
        return self._allowed[fprs]

    @property
    def nbytes(self) -> int:
        return sum(x.nbytes for x in (self.cum_pos, self._cum_neg, self._d_neg, self._rate1) if x is not None)


def replicate_metrics(ss: _SortedScores, totals: Totals, fprs: Sequence[float],
                      balanced: bool = True) -> dict[str, np.ndarray]:
    """The metrics of :func:`_point_metrics` for B bootstrap replicates at once, [B] each
    (without balanced accuracy when ``balanced`` is False: its reads span every non-member).

    ``totals``: running totals of the replicates' multiplicities of the members / non-members in
    ``ss``'s sorted order. The same numbers as the replicates' ROC curves read one by one: AUC by the
    trapezoid rule in exact integer counts (ΣΔFP·(TP + TP_prev) / 2·TP·FP); balanced accuracy and
    TPR at FPR from the ROC points just before each non-member group, where the maximum and the step
    read lie (member-only groups between them only raise the TPR at the same FPR)."""
    fprs = tuple(float(a) for a in fprs)
    cum_pos, tp_all, fp_all = totals.cum_pos, totals.tp_all, totals.fp_all
    # members ranked above each non-member group; np.take keeps the copy C-ordered (cum_pos[:, idx]
    # need not be), which the row-wise reads below run through several times faster
    above = np.take(cum_pos, ss.b_lo, axis=1)
    # sums of integer products: exact in int64, and so in float64 too (< 2**53) whatever the order
    if ss.b_simple:  # one non-member per group: ΔFP is its multiplicity, TP = TP_prev
        area = 2.0 * np.einsum("bg,bg->b", totals.d_neg, above, dtype=np.int64)
    else:
        cum_neg = totals.cum_neg
        n_lo, n_hi = np.take(cum_neg, ss.b_nlo, axis=1), np.take(cum_neg, ss.b_nhi, axis=1)
        area = np.einsum("bg,bg->b", n_hi - n_lo, above + np.take(cum_pos, ss.b_hi, axis=1), dtype=np.int64)
    out = {"auc": area / (2.0 * tp_all * fp_all)}
    if balanced:
        # the float expression of balanced_accuracy(), 1 − (FPR + 1 − TPR)/2, maximised: y ↦ 1 − y/2 is
        # non-increasing in floating point too, so its maximum is its value at the smallest y
        rate1 = totals.rate1 if ss.b_simple else n_lo / fp_all[:, None] + 1.0
        y = np.divide(above, tp_all[:, None])
        np.subtract(rate1, y, out=y)
        out["balanced_accuracy"] = np.maximum(1.0 - y.min(axis=1) / 2.0, 0.5)  # (0, 0) and (1, 1) give 1/2
    rows = np.arange(cum_pos.shape[0])
    for a, j in zip(fprs, totals.allowed(fprs)):
        out[f"tpr_at_fpr_{alpha_key(a)}"] = cum_pos[rows, ss.lo_ext[j]] / tp_all
    return out


def percentile_ci(reps: dict[str, np.ndarray]) -> dict[str, list[float]]:
    """{metric: [2.5, 97.5] percentiles} of every metric's replicates, in one call."""
    keys = list(reps)
    lo, hi = np.percentile(np.stack([reps[k] for k in keys]), [2.5, 97.5], axis=1)
    return {k: [float(lo[i]), float(hi[i])] for i, k in enumerate(keys)}


class _Draws:
    """The bootstrap's multiplicities of one (members, non-members, replicates, seed): replicate b
    resamples n_pos members and then n_neg non-members with replacement, b = 0, 1, … from one
    seeded generator. Kept as multiplicities per draw slot ([B, n] int32, :meth:`counts`) and as
    their running totals in slot order (:class:`Totals`) for :func:`replicate_metrics`."""

    def __init__(self, n_pos: int, n_neg: int, n_boot: int, seed: int) -> None:
        rng = np.random.default_rng(seed)
        cp = np.empty((n_boot, n_pos), dtype=np.int32)
        cn = np.empty((n_boot, n_neg), dtype=np.int32)
        for b in range(n_boot):
            cp[b] = np.bincount(rng.integers(0, n_pos, n_pos), minlength=n_pos)
            cn[b] = np.bincount(rng.integers(0, n_neg, n_neg), minlength=n_neg)
        self._counts = cp, cn
        self.totals = Totals(cumulative(cp), cumulative(cn), cn)

    @property
    def nbytes(self) -> int:
        return self.totals.nbytes + self._counts[0].nbytes  # the non-members' counts are the totals' d_neg

    def counts(self) -> tuple[np.ndarray, np.ndarray]:
        """Per-replicate multiplicities of member i / non-member i (their i-th draw slot), [B, n]."""
        return self._counts


def reordered(counts_pos: np.ndarray, counts_neg: np.ndarray, pos: np.ndarray, neg: np.ndarray) -> Totals:
    """:class:`Totals` of the draw slots ``pos`` / ``neg`` taken in that order (columns of
    :meth:`_Draws.counts`). The non-members' running totals are left to be made when read in full
    (the paired Δ reads AUC and TPR at FPR, which need only their first columns)."""
    # np.take gives C-ordered copies (counts[:, idx] may not), which the running totals read fast
    return Totals(cumulative(np.take(counts_pos, pos, axis=1)), d_neg=np.take(counts_neg, neg, axis=1))


_DRAWS: OrderedDict[tuple, _Draws] = OrderedDict()
_DRAWS_BYTES = 256 * 2 ** 20  # a 16-target job's draws at the CPU protocols' sizes (~180 MB) fit


def bootstrap_draws(n_pos: int, n_neg: int, n_boot: int, seed: int) -> _Draws:
    """The draws of (n_pos, n_neg, n_boot, seed), made once: every attack, the quantized and the FP
    target and the paired Δ of a target resample with the job's seed, so they share them."""
    key = (int(n_pos), int(n_neg), int(n_boot), int(seed))
    if key in _DRAWS:
        _DRAWS.move_to_end(key)
        return _DRAWS[key]
    d = _DRAWS[key] = _Draws(*key)
    while len(_DRAWS) > 1 and sum(v.nbytes for v in _DRAWS.values()) > _DRAWS_BYTES:
        _DRAWS.popitem(last=False)
    return d


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
    order: np.ndarray | None = None,
) -> dict[str, Any]:
    """Metrics of one attack on one target (``order``: the scores' :func:`descending_order`, if made).

    Keys: auc, balanced_accuracy, tpr_at_fpr_<α>, fp_at_fpr_<α> (false positives that α allows),
    n_members, n_nonmembers; with ``n_bootstrap`` > 0 also n_bootstrap and
    ci = {metric: [lo, hi]} (95 % percentile bootstrap, members/non-members resampled separately).
    """
    fprs = tuple(float(a) for a in fprs)
    ss = _SortedScores(scores, is_member, order)
    fpr, tpr = ss.roc()
    n_pos, n_neg = int(ss.pos_idx.size), int(ss.neg_idx.size)
    out: dict[str, Any] = _point_metrics(fpr, tpr, fprs)
    for a in fprs:
        out[f"fp_at_fpr_{alpha_key(a)}"] = n_nonmembers_at(a, n_neg)
    out["n_members"] = n_pos
    out["n_nonmembers"] = n_neg
    if n_bootstrap and n_bootstrap > 0:
        d = bootstrap_draws(n_pos, n_neg, int(n_bootstrap), seed)  # draw slot i = the i-th member in sorted order
        reps = replicate_metrics(ss, d.totals, fprs)
        out["n_bootstrap"] = int(n_bootstrap)
        out["ci"] = percentile_ci(reps)
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
