"""Pipeline options: matched references, W&B failure tolerance, calibration sources."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
from hydra import compose, initialize_config_dir

REPO = Path(__file__).resolve().parents[1]
TINY = ["dataset=synthetic", "dataset.n_train=128", "n_models=6", "train.epochs=3", "quant.n_calib=16",
        "progress=false"]


def compose_cfg(overrides):
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        return compose("config", overrides=overrides)


def test_matched_references_are_quantized(tmp_path):
    cmd = [sys.executable, "-m", "src.main", *TINY, "quant=rtn", "bits=1.58", "attack=lira",
           "attack.reference=matched", "logger=none", f"paths.cache_dir={tmp_path}/c", f"hydra.run.dir={tmp_path}/r"]
    p = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-2000:]
    z = np.load(tmp_path / "r" / "scores.npz")
    res = json.loads((tmp_path / "r" / "results.json").read_text())
    assert res["job"]["reference"] == "matched"
    # every pool model was quantized (6 quantized artifacts), and the exported reference φ differs from FP φ
    assert len(list((tmp_path / "c" / "quantized").glob("*.pt"))) == 6
    assert z["ref_phi"].shape == z["phi"].shape and not np.allclose(z["ref_phi"], z["phi"])
    # the target's row of ref_phi is its quantized φ
    np.testing.assert_allclose(z["ref_phi"][0], z["target_phi"][0], rtol=1e-6)


def test_job_completes_when_wandb_init_raises(tmp_path, monkeypatch):
    import wandb

    from src.main import run

    def boom(*a, **k):
        raise RuntimeError("wandb is down")

    monkeypatch.setattr(wandb, "init", boom)
    monkeypatch.chdir(tmp_path)  # outside Hydra the job dir is the cwd
    cfg = compose_cfg(TINY + ["quant=rtn", "bits=4", "logger=wandb", "logger.mode=offline",
                              f"paths.cache_dir={tmp_path}/c"])
    results = run(cfg)
    on_disk = json.loads((tmp_path / "results.json").read_text())
    assert on_disk["attacks"]["lira_online"]["auc"] == results["attacks"]["lira_online"]["auc"]
    assert (tmp_path / "scores.npz").exists()


def test_calibration_sources_are_disjoint_and_seeded():
    from src import pipeline as P
    from src.data import load_dataset

    cfg = compose_cfg(TINY + ["quant=adaround"])
    data = load_dataset(cfg.dataset, "outputs/data")
    keep = P.membership(cfg, data)
    src_m, idx_m = P.calibration_indices(cfg, data, keep, 2)
    assert src_m == "members" and keep[2, idx_m].all() and len(idx_m) == 16
    assert (P.calibration_indices(cfg, data, keep, 2)[1] == idx_m).all()
    cfg.quant.calibration = "nonmembers"
    _, idx_n = P.calibration_indices(cfg, data, keep, 2)
    assert not keep[2, idx_n].any()
    cfg.quant.calibration = "test"
    _, idx_t = P.calibration_indices(cfg, data, keep, 2)
    assert idx_t.max() < len(data.y_test)


def test_rtn_needs_no_calibration(tmp_path):
    """RTN looks only at the weights: an n_calib larger than the members is not an error, and the
    quantized artifact does not depend on calibration settings."""
    from src import pipeline as P
    from src.main import prepare

    cfg = compose_cfg(TINY + ["quant=rtn", "quant.n_calib=100000", f"paths.cache_dir={tmp_path}/c"])
    prepare(cfg)  # no ConfigError
    key_a = P.quant_key(cfg, {"m": 0})
    from omegaconf import open_dict

    with open_dict(cfg):
        cfg.quant.n_calib = 3
        cfg.quant.calibration = "test"
    assert P.quant_key(cfg, {"m": 0}) == key_a


def test_reference_both_reports_fp_and_matched(tmp_path):
    """attack.reference=both: `attacks` equals a reference=fp run, `attacks_matched` equals a
    reference=matched run, and the summary has a row for each."""
    def run(ref, name):
        cmd = [sys.executable, "-m", "src.main", *TINY, "quant=rtn", "bits=2", "attack=lira",
               f"attack.reference={ref}", "logger=none", f"paths.cache_dir={tmp_path}/c", f"hydra.run.dir={tmp_path}/{name}"]
        p = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
        assert p.returncode == 0, p.stderr[-2000:]
        return json.loads((tmp_path / name / "results.json").read_text())

    both, fp, matched = run("both", "0"), run("fp", "1"), run("matched", "2")
    assert both["attacks"] == fp["attacks"] and both["attacks_matched"] == matched["attacks"]
    z = np.load(tmp_path / "0" / "scores.npz")
    zm = np.load(tmp_path / "2" / "scores.npz")
    np.testing.assert_array_equal(z["matched_attack_lira_online"], zm["attack_lira_online"])
    np.testing.assert_array_equal(z["ref_phi"], zm["ref_phi"])

    from src.report.summary import collect, rows_from_results

    rows = [r for r in rows_from_results(collect(tmp_path)) if r["attack"] == "lira_online" and r["quant"] == "rtn"]
    refs = sorted(r["reference"] for r in rows)
    assert refs == ["fp", "fp", "matched", "matched"]  # jobs 0 (both: fp + matched), 1 (fp), 2 (matched)
