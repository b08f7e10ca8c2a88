"""Figures and tables of the per-layer precision studies, read from a sweep dir's ``*/results.json``.

``last-layer``: the study's ablation (its abstract: at 1.58 bits, the last layer at a higher
precision gives fine-grained control of the privacy–utility trade-off). Jobs differ in
``bitwidth.last``; per method one curve through its last-layer precisions, TPR at 0.1 % FPR (log
axis, as the study's teaser) and AUC against test accuracy, each point labelled with the last
layer's precision, the FP target a star. The table beside it gives the paired ΔAUC and
ΔTPR@0.1 %FPR against the FP target (results.json ``paired`` blocks: mean over targets, t-interval).
With several targets the TPR panel draws the pooled ROC's TPR (one ROC over every target's members
and non-members, ``pooled`` blocks), and the table adds it with the pooled paired Δ
(``paired_pooled``): at 0.1 % FPR a per-target mean rests on a couple of false positives per target.

``attribution``: jobs differ in ``bitwidth.only`` (one layer quantized, the rest FP) and ``bits``;
bars of ΔAUC (paired) and Δ test accuracy (per-target differences, t-interval over targets) per
layer in forward order, one bar per bit-width.

``layers``: the model's quantizable layers for a set of Hydra overrides, comma-separated (for a
sweep over ``bitwidth.only``).

    python -m src.report.ablation last-layer SWEEP_DIR [--attack lira_online_fixed]   # _<attack> files
    python -m src.report.ablation attribution SWEEP_DIR [--attack lira_online]
    python -m src.report.ablation layers experiment=cifar10_cpu
"""
from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from src.attacks.metrics import t_quantile_975  # noqa: E402
from src.report.summary import collect, is_fp_job  # noqa: E402

TPR = "tpr_at_fpr_1e-3"
PREFERRED_ATTACK = "lira_online"   # the study's attack
TPR_FLOOR = 1e-4                   # where a TPR of 0 is drawn on the log axis (marked in the figure)
PRECISION_ORDER = ("1", "1.58", "2", "3", "4", "5", "6", "7", "8", "fp")


def _fmt_precision(v) -> str:
    return "fp" if v == "fp" else f"{float(v):g}"


def _attack(results: list[dict], attack: str | None) -> str:
    names = {a for r in results for a in (r.get("attacks") or {})}
    if attack:
        if attack not in names:
            raise ValueError(f"--attack {attack}: not in the sweep; allowed: {', '.join(sorted(names))}")
        return attack
    if PREFERRED_ATTACK in names:
        return PREFERRED_ATTACK
    return sorted(names)[0]


def _paired(block: dict, metric: str, kind: str = "paired") -> tuple[float | None, float | None, float | None,
                                                                     bool | None]:
    p = (block.get(kind) or {}).get(metric) or {}
    lo, hi = (p.get("ci") or [None, None])[:2]
    return p.get("delta"), lo, hi, p.get("significant")


def _pooled(block: dict) -> dict:
    """The pooled ROC's TPR@0.1 %FPR, its interval and the trials behind it; empty with one target."""
    p = block.get("pooled") or {}
    if p.get(TPR) is None:
        return {}
    return {"pooled_tpr": p[TPR], "pooled_tpr_ci": (p.get("ci") or {}).get(TPR),
            "pooled_fp": p.get(f"fp_at_fpr_{TPR[len('tpr_at_fpr_'):]}"), "pooled_n_neg": p.get("n_nonmembers")}


def _acc_delta(result: dict) -> tuple[float, float | None, float | None]:
    """Δ test accuracy (quantized − FP), mean over targets with a t-interval (the per-target pairs
    share the target model, so the difference is paired); no interval with one target."""
    u = result["utility"]
    per = u.get("per_target") or []
    d = np.array([p["test_acc"] - p["fp_test_acc"] for p in per], dtype=np.float64)
    if len(d) < 2:
        return float(u["test_acc"] - u["fp_test_acc"]), None, None
    half = t_quantile_975(len(d) - 1) * float(d.std(ddof=1)) / math.sqrt(len(d))
    return float(d.mean()), float(d.mean() - half), float(d.mean() + half)


def _ci_kind(n_targets) -> str:
    return (f"mean over {n_targets} targets, 95 % CI = t-interval over targets" if (n_targets or 1) > 1
            else "1 target, 95 % CI = bootstrap over examples (paired for Δ); Δ test acc has no interval")


def _ci_text(d, lo, hi, sig, scale: float = 1.0, digits: int = 4) -> str:
    if d is None:
        return "–"
    s = f"{scale * d:+.{digits}f}"
    if lo is not None and hi is not None:
        s += f" [{scale * lo:+.{digits}f}, {scale * hi:+.{digits}f}]"
    return s + ("*" if sig else "")


# ------------------------------------------------------------------------------------ last layer

def last_layer_points(results: list[dict], attack: str) -> list[dict]:
    """One point per quantized job: method, last layer name and precision, utility and leakage."""
    pts = []
    for r in results:
        if is_fp_job(r) or attack not in (r.get("attacks") or {}):
            continue
        lb = (r.get("quant") or {}).get("layer_bits") or {}
        if not lb:
            continue
        last_name = list(lb)[-1]
        m = r["attacks"][attack]
        ci = m.get("ci") or {}
        pts.append({
            "quant": r["job"]["quant"], "bits": r["job"]["bits"], "last_layer": last_name,
            "last": _fmt_precision(lb[last_name]), "layers": r["job"].get("layers"),
            "test_acc": r["utility"]["test_acc"], "auc": m["auc"], "tpr": m.get(TPR),
            "auc_ci": ci.get("auc"), "tpr_ci": ci.get(TPR),
            "d_auc": _paired(m, "auc"), "d_tpr": _paired(m, TPR), "d_acc": _acc_delta(r),
            "d_pooled_tpr": _paired(m, TPR, "paired_pooled"), **_pooled(m),
            "n_targets": m.get("n_targets"), "job_dir": r.get("job_dir"),
        })
    order = {p: i for i, p in enumerate(PRECISION_ORDER)}
    return sorted(pts, key=lambda p: (p["quant"], p["bits"], order.get(p["last"], 99)))


def _fp_point(results: list[dict], attack: str) -> dict | None:
    for r in sorted(results, key=lambda r: not is_fp_job(r)):
        block = (r.get("attacks") if is_fp_job(r) else r.get("fp_attacks")) or {}
        if attack in block:
            m = block[attack]
            return {"test_acc": r["utility"]["fp_test_acc"], "auc": m["auc"], "tpr": m.get(TPR),
                    "auc_ci": (m.get("ci") or {}).get("auc"), "tpr_ci": (m.get("ci") or {}).get(TPR), **_pooled(m)}
    return None


def _yerr(y, ci, floor: float | None = None):
    if not ci or ci[0] is None or y is None:
        return None
    lo, hi = ci
    if floor is not None:
        lo, hi, y = max(lo, floor), max(hi, floor), max(y, floor)
    return [[max(y - lo, 0.0)], [max(hi - y, 0.0)]]


def last_layer_figure(points: list[dict], fp: dict | None, attack: str, path: Path, title: str = "") -> Path:
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.8))
    methods = list(dict.fromkeys(p["quant"] for p in points))
    from src.report import plots
    from src.report.labels import quant_display

    any_zero = False
    labels = {ax: [] for ax in axes}
    pooled = _all_pooled(points, fp)
    tpr_key = "pooled_tpr" if pooled else "tpr"
    for ax, key, ci_key, log in ((axes[0], tpr_key, tpr_key + "_ci", True), (axes[1], "auc", "auc_ci", False)):
        for i, method in enumerate(methods):
            mp = [p for p in points if p["quant"] == method and p[key] is not None]
            xs = [p["test_acc"] for p in mp]
            ys = [max(p[key], TPR_FLOOR) if log else p[key] for p in mp]
            any_zero |= log and any(p[key] <= 0 for p in mp)
            ax.plot(xs, ys, "-o", color=f"C{i}", label=quant_display(method), markersize=6)
            for p, x, y in zip(mp, xs, ys):
                err = _yerr(p[key], p[ci_key], TPR_FLOOR if log else None)
                if err is not None:
                    ax.errorbar(x, y, yerr=err, color=f"C{i}", alpha=0.35, capsize=2, linestyle="none")
                labels[ax].append((x, y, str(p["last"]), method))
        if fp is not None and fp.get(key) is not None:
            y = max(fp[key], TPR_FLOOR) if log else fp[key]
            err = _yerr(fp[key], fp[ci_key], TPR_FLOOR if log else None)
            if err is not None:
                ax.errorbar(fp["test_acc"], y, yerr=err, color="black", alpha=0.35, capsize=2, linestyle="none")
            ax.plot(fp["test_acc"], y, marker="*", color="black", markersize=16, linestyle="none",
                    label="FP (32 bit)", zorder=4)
        if log:
            ax.set_yscale("log")
            if any_zero:
                ax.axhline(TPR_FLOOR, color="grey", linestyle=":", linewidth=0.8)
                ax.annotate("TPR = 0 drawn here", (0.01, TPR_FLOOR), xycoords=("axes fraction", "data"),
                            xytext=(0, 3), textcoords="offset points", fontsize=7, color="grey")
        ax.set_xlabel("test accuracy (%)")
        plots._pct_axis(ax.xaxis, False)
        ax.set_ylabel(("pooled " if pooled else "") + "TPR @ 0.1 % FPR (%)" if log else "AUC")
        if log:
            plots._pct_axis(ax.yaxis, True)
        ax.margins(x=0.1, y=0.1)
        ax.grid(True, alpha=0.3, which="both")
        ax.legend(fontsize=8)
    n = points[0]["n_targets"] if points else None
    from src.report.labels import attack_display

    ci_text = _ci_kind(n)
    if pooled:
        ci_text = (f"TPR: one ROC pooled over {n} targets ({points[0]['pooled_n_neg']:,} non-member trials), "
                   f"95 % CI over targets and examples; AUC: {ci_text}")
    fig.suptitle(title or f"{attack_display(attack)}: last layer's precision (point labels), rest of the net at "
                          f"{_fmt_precision(points[0]['bits']) if points else '?'} bits\n{ci_text}",
                 fontsize=10)
    return plots._finish(fig, path, labels)


def _all_pooled(points: list[dict], fp: dict | None) -> bool:
    return bool(points) and all("pooled_tpr" in p for p in points + ([fp] if fp else []))


def _pooled_text(p: dict) -> str:
    lo, hi = p.get("pooled_tpr_ci") or (None, None)
    s = f"{100 * p['pooled_tpr']:.2f}"
    if lo is not None:
        s += f" [{100 * lo:.2f}, {100 * hi:.2f}]"
    return s + f" ({p['pooled_fp']} FP)"


def last_layer_table(points: list[dict], fp: dict | None, attack: str) -> str:
    """One row per point; with several targets two more columns: the pooled TPR@0.1 %FPR with its
    interval and the false positives at that threshold, and the pooled paired Δ."""
    pooled = _all_pooled(points, fp)
    head = f"attack: {attack}; {_ci_kind(points[0]['n_targets'] if points else None)}; "
    if pooled:
        head += (f"pooled: one ROC over the targets' {points[0]['pooled_n_neg']:,} non-member trials, 95 % CI with "
                 "targets resampled and deleted and examples reweighted (paired for Δ); ")
    lines = [head + "Δ = quantized − FP on the same examples; * = CI excludes 0", "",
             "| method | bits | last layer | test acc (%) | AUC | TPR@0.1%FPR (%) | ΔAUC [95% CI] | "
             "ΔTPR@0.1%FPR (pp) [95% CI] | Δ test acc (pp) [95% CI] |"
             + (" pooled TPR@0.1%FPR (%) [95% CI] | pooled ΔTPR@0.1%FPR (pp) [95% CI] |" if pooled else ""),
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|" + ("---:|---:|" if pooled else "")]
    if fp is not None:
        lines.append(f"| FP | 32 | fp | {100 * fp['test_acc']:.2f} | {fp['auc']:.4f} | "
                     f"{100 * fp['tpr']:.2f} | – | – | – |" + (f" {_pooled_text(fp)} | – |" if pooled else ""))
    for p in points:
        lines.append(f"| {p['quant']} | {_fmt_precision(p['bits'])} | {p['last']} | {100 * p['test_acc']:.2f} | "
                     f"{p['auc']:.4f} | {100 * (p['tpr'] or 0):.2f} | {_ci_text(*p['d_auc'])} | "
                     f"{_ci_text(*p['d_tpr'], scale=100, digits=2)} | "
                     f"{_ci_text(*p['d_acc'], None, scale=100, digits=2)} |"
                     + (f" {_pooled_text(p)} | {_ci_text(*p['d_pooled_tpr'], scale=100, digits=2)} |"
                        if pooled else ""))
    return "\n".join(lines) + "\n"


def last_layer(sweep: Path, attack: str | None = None) -> dict[str, Path]:
    results = collect(sweep)
    if not results:
        raise ValueError(f"no */results.json under {sweep}")
    default = _attack(results, None)
    attack = _attack(results, attack)
    points, fp = last_layer_points(results, attack), _fp_point(results, attack)
    stem = "ablation_last_layer" + ("" if attack == default else f"_{attack}")  # one pair of files per attack
    paths = {"figure": sweep / f"{stem}.png", "table": sweep / f"{stem}.md"}
    last_layer_figure(points, fp, attack, paths["figure"])
    paths["table"].write_text(last_layer_table(points, fp, attack))
    return paths


# ------------------------------------------------------------------------------------ attribution

def attribution_points(results: list[dict], attack: str) -> tuple[list[str], list[dict]]:
    """(layers/parts in forward order, one point per job with ``bitwidth.only`` set)."""
    order: list[str] = []
    pts = []
    for r in results:
        if is_fp_job(r) or attack not in (r.get("attacks") or {}):
            continue
        only = ((r.get("config") or {}).get("bitwidth") or {}).get("only")
        if not only:
            continue
        lb = (r.get("quant") or {}).get("layer_bits") or {}
        for n in lb:  # forward order of the part's first quantized layer
            if n not in order:
                order.append(n)
        first = next((n for n, b in lb.items() if b != "fp"), only)
        m = r["attacks"][attack]
        pts.append({"only": only, "first_layer": first, "bits": float(r["job"]["bits"]),
                    "d_auc": _paired(m, "auc"), "d_tpr": _paired(m, TPR), "d_acc": _acc_delta(r),
                    "test_acc": r["utility"]["test_acc"], "auc": m["auc"], "tpr": m.get(TPR),
                    "n_targets": m.get("n_targets")})
    rank = {n: i for i, n in enumerate(order)}
    parts = sorted({p["only"]: rank.get(p["first_layer"], 99) for p in pts}.items(), key=lambda kv: kv[1])
    return [p for p, _ in parts], pts


def attribution_figure(parts: list[str], pts: list[dict], attack: str, path: Path) -> Path:
    bits_list = sorted({p["bits"] for p in pts}, reverse=True)
    fig, axes = plt.subplots(2, 1, figsize=(max(7.0, 1.1 * len(parts) + 2), 7.5), sharex=True)
    width = 0.8 / max(len(bits_list), 1)
    x = np.arange(len(parts))
    for ax, key, ylabel, scale in ((axes[0], "d_auc", f"ΔAUC vs FP ({attack})", 1.0),
                                   (axes[1], "d_acc", "Δ test accuracy (pp)", 100.0)):
        for i, b in enumerate(bits_list):
            vals, lo, hi, sig = [], [], [], []
            for part in parts:
                p = next((q for q in pts if q["only"] == part and q["bits"] == b), None)
                d = p[key] if p else (None, None, None, None)
                v = d[0] if d[0] is not None else np.nan
                vals.append(scale * v)
                lo.append(scale * (v - d[1]) if d[1] is not None else 0.0)
                hi.append(scale * (d[2] - v) if d[2] is not None else 0.0)
                s = d[3] if len(d) > 3 else None
                if s is None and d[1] is not None:
                    s = d[1] > 0 or d[2] < 0
                sig.append(bool(s) if d[1] is not None else True)  # no interval (one target): not hatched
            pos = x + (i - (len(bits_list) - 1) / 2) * width
            has_ci = any(v for v in lo + hi)
            bars = ax.bar(pos, vals, width, yerr=[lo, hi] if has_ci else None, capsize=3, color=f"C{i}",
                          label=f"{b:g} bits", edgecolor=f"C{i}")
            for bar, s in zip(bars, sig):
                if not s:  # CI includes 0: hatched, lighter
                    bar.set_alpha(0.45)
                    bar.set_hatch("//")
        ax.axhline(0, color="black", linewidth=0.8)
        ax.set_ylabel(ylabel)
        ax.grid(True, axis="y", alpha=0.3)
        ax.legend(fontsize=8)
    axes[1].set_xticks(x)
    axes[1].set_xticklabels(parts, rotation=30, ha="right", fontsize=8)
    axes[0].set_title("one layer quantized, every other layer full precision (forward order)\n"
                      f"{_ci_kind(pts[0].get('n_targets') if pts else None)}; hatched: CI includes 0", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)
    return path


def attribution_table(parts: list[str], pts: list[dict], attack: str) -> str:
    lines = [f"attack: {attack}; {_ci_kind(pts[0].get('n_targets') if pts else None)}; Δ = quantized − FP; "
             "* = CI excludes 0", "",
             "| quantized part | bits | test acc (%) | Δ test acc (pp) [95% CI] | AUC | ΔAUC [95% CI] | "
             "ΔTPR@0.1%FPR (pp) [95% CI] |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for part in parts:
        for p in sorted((q for q in pts if q["only"] == part), key=lambda q: -q["bits"]):
            lines.append(f"| {part} | {p['bits']:g} | {100 * p['test_acc']:.2f} | "
                         f"{_ci_text(*p['d_acc'], None, scale=100, digits=2)} | {p['auc']:.4f} | "
                         f"{_ci_text(*p['d_auc'])} | {_ci_text(*p['d_tpr'], scale=100, digits=2)} |")
    return "\n".join(lines) + "\n"


def attribution(sweep: Path, attack: str | None = None) -> dict[str, Path]:
    results = collect(sweep)
    if not results:
        raise ValueError(f"no */results.json under {sweep}")
    attack = _attack(results, attack)
    parts, pts = attribution_points(results, attack)
    if not pts:
        raise ValueError(f"no job with bitwidth.only under {sweep}")
    paths = {"figure": sweep / "layer_attribution.png", "table": sweep / "layer_attribution.md"}
    attribution_figure(parts, pts, attack, paths["figure"])
    paths["table"].write_text(attribution_table(parts, pts, attack))
    return paths


# ------------------------------------------------------------------------------------------ CLI

def model_layers(overrides: list[str]) -> list[str]:
    """Quantizable layers of the model the overrides compose (names do not depend on the data's
    class or channel counts, so no data is loaded)."""
    from hydra import compose, initialize_config_dir

    from src.models import build_model
    from src.quant.policy import quantizable_layers

    with initialize_config_dir(config_dir=str(Path(__file__).resolve().parents[2] / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=list(overrides))
    return [n for n, _ in quantizable_layers(build_model(cfg.model, 10, 3))]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m src.report.ablation", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    for name in ("last-layer", "attribution"):
        s = sub.add_parser(name)
        s.add_argument("sweep_dir", type=Path)
        s.add_argument("--attack", default=None)
    s = sub.add_parser("layers")
    s.add_argument("overrides", nargs="*")
    args = p.parse_args(argv)
    try:
        if args.cmd == "layers":
            print(",".join(model_layers(args.overrides)))
            return 0
        fn = last_layer if args.cmd == "last-layer" else attribution
        paths = fn(args.sweep_dir, args.attack)
    except Exception as e:  # one line for `make`
        print(f"error: {args.cmd}: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    print(Path(paths["table"]).read_text(), end="")
    print("wrote " + ", ".join(str(v) for v in paths.values()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
