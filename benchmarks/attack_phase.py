"""The attack phase of a job, from "pool loaded" to "written", before and after, side by side in one run.

    python -m benchmarks.attack_phase                       # 4 and 16 targets, --ref vs this working tree
    python -m benchmarks.attack_phase --targets 16 --ref <commit> --repeats 3

A job whose pool and quantized targets are cached spends its time after loading them in: scoring
(every attack against each quantized target and each FP target, and the references attacked as
pseudo-targets for the reference-calibrated threshold), the metrics (per target and pooled, each
with its bootstrap intervals, the paired Δ, ε, subsets, shifts) and writing (scores.npz,
results.json, the figure, the console table). This benchmark runs exactly that on synthetic φ at the
CIFAR-10 CPU protocol's sizes (4,000 examples, 2 queries, a pool of 16 models, ``experiment=
cifar10_cpu``'s attack config: all 7 attacks, 200 bootstrap replicates, reference=fp; a quantizer
that calibrates on 1,024 of each target's members, so the calibration subsets are evaluated) with every
pool model a target (``--targets 16``) or the first four, once with the code of ``--ref`` (a git
worktree of that commit) and once with this working tree, each in its own process on the same
inputs. It prints the wall seconds of each part (best of ``--repeats``) and this process's CPU
seconds (on a loaded machine the wall time is an upper bound; the CPU time is inflated less), the
ratio before/after, and the
largest difference between any two numbers of the two results.json files (0 when the vectorised
path reproduces the old one).

φ is drawn as a LiRA-like logit-confidence: per example a difficulty and a member shift, per model
and query Gaussian noise, quantized targets a small perturbation of their FP φ. The timings do not
depend on the values beyond their ties (none here) and the pool's membership split (balanced).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DEFAULT_REF = "3323ee5"  # the attack phase before it was vectorised
SIZES = {"n_examples": 4000, "n_queries": 2, "n_models": 16}


def synthetic_inputs(n_models: int, n_examples: int, n_queries: int, seed: int = 0):
    """(keep [M, N], FP φ [M, N, Q], quantized φ [M, N, Q], labels [N]) with a balanced split."""
    rng = np.random.default_rng(seed)
    keep = np.zeros((n_models, n_examples), dtype=bool)
    for i in range(n_examples):  # each example in exactly half of the pool (the split's pkeep = 0.5)
        keep[rng.permutation(n_models)[: n_models // 2], i] = True
    difficulty = rng.normal(2.0, 1.5, (1, n_examples, 1))
    shift = np.abs(rng.normal(0.8, 0.6, (1, n_examples, 1)))
    phi = difficulty + shift * keep[:, :, None] + rng.normal(0, 0.5, (n_models, n_examples, n_queries))
    q_phi = phi + rng.normal(-0.05, 0.15, phi.shape)
    labels = rng.integers(0, 10, n_examples)
    return keep, phi.astype(np.float32), q_phi.astype(np.float32), labels


def _cfg(n_targets: int, out: Path):
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(Path.cwd() / "conf"), version_base="1.3"):
        return compose("config", overrides=["experiment=cifar10_cpu", f"n_targets={n_targets}", "quant=adaround",
                                            "bits=4", "logger=none", "progress=false", f"paths.cache_dir={out}"])


def worker(n_targets: int, out: Path, repeats: int) -> dict:
    """Times the phase with the code ``src`` resolves to in this process; writes into ``out``."""
    import contextlib
    import io

    import torch

    from src import pipeline as P
    from src.report.results import build_results, print_results, write_job

    cfg = _cfg(n_targets, out)
    keep, phi, q_phi, labels = synthetic_inputs(**SIZES)
    pool = P.Pool(keep, phi, np.full(len(keep), 0.6), np.full(len(keep), 0.99), [])
    targets = list(range(n_targets))
    rng = np.random.default_rng(1)  # each target calibrated on 1,024 of its members (the preset's n_calib)
    calib = {t: np.sort(rng.choice(np.flatnonzero(keep[t]), int(cfg.budget.n_calib), replace=False)) for t in targets}
    quantized = [P.QuantTarget(t, None, q_phi[t], 0.59, 0.98, {}, 0.0, calib[t], {}) for t in targets]
    data = type("Data", (), {"y_train": torch.from_numpy(labels), "num_classes": 10})()
    best: dict[str, float] = {}
    for _ in range(repeats):
        clock = []  # (wall, this process's CPU) at each part's end: CPU seconds are what a loaded machine inflates least

        def mark():
            clock.append((time.perf_counter(), time.process_time()))
        mark()
        refs = {"fp": pool.phi}
        if hasattr(P, "attack_scores"):  # the phase as src/main.py runs it
            scores, fp_scores, ref_out = P.attack_scores(cfg, keep, pool, quantized, refs)
        else:
            scores = {kind: {t.index: P.attack_target(cfg, keep, p, t.index, t.phi) for t in quantized}
                      for kind, p in refs.items()}
            fp_scores = {t: P.attack_target(cfg, keep, pool.phi, t, pool.phi[t]) for t in targets}
            ref_out = {kind: {t: P.reference_out_scores(cfg, keep, p, t) for t in targets}
                       for kind, p in {"fp": pool.phi, **refs}.items()}
        mark()
        results, arrays = build_results(cfg, data, pool, quantized, scores, fp_scores, refs, ref_out)
        mark()
        write_job(out / "job", results, arrays, {})
        with contextlib.redirect_stdout(io.StringIO()):
            print_results(results)
        mark()
        for i, k in enumerate(("scoring", "metrics", "writing", "total")):
            a, b = (i, i + 1) if k != "total" else (0, 3)
            for unit, j in (("wall", 0), ("cpu", 1)):
                v = clock[b][j] - clock[a][j]
                best[f"{k}_{unit}"] = min(best.get(f"{k}_{unit}", float("inf")), v)
    return best


def _run_worker(code: Path, n_targets: int, out: Path, repeats: int) -> dict:
    env = dict(os.environ, PYTHONPATH=str(code), WANDB_MODE="disabled")
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", "--targets", str(n_targets),
           "--out", str(out), "--repeats", str(repeats)]
    p = subprocess.run(cmd, cwd=code, env=env, capture_output=True, text=True)
    if p.returncode:
        raise SystemExit(f"attack phase failed in {code}:\n{p.stderr[-3000:]}")
    return json.loads(p.stdout.strip().splitlines()[-1])


def _numbers(obj, path=""):
    """Every number of a results.json tree, by path."""
    if isinstance(obj, dict):
        for k, v in obj.items():
            if k not in ("config", "provenance"):
                yield from _numbers(v, f"{path}.{k}")
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from _numbers(v, f"{path}[{i}]")
    elif isinstance(obj, (int, float)) and not isinstance(obj, bool):
        yield path, float(obj)


def max_difference(a: Path, b: Path) -> tuple[float, str, int]:
    """(largest |difference|, where, numbers compared) over the numbers both results.json hold."""
    na = dict(_numbers(json.loads(a.read_text())))
    nb = dict(_numbers(json.loads(b.read_text())))
    worst, where = 0.0, "-"
    for k in na.keys() & nb.keys():
        d = abs(na[k] - nb[k])
        if d > worst or (d != d):
            worst, where = d, k
    return worst, where, len(na.keys() & nb.keys())


def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="python -m benchmarks.attack_phase", description=__doc__.splitlines()[0])
    p.add_argument("--targets", type=int, nargs="+", default=[4, 16])
    p.add_argument("--ref", default=DEFAULT_REF, help="the commit whose code is 'before'")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.worker:
        print(json.dumps(worker(a.targets[0], a.out, a.repeats)))
        return
    print(f"# {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs visible; synthetic φ: "
          f"{SIZES['n_examples']:,} examples × {SIZES['n_queries']} queries, {SIZES['n_models']} pool models, "
          f"experiment=cifar10_cpu attacks (7, 200 bootstrap replicates); best of {a.repeats}")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        subprocess.run(["git", "worktree", "add", "--detach", "-f", str(tmp / "ref"), a.ref], cwd=REPO, check=True,
                       capture_output=True)
        try:
            print(f"{'targets':>7} {'part':>8} {'before s':>9} {'after s':>8} {'ratio':>6}   {'before CPU s':>12} "
                  f"{'after CPU s':>11} {'ratio':>6}")
            for t in a.targets:
                before = _run_worker(tmp / "ref", t, tmp / f"before{t}", a.repeats)
                after = _run_worker(REPO, t, tmp / f"after{t}", a.repeats)
                for k in ("scoring", "metrics", "writing", "total"):
                    w0, w1, c0, c1 = before[f"{k}_wall"], after[f"{k}_wall"], before[f"{k}_cpu"], after[f"{k}_cpu"]
                    print(f"{t:>7} {k:>8} {w0:>9.2f} {w1:>8.2f} {w0 / w1:>5.1f}x   {c0:>12.2f} {c1:>11.2f} "
                          f"{c0 / c1:>5.1f}x")
                d, where, n = max_difference(tmp / f"before{t}" / "job" / "results.json",
                                             tmp / f"after{t}" / "job" / "results.json")
                print(f"{t:>7} results.json: {n:,} numbers in both, largest |before − after| {d:.3g} ({where})",
                      flush=True)
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(tmp / "ref")], cwd=REPO, capture_output=True)


if __name__ == "__main__":
    main()
