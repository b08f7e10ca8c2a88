"""``cpu_workers``: pool models trained, and targets quantized, side by side in worker processes are
the ones the job makes alone (same seeds, recipe and thread count), so it is a speed key, not part of
any cache key."""
from __future__ import annotations

import numpy as np
import pytest
import torch


def test_workers_train_the_same_models(tiny_cfg, run_job, tmp_path):
    """Two jobs from empty caches, one training the pool in-process and one in 2 spawned workers:
    every pool model's weights and every score are identical bit for bit (not merely close: the
    same computation on the same thread count), and so are the cache keys."""
    from src.cache import ArtifactStore

    common = ("quant=none", "num_threads=1")
    a_cfg = tiny_cfg(*common, "cpu_workers=1", f"paths.cache_dir={tmp_path / 'c1'}")
    b_cfg = tiny_cfg(*common, "cpu_workers=2", f"paths.cache_dir={tmp_path / 'c2'}")
    _, ja = run_job(a_cfg, "a")
    _, jb = run_job(b_cfg, "b")
    pa, pb = np.load(ja / "scores.npz")["phi"], np.load(jb / "scores.npz")["phi"]
    assert np.array_equal(pa, pb)
    models_a = sorted(p.name for p in (tmp_path / "c1" / "models").glob("*.pt"))
    models_b = sorted(p.name for p in (tmp_path / "c2" / "models").glob("*.pt"))
    assert models_a == models_b and len(models_a) == 4
    sa, sb = ArtifactStore(tmp_path / "c1"), ArtifactStore(tmp_path / "c2")
    for name in models_a:
        key = name[:-3]
        da, db = sa.load("models", key)["state_dict"], sb.load("models", key)["state_dict"]
        assert all(torch.equal(da[k], db[k]) for k in da)


@pytest.mark.parametrize("quant", [("quant=adaround",), ("quant=obc", "quant.act_bits=4")])
def test_workers_quantize_the_same_targets(tiny_cfg, run_job, tmp_path, quant):
    """Two targets quantized in this process vs in 2 spawned workers (the pool shared through one
    cache, trained once): identical quantized scores and quantized weights, bit for bit."""
    from src.cache import ArtifactStore

    common = (*quant, "bits=2", "targets=[0,1]", "num_threads=1", f"paths.cache_dir={tmp_path / 'c'}")
    _, ja = run_job(tiny_cfg(*common, "cpu_workers=1"), "a")
    store = ArtifactStore(tmp_path / "c")
    first = {p.name: store.load("quantized", p.name[:-3]) for p in (tmp_path / "c" / "quantized").glob("*.pt")}
    assert len(first) == 2
    for p in (tmp_path / "c" / "quantized").glob("*"):
        p.unlink()
    for p in (tmp_path / "c" / "scores").glob("*"):
        p.unlink()
    _, jb = run_job(tiny_cfg(*common, "cpu_workers=2"), "b")
    a, b = np.load(ja / "scores.npz")["target_phi"], np.load(jb / "scores.npz")["target_phi"]
    assert np.array_equal(a, b)
    for name, art in first.items():
        again = store.load("quantized", name[:-3])
        assert all(torch.equal(art["state_dict"][k], again["state_dict"][k]) for k in art["state_dict"])


@pytest.mark.parametrize("value, device, todo, expected", [
    (4, "cpu", 16, 4), (4, "cpu", 3, 3), (1, "cpu", 16, 1), (4, "cuda", 16, 1), (4, "cpu", 1, 1)])
def test_cpu_workers_bounds(tiny_cfg, value, device, todo, expected):
    """Never more workers than models to train; one process on CUDA (one device) and for one model."""
    from src.pipeline import cpu_workers

    cfg = tiny_cfg(f"cpu_workers={value}")
    assert cpu_workers(cfg, device, todo) == expected


def test_cpu_workers_auto_is_cores_over_threads(tiny_cfg, monkeypatch):
    import os

    from src.pipeline import cpu_workers

    monkeypatch.setattr(os, "sched_getaffinity", lambda _pid: set(range(8)), raising=False)
    assert cpu_workers(tiny_cfg("cpu_workers=auto", "num_threads=2"), "cpu", 16) == 4
    assert cpu_workers(tiny_cfg("cpu_workers=auto", "num_threads=1"), "cpu", 3) == 3
