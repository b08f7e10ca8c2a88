"""Pipeline options: matched references, W&B failure tolerance, calibration sources."""
import json

import numpy as np
import pytest
from _main_runner import TINY, merge

# 6 models: leave-one-out LiRA keeps IN and OUT references for every example
BASE = merge(TINY, ["dataset.n_train=128", "n_models=6", "train.epochs=3", "budget.n_calib=16"])


@pytest.fixture
def cfg(tiny_cfg):
    return lambda *overrides: tiny_cfg(*overrides, base=BASE)


def test_matched_references_are_quantized(cfg, run_job, tmp_path):
    _, job = run_job(cfg("quant=rtn", "bits=1.58", "attack=lira", "attack.reference=matched"))
    z = np.load(job / "scores.npz")
    res = json.loads((job / "results.json").read_text())
    assert res["job"]["reference"] == "matched"
    # every pool model was quantized (6 quantized artifacts), and the exported reference φ differs from FP φ
    assert len(list((tmp_path / "cache" / "quantized").glob("*.pt"))) == 6
    assert z["ref_phi"].shape == z["phi"].shape and not np.allclose(z["ref_phi"], z["phi"])
    # the target's row of ref_phi is its quantized φ
    np.testing.assert_allclose(z["ref_phi"][0], z["target_phi"][0], rtol=1e-6)


def test_job_completes_when_wandb_init_raises(cfg, run_job, monkeypatch):
    import wandb

    def boom(*a, **k):
        raise RuntimeError("wandb is down")

    monkeypatch.setattr(wandb, "init", boom)
    results, job = run_job(cfg("quant=rtn", "bits=4", "logger=wandb", "logger.mode=offline"))
    on_disk = json.loads((job / "results.json").read_text())
    assert on_disk["attacks"]["lira_online"]["auc"] == results["attacks"]["lira_online"]["auc"]
    assert (job / "scores.npz").exists()


def test_calibration_sources_are_disjoint_and_seeded(cfg):
    from src import pipeline as P
    from src.data import load_dataset

    cfg = cfg("quant=adaround")
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


def test_rtn_needs_no_calibration(cfg):
    """RTN looks only at the weights: the experiment's calibration budget (which RTN reads only for
    activation ranges, ``quant.act_bits``) is not checked against the data (an n_calib larger than
    the members is not an error), and calibration keys do not enter its weight-only cache key;
    AdaRound gets the same budget."""
    from omegaconf import open_dict

    from src import pipeline as P
    from src.main import prepare

    rtn = cfg("quant=rtn", "budget.n_calib=100000", "budget.iters=7")
    assert "iters" not in rtn.quant
    prepare(rtn)  # no ConfigError
    key_a = P.quant_key(rtn, {"m": 0})
    with open_dict(rtn):
        rtn.quant.n_calib = 3
        rtn.quant.calibration = "test"
        rtn.quant.iters = 9
    assert P.quant_key(rtn, {"m": 0}) == key_a
    ada = cfg("quant=adaround", "budget.n_calib=100000", "budget.iters=7")
    assert (ada.quant.n_calib, ada.quant.iters) == (100000, 7)


def test_reference_both_reports_fp_and_matched(cfg, run_job, tmp_path):
    """attack.reference=both: `attacks` equals a reference=fp run, `attacks_matched` equals a
    reference=matched run, and the summary has a row for each."""
    def run(ref, name):
        _, job = run_job(cfg("quant=rtn", "bits=2", "attack=lira", f"attack.reference={ref}"), name)
        return json.loads((job / "results.json").read_text())

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
