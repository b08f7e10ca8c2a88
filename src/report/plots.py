"""The two summary figures: privacy–utility trade-off and log-log ROC.

Both are drawn with matplotlib's Agg backend (no display needed) and saved as PNG.
Low-FPR behaviour is what matters for membership inference (Carlini et al., "Membership
Inference Attacks From First Principles", 2022, §3), hence log-log ROC axes and
TPR@0.1%FPR as the privacy axis.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

MARKERS = "osD^vP<>Xhp*"
ROC_FLOOR = 1e-5  # results.json ROCs are downsampled down to this FPR


def _combos(items: list[Any], get) -> list[tuple]:
    return list(dict.fromkeys(get(x) for x in items))


def _axes(n: int, size: tuple[float, float] = (5.0, 4.2)):
    fig, axes = plt.subplots(1, n, figsize=(size[0] * n, size[1]), squeeze=False)
    return fig, list(axes[0])


def privacy_utility(rows: list[dict], attack: str | None, path: str | Path) -> Path:
    """Test accuracy (x) vs TPR@0.1%FPR (y) of ``attack``: one marker shape per method,
    bits annotated next to each point, FP a black star. ``rows`` are summary rows
    (:func:`src.report.summary.rows_from_results`); error bars show the bootstrap CI
    when present. One panel per (dataset, model)."""
    rows = [r for r in rows if r["attack"] == attack and r.get("test_acc") is not None]
    combos = _combos(rows, lambda r: (r["dataset"], r["model"])) or [(None, None)]
    methods = [m for m in _combos(rows, lambda r: r["quant"]) if m != "fp"]
    fig, axes = _axes(len(combos))
    for ax, (ds, model) in zip(axes, combos):
        sub = [r for r in rows if (r["dataset"], r["model"]) == (ds, model)]
        ys = [r["tpr_at_fpr_1e-3"] for r in sub if r.get("tpr_at_fpr_1e-3") is not None]
        for r in sub:
            y = r.get("tpr_at_fpr_1e-3")
            if y is None:
                continue
            lo, hi = r.get("tpr_at_fpr_1e-3_ci_lo"), r.get("tpr_at_fpr_1e-3_ci_hi")
            yerr = [[max(y - lo, 0.0)], [max(hi - y, 0.0)]] if lo is not None and hi is not None else None
            if r["quant"] == "fp":
                style = dict(marker="*", color="black", markersize=14, label="FP (32 bit)", zorder=3)
            else:
                i = methods.index(r["quant"])
                style = dict(marker=MARKERS[i % len(MARKERS)], color=f"C{i % 10}", markersize=8,
                             label=str(r["quant"]), linestyle="none")
            ax.errorbar(r["test_acc"], y, yerr=yerr, capsize=3, **style)
            ax.annotate(point_label(r), (r["test_acc"], y), textcoords="offset points", xytext=(5, 4), fontsize=8)
        _control_curves(ax, sub, methods, "tpr_at_fpr_1e-3")
        if ys and min(ys) > 0 and max(ys) / min(ys) > 20:
            ax.set_yscale("log")
        _label_panel(ax, "TPR @ 0.1% FPR", ds, model, attack)
    return _save(fig, path)


def point_label(row: dict) -> str:
    """What tells a method's points apart: control strength, or bits plus per-layer overrides."""
    if row.get("control"):
        return str(row["control"])
    bits = f"{row['bits']:g}b" if row.get("bits") is not None else "?"
    return bits + (f" ({row['layers']})" if row.get("layers") else "")


def _label_panel(ax, ylabel: str, ds, model, attack) -> None:
    """One legend entry per method, axis labels, title, grid."""
    handles, labels = ax.get_legend_handles_labels()
    uniq = dict(zip(labels, handles))
    if uniq:
        ax.legend(uniq.values(), uniq.keys(), fontsize=8)
    ax.set_xlabel("test accuracy")
    ax.set_ylabel(ylabel)
    ax.set_title(f"{ds} / {model} — {attack}" if ds is not None else f"{attack}")
    ax.grid(True, alpha=0.3)


def _save(fig, path) -> Path:
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _control_curves(ax, rows: list[dict], methods: list, metric: str) -> None:
    """Matched-utility controls (noise σ, pruning sparsity sweeps) as dashed curves through their
    points, ordered by accuracy: a quantizer below a curve leaks less at equal accuracy."""
    for quant in dict.fromkeys(r["quant"] for r in rows if r.get("control")):
        pts = sorted((r["test_acc"], r[metric]) for r in rows
                     if r["quant"] == quant and r.get(metric) is not None)
        if len(pts) > 1:
            i = methods.index(quant)
            ax.plot(*zip(*pts), linestyle="--", color=f"C{i % 10}", alpha=0.7)


def privacy_utility_delta(rows: list[dict], attack: str | None, path: str | Path) -> Path:
    """Test accuracy (x) vs the paired ΔAUC = AUC(quantized) − AUC(FP) (y) with its 95 % CI: points
    below 0 leak less than the full-precision model, and a CI that crosses 0 is not a reduction."""
    rows = [r for r in rows if r["attack"] == attack and r["quant"] != "fp"
            and r.get("test_acc") is not None and r.get("delta_auc") is not None]
    combos = _combos(rows, lambda r: (r["dataset"], r["model"])) or [(None, None)]
    methods = _combos(rows, lambda r: r["quant"])
    fig, axes = _axes(len(combos))
    for ax, (ds, model) in zip(axes, combos):
        sub = [r for r in rows if (r["dataset"], r["model"]) == (ds, model)]
        for r in sub:
            i = methods.index(r["quant"])
            lo, hi, d = r.get("delta_auc_ci_lo"), r.get("delta_auc_ci_hi"), r["delta_auc"]
            yerr = [[max(d - lo, 0.0)], [max(hi - d, 0.0)]] if lo is not None and hi is not None else None
            ax.errorbar(r["test_acc"], d, yerr=yerr, capsize=3, marker=MARKERS[i % len(MARKERS)],
                        color=f"C{i % 10}", markersize=8, label=str(r["quant"]), linestyle="none",
                        markerfacecolor=f"C{i % 10}" if r.get("delta_auc_significant") else "white")
            ax.annotate(point_label(r), (r["test_acc"], d), textcoords="offset points", xytext=(5, 4), fontsize=8)
        _control_curves(ax, sub, methods, "delta_auc")
        ax.axhline(0.0, color="black", linewidth=0.8)
        _label_panel(ax, "ΔAUC vs FP (filled: CI excludes 0)", ds, model, attack)
    return _save(fig, path)


def per_example_scatter(fp_scores, q_scores, is_member, attack: str, path: str | Path) -> Path:
    """FP vs quantized membership score of every example (one target), members and non-members
    coloured: points on the diagonal kept their exposure, the spread shows per-example shifts."""
    import numpy as np

    fig, (ax,) = _axes(1, (5.0, 4.6))
    y = np.asarray(is_member, dtype=bool)
    for sel, name, c in ((~y, "non-members", "C0"), (y, "members", "C3")):
        ax.scatter(np.asarray(fp_scores)[sel], np.asarray(q_scores)[sel], s=4, alpha=0.4, color=c, label=name)
    lo = float(min(np.min(fp_scores), np.min(q_scores)))
    hi = float(max(np.max(fp_scores), np.max(q_scores)))
    ax.plot([lo, hi], [lo, hi], color="black", linewidth=0.8)
    ax.set_xlabel(f"{attack} score, full precision")
    ax.set_ylabel(f"{attack} score, quantized")
    ax.legend(fontsize=8, markerscale=3)
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _label(result: dict) -> str:
    job = result.get("job", {})
    bits = job.get("bits")
    bits = f"{float(bits):g}" if bits is not None else "?"
    policy = job.get("policy")
    extra = f" {policy}" if policy not in (None, "uniform") else ""
    extra += f" ({job['layers']})" if job.get("layers") else ""
    return f"{job.get('quant')} {bits}b{extra}"


def _plot_curve(ax, roc: dict | None, **style) -> None:
    if not roc or not roc.get("fpr"):
        return
    pts = [(f, t) for f, t in zip(roc["fpr"], roc["tpr"]) if f > 0 and t > 0]
    if pts:
        ax.plot([p[0] for p in pts], [p[1] for p in pts], **style)


def roc(results: list[dict], attack: str | None, path: str | Path) -> Path:
    """Log-log ROC of ``attack`` for every job (``results`` as returned by
    :func:`src.report.summary.collect`, or a single job's results in a list), plus the
    full-precision target's curve (dashed black) once per (dataset, model)."""
    from src.quant import FULL_PRECISION

    def is_fp_job(r: dict) -> bool:  # quant=none|fp: the full-precision row
        return str(r.get("job", {}).get("quant", "")).lower() in FULL_PRECISION

    combos = _combos(results, lambda r: (r["job"].get("dataset"), r["job"].get("model")))
    combos = combos or [(None, None)]
    fig, axes = _axes(len(combos), size=(5.5, 4.8))
    for ax, (ds, model) in zip(axes, combos):
        sub = [r for r in results if (r["job"].get("dataset"), r["job"].get("model")) == (ds, model)]
        fp_done = False
        for r in sorted(sub, key=lambda r: not is_fp_job(r)):
            if is_fp_job(r):
                if not fp_done:
                    _plot_curve(ax, (r.get("attacks") or {}).get(attack, {}).get("roc"),
                                color="black", linestyle="--", linewidth=2, label="FP (32 bit)")
                    fp_done = True
                continue
            if not fp_done:
                fpa = (r.get("fp_attacks") or {}).get(attack, {}).get("roc")
                if fpa:
                    _plot_curve(ax, fpa, color="black", linestyle="--", linewidth=2, label="FP (32 bit)")
                    fp_done = True
            _plot_curve(ax, (r.get("attacks") or {}).get(attack, {}).get("roc"),
                        linewidth=1.2, label=_label(r))
        ax.plot([ROC_FLOOR, 1], [ROC_FLOOR, 1], color="grey", linewidth=0.8, linestyle=":", label="chance")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlim(ROC_FLOOR, 1)
        ax.set_ylim(ROC_FLOOR, 1)
        ax.set_xlabel("false positive rate")
        ax.set_ylabel("true positive rate")
        ax.set_title(f"{ds} / {model} — {attack}" if ds is not None else f"{attack}")
        ax.grid(True, which="both", alpha=0.2)
        ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
