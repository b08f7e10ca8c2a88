"""What a researcher meets first: refusals that name the fix, warnings for settings without effect,
where a job wrote, an interrupt that says what is kept, provenance and versioned cache keys, --help."""
from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path

import pytest

from _main_runner import PY, REPO, TINY, command, compose, env, log_lines, manifests, merge, run_main


def _refusal(tmp_path, *overrides: str) -> str:
    from src.data import DataError
    from src.main import prepare
    from src.validate import ConfigError

    cfg = compose(merge(TINY, [f"paths.cache_dir={tmp_path}/cache", *overrides]))
    with pytest.raises((ConfigError, DataError)) as ei:
        prepare(cfg)
    msg = str(ei.value)
    assert "\n" not in msg
    return msg


def test_model_too_deep_for_image_size(tmp_path):
    msg = _refusal(tmp_path, "model=vgg11_bn", "dataset.image_size=16")
    assert "model=vgg11_bn" in msg and "at least 32 px" in msg and "dataset.image_size=16" in msg
    assert "smallcnn" in msg  # a model that fits is offered
    msg = _refusal(tmp_path, "model=vgg11_bn", "dataset=digits")
    assert "dataset=digits gives 8 px" in msg  # the dataset's own size, checked after loading


def test_min_image_size_follows_the_structure():
    from src.models import min_image_size

    assert min_image_size({"name": "vgg11_bn", "width": 4}, 3) == 32  # five 2×2 max-pools
    assert min_image_size({"name": "smallcnn"}, 1) == 1


@pytest.mark.parametrize("override,key", [("+quant.itters=100", "quant.itters"),
                                          ("+quant.iters=100", "quant.iters"),
                                          ("+attack.centr=mean", "attack.centr"),
                                          ("+dataset.image_size=16", "dataset.image_size")])
def test_key_the_option_does_not_define(tmp_path, override, key):
    msg = _refusal(tmp_path, "quant=obc", override, "dataset=digits")
    group = key.split(".")[0]
    assert msg.startswith(f"{key}: not a key of {group}=")
    assert "allowed:" in msg and "name" in msg.split("allowed:")[1]


def test_plain_override_of_an_undefined_key_names_the_keys():
    from src.validate import ConfigError, check_override_keys

    with pytest.raises(ConfigError, match=r"quant\.iters: not a key of quant=obc; allowed: .*damp"):
        check_override_keys(["quant=obc", "quant.iters=100"])
    check_override_keys(["quant=adaround", "quant.iters=100"])  # a key it has
    check_override_keys(["-m", "quant=obc,adaround", "quant.iters=100"])  # a sweep: Hydra checks each job


def test_tilde_needs_quoting_and_is_expanded(tmp_path):
    from src.validate import ConfigError, check_override_keys, expand_paths

    with pytest.raises(ConfigError, match=r"dataset\.root=~/x: .*\"dataset.root='~/x'\".*\$HOME/x"):
        check_override_keys(["dataset.root=~/x"])
    check_override_keys(["dataset=imagefolder", "dataset.root='~/x'"])  # quoted: Hydra reads it
    cfg = compose(["dataset=imagefolder", "dataset.root='~/x'", "paths.cache_dir='~/c'"])
    expand_paths(cfg)
    assert cfg.dataset.root == str(Path.home() / "x") and cfg.dataset.decode_cache == str(Path.home() / "c")


def test_one_n_models_minimum_in_every_message(tmp_path):
    from src.attacks import min_models, run_attacks
    import numpy as np

    for n in ("1", "2", "3"):
        assert "n_models=" + n + ": must be an integer ≥ 4" in _refusal(tmp_path, f"n_models={n}", "attack=lira")
    assert "≥ 2" in _refusal(tmp_path, "n_models=1", "attack=loss")
    with pytest.raises(ValueError, match=f"n_models >= {min_models(['lira_online'])}"):
        run_attacks(["lira_online"], np.zeros((1, 4, 1)), np.array([[True, True, False, False]]), np.zeros((4, 1)))


def test_warnings_for_settings_without_effect():
    from src.validate import config_warnings

    fp = compose(["quant=none", "bits=2"])
    assert config_warnings(fp, ["quant=none", "bits=2"]) == [
        "bits=2: has no effect with quant=none, full precision; its results are reported as 32-bit"]
    assert config_warnings(fp, ["quant=none"]) == []  # the default bits is no choice
    assert config_warnings(compose(["quant=rtn", "bits=2"]), ["bits=2"]) == []
    few = config_warnings(compose(["n_models=8"]), [])
    assert len(few) == 1 and "lira_online" in few[0] and "lira_online_fixed" in few[0] and "16" in few[0]
    assert config_warnings(compose(["n_models=16"]), []) == []
    assert config_warnings(compose(["n_models=8", "attack.names=[lira_online_fixed]"]), []) == []


def test_online_lira_falls_behind_fixed_variance_with_few_models():
    """The measurement behind MIN_MODELS_PER_EXAMPLE_VARIANCE (benchmarks/lira_reference_count.py)."""
    from benchmarks.lira_reference_count import measure
    from src.attacks import MIN_MODELS_PER_EXAMPLE_VARIANCE as M

    r = measure(sizes=(8, 2 * M), n=600, reps=2, targets=2)
    assert r[8][0] < r[8][1] - 0.01  # per-example σ from 3 references per side: worse
    assert r[2 * M][0] > r[2 * M][1] - 0.01  # enough references: at least as good


def test_results_warnings_provenance_and_versioned_keys(tiny_cfg, run_job, tmp_path, monkeypatch):
    import src.pipeline as P
    from src.cache import cache_key

    cfg = tiny_cfg()
    results, job = run_job(cfg)
    on_disk = json.loads((job / "results.json").read_text())
    assert any("lira_online_fixed" in w for w in on_disk["warnings"])  # n_models=4
    prov = on_disk["provenance"]
    assert {"code", "torch", "cuda", "device", "cpu_capability"} <= set(prov)
    assert prov["code"].get("commit") or prov["code"].get("version")
    man = json.loads(manifests(tmp_path / "cache", "models")[0].read_text())
    assert man["provenance"]["cpu_capability"] == prov["cpu_capability"]

    n_models = len(manifests(tmp_path / "cache", "models"))
    old = cache_key(P.model_key(cfg, "d", 0, "cpu"))
    monkeypatch.setattr(P, "TRAINER_VERSION", 2)
    assert cache_key(P.model_key(cfg, "d", 0, "cpu")) != old
    run_job(cfg, "job2")  # the pool is retrained under the new version, never reused
    assert len(manifests(tmp_path / "cache", "models")) == 2 * n_models
    n_quant = len(manifests(tmp_path / "cache", "quantized"))
    from dataclasses import replace

    monkeypatch.setitem(P.QUANTIZERS, "rtn", replace(P.QUANTIZERS["rtn"], version=2))
    run_job(cfg, "job3")
    assert len(manifests(tmp_path / "cache", "quantized")) == n_quant + 1


def test_refused_job_leaves_no_directory(tmp_path):
    p = run_main(merge(TINY, ["bits=3.5"]), tmp_path / "cache", tmp_path / "run", check=False)
    assert p.returncode == 2 and "error: bits=3.5" in p.stderr
    assert not (tmp_path / "run").exists()


def test_refusal_never_removes_results(tmp_path):
    from src.main import remove_refused_job_dir

    d = tmp_path / "job"
    (d / ".hydra").mkdir(parents=True)
    (d / "results.json").write_text("{}")
    remove_refused_job_dir(d)
    assert (d / "results.json").exists()
    (d / "results.json").unlink()
    (d / "main.log").write_text("")
    remove_refused_job_dir(d)
    assert not d.exists()


def test_cached_job_logs_its_table_and_where_it_wrote(tmp_path):
    over = merge(TINY, ["attack.bootstrap=0"])
    run_main(over, tmp_path / "cache", tmp_path / "first")
    p = run_main(over, tmp_path / "cache", tmp_path / "second")
    log = (tmp_path / "second" / "main.log").read_text()
    assert "lira_online" in log and "AUC" in log and "\x1b[" not in log  # the table, without colour codes
    assert f"results  {tmp_path / 'second' / 'results.json'}" in log
    assert "written:" in p.stdout + p.stderr
    assert log_lines(tmp_path / "second", "pool: 4 of 4 models loaded from the cache")


def test_ctrl_c_says_what_is_saved_and_rerun_resumes(tmp_path):
    run_dir = tmp_path / "run"
    # 200 epochs: each of the 4 models trains for seconds, so the interrupt lands inside the pool's
    # training even when a loaded machine wakes this poll late (at 10 epochs the window was < 1 s)
    over = merge(TINY, ["train.epochs=200"])
    # SIGINT back to its default in the child: a test run started in the background of a
    # non-interactive shell inherits it ignored, and Python then installs no KeyboardInterrupt handler
    proc = subprocess.Popen(command(over, tmp_path / "cache", run_dir), cwd=REPO, env=env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.time() + 240
    while time.time() < deadline and not manifests(tmp_path / "cache", "models"):
        time.sleep(0.2)
    assert manifests(tmp_path / "cache", "models"), "no pool model finished in time"
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-2000:]
    lines = [ln for ln in err.splitlines() if ln.startswith("interrupted:")]
    assert len(lines) == 1 and "pool models" in lines[0] and "rerun the same command" in lines[0], err[-2000:]
    saved = len(manifests(tmp_path / "cache", "models"))
    assert lines[0].startswith(f"interrupted: {saved} pool models and 0 quantized targets"), lines[0]
    p = run_main(over, tmp_path / "cache", tmp_path / "again")
    assert log_lines(tmp_path / "again", f"pool: {saved} of 4 models loaded from the cache"), p.stderr[-2000:]


def test_help_is_a_short_guide():
    p = subprocess.run([PY, "-m", "src.main", "--help"], cwd=REPO, env=env(), capture_output=True, text=True,
                       timeout=120)
    assert p.returncode == 0
    assert "quant      adaround, brecq, gptq, noise, none, obc, prune, qdrop, rtn" in p.stdout
    assert "_params" not in p.stdout and "_paper" not in p.stdout
    assert p.stdout.count("python -m src.main ") >= 5 and "outputs/runs/" in p.stdout
