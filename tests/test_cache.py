"""Artifact store: atomic, verified, locked, content-addressed."""
import multiprocessing as mp
import time
from pathlib import Path

import pytest
import torch

from src.cache import ArtifactStore, cache_key


def test_key_is_order_independent_and_value_sensitive():
    a = cache_key({"model": {"name": "x", "width": 16}, "seed": 0})
    b = cache_key({"seed": 0, "model": {"width": 16, "name": "x"}})
    c = cache_key({"seed": 1, "model": {"width": 16, "name": "x"}})
    assert a == b != c
    assert cache_key({"bits": 4.0}) == cache_key({"bits": 4})


def test_get_or_create_builds_once(tmp_path):
    store = ArtifactStore(tmp_path)
    calls = []

    def build():
        calls.append(1)
        return {"w": torch.arange(5)}

    obj1, built1 = store.get_or_create("models", {"i": 0}, build)
    obj2, built2 = store.get_or_create("models", {"i": 0}, build)
    assert built1 and not built2 and len(calls) == 1
    assert torch.equal(obj1["w"], obj2["w"])
    # no temp files left behind
    assert not [p for p in (tmp_path / "models").iterdir() if p.name.endswith(".tmp")]


def test_truncated_artifact_is_detected_and_rebuilt(tmp_path, caplog):
    store = ArtifactStore(tmp_path)
    store.get_or_create("models", {"i": 1}, lambda: {"w": torch.randn(1000)})
    art, man, _ = store.paths("models", cache_key({"i": 1}))
    art.write_bytes(art.read_bytes()[:100])  # a half-written file
    calls = []
    obj, built = store.get_or_create("models", {"i": 1}, lambda: calls.append(1) or {"w": torch.zeros(3)})
    assert built and calls == [1] and obj["w"].shape == (3,)
    assert "corrupt" in caplog.text
    # and the rebuilt artifact verifies
    assert store.load("models", cache_key({"i": 1}))["w"].shape == (3,)


def test_artifact_without_manifest_is_not_trusted(tmp_path):
    store = ArtifactStore(tmp_path)
    store.get_or_create("scores", {"i": 2}, lambda: {"phi": 1})
    art, man, _ = store.paths("scores", cache_key({"i": 2}))
    man.unlink()  # killed between the artifact rename and the manifest write
    obj, built = store.get_or_create("scores", {"i": 2}, lambda: {"phi": 2})
    assert built and obj["phi"] == 2


def _worker(root, log_path, lock):
    store = ArtifactStore(root, lock=lock)

    def build():
        with open(log_path, "a") as f:
            f.write("built\n")
        time.sleep(1.0)
        return {"v": 7}

    obj, _ = store.get_or_create("models", {"shared": True}, build)
    assert obj["v"] == 7


def test_two_processes_build_once(tmp_path):
    for lock in ("soft", "flock"):
        root, log_path = tmp_path / lock, tmp_path / f"{lock}.log"
        ctx = mp.get_context("spawn")
        procs = [ctx.Process(target=_worker, args=(str(root), str(log_path), lock)) for _ in range(2)]
        for p in procs:
            p.start()
        for p in procs:
            # a hang guard only: two spawned interpreters import torch, which takes a minute or more on
            # a loaded 2-core machine
            p.join(600)
        alive = [p for p in procs if p.is_alive()]
        for p in alive:
            p.kill()
        assert not alive, f"{lock}: a worker still running after 600 s"
        assert all(p.exitcode == 0 for p in procs)
        assert Path(log_path).read_text().count("built") == 1, lock


def test_abandoned_empty_lock_file_does_not_block(tmp_path):
    """A job killed between creating its soft lock file and writing the owner record leaves an
    empty file that filelock never breaks. Once older than EMPTY_LOCK_GRACE it is removed and the
    artifact is built; a fresh empty file (a holder that may still be writing) is waited for, here
    until ``lock_timeout`` runs out."""
    import os

    from filelock import Timeout

    from src.cache import EMPTY_LOCK_GRACE

    config = {"i": 1}
    store = ArtifactStore(tmp_path, lock_timeout=1.5)
    lock = store.paths("models", cache_key(config))[2]
    lock.parent.mkdir(parents=True)
    lock.write_text("")
    t0 = time.monotonic()
    with pytest.raises(Timeout):
        store.get_or_create("models", config, lambda: {"w": torch.ones(1)})
    assert time.monotonic() - t0 >= 1.4 and lock.exists()
    old = time.time() - EMPTY_LOCK_GRACE - 1
    os.utime(lock, (old, old))
    # a timeout, not a wait forever: without the recovery this raises Timeout instead of hanging
    art, built = ArtifactStore(tmp_path, lock_timeout=10).get_or_create("models", config, lambda: {"w": torch.ones(1)})
    assert built and torch.equal(art["w"], torch.ones(1)) and not lock.exists()
