"""What a W&B user finds after `make sync`: read back from the offline run files of a tiny sweep.

A 4-job multirun (``quant=rtn,obc bits=4,2``, W&B offline) and one ``stage=train`` run on the fast
path write their ``run-*.wandb`` transaction logs; this file decodes them (LevelDB-log framing of
``wandb_internal_pb2.Record`` protobufs, the format ``wandb sync`` uploads) and checks the
dashboard's ingredients: the summary run's native charts over bits and its sweep-only config, one
``results`` artifact and the ``pool`` reference artifact per job, per-model pool curves with their
step metrics, no constant summary keys, and the Report spec (built offline). The numbers in the
charts are compared with each job's own results.json (two outputs of the pipeline, no constants).
"""
from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from _main_runner import REPO, TINY, merge

DASH = merge(TINY, ["dataset.n_train=128", "budget.n_calib=24"])
GROUP = "dash-test"


# ----------------------------------------------------------------------------------------- reading
def records(path: Path):
    """The protobuf records of a ``run-*.wandb`` file: a 7-byte header (``:W&B``, magic, version),
    then 32 KiB blocks of chunks (CRC32C 4 B, length 2 B, type 1 B: full/first/middle/last)."""
    from wandb.proto import wandb_internal_pb2 as pb

    data, block = path.read_bytes(), 32768
    assert data[:4] == b":W&B", path
    pos, buf = 7, b""
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a chunk header is padding
            pos += block - pos % block
            continue
        _crc, n, kind = struct.unpack("<IHB", data[pos:pos + 7])
        chunk, pos = data[pos + 7:pos + 7 + n], pos + 7 + n
        if kind == 1:
            yield pb.Record.FromString(chunk)
        elif kind == 2:
            buf = chunk
        elif kind == 3:
            buf += chunk
        elif kind == 4:
            yield pb.Record.FromString(buf + chunk)


def _key(item) -> str:
    return "/".join(item.nested_key) if item.nested_key else item.key


class Run:
    """The parts of one offline run the checks need."""

    def __init__(self, run_dir: Path):
        files = sorted(run_dir.glob("run-*.wandb"))
        assert len(files) == 1, run_dir
        self.dir = run_dir
        self.config, self.visualize, self.summary = {}, {}, {}
        self.metrics, self.history, self.artifacts = {}, [], []
        for r in records(files[0]):
            kind = r.WhichOneof("record_type")
            if kind == "run":
                self.job_type, self.group, self.name = r.run.job_type, r.run.run_group, r.run.display_name
                self.tags, self.notes = list(r.run.tags), r.run.notes
                self.config = {u.key: json.loads(u.value_json) for u in r.run.config.update}
            elif kind == "config":
                for u in r.config.update:
                    if list(u.nested_key[:2]) == ["_wandb", "visualize"]:
                        self.visualize["/".join(u.nested_key[2:])] = json.loads(u.value_json)
            elif kind == "metric":
                self.metrics[r.metric.name] = r.metric.step_metric
            elif kind == "history":
                self.history.append({_key(i): json.loads(i.value_json) for i in r.history.item})
            elif kind == "summary":
                self.summary.update({_key(u): json.loads(u.value_json) for u in r.summary.update})
            elif kind == "artifact":
                self.artifacts.append(r.artifact)

    def artifacts_of(self, kind: str):
        return [a for a in self.artifacts if a.type == kind]

    def table(self, key: str) -> dict:
        """A logged wandb.Table (``<key>`` as logged, e.g. ``charts/x_table``) from the run's files."""
        found = sorted((self.dir / "files" / "media" / "table").glob(f"{key}_*.table.json"))
        assert len(found) == 1, (key, found)
        return json.loads(found[0].read_text())


def _env(tmp: Path) -> dict:
    env = dict(os.environ, WANDB_MODE="offline", WANDB_SILENT="true", WANDB_X_DISABLE_STATS="true",
               OMP_NUM_THREADS="1", WANDB_DATA_DIR=str(tmp / "wandb-data"), WANDB_CACHE_DIR=str(tmp / "wandb-cache"),
               WANDB_CONFIG_DIR=str(tmp / "wandb-config"), WANDB_ARTIFACT_DIR=str(tmp / "wandb-artifacts"))
    for var in ("WANDB_API_KEY", "WANDB_DISABLED", "WANDB_DIR"):
        env.pop(var, None)
    return env


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("dash")
    cmd = [sys.executable, "-m", "src.main", "-m", *merge(DASH, ["logger=wandb"]), "quant=rtn,obc", "bits=4,2",
           f"logger.group={GROUP}", "logger.tags=[tiny,dash]", "logger.notes=tiny dashboard sweep",
           f"paths.cache_dir={tmp}/cache", f"hydra.sweep.dir={tmp}/sweep"]
    p = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, env=_env(tmp), timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    sweep_dir = tmp / "sweep"
    jobs = sorted((d for d in sweep_dir.iterdir() if d.name.isdigit()), key=lambda d: int(d.name))
    results = {int(d.name): json.loads((d / "results.json").read_text()) for d in jobs}
    runs = {}
    for d in jobs:
        found = list((d / "wandb").glob("offline-run-*"))
        assert len(found) == 1, d
        runs[int(d.name)] = Run(found[0])
    found = list((sweep_dir / "wandb").glob("offline-run-*"))
    assert len(found) == 1
    return {"dir": sweep_dir, "tmp": tmp, "results": results, "runs": runs, "summary": Run(found[0])}


# ---------------------------------------------------------------------------------------- summary
def test_summary_run_config_is_the_sweep_not_a_job(sweep):
    s = sweep["summary"]
    assert s.job_type == "summary" and s.group == GROUP
    assert set(s.config) == {"_wandb", "sweep"}  # no quant/bits/dataset/train/... of one job
    cfg = s.config["sweep"]
    assert "quant=rtn,obc" in cfg["overrides"] and "bits=4,2" in cfg["overrides"]
    assert cfg["n_jobs"] == 4
    points = {(j["quant"], j["bits"]) for j in cfg["jobs"]}
    assert points == {(q, b) for q in ("rtn", "obc") for b in (4.0, 2.0)}
    for j in cfg["jobs"]:
        assert f"quant={j['quant']}" in j["overrides"]
    # every job run is in the same group, with the tags and notes of the command line
    for run in sweep["runs"].values():
        assert run.job_type == "quantize-attack" and run.group == GROUP
        assert {"tiny", "dash"} <= set(run.tags) and run.notes == "tiny dashboard sweep"


def test_summary_run_charts_over_bits_one_line_per_quantizer(sweep):
    s, results = sweep["summary"], list(sweep["results"].values())
    attacks = list(results[0]["attacks"])
    assert len(attacks) >= 1
    expected = {"charts/test_acc_vs_bits": ("test_acc", None)}
    for a in attacks:
        expected[f"charts/{a}/auc_vs_bits"] = ("auc", a)
        expected[f"charts/{a}/tpr_at_fpr_1e-3_vs_bits"] = ("tpr_at_fpr_1e-3", a)
    for key, (metric, attack) in expected.items():
        chart = s.visualize[key]["panel_config"]
        assert chart["panelDefId"] == "wandb/line/v0"
        fields = chart["fieldSettings"]
        assert fields["x"] == "bits" and fields["stroke"] == "quantizer"
        table = s.table(f"{key}_table")
        cols = table["columns"]
        rows = [dict(zip(cols, r)) for r in table["data"]]
        for res in results:  # each job's number is on its quantizer's line at its bits
            q, b = res["job"]["quant"], res["job"]["bits"]
            want = res["utility"]["test_acc"] if attack is None else res["attacks"][attack][metric]
            hit = [r for r in rows if r["quantizer"] == q and r["bits"] == b]
            assert len(hit) == 1 and abs(hit[0][fields["y"]] - want) < 1e-12, (key, q, b)
        # the full-precision target: a flat reference line over the same bits
        fp = [r for r in rows if r["quantizer"] == "FP (32-bit)"]
        want = results[0]["utility"]["fp_test_acc"] if attack is None else results[0]["fp_attacks"][attack][metric]
        assert sorted(r["bits"] for r in fp) == [2.0, 4.0]
        assert all(abs(r[fields["y"]] - want) < 1e-12 for r in fp)
        assert {r["quantizer"] for r in rows} == {"rtn", "obc", "FP (32-bit)"}
    for a in attacks:  # privacy–utility: TPR@0.1%FPR vs test accuracy, coloured by quantizer
        chart = s.visualize[f"charts/{a}/privacy_utility"]["panel_config"]
        assert chart["fieldSettings"]["x"] == "test_acc" and chart["fieldSettings"]["stroke"] == "quantizer"
        rows = [dict(zip(t["columns"], r)) for t in [s.table(f"charts/{a}/privacy_utility_table")] for r in t["data"]]
        assert len([r for r in rows if r["quantizer"] in ("rtn", "obc")]) == 4
    assert "summary" in {k.split("/")[0] for k in s.summary}  # the sweep table is still there


# --------------------------------------------------------------------------------------- job runs
def test_one_results_artifact_per_job_and_the_pool_referenced(sweep):
    pool_names = set()
    for n, run in sweep["runs"].items():
        res = run.artifacts_of("results")
        assert len(res) == 1, n
        paths = {c.path for c in res[0].manifest.contents}
        assert paths == {"results.json", "scores.npz", ".hydra/config.yaml", ".hydra/overrides.yaml"}
        pools = run.artifacts_of("pool")
        assert len(pools) == 1, n
        refs = {c.path: c.ref for c in pools[0].manifest.contents}
        keys = sweep["results"][n]["pool"]["model_keys"]
        assert len(keys) == 4 and set(refs) == {f"models/{k}.json" for k in keys}
        for k in keys:  # a reference to the cache manifest, not an upload of the weights
            ref = Path(refs[f"models/{k}.json"].removeprefix("file://"))
            assert ref.is_file() and ref.parent == sweep["tmp"] / "cache" / "models"
            assert json.loads(ref.read_text())["key"] == k
        pool_names.add((pools[0].name, pools[0].digest))
    assert len(pool_names) == 1  # all jobs: the same pool artifact, same content (one version)


def test_pool_curves_per_model_with_step_metrics_in_the_training_run(sweep):
    trained = [n for n, r in sweep["runs"].items() if any(k.startswith("pool/") for k in r.metrics)]
    assert trained == [0]  # job 0 trained the pool; the others loaded it from the cache
    run = sweep["runs"][0]
    for m in range(4):
        p = f"pool/m{m:02d}"
        assert run.metrics[f"{p}/train_loss"] == f"{p}/epoch"
        assert run.metrics[f"{p}/train_acc"] == f"{p}/epoch"
        rows = [h for h in run.history if f"{p}/train_loss" in h]
        assert [h[f"{p}/epoch"] for h in rows] == [1, 2]  # train.epochs=2, one point per epoch
        assert all(0.0 <= h[f"{p}/train_acc"] <= 1.0 and h[f"{p}/train_loss"] > 0 for h in rows)
    assert not any(k.startswith("train/") for h in run.history for k in h)  # no shared train/loss key


def test_summary_keys_have_no_constant_cis(sweep):
    for run in sweep["runs"].values():
        keys = set(run.summary)
        assert "lira_online/auc" in keys and "lira_online/auc_ci_lo" in keys
        assert "lira_online/n_members" in keys
        assert not [k for k in keys if k.endswith(("_ci_lo", "_ci_hi"))
                    and ("/n_members" in k or "/n_nonmembers" in k or "/fp_at_fpr_" in k)]


def test_fast_path_logs_the_same_curve_keys(tmp_path):
    cmd = [sys.executable, "-m", "src.main", *merge(DASH, ["logger=wandb", "train.fast=true", "train.models_per_step=2",
                                                           "stage=train"]),
           f"paths.cache_dir={tmp_path}/cache", f"hydra.run.dir={tmp_path}/run"]
    p = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, env=_env(tmp_path), timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    (run_dir,) = (tmp_path / "run" / "wandb").glob("offline-run-*")
    run = Run(run_dir)
    for m in range(4):
        pref = f"pool/m{m:02d}"
        assert run.metrics[f"{pref}/train_loss"] == f"{pref}/epoch" == run.metrics[f"{pref}/train_acc"]
        rows = [h for h in run.history if f"{pref}/train_loss" in h]
        assert [h[f"{pref}/epoch"] for h in rows] == [1, 2]
        assert all(0.0 <= h[f"{pref}/train_acc"] <= 1.0 for h in rows)


# ----------------------------------------------------------------------------------------- report
def test_report_spec_built_offline(sweep):
    from src.report.dashboard import chart_specs
    from src.report.summary import collect, rows_from_results
    from src.report.wandb_report import build_report, report_spec

    report = build_report(sweep["dir"], entity="someone")
    spec = report_spec(report)  # no network: the project-id lookup is answered locally
    assert spec["project"] == {"name": "ptq-mia", "entityName": "someone"}
    grids = [b for b in spec["spec"]["blocks"] if b.get("type") == "panel-grid"]
    panels = [(g, p) for g in grids for p in g["metadata"]["panelBankSectionConfig"]["panels"]]
    vega = {}
    for g, p in panels:
        if p["viewType"] != "Vega2":
            continue
        q = p["config"]["userQuery"]["queryFields"][0]["fields"]
        key = next(f["args"][0]["value"] for f in q if f["name"] == "summaryTable")
        vega[key] = (p["config"], g["metadata"]["runSets"][0]["filters"]["filters"])
    want = {s.table_key for s in chart_specs(rows_from_results(collect(sweep["dir"])))}
    assert set(vega) == want and "charts/test_acc_vs_bits_table" in want
    for cfg, filters in vega.values():
        assert cfg["panelDefId"] == "wandb/line/v0" and cfg["fieldSettings"]["stroke"] == "quantizer"
        got = {(f["key"]["name"], f["value"]) for f in filters}
        assert got == {("group", GROUP), ("jobType", "summary")}
    scatter = [p for _, p in panels if p["viewType"] == "Scatter Plot"]
    attacks = list(sweep["results"][0]["attacks"])
    assert len(scatter) == len(attacks)
    # offline CLI: one line, nothing saved
    env = _env(sweep["tmp"])
    env.update(HOME=str(sweep["tmp"]), NETRC=str(sweep["tmp"] / "no-netrc"))
    p = subprocess.run([sys.executable, "-m", "src.report.wandb_report", str(sweep["dir"])], cwd=REPO, env=env,
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0 and len(p.stdout.strip().splitlines()) == 1, p.stdout + p.stderr
    assert "wandb login" in p.stdout and "make sync" in p.stdout


# -------------------------------------------------------------------------- logger options, metrics
def test_logger_name_group_tags_notes(tmp_path, monkeypatch):
    import wandb
    from omegaconf import OmegaConf

    from src.report import wandb_sink as W

    seen = {}

    class FakeRun:
        summary, dir, id, name = {}, str(tmp_path), "abc", "x"

        def finish(self, exit_code=0):
            pass

    monkeypatch.setattr(wandb, "init", lambda **k: seen.update(k) or FakeRun())
    cfg = OmegaConf.create({"dataset": {"name": "digits"}, "model": {"name": "smallcnn"}, "quant": {"name": "rtn"},
                            "bits": 4, "logger": {"backend": "wandb", "mode": "offline", "name": "my-run",
                                                  "group": "g1", "tags": ["a", "b"], "notes": "why"}})
    with W.WandbSink(cfg, tmp_path / "0"):
        pass
    assert seen["name"] == "my-run" and seen["group"] == "g1" and seen["notes"] == "why"
    assert seen["tags"][-2:] == ["a", "b"] and "rtn" in seen["tags"]


def test_auroc_matches_torchmetrics_binary_auroc():
    """Cross-check of the exact-ROC AUC against torchmetrics' BinaryAUROC (thresholds=None: exact).
    The project keeps its own ROC code because the sort-once bootstrap re-weights examples (torchmetrics
    has no sample-weighted ROC) and TPR@FPR is a conservative step read on the exact points. Scores
    are rounded to 2 decimals so ties occur; both compute the trapezoid area of the same tie-grouped
    ROC, so they agree to float32 rounding of a number ≤ 1 (margin 1e-6)."""
    from torchmetrics.classification import BinaryAUROC

    from src.attacks.metrics import auc, roc_curve

    rng = np.random.default_rng(0)
    for n, shift in ((200, 0.0), (1000, 0.3), (5000, 1.0)):
        y = rng.random(n) < 0.5
        s = np.round(1 / (1 + np.exp(-(rng.normal(size=n) + shift * y))), 2)
        ours = auc(*roc_curve(s, y))
        theirs = float(BinaryAUROC(thresholds=None)(torch.tensor(s), torch.tensor(y.astype(np.int64))))
        assert abs(ours - theirs) < 1e-6, (n, ours, theirs)


def test_evaluate_accuracy_matches_torchmetrics():
    """evaluate_accuracy (exact fraction, stored in the cache) vs MulticlassAccuracy(average='micro')
    on the same predictions: equal up to float32 rounding (1e-6)."""
    from torchmetrics.classification import MulticlassAccuracy

    from src.data import normalize
    from src.training.pool import evaluate_accuracy

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 5)).eval()
    x = torch.randint(0, 256, (300, 3, 8, 8), dtype=torch.uint8)
    y = torch.randint(0, 5, (300,))
    mean, std = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)
    ours = evaluate_accuracy(model, x, y, mean, std, batch_size=64)
    with torch.no_grad():
        theirs = float(MulticlassAccuracy(num_classes=5, average="micro")(model(normalize(x, mean, std)), y))
    assert 0.0 < ours < 1.0 and abs(ours - theirs) < 1e-6


def test_curve_prefix():
    from src.training.module import curve_prefix

    assert curve_prefix("pool model 3", 16) == "pool/m03"
    assert curve_prefix("pool model 7", 200) == "pool/m007"
    assert curve_prefix("model", None) == "train/model"


def test_pool_is_an_input_online_when_loaded_from_the_cache(tmp_path, monkeypatch):
    """Online, a job that trained no pool model declares the pool artifact as an input
    (use_artifact); a job that trained some logs it as an output. No network: wandb.init is faked."""
    import wandb
    from omegaconf import OmegaConf

    from src.report import wandb_sink as W

    class FakeRun:
        summary, dir, id, name = {}, str(tmp_path), "abc123", "rtn-4bit"

        def __init__(self):
            self.used, self.logged, self.defined, self.rows = [], [], {}, []

        def log(self, d):
            self.rows.append(d)

        def define_metric(self, key, step_metric=None):
            self.defined[key] = step_metric

        def use_artifact(self, a):
            self.used.append(a)

        def log_artifact(self, a):
            self.logged.append(a)

        def finish(self, exit_code=0):
            pass

    keys = ["k0", "k1"]
    (tmp_path / "cache" / "models").mkdir(parents=True)
    for k in keys:
        (tmp_path / "cache" / "models" / f"{k}.json").write_text(json.dumps({"key": k}))
    job = tmp_path / "job"
    (job / ".hydra").mkdir(parents=True)
    for f in ("results.json", "scores.npz", ".hydra/config.yaml", ".hydra/overrides.yaml"):
        (job / f).write_text("x")
    results = {"job": {"dataset": "digits", "model": "smallcnn", "quant": "rtn", "bits": 4.0},
               "utility": {"test_acc": 0.5}, "attacks": {}, "pool": {"data": "d", "model_keys": keys}}
    cfg = OmegaConf.create({"quant": {"name": "rtn"}, "bits": 4, "paths": {"cache_dir": str(tmp_path / "cache")},
                            "logger": {"backend": "wandb", "mode": "online"}})
    monkeypatch.delenv("WANDB_MODE", raising=False)
    for trains in (False, True):
        run = FakeRun()
        monkeypatch.setattr(wandb, "init", lambda run=run, **k: run)
        with W.WandbSink(cfg, job) as sink:
            assert sink.mode == "online"
            if trains:
                sink.lightning_logger().log_metrics({"pool/m01/train_loss": 2.0, "epoch": 0}, step=7)
            sink.log_results(results)
        pools = [a for a in run.used + run.logged if a.type == "pool"]
        assert len(pools) == 1 and (pools[0] in run.used) != trains
        assert {e.ref for e in pools[0].manifest.entries.values()} == {
            (tmp_path / "cache" / "models" / f"{k}.json").as_uri() for k in keys}
        (res,) = [a for a in run.logged if a.type == "results"]
        assert set(res.manifest.entries) == set(W.RESULT_FILES)
        if trains:
            assert run.defined == {"pool/m01/epoch": None, "pool/m01/train_loss": "pool/m01/epoch"}
            assert run.rows[0] == {"pool/m01/epoch": 1, "pool/m01/train_loss": 2.0}
