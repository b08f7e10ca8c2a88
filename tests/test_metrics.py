"""Exact ROC metrics against scikit-learn and brute-force threshold scans."""
from __future__ import annotations

import numpy as np
import pytest
from scipy import stats
from sklearn.metrics import roc_auc_score
from sklearn.metrics import roc_curve as sk_roc_curve

from src.attacks.metrics import (
    aggregate,
    alpha_key,
    attack_metrics,
    auc,
    balanced_accuracy,
    n_nonmembers_at,
    pooled_roc,
    roc_curve,
    roc_points,
    tpr_at_fpr,
)


def data(n=2000, seed=0, ties=False, shift=0.8):
    rng = np.random.default_rng(seed)
    y = rng.random(n) < 0.5
    s = rng.normal(size=n) + shift * y
    if ties:
        s = np.round(s * 3)  # heavy ties
    return s, y


def brute_points(s, y):
    """(fpr, tpr) for the predicate score ≥ t at every unique t, plus t = +inf."""
    ts = np.r_[np.inf, np.unique(s)]
    pos, neg = s[y], s[~y]
    return np.array([np.mean(neg >= t) for t in ts]), np.array([np.mean(pos >= t) for t in ts])


@pytest.mark.parametrize("ties", [False, True])
def test_roc_and_auc_match_sklearn(ties):
    s, y = data(ties=ties)
    fpr, tpr = roc_curve(s, y)
    f2, t2, _ = sk_roc_curve(y, s, drop_intermediate=False)
    np.testing.assert_allclose(fpr, f2)
    np.testing.assert_allclose(tpr, t2)
    assert auc(fpr, tpr) == pytest.approx(roc_auc_score(y, s), abs=1e-12)
    assert fpr[0] == 0 and tpr[0] == 0 and fpr[-1] == 1 and tpr[-1] == 1
    assert len(fpr) == len(np.unique(s)) + 1  # ties form one point


@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("alpha", [0.0, 1e-3, 1e-2, 0.05, 0.3])
def test_tpr_at_fpr_and_balanced_accuracy_brute_force(ties, alpha):
    s, y = data(n=1500, seed=1, ties=ties)
    fpr, tpr = roc_curve(s, y)
    bf, bt = brute_points(s, y)
    assert tpr_at_fpr(fpr, tpr, alpha) == pytest.approx(bt[bf <= alpha].max(), abs=0)
    assert balanced_accuracy(fpr, tpr) == pytest.approx(np.max(1 - (bf + (1 - bt)) / 2), abs=1e-15)


def test_n_nonmembers_at():
    assert n_nonmembers_at(1e-3, 25_000) == 25
    assert n_nonmembers_at(1e-4, 25_000) == 2
    assert n_nonmembers_at(1e-2, 50) == 0
    assert n_nonmembers_at(0.29, 100) == 29  # 0.29·100 = 28.999… in floating point
    for n in (7, 100, 999, 25_000):
        for a in (1e-4, 1e-3, 1e-2, 0.07, 0.29, 0.5):
            k = n_nonmembers_at(a, n)
            assert k / n <= a and (k + 1) / n > a


def test_tpr_at_fpr_is_conservative_step_read():
    # members 0.9, 0.7; non-members 0.8, 0.1: ROC (0,0) (0,.5) (.5,.5) (.5,1) (1,1)
    fpr, tpr = roc_curve([0.9, 0.7, 0.8, 0.1], [True, True, False, False])
    assert tpr_at_fpr(fpr, tpr, 0.49) == 0.5  # no interpolation towards (0.5, 1)
    assert tpr_at_fpr(fpr, tpr, 0.5) == 1.0


def test_attack_metrics_keys_and_bootstrap():
    s, y = data(n=3000, seed=2, shift=1.5)
    m = attack_metrics(s, y, n_bootstrap=200, seed=0)
    for k in ("auc", "balanced_accuracy", "tpr_at_fpr_1e-2", "tpr_at_fpr_1e-3", "tpr_at_fpr_1e-4",
              "fp_at_fpr_1e-2", "fp_at_fpr_1e-3", "fp_at_fpr_1e-4", "n_members", "n_nonmembers", "ci"):
        assert k in m, k
    assert m["n_members"] == int(y.sum()) and m["n_nonmembers"] == int((~y).sum())
    assert m["fp_at_fpr_1e-2"] == int(np.floor(0.01 * m["n_nonmembers"]))
    assert m["auc"] == pytest.approx(roc_auc_score(y, s))
    for k in ("auc", "balanced_accuracy", "tpr_at_fpr_1e-2"):
        lo, hi = m["ci"][k]
        assert lo <= m[k] <= hi and hi - lo > 0, k
    assert set(m["ci"]) == {"auc", "balanced_accuracy", "tpr_at_fpr_1e-2", "tpr_at_fpr_1e-3", "tpr_at_fpr_1e-4"}
    # reproducible, and no "ci" without bootstrap
    assert attack_metrics(s, y, n_bootstrap=200, seed=0)["ci"] == m["ci"]
    assert "ci" not in attack_metrics(s, y)


def test_bootstrap_reweighting_equals_resorting():
    # one replicate by hand: resample members and non-members separately, recompute from scratch
    s, y = data(n=400, seed=3, ties=True)
    from src.attacks.metrics import _SortedScores

    ss = _SortedScores(s, y)
    rng = np.random.default_rng(9)
    pos, neg = s[y], s[~y]
    ip = rng.integers(0, pos.size, pos.size)
    ineg = rng.integers(0, neg.size, neg.size)
    # _SortedScores orders members by their position in the (stable) descending sort
    order = np.argsort(-s, kind="mergesort")
    pos_sorted_orig = order[y[order]]  # original indices of members, in sorted order
    neg_sorted_orig = order[~y[order]]
    rank_p = np.empty(s.size, int)
    rank_p[pos_sorted_orig] = np.arange(pos.size)
    rank_n = np.empty(s.size, int)
    rank_n[neg_sorted_orig] = np.arange(neg.size)
    wp = np.bincount(rank_p[np.flatnonzero(y)[ip]], minlength=pos.size)
    wn = np.bincount(rank_n[np.flatnonzero(~y)[ineg]], minlength=neg.size)
    f1, t1 = ss.roc(wp, wn)
    s2 = np.r_[pos[ip], neg[ineg]]
    y2 = np.r_[np.ones(pos.size, bool), np.zeros(neg.size, bool)]
    f2, t2 = roc_curve(s2, y2)
    # same curve up to points whose score value no longer occurs (they repeat the previous point)
    keep = np.r_[True, (np.diff(f1) != 0) | (np.diff(t1) != 0)]
    np.testing.assert_allclose(f1[keep], f2)
    np.testing.assert_allclose(t1[keep], t2)


def test_aggregate_mean_and_t_ci():
    per = [attack_metrics(*data(n=600, seed=i)) for i in range(5)]
    agg = aggregate(per)
    vals = np.array([p["auc"] for p in per])
    half = stats.t.ppf(0.975, 4) * vals.std(ddof=1) / np.sqrt(5)
    assert agg["auc"]["mean"] == pytest.approx(vals.mean())
    assert agg["auc"]["ci"] == pytest.approx([vals.mean() - half, vals.mean() + half])
    assert agg["auc"]["n"] == 5 and "ci" not in agg
    assert agg["n_members"]["values"] == [p["n_members"] for p in per]
    # one target: the bootstrap CI, else a degenerate interval
    one = attack_metrics(*data(n=600), n_bootstrap=50)
    assert aggregate([one])["auc"]["ci"] == one["ci"]["auc"]
    plain = attack_metrics(*data(n=600))
    assert aggregate([plain])["auc"]["ci"] == [plain["auc"], plain["auc"]]


def test_aggregate_clips_rate_intervals_to_unit_range():
    """Rates near 0 (TPR at low FPR, typical of a weak attack) give a t-interval reaching below 0;
    the reported interval is that t-interval clipped to [0, 1] (computed here with scipy), while
    counts such as ``fp_at_fpr_*`` keep the unclipped interval."""
    tprs, fps = [0.0, 0.0, 0.012, 0.0], [0.0, 3.0, 9.0, 0.0]
    per = [{"auc": 0.5, "tpr_at_fpr_1e-3": t, "balanced_accuracy": 1.0 if t else 0.99, "fp_at_fpr_1e-3": f}
           for t, f in zip(tprs, fps)]
    agg = aggregate(per)
    q = stats.t.ppf(0.975, 3)
    for key, vals in (("tpr_at_fpr_1e-3", np.array(tprs)), ("fp_at_fpr_1e-3", np.array(fps))):
        half = q * vals.std(ddof=1) / 2.0
        lo, hi = vals.mean() - half, vals.mean() + half
        assert lo < 0  # the unclipped interval leaves the range: the case under test
        expect = [0.0, hi] if key.startswith("tpr") else [lo, hi]
        assert agg[key]["ci"] == pytest.approx(expect)
    bal = np.array([p["balanced_accuracy"] for p in per])
    assert bal.mean() + q * bal.std(ddof=1) / 2.0 > 1.0 and agg["balanced_accuracy"]["ci"][1] == 1.0
    assert agg["auc"]["ci"] == [0.5, 0.5]


def test_roc_points_and_pooled():
    s, y = data(n=5000, seed=4)
    fpr, tpr = roc_curve(s, y)
    g, t = roc_points(fpr, tpr, n=50, min_fpr=1e-4)
    assert len(g) == 50 and g[0] == pytest.approx(1e-4) and g[-1] == pytest.approx(1.0)
    assert np.all(np.diff(t) >= 0)
    for gi, ti in zip(g, t):
        assert ti == tpr_at_fpr(fpr, tpr, gi)
    s2, y2 = data(n=700, seed=5)
    f, tp = pooled_roc([s, s2], [y, y2])
    f_ref, t_ref = roc_curve(np.r_[s, s2], np.r_[y, y2])
    np.testing.assert_array_equal(f, f_ref)
    np.testing.assert_array_equal(tp, t_ref)


def test_alpha_key_and_errors():
    assert alpha_key(1e-2) == "1e-2" and alpha_key(1e-4) == "1e-4" and alpha_key(0.0025) == "2.5e-3"
    with pytest.raises(ValueError, match="member"):
        roc_curve([1.0, 2.0], [True, True])
    with pytest.raises(ValueError, match="NaN"):
        roc_curve([np.nan, 2.0], [True, False])


def _per_replicate_loop(s, y, fprs, n_boot, seed, paired_with=None):
    """The bootstrap as one ROC per replicate: members and non-members drawn with replacement per
    replicate from one seeded generator, each replicate's ROC rebuilt from scratch by repeating the
    drawn examples (no sorted view, no running totals). Draw slot i is the i-th member in sorted
    order (attack_metrics) or, with ``paired_with``, the i-th member in example order and both
    score sets read on the same resample (paired_bootstrap). Returns the replicates' metrics."""
    rng = np.random.default_rng(seed)
    order = np.argsort(-s, kind="mergesort")
    mem, non = np.flatnonzero(y), np.flatnonzero(~y)
    if paired_with is None:
        mem, non = order[y[order]], order[~y[order]]
    reps = []
    for _ in range(n_boot):
        ip = mem[rng.integers(0, mem.size, mem.size)]
        ineg = non[rng.integers(0, non.size, non.size)]
        idx = np.r_[ip, ineg]
        row = []
        for sc in (s,) if paired_with is None else (s, paired_with):
            f, t = roc_curve(sc[idx], y[idx])
            row.append([auc(f, t), balanced_accuracy(f, t)] + [tpr_at_fpr(f, t, a) for a in fprs])
        reps.append(row[0] if paired_with is None else np.subtract(*row))
    return np.array(reps)


@pytest.mark.parametrize("ties", [False, True])
def test_batched_bootstrap_equals_one_roc_per_replicate(ties):
    """attack_metrics and paired_bootstrap read all replicates at once from running totals; their
    percentile CIs must equal those of the replicates' ROCs rebuilt one by one from the resampled
    examples, on the same draws (integers in the numerator and denominator of every metric: equal
    to rounding, 1e-12)."""
    from src.attacks.paired import paired_bootstrap

    fprs = (1e-2, 1e-1, 0.3)
    s, y = data(n=500, seed=4, ties=ties)
    s2 = s + np.random.default_rng(5).normal(0, 0.5, s.size) * (1 if not ties else 0)
    if ties:
        s2 = np.round(s2 + np.random.default_rng(5).normal(0, 1.0, s.size))
    m = attack_metrics(s, y, fprs=fprs, n_bootstrap=60, seed=7)
    reps = _per_replicate_loop(s, y, fprs, 60, 7)
    keys = ["auc", "balanced_accuracy"] + [f"tpr_at_fpr_{alpha_key(a)}" for a in fprs]
    for i, k in enumerate(keys):
        np.testing.assert_allclose(m["ci"][k], np.percentile(reps[:, i], [2.5, 97.5]), rtol=0, atol=1e-12)
    p = paired_bootstrap(s2, s, y, fprs=fprs, n_bootstrap=60, seed=7)
    reps = _per_replicate_loop(s2, y, fprs, 60, 7, paired_with=s)
    for i, k in enumerate(keys):
        if k in p:
            np.testing.assert_allclose(p[k]["ci"], np.percentile(reps[:, i], [2.5, 97.5]), rtol=0, atol=1e-12)
    assert set(p) == {"auc", *keys[2:]}


def test_draws_shared_by_score_sets_read_like_fresh_ones():
    """attack_metrics on two score sets with the same member/non-member counts reads the same cached
    draws (their running totals, FPR + 1 per non-member, the non-members each α allows); each set's
    CIs must still equal those of its replicates' ROCs rebuilt one by one (1e-12: integer counts in
    every numerator and denominator), whichever set read the draws first."""
    fprs = (1e-2, 1e-1)
    s, y = data(n=500, seed=11)
    s2 = np.where(y, s * 0.3, -s)  # another ranking of the same labels
    keys = ["auc", "balanced_accuracy"] + [f"tpr_at_fpr_{alpha_key(a)}" for a in fprs]
    for sc in (s, s2, s):
        m = attack_metrics(sc, y, fprs=fprs, n_bootstrap=40, seed=3)
        reps = _per_replicate_loop(sc, y, fprs, 40, 3)
        for i, k in enumerate(keys):
            np.testing.assert_allclose(m["ci"][k], np.percentile(reps[:, i], [2.5, 97.5]), rtol=0, atol=1e-12)


def test_percentile_ci_and_reordered_totals_equal_the_plain_computation():
    """The batched helpers give exactly what the one-at-a-time computation gives: percentile_ci the
    2.5/97.5 percentiles of each metric's replicates by np.percentile one metric at a time (ties and
    repeated values included), reordered the running totals of the counts' columns taken in the
    given order (integers: equal, not close)."""
    from src.attacks.metrics import bootstrap_draws, cumulative, percentile_ci, reordered

    rng = np.random.default_rng(0)
    reps = {"a": rng.normal(size=200), "b": np.round(rng.normal(size=200), 1), "c": np.full(200, 0.25),
            "d": rng.integers(0, 5, 200) / 7}
    ci = percentile_ci(reps)
    for k, v in reps.items():
        assert ci[k] == [float(np.percentile(v, 2.5)), float(np.percentile(v, 97.5))], k
    d = bootstrap_draws(37, 23, 50, 4)
    cp, cn = d.counts()
    pos, neg = rng.permutation(37), rng.permutation(23)
    t = reordered(cp, cn, pos, neg)
    np.testing.assert_array_equal(t.cum_pos, cumulative(cp[:, pos]))
    np.testing.assert_array_equal(t.cum_neg, cumulative(cn[:, neg]))
    np.testing.assert_array_equal(t.d_neg, cn[:, neg])


@pytest.mark.parametrize("ties", [False, True])
def test_shared_orders_give_what_sorting_again_gives(ties):
    """A subset's order read off the whole set's (subset_order) must be the stable descending sort of
    the subset itself, ties in index order; metrics and paired Δ given the kept orders
    (ScoreOrders) must be exactly those computed by sorting again (the same integers: equal)."""
    from src.attacks.metrics import ScoreOrders, descending_order, subset_order
    from src.attacks.paired import paired_bootstrap

    s, y = data(n=600, seed=8, ties=ties)
    s2 = np.round(s * 0.5 + np.random.default_rng(1).normal(size=s.size)) if ties else s + 0.3 * (~y)
    rng = np.random.default_rng(2)
    for sel in (rng.random(s.size) < 0.3, y | (rng.random(s.size) < 0.5), np.ones(s.size, bool)):
        np.testing.assert_array_equal(subset_order(descending_order(s), sel),
                                      np.argsort(-s[sel], kind="stable"))
    orders = ScoreOrders()
    assert orders.of(s) is orders.of(s)
    np.testing.assert_array_equal(orders.of(s), np.argsort(-s, kind="stable"))
    for order in (orders.of(s), None):
        m = attack_metrics(s, y, fprs=(1e-2, 0.1), n_bootstrap=30, seed=1, order=order)
        assert m == attack_metrics(s, y, fprs=(1e-2, 0.1), n_bootstrap=30, seed=1)
    sel = y | (rng.random(s.size) < 0.5)
    assert (attack_metrics(s[sel], y[sel], n_bootstrap=30, order=subset_order(orders.of(s), sel))
            == attack_metrics(s[sel], y[sel], n_bootstrap=30))
    assert (paired_bootstrap(s2, s, y, n_bootstrap=30, seed=2, orders=(orders.of(s2), orders.of(s)))
            == paired_bootstrap(s2, s, y, n_bootstrap=30, seed=2))
    with pytest.raises(ValueError, match="order"):
        attack_metrics(s, y, order=orders.of(s)[:-1])


def test_totals_from_multiplicities_read_like_running_totals():
    """Totals given the non-members' multiplicities (the paired Δ's) must read what Totals given their
    running totals reads: the replicates' totals, the non-members each α allows (also where a
    replicate has not passed α within the first columns, so the full totals are needed) and every
    replicate metric; without balanced accuracy the other metrics are unchanged (integers: equal)."""
    from src.attacks.metrics import Totals, _SortedScores, cumulative, replicate_metrics

    rng = np.random.default_rng(3)
    s, y = data(n=240, seed=5)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    cp = rng.poisson(1.0, (6, n_pos)).astype(np.int32)
    cn = rng.poisson(1.0, (6, n_neg)).astype(np.int32)
    cn[0, :60] = 0  # replicate 0 has no false positive among the first 60 non-members
    fprs = (0.05, 0.01)
    full, lazy = Totals(cumulative(cp), cumulative(cn)), Totals(cumulative(cp), d_neg=cn)
    np.testing.assert_array_equal(lazy.fp_all, full.fp_all)
    for a, b in zip(lazy.allowed(fprs), full.allowed(fprs)):
        np.testing.assert_array_equal(a, b)
    assert lazy.allowed(fprs)[0][0] >= 60
    ss = _SortedScores(s, y)
    r_full = replicate_metrics(ss, full, fprs)
    r_lazy = replicate_metrics(ss, Totals(cumulative(cp), d_neg=cn), fprs)
    r_part = replicate_metrics(ss, Totals(cumulative(cp), d_neg=cn), fprs, balanced=False)
    assert list(r_lazy) == list(r_full) and set(r_full) - set(r_part) == {"balanced_accuracy"}
    for k in r_full:
        np.testing.assert_array_equal(r_lazy[k], r_full[k])
        if k != "balanced_accuracy":
            np.testing.assert_array_equal(r_part[k], r_full[k])
    with pytest.raises(ValueError, match="multiplicities"):
        Totals(cumulative(cp))
