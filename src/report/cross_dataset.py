"""Cross-dataset summary: several sweep dirs (one per dataset) in one table and one figure.

    python -m src.report.cross_dataset SWEEP_DIR [SWEEP_DIR ...] --out OUT_DIR [--attack NAME]
    make cross-dataset SWEEPS="DIR1 DIR2" [OUT=DIR]

Reads each sweep's ``*/results.json`` with the multirun summary's own reader and row model
(:mod:`src.report.summary`), so a row here is exactly a ``summary.csv`` row: per dataset × method ×
bits the test accuracy, AUC, TPR at 1 % and 0.1 % FPR and the paired ΔAUC vs the FP target with its
CI. Writes ``cross_dataset.csv``, ``cross_dataset.md`` and ``cross_dataset.png`` (one panel per
dataset: TPR@0.1 % FPR on a log axis against test accuracy, FP as a star, as in the study's teaser).
"""
from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

from src.report import summary as S

COLUMNS = ("dataset", "model", "quant", "bits", "policy", "attack", "test_acc", "auc", "tpr_at_fpr_1e-2",
           "tpr_at_fpr_1e-3", "n_nonmembers", "delta_auc", "delta_auc_ci_lo", "delta_auc_ci_hi",
           "delta_auc_significant", "tpr_at_fpr_1e-3_ci_lo", "tpr_at_fpr_1e-3_ci_hi", "n_targets", "dataset_display",
           "sweep")


def _label(results: list[dict], sweep: Path) -> str:
    """The experiment's name (``cifar10-cpu``, ``tinyimagenet-cpu``; image folders all report dataset
    'imagefolder'), else the dataset's."""
    for r in results:
        name = (r.get("config") or {}).get("experiment_name")
        if name:
            return str(name)
    return str(results[0].get("job", {}).get("dataset") or sweep.name) if results else sweep.name


def cross_rows(sweeps: list[str | Path], attack: str | None = None) -> tuple[list[dict], str | None]:
    """Summary rows of every sweep for one attack (FP references, quantizer and FP rows only; controls
    and matched-reference rows stay in each sweep's own summary). ``attack`` defaults to the first
    sweep's primary attack. Raises ValueError for a dir without results or an attack a sweep lacks."""
    per_sweep = []
    for sweep in map(Path, sweeps):
        results = S.collect(sweep)
        if not results:
            raise ValueError(f"no */results.json under {sweep}")
        per_sweep.append((sweep, results))
    attack = attack or S.primary_attack(per_sweep[0][1])
    base = [_label(r, s) for s, r in per_sweep]
    names = [s.name for s, _ in per_sweep]
    # two sweeps of one experiment: tell them apart by dir name, or by path where names clash too
    labels = [b if base.count(b) == 1 else f"{b} ({n if names.count(n) == 1 else s})"
              for b, n, (s, _) in zip(base, names, per_sweep)]
    rows = []
    for (sweep, results), label in zip(per_sweep, labels):
        sub = [r for r in S.rows_from_results(results)
               if r["attack"] == attack and not r.get("secondary") and r.get("reference") != "matched"
               and not r.get("control")]
        if not sub:
            raise ValueError(f"{sweep}: no rows for attack {attack!r}")
        for r in sub:
            rows.append({**r, "dataset": label, "sweep": str(sweep)})
    return rows, attack


def _fmt(x, digits: int = 4) -> str:
    return "–" if x is None else f"{x:.{digits}f}"


def markdown(rows: list[dict], attack: str | None) -> str:
    lines = [f"Attack: {attack}. Means over targets; ΔAUC = AUC(quantized) − AUC(FP) on the same examples, "
             "95 % CI (* = excludes 0).", "",
             "| dataset | method | bits | test acc (%) | AUC | TPR@1%FPR (%) | TPR@0.1%FPR (%) | ΔAUC vs FP [95% CI] |",
             "|---|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        method = "FP" if r["quant"] == "fp" else str(r["quant"])
        lines.append(f"| {r['dataset']} | {method} | {S.fmt_bits(r['bits'])} | {S._pct(r['test_acc'])} | "
                     f"{_fmt(r['auc'])} | {S._pct(r['tpr_at_fpr_1e-2'])} | {S._pct(r['tpr_at_fpr_1e-3'])} | "
                     f"{S._delta(r, 'auc')} |")
    return "\n".join(lines) + "\n"


def figure(rows: list[dict], attack: str | None, path: Path) -> Path:
    """A panel per sweep: TPR@0.1 % FPR (log y) vs test accuracy with the 95 % CI; a marker per method
    with its bits (labels placed apart, src.report.plots.place_labels), FP a black star, display names
    in the titles. A TPR of 0 cannot sit on a log axis: it is drawn hollow at half of the smallest
    non-zero TPR the panel shows, without an error bar."""
    from matplotlib.ticker import LogLocator

    from src.report import plots
    from src.report.labels import attack_display, interval_text, model_display, series_style

    metric = "tpr_at_fpr_1e-3"
    datasets = list(dict.fromkeys(r["dataset"] for r in rows))
    methods = [m for m in dict.fromkeys(plots.series_of(r) for r in rows) if m != "FP"]
    titles = {ds: next(f"{r.get('dataset_display') or ds} / {model_display(r['model'])}"
                       for r in rows if r["dataset"] == ds) for ds in datasets}
    fig, axes = plots._axes(len(datasets))
    labels, bars = {}, {}
    for ax, ds in zip(axes, datasets):
        sub = [r for r in rows if r["dataset"] == ds and r.get("test_acc") is not None
               and r.get(metric) is not None]
        positive = [r[metric] for r in sub if r[metric] > 0]
        floor = 0.5 * min(positive) if positive else 1e-4
        labels[ax], bars[ax] = [], []
        for r in sub:
            y, hollow = (r[metric], False) if r[metric] > 0 else (floor, True)
            if r["quant"] == "fp":
                style = dict(marker="*", color="black", markersize=15, label="FP (32 bit)", zorder=3)
            else:
                style = dict(**series_style(methods.index(plots.series_of(r))), markersize=8,
                             label=plots.series_of(r))
            if hollow:
                style["markerfacecolor"] = "none"
            lo, hi = r.get(f"{metric}_ci_lo"), r.get(f"{metric}_ci_hi")
            yerr = None
            if not hollow and lo is not None and hi is not None:
                lo = max(lo, floor)  # a CI reaching 0 ends at the panel's floor on a log axis
                yerr = [[max(y - lo, 0.0)], [max(hi - y, 0.0)]]
                bars[ax].append((r["test_acc"], lo, hi))
            ax.errorbar(r["test_acc"], y, yerr=yerr, capsize=3, linestyle="none", **style)
            labels[ax].append((r["test_acc"], y, plots.point_label(r), "FP" if r["quant"] == "fp"
                               else plots.series_of(r)))
        ax.set_yscale("log")
        title = titles[ds] if list(titles.values()).count(titles[ds]) == 1 else f"{titles[ds]} ({ds})"
        plots._label_panel(ax, "TPR @ 0.1 % FPR (%, log; hollow = 0)", f"{title} — {attack_display(attack)}")
        plots._pct_axis(ax.yaxis, True)
        # a panel often spans less than a decade: label 2, 3 and 5 × 10^k too
        ax.yaxis.set_minor_locator(LogLocator(subs=(2.0, 3.0, 5.0)))
        ax.yaxis.set_minor_formatter(ax.yaxis.get_major_formatter())
    plots._caption(fig, [interval_text([r.get("n_targets") for r in rows]) + "; a lower end at 0 is cut at "
                         "the panel's floor (log axis)"])
    return plots._finish(fig, path, labels, bars, layout=False)


def write(sweeps: list[str | Path], out: str | Path, attack: str | None = None) -> dict[str, Path]:
    rows, attack = cross_rows(sweeps, attack)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"csv": out / "cross_dataset.csv", "md": out / "cross_dataset.md", "png": out / "cross_dataset.png"}
    with open(paths["csv"], "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(COLUMNS), extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow({k: ("" if r.get(k) is None else r.get(k)) for k in COLUMNS})
    paths["md"].write_text(markdown(rows, attack))
    figure(rows, attack, paths["png"])
    return paths


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m src.report.cross_dataset",
                                description="One table and one figure across sweep dirs of several datasets.")
    p.add_argument("sweeps", nargs="+", help="multirun dirs (each holds <job>/results.json)")
    p.add_argument("--out", required=True, help="folder for cross_dataset.csv/.md/.png")
    p.add_argument("--attack", default=None, help="attack to report (default: the first sweep's primary attack)")
    args = p.parse_args(argv)
    try:
        paths = write(args.sweeps, args.out, args.attack)
    except Exception as e:  # one line, not a traceback, for `make cross-dataset`
        print(f"error: cross-dataset summary failed: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    print(paths["md"].read_text(), end="")
    print("wrote " + ", ".join(str(p) for p in paths.values()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
