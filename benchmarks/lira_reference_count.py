"""How many reference models online LiRA's per-example variance needs (simulated φ, seconds on a CPU).

Each example i has Gaussian φ under the OUT and the IN world, with per-example centres, a
per-example membership shift and a per-example spread (LiRA's own model, paper §4.2), and Q
correlated query views. A pool of M models on the balanced split (src.data.keep_matrix) is drawn
from it; each of ``--targets`` pool models is attacked by the others exactly as a job does
(src.attacks.run_attacks), with per-example (``lira_online``) and fixed (``lira_online_fixed``)
variance. Prints the mean AUC over targets and repetitions per pool size M.

    python -m benchmarks.lira_reference_count [--n 2000] [--reps 5] [--targets 4] [--sizes 4 8 16]
"""
from __future__ import annotations

import argparse

import numpy as np

from src.attacks import run_attacks
from src.attacks.metrics import attack_metrics
from src.data import keep_matrix

SIZES = (4, 5, 6, 7, 8, 10, 12, 16, 24, 32, 64)


def simulate(m: int, n: int, q: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(φ [M, N, Q], keep [M, N]) of a pool of ``m`` models on the balanced split."""
    keep = keep_matrix(m, n, 0.5, int(rng.integers(1 << 30)))
    mu_out = rng.normal(2.0, 1.5, n)                   # how confidently the class is predicted unseen
    shift = rng.exponential(1.0, n)                    # membership effect: most small, a few large
    sigma = np.exp(rng.normal(np.log(0.6), 0.5, n))    # per-example spread over training runs
    base = mu_out + keep * shift + sigma * rng.standard_normal((m, n))
    views = 0.3 * sigma[None, :, None] * rng.standard_normal((m, n, q))  # query views: correlated
    return (base[..., None] + views).astype(np.float32), keep


def measure(sizes=SIZES, n: int = 2000, q: int = 4, reps: int = 5, targets: int = 4, seed: int = 0) -> dict:
    """{M: (mean AUC online, mean AUC fixed, fraction of targets with online AUC < fixed AUC)}."""
    rng = np.random.default_rng(seed)
    out = {}
    for m in sizes:
        on, fx = [], []
        for _ in range(reps):
            phi, keep = simulate(m, n, q, rng)
            for t in range(min(targets, m)):
                refs = np.array([r for r in range(m) if r != t])
                s = run_attacks(["lira_online", "lira_online_fixed"], phi[refs], keep[refs], phi[t])
                on.append(attack_metrics(s["lira_online"], keep[t], n_bootstrap=0)["auc"])
                fx.append(attack_metrics(s["lira_online_fixed"], keep[t], n_bootstrap=0)["auc"])
        on, fx = np.array(on), np.array(fx)
        out[m] = (float(on.mean()), float(fx.mean()), float((on < fx).mean()))
    return out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--targets", type=int, default=4)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--sizes", type=int, nargs="+", default=list(SIZES), help="pool sizes M")
    a = ap.parse_args(argv)
    print(f"{'n_models':>8}  {'AUC online':>10}  {'AUC fixed':>9}  online < fixed")
    for m, (on, fx, worse) in measure(sizes=a.sizes, n=a.n, reps=a.reps, targets=a.targets, seed=a.seed).items():
        print(f"{m:>8}  {on:>10.3f}  {fx:>9.3f}  {worse:>8.0%}")


if __name__ == "__main__":
    main()
