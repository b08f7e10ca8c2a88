"""Paired differences, reference-calibrated thresholds and per-example shifts, each against an
independent computation or a world where the answer is known; a job's ε keys recomputed from its
exports (the ε bounds themselves: tests/test_epsilon.py)."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
from scipy import stats

from src.attacks.epsilon import eps_lower_bound, eps_max_over_thresholds
from src.attacks.metrics import attack_metrics
from src.attacks.paired import aggregate_paired, paired_bootstrap
from src.attacks.shifts import per_example_shift, top_retained
from src.attacks.threshold import ppv, reference_quantile, threshold_metrics
from src.report.epsilon import job_epsilons


def _world(rng, n, mu_fp, mu_q, rho):
    """Members ~ N(μ, 1), non-members ~ N(0, 1) for both targets; the quantized score is correlated
    with the FP score (ρ) as the two targets share most of their weights. Population AUCs are
    Φ(μ/√2), so Δ_AUC = Φ(μ_q/√2) − Φ(μ_fp/√2) exactly."""
    y = np.r_[np.ones(n, bool), np.zeros(n, bool)]
    fp = rng.normal(size=2 * n) + mu_fp * y
    q = rho * (fp - mu_fp * y) + math.sqrt(1 - rho ** 2) * rng.normal(size=2 * n) + mu_q * y
    return fp, q, y


def test_paired_bootstrap_covers_the_true_difference():
    """Over 150 independent worlds the 95 % paired-bootstrap CI of Δ_AUC must contain the true Δ about
    95 % of the time: Binomial(150, 0.95) has sd 1.8 %, so [0.88, 1.0] is > 3.9 sd below and leaves
    room for the percentile bootstrap's small-sample under-coverage. Pairing must matter: the CI
    from independent resamples of each target is ≥ 1.8× wider at ρ = 0.9 (theory: √((1+1)/(2(1−ρ))) ≈ 2.2)."""
    rng = np.random.default_rng(0)
    mu_fp, mu_q, n = 1.0, 0.8, 250
    true = stats.norm.cdf(mu_q / math.sqrt(2)) - stats.norm.cdf(mu_fp / math.sqrt(2))
    hits, widths, unpaired = 0, [], []
    for rep in range(150):
        fp, q, y = _world(rng, n, mu_fp, mu_q, 0.9)
        res = paired_bootstrap(q, fp, y, fprs=(1e-2,), n_bootstrap=150, seed=rep)["auc"]
        a, b = attack_metrics(q, y)["auc"], attack_metrics(fp, y)["auc"]
        assert res["delta"] == pytest.approx(a - b, abs=1e-12)
        hits += res["ci"][0] <= true <= res["ci"][1]
        widths.append(res["ci"][1] - res["ci"][0])
        if rep < 20:  # independent resampling of each target's examples
            cq = attack_metrics(q, y, fprs=(1e-2,), n_bootstrap=150, seed=rep)["ci"]["auc"]
            cf = attack_metrics(fp, y, fprs=(1e-2,), n_bootstrap=150, seed=rep + 999)["ci"]["auc"]
            unpaired.append(math.hypot(cq[1] - cq[0], cf[1] - cf[0]))
    assert 0.88 <= hits / 150 <= 1.0, hits
    assert np.mean(unpaired) >= 1.8 * np.mean(widths[:20])


def test_paired_significance_and_aggregation():
    """A large effect (μ 2 → 0.5 on 400 examples per class, Δ_AUC = −0.28, bootstrap sd ≈ 0.02) is
    significant on each
    target, no effect (identical scores) is not; over targets the mean Δ gets the t-interval."""
    rng = np.random.default_rng(1)
    per, same = [], []
    for t in range(3):
        fp, q, y = _world(rng, 400, 2.0, 0.5, 0.5)
        per.append(paired_bootstrap(q, fp, y, n_bootstrap=100, seed=t))
        same.append(paired_bootstrap(fp, fp, y, n_bootstrap=100, seed=t))
        assert per[-1]["auc"]["significant"] and per[-1]["auc"]["ci"][1] < -0.15
        assert same[-1]["auc"] == {"delta": 0.0, "ci": [0.0, 0.0], "significant": False}
    agg = aggregate_paired(per)["auc"]
    d = np.array([p["auc"]["delta"] for p in per])
    half = stats.t.ppf(0.975, 2) * d.std(ddof=1) / math.sqrt(3)
    assert agg["delta"] == pytest.approx(d.mean()) and agg["ci"] == pytest.approx([d.mean() - half, d.mean() + half])
    assert agg["significant"] and agg["ci_kind"] == "t over targets"
    one = aggregate_paired(per[:1])["auc"]
    assert one["ci"] == per[0]["auc"]["ci"] and one["ci_kind"] == "paired bootstrap"


def test_reference_threshold_and_ppv():
    """τ leaves at most ⌊α·n⌋ reference non-member scores above it; PPV = πTPR/(πTPR + (1−π)FPR)."""
    out = np.arange(1000, dtype=float)
    tau = reference_quantile(out, 0.01)
    assert (out > tau).sum() == 10 and tau == 989.0
    assert (np.arange(1001.0) > reference_quantile(np.arange(1001.0), 0.01)).sum() == 10
    y = np.r_[np.ones(4, bool), np.zeros(6, bool)]
    s = np.array([5, 4, 1, 0, 3, 0, 0, 0, 0, 0], float)
    m = threshold_metrics(s, y, 2.5)
    assert (m["tpr"], m["fpr"]) == (0.5, 1 / 6)
    assert m["ppv"]["0.5"] == pytest.approx(0.5 * 0.5 / (0.5 * 0.5 + 0.5 / 6))
    assert m["ppv"]["0.01"] == pytest.approx(0.005 / (0.005 + 0.99 / 6))
    assert ppv(0.0, 0.0, 0.1) is None


def test_per_example_shift():
    """Top-k retention against a hand count; Spearman against scipy; identical scores retain all."""
    fp = np.arange(100.0)
    q = fp.copy()
    q[[99, 0]] = q[[0, 99]]  # the most exposed example drops to the bottom
    assert top_retained(fp, q, 0.10) == 0.9 and top_retained(fp, fp, 0.01) == 1.0
    y = np.zeros(200, bool)
    y[:100] = True
    f2, q2 = np.r_[fp, -fp], np.r_[q, -fp]
    res = per_example_shift(f2, q2, y)
    assert res["top10_retained"] == 0.9 and res["top1_retained"] == 0.0
    assert res["spearman"] == pytest.approx(stats.spearmanr(f2, q2).statistic)


def test_job_evidence_recomputes_from_exports(tiny_cfg, run_job):
    """A real job: the subsets' counts equal the stored calibration indices, and Δ, ε and the
    per-example shifts are recomputed from scores.npz alone."""
    _, job = run_job(tiny_cfg("dataset.n_train=160", "n_models=8", "train.epochs=3", "quant=adaround",
                              "quant.iters=50", "quant.n_calib=24", "targets=[0,1]", "attack=lira",
                              "attack.bootstrap=30"))
    res = json.loads((job / "results.json").read_text())
    z = np.load(job / "scores.npz")
    for name in ("lira_online", "loss"):
        block = res["attacks"][name]
        sub = block["subsets"]
        assert sub["calibration_members"]["quantized"]["n_members"] == 24
        n_other = []
        for i, t in enumerate(z["target_ids"]):
            keep, calib = z["keep"][t], np.array(res["quant"]["calib_idx"][str(t)])
            assert keep[calib].all() and len(calib) == 24
            q, fp = z[f"attack_{name}"][i], z[f"fp_attack_{name}"][i]
            d = attack_metrics(q, keep)["auc"] - attack_metrics(fp, keep)["auc"]
            assert block["paired"]["auc"]["per_target"][i]["delta"] == pytest.approx(d, abs=1e-12)
            eps_t = block["eps_lower_bound_per_target"][i]
            assert eps_t["target"] == t and eps_t["epsilon"] == pytest.approx(
                eps_lower_bound(q, keep, seed=res["config"]["seed"])["epsilon"], abs=1e-12)
            assert eps_t["eps_max_over_thresholds"] == pytest.approx(
                eps_max_over_thresholds(q, keep)["epsilon"], abs=1e-12)
            other = keep.copy()
            other[calib] = False
            n_other.append(other.sum())
            assert block["per_example"]["per_target"][i]["spearman"] == pytest.approx(
                stats.spearmanr(fp, q).statistic, abs=1e-12)
        assert sub["other_members"]["quantized"]["n_members"] == np.mean(n_other)  # mean over targets
        per = block["eps_lower_bound_per_target"]  # the value for the set: the minimum, never the mean
        assert block["eps_lower_bound"] == min(p["epsilon"] for p in per)
        assert block["eps_max_over_thresholds"] == pytest.approx(np.mean([p["eps_max_over_thresholds"] for p in per]))
        for kind, b in (("attacks", block), ("fp_attacks", res["fp_attacks"][name])):
            again = next(r for r in job_epsilons(job, [name]) if r["block"] == kind)
            assert again["eps_lower_bound"] == pytest.approx(b["eps_lower_bound"], abs=1e-12) == again["stored"]
            assert [p["eps_lower_bound"] for p in again["per_target"]] == pytest.approx(
                [p["epsilon"] for p in b["eps_lower_bound_per_target"]], abs=1e-12)
        assert set(block["reference_threshold"]["ppv"]) == {"0.01", "0.1", "0.5"}
        assert "reference_threshold" in res["fp_attacks"][name]


@pytest.mark.parametrize("n_targets", [1, 3])
def test_subset_metrics_equal_each_subset_evaluated_on_its_own(n_targets):
    """The calibration subsets' block equals attack_metrics on each subset's examples (with
    bootstrap replicates), summarised over targets by aggregate: the mean, and as interval the
    t-interval over ≥ 2 targets or the one target's bootstrap interval."""
    from src.attacks.metrics import aggregate
    from src.report.evidence import subset_metrics

    rng = np.random.default_rng(1)
    n, fprs = 400, (1e-2, 1e-1)
    keep = rng.random((n_targets, n)) < 0.5
    scores, calib = {}, {}
    for t in range(n_targets):
        scores[t] = {"q": {"loss": rng.normal(size=n) + keep[t]}, "fp": {"loss": rng.normal(size=n) + 1.2 * keep[t]}}
        calib[t] = ("members", np.sort(rng.choice(np.flatnonzero(keep[t]), 60, replace=False)))
    got = subset_metrics(scores, keep, calib, "loss", fprs, 50, 0)
    for part in ("calibration_members", "other_members"):
        for kind, key in (("quantized", "q"), ("fp", "fp")):
            per = []
            for t, (_, idx) in calib.items():
                pos = np.zeros(n, bool)
                pos[idx] = True
                if part == "other_members":
                    pos = keep[t] & ~pos
                sel = pos | ~keep[t]
                per.append(attack_metrics(scores[t][key]["loss"][sel], pos[sel], fprs=fprs, n_bootstrap=50, seed=0))
            stats_ = aggregate(per)
            assert got[part][kind] == {**{k: v["mean"] for k, v in stats_.items()},
                                       "ci": {k: v["ci"] for k, v in stats_.items()}}, (part, kind)


def test_pseudo_target_scores_equal_each_pseudo_target_attacked_on_its_own(tiny_cfg):
    """Targets 0–4 are each other's pseudo-targets (their first four references), so references are
    prepared once per pair and read by both, and with the pool's log sigmoid(φ) made once (PoolLogProb)
    each reads its rows of it; every target's pseudo-target scores must still be exactly those of each
    pseudo-target attacked by the remaining references on its own (run_attacks), non-members only, in
    reference order."""
    from src.attacks import PoolLogProb, run_attacks
    from src.pipeline import pseudo_target_scores

    cfg = tiny_cfg("n_models=8", "attack.names=[lira_online,lira_offline_fixed,rmia,rmia_offline,loss]")
    rng = np.random.default_rng(0)
    keep = np.zeros((8, 300), bool)
    for i in range(300):  # each example in half of the pool
        keep[rng.permutation(8)[:4], i] = True
    phi = rng.normal(1.0, 1.0, (1, 300, 2)) + 0.7 * keep[:, :, None] + rng.normal(0, 0.4, (8, 300, 2))
    targets = [0, 1, 2, 3, 4, 6]
    names = list(cfg.attack.names)
    runs = (pseudo_target_scores(cfg, keep, phi, targets), pseudo_target_scores(cfg, keep, phi, targets, PoolLogProb(phi)))
    for t in targets:
        refs = [m for m in range(8) if m != t]
        want = {n: [] for n in names}
        for r in refs[:4]:
            others = [m for m in refs if m != r]
            for n, v in run_attacks(names, phi[others], keep[others], phi[r], cfg.attack).items():
                want[n].append(v[~keep[r]])
        for got in runs:
            assert set(got[t]) == set(names)
            for n in names:
                np.testing.assert_array_equal(got[t][n], np.concatenate(want[n]))
