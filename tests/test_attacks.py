"""Attacks on a synthetic Gaussian world where the likelihood-ratio test is optimal and its AUC known.

World: per example μ_i ~ N(0, 1); a model's φ on example i is N(μ_i + d·[member], σ²) per query,
independent across models and queries. With μ_i known, the LRT ranks by φ_t − μ_i, whose member /
non-member distributions are N(d, σ²) / N(0, σ²): AUC = Φ(d / (σ√2)) (one query). The loss attack
sees μ_i as noise: AUC = Φ(d / √(2(σ² + 1))).
"""
from __future__ import annotations

import numpy as np
import pytest
from scipy.special import expit
from scipy.stats import norm
from sklearn.metrics import roc_auc_score

from src.attacks import ATTACKS, Population, min_models, run_attacks, select_references
from src.attacks.lira import lira_offline, lira_online, reference_stats
from src.attacks.rmia import rmia_log_ratio, rmia_scores
from src.data.membership import keep_matrix


def gaussian_world(n_models=65, n=4000, q=1, d=1.0, sigma=1.0, sigma_i=None, seed=0, pkeep=0.5, with_mu=False):
    """keep [M, N] (balanced), phi [M, N, Q] (and μ [N] with ``with_mu``); sigma_i: per-example σ."""
    rng = np.random.default_rng(seed)
    keep = keep_matrix(n_models, n, pkeep, seed)
    mu = rng.normal(size=n)
    sig = np.full(n, sigma) if sigma_i is None else sigma_i
    phi = mu[None, :, None] + d * keep[:, :, None] + sig[None, :, None] * rng.normal(size=(n_models, n, q))
    return (keep, phi, mu) if with_mu else (keep, phi)


def split(keep, phi, t=0):
    refs = np.arange(keep.shape[0]) != t
    return phi[refs], keep[refs], phi[t], keep[t]


def test_lira_online_near_optimal_auc():
    keep, phi, mu = gaussian_world(n=6000, with_mu=True)
    phi_ref, keep_ref, phi_t, member = split(keep, phi)
    closed = norm.cdf(1.0 / np.sqrt(2.0))  # ≈ 0.760
    oracle = roc_auc_score(member, phi_t[:, 0] - mu)  # the LRT with the true μ_i, on this sample
    assert abs(oracle - closed) < 0.01
    scores = run_attacks(list(ATTACKS), phi_ref, keep_ref, phi_t)
    aucs = {k: roc_auc_score(member, v) for k, v in scores.items()}
    # 63 references (31 IN / 31 OUT used): estimating μ and σ per example costs ~0.015 AUC
    assert oracle - 0.02 < aucs["lira_online"] <= oracle + 0.005
    assert abs(aucs["lira_online"] - closed) < 0.02
    assert oracle - 0.01 < aucs["lira_online_fixed"] <= oracle + 0.005
    loss_auc = norm.cdf(1.0 / np.sqrt(2.0 * 2.0))  # ≈ 0.691
    assert abs(aucs["loss"] - loss_auc) < 0.02
    assert aucs["loss"] < aucs["lira_online"] - 0.04
    # homoscedastic world: offline's (φ − μ_out)/σ_out ranking is near-optimal too (never above the LRT)
    assert aucs["loss"] + 0.03 < aucs["lira_offline"] <= oracle + 0.005
    for k in ("rmia", "rmia_offline", "lira_offline_fixed"):
        assert aucs["loss"] + 0.03 < aucs[k] <= oracle + 0.005, k


def test_lira_variants_and_two_queries():
    keep, phi = gaussian_world(n=3000, q=2, seed=1)
    phi_ref, keep_ref, phi_t, member = split(keep, phi)
    opt = norm.cdf(1.0 * np.sqrt(2) / np.sqrt(2.0))  # two independent queries: d·√Q
    for cfg in (
        {"centre": "mean"},
        {"fixed_variance": "pooled_in"},
        {"offline": "two_sided"},
        {"query_reduce": "prob_mean"},
    ):
        s = run_attacks(["lira_online", "lira_online_fixed", "lira_offline", "rmia"], phi_ref, keep_ref, phi_t, cfg)
        assert abs(roc_auc_score(member, s["lira_online"]) - opt) < 0.02, cfg
        assert abs(roc_auc_score(member, s["lira_online_fixed"]) - opt) < 0.02, cfg
        assert roc_auc_score(member, s["lira_offline"]) > 0.6, cfg
        assert roc_auc_score(member, s["rmia"]) > 0.75, cfg


def test_offline_weaker_when_variance_varies():
    # heteroscedastic: per-example σ_i; the online LRT weighs examples by 1/σ_i², offline cannot
    rng = np.random.default_rng(3)
    sig = np.exp(rng.normal(0, 0.8, size=3000))
    keep, phi = gaussian_world(n=3000, sigma_i=sig, seed=3)
    phi_ref, keep_ref, phi_t, member = split(keep, phi)
    s = run_attacks(["lira_online", "lira_offline", "loss"], phi_ref, keep_ref, phi_t)
    a = {k: roc_auc_score(member, v) for k, v in s.items()}
    assert a["lira_online"] > a["lira_offline"] + 0.01 > a["loss"] + 0.01


def test_lira_formula_by_hand():
    rng = np.random.default_rng(5)
    r, n, q = 6, 7, 2
    phi_ref = rng.normal(size=(r, n, q))
    keep = np.zeros((r, n), bool)
    keep[:3] = True
    phi_t = rng.normal(size=(n, q))
    s = lira_online(phi_ref, keep, ~keep, phi_t, centre="median")
    mi, mo = np.median(phi_ref[:3], 0), np.median(phi_ref[3:], 0)
    si, so = phi_ref[:3].std(0), phi_ref[3:].std(0)
    want = (norm.logpdf(phi_t, mi, si) - norm.logpdf(phi_t, mo, so)).mean(1)
    np.testing.assert_allclose(s, want, rtol=1e-10, atol=1e-10)
    s1 = lira_offline(phi_ref, ~keep, phi_t)
    np.testing.assert_allclose(s1, norm.logcdf((phi_t - mo) / so).mean(1), rtol=1e-10)
    s2 = lira_offline(phi_ref, ~keep, phi_t, mode="two_sided")
    np.testing.assert_allclose(s2, -norm.logpdf(phi_t, mo, so).mean(1), rtol=1e-10)
    # fixed variance, residual: RMS of residuals about the per-example centre, per world
    sf = lira_online(phi_ref, keep, ~keep, phi_t, fixed_variance="residual")
    gi = np.sqrt(((phi_ref[:3] - mi) ** 2).mean())
    go = np.sqrt(((phi_ref[3:] - mo) ** 2).mean())
    np.testing.assert_allclose(sf, (norm.logpdf(phi_t, mi, gi) - norm.logpdf(phi_t, mo, go)).mean(1), rtol=1e-10)
    # pooled_in: std of all IN values, used for both worlds
    sp = lira_online(phi_ref, keep, ~keep, phi_t, fixed_variance="pooled_in")
    g = phi_ref[:3].std()
    np.testing.assert_allclose(sp, (norm.logpdf(phi_t, mi, g) - norm.logpdf(phi_t, mo, g)).mean(1), rtol=1e-10)


def test_masked_median_and_stats_with_uneven_counts():
    rng = np.random.default_rng(6)
    r, n, q = 9, 40, 3
    phi = rng.normal(size=(r, n, q))
    mask = rng.random((r, n)) < 0.5
    mask[0] = True  # every example has ≥ 1 reference
    st = reference_stats(phi, mask, "median")
    for i in range(n):
        v = phi[mask[:, i], i]
        np.testing.assert_allclose(st.centre[i], np.median(v, 0))
        np.testing.assert_allclose(st.std[i], v.std(0))


def test_extreme_phi_stay_finite():
    keep, phi = gaussian_world(n_models=9, n=50, q=2, seed=2)
    phi = phi * 40.0  # |φ| up to ~150: sigmoid saturates in float64, log-CDF far in the tail
    phi_ref, keep_ref, phi_t, _ = split(keep, phi)
    phi_ref = phi_ref.copy()
    phi_ref[:, 0, :] = 3.0  # all references identical on example 0: σ = 0 → floor
    for v in run_attacks(list(ATTACKS), phi_ref, keep_ref, phi_t).values():
        assert np.isfinite(v).all()


# ---------------------------------------------------------------- equal-count reference selection


@pytest.mark.parametrize("m,pkeep", [(8, 0.5), (10, 0.5), (8, 0.25), (12, 0.75)])
def test_equal_counts_do_not_depend_on_target_membership(m, pkeep):
    keep = keep_matrix(m, 300, pkeep, seed=1)
    big_k = int(round(m * pkeep))
    for t in range(m):
        refs = np.arange(m) != t
        sel = select_references(keep[refs])
        n_in_used = sel.in_mask.sum(0)
        n_out_used = sel.out_mask.sum(0)
        assert (n_in_used == sel.k).all() and (n_out_used == sel.k).all()
        assert sel.k == min(big_k, m - big_k) - 1
        assert (sel.offline_mask.sum(0) == m - big_k - 1).all()
        # the selected references are of the right kind
        assert not (sel.in_mask & ~keep[refs]).any() and not (sel.out_mask & keep[refs]).any()
        # a per-example min(#in, #out) would leak at pkeep != 0.5; ours is the same for members/non-members
        if pkeep != 0.5:
            per_ex = np.minimum(sel.n_in, sel.n_out)
            assert per_ex[keep[t]].mean() != per_ex[~keep[t]].mean()


def test_equal_counts_iid_split_and_disabled():
    rng = np.random.default_rng(0)
    keep = rng.random((20, 500)) < 0.5
    sel = select_references(keep)
    assert (sel.in_mask.sum(0) == sel.k).all() and (sel.out_mask.sum(0) == sel.k).all()
    assert sel.k == min(keep.sum(0).min(), (~keep).sum(0).min())
    # first k in model order
    i = 7
    assert np.array_equal(np.flatnonzero(sel.in_mask[:, i]), np.flatnonzero(keep[:, i])[: sel.k])
    sel2 = select_references(keep, equal_counts=False)
    assert np.array_equal(sel2.in_mask, keep) and np.array_equal(sel2.out_mask, ~keep)


def test_missing_references_raise_with_n_models():
    keep, phi = gaussian_world(n_models=9, n=30)
    phi_ref, keep_ref, phi_t, _ = split(keep, phi)
    keep_ref = keep_ref.copy()
    keep_ref[:, 4] = False  # example 4 has no IN reference
    with pytest.raises(ValueError, match="n_models=9"):
        run_attacks(["lira_online"], phi_ref, keep_ref, phi_t)
    run_attacks(["lira_offline", "loss", "rmia_offline"], phi_ref, keep_ref, phi_t)  # offline is fine
    keep_ref[:, 4] = True  # now no OUT reference
    with pytest.raises(ValueError, match="OUT reference"):
        run_attacks(["lira_offline"], phi_ref, keep_ref, phi_t)
    # a 2-model pool: one reference, which is IN or OUT per example
    keep2, phi2 = gaussian_world(n_models=2, n=30)
    with pytest.raises(ValueError, match="n_models=2"):
        run_attacks(["rmia"], *split(keep2, phi2)[:3])
    assert min_models(["loss"]) == 2 and min_models(["loss", "lira_online"]) == 4
    keep4, phi4 = gaussian_world(n_models=4, n=30)
    run_attacks(list(ATTACKS), *split(keep4, phi4)[:3])


def test_unknown_attack_and_bad_config_raise():
    keep, phi = gaussian_world(n_models=5, n=10)
    args = split(keep, phi)[:3]
    with pytest.raises(ValueError, match=r"unknown attack 'lira'; allowed: lira_online, .*loss"):
        run_attacks(["lira_online", "lira"], *args)
    with pytest.raises(ValueError, match="attack.names"):
        min_models(["bogus"])
    with pytest.raises(ValueError, match="attack.centre"):
        run_attacks(["lira_online"], *args, cfg={"centre": "mode"})
    with pytest.raises(ValueError, match="attack.fixed_variance"):
        run_attacks(["lira_online_fixed"], *args, cfg={"fixed_variance": "global"})
    with pytest.raises(ValueError, match="NaN"):
        bad = args[2].copy()
        bad[0, 0] = np.nan
        run_attacks(["loss"], args[0], args[1], bad)


# ------------------------------------------------------------------------------------------ RMIA


def rmia_brute(phi_ref, mask, phi_t, pop_ref, pop_mask, pop_t, gamma, a=None):
    """Pairwise definition, loops over examples, linear domain."""

    def ratio(pr, m, pt):
        out = np.empty(pt.shape[0])
        for i in range(pt.shape[0]):
            p_ref = expit(pr[m[:, i], i]).mean(0)  # [Q]
            if a is not None:
                p_ref = (1 + a) / 2 * p_ref + (1 - a) / 2
            out[i] = np.mean(expit(pt[i]) / p_ref)
        return out

    rx, rz = ratio(phi_ref, mask, phi_t), ratio(pop_ref, pop_mask, pop_t)
    return np.array([np.mean(x / rz >= gamma) for x in rx])


@pytest.mark.parametrize("gamma", [1.0, 2.0])
@pytest.mark.parametrize("offline", [False, True])
def test_rmia_sorted_equals_bruteforce(gamma, offline):
    rng = np.random.default_rng(11)
    r, n, z, q = 8, 150, 90, 2
    phi_ref = rng.normal(0, 2, size=(r, n, q))
    keep = rng.random((r, n)) < 0.5
    keep[0], keep[1] = True, False
    phi_t = rng.normal(0, 2, size=(n, q))
    sel = select_references(keep)
    mask = sel.offline_mask if offline else (sel.in_mask | sel.out_mask)
    cfg = {"gamma": gamma, "a": 0.3}
    name = "rmia_offline" if offline else "rmia"
    a = 0.3 if offline else None
    # population = the examples themselves
    got = run_attacks([name], phi_ref, keep, phi_t, cfg)[name]
    np.testing.assert_array_equal(got, rmia_brute(phi_ref, mask, phi_t, phi_ref, mask, phi_t, gamma, a))
    # explicit external population (no reference trained on it: every reference is OUT)
    pop = Population(rng.normal(0, 2, size=(r, z, q)), rng.normal(0, 2, size=(z, q)))
    got = run_attacks([name], phi_ref, keep, phi_t, cfg, population=pop)[name]
    all_refs = np.ones((r, z), bool)
    want = rmia_brute(phi_ref, mask, phi_t, pop.phi_ref, all_refs, pop.phi_target, gamma, a)
    np.testing.assert_array_equal(got, want)


def test_rmia_scores_helper_and_saturation():
    lx = np.array([0.0, 1.0, -1.0, 5.0])
    lz = np.array([0.5, -0.5, 0.0, 2.0])
    brute = np.array([np.mean(np.exp(x - lz) >= 2.0) for x in lx])
    np.testing.assert_array_equal(rmia_scores(lx, lz, 2.0), brute)
    # confident examples: p rounds to 1 in float32 but the log-domain ratio still orders them
    phi_ref = np.full((4, 2, 1), 30.0)
    phi_t = np.array([[35.0], [31.0]])
    lr = rmia_log_ratio(phi_ref, np.ones((4, 2), bool), phi_t)
    assert lr[0] > lr[1] > 0
