"""End-to-end `python -m src.main` on generated data (the CLI as a user runs it): results.json schema,
scores.npz recomputation, and a second job, in process, that trains and quantizes nothing (cache hit)."""
import json

import numpy as np
import pytest
from _main_runner import TINY, compose, merge, run_main
from sklearn.metrics import roc_auc_score, roc_curve

# 8 models: enough references for every offline attack; two targets
JOB = merge(TINY, ["dataset.n_train=160", "n_models=8", "train.epochs=4", "budget.n_calib=32", "quant=rtn", "bits=2",
                   "attack=all", "targets=[0,1]"])


@pytest.fixture(scope="module")
def first_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("e2e")
    p = run_main(JOB, tmp / "cache", tmp / "run1", timeout=600)
    return tmp, p


def test_results_schema(first_run):
    tmp, p = first_run
    res = json.loads((tmp / "run1" / "results.json").read_text())
    assert res["config"]["quant"]["name"] == "rtn" and res["config"]["bits"] == 2
    for k in ("fp_test_acc", "test_acc", "fp_train_acc", "train_acc"):
        assert 0.0 <= res["utility"][k] <= 1.0
    names = ["lira_online", "lira_online_fixed", "lira_offline", "lira_offline_fixed", "rmia", "rmia_offline", "loss"]
    assert sorted(res["attacks"]) == sorted(names) == sorted(res["fp_attacks"])
    for m in res["attacks"].values():
        for k in ("auc", "balanced_accuracy", "tpr_at_fpr_1e-2", "tpr_at_fpr_1e-3", "tpr_at_fpr_1e-4"):
            assert 0.0 <= m[k] <= 1.0
            lo, hi = m["ci"][k]
            assert lo <= m[k] + 1e-12 and m[k] <= hi + 1e-12
        assert len(m["per_target"]) == 2
    assert set(res["quant"]["layer_bits"].values()) == {2.0}
    assert "lira_online" in p.stdout and "test accuracy" in p.stdout
    # Lightning's per-Trainer banners would repeat once per pool model
    assert "GPU available" not in p.stdout + p.stderr and "litlogger" not in p.stdout + p.stderr
    assert (tmp / "run1" / "quantized_target0.pt").exists()


def test_scores_npz_reproduces_results(first_run):
    """Every attack's AUC/TPR in results.json is recomputed from scores.npz alone, with sklearn."""
    tmp, _ = first_run
    res = json.loads((tmp / "run1" / "results.json").read_text())
    z = np.load(tmp / "run1" / "scores.npz")
    m, n, q = z["phi"].shape
    assert z["keep"].shape == (m, n) and z["target_phi"].shape == (2, n, q)
    assert list(z["target_ids"]) == [0, 1] and z["labels"].shape == (n,)
    assert (z["keep"].sum(0) == m // 2).all()
    for name, block in res["attacks"].items():
        scores = z[f"attack_{name}"]
        for i, t in enumerate(z["target_ids"]):
            y = z["keep"][t]
            auc = roc_auc_score(y, scores[i])
            assert abs(auc - block["per_target"][i]["auc"]) < 1e-9, name
            fpr, tpr, _ = roc_curve(y, scores[i], drop_intermediate=False)
            expect = tpr[fpr <= 1e-2].max()
            assert abs(expect - block["per_target"][i]["tpr_at_fpr_1e-2"]) < 1e-9, name
        assert abs(np.mean([pt["auc"] for pt in block["per_target"]]) - block["auc"]) < 1e-12
    # the loss attack is the mean φ of the target over queries: check against the exported φ
    np.testing.assert_allclose(z["attack_loss"], z["target_phi"].mean(-1), rtol=1e-5, atol=1e-5)
    # the FP target's φ is the pool's φ
    np.testing.assert_allclose(z["fp_attack_loss"][0], z["phi"][0].mean(-1), rtol=1e-5, atol=1e-5)


def test_second_run_trains_nothing(first_run, run_job, monkeypatch):
    """The same job again, in process, on the first run's cache: training and quantization are never
    called (they would raise) and every number is the same. The first run did log both stages."""
    from src import pipeline

    tmp, p = first_run
    assert "pool: training model" in p.stdout + p.stderr and "quantize: model" in p.stdout + p.stderr

    def refuse(*a, **k):
        raise AssertionError("computed although cached")

    monkeypatch.setattr(pipeline, "_train_pool_models", refuse)
    monkeypatch.setattr(pipeline, "quantize", refuse)
    _, job = run_job(compose(merge(JOB, [f"paths.cache_dir={tmp / 'cache'}"])), "run2")
    a = json.loads((tmp / "run1" / "results.json").read_text())
    b = json.loads((job / "results.json").read_text())
    assert a["utility"] == b["utility"] and a["attacks"] == b["attacks"]


def test_bad_bits_one_line_error(tmp_path):
    p = run_main(["bits=3.5", "logger=none"], tmp_path / "cache", tmp_path / "r", check=False)
    assert p.returncode == 2
    lines = [ln for ln in p.stderr.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and "bits=3.5" in lines[0] and "1.58" in lines[0]
    assert not list((tmp_path / "cache").rglob("*.pt"))


def test_export_rebuilds_every_layer(first_run):
    """quantized_target0.pt alone gives each Conv/Linear weight (scale·(codes − zero_point)) and bias, and
    the codes use at most 2^bits levels per output channel."""
    import torch

    from src.models import build_model
    from src.quant.bn_fold import fold_batchnorm

    tmp, _ = first_run
    export = torch.load(tmp / "run1" / "quantized_target0.pt", weights_only=False)
    model = fold_batchnorm(build_model("smallcnn", 4, 1))
    modules = dict(model.named_modules())
    assert set(export) == {n for n, m in modules.items() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))}
    for name, e in export.items():
        codes = e["codes"].float()
        shape = (-1,) + (1,) * (codes.dim() - 1)
        w = e["scale"].view(shape) * (codes - e["zero_point"].float().view(shape))
        assert w.shape == modules[name].weight.shape and e["bias"].shape == (w.shape[0],)
        assert e["qmin"] <= codes.min() and codes.max() <= e["qmax"] and e["qmax"] - e["qmin"] + 1 == 4
        assert all(len(torch.unique(c)) <= 4 for c in codes.reshape(codes.shape[0], -1))
    # the rebuilt quantized model reproduces the reported test accuracy of target 0
    from omegaconf import OmegaConf

    from src.data import load_dataset, normalize

    res = json.loads((tmp / "run1" / "results.json").read_text())
    with torch.no_grad():
        for name, e in export.items():
            codes = e["codes"].float()
            shape = (-1,) + (1,) * (codes.dim() - 1)
            modules[name].weight.copy_(e["scale"].view(shape) * (codes - e["zero_point"].float().view(shape)))
            modules[name].bias.copy_(e["bias"])
        data = load_dataset(OmegaConf.create(res["config"]["dataset"]), str(tmp))
        pred = model.eval()(normalize(data.x_test, data.mean, data.std)).argmax(1)
    acc = (pred == data.y_test).float().mean().item()
    assert abs(acc - res["utility"]["per_target"][0]["test_acc"]) < 1e-9
