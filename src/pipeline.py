"""The stages of one job as functions over cached artifacts (docs/design.md, "What one job does").

    membership → train_pool → quantize_target (per target) → attack_target → metrics

Each stage takes what it needs explicitly and goes through the ``ArtifactStore``; keys hold exactly
the config that determines the artifact (never logger, paths, devices or progress flags).
"""
from __future__ import annotations

import contextlib
import logging
from collections import Counter
from functools import partial
from dataclasses import dataclass, field

import numpy as np
import torch
from omegaconf import OmegaConf
from torch import nn

from src.attacks.scores import SCORER_VERSION, compute_phi
from src.cache import ArtifactStore, cache_key, versioned
from src.data import ImageData, data_digest, keep_matrix
from src.validate import describe_model, external_target
from src.data.membership import independent_rows
from src.models import build_model
from src.quant import CONTROLS, FULL_PRECISION, NEEDS_CALIBRATION, QUANTIZERS, quantize
from src.quant.activation import restore as restore_act_quant
from src.quant.bn_fold import fold_batchnorm
from src.quant.policy import Overrides
from src.quant.policy import layer_bits as resolve_layer_bits
from src.report.labels import target_label
from src.training import TRAINER_VERSION, Recipe, evaluate_accuracy, resolve_precision, train_models, use_fast_path
from src.training.fast import fast_precision
from src.workers import spawn_pool

log = logging.getLogger(__name__)
TRAIN_KEYS_IGNORED = ("models_per_step", "compile", "channels_last", "cuda_graphs")  # speed only



@dataclass
class Pool:
    """The full-precision model pool: membership, scores and utility of every model."""

    keep: np.ndarray          # [M, N] bool
    phi: np.ndarray           # [M, N, Q] float32
    test_acc: np.ndarray      # [M]
    train_acc: np.ndarray     # [M] accuracy on each model's own members
    model_keys: list[dict] = field(default_factory=list)


@dataclass
class QuantTarget:
    """One quantized pool model (the attack target or, with reference=matched, a reference)."""

    index: int
    model: nn.Module
    phi: np.ndarray           # [N, Q]
    test_acc: float
    train_acc: float
    layer_bits: dict
    seconds: float
    calib_idx: np.ndarray
    export: dict
    act: dict = field(default_factory=dict)   # input quantizers with quant.act_bits: {layer: {bits, signed, step}}
    convergence: list = field(default_factory=list)  # learned rounding: per unit (src/quant/rounding.py)


def _plain(node):
    return OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else node


def independent_targets(cfg) -> bool:
    return (cfg.get("membership") or {}).get("target", "pool") == "independent"


def is_external(cfg, index: int) -> bool:
    """Row ``index`` of the keep matrix is the external target's (the one row after the pool)."""
    return external_target(cfg) and int(index) == int(cfg.n_models)


def membership(cfg, data: ImageData) -> np.ndarray:
    """The keep matrix [rows, N]: the pool's ``n_models`` balanced rows (each example IN for exactly
    round(n_models·pkeep)); with ``membership.target=independent`` one more row per target after them,
    each the target's own random half, independent of the pool's split; with ``target=external`` one
    row after the pool: the external target's members (``target.members``, src/data/members.py)."""
    keep = keep_matrix(int(cfg.n_models), len(data.y_train), float(cfg.pkeep), int(cfg.seed))
    if external_target(cfg):
        return np.vstack([keep, external_members(cfg, data)[None]])
    if independent_targets(cfg):
        n_targets = max(int(t) for t in _target_list(cfg)) + 1
        keep = np.vstack([keep, independent_rows(n_targets, len(data.y_train), float(cfg.pkeep), int(cfg.seed))])
    return keep


def reference_models(cfg, keep: np.ndarray, target: int) -> list[int]:
    """The references of ``target``: every other pool model (leave-one-out), or with independent
    targets all ``n_models`` pool models and never another target; for an external target every pool
    model but those in ``target.leave_out``. Their keep rows alone give LiRA's IN/OUT counts: the
    target's own row is only the ground truth its scores are evaluated against."""
    if external_target(cfg):
        left_out = {int(m) for m in cfg.target.get("leave_out") or []}
        return [m for m in range(int(cfg.n_models)) if m not in left_out]
    n = int(cfg.n_models) if independent_targets(cfg) else keep.shape[0]
    return [m for m in range(n) if m != target]


def model_key(cfg, digest: str, index: int, device: str) -> dict:
    aug = _plain(cfg.dataset.get("augment", {}))
    train = {k: v for k, v in _plain(cfg.train).items() if k not in TRAIN_KEYS_IGNORED}
    # the fast (bf16, CUDA) and plain (Lightning Trainer) paths give different models: key the path
    train["path"] = "fast" if use_fast_path(cfg.train, device) else "plain"
    # the precision that trains the model, decided for this device and path (`auto` is never a key)
    train["precision"] = (fast_precision if train["path"] == "fast" else resolve_precision)(cfg.train, device)
    if train["path"] == "plain":
        for k in ("fast", "bf16"):
            train.pop(k, None)
    key = {"kind": "pool_model", "data": digest, "augment": aug, "model": _plain(cfg.model),
           "train": train, "seed": int(cfg.seed), "n_models": int(cfg.n_models),
           "pkeep": float(cfg.pkeep), "index": int(index)}
    if index >= int(cfg.n_models):  # an independent target's row
        key["split"] = "independent"
    return versioned(key, TRAINER_VERSION)


EXTERNAL_VERSION = 1


def external_members(cfg, data: ImageData) -> np.ndarray:
    """The external target's members as a mask over the candidate set (``target.members``); a bad
    file raises ConfigError with one line, before any training."""
    from src.data.datasets import train_files
    from src.data.members import MembersError, read_members
    from src.validate import ConfigError

    files = train_files(cfg.dataset, cfg.paths.data_dir)
    all_files = train_files(cfg.dataset, cfg.paths.data_dir, subset=False)
    try:
        return read_members(cfg.target.members, len(data.y_train), files, all_files)
    except MembersError as e:
        raise ConfigError(str(e)) from None


def _file_sha256(path) -> str:
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:32]


def external_key(cfg, digest: str, members: np.ndarray) -> dict:
    """Cache key of the external target: the checkpoint's bytes, the architecture, the data and its
    members (which its quantized versions calibrate on)."""
    import hashlib

    return versioned({"kind": "external_model", "checkpoint": _file_sha256(cfg.target.checkpoint),
                      "model": _plain(cfg.model), "data": digest,
                      "members": hashlib.sha256(np.packbits(members).tobytes()).hexdigest()[:32]}, EXTERNAL_VERSION)


def external_model(cfg, data: ImageData, keep: np.ndarray, store: ArtifactStore, device: str,
                   digest: str) -> tuple[nn.Module, dict]:
    """The external checkpoint loaded strictly into ``model``, with its utility (test accuracy, and
    accuracy on its members), cached like a pool model."""
    from src.models.checkpoint import load_strict

    index = int(cfg.n_models)
    key = external_key(cfg, digest, keep[index])

    def make():
        model = load_strict(build_model(cfg.model, data.num_classes, data.in_channels), cfg.target.checkpoint,
                            describe_model(cfg)).eval()
        mem = torch.from_numpy(np.flatnonzero(keep[index]))
        log.info("target: external checkpoint %s, %d members", cfg.target.checkpoint, len(mem))
        return {"state_dict": model.state_dict(),
                "test_acc": evaluate_accuracy(model, data.x_test, data.y_test, data.mean, data.std, device),
                "train_acc": evaluate_accuracy(model, data.x_train[mem], data.y_train[mem], data.mean, data.std,
                                               device)}

    art, _ = store.get_or_create("models", key, make)
    model = build_model(cfg.model, data.num_classes, data.in_channels)
    model.load_state_dict(art["state_dict"])
    return model.eval(), {"key": key, "test_acc": art["test_acc"], "train_acc": art["train_acc"]}


def model_seed(cfg, index: int) -> int:
    return int(cfg.seed) * 100_003 + int(index)


def _train_pool_models(cfg, data: ImageData, keep: np.ndarray, indices: list[int], device: str,
                       logger=None, on_epoch=None) -> list[dict]:
    """Train pool models ``indices`` on their IN halves; their cache artifacts (weights + utility)."""
    members = [torch.from_numpy(np.flatnonzero(keep[m])) for m in indices]
    for m, mem in zip(indices, members):
        log.info("pool: training model %d of %d (%d examples)", m + 1, keep.shape[0] - external_target(cfg), len(mem))
    return _train_artifacts(Recipe.of(cfg), data, members, [model_seed(cfg, m) for m in indices], device,
                            [f"pool model {m}" for m in indices], logger, on_epoch)


def _train_artifacts(recipe: Recipe, data: ImageData, members: list[torch.Tensor], seeds: list[int], device: str,
                     names: list[str], logger=None, on_epoch=None, threads: int | None = None) -> list[dict]:
    if threads:  # a worker process (cpu_workers): the job's intra-op thread count
        torch.set_num_threads(threads)
    models = train_models(recipe, data, members, seeds, device, names, logger, on_epoch)
    return [{"state_dict": model.state_dict(),
             "test_acc": evaluate_accuracy(model, data.x_test, data.y_test, data.mean, data.std, device),
             "train_acc": evaluate_accuracy(model, data.x_train[mem], data.y_train[mem], data.mean, data.std,
                                            device)}
            for model, mem in zip(models, members)]


def cpu_workers(cfg, device: str, n_todo: int, fast_path_counts: bool = True) -> int:
    """Processes that train pool models or quantize targets side by side (``cpu_workers``), on a CPU
    only, where one small model cannot fill the cores (and, for training, on the plain path only: the
    fast path trains several models in one process); ``auto`` = the usable cores / ``num_threads``."""
    value = cfg.get("cpu_workers", 1)
    if str(device).startswith("cuda") or (fast_path_counts and use_fast_path(cfg.train, device)) or n_todo < 2:
        return 1
    if str(value) == "auto":
        import os

        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        value = max(1, cores // max(1, int(cfg.get("num_threads") or torch.get_num_threads())))
    return max(1, min(int(value), n_todo))


def get_pool_model(cfg, data: ImageData, keep: np.ndarray, index: int, store: ArtifactStore, device: str,
                   digest: str | None = None, logger=None) -> tuple[nn.Module, dict]:
    """Pool model ``index`` (trained on its IN half, or loaded from the cache) and its utility; the
    external target's row gives the external checkpoint."""
    digest = digest or data_digest(data)
    if is_external(cfg, index):
        return external_model(cfg, data, keep, store, device, digest)
    key = model_key(cfg, digest, index, device)
    art, _ = store.get_or_create("models", key, lambda: _train_pool_models(cfg, data, keep, [index], device, logger)[0])
    model = build_model(cfg.model, data.num_classes, data.in_channels)
    model.load_state_dict(art["state_dict"])
    return model.eval(), {"key": key, "test_acc": art["test_acc"], "train_acc": art["train_acc"]}


def get_scores(cfg, data: ImageData, model_cfg_key: dict, model_fn, store: ArtifactStore, device: str) -> np.ndarray:
    """φ [N, Q] of a model over the training set, cached by (model key, queries)."""
    queries = list(cfg.dataset.get("queries", ["identity", "mirror"]))
    key = versioned({"kind": "scores", "model": cache_key(model_cfg_key), "queries": queries}, SCORER_VERSION)
    # random_aug views: dataset.query_augment ({pad, flip}) or else the training augmentation
    aug = _plain(cfg.dataset.get("query_augment") or cfg.dataset.get("augment", {}) or {})
    if "random_aug" in queries:
        key["query_augment"] = {"pad": int(aug.get("pad", 0)), "flip": bool(aug.get("flip", False))}
    seed = int(cache_key(model_cfg_key)[:8], 16)  # random_aug queries: draws of their own per model
    art, _ = store.get_or_create("scores", key, lambda: {
        "phi": compute_phi(model_fn(), data.x_train, data.y_train, data.mean, data.std, queries, device, seed=seed,
                           augment=(int(aug.get("pad", 0)), bool(aug.get("flip", False))))})
    return art["phi"]


def train_pool(cfg, data: ImageData, keep: np.ndarray, store: ArtifactStore, device: str, indices=None,
               logger=None) -> Pool:
    """Train (or load) every pool model in ``indices`` (default: all) and score it. Models not cached
    yet train ``train.models_per_step`` at a time on the fast path (one at a time on the plain one),
    each model's cache lock held while its group trains, so parallel jobs never train it twice."""
    digest = data_digest(data)
    indices = list(range(keep.shape[0]) if indices is None else indices)
    keys = {m: cache_key(model_key(cfg, digest, m, device)) for m in indices if not is_external(cfg, m)}
    todo = [m for m in keys if not store.exists("models", keys[m])]
    if len(todo) < len(keys):
        log.info("pool: %d of %d models loaded from the cache, %d to train", len(keys) - len(todo), len(keys),
                 len(todo))
    k = max(1, int(cfg.train.get("models_per_step", 4))) if use_fast_path(cfg.train, device) else 1
    workers = cpu_workers(cfg, device, len(todo))
    with _pool_bar(cfg, len(todo)) as on_epoch:
        if workers > 1:
            _train_missing_parallel(cfg, data, keep, store, device, todo, keys, digest, workers, on_epoch)
        else:
            _train_missing(cfg, data, keep, store, device, todo, keys, digest, k, logger, on_epoch)
    phis, test_acc, train_acc, keys_out = [], [], [], []
    for m in indices:
        model, info = get_pool_model(cfg, data, keep, m, store, device, digest, logger)
        phis.append(get_scores(cfg, data, info["key"], lambda model=model: model, store, device))
        test_acc.append(info["test_acc"])
        train_acc.append(info["train_acc"])
        keys_out.append(info["key"])
    return Pool(keep, np.stack(phis), np.array(test_acc), np.array(train_acc), keys_out)


@contextlib.contextmanager
def _pool_bar(cfg, n_models: int):
    """One progress bar over all pool training (models × epochs) with an ETA; yields its tick."""
    if not n_models:
        yield None
        return
    from tqdm.auto import tqdm
    from tqdm.contrib.logging import logging_redirect_tqdm

    epochs = int(cfg.train.epochs)
    with tqdm(total=n_models * epochs, desc=f"pool: training {n_models} models × {epochs} epochs",
              unit="epoch", disable=not bool(cfg.get("progress", True)), dynamic_ncols=True) as bar, \
            logging_redirect_tqdm():  # log lines above the bar, not through it
        yield bar.update


def _train_missing_parallel(cfg, data, keep, store, device, todo, keys, digest, workers: int, on_epoch) -> None:
    """``workers`` spawned processes train one model each at a time, with the job's thread count
    (so each model is the one the job would train alone). Per-epoch curves stay in the workers."""
    base = Recipe.of(cfg)
    recipe = Recipe(_resolved(cfg.train), _resolved(cfg.model), base.pad, base.flip, 0, False, base.pool_size)
    threads = int(cfg.get("num_threads") or torch.get_num_threads())
    log.info("pool: %d models in %d worker processes, %d thread(s) each", len(todo), workers, threads)

    def task(m):
        mem = torch.from_numpy(np.flatnonzero(keep[m]))
        log.info("pool: training model %d of %d (%d examples)", m + 1, keep.shape[0] - external_target(cfg), len(mem))
        return (_train_artifacts, recipe, data, [mem], [model_seed(cfg, m)], device, [f"pool model {m}"], None,
                None, threads)

    jobs = [(keys[m], model_key(cfg, digest, m, device), task, m) for m in todo]
    _fill_in_workers(store, "models", jobs, workers, lambda art: art[0],
                     (lambda n: on_epoch(n * int(cfg.train.epochs))) if on_epoch else None)


def _fill_in_workers(store: ArtifactStore, kind: str, jobs: list[tuple], workers: int, unpack=lambda art: art,
                     on_group=None) -> None:
    """Build the missing artifacts of ``jobs`` = [(cache key, key dict, task, item)] in ``workers``
    spawned processes, ``workers`` at a time: this process holds each group's cache locks (so parallel
    jobs never build one twice), submits ``task(item)`` = (fn, *args) for those still missing and saves
    ``unpack(result)``. ``on_group(n)`` after each group of n."""
    with spawn_pool(workers) as ex:
        for g in range(0, len(jobs), workers):
            group = jobs[g:g + workers]
            with contextlib.ExitStack() as locks:
                for ck, *_ in group:
                    locks.enter_context(store.lock(kind, ck))
                futures = {ck: ex.submit(*task(item)) for ck, _, task, item in group if not store.exists(kind, ck)}
                for ck, key, _, _ in group:
                    if ck in futures:
                        store.save(kind, ck, unpack(futures[ck].result()), key)
            if on_group:
                on_group(len(group))


def _train_missing(cfg, data, keep, store, device, todo, keys, digest, k, logger, on_epoch) -> None:
    for g in range(0, len(todo), k):
        with contextlib.ExitStack() as locks:
            for m in todo[g:g + k]:
                locks.enter_context(store.lock("models", keys[m]))
            group = [m for m in todo[g:g + k] if not store.exists("models", keys[m])]  # another job may have
            if group:
                for m, art in zip(group, _train_pool_models(cfg, data, keep, group, device, logger, on_epoch)):
                    key = model_key(cfg, digest, m, device)
                    store.save("models", keys[m], art, key)
            elif on_epoch:  # trained by another job meanwhile
                on_epoch(len(todo[g:g + k]) * int(cfg.train.epochs))


def calibration_indices(cfg, data: ImageData, keep: np.ndarray, index: int) -> tuple[str, np.ndarray]:
    """Seeded choice of calibration images: the model's members (paper), non-members, or test."""
    source = cfg.quant.get("calibration", "members")
    n = int(cfg.quant.get("n_calib", 1024))
    if source == "members":
        pool_idx = np.flatnonzero(keep[index])
    elif source == "nonmembers":
        pool_idx = np.flatnonzero(~keep[index])
    elif source == "test":
        pool_idx = np.arange(len(data.y_test))
    else:
        raise ValueError(f"quant.calibration={source!r}: allowed: members, nonmembers, test")
    if n > len(pool_idx):
        raise ValueError(f"quant.n_calib={n}: larger than the {len(pool_idx)} {source} images available")
    rng = np.random.default_rng(int(cfg.seed) * 7919 + index)
    return source, np.sort(rng.choice(pool_idx, size=n, replace=False))


def calibration_augment(cfg, data: ImageData):
    """``quant.calib_augment=crop_flip``: random crop (``quant.calib_augment_pad``) + flip
    (``quant.calib_augment_flip``; both default to the training recipe's ``dataset.augment``) of the
    normalised calibration images at every draw; None for ``none``."""
    if cfg.quant.get("calib_augment", "none") != "crop_flip":
        return None
    from src.data.augment import normalized_crop_flip

    aug = cfg.dataset.get("augment", {}) or {}
    pad = cfg.quant.get("calib_augment_pad", aug.get("pad", 0))
    flip = cfg.quant.get("calib_augment_flip", aug.get("flip", False))
    return normalized_crop_flip(int(pad), bool(flip), data.mean, data.std)


def bn_tune(cfg, data: ImageData, keep: np.ndarray, index: int, model: nn.Module, augment, device) -> np.ndarray:
    """``quant.bn_tune``: re-estimate the quantized model's BatchNorm statistics (src/quant/bn_tune.py)
    on ``quant.bn_tune_images`` images drawn from the target's members (``members``) or from the whole
    training set (``train``, the study's code). Returns the training-set indices it read."""
    source = cfg.quant.get("bn_tune", "none")
    if source == "none":
        return np.array([], dtype=np.int64)
    from src.data import normalize
    from src.quant.bn_tune import retune_batchnorm

    pool_idx = np.flatnonzero(keep[index]) if source == "members" else np.arange(len(data.y_train))
    rng = np.random.default_rng(int(cfg.seed) * 7_927 + index)
    chosen = np.sort(rng.choice(pool_idx, size=min(int(cfg.quant.get("bn_tune_images", 1024)), len(pool_idx)),
                                replace=False))
    images = normalize(data.x_train[torch.from_numpy(chosen)], data.mean, data.std)
    gen = torch.Generator().manual_seed(int(cfg.seed) + index)
    used = retune_batchnorm(model, images, int(cfg.quant.get("bn_tune_batches", 100)),
                            int(cfg.quant.get("bn_tune_batch_size", 128)), gen, augment, device)
    log.info("bn_tune: BatchNorm statistics of model %s re-estimated on %d %s images", target_label(cfg, index),
             len(chosen), source)
    return np.unique(chosen[used.numpy()])


def bit_overrides(cfg) -> Overrides:
    """``bitwidth.only|first|last|layers`` of the job (src/quant/policy.py)."""
    return Overrides.of(cfg.get("bitwidth"))


def quant_key(cfg, pool_model_key: dict, layer_bits: dict | None = None, policy_bits: dict | None = None) -> dict:
    """``layer_bits``: the resolved precision per layer; keyed only when ``bitwidth`` overrides are set
    and change the policy's own map ``policy_bits``, so jobs without overrides keep the keys they always
    had and an override that resolves to the policy's map (``bitwidth.last=8`` under ``paper`` at 1.58
    bits) reuses that job's quantization: the method sees the same map either way."""
    spec = QUANTIZERS[cfg.quant.name]
    # keys that do not change the quantized model: speed/display, and the embedded default's shared
    # budget (conf/experiment/default.yaml) where the method has no such budget
    ignored = {"progress", *spec.speed_keys}
    if not spec.iterative:
        ignored.add("iters")
    if cfg.quant.get("act_bits") is None:  # weights only: the keys every job had before activations
        ignored.update(("act_bits", "act_input", "act_learn", "act_lr", "act_grad_scale", "drop_prob"))
        if not spec.needs_calibration:
            ignored.update(("calibration", "n_calib"))
    qcfg = {k: v for k, v in _plain(cfg.quant).items() if k not in ignored}
    control = cfg.quant.name in CONTROLS  # noise / prune: bits and bit policy do not apply
    key = {"kind": "quantized", "model": cache_key(pool_model_key), "quant": qcfg,
           "bits": None if control else float(cfg.bits), "policy": None if control else cfg.bitwidth.policy,
           "dataset": cfg.dataset.name, "seed": int(cfg.seed)}
    if not control and bit_overrides(cfg).active():
        if layer_bits is None:
            raise ValueError("quant_key: bitwidth overrides are set; pass the resolved layer_bits")
        if layer_bits != policy_bits:
            key["layer_bits"] = {n: layer_bits[n] for n in sorted(layer_bits)}
    return versioned(key, spec.version)


def job_layer_bits(cfg, fp_model: nn.Module) -> tuple[dict, dict]:
    """The job's resolved per-layer precision, and the policy's map without the overrides."""
    policy = resolve_layer_bits(fp_model, float(cfg.bits), cfg.bitwidth.policy, cfg.dataset.name, Overrides())
    overrides = bit_overrides(cfg)
    if not overrides.active():
        return policy, policy
    return resolve_layer_bits(fp_model, float(cfg.bits), cfg.bitwidth.policy, cfg.dataset.name, overrides), policy


def _quantized_artifact(cfg, data: ImageData, keep: np.ndarray, index: int, fp_model: nn.Module, device: str,
                        overrides: Overrides) -> dict:
    """The cache artifact of pool model ``index`` quantized as the job says (weights, export, utility)."""
    from src.data import normalize

    source, idx, calib_x = None, np.array([], dtype=np.int64), None
    if cfg.quant.name in NEEDS_CALIBRATION or cfg.quant.get("act_bits") is not None:
        source, idx = calibration_indices(cfg, data, keep, index)
        x_src = data.x_test if source == "test" else data.x_train
        calib_x = normalize(x_src[torch.from_numpy(idx)], data.mean, data.std)
    qcfg = OmegaConf.create(_plain(cfg.quant))
    qcfg.seed, qcfg.progress = int(cfg.seed) + index, bool(cfg.get("progress", True))
    how = (f"{CONTROLS[cfg.quant.name]}={cfg.quant[CONTROLS[cfg.quant.name]]}" if cfg.quant.name in CONTROLS
           else f"{cfg.bits} bits ({cfg.bitwidth.policy} policy"
           + (f"; {overrides.describe()})" if overrides.active() else ")"))
    log.info("quantize: model %s with %s at %s, %s", target_label(cfg, index), cfg.quant.name, how,
             f"{len(idx)} {source} calibration images" if source else "no calibration images")
    augment = calibration_augment(cfg, data)
    res = quantize(fp_model, float(cfg.bits), qcfg, cfg.bitwidth.policy, calib_x, cfg.dataset.name, device,
                   augment, overrides)
    bn_idx = bn_tune(cfg, data, keep, index, res.model, augment, device)
    members = torch.from_numpy(np.flatnonzero(keep[index]))
    return {"state_dict": res.model.state_dict(), "layer_bits": res.layer_bits, "export": res.export,
            "act": res.act, "convergence": res.convergence,
            "seconds": res.seconds, "calib_idx": idx, "calib_source": source, "bn_tune_idx": bn_idx,
            "fold_bn": bool(cfg.quant.get("fold_bn", True)),
            "test_acc": evaluate_accuracy(res.model, data.x_test, data.y_test, data.mean, data.std, device),
            "train_acc": evaluate_accuracy(res.model, data.x_train[members], data.y_train[members], data.mean,
                                           data.std, device)}


def quantize_targets(cfg, data: ImageData, keep: np.ndarray, targets: list[int], store: ArtifactStore,
                     device: str) -> list[QuantTarget]:
    """:func:`quantize_pool_model` for every target. With ``cpu_workers`` > 1 (a CPU) the targets not
    cached yet are first quantized side by side, one per spawned worker process with the job's thread
    count (the same artifacts as in this process), each saved here under its cache lock."""
    if cfg.quant.name not in FULL_PRECISION and len(targets) > 1:
        digest = data_digest(data)
        todo = {}
        for t in targets:
            fp_model, info = get_pool_model(cfg, data, keep, t, store, device, digest)
            key = quant_key(cfg, info["key"], *job_layer_bits(cfg, fp_model))
            if not store.exists("quantized", cache_key(key)):
                todo[t] = key
        workers = cpu_workers(cfg, device, len(todo), fast_path_counts=False)
        if workers > 1:
            _quantize_parallel(cfg, data, keep, todo, store, device, workers)
    return [quantize_pool_model(cfg, data, keep, t, store, device) for t in targets]


def _resolved(node):
    """A config node resolved here, inside the job: worker processes have no Hydra context."""
    return OmegaConf.create(OmegaConf.to_container(node, resolve=True))


def _quantize_parallel(cfg, data, keep, todo: dict, store: ArtifactStore, device: str, workers: int) -> None:
    threads = int(cfg.get("num_threads") or torch.get_num_threads())
    job = _resolved(cfg)
    job.progress = False
    log.info("quantize: targets %s with %s in %d worker processes, %d thread(s) each", list(todo), cfg.quant.name,
             workers, threads)
    jobs = [(cache_key(key), key, lambda t: (_quantize_worker, job, data, keep, t, device, threads), t)
            for t, key in todo.items()]
    _fill_in_workers(store, "quantized", jobs, workers)


def _quantize_worker(cfg, data, keep, index: int, device: str, threads: int) -> dict:
    torch.set_num_threads(threads)
    store = ArtifactStore(cfg.paths.cache_dir, lock=cfg.get("cache_lock", "soft"), device=device)
    fp_model, _ = get_pool_model(cfg, data, keep, index, store, device)  # trained and cached by the job
    return _quantized_artifact(cfg, data, keep, index, fp_model, device, bit_overrides(cfg))


def quantize_pool_model(cfg, data: ImageData, keep: np.ndarray, index: int, store: ArtifactStore, device: str,
                        digest: str | None = None) -> QuantTarget:
    """Quantize pool model ``index`` with (quant, bits, policy), calibrating on its members; cached."""
    digest = digest or data_digest(data)
    fp_model, info = get_pool_model(cfg, data, keep, index, store, device, digest)
    if cfg.quant.name in FULL_PRECISION:
        phi = get_scores(cfg, data, info["key"], lambda: fp_model, store, device)
        return QuantTarget(index, fp_model, phi, info["test_acc"], info["train_acc"], {}, 0.0, np.array([], int), {})
    overrides = bit_overrides(cfg)
    key = quant_key(cfg, info["key"], *job_layer_bits(cfg, fp_model))

    art, _ = store.get_or_create("quantized", key,
                                 lambda: _quantized_artifact(cfg, data, keep, index, fp_model, device, overrides))
    qmodel = build_model(cfg.model, data.num_classes, data.in_channels)
    if art["fold_bn"]:
        fold_batchnorm(qmodel)
    restore_act_quant(qmodel, art.get("act"))
    qmodel.load_state_dict(art["state_dict"])
    qmodel.eval()
    phi = get_scores(cfg, data, key, lambda: qmodel, store, device)
    return QuantTarget(index, qmodel, phi, art["test_acc"], art["train_acc"], art["layer_bits"], art["seconds"],
                       art["calib_idx"], art["export"], art.get("act") or {}, art.get("convergence") or [])


def _target_list(cfg) -> list[int]:
    """``targets=all`` (or ``n_targets=all``): every pool model, each attacked with the other
    n_models − 1 as references (leave-one-out, as the LiRA reference code does)."""
    if "all" in (str(cfg.get("n_targets")), str(cfg.get("targets"))):
        return list(range(int(cfg.n_models)))
    if cfg.get("n_targets"):
        return list(range(int(cfg.n_targets)))
    return [int(t) for t in cfg.targets]


def target_indices(cfg) -> list[int]:
    """Rows of the keep matrix attacked: pool models ``targets``, or with independent targets the
    rows ``n_models + t`` after the pool; the external target's row ``n_models``."""
    if external_target(cfg):
        return [int(cfg.n_models)]
    offset = int(cfg.n_models) if independent_targets(cfg) else 0
    return [offset + t for t in _target_list(cfg)]


def reference_phi(cfg, data: ImageData, keep: np.ndarray, pool: Pool, store: ArtifactStore,
                  device: str) -> dict[str, np.ndarray]:
    """φ of the reference models, by kind: ``fp`` = the FP pool (``attack.reference=fp``, the paper),
    ``matched`` = every pool model quantized with the job's quantizer and bits (the attacker knows
    the deployment pipeline); ``attack.reference=both`` gives both, ``fp`` first."""
    ref = cfg.attack.get("reference", "fp")
    if ref == "fp" or cfg.quant.name in FULL_PRECISION:
        return {"fp": pool.phi}
    matched = np.stack([q.phi for q in quantize_targets(cfg, data, keep, list(range(keep.shape[0])), store, device)])
    return {"matched": matched} if ref == "matched" else {"fp": pool.phi, "matched": matched}


def check_resemblance(cfg, keep: np.ndarray, pool: Pool, targets: list[int], warnings: list[str]) -> dict | None:
    """``target=external``: the target's accuracies and loss gap against its references' range
    (src/report/resemblance.py); a line is logged and added to ``warnings`` when it falls outside."""
    if not external_target(cfg):
        return None
    from src.report.resemblance import resemblance, resemblance_warning

    check = resemblance(pool, targets[0], reference_models(cfg, keep, targets[0]))
    line = resemblance_warning(check)
    if line:
        log.warning(line)
        warnings.append(line)
    return check


def prepared_references(cfg, keep: np.ndarray, ref_phi: np.ndarray, target: int, log_p=None):
    """The references of ``target`` (every other pool model), prepared once for every φ scored
    against them (src/attacks/registry.py); ``log_p``: the PoolLogProb of ``ref_phi``, if kept."""
    from src.attacks import References

    refs = np.array(reference_models(cfg, keep, target))
    return References(ref_phi[refs], keep[refs], cfg.attack, log_p=None if log_p is None else partial(log_p.rows, refs))


def attack_target(cfg, keep: np.ndarray, ref_phi: np.ndarray, target: int, target_phi: np.ndarray) -> dict:
    """Membership scores [N] per attack for one target; references = every other pool model."""
    return prepared_references(cfg, keep, ref_phi, target).scores(list(cfg.attack.names), target_phi)


def attack_scores(cfg, keep: np.ndarray, pool: Pool, quantized: list[QuantTarget], refs: dict[str, np.ndarray]):
    """Every attack's scores: (``scores`` {reference kind: {target: {attack: [N]}}} of the quantized
    targets, ``fp_scores`` {target: …} of their FP originals, ``ref_out`` {kind: {target: pseudo-target
    non-member scores}} for the reference-calibrated threshold). With FP references a quantized
    target and its FP original are scored against the same prepared references; every set of
    references taken from a pool reads the pool's log sigmoid(φ), made once."""
    from src.attacks import PoolLogProb

    names = list(cfg.attack.names)
    phis = {"fp": pool.phi, **refs}
    log_p = {kind: PoolLogProb(phi) for kind, phi in phis.items()}
    scores: dict[str, dict] = {kind: {} for kind in refs}
    fp_scores = {}
    for q in quantized:
        for kind, phi in refs.items():
            prepared = prepared_references(cfg, keep, phi, q.index, log_p[kind])
            scores[kind][q.index] = prepared.scores(names, q.phi)
            if kind == "fp":
                fp_scores[q.index] = prepared.scores(names, pool.phi[q.index])
        if q.index not in fp_scores:
            prepared = prepared_references(cfg, keep, pool.phi, q.index, log_p["fp"])
            fp_scores[q.index] = prepared.scores(names, pool.phi[q.index])
    ref_out = {kind: pseudo_target_scores(cfg, keep, phi, [q.index for q in quantized], log_p[kind])
               for kind, phi in phis.items()}
    return scores, fp_scores, ref_out


def _pseudo_targets(cfg, keep: np.ndarray, target: int) -> list[tuple[int, tuple[int, ...]]]:
    """(pseudo-target, the models that attack it) for ``target``: each of its first
    ``attack.threshold_refs`` references, attacked by the remaining references."""
    refs = reference_models(cfg, keep, target)
    return [(r, tuple(m for m in refs if m != r)) for r in refs[:int(cfg.attack.get("threshold_refs", 4))]]


def reference_out_scores(cfg, keep: np.ndarray, ref_phi: np.ndarray, target: int, prepared: dict | None = None,
                         log_p=None) -> dict[str, np.ndarray] | None:
    """Attack scores of the non-members of a few pseudo-targets, for a threshold fixed without the
    target's labels (src/attacks/threshold.py): each of the first ``attack.threshold_refs`` references
    is attacked by the remaining references, as the target is. None when the pool is too small for
    the attacks once two models (target and pseudo-target) are left out. ``prepared``: {models:
    References} to take references from and leave them in (:func:`pseudo_target_scores`); ``log_p``:
    the PoolLogProb of ``ref_phi``, if kept."""
    from src.attacks import References

    names = list(cfg.attack.names)
    out: dict[str, list[np.ndarray]] = {name: [] for name in names}
    pairs = _pseudo_targets(cfg, keep, target)
    prepared = {} if prepared is None else prepared
    for r, others in pairs:
        try:
            if others not in prepared:
                rows = list(others)
                prepared[others] = References(ref_phi[rows], keep[rows], cfg.attack,
                                              log_p=None if log_p is None else partial(log_p.rows, rows))
            s = prepared[others].scores(names, ref_phi[r])
        except ValueError:  # some example lacks an IN or OUT reference among the others
            return None
        for name, v in s.items():
            out[name].append(v[~keep[r]])
    return {name: np.concatenate(v) for name, v in out.items()} if pairs else None


def pseudo_target_scores(cfg, keep: np.ndarray, ref_phi: np.ndarray, targets: list[int], log_p=None) -> dict:
    """:func:`reference_out_scores` of every target. Two targets that are each other's pseudo-targets
    leave out the same two models (independent targets share all their references), so references
    prepared for one set of models serve every pseudo-target it attacks; each is kept until its last
    use."""
    uses = Counter(others for t in targets for _, others in _pseudo_targets(cfg, keep, t))
    prepared: dict = {}
    out = {}
    for t in targets:
        out[t] = reference_out_scores(cfg, keep, ref_phi, t, prepared, log_p)
        for _, others in _pseudo_targets(cfg, keep, t):
            uses[others] -= 1
            if not uses[others]:
                prepared.pop(others, None)
    return out


def result_warnings(results: dict) -> list[str]:
    """Warnings that only the finished computation can raise (unsettled learned rounding)."""
    from src.quant.rounding import convergence_warning

    line = convergence_warning(((results.get("quant") or {}).get("convergence") or {}).get("summary") or {})
    return [line] if line else []
