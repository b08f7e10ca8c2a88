"""The job's local results (the source of truth; W&B is only a sink).

``results.json`` holds the resolved config, utility and per-attack metrics (per target, mean, CI,
ROC points) for the quantized targets (``attacks``) and the same attacks against the
full-precision targets (``fp_attacks``). ``scores.npz`` holds everything needed to recompute them
(schema in docs/outputs.md):

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
from src.report.collapse import COLLAPSE_NOTE, collapsed, collapse_threshold, num_classes_of
from src.report.evaluate import evaluate_attacks as _evaluate
from src.report.labels import BELOW_RESOLUTION, NOT_APPLICABLE, NOT_CERTIFIED, target_label

METRIC_KEYS = ("auc", "balanced_accuracy", "tpr_at_fpr_1e-2", "tpr_at_fpr_1e-3", "tpr_at_fpr_1e-4")


def job_dir() -> Path:
    """The Hydra job's output dir (run or multirun subdir); cwd outside Hydra."""
    try:
        from hydra.core.hydra_config import HydraConfig

        return Path(HydraConfig.get().runtime.output_dir)
    except Exception:
        return Path.cwd()


def _dataset_display(cfg) -> str:
    from src.report.labels import dataset_display

    ds = cfg.dataset
    return dataset_display({"dataset": ds.name}, {"dataset": {"name": ds.name, "display_name": ds.get("display_name"),
                                                              "root": ds.get("root")}})


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


def build_results(cfg, data, pool, quantized, scores, fp_scores, refs, ref_out=None,
                  releases=None) -> tuple[dict, dict]:
    """(results dict for results.json, arrays for scores.npz). ``scores`` and ``refs`` are keyed by
    reference kind (``fp``/``matched``): the first kind fills ``attacks``; with both, the matched
    one also fills ``attacks_matched``. ``ref_out`` {kind: {target: pseudo-target non-member scores}}
    feeds the reference-calibrated thresholds (src/report/evidence.py). ``releases``: the joint
    attack over released versions (src/releases.py), or None."""
    from src.attacks.metrics import ScoreOrders
    from src.attacks.pooled import example_weights

    kinds = list(scores)
    primary = scores[kinds[0]]
    keep = pool.keep
    tids = [q.index for q in quantized]
    # one draw of bootstrap weights for every attack, quantized and FP alike (pairs the pooled Δ)
    weights = example_weights([keep[t] for t in tids], int(cfg.attack.get("bootstrap", 200)), int(cfg.seed))
    views: dict[str, dict] = {"fp": {}, "fp_attacks": {}, "matched": {}}
    orders = ScoreOrders()  # every score array sorted once: its metrics, paired Δ and subsets read it
    fp_test = float(np.mean([pool.test_acc[t] for t in tids]))
    q_test = float(np.mean([q.test_acc for q in quantized]))
    utility = {"fp_test_acc": fp_test, "test_acc": q_test,
               "fp_train_acc": float(np.mean([pool.train_acc[t] for t in tids])),
               "train_acc": float(np.mean([q.train_acc for q in quantized])),
               "accuracy_drop": fp_test - q_test,
               "pool_test_acc_mean": float(pool.test_acc[:int(cfg.n_models)].mean()),  # the pool's own rows
               "per_target": [{"target": q.index, "fp_test_acc": float(pool.test_acc[q.index]),
                               "test_acc": q.test_acc, "fp_train_acc": float(pool.train_acc[q.index]),
                               "train_acc": q.train_acc} for q in quantized]}
    utility["gen_gap"] = utility["train_acc"] - utility["test_acc"]
    utility["fp_gen_gap"] = utility["fp_train_acc"] - utility["fp_test_acc"]
    job = {"dataset": cfg.dataset.name, "dataset_display": _dataset_display(cfg), "model": cfg.model.name,
           "quant": cfg.quant.name,
           "bits": 32.0 if cfg.quant.name in ("none", "fp") else float(cfg.bits),
           "policy": cfg.bitwidth.policy, "targets": tids, "target_labels": [target_label(cfg, t) for t in tids],
           "reference": cfg.attack.get("reference", "fp"),
           "n_models": int(cfg.n_models), "n_examples": int(keep.shape[1]), "num_classes": int(data.num_classes)}
    utility["collapsed"] = collapsed(q_test, fp_test, data.num_classes)
    from src.quant import CONTROLS, FULL_PRECISION
    from src.quant.policy import Overrides

    if cfg.quant.name not in FULL_PRECISION:  # per-layer overrides: part of the job's identity ("last 4")
        job["layers"] = Overrides.of(cfg.get("bitwidth")).describe()
        if cfg.quant.get("act_bits") is not None:  # W/A: activations quantized too ("W4A8")
            job["act_bits"] = int(cfg.quant.act_bits)

    if cfg.quant.name in CONTROLS:  # a float perturbation, not a quantizer: its strength replaces bits
        key = CONTROLS[cfg.quant.name]
        job.update(bits=32.0, control={"key": key, "value": float(cfg.quant[key])})
    results = {
        "config": OmegaConf.to_container(cfg, resolve=True),
        "job": job,
        "utility": utility,
        "attacks": _evaluate(cfg, keep, primary, weights, views[kinds[0]], orders=orders),
        "fp_attacks": _evaluate(cfg, keep, fp_scores, weights, views["fp_attacks"], orders=orders),
        # which pool: cache keys of its models (their manifests are in paths.cache_dir/models/)
        "pool": {"data": pool.model_keys[0]["data"] if pool.model_keys else None,
                 "model_keys": [cache_key(k) for k in pool.model_keys]},
        "quant": {"layer_bits": quantized[0].layer_bits if quantized else {},
                  # input quantizers per target: {target: {layer: {bits, signed, step}}}
                  **({"act": {str(q.index): q.act for q in quantized}} if any(q.act for q in quantized) else {}),
                  "seconds": [q.seconds for q in quantized],
                  **_convergence(cfg, quantized),
                  "calib_idx": {str(q.index): [int(i) for i in q.calib_idx] for q in quantized}},
    }
    arrays = {"phi": pool.phi.astype(np.float32), "keep": keep.astype(bool),
              "target_phi": np.stack([q.phi for q in quantized]).astype(np.float32),
              "target_ids": np.array(tids, dtype=np.int64), "labels": data.y_train.numpy().astype(np.int64)}
    if "matched" in refs:
        arrays["ref_phi"] = refs["matched"].astype(np.float32)
    if len(kinds) > 1:
        results["attacks_matched"] = _evaluate(cfg, keep, scores["matched"], weights, views["matched"],
                                               orders=orders)
    _add_evidence(cfg, keep, quantized, results, scores, fp_scores, ref_out or {}, weights, views, orders)
    for name in cfg.attack.names:
        arrays[f"attack_{name}"] = np.stack([primary[t][name] for t in tids]).astype(np.float64)
        if len(kinds) > 1:
            arrays[f"matched_attack_{name}"] = np.stack([scores["matched"][t][name] for t in tids]).astype(np.float64)
        arrays[f"fp_attack_{name}"] = np.stack([fp_scores[t][name] for t in tids]).astype(np.float64)
    if releases is not None:
        from src.report.releases import release_results

        results["releases"], extra = release_results(cfg, keep, releases)
        arrays.update(extra)
    return _clean(results), arrays


def _convergence(cfg, quantized) -> dict:
    """Learned rounding (AdaRound, BRECQ): per target and unit, the unsettled share of h(V) and the
    soft and hard reconstruction losses, and the worst unit (src/quant/rounding.py), named by the
    target's display name."""
    from src.quant.rounding import convergence_summary

    per_target = {str(q.index): q.convergence for q in quantized if q.convergence}
    if not per_target:
        return {}
    named = {target_label(cfg, q.index): q.convergence for q in quantized if q.convergence}
    return {"convergence": {"summary": convergence_summary(named), "per_target": per_target}}


def _add_evidence(cfg, keep, quantized, results, scores, fp_scores, ref_out, weights=None, views=None,
                  orders=None) -> None:
    """Paired Δ (per target and pooled), calibration subsets, ε lower bound, per-example shifts,
    reference thresholds."""
    from src.attacks.pooled import pooled_paired
    from src.quant import NEEDS_CALIBRATION
    from src.report.evidence import fp_evidence, quantized_evidence

    source = cfg.quant.get("calibration", "members") if cfg.quant.name in NEEDS_CALIBRATION else None
    calib = {q.index: (source, np.asarray(q.calib_idx, dtype=np.int64)) for q in quantized}
    kinds = list(scores)
    blocks = [("attacks", kinds[0])] + ([("attacks_matched", "matched")] if len(kinds) > 1 else [])
    for block, kind in blocks:
        extra = quantized_evidence(cfg, keep, scores[kind], fp_scores, ref_out.get(kind, {}), calib, orders)
        for name, e in extra.items():
            results[block][name].update(e)
            tids = list(scores[kind])
            fprs = tuple(float(f) for f in cfg.attack.get("fprs", (1e-2, 1e-3, 1e-4)))
            vq, vf = ((views or {}).get(k, {}).get(name) for k in (kind, "fp_attacks"))
            results[block][name]["paired_pooled"] = pooled_paired(
                [scores[kind][t][name] for t in tids], [fp_scores[t][name] for t in tids], [keep[t] for t in tids],
                fprs, weights, views=(vq, vf) if vq is not None and vf is not None else None)
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
    if results.get("releases"):
        from src.report.releases import plot_roc

        plot_roc(directory, results)


def _per_example_plot(directory: Path, results: dict, arrays: dict) -> None:
    """per_example.png: FP vs quantized score of every example for the first target (LiRA online when
    run). A figure that fails to draw never costs the results already written."""
    import logging

    if results["job"]["quant"] in ("none", "fp") or not results.get("attacks"):
        return
    name = "lira_online" if "lira_online" in results["attacks"] else next(iter(results["attacks"]))
    try:
        from src.report.plots import per_example_scatter

        from src.report.labels import dataset_display, target_label, target_labels

        t = int(arrays["target_ids"][0])
        job = results["job"]
        ids, labels = [int(v) for v in job.get("targets") or []], target_labels(job, results.get("config"))
        label = labels[ids.index(t)] if t in ids and len(labels) == len(ids) else target_label(results.get("config"), t)
        what = (f"{job['control']['key']}={job['control']['value']:g}" if job.get("control")
                else f"{job['bits']:g} bit")
        from src.report.labels import attack_display, model_display, quant_display

        title = (f"{dataset_display(job, results.get('config'))} / {model_display(job['model'])} / "
                 f"{quant_display(job['quant'])} {what} — {attack_display(name)}, target {label}")
        shifts = (results["attacks"][name].get("per_example") or {}).get("per_target") or [None]
        per_example_scatter(arrays[f"fp_attack_{name}"][0], arrays[f"attack_{name}"][0], arrays["keep"][t],
                            name, directory / "per_example.png", title=title, stats=shifts[0])
    except Exception as e:  # pragma: no cover - plotting backend problems
        logging.getLogger(__name__).warning("per_example.png not drawn: %s", e)


def _fmt(v, ci=None, ok: bool = True, signed: bool = False, pct: bool = False) -> str:
    """A number (AUC, ΔAUC: 4 decimals) or a rate in % (``pct``: 2 decimals), with its CI."""
    if not ok:
        return BELOW_RESOLUTION
    if v is None:
        return NOT_APPLICABLE
    scale, f = (100.0, "{:+.2f}" if signed else "{:.2f}") if pct else (1.0, "{:+.4f}" if signed else "{:.4f}")
    s = f.format(scale * v)
    if ci and ci[0] is not None:
        s += f" [{f.format(scale * ci[0])}, {f.format(scale * ci[1])}]"
    return s


def _eps(v) -> str:
    """The ε lower bound; a bound of 0 certifies nothing (the attack's ROC is consistent with ε = 0)."""
    if v is None:
        return NOT_APPLICABLE
    return NOT_CERTIFIED if v <= 0 else f"{v:.4f}"


def _ci_kinds(results: dict) -> tuple[str, str]:
    """What the AUC CI and the ΔAUC CI of this job are, in words (both depend on the target count)."""
    m = next(iter(results["attacks"].values()), {})
    k = int(m.get("n_targets") or len(results["job"].get("targets") or [0]))
    n_boot = (results.get("config") or {}).get("attack", {}).get("bootstrap", 200)
    if k > 1:
        auc = f"Student-t over the k = {k} targets (mean ± t·s/√k, clipped to [0, 1])"
        delta = f"mean over the k = {k} targets, Student-t"
    else:
        auc = f"percentile bootstrap, one target ({n_boot} replicates, members and non-members resampled separately)"
        delta = f"paired percentile bootstrap ({n_boot} replicates of the same resampled examples)"
    return auc, delta


def collapse_line(results: dict) -> str | None:
    """'accuracy collapsed: ...' when the quantized targets lost most of their accuracy above chance."""
    job, u = results["job"], results["utility"]
    k = num_classes_of(job, results.get("config"))
    flag = u.get("collapsed")
    flag = collapsed(u.get("test_acc"), u.get("fp_test_acc"), k) if flag is None else flag
    if not flag or job["quant"] in ("none", "fp"):
        return None
    return (f"accuracy collapsed: test accuracy {100 * u['test_acc']:.2f} % < "
            f"{100 * collapse_threshold(u['fp_test_acc'], k):.2f} % (half of FP's {100 * u['fp_test_acc']:.2f} % "
            f"above chance, {100 / k:.2f} %); lower leakage reflects lost utility, not privacy")


def print_results(results: dict) -> None:
    """The job's table: every attack on the quantized (and matched-reference) and the FP targets, with
    what AUC and its CI are, the paired ΔAUC, rates in %, and a legend for the marks it uses."""
    from rich.console import Console
    from rich.table import Table

    from src.report.labels import RESOLUTION_NOTE, dataset_display, metric_label, policy_label, targets_text

    job, u = results["job"], results["utility"]
    bits = "fp" if job["quant"] in ("none", "fp") else f"{job['bits']:g}-bit"
    if job.get("control"):
        bits = f"{job['control']['key']}={job['control']['value']:g}"
    if job.get("policy") not in (None, "uniform", "fp") and job["quant"] not in ("none", "fp"):
        bits += f" ({policy_label(job['policy'], job.get('dataset'))})"
    title = (f"{dataset_display(job, results.get('config'))} / {job['model']} / {job['quant']} {bits}  "
             f"{targets_text(job, results.get('config'))}  reference={job['reference']}")
    console = Console(width=220)  # the table at its natural width (no wrapped or cut cells)
    console.print(f"[bold]{title}[/bold]")
    console.print(f"test accuracy {100 * u['test_acc']:.2f} % (full precision {100 * u['fp_test_acc']:.2f} %, drop "
                  f"{100 * u['accuracy_drop']:+.2f} points); train accuracy {100 * u['train_acc']:.2f} % "
                  f"(full precision {100 * u['fp_train_acc']:.2f} %)")
    line = collapse_line(results)
    if line:
        console.print(f"[bold red]{line}[/bold red]")
    conv = ((results.get("quant") or {}).get("convergence") or {}).get("summary")
    if conv:
        state = "settled" if conv["converged"] else "[bold red]NOT settled[/bold red]"
        console.print(f"rounding {state}: max {100 * conv['max_unsettled']:.2f} % of h(V) unsettled, "
                      f"hard/soft reconstruction loss ≤ {conv['max_hard_over_soft']:.3f}x over {conv['units']} units")
    first = next(iter(results["attacks"].values()), {})
    tprs = [k for k in first if k.startswith("tpr_at_fpr_")] or list(METRIC_KEYS[2:])
    table = Table()
    for head in ("attack", "target", "AUC [95% CI]", "ΔAUC vs FP [95% CI]", "bal. acc (%)",
                 *[metric_label(k).replace(" ", "") + " (%)" for k in tprs], "ε ≥ (95%)"):
        table.add_column(head, no_wrap=True)
    blocks = [("quantized", results["attacks"])]
    if "attacks_matched" in results:
        blocks.append(("quantized, matched refs", results["attacks_matched"]))
    below, uncertified, n_non = False, False, set()
    for kind, block in blocks + [("fp", results["fp_attacks"])]:
        for name, m in block.items():
            ci = m.get("ci", {})
            ok = {k: _resolved(m, k) for k in tprs}
            below |= not all(ok.values())
            uncertified |= m.get("eps_lower_bound") is not None and m["eps_lower_bound"] <= 0
            n_non.update(int(p["n_nonmembers"]) for p in m.get("per_target") or [] if "n_nonmembers" in p)
            d = (m.get("paired") or {}).get("auc")
            delta = NOT_APPLICABLE if not d else (_fmt(d["delta"], d.get("ci"), signed=True)
                                                  + ("*" if d.get("significant") else ""))
            table.add_row(name, kind, _fmt(m["auc"], ci.get("auc")), delta, _fmt(m["balanced_accuracy"], pct=True),
                          *[_fmt(m.get(k), ok=ok[k], pct=True) for k in tprs], _eps(m.get("eps_lower_bound")))
    console.print(table)
    _print_pooled(console, blocks + [("fp", results["fp_attacks"])], tprs)
    auc_ci, delta_ci = _ci_kinds(results)
    console.print("Rates (accuracy, TPR) in %; AUC and ΔAUC on the 0–1 scale (0.5 = chance).")
    console.print(f"AUC: P(member score > non-member score) + ½·P(tie). [95% CI]: {auc_ci}.")
    console.print(f"ΔAUC: AUC(quantized) − AUC(FP) on the same examples (paired); [95% CI]: {delta_ci}; "
                  f"* = the CI excludes 0; {NOT_APPLICABLE} on the FP rows (no difference to itself).")
    if uncertified:
        console.print(f"ε ≥: {NOT_CERTIFIED} = the 95 % lower bound is 0: this attack certifies no leakage.")
    if below:
        n = ", ".join(str(v) for v in sorted(n_non)) or "?"
        console.print(f"{RESOLUTION_NOTE}; N = {n} non-members per target.")
    if results.get("releases"):
        from src.report.releases import print_releases

        print_releases(results)


def _print_pooled(console, blocks, tprs: list[str]) -> None:
    """The pooled ROC over targets beside the per-target mean: TPR at each FPR with its interval and
    the false positives / non-member trials behind it, and the pooled paired Δ."""
    from rich.table import Table

    rows = [(kind, name, m) for kind, block in blocks for name, m in block.items() if m.get("pooled")]
    if not rows:
        return
    table = Table("attack", "target", *[f"pooled TPR@{k[len('tpr_at_fpr_'):]} [95% CI] (FP / non-members)"
                                        for k in tprs], "pooled ΔTPR vs FP [95% CI]")
    for kind, name, m in rows:
        p = m["pooled"]
        cells = []
        for k in tprs:
            a = k[len("tpr_at_fpr_"):]
            cells.append(f"{_fmt(p.get(k), (p.get('ci') or {}).get(k))} ({p.get(f'fp_at_fpr_{a}')} / "
                         f"{p.get('n_nonmembers')})")
        deltas = [f"{k[len('tpr_at_fpr_'):]}: {_fmt(d['delta'], d['ci'], signed=True)}" + ("*" if d.get("significant") else "")
                  for k, d in (m.get("paired_pooled") or {}).items() if k in tprs]
        table.add_row(name, kind, *cells, "; ".join(deltas) or "–")
    console.print(table)
    console.print("pooled: one ROC over all targets' members and non-members (one threshold). [95% CI]: targets "
                  "resampled and examples reweighted, Student-t with T − 1 df, logit scale (docs/attacks.md).")


def _resolved(m: dict, metric: str) -> bool:
    """results.json's flag, or (files written before it) derived from the non-member count."""
    from src.report.labels import resolved

    flag = (m.get("resolved") or {}).get(metric)
    return bool(flag) if flag is not None else resolved(metric, m.get("n_nonmembers"))
