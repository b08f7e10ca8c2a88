"""Multirun sweeps: 9 jobs + summary + one offline W&B run per job; launchers agree; stage=train."""
import csv
import json
import os
import subprocess
import sys

import pytest

from _main_runner import REPO, TINY, merge

# 8 models, reconstruction at 10 iterations: the budget reaches AdaRound and BRECQ, not OBC or RTN
SWEEP = merge(TINY, ["dataset.n_train=128", "n_models=8", "train.epochs=3", "budget.n_calib=24", "budget.iters=10"])


def multirun(args, tmp, name, extra_env=None):
    env = dict(os.environ, WANDB_MODE="offline", WANDB_SILENT="true", **(extra_env or {}))
    env.pop("WANDB_API_KEY", None)
    cmd = [sys.executable, "-m", "src.main", "-m", *merge(SWEEP, args), f"paths.cache_dir={tmp}/cache",
           f"hydra.sweep.dir={tmp}/{name}"]
    p = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, env=env, timeout=900)
    assert p.returncode == 0, p.stderr[-3000:]
    return tmp / name, p


def read_csv(path):
    with open(path) as f:
        rows = list(csv.DictReader(f))
    for r in rows:
        r.pop("job_dir", None)
    return sorted(rows, key=lambda r: (r["quant"], r["bits"], r["attack"]))


def test_nine_job_sweep_with_summary_and_wandb(tmp_path):
    sweep, p = multirun(["quant=adaround,brecq,obc", "bits=4,2,1.58", "logger=wandb"], tmp_path, "sweep")
    jobs = sorted(d for d in sweep.iterdir() if d.is_dir() and d.name.isdigit())
    assert len(jobs) == 9
    points = set()
    for j in jobs:
        res = json.loads((j / "results.json").read_text())
        points.add((res["job"]["quant"], res["job"]["bits"]))
        runs = list((j / "wandb").glob("offline-run-*"))
        assert len(runs) == 1, j  # exactly one W&B run per job
        blob = b"".join(f.read_bytes() for f in runs[0].glob("run-*.wandb"))
        auc = res["attacks"]["lira_online"]["auc"]
        assert b"lira_online/auc" in blob and repr(auc).encode()[:10] in blob
        assert b"test_acc" in blob
    assert points == {(q, b) for q in ("adaround", "brecq", "obc") for b in (4.0, 2.0, 1.58)}
    rows = read_csv(sweep / "summary.csv")
    # 9 jobs × 2 attacks + one FP row per attack
    assert len(rows) == 9 * 2 + 2
    assert {r["quant"] for r in rows} == {"adaround", "brecq", "obc", "fp"}
    for r in rows:
        if r["quant"] == "fp":
            continue
        job = next(j for j in jobs if json.loads((j / "results.json").read_text())["job"]["quant"] == r["quant"]
                   and abs(json.loads((j / "results.json").read_text())["job"]["bits"] - float(r["bits"])) < 1e-9)
        res = json.loads((job / "results.json").read_text())
        assert abs(float(r["auc"]) - res["attacks"][r["attack"]]["auc"]) < 1e-12
        assert abs(float(r["test_acc"]) - res["utility"]["test_acc"]) < 1e-12
    md = (sweep / "summary.md").read_text()
    assert "FP" in md and "adaround" in md and "1.58" in md
    for png in ("privacy_utility.png", "roc.png"):
        assert (sweep / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # the pool was trained once (8 models), quantized targets once per point
    assert len(list((tmp_path / "cache" / "models").glob("*.pt"))) == 8
    assert len(list((tmp_path / "cache" / "quantized").glob("*.pt"))) == 9
    # make report SWEEP=... rebuilds the same table
    os.remove(sweep / "summary.csv")
    q = subprocess.run([sys.executable, "-m", "src.report.summary", str(sweep)], cwd=REPO, capture_output=True,
                       text=True)
    assert q.returncode == 0 and read_csv(sweep / "summary.csv") == rows


@pytest.mark.parametrize("launcher", ["joblib", "submitit_local"])
def test_launchers_match_basic(tmp_path, launcher):
    pytest.importorskip("hydra_plugins.hydra_joblib_launcher" if launcher == "joblib"
                        else "hydra_plugins.hydra_submitit_launcher")
    args = ["quant=rtn,obc", "bits=2", "logger=none"]
    basic, _ = multirun(args, tmp_path, "basic")
    extra = ["hydra/launcher=joblib", "hydra.launcher.n_jobs=2"] if launcher == "joblib" else \
        ["hydra/launcher=submitit_local", "hydra.launcher.timeout_min=10"]
    other, _ = multirun(args + extra, tmp_path, launcher)
    assert read_csv(basic / "summary.csv") == read_csv(other / "summary.csv")


def test_stage_train_fills_cache_then_sweep_trains_nothing(tiny_cfg, run_job, tmp_path, monkeypatch):
    """Two stage=train jobs (model_range [0,3) and [3,8), as two cluster jobs would) fill the cache
    with the 8 pool models, and a job afterwards trains nothing (training would raise)."""
    from src import pipeline

    for rng in ("[0,3]", "[3,8]"):
        assert run_job(tiny_cfg("stage=train", f"model_range={rng}", base=SWEEP), f"t{rng[1]}")[0] is None
    assert len(list((tmp_path / "cache" / "models").glob("*.pt"))) == 8

    def refuse(*a, **k):
        raise AssertionError("pool model trained although cached")

    monkeypatch.setattr(pipeline, "_train_pool_models", refuse)
    _, job = run_job(tiny_cfg("quant=rtn", "bits=4", base=SWEEP), "run")
    assert (job / "results.json").exists()
