"""Reporting layer: multirun summary (csv/md/png), CLI, Hydra callback, W&B sink.

Fast and offline: results.json files are fabricated per the pipeline contract; the few real
W&B runs are offline into tmp_path (each spawns wandb's service: seconds, so ≤ 3 of them).
"""

from __future__ import annotations

import csv
import json
import logging
import subprocess
import sys
import time
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from src.report import summary as S
from src.report import wandb_sink as W

ATTACKS = ["lira_online", "loss"]
QUANTS = ["adaround", "rtn"]
BITS = [4.0, 1.58]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
REPO = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------------------------------
# fabricated jobs


def _metrics(seed: float) -> dict:
    """Made-up but consistent attack metrics (all in [0, 1], CIs around the point)."""
    auc = 0.55 + seed / 10
    tprs = {"tpr_at_fpr_1e-2": 0.02 + seed / 20, "tpr_at_fpr_1e-3": 0.004 + seed / 100,
            "tpr_at_fpr_1e-4": 0.0005 + seed / 1000}
    m = {"auc": round(auc, 6), "balanced_accuracy": round(auc - 0.02, 6),
         **{k: round(v, 6) for k, v in tprs.items()}, "n_nonmembers": 5000}
    m["ci"] = {k: [round(m[k] * 0.9, 6), round(m[k] * 1.1, 6)]
               for k in ("auc", "balanced_accuracy", *tprs)}
    m["per_target"] = [{k: m[k] for k in ("auc", "balanced_accuracy", *tprs)}]
    fpr = [1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0]
    m["roc"] = {"fpr": fpr, "tpr": [min(1.0, f * (1 + 10 * seed) + 1e-5) for f in fpr]}
    return m


def make_result(quant: str, bits: float, dataset="digits", model="smallcnn", fp_seed=0.5) -> dict:
    q = {"adaround": 0.1, "rtn": 0.2, "none": 0.0}[quant]
    seed = fp_seed if quant == "none" else round(q + (8 - bits) / 40, 6)
    fp_acc, acc = 0.95, round(0.95 - (0 if quant == "none" else q / 2 + (8 - bits) / 100), 6)
    return {
        "config": {
            "dataset": {"name": dataset}, "model": {"name": model}, "quant": {"name": quant},
            "bits": bits, "bitwidth": {"policy": "uniform"}, "attack": {"names": ATTACKS},
            "logger": {"backend": "wandb", "mode": "offline", "project": "ptq-mia", "entity": None},
            "experiment_name": f"{dataset}-{model}", "seed": 0,
        },
        "job": {"dataset": dataset, "model": model, "quant": quant, "bits": bits,
                "policy": "uniform", "targets": [0], "reference": "fp"},
        "utility": {"fp_test_acc": fp_acc, "test_acc": acc, "fp_train_acc": 1.0,
                    "train_acc": 0.99, "accuracy_drop": round(fp_acc - acc, 6)},
        "attacks": {a: _metrics(seed + i / 100) for i, a in enumerate(ATTACKS)},
        "fp_attacks": {a: _metrics(fp_seed + i / 100) for i, a in enumerate(ATTACKS)},
        "quant": {"layer_bits": {"conv1": bits}, "seconds": 1.5},
    }


@pytest.fixture
def sweep(tmp_path: Path) -> tuple[Path, list[dict]]:
    """A multirun dir: quant × bits jobs plus one quant=none job (5 jobs)."""
    sweep = tmp_path / "multirun" / "2025-01-02_03-04-05"
    jobs = [make_result(q, b) for q in QUANTS for b in BITS] + [make_result("none", 4.0)]
    for n, res in enumerate(jobs):
        (sweep / str(n)).mkdir(parents=True)
        (sweep / str(n) / "results.json").write_text(json.dumps(res))
    return sweep, jobs


def _num(s: str) -> float | None:
    return None if s == "" else float(s)


# ---------------------------------------------------------------------------------------
# summary


def test_summary_csv_rows_match_results(sweep, capsys):
    sweep_dir, jobs = sweep
    paths = S.write_summary(sweep_dir)
    rows = list(csv.DictReader(open(paths["csv"])))
    quantized = [j for j in jobs if j["job"]["quant"] != "none"]
    # jobs × attacks (quantized) + one FP row per (dataset, model, attack)
    assert len(rows) == len(quantized) * len(ATTACKS) + len(ATTACKS)
    fp = [r for r in rows if r["quant"] == "fp"]
    assert [r["attack"] for r in fp] == ATTACKS and rows[: len(ATTACKS)] == fp  # FP first
    for r in fp:
        assert float(r["bits"]) == 32
        ref = jobs[-1]["attacks"][r["attack"]]  # the quant=none job is the FP measurement
        assert float(r["test_acc"]) == jobs[-1]["utility"]["fp_test_acc"]
        assert float(r["auc"]) == ref["auc"]
        assert float(r["tpr_at_fpr_1e-3"]) == ref["tpr_at_fpr_1e-3"]
    for job in quantized:
        for a in ATTACKS:
            (r,) = [r for r in rows if r["quant"] == job["job"]["quant"]
                    and float(r["bits"]) == job["job"]["bits"] and r["attack"] == a]
            m = job["attacks"][a]
            assert (r["dataset"], r["model"]) == ("digits", "smallcnn")
            assert float(r["test_acc"]) == job["utility"]["test_acc"]
            assert float(r["fp_test_acc"]) == job["utility"]["fp_test_acc"]
            for k in S.METRICS:
                assert float(r[k]) == m[k]
                assert _num(r[f"{k}_ci_lo"]) == m["ci"][k][0]
                assert _num(r[f"{k}_ci_hi"]) == m["ci"][k][1]
    # methods A–Z, bits descending within a method
    order = [(r["quant"], float(r["bits"])) for r in rows[len(ATTACKS):] if r["attack"] == ATTACKS[0]]
    assert order == [("adaround", 4.0), ("adaround", 1.58), ("rtn", 4.0), ("rtn", 1.58)]
    assert "| FP | 32 |" in capsys.readouterr().out


def test_fp_rows_from_fp_attacks_without_none_job(tmp_path):
    sweep = tmp_path / "s"
    for n, (q, b) in enumerate([("rtn", 4.0), ("rtn", 2.0)]):
        (sweep / str(n)).mkdir(parents=True)
        (sweep / str(n) / "results.json").write_text(json.dumps(make_result(q, b, fp_seed=0.3)))
    rows = S.rows_from_results(S.collect(sweep))
    fp = [r for r in rows if r["quant"] == "fp"]
    assert len(rows) == 2 * 2 + 2 and len(fp) == 2
    assert fp[0]["auc"] == make_result("rtn", 4.0, fp_seed=0.3)["fp_attacks"][ATTACKS[0]]["auc"]


def test_summary_md_and_pngs(sweep):
    sweep_dir, jobs = sweep
    paths = S.write_summary(sweep_dir, quiet=True)
    md = paths["md"].read_text()
    assert md.count("### ") == len(ATTACKS)  # one table per attack, the primary one first
    first = md.split("### ")[1]
    lines = [l for l in first.splitlines() if l.startswith("| ") and not l.startswith("| method")]
    assert lines[0].startswith("| FP | 32 |")  # FP row first
    assert f"attack: {ATTACKS[0]}" in md  # primary attack = first of attack.names
    for q in QUANTS:
        for b in BITS:
            assert any(l.startswith(f"| {q} | {b:g} |") for l in lines), (q, b)
    assert len(lines) == 1 + len(QUANTS) * len(BITS)
    # TPR@0.1%FPR of adaround 4 bit, in percent
    m = jobs[0]["attacks"][ATTACKS[0]]
    assert f"{100 * m['tpr_at_fpr_1e-3']:.2f}" in lines[1] and f"{m['auc']:.4f}" in lines[1]
    for key in ("privacy_utility", "roc"):
        data = paths[key].read_bytes()
        assert len(data) > 1000 and data.startswith(PNG_MAGIC)


def test_cli_rebuilds_and_exits_2_on_empty(tmp_path, sweep):
    sweep_dir, _ = sweep
    empty = tmp_path / "empty"
    empty.mkdir()
    p = subprocess.run([sys.executable, "-m", "src.report.summary", str(empty)], cwd=REPO,
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 2
    assert p.stdout == "" and len(p.stderr.strip().splitlines()) == 1, p.stderr
    assert S.main([str(sweep_dir)]) == 0
    assert (sweep_dir / "summary.csv").is_file()


def test_callback_writes_summary_and_never_raises(sweep, caplog):
    from src.report.callback import SummaryCallback

    sweep_dir, _ = sweep
    cfg = OmegaConf.create({"hydra": {"sweep": {"dir": str(sweep_dir)}}, "logger": {"backend": "none"}})
    SummaryCallback().on_multirun_end(config=cfg)
    assert (sweep_dir / "summary.md").is_file() and (sweep_dir / "roc.png").is_file()
    # a broken config: warning, no exception
    with caplog.at_level(logging.WARNING):
        SummaryCallback().on_multirun_end(config=OmegaConf.create({}))
    assert "summary callback failed" in caplog.text


# ---------------------------------------------------------------------------------------
# W&B: mode resolution and guards (no real runs)


@pytest.fixture
def wandb_env(tmp_path, monkeypatch):
    """No credentials, no network, W&B's own files under tmp_path."""
    for var in ("WANDB_MODE", "WANDB_API_KEY", "WANDB_DISABLED", "WANDB_BASE_URL", "WANDB_DIR"):
        monkeypatch.delenv(var, raising=False)
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("NETRC", str(home / ".netrc"))
    for var in ("WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR", "WANDB_ARTIFACT_DIR"):
        monkeypatch.setenv(var, str(tmp_path / var.lower()))
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setattr(W, "_online_failed", False)
    monkeypatch.setenv("WANDB_X_DISABLE_STATS", "true")  # less work in the service process
    return home


def _cfg(mode="offline", backend="wandb", quant="rtn", bits=4.0):
    return OmegaConf.create({
        "dataset": {"name": "digits"}, "model": {"name": "smallcnn"}, "quant": {"name": quant},
        "bits": bits, "experiment_name": "digits-smallcnn", "seed": 0,
        "logger": {"backend": backend, "mode": mode, "project": "ptq-mia", "entity": None},
    })


def test_mode_resolution(wandb_env, monkeypatch):
    assert W.resolve_mode("auto") == "offline"  # no credentials
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    assert W.resolve_mode("auto") == "online"
    monkeypatch.delenv("WANDB_API_KEY")
    (wandb_env / ".netrc").write_text("machine api.wandb.ai\n  login user\n  password " + "k" * 40 + "\n")
    assert W.has_credentials() and W.resolve_mode("auto") == "online"
    assert W.resolve_mode("offline") == "offline"  # explicit logger.mode beats credentials
    monkeypatch.setenv("WANDB_MODE", "offline")
    assert W.resolve_mode("auto") == "offline"
    assert W.resolve_mode("online") == "online"
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert W.resolve_mode("auto") == "disabled" and W.resolve_mode("online") == "disabled"
    assert not W.WandbSink(_cfg("auto"), wandb_env).enabled


def test_none_logger_is_noop(wandb_env, tmp_path, monkeypatch):
    import wandb

    monkeypatch.setattr(wandb, "init", lambda *a, **k: pytest.fail("wandb.init called"))
    with W.WandbSink(_cfg(backend="none"), tmp_path / "job") as sink:
        assert sink.run is None and sink.lightning_logger() is None
        sink.log_results(make_result("rtn", 4.0))


def test_init_failure_is_one_warning(wandb_env, tmp_path, monkeypatch, caplog):
    import wandb

    def boom(*a, **k):
        raise RuntimeError("service exploded\nsecond line")

    monkeypatch.setattr(wandb, "init", boom)
    done = False
    with caplog.at_level(logging.WARNING, logger=W.__name__):
        with W.WandbSink(_cfg("offline"), tmp_path / "job") as sink:
            assert sink.run is None and sink.lightning_logger() is None
            sink.log_results(make_result("rtn", 4.0))
            (tmp_path / "job" / "results.json").write_text("{}")
            done = True
    assert done and (tmp_path / "job" / "results.json").is_file()
    warns = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warns) == 1 and "\n" not in warns[0].getMessage()
    assert "service exploded second line" in warns[0].getMessage()


class _FakeRun:
    def __init__(self):
        self.summary, self.logged, self.finished, self.dir = {}, [], False, "/tmp/x/files"

    def log(self, d):
        self.logged.append(d)

    def finish(self, exit_code=0):
        self.finished = True


def test_online_failure_falls_back_to_offline(wandb_env, tmp_path, monkeypatch, caplog):
    import wandb

    calls, run = [], _FakeRun()

    def fake_init(*a, mode=None, **k):
        calls.append((mode, k))
        if mode == "online":
            raise ConnectionError("api.wandb.ai unreachable")
        return run

    monkeypatch.setattr(wandb, "init", fake_init)
    with caplog.at_level(logging.WARNING, logger=W.__name__):
        with W.WandbSink(_cfg("online", quant="adaround", bits=1.58), tmp_path / "7") as sink:
            assert sink.mode == "offline" and sink.run is run
            sink.log_results(make_result("adaround", 1.58))
    assert [c[0] for c in calls] == ["online", "offline"]
    assert "falling back to offline" in caplog.text
    assert run.finished
    k = calls[1][1]
    assert k["name"] == "adaround-1.58bit" and k["job_type"] == "quantize-attack"
    assert k["tags"] == ["digits", "smallcnn", "adaround", "1.58bit"]
    assert k["group"] == "digits-smallcnn-" + (tmp_path.name)  # <stamp>/<n> layout w/o Hydra
    assert k["reinit"] == "finish_previous" and k["dir"] == str(tmp_path / "7")
    # the next job of this process does not wait for the network again
    calls.clear()
    with W.WandbSink(_cfg("online"), tmp_path / "8") as sink:
        assert sink.mode == "offline" and sink.run is run
    assert [c[0] for c in calls] == ["offline"]
    assert run.summary["lira_online/auc"] == make_result("adaround", 1.58)["attacks"]["lira_online"]["auc"]
    assert "fp/loss/tpr_at_fpr_1e-3_ci_hi" in run.summary


def test_exception_in_body_still_finishes_run(wandb_env, tmp_path, monkeypatch):
    import wandb

    run = _FakeRun()
    monkeypatch.setattr(wandb, "init", lambda *a, **k: run)
    with pytest.raises(ValueError):
        with W.WandbSink(_cfg("offline"), tmp_path / "job"):
            raise ValueError("job failed")
    assert run.finished


# ---------------------------------------------------------------------------------------
# W&B: real offline runs (3 in total)


def _run_files(root: Path) -> list[Path]:
    return sorted(root.glob("wandb/offline-run-*/run-*.wandb"))


def _read_run_file(path: Path, expect: bytes, timeout: float = 20.0) -> bytes:
    """wandb's service may acknowledge run.finish() before its transaction log is flushed to
    disk (it is, at the latest, when the process tears the service down): poll briefly."""
    deadline = time.monotonic() + timeout
    while True:
        data = path.read_bytes()
        if expect in data or time.monotonic() > deadline:
            return data
        time.sleep(0.2)


def test_offline_runs_one_per_job_with_summary(wandb_env, tmp_path):
    jobs = [("adaround", 4.0), ("rtn", 1.58)]
    for n, (q, b) in enumerate(jobs):  # two sinks in a row in one process
        job_dir = tmp_path / "sweep" / str(n)
        with W.WandbSink(_cfg("offline", quant=q, bits=b), job_dir) as sink:
            assert sink.mode == "offline" and sink.run is not None
            assert sink.lightning_logger().experiment is sink.run
            sink.log_results(make_result(q, b))
    ids = set()
    for n, (q, b) in enumerate(jobs):
        files = _run_files(tmp_path / "sweep" / str(n))
        assert len(files) == 1, files
        ids.add(files[0].parent.name.rsplit("-", 1)[-1])
        data = _read_run_file(files[0], b"fp/loss/auc")
        res = make_result(q, b)
        for key, val in [("lira_online/auc", res["attacks"]["lira_online"]["auc"]),
                         ("lira_online/tpr_at_fpr_1e-3", res["attacks"]["lira_online"]["tpr_at_fpr_1e-3"]),
                         ("lira_online/auc_ci_lo", res["attacks"]["lira_online"]["ci"]["auc"][0]),
                         ("fp/loss/auc", res["fp_attacks"]["loss"]["auc"]),
                         ("test_acc", res["utility"]["test_acc"])]:
            assert key.encode() in data, key
            assert repr(val).encode() in data, (key, val)
        assert f"{q}-{b:g}bit".encode() in data
    assert len(ids) == 2  # two separate runs


def test_callback_logs_summary_run(wandb_env, sweep):
    from src.report.callback import SummaryCallback

    sweep_dir, _ = sweep
    cfg = OmegaConf.create({"hydra": {"sweep": {"dir": str(sweep_dir)}}, **OmegaConf.to_container(_cfg("offline"))})
    SummaryCallback().on_multirun_end(config=cfg)
    assert (sweep_dir / "summary.csv").is_file()
    files = _run_files(sweep_dir)
    assert len(files) == 1
    data = _read_run_file(files[0], b"summary_md")
    assert b"summary_md" in data and sweep_dir.name.encode() in data  # job_type + group


def test_summary_lists_job_warnings_once_with_their_jobs(tmp_path):
    """A warning a job wrote into results.json reaches summary.md once, naming every job with it."""
    from src.report.summary import warnings_section

    w = "lira_online: per-example variance is unreliable with n_models=4 < 16"
    res = [{"job_dir": str(tmp_path / "0"), "warnings": [w]}, {"job_dir": str(tmp_path / "1"), "warnings": [w]},
           {"job_dir": str(tmp_path / "2")}]
    text = warnings_section(res)
    assert text.count(w) == 1 and "(jobs: 0, 1)" in text and "### Warnings" in text
    assert warnings_section(res[2:]) == ""
