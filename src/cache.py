"""Content-addressed artifact store (docs/design.md, "Design rules").

An artifact is one ``torch.save``d dict under ``<root>/<kind>/<key>.pt`` where ``key`` is the SHA-256
of exactly the config that determines it (canonical JSON). Next to it, ``<key>.json`` is a manifest
holding the key's config, the SHA-256 of the artifact bytes and library versions.

- **Atomic**: bytes go to a temporary file in the same directory, are fsynced, then ``os.replace``d
  into place; the manifest is written last, so an artifact without a valid manifest is never trusted.
- **Verified**: on load the checksum is recomputed; a corrupt or partial artifact is reported in one
  line, deleted and rebuilt.
- **Locked**: builders take a per-artifact lock, so parallel jobs (joblib, SLURM on a shared cache
  dir) build each artifact once; the others wait and load. ``lock: soft`` uses filelock's
  SoftFileLock (an atomically created lock file, works on NFS/Lustre where flock is unreliable);
  ``lock: flock`` uses the OS lock.
"""
from __future__ import annotations

import collections
import contextlib
import hashlib
import io
import json
import logging
import os
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import torch
from filelock import FileLock, SoftFileLock, Timeout

log = logging.getLogger(__name__)
EMPTY_LOCK_GRACE = 5.0  # seconds: an empty soft lock file this old has no live holder
FORMAT_VERSION = 1


class CacheError(RuntimeError):
    pass


def canonical(obj: Any) -> Any:
    """JSON-able, order-independent form of a (possibly OmegaConf) config."""
    try:
        from omegaconf import DictConfig, ListConfig, OmegaConf

        if isinstance(obj, (DictConfig, ListConfig)):
            obj = OmegaConf.to_container(obj, resolve=True)
    except ImportError:  # pragma: no cover
        pass
    if isinstance(obj, dict):
        return {str(k): canonical(v) for k, v in sorted(obj.items(), key=lambda kv: str(kv[0]))}
    if isinstance(obj, (list, tuple)):
        return [canonical(v) for v in obj]
    if isinstance(obj, float) and obj.is_integer():
        return int(obj) if abs(obj) < 2 ** 53 else obj
    return obj


def versioned(key: dict, version: int) -> dict:
    """``key`` of an artifact made by code at ``version``. Version 1 is that of artifacts made before
    versions were recorded, so it adds nothing and their keys stay valid; any later one is in the key."""
    return key if int(version) == 1 else {**key, "version": int(version)}


def cache_key(config: Any) -> str:
    text = json.dumps(canonical(config), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def atomic_write_bytes(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(Path(path), text.encode())


class ArtifactStore:
    def __init__(self, root: str | os.PathLike, lock: str = "soft", lock_timeout: float = -1,
                 stale_after: float = 6 * 3600, device: str | None = None):
        self.root = Path(root)
        self.device = device  # recorded in manifests (src.provenance)
        # artifacts of each kind this store saved / found already made: what an interrupted job keeps
        self.saved: collections.Counter = collections.Counter()
        self.loaded: collections.Counter = collections.Counter()
        self.lock_kind = lock
        self.lock_timeout = lock_timeout
        self.stale_after = stale_after

    def paths(self, kind: str, key: str) -> tuple[Path, Path, Path]:
        d = self.root / kind
        return d / f"{key}.pt", d / f"{key}.json", d / f"{key}.lock"

    def lock(self, kind: str, key: str):
        """The lock guarding artifact ``kind/key`` (held by ``get_or_create`` while it builds): a caller
        building several artifacts at once holds each one's lock."""
        return self._lock(self.paths(kind, key)[2])

    def _lock(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        if self.lock_kind == "soft":
            return self._soft_lock(path)
        return FileLock(str(path), timeout=self.lock_timeout)

    def _remove_abandoned(self, path: Path) -> None:
        """Remove a soft lock file no live process can hold. filelock takes over a marker whose
        recorded process is dead, but not an *empty* one: a process killed between creating the
        file and writing its owner record leaves one, and it would block every later job. A live
        holder writes the record right after the create, so an empty file older than
        ``EMPTY_LOCK_GRACE`` seconds is abandoned; any lock older than ``stale_after`` is too."""
        try:
            st = path.stat()
        except OSError:
            return
        age = time.time() - st.st_mtime
        if age > self.stale_after or (st.st_size == 0 and age > EMPTY_LOCK_GRACE):
            log.warning("removing abandoned lock %s", path)
            path.unlink(missing_ok=True)

    @contextlib.contextmanager
    def _soft_lock(self, path: Path):
        """SoftFileLock acquired in short attempts, looking for an abandoned lock file between them;
        ``lock_timeout`` < 0 waits for as long as a live holder keeps it."""
        deadline = None if self.lock_timeout < 0 else time.monotonic() + self.lock_timeout
        while True:
            self._remove_abandoned(path)
            left = 1.0 if deadline is None else max(0.0, min(1.0, deadline - time.monotonic()))
            lock = SoftFileLock(str(path), timeout=left)
            try:
                lock.acquire()
                break
            except Timeout:
                if deadline is not None and time.monotonic() >= deadline:
                    raise
        try:
            yield lock
        finally:
            lock.release()

    def load(self, kind: str, key: str, repair: bool = True) -> Any | None:
        """The artifact if present and intact; None if absent; a corrupt one is removed (warned).

        ``repair=False``: only read (None if not intact). Used without the lock, where an artifact
        without its manifest may be one that another process is saving right now."""
        art, man, _ = self.paths(kind, key)
        if not art.exists():
            return None
        try:
            meta = json.loads(man.read_text())
            data = art.read_bytes()
            if meta.get("sha256") != _sha256(data) or meta.get("key") != key:
                raise CacheError("checksum mismatch")
            return torch.load(io.BytesIO(data), map_location="cpu", weights_only=False)
        except Exception as e:  # corrupt, truncated, or manifest missing: rebuild
            if not repair:
                return None
            log.warning("cache: %s/%s is corrupt or incomplete (%s); rebuilding it",
                        kind, key, type(e).__name__ if not isinstance(e, CacheError) else e)
            art.unlink(missing_ok=True)
            man.unlink(missing_ok=True)
            return None

    def save(self, kind: str, key: str, obj: Any, config: Any = None) -> None:
        from src.provenance import provenance

        art, man, _ = self.paths(kind, key)
        buf = io.BytesIO()
        torch.save(obj, buf)
        data = buf.getvalue()
        man.unlink(missing_ok=True)  # never leave an old manifest vouching for new bytes
        atomic_write_bytes(art, data)
        meta = {"key": key, "kind": kind, "sha256": _sha256(data), "bytes": len(data),
                "format": FORMAT_VERSION, "torch": torch.__version__, "config": canonical(config),
                "provenance": provenance(self.device)}
        atomic_write_text(man, json.dumps(meta, indent=1, default=str))
        self.saved[kind] += 1

    def exists(self, kind: str, key: str) -> bool:
        art, man, _ = self.paths(kind, key)
        return art.exists() and man.exists()

    def get_or_create(self, kind: str, config: Any, build: Callable[[], Any]) -> tuple[Any, bool]:
        """(artifact, built_now). Built under the artifact's lock; loaded if another process built it."""
        key = cache_key(config)
        obj = self.load(kind, key, repair=False)  # unlocked: a writer may be between artifact and manifest
        if obj is not None:
            self.loaded[kind] += 1
            return obj, False
        _, _, lock_path = self.paths(kind, key)
        with self._lock(lock_path):
            obj = self.load(kind, key)
            if obj is not None:
                self.loaded[kind] += 1
                return obj, False
            obj = build()
            self.save(kind, key, obj, config)
        return obj, True
