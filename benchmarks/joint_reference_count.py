"""When does the joint attack over two released versions beat the better single one (simulated φ)?

The FP release follows LiRA's own model as in benchmarks/lira_reference_count.py: per-example
centre, membership shift and spread over training runs. The second release is that model's
"quantized copy", in one of two regimes:

* ``copy``: φ_q = φ_fp + τ·ε with per-model noise ε of per-example scale τ = 0.15·σ (the copy adds
  no information about membership, only noise);
* ``independent``: φ_q shares the membership shift but its training-run noise is only correlated
  ρ = 0.5 with φ_fp (each release carries information the other lacks).

A pool of M models on the balanced split is drawn; each of ``--targets`` pool models is attacked by
the others with the single LiRA on each release and the joint LiRA on both (src/attacks), online
with per-example and fixed covariance and offline. Prints the mean AUC over targets and repetitions.

    python -m benchmarks.joint_reference_count [--n 2000] [--reps 3] [--targets 4]
"""
from __future__ import annotations

import argparse

import numpy as np

from src.attacks import run_attacks
from src.attacks.joint import run_joint
from src.attacks.metrics import attack_metrics
from src.data import keep_matrix

SIZES = (8, 16, 32, 64)
NAMES = ("lira_online", "lira_online_fixed", "lira_offline")


def simulate(m: int, n: int, q: int, regime: str, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(φ [2, M, N, Q] of the FP and the second release, keep [M, N])."""
    keep = keep_matrix(m, n, 0.5, int(rng.integers(1 << 30)))
    mu_out = rng.normal(2.0, 1.5, n)
    shift = rng.exponential(1.0, n)
    sigma = np.exp(rng.normal(np.log(0.6), 0.5, n))
    z_fp = rng.standard_normal((m, n))
    fp = mu_out + keep * shift + sigma * z_fp
    if regime == "copy":
        second = fp + 0.15 * sigma * rng.standard_normal((m, n))
    else:
        second = mu_out + keep * shift + sigma * (0.5 * z_fp + np.sqrt(0.75) * rng.standard_normal((m, n)))
    views = 0.3 * sigma[None, :, None] * rng.standard_normal((m, n, q))  # query views, shared by both releases
    return np.stack([fp[..., None] + views, second[..., None] + views]).astype(np.float32), keep


def measure(regime: str, sizes=SIZES, n: int = 2000, q: int = 2, reps: int = 3, targets: int = 4,
            seed: int = 0) -> dict:
    """{M: {attack: (AUC fp alone, AUC second alone, AUC joint)}} averaged over targets and reps."""
    rng = np.random.default_rng(seed)
    out = {}
    for m in sizes:
        auc = {name: [] for name in NAMES}
        for _ in range(reps):
            phi, keep = simulate(m, n, q, regime, rng)
            for t in range(min(targets, m)):
                refs = np.array([r for r in range(m) if r != t])
                single = [run_attacks(list(NAMES), phi[j, refs], keep[refs], phi[j, t]) for j in range(2)]
                joint = run_joint(NAMES, phi[:, refs], keep[refs], phi[:, t])
                for name in NAMES:
                    auc[name].append([attack_metrics(s, keep[t], n_bootstrap=0)["auc"]
                                      for s in (single[0][name], single[1][name], joint[name])])
        out[m] = {name: tuple(np.mean(v, axis=0)) for name, v in auc.items()}
    return out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--targets", type=int, default=4)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)
    for regime in ("copy", "independent"):
        print(f"second release: {regime}")
        print(f"{'n_models':>8}  {'attack':<18} {'fp alone':>8} {'2nd alone':>9} {'joint':>7} {'joint − best':>12}")
        for m, per in measure(regime, n=a.n, reps=a.reps, targets=a.targets, seed=a.seed).items():
            for name, (fp, second, joint) in per.items():
                print(f"{m:>8}  {name:<18} {fp:>8.3f} {second:>9.3f} {joint:>7.3f} {joint - max(fp, second):>+12.3f}")


if __name__ == "__main__":
    main()
