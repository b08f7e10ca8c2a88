"""One place that checks the composed config before any work starts (issue: reliability).

Each problem raises ``ConfigError`` with one line naming the key, the value and what is allowed;
``src.main`` prints it and exits with status 2. Unknown group options (``quant=foo``) are already
rejected by Hydra with the list of available options.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

from src.data.augment import check_query
from src.data.datasets import DATASETS
from src.models import MODELS
from src.quant import FULL_PRECISION, METHODS
from src.quant.grid import INIT_METHODS, check_bits
from src.quant.policy import POLICIES


class ConfigError(ValueError):
    pass


def _need(cond: bool, msg: str) -> None:
    if not cond:
        raise ConfigError(msg)


def _int(cfg, key: str, value, minimum: int) -> int:
    try:
        v = int(value)
        ok = float(value) == v
    except (TypeError, ValueError):
        ok = False
    _need(ok and v >= minimum, f"{key}={value}: must be an integer ≥ {minimum}")
    return v


def check_cache_dir(path: str) -> None:
    p = Path(path)
    try:
        p.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=p, prefix=".write-test-")
        os.close(fd)
        os.unlink(tmp)
    except OSError as e:
        raise ConfigError(f"paths.cache_dir={path}: not writable ({e.strerror or e})") from None


def validate(cfg) -> None:
    """Raise ConfigError for the first problem found in the composed job config."""
    try:
        check_bits(cfg.bits)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    _need(cfg.dataset.name in DATASETS, f"dataset.name={cfg.dataset.name}: allowed: {', '.join(DATASETS)}")
    _need(cfg.model.name in MODELS, f"model.name={cfg.model.name}: allowed: {', '.join(MODELS)}")
    qnames = FULL_PRECISION + tuple(METHODS)
    _need(cfg.quant.name in qnames, f"quant.name={cfg.quant.name}: allowed: {', '.join(qnames)}")
    _need(cfg.bitwidth.policy in POLICIES, f"bitwidth.policy={cfg.bitwidth.policy}: allowed: {', '.join(POLICIES)}")
    try:
        pkeep = float(cfg.pkeep)
    except (TypeError, ValueError):
        pkeep = -1.0
    _need(0.0 < pkeep < 1.0, f"pkeep={cfg.pkeep}: must lie strictly between 0 and 1")
    m = _int(cfg, "n_models", cfg.n_models, 2)
    _need(cfg.stage in ("all", "train"), f"stage={cfg.stage}: allowed: all, train")
    for q in cfg.dataset.get("queries", ["identity"]):
        try:
            check_query(str(q))
        except ValueError as e:
            raise ConfigError(f"dataset.queries: {e}") from None
    _need(len(cfg.dataset.get("queries", ["identity"])) > 0, "dataset.queries=[]: need at least one query view")
    for k in ("epochs", "batch_size"):
        _int(cfg, f"train.{k}", cfg.train[k], 1)
    _need(float(cfg.train.lr) > 0, f"train.lr={cfg.train.lr}: must be > 0")
    if cfg.get("n_targets") is not None:
        _int(cfg, "n_targets", cfg.n_targets, 1)
        targets = list(range(int(cfg.n_targets)))
    else:
        targets = list(cfg.targets)
        _need(len(targets) > 0, "targets=[]: name at least one pool model to attack")
    for t in targets:
        ti = _int(cfg, "targets", t, 0)
        _need(ti < m, f"targets: index {t} is outside the pool; allowed: 0..{m - 1} (n_models={m})")
    if cfg.get("model_range") is not None:
        r = list(cfg.model_range)
        _need(len(r) == 2 and 0 <= int(r[0]) < int(r[1]) <= m,
              f"model_range={r}: need [start, stop) with 0 ≤ start < stop ≤ n_models={m}")
    q = cfg.quant
    if "iters" in q:
        _int(cfg, "quant.iters", q.iters, 0)
    if q.name not in FULL_PRECISION:
        if "init" in q:
            _need(q.init in INIT_METHODS, f"quant.init={q.init}: allowed: {', '.join(INIT_METHODS)}")
        cal = q.get("calibration", "members")
        _need(cal in ("members", "nonmembers", "test"),
              f"quant.calibration={cal}: allowed: members, nonmembers, test")
        _int(cfg, "quant.n_calib", q.get("n_calib", 1024), 1)
    _validate_attack(cfg, m)
    check_cache_dir(str(cfg.paths.cache_dir))


def validate_with_data(cfg, keep, n_test: int, indices) -> None:
    """Checks that need the dataset and membership split (run after loading, before any training)."""
    q = cfg.quant
    if q.name in FULL_PRECISION:
        return
    cal = q.get("calibration", "members")
    n_calib = int(q.get("n_calib", 1024))
    for t in indices:
        avail = {"members": int(keep[t].sum()), "nonmembers": int((~keep[t]).sum()), "test": n_test}[cal]
        _need(n_calib <= avail, f"quant.n_calib={n_calib}: larger than the {avail} {cal} images of model {t} "
                                f"available for calibration (quant.calibration={cal}); use at most {avail}")


def _validate_attack(cfg, m: int) -> None:
    from src.attacks import ATTACKS, min_models

    names = list(cfg.attack.names)
    _need(len(names) > 0, "attack.names=[]: name at least one attack")
    for n in names:
        _need(n in ATTACKS, f"attack.names: unknown attack {n!r}; allowed: {', '.join(ATTACKS)}")
    need = min_models(names)
    _need(m >= need, f"n_models={m}: too few pool models for attack.names={names}; need at least {need} "
                     f"(online LiRA needs IN and OUT reference models for every example)")
    ref = cfg.attack.get("reference", "fp")
    _need(ref in ("fp", "matched"), f"attack.reference={ref}: allowed: fp, matched")
