"""Do two versions of the code give the same numbers? Runs one job in a git worktree of ``--ref`` and
in this working tree, each from an empty cache, and compares them.

    python -m benchmarks.same_numbers [--ref d58b0e1] [overrides ...]
    (default job: quant=rtn bits=2 attack=all targets=[0,1,2,3] logger=none)

Compared exactly (bit for bit): scores.npz ``phi``, ``target_phi``, ``keep`` and every
``attack_*``/``fp_attack_*`` array the reference also has; results.json ``utility`` and, per attack,
every metric of every target and their means. Keys that only one version has (new outputs) are
listed, not compared. Exit status 0 when everything compared is identical.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
JOB = ["quant=rtn", "bits=2", "attack=all", "targets=[0,1,2,3]", "logger=none", "progress=false"]


def run_job(code: Path, out: Path, overrides: list[str]) -> Path:
    env = dict(os.environ, WANDB_MODE="disabled", PYTHONPATH=str(code))
    cmd = [sys.executable, "-m", "src.main", *overrides, f"paths.cache_dir={out}/cache", f"hydra.run.dir={out}/run"]
    p = subprocess.run(cmd, cwd=code, env=env, capture_output=True, text=True)
    if p.returncode:
        raise SystemExit(f"job failed in {code}:\n{p.stderr[-2000:]}")
    return out / "run"


def compare(ref: Path, new: Path) -> list[str]:
    diffs = []
    za, zb = np.load(ref / "scores.npz"), np.load(new / "scores.npz")
    for k in za.files:
        if k not in zb.files:
            diffs.append(f"scores.npz: {k} missing")
        elif not np.array_equal(za[k], zb[k]):
            diffs.append(f"scores.npz: {k} differs (max |Δ| {np.abs(za[k].astype(float) - zb[k]).max():.3g})")
    print(f"scores.npz: {len(za.files)} arrays compared; new only: {sorted(set(zb.files) - set(za.files))}")
    ra, rb = (json.loads((d / "results.json").read_text()) for d in (ref, new))
    if ra["utility"] != rb["utility"]:
        diffs.append("results.json: utility differs")
    n = 0
    for block in ("attacks", "fp_attacks"):
        for name, a in ra[block].items():
            b = rb[block][name]
            for i, (pa, pb) in enumerate(zip(a["per_target"], b["per_target"])):
                for k, v in pa.items():
                    if k not in ("ci",):
                        n += 1
                        if pb.get(k) != v:
                            diffs.append(f"{block}.{name}.per_target[{i}].{k}: {v} vs {pb.get(k)}")
            for k, v in a.items():
                if isinstance(v, (int, float)):
                    n += 1
                    if b.get(k) != v:
                        diffs.append(f"{block}.{name}.{k}: {v} vs {b.get(k)}")
    print(f"results.json: utility + {n} attack numbers compared; new keys per attack: "
          f"{sorted(set(rb['attacks'][next(iter(rb['attacks']))]) - set(ra['attacks'][next(iter(ra['attacks']))]))}")
    return diffs


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.same_numbers", description=__doc__.split("\n\n")[0])
    p.add_argument("--ref", default="d58b0e1")
    p.add_argument("overrides", nargs="*")
    a = p.parse_args(argv)
    overrides = a.overrides or JOB
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        subprocess.run(["git", "worktree", "add", "--detach", "-f", str(tmp / "ref"), a.ref], cwd=REPO, check=True,
                       capture_output=True)
        try:
            ref = run_job(tmp / "ref", tmp / "out_ref", overrides)
            new = run_job(REPO, tmp / "out_new", overrides)
            diffs = compare(ref, new)
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(tmp / "ref")], cwd=REPO, capture_output=True)
    print(f"job: {' '.join(overrides)}; reference {a.ref} vs working tree")
    print("identical" if not diffs else "DIFFERENT:\n  " + "\n  ".join(diffs[:40]))
    return 1 if diffs else 0


if __name__ == "__main__":
    sys.exit(main())
