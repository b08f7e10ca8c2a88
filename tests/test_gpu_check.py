"""benchmarks/gpu_check.py at --tiny size on CPU, as a user runs it: every section reports figures
(or a one-line reason), the JSON is consistent with itself, and the table is printed.

Slow (about 1.5 min on 2 cores): it trains 8 + 2 + 2 small ResNets and runs the 9 quantize-and-attack
jobs of the mini protocol. The checks are on structure and on figures derived from other reported
figures, never on speeds or accuracies of one machine: tiny runs check that the paths work.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SECTIONS = ("bench", "fast_vs_plain", "mini_protocol", "quant_seconds", "scoring")


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu_check") / "gc.json"
    env = {"WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    p = subprocess.run([sys.executable, "-m", "benchmarks.gpu_check", "--device", "cpu", "--tiny", "--out", str(out)],
                       cwd=REPO, capture_output=True, text=True, timeout=900, env={**os.environ, **env})
    assert p.returncode == 0, p.stderr[-3000:]
    return json.loads(out.read_text()), p.stdout


@pytest.mark.slow
def test_every_section_has_figures(tiny_run):
    js, _ = tiny_run
    assert js["device"] == "cpu" and js["tiny"] is True
    assert set(js["sections"]) == set(SECTIONS)
    for name in SECTIONS:
        sec = js["sections"][name]
        assert "error" not in sec, f"{name}: {sec.get('error')}"
        assert sec["section_seconds"] > 0


@pytest.mark.slow
def test_bench_section_figures_are_derived(tiny_run):
    """ratio = fast / reference and the projection = 65 × 25,000 × 100 images at the fast rate, exactly."""
    b = tiny_run[0]["sections"]["bench"]
    a, f = b["reference"]["images_per_s"], b["fast"]["images_per_s"]
    assert a > 0 and f > 0
    assert b["ratio"] == f / a
    assert b["projected_protocol_s"] == 65 * 25_000 * 100 / f


@pytest.mark.slow
def test_fast_vs_plain_section(tiny_run):
    """Both paths trained the same K models; the difference is the mean of per-model differences."""
    s = tiny_run[0]["sections"]["fast_vs_plain"]
    k = s["models"]
    assert len(s["fast"]["test_acc"]) == k and len(s["plain"]["test_acc"]) == k == s["compared_models"]
    for path in ("fast", "plain"):
        assert all(0.0 <= v <= 1.0 for v in s[path]["test_acc"])
        assert s[path]["images_per_s"] == pytest.approx(s[path]["images"] / s[path]["seconds"])
    diff = 100 * sum(f - p for f, p in zip(s["fast"]["test_acc"], s["plain"]["test_acc"])) / k
    assert s["acc_diff_points"] == pytest.approx(diff, abs=1e-9)


@pytest.mark.slow
def test_mini_protocol_table(tiny_run):
    """Every method × bits job finished, with utility and both reference kinds for every attack."""
    s = tiny_run[0]["sections"]["mini_protocol"]
    plan = {(m, b) for m in s["methods"] for b in (4, 2, 1.58)}
    assert {"adaround", "brecq", "obc"} <= set(s["methods"])
    assert {(j["quant"], j["bits"]) for j in s["jobs"]} == plan
    assert s["jobs_done"] == f"{len(plan)} of {len(plan)}"
    for j in s["jobs"]:
        assert "error" not in j, j
        assert 0.0 <= j["test_acc"] <= 1.0 and j["fp_test_acc"] == s["fp"]["test_acc"]
        assert set(j["attacks"]) == set(j["attacks_matched"]) == set(s["fp"]["attacks"])
        assert "lira_online" in j["attacks"]
        for block in (j["attacks"], j["attacks_matched"]):
            for m in block.values():
                assert 0.0 <= m["auc"] <= 1.0 and 0.0 <= m["tpr_at_fpr_1e-2"] <= 1.0
        assert j["quant_seconds_per_model"] > 0 and j["seconds"] > 0
    assert s["pool_seconds"] > 0 and s["train_path"] == "plain"


@pytest.mark.slow
def test_quant_seconds_projection(tiny_run):
    """The 20k-iteration projection is the linear extrapolation of the two timed budgets; OBC's
    projection is reported next to a full measured run; no GPU memory on CPU."""
    s = tiny_run[0]["sections"]["quant_seconds"]
    for m in ("adaround", "brecq"):
        v = s["methods"][m]
        assert v["projected_seconds_20k"] == pytest.approx(v["seconds"] + v["seconds_per_iter"] * (20_000 - v["iters"]))
        assert v["peak_gib"] is None
    obc = s["methods"]["obc"]
    assert obc["projected_seconds"] > 0 and obc["measured_seconds"] > 0 and obc["timed_runs"]
    assert obc["projected_seconds"] >= obc["hessian_seconds"]


@pytest.mark.slow
def test_scoring_and_targets(tiny_run):
    js, _ = tiny_run
    sc = js["sections"]["scoring"]
    assert sc["images_per_s"] == sc["models"] * sc["examples"] * sc["queries"] / sc["seconds"]
    keys = {t["target"] for t in js["targets"]}
    assert keys == {"trainer_ratio", "protocol_h", "quant_20k_s", "scoring_img_s", "fast_plain_pts"}
    assert all(t["pass"] is None for t in js["targets"])        # pass/fail is judged on CUDA only
    assert all(t["value"] is not None for t in js["targets"])


@pytest.mark.slow
def test_table_printed(tiny_run):
    _, out = tiny_run
    for needle in ("reference loop", "fast trainer [eager]", "ratio", "projected paper protocol",
                   "fast path", "plain path", "4 adaround", "4 obc", "5 scoring", "3 mini protocol", "lira_online"):
        assert needle in out, needle
    assert "PASS" not in out and "FAIL" not in out
    assert "written" in out


def test_bad_sections_one_line_error():
    p = subprocess.run([sys.executable, "-m", "benchmarks.gpu_check", "--device", "cpu", "--tiny", "--sections", "7"],
                       cwd=REPO, capture_output=True, text=True, timeout=120)
    lines = [ln for ln in p.stderr.splitlines() if ln.strip()]
    assert p.returncode == 2 and len(lines) == 1
    assert "--sections 7" in lines[0] and "1..5" in lines[0]


def test_targets_pass_fail_only_on_cuda():
    """The verdicts follow each target's direction; None everywhere on CPU."""
    from benchmarks.gpu_check import _targets

    res = {"sections": {"bench": {"ratio": 12.0, "projected_protocol_h": 1.5},
                        "quant_seconds": {"methods": {"adaround": {"projected_seconds_20k": 200.0},
                                                      "obc": {"projected_seconds": 400.0}}},
                        "scoring": {"images_per_s": 150_000.0},
                        "fast_vs_plain": {"acc_diff_points": -0.3}}}
    got = {(t["target"], t["what"]): t["pass"] for t in _targets(res, cuda=True)}
    assert got == {("trainer_ratio", ""): True, ("protocol_h", ""): False, ("quant_20k_s", "adaround"): True,
                   ("quant_20k_s", "obc"): False, ("scoring_img_s", ""): False, ("fast_plain_pts", ""): True}
    assert all(t["pass"] is None for t in _targets(res, cuda=False))


def test_failed_section_is_recorded_and_the_next_runs(tmp_path, monkeypatch, capsys):
    """A section that raises leaves its one-line reason in the JSON and the table; the next one runs."""
    from benchmarks import gpu_check as G

    def broken(ctx, sec, deadline):
        sec["partial"] = 1
        raise RuntimeError("boom\nsecond line")

    def scoring(ctx, sec, deadline):
        sec.update(models=2, examples=10, queries=2, seconds=0.5, images_per_s=80.0, reference_images_per_s=40.0)

    monkeypatch.setitem(G.RUNNERS, 1, broken)
    monkeypatch.setitem(G.RUNNERS, 5, scoring)
    out = tmp_path / "gc.json"
    G.run("cpu", True, None, str(out), sections={1, 5}, workdir=str(tmp_path / "wd"))
    js = json.loads(out.read_text())
    assert list(js["sections"]) == ["bench", "scoring"]                  # run order 1, 5
    assert js["sections"]["bench"]["error"] == "RuntimeError: boom" and js["sections"]["bench"]["partial"] == 1
    assert "error" not in js["sections"]["scoring"] and js["sections"]["scoring"]["images_per_s"] == 80.0
    table = capsys.readouterr().out
    assert "RuntimeError: boom" in table and "second line" not in table and "5 scoring" in table
    assert not (tmp_path / "wd").exists()                               # the work dir is removed
