"""The pooled ROC over targets and an interval for its TPR at a fixed FPR (docs/attacks.md, "Pooled ROC").

Pooled ROC: the members' and non-members' scores of all T targets in one ROC, one threshold for all
(the LiRA reference code's convention). At FPR α it rests on floor(α·T·n) false positives instead of
floor(α·n) per target, so TPR at 0.1 % FPR is resolved where a single target's is not.

What the interval is for. A target is one draw of (training run, membership split); its examples are
draws from the data. The pooled TPR at FPR α estimates θ = the TPR at FPR α of the population
mixture: member scores of a random target against non-member scores of a random target, one global
threshold. docs/attacks.md derives the interval; in short, three variances of the read:

* V_C·T/(T − 1): resampling whole targets with their examples (cluster bootstrap; the factor undoes
  its (T − 1)/T shrinkage of a mean of T draws);
* V_J: deleting one target at a time (jackknife over targets), in expectation at least the variance
  (Efron & Stein 1981); it catches the draws that lack the rare high-TPR or high-offset targets, where
  the bootstrap spread is small exactly when the estimate is low;
* V_w: Poisson(1) example weights, targets fixed (within-target noise, known precisely).

V = max(V_C·T/(T − 1), V_J, V_w), Student-t with T − 1 df. A TPR's three variances are taken of the
empirical logits of the reads (logit((x + ½)/(n + 1)), x = p·n of n members: finite at 0 and 1) and
the interval mapped back; the paired Δ = TPR(quantized) − TPR(FP) is linear, with the same weights,
resampled and deleted targets for both score sets, so their shared noise cancels. With one target
only V_w is left. Coverage: benchmarks/tpr_coverage.py, tests/test_pooled.py.

The TPR read is the conservative step of src/attacks/metrics.py (the largest TPR at FPR ≤ α). Its
threshold lies just above the (k + 1)-th highest non-member score, k = floor(α·n), whose true FPR is
(k + 1)/(n + 1) on average: the read is biased upward by about one false positive's step, which is
small against the interval when k is large (pooled: k = 32 at T = 16, n = 2,000 per target) and
large for one target (k = 2); the coverage benchmark prints it.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from .metrics import _check, alpha_key, auc, n_nonmembers_at, t_quantile_975


_POISSON1_CDF32 = np.array([round(2 ** 32 * math.exp(-1) * sum(1 / math.factorial(i) for i in range(k + 1)))
                            for k in range(12)], dtype=np.uint64).clip(max=2 ** 32 - 1).astype(np.uint32)


class PooledScores:
    """All targets' scores sorted once (descending) into the pooled order, with each sorted
    position's target and its index in the flat (target-major) example space."""

    def __init__(self, scores: Sequence[np.ndarray], is_member: Sequence[np.ndarray]) -> None:
        if len(scores) != len(is_member) or not scores:
            raise ValueError("pooled scores: need one label array per score array, at least one target")
        checked = [_check(s, y) for s, y in zip(scores, is_member)]
        s = np.concatenate([c[0] for c in checked])
        y = np.concatenate([c[1] for c in checked])
        sizes = np.array([c[0].size for c in checked])
        self.n_targets = len(checked)
        self.n_pos = np.array([int(c[1].sum()) for c in checked])
        self.n_neg = sizes - self.n_pos
        self.order = np.argsort(-s, kind="mergesort")  # sorted position → flat example index
        srt = s[self.order]
        self.ends = np.flatnonzero(np.r_[srt[1:] != srt[:-1], True])  # last position of each tie group
        self.y = y[self.order]
        self.target = np.repeat(np.arange(self.n_targets), sizes)[self.order]
        self.pos_idx, self.neg_idx = np.flatnonzero(self.y), np.flatnonzero(~self.y)  # sorted positions
        starts = np.r_[0, self.ends[:-1] + 1]
        group = np.repeat(np.arange(self.ends.size), np.diff(np.r_[-1, self.ends]))
        # per non-member (sorted order), the members ranked above its tie group: where a threshold
        # just above that group stands; then all members
        members_before = np.r_[0, np.cumsum(self.y)][starts]
        self.lo_ext = np.r_[members_before[group[self.neg_idx]], self.pos_idx.size]
        self.reads: dict[tuple, tuple] = {}  # (weights, FPRs) → reads: the TPR and its paired Δ share them

    def roc(self) -> tuple[np.ndarray, np.ndarray]:
        tp = np.cumsum(self.y)[self.ends]
        fp = np.cumsum(~self.y)[self.ends]
        return np.r_[0.0, fp / fp[-1]], np.r_[0.0, tp / tp[-1]]


def step_reads(view: PooledScores, weights, w_pos: np.ndarray, w_neg: np.ndarray, fprs: Sequence[float]) -> np.ndarray:
    """TPR at each FPR α (largest TPR among ROC points with FPR ≤ α) of R weighted resamples of the
    pooled scores, [R, len(fprs)]. ``weights(positions)`` gives the rows' integer weights [R, L] of the
    examples at those sorted positions; ``w_pos``/``w_neg`` [R] are the rows' total member /
    non-member weights. Only the top of the order is read: the first non-members, extended until
    every row has passed its α·w_neg false positives, and the members above them. A row's threshold
    stands just above the tie group of its first non-member beyond α·w_neg, so its TPR is the
    running total of member weights up to that group (``view.lo_ext``)."""
    a_max = max(fprs)
    n_neg = view.neg_idx.size
    k = min(n_neg, int(2 * a_max * np.max(w_neg)) + 16)
    while True:
        cn = np.zeros((w_neg.size, k + 1))
        np.cumsum(weights(view.neg_idx[:k]), axis=1, out=cn[:, 1:])  # integers: exact in float64
        fpr = cn / w_neg[:, None]
        if k == n_neg or np.all(fpr[:, -1] > a_max):
            break
        k = min(n_neg, 2 * k)
    allowed = [(fpr <= a).sum(axis=1) - 1 for a in fprs]  # non-members above each row's threshold
    m = int(view.lo_ext[k])  # members above the k-th non-member's group (all of them when k = n_neg)
    cp = np.zeros((w_pos.size, m + 1))
    np.cumsum(weights(view.pos_idx[:m]), axis=1, out=cp[:, 1:])
    rows = np.arange(w_pos.size)
    return np.stack([cp[rows, view.lo_ext[j]] / w_pos for j in allowed], axis=1)


class ExampleWeights:
    """Poisson(1) bootstrap weights of every (target, example), drawn once per job and shared by every
    attack and by the quantized and FP scores (that pairs Δ), [B, Σ n_t] uint8, with per-row totals.

    Each weight is the inverse Poisson(1) CDF of a 32-bit uniform (thresholds exact to 2⁻³²; capped
    at 12, whose tail has probability 1e-10): numpy's Poisson sampler is ~10x slower at this size."""

    def __init__(self, is_member: Sequence[np.ndarray], n_boot: int, seed: int) -> None:
        y = np.concatenate([np.asarray(m, dtype=bool).ravel() for m in is_member])
        rng = np.random.default_rng([int(seed), 32])
        u = rng.integers(0, 2 ** 32, size=(int(n_boot), y.size), dtype=np.uint32)
        w = np.zeros(u.shape, dtype=np.uint8)
        for c in _POISSON1_CDF32:  # w = #{k : u ≥ 2³²·P(X ≤ k)}
            w += u >= c
        self.w = w
        wf = w.astype(np.float32)  # integer sums below 2**24 are exact in float32
        self.w_pos = (wf @ y.astype(np.float32)).astype(np.float64)
        self.w_neg = (wf @ (~y).astype(np.float32)).astype(np.float64)
        t = len(is_member)  # the targets' multiplicities of the between-target bootstrap
        self.c = rng.multinomial(t, np.full(t, 1.0 / t), size=int(n_boot)) if t >= 2 else None

    @property
    def n_boot(self) -> int:
        return self.w.shape[0]


def example_weights(is_member: Sequence[np.ndarray], n_boot: int, seed: int) -> ExampleWeights | None:
    """The job's bootstrap weights, or None without bootstrap replicates (intervals then rest on
    nothing and collapse to the point)."""
    return ExampleWeights(is_member, n_boot, seed) if n_boot >= 2 else None


def _reads(view: PooledScores, ew: ExampleWeights | None, fprs) -> dict[str, np.ndarray]:
    """Point, between-target bootstrap (targets resampled, their examples kept), delete-one-target
    jackknife and within-target bootstrap (examples reweighted, targets kept) reads of one pooled
    view, made once per weights."""
    key = (id(ew), tuple(fprs))
    if key not in view.reads:
        view.reads[key] = (ew, _make_reads(view, ew, fprs))  # ew kept alive: its id stays its own
    return view.reads[key][1]


def _make_reads(view: PooledScores, ew: ExampleWeights | None, fprs) -> dict[str, np.ndarray]:
    t = view.n_targets
    pos, neg = float(view.n_pos.sum()), float(view.n_neg.sum())
    out = {"point": step_reads(view, lambda at: np.ones((1, at.size)), np.array([pos]), np.array([neg]), fprs)[0]}
    if t >= 2 and ew is not None and ew.c is not None:
        c = ew.c.astype(np.float64)
        out["clus"] = step_reads(view, lambda at: c[:, view.target[at]], c @ view.n_pos, c @ view.n_neg, fprs)
        keep = 1.0 - np.eye(t)  # row j: every target but j
        out["jack"] = step_reads(view, lambda at: keep[:, view.target[at]], keep @ view.n_pos, keep @ view.n_neg, fprs)
    if ew is not None and ew.n_boot >= 2:
        out["boot"] = step_reads(view, lambda at: ew.w[:, view.order[at]], ew.w_pos, ew.w_neg, fprs)
    return out


def components_interval(point: np.ndarray, clus: np.ndarray | None, jack: np.ndarray | None, boot: np.ndarray | None,
                        n_targets: int, n_members: int | None = None) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """95 % intervals [F, 2] from the point reads [F], the between-target (cluster) bootstrap [B, F],
    the delete-one-target jackknife [T, F] and the within-target bootstrap [B, F] (any may be None).
    ``n_members``: the reads are TPRs over that many members (interval on the empirical-logit scale,
    in [0, 1]); None: a Δ (linear, in [−1, 1]). Also its parts (se on that scale, df)."""
    rate = n_members is not None
    read = np.asarray(point, float)
    if rate:
        n = float(n_members)
        fwd = lambda p: np.log((p * n + 0.5) / ((1 - p) * n + 0.5))  # empirical logit (Cox 1970)
        point, clus, jack, boot = (None if x is None else fwd(np.asarray(x, float)) for x in (point, clus, jack, boot))
    v = boot.var(axis=0, ddof=1) if boot is not None else np.zeros_like(point)
    if clus is not None:
        t = int(n_targets)  # (T − 1)/T: the bootstrap variance of a mean of T draws, undone
        v = np.maximum(v, clus.var(axis=0, ddof=1) * t / (t - 1))
        if jack is not None:
            v = np.maximum(v, (t - 1) / t * ((jack - jack.mean(axis=0)) ** 2).sum(axis=0))
        df = np.full(point.shape, float(t - 1))
    else:
        df = np.full(point.shape, float(boot.shape[0] - 1) if boot is not None else np.inf)
    q = np.array([t_quantile_975(int(d)) if np.isfinite(d) else 1.959964 for d in df])
    half = q * np.sqrt(v)
    lo, hi = point - half, point + half
    if rate:  # back from the empirical logit: p = ((n + 1)·s − ½) / n, s = 1/(1 + e⁻ˣ)
        back = lambda x: ((n + 1) * 0.5 * (1 + np.tanh(x / 2)) - 0.5) / n
        lo, hi = np.where(half > 0, back(lo), read), np.where(half > 0, back(hi), read)  # no noise: the read
    bound = (0.0, 1.0) if rate else (-1.0, 1.0)
    ci = np.stack([np.clip(lo, *bound), np.clip(hi, *bound)], axis=1)
    return ci, {"se": np.sqrt(v), "df": df}


CI_KIND = ("targets resampled and deleted (between), examples reweighted (within): t with T − 1 df on the "
           "largest variance; logit scale for TPR")


def pooled_metrics(scores: Sequence[np.ndarray] | None, is_member: Sequence[np.ndarray] | None, fprs: Sequence[float],
                   weights: ExampleWeights | None = None, view: PooledScores | None = None) -> dict[str, Any]:
    """Metrics of the pooled ROC: auc, tpr_at_fpr_<α> with ``ci``, fp_at_fpr_<α> (false positives
    that back α), n_members, n_nonmembers, n_targets."""
    fprs = tuple(float(a) for a in fprs)
    view = view or PooledScores(scores, is_member)
    r = _reads(view, weights, fprs)
    ci, parts = components_interval(r["point"], r.get("clus"), r.get("jack"), r.get("boot"), view.n_targets,
                                    n_members=int(view.n_pos.sum()))
    n_neg = int(view.n_neg.sum())
    out: dict[str, Any] = {"auc": auc(*view.roc())}
    for i, a in enumerate(fprs):
        out[f"tpr_at_fpr_{alpha_key(a)}"] = float(r["point"][i])
        out[f"fp_at_fpr_{alpha_key(a)}"] = n_nonmembers_at(a, n_neg)
    out.update(n_members=int(view.n_pos.sum()), n_nonmembers=n_neg, n_targets=view.n_targets)
    out["ci"] = {f"tpr_at_fpr_{alpha_key(a)}": [float(x) for x in ci[i]] for i, a in enumerate(fprs)}
    out["ci_df"] = {f"tpr_at_fpr_{alpha_key(a)}": _finite(parts["df"][i]) for i, a in enumerate(fprs)}
    out["ci_kind"] = CI_KIND
    return out


def pooled_paired(scores_q: Sequence[np.ndarray], scores_fp: Sequence[np.ndarray], is_member: Sequence[np.ndarray],
                  fprs: Sequence[float], weights: ExampleWeights | None = None,
                  views: tuple[PooledScores, PooledScores] | None = None) -> dict[str, Any]:
    """{tpr_at_fpr_<α>: {delta, ci, significant, df}}: Δ = pooled TPR(quantized) − pooled TPR(FP), the
    same examples, weights, resampled and deleted targets for both."""
    fprs = tuple(float(a) for a in fprs)
    vq, vf = views or (PooledScores(scores_q, is_member), PooledScores(scores_fp, is_member))
    rq, rf = _reads(vq, weights, fprs), _reads(vf, weights, fprs)
    d = {k: rq[k] - rf[k] for k in rq}
    ci, parts = components_interval(d["point"], d.get("clus"), d.get("jack"), d.get("boot"), vq.n_targets)
    out = {}
    for i, a in enumerate(fprs):
        lo, hi = float(ci[i, 0]), float(ci[i, 1])
        noise = "clus" in d or "boot" in d
        out[f"tpr_at_fpr_{alpha_key(a)}"] = {"delta": float(d["point"][i]), "ci": [lo, hi],
                                             "significant": bool(lo > 0 or hi < 0) if noise else None,
                                             "df": _finite(parts["df"][i])}
    return out


def _finite(x: float) -> float | None:
    return float(x) if np.isfinite(x) else None
