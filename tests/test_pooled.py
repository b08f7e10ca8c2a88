"""The pooled ROC over targets and its interval (src/attacks/pooled.py): reads against independent
computations, and coverage where the truth is known (benchmarks/tpr_coverage.py's world).

Coverage margin: the brief of the method is ≥ 93 % coverage of 95 % intervals over ≥ 400 draws. The
draws come from numpy's PCG64 with fixed seeds (the same worlds on every CPU), so each verdict is
deterministic; an interval whose true coverage is 95 % falls below 93 % in 400 draws with
probability ≈ 3 % (binomial sd 1.1 %), which is why the benchmark's 1,000-draw table is the measure
and these tests are its gate.
"""
from __future__ import annotations

import numpy as np
import pytest

from benchmarks.tpr_coverage import World, coverage
from src.attacks.metrics import pooled_roc, tpr_at_fpr
from src.attacks.pooled import ExampleWeights, PooledScores, components_interval, pooled_metrics, step_reads
from src.validate import ConfigError, validate


def _targets(rng, t=3, n=300, ties=False):
    scores, members = [], []
    for _ in range(t):
        y = rng.random(n) < 0.5
        s = rng.normal(size=n) + 1.5 * y
        if ties:
            s = np.round(s, 1)
        scores.append(s)
        members.append(y)
    return scores, members


@pytest.mark.parametrize("ties", [False, True])
def test_point_read_equals_the_step_read_of_the_concatenated_roc(ties):
    rng = np.random.default_rng(1)
    scores, members = _targets(rng, ties=ties)
    m = pooled_metrics(scores, members, (0.01, 0.05, 0.2))
    fpr, tpr = pooled_roc(scores, members)
    for a, k in ((0.01, "1e-2"), (0.05, "5e-2"), (0.2, "2e-1")):
        assert m[f"tpr_at_fpr_{k}"] == tpr_at_fpr(fpr, tpr, a)
        n_neg = sum(int((~y).sum()) for y in members)
        assert m[f"fp_at_fpr_{k}"] == int(np.floor(a * n_neg + 1e-9))
    assert m["n_nonmembers"] == sum(int((~y).sum()) for y in members) and m["n_targets"] == 3
    assert m["ci"]["tpr_at_fpr_1e-2"] == [m["tpr_at_fpr_1e-2"]] * 2  # no weights: no noise estimate


@pytest.mark.parametrize("ties", [False, True])
def test_weighted_reads_equal_reads_of_the_resample_written_out(ties):
    """A row of integer weights is a resample: repeating each example that many times and reading
    the ordinary ROC must give the same TPRs, including where only the top of the order is read."""
    rng = np.random.default_rng(2)
    scores, members = _targets(rng, ties=ties)
    view = PooledScores(scores, members)
    s, y = np.concatenate(scores), np.concatenate(members)
    w = rng.poisson(1.0, size=(5, s.size))
    fprs = (0.005, 0.02, 0.3)
    got = step_reads(view, lambda at: w[:, view.order[at]], (w * y).sum(1).astype(float), (w * ~y).sum(1).astype(float),
                     fprs)
    for r in range(5):
        fpr, tpr = pooled_roc([np.repeat(s, w[r])], [np.repeat(y, w[r])])
        assert got[r].tolist() == [tpr_at_fpr(fpr, tpr, a) for a in fprs]


def test_example_weights_are_poisson_one_and_totals_are_their_sums():
    rng = np.random.default_rng(3)
    members = [rng.random(2000) < 0.5 for _ in range(4)]
    ew = ExampleWeights(members, 100, seed=0)
    y = np.concatenate(members)
    assert ew.w.shape == (100, 8000)
    # mean and variance of 800,000 Poisson(1) draws: sd of the mean 0.0011, of the variance ~0.0019
    assert abs(ew.w.mean() - 1) < 0.006 and abs(ew.w.var() - 1) < 0.012
    assert np.array_equal(ew.w_pos, (ew.w * y).sum(1)) and np.array_equal(ew.w_neg, (ew.w * ~y).sum(1))
    assert ew.c.shape == (100, 4) and (ew.c.sum(1) == 4).all()


def test_interval_uses_t_with_targets_minus_one_df_and_the_larger_variance():
    point = np.array([0.3, 0.0])
    clus = np.array([[0.2, 0.0], [0.4, 0.0], [0.3, 0.0], [0.3, 0.0]])  # var(ddof 1) = 0.02/3
    boot = np.array([[0.29, -0.1], [0.31, 0.1]])                          # var 0.0002, 0.02
    ci, parts = components_interval(point, clus, boot, n_targets=4, rate=False)
    v = max(0.02 / 3 * 4 / 3, 0.0002)
    from scipy.stats import t

    assert parts["df"].tolist() == [3.0, 3.0]
    assert ci[0] == pytest.approx([0.3 - t.ppf(0.975, 3) * v ** 0.5, 0.3 + t.ppf(0.975, 3) * v ** 0.5])
    assert ci[1] == pytest.approx([-t.ppf(0.975, 3) * 0.02 ** 0.5, t.ppf(0.975, 3) * 0.02 ** 0.5])  # within floor
    lo, hi = components_interval(point, clus, boot, n_targets=4, rate=True)[0][0]
    assert lo > 0 and hi < 1 and hi - 0.3 > 0.3 - lo  # logit scale: skewed away from 0 when p < 1/2


FAST = World("fast", alpha=1e-2, tpr=0.1, n_pos=500, n_neg=500)


@pytest.mark.parametrize("n_targets", [4, pytest.param(16, marks=pytest.mark.slow)])
def test_pooled_interval_covers_the_true_tpr_and_delta(n_targets):
    """400 draws, 500 members + 500 non-members per target, α = 1 %, 50 replicates: ≥ 93 % for the
    pooled TPR and for the paired Δ (the slow test runs the CIFAR-10 CPU sizes at α = 0.1 %). T = 16
    takes minutes on a loaded 2-core machine, so it is marked slow."""
    r = coverage(FAST, n_targets, draws=400, n_boot=50, seed=0)
    assert r["cov_tpr"] >= 0.93, r
    assert r["cov_delta"] >= 0.93, r


@pytest.mark.slow
@pytest.mark.parametrize("n_targets", [4, 16])
def test_pooled_interval_covers_at_cifar10_cpu_sizes(n_targets):
    """As above at 2,000 + 2,000 examples per target, α = 0.1 %, TPR 3 % (the CPU protocols' range)
    and 200 replicates."""
    r = coverage(World("cpu_tpr3%"), n_targets, draws=400, n_boot=200, seed=1)
    assert r["cov_tpr"] >= 0.93, r
    assert r["cov_delta"] >= 0.93, r


def test_targets_all_makes_every_pool_model_a_target(tiny_cfg):
    from src.pipeline import target_indices

    for key in ("targets", "n_targets"):
        cfg = tiny_cfg(f"{key}=all", "n_models=6")
        validate(cfg)
        assert target_indices(cfg) == list(range(6))


def test_targets_all_refuses_independent_targets_and_other_words(tiny_cfg):
    with pytest.raises(ConfigError, match="targets=all: .*membership.target=pool"):
        validate(tiny_cfg("targets=all", "membership.target=independent"))
    with pytest.raises(ConfigError, match="targets=some: allowed: a list of pool indices, or all"):
        validate(tiny_cfg("targets=some"))
