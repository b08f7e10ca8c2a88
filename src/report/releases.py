"""The joint attack over released versions in a job's outputs (docs/releases.md).

``results.json["releases"]``::

    releases        the released versions, e.g. ["fp", "2-bit"]
    cost            per quantized release: models quantized for its references and their total
                    quantization seconds (as measured when each was made); attack_seconds
    attacks.<name>  joint:  the joint attack's metrics block (as in ``attacks``)
                    single: {release: the single-version attack on that release alone}
                    best_single: {metric: the release with the highest mean metric over targets}
                    paired: {metric: Δ = joint − best single release on the same examples, with its
                            95 % interval (paired bootstrap, or Student-t over targets) and the release}
                    paired_vs: {release: {metric: Δ = joint − that release}}

The best single release is chosen per metric after seeing all of them (an oracle choice that favours
the single releases), so a positive Δ is a conservative statement about the joint attack.
``scores.npz`` gains ``release_phi`` [k, M, N, Q], ``joint_attack_<name>`` [T, N] and
``release_attack_<name>`` [k, T, N].
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)
HEADLINE = ("auc", "tpr_at_fpr_1e-3")  # the comparison's two numbers: AUC and TPR at 0.1 % FPR


def release_results(cfg, keep: np.ndarray, rs) -> tuple[dict, dict]:
    """(the ``releases`` block of results.json, its arrays for scores.npz) from a ReleaseScores."""
    from src.attacks.joint import joint_names
    from src.attacks.paired import aggregate_paired, paired_bootstrap
    from src.report.evaluate import evaluate_attacks as _evaluate

    names = joint_names(cfg.attack.names)
    fprs = tuple(float(f) for f in cfg.attack.get("fprs", (1e-2, 1e-3, 1e-4)))
    n_boot, seed = int(cfg.attack.get("bootstrap", 200)), int(cfg.seed)
    labels = [r.label for r in rs.releases]
    joint = _evaluate(cfg, keep, rs.joint, names=names)
    single = {lab: _evaluate(cfg, keep, rs.single[lab], names=names) for lab in labels}
    attacks = {}
    for name in names:
        vs = {lab: aggregate_paired([paired_bootstrap(rs.joint[t][name], rs.single[lab][t][name], keep[t], fprs,
                                                      n_boot, seed) for t in rs.joint]) for lab in labels}
        metrics = list(vs[labels[0]])
        best = {m: max(labels, key=lambda lab: single[lab][name][m]) for m in metrics}
        attacks[name] = {"joint": joint[name], "single": {lab: single[lab][name] for lab in labels},
                         "best_single": best,
                         "paired": {m: {**vs[best[m]][m], "release": best[m]} for m in metrics},
                         "paired_vs": vs}
    tids = list(rs.joint)
    arrays = {"release_phi": rs.phi.astype(np.float32)}
    for name in names:
        arrays[f"joint_attack_{name}"] = np.stack([rs.joint[t][name] for t in tids]).astype(np.float64)
        arrays[f"release_attack_{name}"] = np.stack(
            [np.stack([rs.single[lab][t][name] for t in tids]) for lab in labels]).astype(np.float64)
    block = {"releases": labels, "reference": {lab: ("fp" if lab == "fp" else "matched") for lab in labels},
             "cost": rs.cost, "attacks": attacks}
    return block, arrays


def _ci(d: dict, digits: int = 4) -> str:
    f = f"{{:+.{digits}f}}"
    s = f.format(d["delta"])
    if d.get("ci") and d["ci"][0] is not None:
        s += f" [{f.format(d['ci'][0])}, {f.format(d['ci'][1])}]"
    return s + ("*" if d.get("significant") else "")


def rows(results: dict) -> list[dict]:
    """One row per joint attack of a job: joint vs best single release for the headline metrics."""
    block = results.get("releases")
    if not block:
        return []
    out = []
    for name, a in block["attacks"].items():
        row = {"attack": name, "releases": "+".join(block["releases"])}
        for m in HEADLINE:
            if m not in a["paired"]:
                continue
            row[m] = {"joint": a["joint"].get(m), "best": a["best_single"][m],
                      "best_value": a["single"][a["best_single"][m]].get(m),
                      "single": {lab: s.get(m) for lab, s in a["single"].items()}, "delta": a["paired"][m]}
        out.append(row)
    return out


def print_releases(results: dict) -> None:
    """The job's joint-attack table on the console (after the main table)."""
    from rich.console import Console
    from rich.table import Table

    from src.report.labels import metric_label

    rs = rows(results)
    if not rs:
        return
    console = Console(width=160)
    block = results["releases"]
    table = Table("attack", "releases", *[h for m in HEADLINE for h in
                                          (f"{metric_label(m)}: joint", "per release", "Δ joint − best [95% CI]")])
    for r in rs:
        cells = []
        for m in HEADLINE:
            v = r.get(m)
            if v is None:
                cells += ["n/a"] * 3
                continue
            cells += [f"{v['joint']:.4f}", "\n".join(f"{lab} {x:.4f}" for lab, x in v["single"].items()),
                      _ci(v["delta"]) + f"\nvs {v['best']}"]
        table.add_row(r["attack"], r["releases"], *cells)
    console.print(f"[bold]joint attack over released versions {block['releases']}[/bold] "
                  "(references: FP pool for fp, matched quantized pool for each quantized release)")
    console.print(table)
    console.print("Δ: joint − the best single release for that metric, same examples (paired); * = the CI excludes 0.")


def release_values(results: dict) -> dict[str, float]:
    """Flat numbers for W&B's run.summary: ``releases/<attack>/joint/<metric>``,
    ``releases/<attack>/<release>/<metric>``, ``releases/<attack>/delta_<metric>`` (+ _ci_lo/_ci_hi)."""
    block = results.get("releases") or {}
    out: dict[str, float] = {}
    for name, a in (block.get("attacks") or {}).items():
        p = f"releases/{name}"
        for m in HEADLINE:
            if a["joint"].get(m) is not None:
                out[f"{p}/joint/{m}"] = a["joint"][m]
            for lab, s in a["single"].items():
                if s.get(m) is not None:
                    out[f"{p}/{lab}/{m}"] = s[m]
            d = a["paired"].get(m)
            if d:
                out[f"{p}/delta_{m}"] = d["delta"]
                if d.get("ci") and d["ci"][0] is not None:
                    out[f"{p}/delta_{m}_ci_lo"], out[f"{p}/delta_{m}_ci_hi"] = d["ci"]
    for lab, c in (block.get("cost") or {}).items():
        if isinstance(c, dict) and c.get("quantize_seconds") is not None:
            out[f"releases/cost/{lab}/quantize_seconds"] = c["quantize_seconds"]
    return out


def markdown_section(results: list[dict]) -> str:
    """summary.md's section for the jobs with ``attack.release``: one row per job × joint attack."""
    from src.report.labels import dataset_display

    lines = []
    for res in results:
        job = res.get("job") or {}
        for r in rows(res):
            auc, tpr = r.get("auc"), r.get("tpr_at_fpr_1e-3")
            if not auc or not tpr:
                continue
            singles = lambda v: ", ".join(f"{lab} {x:.4f}" for lab, x in v["single"].items())  # noqa: E731
            lines.append(f"| {dataset_display(job, res.get('config'))} | {job.get('quant')} | {job.get('bits'):g} | "
                         f"{r['releases']} | {r['attack']} | {auc['joint']:.4f} | {singles(auc)} | "
                         f"{_ci(auc['delta'])} ({auc['best']}) | {100 * tpr['joint']:.2f} | "
                         f"{', '.join(f'{lab} {100 * x:.2f}' for lab, x in tpr['single'].items())} | "
                         f"{_ci({**tpr['delta'], 'delta': 100 * tpr['delta']['delta'], 'ci': [100 * c for c in tpr['delta']['ci']]}, 2)} "
                         f"({tpr['best']}) |")
    if not lines:
        return ""
    head = ("\n### Joint attack over released versions\n\n"
            "| dataset | quant | bits | releases | attack | AUC joint | AUC per release | ΔAUC joint − best [95% CI] | "
            "TPR@0.1% joint (%) | TPR@0.1% per release (%) | ΔTPR@0.1% joint − best [95% CI] (pp) |\n"
            "|---|---|---:|---|---|---:|---|---|---:|---|---|\n")
    note = ("\nΔ: joint − the best single release for that metric on the same examples (paired bootstrap for one "
            "target, Student-t over targets otherwise); * = the CI excludes 0. References: the FP pool for the FP "
            "release, the matched quantized pool for each quantized release.\n")
    return head + "\n".join(lines) + "\n" + note


def plot_roc(directory: Path, results: dict) -> Path | None:
    """releases.png: log-log ROC of the joint attack and of each release alone (the first joint attack,
    pooled over targets). A figure that fails to draw never costs the results already written."""
    block = results.get("releases")
    if not block or not block.get("attacks"):
        return None
    try:
        from src.report import plots
        from src.report.labels import dataset_display, series_style, targets_text

        name = "lira_online" if "lira_online" in block["attacks"] else next(iter(block["attacks"]))
        a = block["attacks"][name]
        n = plots._pooled_nonmembers(a["joint"]) or 0
        floor = 1.0 / n if n else plots.ROC_MIN
        lo = max(plots.ROC_MIN, 10 ** np.floor(np.log10(floor)))
        fig, (ax,) = plots._axes(1, size=(7.6, 5.2))
        plots._plot_curve(ax, a["joint"].get("roc"), floor, color="black", linewidth=2,
                          label=f"joint {'+'.join(block['releases'])} (AUC {a['joint']['auc']:.3f})")
        for i, (lab, s) in enumerate(a["single"].items()):
            plots._plot_curve(ax, s.get("roc"), floor, linewidth=1.2, markersize=4, markevery=(i % 5, 5),
                              label=f"{lab} alone (AUC {s['auc']:.3f})", **series_style(i))
        ax.plot([lo, 1], [lo, 1], color="grey", linewidth=0.8, linestyle=":", label="chance")
        if n:
            ax.axvspan(lo, floor, color="lightgray", alpha=0.5, linewidth=0,
                       label=f"below resolution: FPR < 1/N, N = {n:,} non-members")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlim(lo, 1)
        ax.set_ylim(lo, 1)
        plots._pct_axis(ax.xaxis, True)
        plots._pct_axis(ax.yaxis, True)
        ax.set_xlabel("false positive rate (%)")
        ax.set_ylabel("true positive rate (%)")
        job = results["job"]
        ax.set_title(f"{dataset_display(job, results.get('config'))} / {job['model']} / {job['quant']} {job['bits']:g}-bit — {name}, "
                     f"{targets_text(job, results.get('config'))}", fontsize=10)
        ax.grid(True, which="both", alpha=0.2)
        ax.legend(fontsize=8, loc="lower right")
        return plots._finish(fig, Path(directory) / "releases.png")
    except Exception as e:  # pragma: no cover - plotting backend problems
        log.warning("releases.png not drawn: %s", e)
        return None


def plot_deltas(results: list[dict], path: Path) -> Path | None:
    """The sweep's releases.png: per job with ``attack.release`` and joint attack, Δ = joint − best
    single release of AUC and of TPR at 0.1 % FPR with its 95 % interval. None when no job has one."""
    from src.report import plots
    from src.report.labels import metric_label, series_style

    points = []  # (label, attack, {metric: delta block})
    for res in results:
        job = res.get("job") or {}
        for r in rows(res):
            if all(m in r for m in HEADLINE):
                points.append((f"{job.get('quant')} {job.get('bits'):g}-bit\n{r['releases']}", r["attack"],
                               {m: r[m]["delta"] for m in HEADLINE}))
    if not points:
        return None
    attacks = list(dict.fromkeys(p[1] for p in points))
    jobs = list(dict.fromkeys(p[0] for p in points))
    fig, axes = plots._axes(len(HEADLINE), size=(max(5.0, 0.9 * len(jobs) + 2.5), 4.6))
    width = 0.8 / len(attacks)
    for ax, m in zip(axes, HEADLINE):
        scale = 100.0 if m.startswith("tpr") else 1.0
        for i, attack in enumerate(attacks):
            xs, ys, lo, hi = [], [], [], []
            for label, a, d in points:
                if a != attack:
                    continue
                x = jobs.index(label) - 0.4 + width * (i + 0.5)
                ci = d[m].get("ci") or [d[m]["delta"]] * 2
                xs.append(x)
                ys.append(scale * d[m]["delta"])
                lo.append(scale * (d[m]["delta"] - ci[0]))
                hi.append(scale * (ci[1] - d[m]["delta"]))
            st = series_style(i)
            ax.errorbar(xs, ys, yerr=[lo, hi], fmt=st["marker"], color=st["color"], capsize=3, label=attack)
        ax.axhline(0, color="black", linewidth=0.8)
        ax.set_xticks(range(len(jobs)))
        ax.set_xticklabels(jobs, fontsize=7)
        unit = " (percentage points)" if scale != 1.0 else ""
        ax.set_ylabel(f"Δ {metric_label(m)}: joint − best release{unit}", fontsize=8)
        ax.grid(True, axis="y", alpha=0.3)
        ax.legend(fontsize=7)
    ds = next((r.get("job") or {} for r in results if r.get("releases")), {})
    fig.suptitle(f"{ds.get('dataset_display') or ds.get('dataset')} / {ds.get('model')}: joint attack over released "
                 "versions vs the best single release (95 % CI)", fontsize=9)
    return plots._finish(fig, path)
