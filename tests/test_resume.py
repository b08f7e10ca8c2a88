"""Crash resume and parallel safety, end to end through ``python -m src.main``.

- a job killed with SIGKILL while training the pool, or while quantizing, continues where it stopped
  when re-run: finished artifacts are loaded, not recomputed, and results.json equals that of an
  uninterrupted run in a separate cache dir;
- a truncated cached artifact is reported in one line and rebuilt, with the same results;
- two jobs started together on one cache dir train each pool model exactly once.
"""
from __future__ import annotations

import os
import shutil
import signal
import time
from datetime import datetime

import pytest

from _main_runner import TINY, log_lines, manifests, merge, numbers, popen_main, run_main

N_MODELS = 4
# ~1 s per pool model and a few seconds of AdaRound on a CPU: long enough to kill inside either stage.
POOL = merge(TINY, ["dataset.n_train=512", f"n_models={N_MODELS}", "train.epochs=20"])
RESUME = merge(POOL, ["quant=adaround", "quant.iters=300"])
TRAINING = "pool: training model"
QUANTIZING = "quantize: model 0"


def _poll(cond, proc, timeout: float = 180.0, what: str = ""):
    t0 = time.time()
    while time.time() - t0 < timeout:
        if cond():
            return
        if proc.poll() is not None:
            pytest.fail(f"the job ended (rc={proc.returncode}) before {what}")
        time.sleep(0.02)
    proc.kill()
    pytest.fail(f"timed out waiting for {what}")


def _kill(proc) -> None:
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(30)
    assert proc.returncode == -signal.SIGKILL


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    base = tmp_path_factory.mktemp("uninterrupted")
    run_main(RESUME, base / "cache", base / "run")
    return base


def test_kill_during_pool_training_then_resume(uninterrupted, tmp_path):
    cache = tmp_path / "cache"
    proc = popen_main(RESUME, cache, tmp_path / "killed")
    _poll(lambda: len(manifests(cache, "models")) >= 1, proc, what="the first pool model was cached")
    _kill(proc)
    done = len(manifests(cache, "models"))
    assert 1 <= done < N_MODELS, f"killed too late to test resume ({done} models done)"
    assert not (tmp_path / "killed" / "results.json").exists()

    run_main(RESUME, cache, tmp_path / "resumed", timeout=240)  # a stale lock of the killed job must not block
    trained = log_lines(tmp_path / "resumed", TRAINING)
    assert len(trained) == N_MODELS - done, trained  # nothing finished is trained again
    assert len(manifests(cache, "models")) == N_MODELS
    assert numbers(tmp_path / "resumed") == numbers(uninterrupted / "run")


@pytest.mark.slow
def test_kill_during_quantization_then_resume(uninterrupted, tmp_path):
    cache = tmp_path / "cache"
    proc = popen_main(RESUME, cache, tmp_path / "killed")
    _poll(lambda: log_lines(tmp_path / "killed", QUANTIZING), proc, timeout=240, what="quantization started")
    time.sleep(0.5)
    _kill(proc)
    assert len(manifests(cache, "models")) == N_MODELS
    assert not manifests(cache, "quantized"), "killed too late: quantization had finished"

    run_main(RESUME, cache, tmp_path / "resumed", timeout=240)
    assert not log_lines(tmp_path / "resumed", TRAINING)  # the pool is loaded, not retrained
    assert len(log_lines(tmp_path / "resumed", QUANTIZING)) == 1
    assert numbers(tmp_path / "resumed") == numbers(uninterrupted / "run")


def test_truncated_pool_model_is_reported_and_rebuilt(uninterrupted, tmp_path):
    cache = tmp_path / "cache"
    shutil.copytree(uninterrupted / "cache", cache)
    victim = sorted((cache / "models").glob("*.pt"))[0]
    victim.write_bytes(victim.read_bytes()[: victim.stat().st_size // 2])  # a half-written file

    p = run_main(RESUME, cache, tmp_path / "rerun")
    warnings = log_lines(tmp_path / "rerun", "corrupt or incomplete")
    assert len(warnings) == 1 and f"models/{victim.stem}" in warnings[0], warnings
    assert sum("corrupt or incomplete" in ln for ln in p.stdout.splitlines() + p.stderr.splitlines()) == 1
    assert len(log_lines(tmp_path / "rerun", TRAINING)) == 1  # only the damaged model is rebuilt
    assert not log_lines(tmp_path / "rerun", QUANTIZING)
    assert numbers(tmp_path / "rerun") == numbers(uninterrupted / "run")
    # and the rebuilt artifact is intact: it loads without a warning
    from src.cache import ArtifactStore

    assert ArtifactStore(cache).load("models", victim.stem) is not None


def test_concurrent_jobs_train_each_pool_model_once(tmp_path):
    cache = tmp_path / "cache"
    cfg = merge(POOL, ["quant=rtn"])
    procs = [popen_main(cfg, cache, tmp_path / f"job{i}") for i in range(2)]
    for p in procs:
        p.wait(300)
    outs = [(tmp_path / f"job{i}.out").read_text() for i in range(2)]
    assert [p.returncode for p in procs] == [0, 0], outs[0][-2000:] + outs[1][-2000:]
    trained = [ln for i in range(2) for ln in log_lines(tmp_path / f"job{i}", TRAINING)]
    assert len(trained) == N_MODELS, trained
    assert sorted(ln.split(TRAINING)[1].split(" of ")[0] for ln in trained) == [" 1", " 2", " 3", " 4"]
    assert sum(len(log_lines(tmp_path / f"job{i}", QUANTIZING)) for i in range(2)) == 1
    assert len(manifests(cache, "models")) == N_MODELS
    assert numbers(tmp_path / "job0") == numbers(tmp_path / "job1")
    # both jobs were past start-up (Hydra writes .hydra/ just before calling the task) before the
    # last pool model was trained: the one that trained less waited on the others' locks
    stamps = [datetime.strptime(ln[1:24], "%Y-%m-%d %H:%M:%S,%f") for ln in trained]
    started = [datetime.fromtimestamp((tmp_path / f"job{i}" / ".hydra" / "config.yaml").stat().st_mtime)
               for i in range(2)]
    assert max(started) < max(stamps), f"the jobs did not overlap ({started}, {stamps}); the lock was not exercised"


def test_reader_does_not_destroy_an_artifact_being_saved(tmp_path, caplog):
    """Regression: a job that looked up an artifact while another was between renaming it into place
    and writing its manifest took it for corrupt, deleted it (with a warning) and built it again."""
    import threading

    import torch

    from src.cache import ArtifactStore, cache_key

    writer, reader = ArtifactStore(tmp_path), ArtifactStore(tmp_path)
    config = {"i": 0}
    key = cache_key(config)
    writer.save("models", key, {"w": torch.arange(3)}, config)
    art, man, lock_path = writer.paths("models", key)
    manifest = man.read_text()
    man.unlink()  # the writer's state right after os.replace of the artifact ...
    builds, result = [], {}
    with writer._lock(lock_path):  # ... which it does while holding the artifact's lock
        t = threading.Thread(target=lambda: result.update(
            out=reader.get_or_create("models", config, lambda: builds.append(1) or {"w": torch.zeros(1)})))
        t.start()
        time.sleep(0.5)  # the reader looks, finds no manifest, waits for the lock
        assert art.exists(), "the reader deleted an artifact that was being saved"
        man.write_text(manifest)  # the writer finishes
    t.join(30)
    obj, built = result["out"]
    assert not built and not builds and torch.equal(obj["w"], torch.arange(3))
    assert "corrupt" not in caplog.text
