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

from benchmarks.tpr_coverage import WORLDS, World, coverage
from src.attacks.metrics import pooled_roc, tpr_at_fpr
from src.attacks.pooled import ExampleWeights, PooledScores, _reads, components_interval, pooled_metrics, step_reads
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


def test_jackknife_reads_are_the_pooled_reads_without_each_target():
    """Row j of the delete-one-target reads is the pooled ROC of the other targets, read directly."""
    rng = np.random.default_rng(4)
    scores, members = _targets(rng, t=4)
    view = PooledScores(scores, members)
    ew = ExampleWeights(members, 10, seed=0)
    fprs = (0.01, 0.1)
    jack = _reads(view, ew, fprs)["jack"]
    assert jack.shape == (4, 2)
    for j in range(4):
        fpr, tpr = pooled_roc([s for i, s in enumerate(scores) if i != j], [y for i, y in enumerate(members) if i != j])
        assert jack[j].tolist() == [tpr_at_fpr(fpr, tpr, a) for a in fprs]


def test_interval_uses_t_with_targets_minus_one_df_and_the_largest_variance():
    from scipy.stats import t

    q3 = t.ppf(0.975, 3)
    point = np.array([0.3, 0.0, 0.1])
    clus = np.array([[0.2, 0.0, 0.1], [0.4, 0.0, 0.1], [0.3, 0.0, 0.1], [0.3, 0.0, 0.1]])  # var(ddof 1) 0.02/3
    jack = np.array([[0.3, 0.0, 0.0], [0.3, 0.0, 0.2], [0.3, 0.0, 0.1], [0.3, 0.0, 0.1]])  # 3/4·Σ(d²) = 0.015
    boot = np.array([[0.29, -0.1, 0.1], [0.31, 0.1, 0.1]])                                   # var 0.0002, 0.02, 0
    ci, parts = components_interval(point, clus, jack, boot, n_targets=4)
    assert parts["df"].tolist() == [3.0] * 3
    for i, v in enumerate((0.02 / 3 * 4 / 3, 0.02, 0.015)):  # cluster, within, jackknife the largest
        h = q3 * v ** 0.5
        assert ci[i] == pytest.approx([point[i] - h, point[i] + h]), i
    # a TPR over n members: the same rule on the empirical logits log((x + ½)/(n − x + ½)), x = p·n
    n = 50
    el = lambda p: np.log((p * n + 0.5) / ((1 - p) * n + 0.5))
    lo, hi = components_interval(point[:1], clus[:, :1], jack[:, :1], boot[:, :1], n_targets=4, n_members=n)[0][0]
    v = max(np.var(el(clus[:, 0]), ddof=1) * 4 / 3, 3 / 4 * np.sum((el(jack[:, 0]) - el(jack[:, 0]).mean()) ** 2),
            np.var(el(boot[:, 0]), ddof=1))
    assert el(lo) == pytest.approx(el(0.3) - q3 * v ** 0.5) and el(hi) == pytest.approx(el(0.3) + q3 * v ** 0.5)
    assert 0 < lo and hi < 1 and hi - 0.3 > 0.3 - lo  # skewed away from 0 when p < 1/2
    # a TPR of 0 keeps an interval above it (the empirical logit is finite there)
    lo0, hi0 = components_interval(np.array([0.0]), np.array([[0.0], [0.02], [0.0]]), None, None, n_targets=3,
                                   n_members=n)[0][0]
    assert lo0 == 0.0 and hi0 > 0.0


FAST = World("fast", alpha=1e-2, tpr=0.1, n_pos=500, n_neg=500)


def test_pooled_interval_covers_the_true_tpr_and_delta():
    """400 draws of 4 targets, 500 members + 500 non-members per target, α = 1 %, 50 replicates:
    ≥ 93 % for the pooled TPR and for the paired Δ."""
    r = coverage(FAST, 4, draws=400, n_boot=50, seed=0)
    assert r["cov_tpr"] >= 0.93, r
    assert r["cov_delta"] >= 0.93, r


@pytest.mark.slow
@pytest.mark.parametrize("n_targets", [4, 16])
@pytest.mark.parametrize("world", WORLDS, ids=[w.name for w in WORLDS])
def test_pooled_interval_covers_at_cifar10_cpu_sizes(world, n_targets):
    """The benchmark's worlds (2,000 + 2,000 examples per target, α = 0.1 %, TPR 3 % with targets
    alike or strongly different, and 30 %), 400 draws, 200 replicates, as the jobs use: ≥ 93 %."""
    r = coverage(world, n_targets, draws=400, n_boot=200, seed=0)
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
