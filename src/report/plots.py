"""The summary figures (privacy–utility trade-off, paired ΔAUC, log-log ROC) and a job's per-example plot.

Drawn with matplotlib's Agg backend (no display needed) and saved as PNG. Low-FPR behaviour is what
matters for membership inference (Carlini et al., "Membership Inference Attacks From First
Principles", 2022, §3), hence log-log ROC axes. Rates are shown in %, every series has its own colour
and marker (src/report/labels.py), and FPRs below 1/N non-members are marked as unresolved.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter  # noqa: E402
from matplotlib.transforms import Bbox  # noqa: E402

from src.report.labels import (attack_display, dataset_display, interval_text, metric_label, model_display,  # noqa: E402
                               pct_text, quant_display, score_definition, series_style, wa_label)

COLLAPSE_SHORT = ("accuracy collapsed (less than half of FP's accuracy above chance): lower leakage there "
                  "reflects lost utility")

FP_STYLE = {"color": "black", "marker": "*"}
ROC_MIN = 1e-5  # results.json ROCs are downsampled down to this FPR


def _combos(items: list[Any], get) -> list[tuple]:
    return list(dict.fromkeys(get(x) for x in items))


def _axes(n: int, size: tuple[float, float] = (6.4, 5.0)):
    fig, axes = plt.subplots(1, n, figsize=(size[0] * n, size[1]), squeeze=False)
    return fig, list(axes[0])


def _pct_axis(axis, log: bool) -> None:
    if log:
        # 1, 2, 5 per decade: a TPR axis often spans less than one decade, where 10^k alone labels one tick
        axis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
        axis.set_major_formatter(FuncFormatter(lambda v, _: pct_text(v).replace(" %", "%")))
        axis.set_minor_formatter(NullFormatter())
    else:
        axis.set_major_formatter(FuncFormatter(lambda v, _: f"{100 * v:.6g}%"))


# ---------------------------------------------------------------------------------------
# point labels without collisions

def _offsets():
    """Candidate label offsets (points) on rings around the point, nearest first."""
    import math

    for r in (7, 16, 28, 42):
        for deg in (30, -30, 150, -150, 90, -90, 0, 180):
            c, s = math.cos(math.radians(deg)), math.sin(math.radians(deg))
            ha = "left" if c > 0.3 else "right" if c < -0.3 else "center"
            va = "bottom" if s > 0.3 else "top" if s < -0.3 else "center"
            yield r * c, r * s, ha, va, r


def _overlap(a: Bbox, b: Bbox) -> float:
    w = min(a.x1, b.x1) - max(a.x0, b.x0)
    h = min(a.y1, b.y1) - max(a.y0, b.y0)
    return w * h if w > 0 and h > 0 else 0.0


def place_labels(ax, items: list[tuple[float, float, str, str]], fontsize: float = 7.5,
                 bars: list[tuple[float, float, float]] = ()) -> list:
    """Annotate points ``items`` = [(x, y, text, series)] so that no two labels overlap each other or a
    marker: points closer than a marker's size share one label (naming the series when they differ),
    and each label takes the first of several offsets around its point that collides with nothing
    (else the one with the least overlap); ``bars`` [(x, lo, hi)] are error bars to keep clear of.
    Call after the axes limits and layout are final."""
    fig = ax.figure
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    clusters: list[dict] = []
    for x, y, text, series in items:
        px, py = ax.transData.transform((x, y))
        for c in clusters:
            if abs(c["px"] - px) < 9 and abs(c["py"] - py) < 9:  # markers that overlap: one label
                c["members"].append((text, series))
                break
        else:
            clusters.append({"x": x, "y": y, "px": px, "py": py, "members": [(text, series)]})
    half = 6 * fig.dpi / 72  # a marker's half width (8 pt markers)
    markers = [Bbox.from_extents(c["px"] - half, c["py"] - half, c["px"] + half, c["py"] + half) for c in clusters]
    bars_px = []
    for x, lo, hi in bars:
        (bx, by0), (_, by1) = ax.transData.transform([(x, lo), (x, hi)])
        bars_px.append(Bbox.from_extents(bx - 2, min(by0, by1), bx + 2, max(by0, by1)))
    frame = ax.get_window_extent(renderer)
    placed = [ax.get_legend().get_window_extent(renderer)] if ax.get_legend() else []
    for c in clusters:
        series = list(dict.fromkeys(s for _, s in c["members"]))
        parts = [t if len(series) == 1 or t == s else f"{s} {t}" for t, s in c["members"]]
        text = ", ".join(dict.fromkeys(parts))
        best = None
        for dx, dy, ha, va, r in _offsets():
            # far from its point, a label gets a leader line so that it still points at it
            arrow = dict(arrowstyle="-", color="gray", linewidth=0.6, shrinkA=0, shrinkB=3) if r > 10 else None
            ann = ax.annotate(text, (c["x"], c["y"]), textcoords="offset points", xytext=(dx, dy), ha=ha, va=va,
                              fontsize=fontsize, arrowprops=arrow)
            bb = ann.get_window_extent(renderer)
            outside = bb.width * bb.height - _overlap(bb, frame)
            # another label is the worst to cover, then a marker, then an error bar
            cost = (10 * sum(_overlap(bb, o) for o in placed) + 3 * sum(_overlap(bb, o) for o in markers)
                    + sum(_overlap(bb, o) for o in bars_px) + 10 * outside)
            if best is None or cost < best[0]:
                if best is not None:
                    best[1].remove()
                best = (cost, ann, bb)
            else:
                ann.remove()
            if cost == 0:
                break
        placed.append(best[2])
        c["annotation"] = best[1]
    return [c["annotation"] for c in clusters]


def _finish(fig, path, labels: dict | None = None, bars: dict | None = None, layout: bool = True) -> Path:
    """Lay out (unless a caption did), then place the point labels (their collision test needs the final
    layout), then save."""
    if layout:
        fig.tight_layout()
    for ax, items in (labels or {}).items():
        if items:
            place_labels(ax, items, bars=(bars or {}).get(ax, ()))
    path = Path(path)
    fig.savefig(path, dpi=150)
    plt.close(fig)
    return path


# ---------------------------------------------------------------------------------------
# privacy–utility


def _legend(ax, styles: dict[str, dict] | None = None, **kw) -> None:
    """One entry per label; ``styles`` {label: colour and marker} draws filled proxies, so that a
    series whose first point happens to be hollow still has a filled legend marker."""
    from matplotlib.lines import Line2D

    handles, labels = ax.get_legend_handles_labels()
    uniq = dict(zip(labels, handles))
    for lab, st in (styles or {}).items():
        if lab in uniq:
            uniq[lab] = Line2D([], [], linestyle="none", markersize=8, **st)
    if uniq:
        kw.setdefault("loc", _emptiest_corner(ax))
        ax.legend(uniq.values(), uniq.keys(), fontsize=8, **kw)


def _emptiest_corner(ax) -> str:
    """The axes corner whose legend-sized box (40 % × 35 % of the panel) holds the fewest drawn points
    (markers and error-bar caps): matplotlib's "best" weighs line segments, so on panels of error
    bars it can cover the points themselves."""
    ax.get_xlim(), ax.get_ylim()  # settle the autoscaled limits before mapping to axes coordinates
    to_axes = ax.transData + ax.transAxes.inverted()
    pts = [to_axes.transform(xy) for line in ax.lines for xy in line.get_xydata()
           if np.all(np.isfinite(xy))]
    boxes = {"upper left": (0, 0.4, 0.65, 1), "upper right": (0.6, 1, 0.65, 1),
             "lower left": (0, 0.4, 0, 0.35), "lower right": (0.6, 1, 0, 0.35)}
    count = {loc: sum(x0 <= x <= x1 and y0 <= y <= y1 for x, y in pts) for loc, (x0, x1, y0, y1) in boxes.items()}
    return min(boxes, key=lambda loc: count[loc])  # ties: the first, upper left


def point_label(r: dict) -> str:
    if r["quant"] == "fp":
        return "FP"
    label = r.get("control") or (f"{r['bits']:g} bit" if r.get("bits") is not None else "?")
    return label + (f" ({r['layers']})" if r.get("layers") else "")


def series_of(r: dict) -> str:
    """The method a point belongs to, by its display name: the quantizer, with its activation bits for
    W/A jobs (``OBC A8``)."""
    return quant_display(r["quant"]) + (f" A{int(r['act_bits'])}" if r.get("act_bits") is not None else "")


def _title(rows_or_jobs: list[dict], ds, model, attack) -> str:
    name = next((r.get("dataset_display") for r in rows_or_jobs if r.get("dataset_display")), None) or ds
    return f"{name} / {model_display(model)} — {attack_display(attack)}" if ds is not None else attack_display(attack)


def _caption(fig, lines: list[str]) -> None:
    """Notes under the panels (what the error bars are, what a mark means), in the figure's own margin."""
    lines = _wrap([ln for ln in lines if ln], int(fig.get_figwidth() * 19))  # ~19 characters per inch at 7.5 pt
    if not lines:
        return
    h = fig.get_figheight()
    pad = (0.15 * len(lines) + 0.12) / h  # inches of text as a fraction of the figure
    fig.tight_layout(rect=(0, pad, 1, 1))
    fig.text(0.01, 0.01, "\n".join(lines), fontsize=7.5, color="dimgray", va="bottom", ha="left")


def _zoom_cluster(rows: list[dict], x: str = "test_acc") -> list[dict]:
    """The points crowded at the high-accuracy end (within 8 % of the axis span of the best accuracy),
    when there are at least three and other points widen the axis: they get a zoom panel."""
    xs = [r[x] for r in rows]
    if len(xs) < 4:
        return []
    span = max(xs) - min(xs)
    cluster = [r for r in rows if r[x] >= max(xs) - 0.08 * span]
    return cluster if 3 <= len(cluster) < len(rows) and span > 0 else []


def _collapse_band(ax, rows: list[dict]) -> bool:
    """Shade test accuracies below the collapse threshold (src/report/collapse.py) when a point lies there."""
    from src.report.collapse import collapse_threshold

    fp = next((r for r in rows if r["quant"] == "fp"), None) or (rows[0] if rows else None)
    k = next((r.get("num_classes") for r in rows if r.get("num_classes")), None)
    if fp is None or not k or fp.get("fp_test_acc") is None:
        return False
    thr = collapse_threshold(fp["fp_test_acc"], int(k))
    if not any(r.get("test_acc") is not None and r["test_acc"] < thr for r in rows):
        return False
    lo = min(r["test_acc"] for r in rows if r.get("test_acc") is not None)
    ax.axvspan(max(0.0, min(lo, thr) - 0.02), thr, color="#f4cccc", alpha=0.5, linewidth=0, zorder=0,
               label="accuracy collapsed")
    return True


def _pu_points(ax, shown: list[dict], methods: list, metric: str, labels: list, bars: list) -> None:
    for r in shown:
        y = r[metric]
        lo, hi = r.get(f"{metric}_ci_lo"), r.get(f"{metric}_ci_hi")
        yerr = [[max(y - lo, 0.0)], [max(hi - y, 0.0)]] if lo is not None and hi is not None else None
        if r["quant"] == "fp":
            style = dict(**FP_STYLE, markersize=14, label="FP (32 bit)", zorder=3)
        else:
            style = dict(**series_style(methods.index(series_of(r))), markersize=8, label=series_of(r),
                         linestyle="none")
        ax.errorbar(r["test_acc"], y, yerr=yerr, capsize=3, **style)
        if yerr:
            bars.append((r["test_acc"], lo, hi))
        labels.append((r["test_acc"], y, point_label(r), "FP" if r["quant"] == "fp" else series_of(r)))


def _zoom_panel(zax, ax, cluster: list[dict], shown: list[dict], ykey: str, draw) -> None:
    """Draw again in ``zax``, with limits around ``cluster`` (error bars included), every point of ``shown``
    that falls inside those limits, so that the zoom hides nothing the dashed box on ``ax`` encloses."""
    from matplotlib.patches import Rectangle

    xs = [r["test_acc"] for r in cluster]
    ys = [v for r in cluster for v in (r[ykey], r.get(f"{ykey}_ci_lo"), r.get(f"{ykey}_ci_hi")) if v is not None]
    span = max(r["test_acc"] for r in shown) - min(r["test_acc"] for r in shown)
    xpad = max(0.15 * (max(xs) - min(xs)), 0.01 * span, 1e-4)
    ypad = max(0.08 * (max(ys) - min(ys)), 1e-4)
    x0, x1, y0, y1 = min(xs) - xpad, max(xs) + xpad, min(ys) - ypad, max(ys) + ypad
    draw(zax, [r for r in shown if x0 <= r["test_acc"] <= x1 and y0 <= r[ykey] <= y1])
    zax.set_xlim(x0, x1)
    zax.set_ylim(y0, y1)
    zax.margins(0)
    ax.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, linestyle="--", edgecolor="dimgray",
                           linewidth=0.8, zorder=1))


def privacy_utility(rows: list[dict], attack: str | None, path: str | Path,
                    metric: str = "tpr_at_fpr_1e-3") -> Path:
    """Test accuracy (x, %) vs ``metric`` of ``attack`` (y, %): one colour and marker per method, the
    bit width next to each point, FP a black star, error bars the 95 % CI (what kind: under the panels).
    Points whose TPR is below resolution (FPR < 1/N non-members) are left out and counted in the panel;
    accuracies below the collapse threshold are shaded. Where several points crowd at the high-accuracy
    end, a zoom panel beside the full view shows them apart. ``rows`` are summary rows
    (:func:`src.report.summary.rows_from_results`); one panel (pair) per (dataset, model)."""
    rows = [r for r in rows if r["attack"] == attack and r.get("test_acc") is not None]
    combos = _combos(rows, lambda r: (r["dataset"], r["model"])) or [(None, None)]
    methods = [m for m in _combos(rows, series_of) if m != "FP"]
    shown_of, clusters = {}, {}
    for c in combos:
        sub = [r for r in rows if (r["dataset"], r["model"]) == c]
        shown_of[c] = [r for r in sub if r.get(metric) is not None and r.get(f"{metric}_resolved", True)]
        clusters[c] = _zoom_cluster(shown_of[c])
    n_zoom = sum(bool(v) for v in clusters.values())
    fig, axes = _axes(len(combos) + n_zoom)
    labels, bars = {}, {}
    rate = metric != "auc"
    ylabel = metric_label(metric) + (" (%)" if rate else "")
    collapsed_any = False
    it = iter(axes)
    for ds, model in combos:
        ax = next(it)
        sub = [r for r in rows if (r["dataset"], r["model"]) == (ds, model)]
        shown, cluster = shown_of[(ds, model)], clusters[(ds, model)]
        hidden = len(sub) - len(shown)
        labels[ax], bars[ax] = [], []
        collapsed_any |= _collapse_band(ax, sub)
        main = [r for r in shown if r not in cluster]
        _pu_points(ax, shown, methods, metric, [], bars[ax])
        for r in main:
            labels[ax].append((r["test_acc"], r[metric], point_label(r), "FP" if r["quant"] == "fp" else series_of(r)))
        _control_curves(ax, shown, methods, metric)
        ys = [r[metric] for r in shown]
        log = bool(rate and ys and min(ys) > 0 and max(ys) / min(ys) > 20)
        if log:
            ax.set_yscale("log")
        if hidden:
            ax.text(0.02, 0.02, f"{hidden} point(s) below resolution (FPR < 1/N non-members), not drawn",
                    transform=ax.transAxes, fontsize=7, color="dimgray")
        _label_panel(ax, ylabel, _title(sub, ds, model, attack))
        if rate:
            _pct_axis(ax.yaxis, log)
        if cluster:
            zax = next(it)
            labels[zax], bars[zax] = [], []

            def draw(z, inside, zax=zax):
                _pu_points(z, inside, methods, metric, labels[zax], bars[zax])

            _zoom_panel(zax, ax, cluster, shown, metric, draw)
            _label_panel(zax, ylabel, "zoom: the dashed box", margins=False)
            if rate:
                _pct_axis(zax.yaxis, False)
    ks = [r.get("n_targets") for r in rows]
    _caption(fig, [interval_text(ks),
                   "shaded: " + COLLAPSE_SHORT if collapsed_any else ""])
    return _finish(fig, path, labels, bars, layout=False)


def _label_panel(ax, ylabel: str, title: str, styles: dict | None = None, margins: bool = True) -> None:
    """One legend entry per method, axis labels (accuracy in %), title, grid."""
    _legend(ax, styles)
    ax.set_xlabel("test accuracy (%)")
    _pct_axis(ax.xaxis, False)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.grid(True, alpha=0.3)
    if margins:
        ax.margins(x=0.12, y=0.12)  # room for the point labels


def _control_curves(ax, rows: list[dict], methods: list, metric: str) -> None:
    """Matched-utility controls (noise σ, pruning sparsity sweeps) as dashed curves through their
    points, ordered by accuracy: a quantizer below a curve leaks less at equal accuracy."""
    for quant in dict.fromkeys(series_of(r) for r in rows if r.get("control")):
        pts = sorted((r["test_acc"], r[metric]) for r in rows
                     if series_of(r) == quant and r.get(metric) is not None)
        if len(pts) > 1:
            ax.plot(*zip(*pts), linestyle="--", color=series_style(methods.index(quant))["color"], alpha=0.7)


def privacy_utility_delta(rows: list[dict], attack: str | None, path: str | Path) -> Path:
    """Test accuracy (x, %) vs the paired ΔAUC = AUC(quantized) − AUC(FP) (y) with its 95 % CI: points
    below 0 leak less than the full-precision model, and a CI that crosses 0 is not a reduction."""
    rows = [r for r in rows if r["attack"] == attack and r["quant"] != "fp"
            and r.get("test_acc") is not None and r.get("delta_auc") is not None]
    combos = _combos(rows, lambda r: (r["dataset"], r["model"])) or [(None, None)]
    methods = _combos(rows, series_of)
    fig, axes = _axes(len(combos))
    labels, bars = {}, {}
    collapsed_any = False
    for ax, (ds, model) in zip(axes, combos):
        sub = [r for r in rows if (r["dataset"], r["model"]) == (ds, model)]
        labels[ax] = []
        collapsed_any |= _collapse_band(ax, sub)
        for r in sub:
            st = series_style(methods.index(series_of(r)))
            lo, hi, d = r.get("delta_auc_ci_lo"), r.get("delta_auc_ci_hi"), r["delta_auc"]
            yerr = [[max(d - lo, 0.0)], [max(hi - d, 0.0)]] if lo is not None and hi is not None else None
            ax.errorbar(r["test_acc"], d, yerr=yerr, capsize=3, markersize=8, label=series_of(r),
                        linestyle="none", **st,
                        markerfacecolor=st["color"] if r.get("delta_auc_significant") else "white")
            if yerr:
                bars.setdefault(ax, []).append((r["test_acc"], lo, hi))
            labels[ax].append((r["test_acc"], d, point_label(r), series_of(r)))
        _control_curves(ax, sub, methods, "delta_auc")
        ax.axhline(0.0, color="black", linewidth=0.8)
        _label_panel(ax, "ΔAUC vs FP (filled: 95 % CI excludes 0)", _title(sub, ds, model, attack),
                     {m: series_style(i) for i, m in enumerate(methods)})
    _caption(fig, [interval_text([r.get("n_targets") for r in rows]).replace("95 %", "95 % paired"),
                   "ΔAUC = AUC(quantized) − AUC(FP) on the same examples; below 0 = leaks less than FP",
                   "shaded: " + COLLAPSE_SHORT if collapsed_any else ""])
    return _finish(fig, path, labels, bars, layout=False)


# ---------------------------------------------------------------------------------------
# per-example shifts (one job)


def per_example_scatter(fp_scores, q_scores, is_member, attack: str, path: str | Path,
                        title: str | None = None, stats: dict | None = None) -> Path:
    """FP vs quantized membership score of every example (one target), members and non-members
    coloured: points on the diagonal kept their exposure, the spread shows per-example shifts. Dashed
    (dotted) lines: the members' top-10 % (top-1 %) score on each axis, so the members in the upper
    right box stayed among the most exposed. ``stats``: src/attacks/shifts.py's per_example_shift."""
    import numpy as np

    fp, q = np.asarray(fp_scores, dtype=float), np.asarray(q_scores, dtype=float)
    y = np.asarray(is_member, dtype=bool)
    fig, (ax,) = _axes(1, (6.0, 6.4))
    for sel, name, c in ((~y, "non-members", "#1f77b4"), (y, "members", "#d62728")):
        ax.scatter(fp[sel], q[sel], s=4, alpha=0.4, color=c, label=name)
    # LiRA's few extreme scores would squeeze the bulk into a line: show the central 99 % of each axis
    both = np.concatenate([fp, q])
    lo, hi = (float(v) for v in np.quantile(both, [0.005, 0.995]))
    pad = 0.08 * (hi - lo or 1.0)
    lo, hi = lo - pad, hi + pad
    ax.plot([lo, hi], [lo, hi], color="black", linewidth=0.8)
    ax.set_xlim(lo, hi)
    ax.set_ylim(lo, hi)
    n_out = int(np.sum((fp < lo) | (fp > hi) | (q < lo) | (q > hi)))
    for frac, ls in ((0.10, "--"), (0.01, ":")):
        if y.any():
            ax.axvline(np.quantile(fp[y], 1 - frac), color="dimgray", linestyle=ls, linewidth=0.8)
            ax.axhline(np.quantile(q[y], 1 - frac), color="dimgray", linestyle=ls, linewidth=0.8,
                       label=f"members' top {frac:.0%}".replace("%", " %"))
    notes = [f"{attack_display(attack)} {score_definition(attack)}".strip()]
    if stats:
        notes.append(f"top-1 % most exposed members still in the top 1 %: {_pct_or_na(stats.get('top1_retained'))}; "
                     f"top 10 %: {_pct_or_na(stats.get('top10_retained'))}; Spearman ρ (FP vs quantized, all "
                     f"examples): {_num_or_na(stats.get('spearman'))}")
    if n_out:
        notes.append(f"{n_out} outlying example(s) beyond the axes (the central 99 % of the scores is shown)")
    ax.set_xlabel(f"{attack_display(attack)} score, full precision")
    ax.set_ylabel(f"{attack_display(attack)} score, quantized")
    ax.set_title(title or f"per-example {attack_display(attack)} scores", fontsize=10)
    ax.legend(fontsize=8, markerscale=3, loc="lower right")
    ax.grid(True, alpha=0.3)
    _caption(fig, _wrap(notes, 95))
    return _finish(fig, path, layout=False)


def _wrap(lines: list[str], width: int) -> list[str]:
    import textwrap

    return [w for ln in lines for w in textwrap.wrap(ln, width)]


def _pct_or_na(v) -> str:
    return "n/a" if v is None else f"{100 * float(v):.0f} %"


def _num_or_na(v) -> str:
    return "n/a" if v is None else f"{float(v):.3f}"


# ---------------------------------------------------------------------------------------
# ROC


def series_label(result: dict) -> str:
    """'obc 2 bit, last layer 8-bit below 2 bits, matched refs' — quantizer, bits, a non-uniform bit
    policy and matched references, so that no two differently configured jobs share a label."""
    from src.report.labels import policy_label

    job = result.get("job", {})
    quant = quant_display(job.get("quant"))
    if job.get("control"):
        head = f"{quant} {job['control']['key']}={job['control']['value']:g}"
    else:
        bits = job.get("bits")
        head = f"{quant} {float(bits):g} bit" if bits is not None else f"{quant} ?"
    parts = [head]
    if job.get("policy") not in (None, "uniform"):
        parts.append(policy_label(job["policy"], job.get("dataset")))
    if job.get("layers"):
        parts.append(job["layers"])
    if job.get("act_bits") is not None:
        parts.append(wa_label(job.get("bits"), job["act_bits"]))
    if job.get("reference") == "matched":
        parts.append("matched refs")
    return ", ".join(parts)


def _unique(labels: list[str], results: list[dict]) -> list[str]:
    """Labels made unique by the job dir's name where two jobs still share one."""
    seen = {lab: labels.count(lab) for lab in labels}
    return [lab if seen[lab] == 1 else f"{lab} ({Path(r.get('job_dir', '?')).name})"
            for lab, r in zip(labels, results)]


def _pooled_nonmembers(block: dict | None) -> int | None:
    """Non-members behind a job's pooled ROC: the sum over its targets."""
    if not block:
        return None
    counts = [p.get("n_nonmembers") for p in block.get("per_target") or []]
    if counts and all(c is not None for c in counts):
        return int(sum(counts))
    n, k = block.get("n_nonmembers"), block.get("n_targets") or 1
    return int(round(n * k)) if n is not None else None


def _plot_curve(ax, roc: dict | None, floor: float, **style) -> None:
    """The ROC at FPR ≥ ``floor`` (below it the curve would rest on zero false positives)."""
    if not roc or not roc.get("fpr"):
        return
    pts = [(f, t) for f, t in zip(roc["fpr"], roc["tpr"]) if f >= floor and t > 0]
    if pts:
        ax.plot([p[0] for p in pts], [p[1] for p in pts], **style)


def roc(results: list[dict], attack: str | None, path: str | Path) -> Path:
    """Log-log ROC (%) of ``attack`` for every job (``results`` as returned by
    :func:`src.report.summary.collect`, or a single job's results in a list), plus the
    full-precision target's curve (dashed black) once per (dataset, model). Every job has its own
    colour and marker; FPRs below 1/N (N: the non-members a curve pools) are shaded and not drawn."""
    import math

    from src.quant import FULL_PRECISION

    def is_fp_job(r: dict) -> bool:  # quant=none|fp: the full-precision row
        return str(r.get("job", {}).get("quant", "")).lower() in FULL_PRECISION

    combos = _combos(results, lambda r: (r["job"].get("dataset"), r["job"].get("model")))
    combos = combos or [(None, None)]
    fig, axes = _axes(len(combos), size=(8.6, 5.2))
    for ax, (ds, model) in zip(axes, combos):
        sub = [r for r in results if (r["job"].get("dataset"), r["job"].get("model")) == (ds, model)]
        fp_job = next((r for r in sub if is_fp_job(r)), None)
        fp_block = ((fp_job or {}).get("attacks") if fp_job else
                    next(((r.get("fp_attacks") or {}) for r in sub if (r.get("fp_attacks") or {}).get(attack)), {}))
        fp_block = (fp_block or {}).get(attack)
        jobs = sorted((r for r in sub if not is_fp_job(r) and (r.get("attacks") or {}).get(attack)),
                      key=lambda r: (str(r["job"].get("quant")), -float(r["job"].get("bits") or 0),
                                     str(r["job"].get("control")), str(r["job"].get("policy")),
                                     str(r["job"].get("reference"))))
        blocks = [r["attacks"][attack] for r in jobs] + ([fp_block] if fp_block else [])
        ns = [n for n in (_pooled_nonmembers(b) for b in blocks) if n]
        floor = 1.0 / min(ns) if ns else ROC_MIN
        lo = max(ROC_MIN, 10 ** math.floor(math.log10(floor)))
        if fp_block:
            _plot_curve(ax, fp_block.get("roc"), floor, color="black", linestyle="--", linewidth=2,
                        label="FP (32 bit)")
        for i, (r, lab) in enumerate(zip(jobs, _unique([series_label(r) for r in jobs], jobs))):
            _plot_curve(ax, r["attacks"][attack].get("roc"), floor, linewidth=1.2, markersize=5,
                        markevery=(i % 7, 7), label=lab, **series_style(i))
        ax.plot([lo, 1], [lo, 1], color="grey", linewidth=0.8, linestyle=":", label="chance")
        if ns:
            ax.axvspan(lo, floor, color="lightgray", alpha=0.5, linewidth=0,
                       label=f"below resolution: FPR < 1/N, N = {min(ns):,} non-members")
            ax.axvline(floor, color="dimgray", linewidth=0.8)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlim(lo, 1)
        ax.set_ylim(lo, 1)
        _pct_axis(ax.xaxis, True)
        _pct_axis(ax.yaxis, True)
        ax.set_xlabel("false positive rate (%)")
        ax.set_ylabel("true positive rate (%)")
        ax.set_title(_title([{"dataset_display": dataset_display(r.get("job"), r.get("config"))} for r in sub],
                            ds, model, attack), fontsize=10)
        ax.grid(True, which="both", alpha=0.2)
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0)
    return _finish(fig, path)
