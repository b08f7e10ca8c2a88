"""Coverage of the pooled TPR-at-FPR interval and of its paired Δ (src/attacks/pooled.py) where the
truth is known, with targets that differ from one another.

Synthetic world (binormal scores; one draw = T targets). Target j has a leakage μ_j ~ N(m, s_μ²), a
score offset c_j ~ N(0, s_c²) that moves both of its classes (it changes the pooled ROC, not the
target's own) and a quantization effect δ_j ~ N(d, s_δ²). Per example, e, v ~ N(0, 1):

    FP scores:         non-member c_j + e                member c_j + μ_j + σ·e
    quantized scores:  non-member c_j + e'               member c_j + μ_j + δ_j + σ·e'
                       with e' = ρ·e + √(1 − ρ²)·v (the same example scores alike in both models)

Population pooled TPR at FPR α (mixture over targets, one threshold): non-members ~ N(0, 1 + s_c²),
so τ = √(1 + s_c²)·z_{1−α}; members ~ N(m (+ d), σ² + s_μ² (+ s_δ²) + s_c²), so
TPR = 1 − Φ((τ − m)/√(σ² + s_μ² + s_c²)) in closed form (FP; the quantized one likewise), and
Δ = TPR_q − TPR_fp. σ > 1 gives the concave low-FPR ROC that LiRA shows.

    python -m benchmarks.tpr_coverage                       # 1,000 draws per cell, T = 4 and 16
    python -m benchmarks.tpr_coverage --draws 400 --boot 100

Prints per world and T: the truth, the coverage of the 95 % interval for the pooled TPR and for Δ,
the mean interval width, the bias of the point estimate (the conservative step read), and the
binomial standard error of each coverage.
"""
from __future__ import annotations

import argparse
import time
from dataclasses import dataclass

import numpy as np
from scipy.stats import norm

from src.attacks.pooled import ExampleWeights, PooledScores, pooled_metrics, pooled_paired


@dataclass(frozen=True)
class World:
    """Scores with known pooled TPR at FPR ``alpha`` (see the module docstring). ``tpr``: the FP
    targets' pooled TPR at ``alpha`` (m is solved from it); ``d``: the quantization's mean change of
    the member shift."""

    name: str
    tpr: float = 0.03
    sigma: float = 1.5
    s_mu: float = 0.3
    s_c: float = 0.2
    d: float = -0.15
    s_d: float = 0.1
    rho: float = 0.8
    n_pos: int = 2000
    n_neg: int = 2000
    alpha: float = 1e-3

    @property
    def tau(self) -> float:
        return float(np.sqrt(1 + self.s_c ** 2) * norm.isf(self.alpha))

    @property
    def m(self) -> float:
        return self.tau - float(norm.isf(self.tpr)) * float(np.sqrt(self.sigma ** 2 + self.s_mu ** 2 + self.s_c ** 2))

    def truth(self) -> dict[str, float]:
        fp = norm.sf((self.tau - self.m) / np.sqrt(self.sigma ** 2 + self.s_mu ** 2 + self.s_c ** 2))
        q = norm.sf((self.tau - self.m - self.d) / np.sqrt(self.sigma ** 2 + self.s_mu ** 2 + self.s_d ** 2
                                                           + self.s_c ** 2))
        return {"tpr": float(fp), "tpr_q": float(q), "delta": float(q - fp)}

    def draw(self, rng: np.random.Generator, n_targets: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(quantized scores [T, n], FP scores [T, n], is_member [n]), members first."""
        t, n = n_targets, self.n_pos + self.n_neg
        mu = rng.normal(self.m, self.s_mu, (t, 1))
        c = rng.normal(0.0, self.s_c, (t, 1))
        d = rng.normal(self.d, self.s_d, (t, 1))
        y = np.r_[np.ones(self.n_pos, bool), np.zeros(self.n_neg, bool)]
        spread = np.where(y, self.sigma, 1.0)
        e = rng.standard_normal((t, n))
        e2 = self.rho * e + np.sqrt(1 - self.rho ** 2) * rng.standard_normal((t, n))
        fp = c + y * mu + spread * e
        q = c + y * (mu + d) + spread * e2
        return q, fp, y


# CIFAR-10 CPU sizes (2,000 members and 2,000 non-members per target) at the TPRs the CPU protocols
# measure (a few %), with targets differing a little or a lot, and a strong attack (the paper's ~30 %)
WORLDS = (
    World("cpu_tpr3%"),
    World("cpu_tpr3%_targets_differ", s_mu=0.6, s_c=0.3, s_d=0.2),
    World("strong_tpr30%", tpr=0.3, d=-0.3),
)


def coverage(world: World, n_targets: int, draws: int, n_boot: int = 200, seed: int = 0) -> dict[str, float]:
    """Fraction of draws whose 95 % interval holds the true pooled TPR / Δ, mean widths, mean bias."""
    truth = world.truth()
    rng = np.random.default_rng([seed, n_targets, int(world.tpr * 1e4), int(world.s_mu * 100)])
    hit = {"tpr": 0, "delta": 0}
    width = {"tpr": 0.0, "delta": 0.0}
    bias = {"tpr": 0.0, "delta": 0.0}
    key = f"tpr_at_fpr_{world.alpha:.0e}".replace("e-0", "e-")
    for i in range(draws):
        q, fp, y = world.draw(rng, n_targets)
        ys = [y] * n_targets
        ew = ExampleWeights(ys, n_boot, seed=i)
        vq, vf = PooledScores(list(q), ys), PooledScores(list(fp), ys)
        m = pooled_metrics(list(fp), ys, (world.alpha,), ew, view=vf)
        p = pooled_paired(list(q), list(fp), ys, (world.alpha,), ew, views=(vq, vf))[key]
        for k, val, ci in (("tpr", m[key], m["ci"][key]), ("delta", p["delta"], p["ci"])):
            hit[k] += ci[0] <= truth[k] <= ci[1]
            width[k] += ci[1] - ci[0]
            bias[k] += val - truth[k]
    return {"truth_tpr": truth["tpr"], "truth_delta": truth["delta"],
            **{f"cov_{k}": hit[k] / draws for k in hit}, **{f"width_{k}": width[k] / draws for k in width},
            **{f"bias_{k}": bias[k] / draws for k in bias}}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="python -m benchmarks.tpr_coverage", description=__doc__.splitlines()[0])
    p.add_argument("--draws", type=int, default=1000)
    p.add_argument("--boot", type=int, default=200)
    p.add_argument("--targets", type=int, nargs="+", default=[4, 16])
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    print(f"95 % intervals, {a.draws} draws per cell, {a.boot} bootstrap replicates, α = 1e-3, "
          "2,000 members + 2,000 non-members per target")
    print(f"{'world':<26} {'T':>3} {'TPR':>7} {'cov':>6} {'width':>7} {'bias':>8}   {'Δ':>7} {'cov':>6} "
          f"{'width':>7} {'bias':>8}  {'s':>5}")
    se = np.sqrt(0.95 * 0.05 / a.draws)
    for w in WORLDS:
        for t in a.targets:
            t0 = time.perf_counter()
            r = coverage(w, t, a.draws, a.boot, a.seed)
            print(f"{w.name:<26} {t:>3} {r['truth_tpr']:>7.4f} {r['cov_tpr']:>6.3f} {r['width_tpr']:>7.4f} "
                  f"{r['bias_tpr']:>+8.4f}   {r['truth_delta']:>+7.4f} {r['cov_delta']:>6.3f} "
                  f"{r['width_delta']:>7.4f} {r['bias_delta']:>+8.4f}  {time.perf_counter() - t0:>5.0f}", flush=True)
    print(f"cov: fraction of intervals holding the truth (binomial s.e. at 95 %: {se:.3f}); width: mean "
          "interval width; bias: mean point estimate − truth; s: seconds")


if __name__ == "__main__":
    main()
