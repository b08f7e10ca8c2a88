"""Weight-only vs weight-and-activation (W/A) jobs of one sweep: a table and a figure.

    python -m src.report.activations <sweep dir> [--attack lira_online_fixed] [--out DIR]

One panel per quantizer: test accuracy (x) against the paired ΔAUC vs the FP target (y, 95 % CI), one
marker per activation precision (weights only, A8, A4, …), a line joining the points of one weight
bit-width, so a W/A point sits next to its weight-only twin. Filled: the CI excludes 0. The table
lists the same rows with TPR at 1 % and 0.1 % FPR. Writes ``activations.png`` and ``activations.md``
(default: into the sweep dir).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from src.report import summary as S
from src.report.labels import series_style

WEIGHTS_ONLY = "weights only"
SEQUENTIAL = "weights only, sequential"


def act_label(row: dict) -> str:
    """``A8`` for a W/A job; a weight-only OBC/GPTQ job with quantized-prefix Hessians
    (``quant.sequential=true``, what their W/A jobs always use) is told apart from the default one."""
    if row.get("act_bits") is not None:
        return f"A{int(row['act_bits'])}"
    return SEQUENTIAL if row.get("sequential") else WEIGHTS_ONLY


def rows(sweep: str | Path, attack: str | None = None) -> tuple[list[dict], str]:
    """Summary rows of ``attack`` (default: the sweep's primary attack), FP references, no controls."""
    results = S.collect(sweep)
    if not results:
        raise ValueError(f"no */results.json under {sweep}")
    attack = attack or S.primary_attack(results)
    sequential = {str(r.get("job_dir")): bool(((r.get("config") or {}).get("quant") or {}).get("sequential"))
                  for r in results}
    out = [{**r, "sequential": sequential.get(str(r.get("job_dir")), False)} for r in S.rows_from_results(results)
           if r["attack"] == attack and not r.get("secondary") and r.get("reference") != "matched"
           and not r.get("control")]
    if not out:
        raise ValueError(f"{sweep}: no rows for attack {attack!r}")
    return out, attack


def _order(r: dict):
    return (r["quant"] != "fp", r["quant"], -float(r["bits"] or 0), -(r.get("act_bits") or 99), r.get("sequential"))


def markdown(rows_: list[dict], attack: str) -> str:
    lines = [f"Attack: {attack}. Means over targets; ΔAUC = AUC(quantized) − AUC(FP) on the same examples, "
             "95 % CI (* = excludes 0).", "",
             "| method | W bits | activations | test acc (%) | AUC | TPR@1%FPR (%) | TPR@0.1%FPR (%) | ΔAUC vs FP [95% CI] |",
             "|---|---:|---|---:|---:|---:|---:|---:|"]
    for r in sorted(rows_, key=_order):
        fp = r["quant"] == "fp"
        delta = "–" if fp else S._delta(r, "auc")
        lines.append(f"| {'FP' if fp else r['quant']} | {S.fmt_bits(r['bits'])} | {'–' if fp else act_label(r)} | "
                     f"{S._pct(r.get('test_acc'))} | {r['auc']:.4f} | {S._pct(r.get('tpr_at_fpr_1e-2'))} | "
                     f"{S._pct(r.get('tpr_at_fpr_1e-3'))} | {delta} |")
    return "\n".join(lines) + "\n"


def figure(rows_: list[dict], attack: str, path: Path) -> Path:
    from matplotlib.ticker import MaxNLocator

    from src.report import plots

    quants = list(dict.fromkeys(r["quant"] for r in sorted(rows_, key=_order) if r["quant"] != "fp"))
    acts = sorted({act_label(r) for r in rows_ if r["quant"] != "fp"},
                  key=lambda a: (a.startswith("A"), -int(a[1:]) if a.startswith("A") else a == SEQUENTIAL))
    from src.report.labels import attack_display, quant_display

    fig, axes = plots._axes(len(quants), (5.0, 4.4))
    for ax, quant in zip(axes, quants):
        sub = [r for r in rows_ if r["quant"] == quant and r.get("delta_auc") is not None]
        for bits in sorted({float(r["bits"]) for r in sub}, reverse=True):
            line = sorted((r for r in sub if float(r["bits"]) == bits), key=lambda r: r["test_acc"])
            ax.plot([r["test_acc"] for r in line], [r["delta_auc"] for r in line], color="0.6", lw=0.8, zorder=1)
            top = max(line, key=lambda r: r.get("delta_auc_ci_hi") or r["delta_auc"])
            ax.annotate(f"W{S.fmt_bits(bits)}", (top["test_acc"], top.get("delta_auc_ci_hi") or top["delta_auc"]),
                        textcoords="offset points", xytext=(0, 5), fontsize=8, ha="center")  # above the CIs
        for r in sub:
            st = series_style(acts.index(act_label(r)))
            lo, hi, d = r.get("delta_auc_ci_lo"), r.get("delta_auc_ci_hi"), r["delta_auc"]
            yerr = [[max(d - lo, 0.0)], [max(hi - d, 0.0)]] if lo is not None and hi is not None else None
            w_only = not act_label(r).startswith("A")  # drawn larger, below: visible around a W/A twin
            ax.errorbar(r["test_acc"], d, yerr=yerr, capsize=3, markersize=11 if w_only else 7, linestyle="none",
                        label=act_label(r), **st, zorder=2 if w_only else 3,
                        markerfacecolor=st["color"] if r.get("delta_auc_significant") else "white")
        ax.axhline(0.0, color="black", linewidth=0.8)
        handles = {}
        for h, lab in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(lab, h)
        ax.legend(handles.values(), handles.keys(), fontsize=8, loc="lower right")
        ax.set_xlabel("test accuracy (%)")
        plots._pct_axis(ax.xaxis, False)
        ax.xaxis.set_major_locator(MaxNLocator(5))
        if ax is axes[0]:  # one y label for the row: the panels share its meaning
            ax.set_ylabel("ΔAUC vs FP")
        ax.set_title(f"{quant_display(quant)}: weights only vs W/A", fontsize=10)
        ax.grid(True, alpha=0.3)
        ax.margins(x=0.15, y=0.15)
    plots._caption(fig, [f"ΔAUC = AUC(quantized) − AUC(FP), {attack_display(attack)}; filled: the 95 % CI excludes 0; "
                         "grey lines join the points of one weight bit-width (labelled W4, W2)",
                         plots.interval_text([r.get("n_targets") for r in rows_]).replace("95 %", "95 % paired")])
    fig.savefig(path, dpi=150)
    import matplotlib.pyplot as plt

    plt.close(fig)
    return path


def write(sweep: str | Path, out: str | Path | None = None, attack: str | None = None) -> dict[str, Path]:
    rows_, attack = rows(sweep, attack)
    out = Path(out or sweep)
    out.mkdir(parents=True, exist_ok=True)
    md = out / "activations.md"
    md.write_text(markdown(rows_, attack))
    return {"md": md, "png": figure(rows_, attack, out / "activations.png")}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m src.report.activations", description=__doc__.splitlines()[0])
    ap.add_argument("sweep", help="a multirun dir holding weight-only and W/A jobs (<job>/results.json)")
    ap.add_argument("--attack", default=None, help="attack to report (default: the sweep's primary attack)")
    ap.add_argument("--out", default=None, help="folder for activations.md/.png (default: the sweep dir)")
    args = ap.parse_args(argv)
    try:
        paths = write(args.sweep, args.out, args.attack)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {paths['md']}, {paths['png']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
