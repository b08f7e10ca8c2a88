"""Coverage and power of the empirical ε bounds (src/attacks/epsilon.py) where ε is known exactly.

Non-member scores ~ Laplace(0, 1), member scores ~ Laplace(ε, 1): the density ratio
exp(|x| − |x − ε|) lies in [e^−ε, e^ε], so every membership test satisfies TPR ≤ e^ε·FPR and
TNR ≤ e^ε·FNR, with equality for thresholds beyond ε (or below 0): the true pure-DP ε of this
"mechanism" is exactly ε. A 95 % lower bound may exceed it in at most 5 % of draws.

    python -m benchmarks.epsilon_coverage                 # 1,000 draws, n = 750 and 5,000 per class
    python -m benchmarks.epsilon_coverage --draws 200 --n 750

Prints, per (n, ε): P(ε_lb > ε) of the valid bound (split) and of the old maximum over thresholds,
then the mean bound of every candidate (the power comparison). Candidates with thresholds fixed
without the target's scores use the exact non-member quantiles, i.e. infinitely many reference
scores: their best case.
"""
from __future__ import annotations

import argparse
import time

import numpy as np

from src.attacks.epsilon import _at_thresholds, _max_over_thresholds, _split_bound

EPS = (0.0, 1.0, 2.0, 4.0)
NS = (750, 5000)


def laplace_world(rng: np.random.Generator, draws: int, n: int, eps: float) -> tuple[np.ndarray, np.ndarray]:
    """(draws, 2n) scores, members first, and the (2n,) membership labels."""
    s = rng.laplace(size=(draws, 2 * n))
    s[:, :n] += eps
    return s, np.r_[np.ones(n, bool), np.zeros(n, bool)]


def laplace_quantile(p: np.ndarray) -> np.ndarray:
    """Quantile function of Laplace(0, 1): the threshold with non-member tail P(s ≥ τ) = 1 − p."""
    p = np.asarray(p, dtype=np.float64)
    return np.where(p < 0.5, np.log(2 * p), -np.log(2 * (1 - p)))


# thresholds fixed beforehand: non-member upper tails 10 %, 1 %, 0.1 % and the mirrored lower tails
GRID = laplace_quantile(np.array([0.9, 0.99, 0.999, 0.1, 0.01, 0.001]))
REF_1PCT = laplace_quantile(np.array([0.99]))  # one reference-calibrated threshold at FPR 1 %

CANDIDATES = {
    "split": lambda s, y: _split_bound(s, y, 0.95, 0)[0],  # selection on a quarter (the default)
    "split_half": lambda s, y: _split_bound(s, y, 0.95, 0, 0.5)[0],
    "bonferroni_grid6": lambda s, y: _at_thresholds(s, y, GRID, 0.95)[0],
    "reference_fpr1%": lambda s, y: _at_thresholds(s, y, REF_1PCT, 0.95)[0],
    "max_over_thresholds (old)": lambda s, y: _max_over_thresholds(s, y, 0.95)[0],
}


def simulate(n: int, eps: float, draws: int, seed: int = 0, chunk: int = 100, names=tuple(CANDIDATES)) -> dict:
    """{candidate: (violation rate P(ε_lb > ε), mean ε_lb)} over ``draws`` independent worlds."""
    rng = np.random.default_rng([seed, n, int(eps * 1000)])
    vals = {k: [] for k in names}
    for start in range(0, draws, chunk):
        s, y = laplace_world(rng, min(chunk, draws - start), n, eps)
        for k in names:
            vals[k].append(np.maximum(CANDIDATES[k](s, y), 0.0))
    return {k: (float(np.mean(np.concatenate(v) > eps)), float(np.mean(np.concatenate(v)))) for k, v in vals.items()}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--draws", type=int, default=1000)
    ap.add_argument("--n", type=int, nargs="+", default=list(NS), help="members (= non-members) per draw")
    ap.add_argument("--eps", type=float, nargs="+", default=list(EPS))
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)
    t0 = time.time()
    res = {(n, e): simulate(n, e, a.draws, a.seed) for n in a.n for e in a.eps}
    names = list(CANDIDATES)
    head = " | ".join(f"ε={e:g}" for e in a.eps)
    print(f"P(ε_lb > ε) over {a.draws} draws (a 95 % bound allows 5 %): new (split) / old (max over thresholds)")
    print(f"| n per class | {head} |\n|---|" + "---|" * len(a.eps))
    for n in a.n:
        cells = " | ".join(f"{res[n, e]['split'][0]:.1%} / {res[n, e][names[-1]][0]:.1%}" for e in a.eps)
        print(f"| {n} | {cells} |")
    print(f"\nmean ε_lb (power; the old value is not a bound)")
    print(f"| n per class | candidate | {head} |\n|---|---|" + "---|" * len(a.eps))
    for n in a.n:
        for k in names:
            cells = " | ".join(f"{res[n, e][k][1]:.3f} ({res[n, e][k][0]:.1%})" for e in a.eps)
            print(f"| {n} | {k} | {cells} |")
    print(f"\n({time.time() - t0:.0f} s; cells of the second table: mean (violation rate))")


if __name__ == "__main__":
    main()
