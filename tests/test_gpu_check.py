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
SECTIONS = ("bench", "fast_vs_plain", "mini_protocol", "quant_seconds", "scoring", "new_paths")


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu_check") / "out"
    env = {"WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    p = subprocess.run([sys.executable, "-m", "benchmarks.gpu_check", "--device", "cpu", "--tiny", "--out", str(out)],
                       cwd=REPO, capture_output=True, text=True, timeout=900, env={**os.environ, **env})
    assert p.returncode == 0, p.stderr[-3000:]
    return json.loads((out / "gpu_check.json").read_text()), p.stdout, out


@pytest.mark.slow
def test_every_section_has_figures(tiny_run):
    js = tiny_run[0]
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
    assert b["fast"]["preset"] == "eager"          # conf/train/paper.yaml: K models per step, no graphs
    assert b["projected_protocol_s"] == 65 * 25_000 * 100 / b["fast"]["variants"]["eager"]["images_per_s"]


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
    js = tiny_run[0]
    sc = js["sections"]["scoring"]
    assert sc["images_per_s"] == sc["models"] * sc["examples"] * sc["queries"] / sc["seconds"]
    keys = {t["target"] for t in js["targets"]}
    assert keys == {"trainer_ratio", "protocol_h", "quant_20k_s", "scoring_img_s", "fast_plain_pts"}
    assert all(t["pass"] is None for t in js["targets"])        # pass/fail is judged on CUDA only
    assert all(t["value"] is not None for t in js["targets"])


@pytest.mark.slow
def test_table_printed(tiny_run):
    _, out, _ = tiny_run
    for needle in ("reference loop", "fast trainer [eager]", "ratio", "projected paper protocol",
                   "fast path", "plain path", "4 adaround", "4 obc", "5 scoring", "3 mini protocol", "lira_online"):
        assert needle in out, needle
    assert "PASS" not in out and "FAIL" not in out
    assert "written" in out


@pytest.mark.slow
def test_everything_under_out_and_rows_before_the_final_table(tiny_run):
    """Only the JSON and the table stay under --out (the work dir inside it is removed); each row was
    printed when measured, before the final table repeats it."""
    js, stdout, out = tiny_run
    assert sorted(p.name for p in out.iterdir()) == ["gpu_check.json", "gpu_check.txt"]
    final = (out / "gpu_check.txt").read_text()
    assert "3 mini protocol" in final
    row = next(ln for ln in stdout.splitlines() if ln.startswith("1 reference loop"))
    assert stdout.index(row) < stdout.index("4 obc") < stdout.rindex(row)


def test_bad_sections_one_line_error():
    p = subprocess.run([sys.executable, "-m", "benchmarks.gpu_check", "--device", "cpu", "--tiny", "--sections", "7"],
                       cwd=REPO, capture_output=True, text=True, timeout=120)
    lines = [ln for ln in p.stderr.splitlines() if ln.strip()]
    assert p.returncode == 2 and len(lines) == 1
    assert "--sections 7" in lines[0] and "1..6" in lines[0]


def test_targets_pass_fail_only_on_cuda():
    """The verdicts follow each target's direction; None everywhere on CPU."""
    from benchmarks.gpu_check import _targets

    res = {"sections": {"bench": {"ratio": 12.0, "projected_protocol_h": 1.5},
                        "quant_seconds": {"methods": {"adaround": {"projected_seconds_20k": 200.0},
                                                      "obc": {"projected_seconds": 400.0}}},
                        "scoring": {"images_per_s": 150_000.0},
                        "fast_vs_plain": {"acc_diff_points": -0.3, "equivalence": {"pass": True}}}}
    got = {(t["target"], t["what"]): t["pass"] for t in _targets(res, cuda=True)}
    assert got == {("trainer_ratio", ""): True, ("protocol_h", ""): False, ("quant_20k_s", "adaround"): True,
                   ("quant_20k_s", "obc"): False, ("scoring_img_s", ""): False, ("fast_plain_pts", ""): True}
    res["sections"]["fast_vs_plain"]["equivalence"]["pass"] = None     # a small mean alone decides nothing
    assert [t["pass"] for t in _targets(res, cuda=True) if t["target"] == "fast_plain_pts"] == [None]
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
    out = tmp_path / "out"
    G.run("cpu", True, None, str(out), sections={1, 5}, workdir=str(tmp_path / "wd"))
    js = json.loads((out / "gpu_check.json").read_text())
    assert list(js["sections"]) == ["bench", "scoring"]                  # run order 1, 5
    assert js["sections"]["bench"]["error"] == "RuntimeError: boom" and js["sections"]["bench"]["partial"] == 1
    assert "error" not in js["sections"]["scoring"] and js["sections"]["scoring"]["images_per_s"] == 80.0
    table = capsys.readouterr().out
    assert "RuntimeError: boom" in table and "second line" not in table and "5 scoring" in table
    assert not (tmp_path / "wd").exists()                               # the work dir is removed


def test_quantizers_timed_at_the_paper_budget():
    """The timings use the paper preset's budget (conf/quant/*.yaml under experiment=paper_cifar10:
    the OBC paper's 2,048 calibration images, 1,024 and 20k iterations for AdaRound / BRECQ), not the
    embedded default's 512 images / 500 iterations."""
    from benchmarks import bench
    from benchmarks.gpu_check import _quant_yaml

    assert int(_quant_yaml("obc").n_calib) == 2048
    for m in ("adaround", "brecq"):
        q = bench.paper_quant_config(m)
        assert (int(q.n_calib), int(q.iters)) == (1024, 20_000)


def test_protocol_projected_at_the_preset_variant():
    """The projection uses the variant the preset trains with (K=4, no graphs); a faster variant is
    shown beside it with the settings that select it."""
    from benchmarks import bench

    total = 65 * 25_000 * 100
    v = {"batch": 128, "warmup_s": 1.0}
    res = {"k": 4, "reference": {"images_per_s": 100.0, "num_workers": 4},
           "fast": {"variants": {"eager": {"images_per_s": 2000.0, "models_per_step": 4, **v},
                                 "graphs": {"images_per_s": 3000.0, "models_per_step": 4, **v},
                                 "graphs_k8": {"images_per_s": 5000.0, "models_per_step": 8, **v}}}}
    bench.summarise(res)
    assert res["fast"]["preset"] == "eager" and res["fast"]["best"] == "graphs_k8"
    assert res["projected_protocol_s"] == total / 2000.0
    assert res["projected_protocol_best_h"] == total / 5000.0 / 3600
    assert res["best_settings"] == "train.cuda_graphs=true train.models_per_step=8"
    assert res["ratio"] == 5000.0 / 100.0
    table = bench.format_table({**res, "device": "cuda", "size": "cifar", "model": "resnet18", "n_train": 1,
                                "torch": "x"})
    assert "if you set train.cuda_graphs=true train.models_per_step=8" in table
    res["fast"]["variants"].pop("eager")                   # the preset's variant failed: no projection
    bench.summarise(res)
    assert "projected_protocol_s" not in res and res["projected_protocol_best_h"] == total / 5000.0 / 3600


def test_equivalence_test_decides_with_the_standard_error():
    """TOST at ±0.5 points: a small mean with a wide interval decides nothing; a tight interval
    inside the margin is equivalent; one wholly outside is different."""
    from benchmarks.gpu_check import equivalence

    wide = equivalence([3.1, -2.4, 1.0, -1.5])             # mean 0.05, SE ≈ 1.2 (the size of a short run)
    assert abs(wide["mean"]) < 0.5 and wide["pass"] is None and wide["verdict"] == "sample too small to decide"
    assert wide["models_needed"] > 4
    tight = equivalence([0.1, -0.05, 0.12, 0.0, 0.08, -0.02])
    assert tight["verdict"] == "equivalent" and tight["pass"] is True and tight["p_tost"] < 0.05
    assert -0.5 < tight["ci"][0] < tight["ci"][1] < 0.5
    off = equivalence([2.0, 2.2, 1.9, 2.1])
    assert off["verdict"] == "different" and off["pass"] is False
    # the interval is the t-interval: mean ± t(0.95, n−1)·SE; t(0.95, 3) = 2.3534
    assert wide["ci"][1] - wide["mean"] == pytest.approx(2.3534 * wide["se"], rel=1e-4)


def test_dataset_read_once_then_generated(tmp_path, monkeypatch, capsys):
    """Without --data a failed CIFAR-10 read (no network) is tried once: one printed line, and every
    later section gets generated CIFAR-sized data without another attempt."""
    import src.data
    from benchmarks import gpu_check as G

    calls = []

    def fail(cfg, data_dir):
        calls.append(data_dir)
        raise RuntimeError("<urlopen error [Errno -3] Temporary failure in name resolution>")

    monkeypatch.setattr(src.data, "load_dataset", fail)
    monkeypatch.setattr(G, "GENERATED_CIFAR", dict(G.GENERATED_CIFAR, n_train=64, n_test=16))
    ctx = G.Context("cpu", False, None, tmp_path / "out", tmp_path / "wd", None)
    for _ in range(3):
        with pytest.raises(RuntimeError):
            ctx.full_data()
    sec = {}
    data = ctx.bench_data({}, sec)
    assert len(calls) == 1 and str(tmp_path / "wd") in calls[0]        # a download goes to the work dir, not --out
    assert data.x_train.shape[1:] == (3, 32, 32) and "generated" in sec["data_note"]
    assert "dataset=synthetic" in ctx.dataset_overrides()
    sub = G.compose(ctx.dataset_overrides({"max_train": 100, "max_test": 50}) + ctx.common_overrides()).dataset
    assert (sub.name, sub.n_train, sub.n_test, sub.image_size) == ("synthetic", 100, 50, 32)
    printed = [ln for ln in capsys.readouterr().out.splitlines() if ln.strip()]
    assert len(printed) == 1 and "download failed once" in printed[0]


def test_full_sizes_keep_torch_threads():
    """Section 3's jobs at full size leave torch's thread count alone (num_threads=null); --tiny pins 1."""
    from benchmarks import gpu_check as G

    full = G.compose(G.Context("cpu", False, None, "unused", REPO, None).common_overrides())
    tiny = G.compose(G.Context("cpu", True, None, "unused", REPO, None).common_overrides())
    assert full.num_threads is None and tiny.num_threads == 1


def _docs_command() -> str:
    """The command docs/gpu.md gives for the GPU machine (the indented line that runs the bundle)."""
    text = (REPO / "docs" / "gpu.md").read_text()
    cmds = [ln.strip() for ln in text.splitlines() if ln.startswith("    sh gpu_bundle/gpu_check.sh")]
    assert len(cmds) == 1, cmds
    return cmds[0]


def _bare_python(tmp_path_factory) -> str:
    """A Python with only torch, torchvision, lightning, torchmetrics and scikit-learn (and what they
    require): PTQ_BARE_PYTHON, or a venv made here with ``python3 -m venv`` (no system site-packages)
    and ``pip install torch==2.14.1 torchvision==0.29.1 lightning torchmetrics scikit-learn`` (from the
    package index pip is configured with; several GB, minutes)."""
    given = os.environ.get("PTQ_BARE_PYTHON")
    if given:
        return given
    venv = tmp_path_factory.mktemp("bare") / "venv"
    subprocess.run(["python3", "-m", "venv", str(venv)], check=True)
    py = str(venv / "bin" / "python")
    subprocess.run([py, "-m", "pip", "install", "-q", "torch==2.14.1", "torchvision==0.29.1", "lightning",
                    "torchmetrics", "scikit-learn"], check=True, timeout=3600)
    return py


def _site_listing(py: str) -> list[tuple[str, int]]:
    """(name, mtime in ns) of every entry of ``py``'s site-packages: an install there adds or touches one."""
    purelib = subprocess.run([py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             capture_output=True, text=True, check=True).stdout.strip()
    return sorted((q.name, q.stat().st_mtime_ns) for q in Path(purelib).iterdir())


@pytest.mark.slow
def test_docs_command_in_a_bare_venv(tmp_path, tmp_path_factory):
    """docs/gpu.md's command with ``--device cpu --tiny``, as on the GPU machine: a Python without
    hydra, omegaconf, rich or wandb (``_bare_python``), no make (a ``make`` first on PATH that records
    a call and fails), the bundle of ``make gpu-bundle`` (its wheels; a 10-class image folder of
    16 + 4 generated JPEGs per class as its CIFAR-10), run from a copy of the repository's tracked
    files. It must pass and write nothing but gpu_check.json and gpu_check.txt under OUT: nothing into
    the repository copy (byte code included), the bare Python's site-packages, $HOME or the temp dir,
    whose scratch folder is removed at the end. On a shared, loaded 2-core CPU the run takes up to about
    40 minutes (hence the 1-hour limit); on timeout the whole process group is ended."""
    import signal

    from PIL import Image

    py = _bare_python(tmp_path_factory)
    probe = subprocess.run([py, "-c", "import hydra"], capture_output=True)
    assert probe.returncode != 0, "the bare Python must not have hydra"
    data = tmp_path / "images"
    for split, n in (("train", 16), ("test", 4)):   # 80 members per model: above --tiny's 32 calibration images
        for c in range(10):
            (data / split / f"c{c}").mkdir(parents=True)
            for i in range(n):
                Image.new("RGB", (32, 32), (25 * c, 10 * i, 128)).save(data / split / f"c{c}" / f"{i}.jpg")
    repo = tmp_path / "repo"
    files = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True).stdout.split()
    for f in files:
        if (REPO / f).is_file():
            (repo / f).parent.mkdir(parents=True, exist_ok=True)
            (repo / f).write_bytes((REPO / f).read_bytes())
    subprocess.run(["make", "gpu-bundle", f"PY={sys.executable}", "DIR=gpu_bundle", f"DATA={data}"], cwd=repo,
                   check=True, capture_output=True, timeout=600)
    home, tools = tmp_path / "home", tmp_path / "tools"
    home.mkdir()
    tools.mkdir()
    (tools / "make").write_text(f"#!/bin/sh\ntouch {tmp_path / 'make_called'}\nexit 127\n")
    (tools / "make").chmod(0o755)
    before = sorted(str(p.relative_to(repo)) for p in repo.rglob("*"))
    site = _site_listing(py)
    out, scratch = tmp_path / "OUT", tmp_path / "tmp"
    scratch.mkdir()
    env = {"PATH": f"{tools}:{Path(py).parent}:/usr/bin:/bin", "HOME": str(home), "TMPDIR": str(scratch),
           "OUT": str(out), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(["sh", "-c", _docs_command() + " --device cpu --tiny"], cwd=repo, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        stdout, stderr = proc.communicate(timeout=3600)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)   # the script's python3 too, not only the shell
        stdout, stderr = proc.communicate()
        pytest.fail("timed out after 3600 s: " + stdout[-2000:] + stderr[-2000:])
    assert proc.returncode == 0, stdout[-2000:] + stderr[-3000:]
    found = [q for q in out.rglob("*")]
    assert sorted(q.name for q in found) == ["gpu_check.json", "gpu_check.txt"] and len(found) <= 8
    js = json.loads((out / "gpu_check.json").read_text())
    assert all("error" not in s for s in js["sections"].values()), {k: s.get("error") for k, s in js["sections"].items()}
    assert sorted(str(q.relative_to(repo)) for q in repo.rglob("*")) == before
    assert list(scratch.iterdir()) == []
    assert list(home.iterdir()) == []
    assert not (tmp_path / "make_called").exists()
    assert _site_listing(py) == site
