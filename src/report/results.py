"""The job's local results (the source of truth; W&B is only a sink).

``results.json`` holds the resolved config, utility and per-attack metrics (per target, mean, CI,
ROC points) for the quantized targets (``attacks``) and the same attacks against the
full-precision targets (``fp_attacks``). ``scores.npz`` holds everything needed to recompute them
(schema in the README, "Outputs"):

    phi [M,N,Q] float32      φ of every full-precision pool model, every training example, every query
    target_phi [T,N,Q]       φ of the quantized targets
    ref_phi [M,N,Q]          φ of the quantized reference models (attack.reference=matched or both)
    keep [M,N] bool          membership; the target's ground truth is keep[target_ids[i]]
    target_ids [T] int       pool indices of the targets
    labels [N] int           class labels of the training examples
    attack_<name> [T,N]      membership scores of each attack against the quantized targets
                             (FP references; matched ones with attack.reference=matched)
    matched_attack_<name>    [T,N], attack.reference=both only: the same with matched references
    fp_attack_<name> [T,N]   the same against the full-precision targets
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
from omegaconf import OmegaConf

from src.cache import atomic_write_bytes, atomic_write_text, cache_key

METRIC_KEYS = ("auc", "balanced_accuracy", "tpr_at_fpr_1e-2", "tpr_at_fpr_1e-3", "tpr_at_fpr_1e-4")


def job_dir() -> Path:
    """The Hydra job's output dir (run or multirun subdir); cwd outside Hydra."""
    try:
        from hydra.core.hydra_config import HydraConfig

        return Path(HydraConfig.get().runtime.output_dir)
    except Exception:
        return Path.cwd()


def _evaluate(cfg, keep: np.ndarray, scores: dict[int, dict[str, np.ndarray]]) -> dict:
    from src.attacks.metrics import aggregate, attack_metrics, pooled_roc, roc_points

    fprs = tuple(float(f) for f in cfg.attack.get("fprs", (1e-2, 1e-3, 1e-4)))
    n_boot = int(cfg.attack.get("bootstrap", 200))
    out = {}
    for name in cfg.attack.names:
        per_target = [attack_metrics(s[name], keep[t], fprs=fprs, n_bootstrap=n_boot, seed=int(cfg.seed))
                      for t, s in scores.items()]
        stats = aggregate(per_target)  # {metric: {mean, std, ci, n, values}}
        agg = {k: v["mean"] for k, v in stats.items()}
        agg["std"] = {k: v["std"] for k, v in stats.items()}
        agg["ci"] = {k: v["ci"] for k, v in stats.items()}
        agg["ci_kind"] = "t over targets" if len(per_target) > 1 else "bootstrap (members/non-members resampled)"
        agg["n_targets"] = len(per_target)
        fpr, tpr = pooled_roc([s[name] for s in scores.values()], [keep[t] for t in scores])
        pf, pt = roc_points(fpr, tpr)
        agg["per_target"] = per_target
        agg["targets"] = list(scores)
        agg["roc"] = {"fpr": [float(v) for v in pf], "tpr": [float(v) for v in pt]}
        out[name] = agg
    return out


def _clean(obj):
    """JSON-safe: numpy scalars → Python, NaN → None."""
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return _clean(obj.tolist())
    if isinstance(obj, (np.floating, float)):
        v = float(obj)
        return None if math.isnan(v) else v
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, np.bool_):
        return bool(obj)
    return obj


def build_results(cfg, data, pool, quantized, scores, fp_scores, refs, ref_out=None) -> tuple[dict, dict]:
    """(results dict for results.json, arrays for scores.npz). ``scores`` and ``refs`` are keyed by
    reference kind (``fp``/``matched``): the first kind fills ``attacks``; with both, the matched
    one also fills ``attacks_matched``. ``ref_out`` {kind: {target: pseudo-target non-member scores}}
    feeds the reference-calibrated thresholds (src/report/evidence.py)."""
    kinds = list(scores)
    primary = scores[kinds[0]]
    keep = pool.keep
    tids = [q.index for q in quantized]
    fp_test = float(np.mean([pool.test_acc[t] for t in tids]))
    q_test = float(np.mean([q.test_acc for q in quantized]))
    utility = {"fp_test_acc": fp_test, "test_acc": q_test,
               "fp_train_acc": float(np.mean([pool.train_acc[t] for t in tids])),
               "train_acc": float(np.mean([q.train_acc for q in quantized])),
               "accuracy_drop": fp_test - q_test,
               "pool_test_acc_mean": float(pool.test_acc.mean()),
               "per_target": [{"target": q.index, "fp_test_acc": float(pool.test_acc[q.index]),
                               "test_acc": q.test_acc, "fp_train_acc": float(pool.train_acc[q.index]),
                               "train_acc": q.train_acc} for q in quantized]}
    utility["gen_gap"] = utility["train_acc"] - utility["test_acc"]
    utility["fp_gen_gap"] = utility["fp_train_acc"] - utility["fp_test_acc"]
    job = {"dataset": cfg.dataset.name, "model": cfg.model.name, "quant": cfg.quant.name,
           "bits": 32.0 if cfg.quant.name in ("none", "fp") else float(cfg.bits),
           "policy": cfg.bitwidth.policy, "targets": tids, "reference": cfg.attack.get("reference", "fp"),
           "n_models": int(cfg.n_models), "n_examples": int(keep.shape[1])}
    from src.quant import CONTROLS, FULL_PRECISION
    from src.quant.policy import Overrides

    if cfg.quant.name not in FULL_PRECISION:  # per-layer overrides: part of the job's identity ("last 4")
        job["layers"] = Overrides.of(cfg.get("bitwidth")).describe()

    if cfg.quant.name in CONTROLS:  # a float perturbation, not a quantizer: its strength replaces bits
        key = CONTROLS[cfg.quant.name]
        job.update(bits=32.0, control={"key": key, "value": float(cfg.quant[key])})
    results = {
        "config": OmegaConf.to_container(cfg, resolve=True),
        "job": job,
        "utility": utility,
        "attacks": _evaluate(cfg, keep, primary),
        "fp_attacks": _evaluate(cfg, keep, fp_scores),
        # which pool: cache keys of its models (their manifests are in paths.cache_dir/models/)
        "pool": {"data": pool.model_keys[0]["data"] if pool.model_keys else None,
                 "model_keys": [cache_key(k) for k in pool.model_keys]},
        "quant": {"layer_bits": quantized[0].layer_bits if quantized else {},
                  "seconds": [q.seconds for q in quantized],
                  "calib_idx": {str(q.index): [int(i) for i in q.calib_idx] for q in quantized}},
    }
    arrays = {"phi": pool.phi.astype(np.float32), "keep": keep.astype(bool),
              "target_phi": np.stack([q.phi for q in quantized]).astype(np.float32),
              "target_ids": np.array(tids, dtype=np.int64), "labels": data.y_train.numpy().astype(np.int64)}
    if "matched" in refs:
        arrays["ref_phi"] = refs["matched"].astype(np.float32)
    if len(kinds) > 1:
        results["attacks_matched"] = _evaluate(cfg, keep, scores["matched"])
    _add_evidence(cfg, keep, quantized, results, scores, fp_scores, ref_out or {})
    for name in cfg.attack.names:
        arrays[f"attack_{name}"] = np.stack([primary[t][name] for t in tids]).astype(np.float64)
        if len(kinds) > 1:
            arrays[f"matched_attack_{name}"] = np.stack([scores["matched"][t][name] for t in tids]).astype(np.float64)
        arrays[f"fp_attack_{name}"] = np.stack([fp_scores[t][name] for t in tids]).astype(np.float64)
    return _clean(results), arrays


def _add_evidence(cfg, keep, quantized, results, scores, fp_scores, ref_out) -> None:
    """Paired Δ, calibration subsets, ε lower bound, per-example shifts, reference thresholds."""
    from src.quant import NEEDS_CALIBRATION
    from src.report.evidence import fp_evidence, quantized_evidence

    source = cfg.quant.get("calibration", "members") if cfg.quant.name in NEEDS_CALIBRATION else None
    calib = {q.index: (source, np.asarray(q.calib_idx, dtype=np.int64)) for q in quantized}
    kinds = list(scores)
    blocks = [("attacks", kinds[0])] + ([("attacks_matched", "matched")] if len(kinds) > 1 else [])
    for block, kind in blocks:
        extra = quantized_evidence(cfg, keep, scores[kind], fp_scores, ref_out.get(kind, {}), calib)
        for name, e in extra.items():
            results[block][name].update(e)
    for name, e in fp_evidence(cfg, keep, fp_scores, ref_out.get("fp", {})).items():
        results["fp_attacks"][name].update(e)


def write_job(directory: Path, results: dict, arrays: dict, exports: dict | None = None) -> None:
    """Write scores.npz, the integer export of each quantized target, then results.json (last, so a
    results.json on disk always has its scores next to it)."""
    import io

    import torch

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    atomic_write_bytes(directory / "scores.npz", buf.getvalue())
    for t, export in (exports or {}).items():
        if export:  # codes, scales, zero points per layer: rebuild each weight as scale·(codes − zero_point)
            b = io.BytesIO()
            torch.save(export, b)
            atomic_write_bytes(directory / f"quantized_target{t}.pt", b.getvalue())
    atomic_write_text(directory / "results.json", json.dumps(results, indent=1))
    _per_example_plot(directory, results, arrays)


def _per_example_plot(directory: Path, results: dict, arrays: dict) -> None:
    """per_example.png: FP vs quantized score of every example for the first target (LiRA online when
    run). A figure that fails to draw never costs the results already written."""
    import logging

    if results["job"]["quant"] in ("none", "fp") or not results.get("attacks"):
        return
    name = "lira_online" if "lira_online" in results["attacks"] else next(iter(results["attacks"]))
    try:
        from src.report.plots import per_example_scatter

        t = int(arrays["target_ids"][0])
        per_example_scatter(arrays[f"fp_attack_{name}"][0], arrays[f"attack_{name}"][0], arrays["keep"][t],
                            name, directory / "per_example.png")
    except Exception as e:  # pragma: no cover - plotting backend problems
        logging.getLogger(__name__).warning("per_example.png not drawn: %s", e)


def _fmt(v, ci=None) -> str:
    if v is None:
        return "  n/a"
    s = f"{v:.4f}"
    if ci and ci[0] is not None:
        s += f" [{ci[0]:.4f}, {ci[1]:.4f}]"
    return s


def print_results(results: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    job, u = results["job"], results["utility"]
    bits = "fp" if job["quant"] in ("none", "fp") else f"{job['bits']:g}-bit"
    if job.get("control"):
        bits = f"{job['control']['key']}={job['control']['value']:g}"
    if job.get("layers"):
        bits += f" ({job['layers']})"
    title = (f"{job['dataset']} / {job['model']} / {job['quant']} {bits}  "
             f"targets {job['targets']}  reference={job['reference']}")
    console = Console(width=160)
    console.print(f"[bold]{title}[/bold]")
    console.print(f"test accuracy {u['test_acc']:.4f} (full precision {u['fp_test_acc']:.4f}, drop "
                  f"{u['accuracy_drop']:+.4f}); train accuracy {u['train_acc']:.4f} (fp {u['fp_train_acc']:.4f})")
    table = Table("attack", "target", "AUC [95% CI]", "bal. acc", "TPR@1e-2", "TPR@1e-3", "TPR@1e-4")
    blocks = [("quantized", results["attacks"])]
    if "attacks_matched" in results:
        blocks.append(("quantized, matched refs", results["attacks_matched"]))
    for kind, block in blocks + [("fp", results["fp_attacks"])]:
        for name, m in block.items():
            ci = m.get("ci", {})
            table.add_row(name, kind, _fmt(m["auc"], ci.get("auc")), _fmt(m["balanced_accuracy"]),
                          _fmt(m["tpr_at_fpr_1e-2"]), _fmt(m["tpr_at_fpr_1e-3"]), _fmt(m["tpr_at_fpr_1e-4"]))
    console.print(table)
