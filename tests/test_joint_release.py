"""The joint LiRA over released versions (src/attacks/joint.py) and ``attack.release`` (src/releases.py).

Numbers are checked against independent computations: scipy.stats.multivariate_normal for the
Gaussian log-likelihood ratio, numpy's own mean/cov for the reference statistics, and the
single-version LiRA (src/attacks/lira.py) for the cases where the joint attack must reduce to it.
Tolerances: 1e-10 absolute on log-likelihood ratios of order 1–100 computed in float64 — a few
hundred ulps, far above any reduction-order difference between CPUs (a 2×2 or 3×3
eigendecomposition and sums over ≤ 16 references) and far below any modelling difference.
"""
from __future__ import annotations

import json

import numpy as np
import pytest
from scipy.stats import multivariate_normal, norm

from _main_runner import TINY, merge, run_main
from src.attacks.joint import joint_offline, joint_online, log_normal, run_joint
from src.attacks.lira import lira_offline, lira_online
from src.attacks.references import select_references

TOL = 1e-10


def _keep(r: int, n: int, rng) -> np.ndarray:
    """Balanced membership of r references: every example IN for exactly r // 2 of them."""
    keep = np.zeros((r, n), dtype=bool)
    for i in range(n):
        keep[rng.permutation(r)[: r // 2], i] = True
    return keep


def _gaussian_releases(rng, r=12, n=60, q=2):
    """Reference and target φ of two correlated releases with known IN/OUT means and covariances."""
    mu_in, mu_out = np.array([2.0, 1.5]), np.array([0.5, 0.2])
    cov_in = np.array([[1.0, 0.7], [0.7, 1.3]])
    cov_out = np.array([[1.5, 0.9], [0.9, 1.1]])
    keep = _keep(r, n, rng)
    phi = np.where(keep[..., None, None], rng.multivariate_normal(mu_in, cov_in, size=(r, n, q)),
                   rng.multivariate_normal(mu_out, cov_out, size=(r, n, q)))  # [R, N, Q, 2]
    target = rng.multivariate_normal(mu_out, cov_out, size=(n, q))
    return np.moveaxis(phi, -1, 0), np.moveaxis(target, -1, 0), keep


def test_log_normal_equals_scipy_bivariate():
    """Known μ, Σ: the joint log-density is scipy's bivariate Gaussian log-pdf."""
    rng = np.random.default_rng(1)
    x = rng.normal(size=(50, 2)) * 3
    mu = np.array([0.3, -1.2])
    a = rng.normal(size=(2, 2))
    cov = a @ a.T + 0.2 * np.eye(2)
    np.testing.assert_allclose(log_normal(x, mu, cov, 1e-6), multivariate_normal(mu, cov).logpdf(x), rtol=0, atol=TOL)


@pytest.mark.parametrize("fixed", [None, "residual"])
def test_joint_online_equals_scipy_llr(fixed):
    """Synthetic correlated Gaussian scores: the joint score is the scipy bivariate log-likelihood
    ratio with IN/OUT means and covariances estimated independently (np.mean, np.cov with bias)."""
    rng = np.random.default_rng(2)
    phi, target, keep = _gaussian_releases(rng)
    sel = select_references(keep)
    got = joint_online(phi, sel.in_mask, sel.out_mask, target, centre="mean", fixed_variance=fixed)
    n, q = target.shape[1:]
    resid = {}
    for world, mask in (("in", sel.in_mask), ("out", sel.out_mask)):  # fixed: Σ of residuals about the means
        res = [phi[:, mask[:, i], i, j].T - phi[:, mask[:, i], i, j].mean(axis=1) for i in range(n) for j in range(q)]
        res = np.concatenate(res)
        resid[world] = res.T @ res / len(res)
    want = np.zeros(n)
    for i in range(n):
        for j in range(q):
            llr = 0.0
            for sign, mask, world in ((1, sel.in_mask, "in"), (-1, sel.out_mask, "out")):
                v = phi[:, mask[:, i], i, j].T       # [refs, 2]
                cov = np.cov(v, rowvar=False, bias=True) if fixed is None else resid[world]
                llr += sign * multivariate_normal(v.mean(axis=0), cov).logpdf(target[:, i, j])
            want[i] += llr / q
    np.testing.assert_allclose(got, want, rtol=0, atol=TOL)


def test_joint_offline_one_sided_is_the_correlated_z_test():
    """One-sided offline: log Φ of the z-test along equal standardised shifts, computed directly."""
    rng = np.random.default_rng(3)
    phi, target, keep = _gaussian_releases(rng, q=1)
    sel = select_references(keep)
    got = joint_offline(phi, sel.offline_mask, target, centre="mean")
    want = np.empty(target.shape[1])
    for i in range(target.shape[1]):
        v = phi[:, sel.offline_mask[:, i], i, 0].T
        mu, cov = v.mean(axis=0), np.cov(v, rowvar=False, bias=True)
        d = np.sqrt(np.diag(cov))
        w = np.linalg.solve(cov, d)
        want[i] = norm.logcdf(w @ (target[:, i, 0] - mu) / np.sqrt(d @ w))
    np.testing.assert_allclose(got, want, rtol=0, atol=TOL)


def _orthogonal_releases(rng, r=8, n=40, q=2):
    """Two releases whose selected references' deviations are exactly orthogonal in every example
    (zero sample cross-covariance): per world, release 1 deviates by a·(+,−,+,−,…) and release 2 by
    b·(+,+,−,−,…) around per-example centres, in model order of the selected references."""
    keep = _keep(r, n, rng)
    sel = select_references(keep)
    phi = np.zeros((2, r, n, q))
    s1, s2 = np.array([1, -1, 1, -1]), np.array([1, 1, -1, -1])
    for mask, shift in ((sel.in_mask, 1.0), (sel.out_mask, 0.0)):
        for i in range(n):
            rows = np.flatnonzero(mask[:, i])
            assert len(rows) == 4  # 8 references, each example IN for 4 and OUT for 4
            for j in range(q):
                c1, c2 = rng.normal(size=2) + shift
                a, b = rng.uniform(0.3, 2.0, size=2)
                phi[0, rows, i, j] = c1 + a * s1
                phi[1, rows, i, j] = c2 + b * s2
    target = rng.normal(size=(2, n, q)) * 2
    return phi, target, keep, sel


@pytest.mark.parametrize("fixed", [None, "residual"])
@pytest.mark.parametrize("centre", ["mean", "median"])
def test_conditionally_independent_releases_sum(fixed, centre):
    """Two conditionally independent releases (zero cross-covariance in every world): the joint
    log-LR is the sum of the two single-release log-LRs."""
    rng = np.random.default_rng(4)
    phi, target, keep, sel = _orthogonal_releases(rng)
    joint = joint_online(phi, sel.in_mask, sel.out_mask, target, centre=centre, fixed_variance=fixed)
    singles = [lira_online(phi[j], sel.in_mask, sel.out_mask, target[j], centre=centre, fixed_variance=fixed)
               for j in range(2)]
    np.testing.assert_allclose(joint, singles[0] + singles[1], rtol=0, atol=TOL)


def test_known_diagonal_covariance_sums_univariate():
    rng = np.random.default_rng(5)
    x = rng.normal(size=(30, 2))
    mu, sd = np.array([0.4, -0.3]), np.array([0.7, 1.9])
    want = norm(mu[0], sd[0]).logpdf(x[:, 0]) + norm(mu[1], sd[1]).logpdf(x[:, 1])
    np.testing.assert_allclose(log_normal(x, mu, np.diag(sd ** 2), 1e-6), want, rtol=0, atol=TOL)


def _pool(rng, r=15, n=120, q=2):
    keep = _keep(r, n, rng)
    phi = rng.normal(size=(r, n, q)) + 1.5 * keep[..., None]
    return phi, rng.normal(size=(n, q)) + 0.7, keep, select_references(keep)


@pytest.mark.parametrize("fixed", [None, "residual", "pooled_in"])
def test_exact_copy_equals_single_attack(fixed):
    """The second release an exact copy of the first: the covariance is singular, every score is
    finite and equals the single attack (two-sided offline: up to the constant +½ log 2, the
    Jacobian of the copy's basis, so the same ranking)."""
    rng = np.random.default_rng(6)
    phi, target, _, sel = _pool(rng)
    two, t2 = np.stack([phi, phi]), np.stack([target, target])
    on = joint_online(two, sel.in_mask, sel.out_mask, t2, fixed_variance=fixed)
    assert np.isfinite(on).all()
    np.testing.assert_allclose(on, lira_online(phi, sel.in_mask, sel.out_mask, target, fixed_variance=fixed),
                               rtol=0, atol=TOL)
    off = joint_offline(two, sel.offline_mask, t2, fixed_variance=fixed)
    np.testing.assert_allclose(off, lira_offline(phi, sel.offline_mask, target, fixed_variance=fixed),
                               rtol=0, atol=TOL)
    two_sided = joint_offline(two, sel.offline_mask, t2, fixed_variance=fixed, mode="two_sided")
    single = lira_offline(phi, sel.offline_mask, target, fixed_variance=fixed, mode="two_sided")
    np.testing.assert_allclose(two_sided - single, 0.5 * np.log(2), rtol=0, atol=TOL)


def test_copy_of_one_of_three_releases_is_dropped():
    """[a, b, a]: the copy adds nothing; the joint score equals that of [a, b]. (With the mean as
    centre: the likelihood ratio is basis-free, while medians are taken along principal axes, which
    the duplicated coordinate tilts.)"""
    rng = np.random.default_rng(7)
    phi, target, _, sel = _pool(rng)
    other = 0.6 * phi + rng.normal(size=phi.shape)
    t_other = 0.6 * target + rng.normal(size=target.shape)
    three = joint_online(np.stack([phi, other, phi]), sel.in_mask, sel.out_mask, np.stack([target, t_other, target]),
                         centre="mean")
    two = joint_online(np.stack([phi, other]), sel.in_mask, sel.out_mask, np.stack([target, t_other]), centre="mean")
    np.testing.assert_allclose(three, two, rtol=0, atol=1e-8)  # bases differ by a rotation: eigh rounding


@pytest.mark.parametrize("centre", ["median", "mean"])
@pytest.mark.parametrize("fixed", [None, "residual", "pooled_in"])
def test_one_release_is_the_single_attack(centre, fixed):
    rng = np.random.default_rng(8)
    phi, target, _, sel = _pool(rng)
    np.testing.assert_allclose(
        joint_online(phi[None], sel.in_mask, sel.out_mask, target[None], centre=centre, fixed_variance=fixed),
        lira_online(phi, sel.in_mask, sel.out_mask, target, centre=centre, fixed_variance=fixed), rtol=0, atol=TOL)
    for mode in ("one_sided", "two_sided"):
        np.testing.assert_allclose(
            joint_offline(phi[None], sel.offline_mask, target[None], centre=centre, fixed_variance=fixed, mode=mode),
            lira_offline(phi, sel.offline_mask, target, centre=centre, fixed_variance=fixed, mode=mode),
            rtol=0, atol=TOL)


def test_second_informative_release_helps():
    """Two releases with independent noise around the same membership signal: the joint online
    attack separates members better than either release alone (AUC on 2,000 examples, 31 refs;
    the expected gain is ≈ 0.06 AUC, far above the ≈ 0.01 sampling error)."""
    from src.attacks.metrics import attack_metrics

    rng = np.random.default_rng(9)
    r, n = 31, 2000
    keep = _keep(r + 1, n, rng)
    signal = rng.normal(size=(r + 1, n)) * 0.3 + 0.6 * keep      # what both versions share
    phi = np.stack([signal + rng.normal(size=signal.shape) for _ in range(2)])[..., None]
    ref, tgt = phi[:, 1:], phi[:, 0]
    sel = select_references(keep[1:])
    joint = joint_online(ref, sel.in_mask, sel.out_mask, tgt, fixed_variance="residual")
    aucs = [attack_metrics(lira_online(ref[j], sel.in_mask, sel.out_mask, tgt[j], fixed_variance="residual"),
                           keep[0], n_bootstrap=0)["auc"] for j in range(2)]
    assert attack_metrics(joint, keep[0], n_bootstrap=0)["auc"] > max(aucs) + 0.02


def test_run_joint_selects_the_lira_attacks():
    rng = np.random.default_rng(10)
    phi, target, keep, _ = _pool(rng)
    out = run_joint(["lira_online", "rmia", "loss", "lira_offline_fixed"], np.stack([phi, phi + 1]), keep,
                    np.stack([target, target + 1]))
    assert list(out) == ["lira_online", "lira_offline_fixed"]
    with pytest.raises(ValueError, match=r"phi_ref must be \[k, R, N, Q\]"):
        run_joint(["lira_online"], phi, keep, target[None])


# -------------------------------------------------------------------------------------------
# the command line

BAD = [
    ("release_not_produced", ["bits=2", "attack.reference=matched", "attack.release=[fp,3]"],
     ["attack.release=[fp,3]", "2-bit target"]),
    ("no_matched_references", ["bits=2", "attack.release=[fp,q]"],
     ["attack.release=[fp,q]", "attack.reference=fp", "matched or both"]),
    ("full_precision_job", ["quant=none", "attack.reference=matched", "attack.release=[fp,q]"],
     ["attack.release=[fp,q]", "quant=none"]),
    ("unknown_item", ["attack.reference=matched", "attack.release=[fp,int4]"], ["attack.release=[fp,int4]", "allowed"]),
]


@pytest.mark.parametrize("name,case,needles", BAD, ids=[b[0] for b in BAD])
def test_bad_release_one_line_exit_2_before_training(tmp_path, name, case, needles):
    p = run_main(merge(TINY, case), tmp_path / "cache", tmp_path / "run", timeout=120, check=False)
    err = p.stderr.strip()
    assert p.returncode == 2, err[-2000:]
    assert len(err.splitlines()) == 1 and err.startswith("error: "), err
    for n in needles:
        assert n in err, err
    assert not list((tmp_path / "cache").rglob("*.pt")) if (tmp_path / "cache").exists() else True


@pytest.mark.slow
def test_release_job_end_to_end(tmp_path):
    """A tiny job with releases [fp,4,2]: the joint block, its arrays (recomputable from
    release_phi), the figure, and the matched references shared with the 2-bit target."""
    from src.attacks.joint import run_joint as rj

    run = tmp_path / "run"
    over = merge(TINY, ["n_models=6", "bits=2", "attack.names=[lira_online_fixed,lira_offline]",
                        "attack.reference=matched", "attack.release=[fp,4,2]"])
    run_main(over, tmp_path / "cache", run, timeout=900)  # ~40 s on an idle 2-core CPU
    res = json.loads((run / "results.json").read_text())
    block = res["releases"]
    assert block["releases"] == ["fp", "4-bit", "2-bit"]
    assert set(block["attacks"]) == {"lira_online_fixed", "lira_offline"}
    a = block["attacks"]["lira_online_fixed"]
    best = a["best_single"]["auc"]
    assert a["single"][best]["auc"] == max(s["auc"] for s in a["single"].values())
    assert a["paired"]["auc"]["delta"] == pytest.approx(a["joint"]["auc"] - a["single"][best]["auc"], abs=1e-12)
    # the 2-bit release's single attack is the job's matched-reference attack
    assert a["single"]["2-bit"]["auc"] == pytest.approx(res["attacks"]["lira_online_fixed"]["auc"], abs=1e-12)
    z = np.load(run / "scores.npz")
    phi, keep = z["release_phi"], z["keep"]
    t = int(z["target_ids"][0])
    refs = np.array([m for m in range(keep.shape[0]) if m != t])
    again = rj(["lira_online_fixed"], phi[:, refs], keep[refs], phi[:, t], res["config"]["attack"])
    np.testing.assert_allclose(again["lira_online_fixed"], z["joint_attack_lira_online_fixed"][0], rtol=0, atol=1e-9)
    np.testing.assert_array_equal(phi[2], z["ref_phi"])
    assert (run / "releases.png").stat().st_size > 0
    assert block["cost"]["4-bit"]["models"] == 6


def test_release_report_block():
    """results.json's ``releases`` block from known scores: the best single release is the one with
    the highest mean metric, Δ is joint − that release on the same examples, and the block reaches
    summary.md and the W&B summary."""
    from omegaconf import OmegaConf

    from src.releases import Release, ReleaseScores
    from src.report.releases import markdown_section, release_results
    from src.report.wandb_sink import summary_values

    rng = np.random.default_rng(11)
    n = 400
    keep = np.zeros((3, n), dtype=bool)
    keep[0, : n // 2] = True
    keep[1:, n // 2:] = True
    y = keep[0]
    strength = {"fp": 1.0, "2-bit": 0.4, "joint": 1.5}  # member shift of each score set
    s = {k: rng.normal(size=n) + v * y for k, v in strength.items()}
    rs = ReleaseScores([Release("fp", None), Release("2-bit", 2.0)], np.zeros((2, 3, n, 1), np.float32),
                       {0: {"lira_online": s["joint"]}}, {"fp": {0: {"lira_online": s["fp"]}},
                                                          "2-bit": {0: {"lira_online": s["2-bit"]}}}, {})
    cfg = OmegaConf.create({"seed": 0, "attack": {"names": ["lira_online", "loss"], "bootstrap": 50,
                                                  "fprs": [1e-2, 1e-3]}})
    block, arrays = release_results(cfg, keep, rs)
    a = block["attacks"]["lira_online"]
    auc = {k: float(np.mean(v[y][:, None] > v[~y][None, :])) for k, v in s.items()}  # no ties in normals
    assert a["joint"]["auc"] == pytest.approx(auc["joint"], abs=1e-12)
    assert a["best_single"]["auc"] == "fp"
    assert a["paired"]["auc"]["delta"] == pytest.approx(auc["joint"] - auc["fp"], abs=1e-12)
    lo, hi = a["paired"]["auc"]["ci"]
    assert lo <= a["paired"]["auc"]["delta"] <= hi
    assert arrays["release_attack_lira_online"].shape == (2, 1, n)
    res = {"job": {"dataset": "digits", "model": "smallcnn", "quant": "obc", "bits": 2.0}, "releases": block,
           "attacks": {}, "utility": {}}
    md = markdown_section([res])
    assert "| obc | 2 | fp+2-bit | lira_online |" in md
    vals = summary_values(res)
    assert vals["releases/lira_online/delta_auc"] == pytest.approx(auc["joint"] - auc["fp"], abs=1e-12)
    assert vals["releases/lira_online/2-bit/auc"] == pytest.approx(auc["2-bit"], abs=1e-12)
