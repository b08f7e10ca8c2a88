"""Multirun summary: tables (markdown and LaTeX), privacy–utility plots and a ROC plot across all jobs.

Local ``results.json`` files are the source of truth (docs/design.md, "Design rules"); this module only reads
them, so ``python -m src.report.summary SWEEP_DIR`` (``make report SWEEP=<dir>``) rebuilds
the summary of any finished or partial sweep without W&B and without re-running anything.

Row model (shared by ``summary.csv``, ``summary.md``, the plots and the W&B tables):
one row per quantized job × attack, plus one full-precision row per
(dataset, model, attack) with ``quant='fp'`` and ``bits=32``. The FP row is taken from a
``quant=none``/``fp`` job's own attacks when the sweep has one, otherwise from the first
job's ``fp_attacks`` (every job attacks its full-precision target too, and all jobs of a
(dataset, model) share that target, so these are the same numbers). ``quant=none`` jobs
therefore yield only FP rows, never a duplicate "none" method row.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import math
import sys
from pathlib import Path
from typing import Any, Iterable

from src.report.collapse import COLLAPSE_NOTE, collapsed, num_classes_of
from src.report.labels import (BELOW_RESOLUTION, NOT_APPLICABLE, RESOLUTION_NOTE, dataset_display, metric_label,
                               policy_label, resolved, wa_label)

log = logging.getLogger(__name__)

FP_QUANTS = ("none", "fp")
FP_BITS = 32.0
METRICS = (
    "auc",
    "balanced_accuracy",
    "tpr_at_fpr_1e-2",
    "tpr_at_fpr_1e-3",
    "tpr_at_fpr_1e-4",
)
ID_COLUMNS = ("dataset", "model", "quant", "bits", "policy", "layers", "act_bits", "reference", "attack")
UTILITY_COLUMNS = ("test_acc", "fp_test_acc", "accuracy_drop", "collapsed", "train_acc", "n_targets")
TPR_METRICS = tuple(m for m in METRICS if m.startswith("tpr_at_fpr_"))
# False where the TPR's FPR is below 1/N non-members (src/report/labels.py, resolved)
RESOLVED_COLUMNS = tuple(f"{m}_resolved" for m in TPR_METRICS)
CI_COLUMNS = tuple(f"{m}_ci_{end}" for m in METRICS for end in ("lo", "hi"))
# paired Δ = metric(quantized) − metric(FP) on the same examples (src/attacks/paired.py)
DELTA_METRICS = ("auc", "tpr_at_fpr_1e-2", "tpr_at_fpr_1e-3")
DELTA_COLUMNS = tuple(f"delta_{m}{end}" for m in DELTA_METRICS for end in ("", "_ci_lo", "_ci_hi", "_significant"))
# the pooled ROC over targets (src/attacks/pooled.py): TPR with CI, the non-member trials and false
# positives behind it, and the paired Δ of pooled TPRs
POOLED_COLUMNS = (("pooled_n_nonmembers",)
                  + tuple(f"pooled_{m}{end}" for m in TPR_METRICS for end in ("", "_ci_lo", "_ci_hi", "_fp"))
                  + tuple(f"delta_pooled_{m}{end}" for m in TPR_METRICS for end in ("", "_ci_lo", "_ci_hi")))
COLUMNS = (
    ID_COLUMNS + ("control",) + UTILITY_COLUMNS + METRICS + ("n_nonmembers",) + RESOLVED_COLUMNS + CI_COLUMNS
    + DELTA_COLUMNS + POOLED_COLUMNS
    + ("eps_lower_bound", "dataset_display", "num_classes", "code_version", "job_dir")
)


# ---------------------------------------------------------------------------------------
# reading


def _job_sort_key(path: Path) -> tuple:
    name = path.parent.name
    return (0, int(name), "") if name.isdigit() else (1, 0, name)


def collect(sweep_dir: str | Path) -> list[dict]:
    """Read every ``<sweep_dir>/*/results.json`` (and ``<sweep_dir>/results.json`` for a
    single run dir), in job-number order. Unreadable files are skipped with a warning so a
    crashed job never hides the others. Each dict gets ``job_dir`` (str) added."""
    sweep = Path(sweep_dir)
    if not sweep.is_dir():
        return []
    files = sorted(sweep.glob("*/results.json"), key=_job_sort_key)
    if (sweep / "results.json").is_file():
        files.insert(0, sweep / "results.json")
    results = []
    for f in files:
        try:
            data = json.loads(f.read_text())
        except (OSError, ValueError) as e:
            log.warning("skipping unreadable %s (%s)", f, e)
            continue
        if not isinstance(data, dict) or "job" not in data:
            log.warning("skipping %s: not a results.json (no 'job' key)", f)
            continue
        data["job_dir"] = str(f.parent)
        results.append(data)
    return results


def is_fp_job(result: dict) -> bool:
    return str(result.get("job", {}).get("quant", "")).lower() in FP_QUANTS


def primary_attack(results: Iterable[dict]) -> str | None:
    """First of ``config.attack.names`` (the attack the paper's tables report), else the
    first attack any job has."""
    results = list(results)
    for r in results:
        names = (r.get("config") or {}).get("attack", {}).get("names")
        if isinstance(names, str):
            names = [names]
        for name in names or []:
            if any(name in (x.get("attacks") or {}) for x in results):
                return name
    for r in results:
        for name in r.get("attacks") or {}:
            return name
        for name in r.get("fp_attacks") or {}:
            return name
    return None


# ---------------------------------------------------------------------------------------
# rows


def _float(x: Any) -> float | None:
    try:
        return None if x is None else float(x)
    except (TypeError, ValueError):
        return None


def _metric_row(base: dict, attack: str, m: dict) -> dict:
    row = dict(base)
    row["attack"] = attack
    for k in METRICS:
        row[k] = _float(m.get(k))
    row["n_nonmembers"] = m.get("n_nonmembers")
    row["n_targets"] = m.get("n_targets") or len(m.get("per_target") or []) or None
    flags = m.get("resolved") or {}
    for k in TPR_METRICS:  # results.json's flag; derived from the non-member count for older files
        flag = flags.get(k)
        row[f"{k}_resolved"] = bool(flag) if flag is not None else resolved(k, _min_nonmembers(m))
    ci = m.get("ci") or {}
    for k in METRICS:
        lo_hi = ci.get(k)
        lo, hi = (lo_hi if isinstance(lo_hi, (list, tuple)) and len(lo_hi) == 2 else (None, None))
        row[f"{k}_ci_lo"], row[f"{k}_ci_hi"] = _float(lo), _float(hi)
    paired = m.get("paired") or {}
    for k in DELTA_METRICS:
        d = paired.get(k) or {}
        lo, hi = (d.get("ci") or [None, None])[:2]
        row[f"delta_{k}"], row[f"delta_{k}_ci_lo"], row[f"delta_{k}_ci_hi"] = _float(d.get("delta")), _float(lo), _float(hi)
        row[f"delta_{k}_significant"] = d.get("significant")
    pooled, pp = m.get("pooled") or {}, m.get("paired_pooled") or {}
    row["pooled_n_nonmembers"] = pooled.get("n_nonmembers")
    for k in TPR_METRICS:
        lo, hi = ((pooled.get("ci") or {}).get(k) or [None, None])[:2]
        row[f"pooled_{k}"], row[f"pooled_{k}_ci_lo"], row[f"pooled_{k}_ci_hi"] = _float(pooled.get(k)), _float(lo), _float(hi)
        row[f"pooled_{k}_fp"] = pooled.get(f"fp_at_fpr_{k[len('tpr_at_fpr_'):]}")
        d = pp.get(k) or {}
        lo, hi = (d.get("ci") or [None, None])[:2]
        row[f"delta_pooled_{k}"], row[f"delta_pooled_{k}_ci_lo"], row[f"delta_pooled_{k}_ci_hi"] = (
            _float(d.get("delta")), _float(lo), _float(hi))
    # 95 % lower bound on ε for all targets at once; results.json files without the old estimate
    # beside it hold that estimate's mean under this key, which is no bound: left empty
    row["eps_lower_bound"] = _float(m.get("eps_lower_bound")) if "eps_max_over_thresholds" in m else None
    return row


def _min_nonmembers(m: dict) -> int | None:
    counts = [p["n_nonmembers"] for p in m.get("per_target") or [] if p.get("n_nonmembers") is not None]
    return int(min(counts)) if counts else (int(m["n_nonmembers"]) if m.get("n_nonmembers") is not None else None)


def job_code_version(result: dict) -> str | None:
    """The commit that ran a job (results.json provenance), ``+dirty`` with uncommitted changes."""
    code = ((result.get("provenance") or {}).get("code")) or {}
    if code.get("commit"):
        return str(code["commit"])[:12] + ("+dirty" if code.get("dirty") else "")
    return str(code["version"]) if code.get("version") else None


def _is_true(v: Any) -> bool:
    """A flag from a row or a CSV cell ('True')."""
    return v is True or str(v).lower() == "true"


def _control(job: dict) -> str | None:
    """'sigma=0.1' for a matched-utility control job (quant=noise/prune), else None."""
    c = job.get("control")
    return f"{c['key']}={c['value']:g}" if c else None


def job_rows(result: dict, fp: bool = False, matched: bool = False) -> list[dict]:
    """Rows of one job: its attacks (``fp=False``), its ``fp_attacks`` as FP rows, or (``matched``,
    for ``attack.reference=both``) its ``attacks_matched`` with reference 'matched'."""
    job, util = result.get("job", {}), result.get("utility", {})
    reference = "matched" if matched or job.get("reference") == "matched" else "fp"
    base = {
        "dataset": job.get("dataset"),
        "dataset_display": dataset_display(job, result.get("config")),
        "model": job.get("model"),
        "policy": job.get("policy"),
        "reference": reference,
        "fp_test_acc": _float(util.get("fp_test_acc")),
        "num_classes": num_classes_of(job, result.get("config")),
        "code_version": job_code_version(result),
        "job_dir": result.get("job_dir", ""),
    }
    if fp:
        attacks = result.get("attacks") if is_fp_job(result) else result.get("fp_attacks")
        base.update(
            quant="fp",
            bits=FP_BITS,
            policy="fp",
            test_acc=_float(util.get("fp_test_acc")),
            train_acc=_float(util.get("fp_train_acc")),
            accuracy_drop=0.0,
        )
    else:
        attacks = result.get("attacks_matched") if matched else result.get("attacks")
        base.update(
            quant=job.get("quant"),
            bits=_float(job.get("bits")),
            layers=job.get("layers"),
            act_bits=job.get("act_bits"),
            control=_control(job),
            test_acc=_float(util.get("test_acc")),
            train_acc=_float(util.get("train_acc")),
            accuracy_drop=_float(util.get("accuracy_drop")),
            converged=((result.get("quant") or {}).get("convergence") or {}).get("summary", {}).get("converged"),
            collapsed=collapsed(util.get("test_acc"), util.get("fp_test_acc"), base["num_classes"]),
        )
    rows = [_metric_row(base, a, m) for a, m in (attacks or {}).items()]
    for r in rows:
        r["secondary"] = matched
    return rows


def _control_value(row: dict) -> float:
    c = row.get("control")
    return float(c.split("=", 1)[1]) if c else 0.0


def rows_from_results(results: list[dict]) -> list[dict]:
    """All summary rows: FP rows first per (dataset, model), then methods A–Z, bits high→low."""
    fp_rows: dict[tuple, dict] = {}
    # a quant=none job measures FP directly: let it win over other jobs' fp_attacks
    for r in sorted(results, key=lambda r: not is_fp_job(r)):
        for row in job_rows(r, fp=True):
            fp_rows.setdefault((row["dataset"], row["model"], row["attack"]), row)
    rows = list(fp_rows.values())
    for r in results:
        if not is_fp_job(r):
            rows.extend(job_rows(r))
            if "attacks_matched" in r:  # attack.reference=both
                rows.extend(job_rows(r, matched=True))
    attack_order = {}
    for row in rows:
        attack_order.setdefault(row["attack"], len(attack_order))

    def key(row: dict) -> tuple:
        return (
            str(row["dataset"]),
            str(row["model"]),
            row["quant"] != "fp",
            str(row["quant"]),
            -(row["bits"] if row["bits"] is not None else -1),
            _control_value(row),
            str(row.get("policy")),
            str(row.get("layers") or ""),
            -(row.get("act_bits") or 99),
            str(row.get("reference")),
            attack_order[row["attack"]],
        )

    return sorted(rows, key=key)


# ---------------------------------------------------------------------------------------
# writing


def fmt_bits(bits: Any) -> str:
    b = _float(bits)
    return "?" if b is None else f"{b:g}"


def _pct(x: float | None, digits: int = 2) -> str:
    return NOT_APPLICABLE if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.{digits}f}"


def _delta(row: dict, metric: str) -> str:
    """'−0.0412 [−0.0630, −0.0201]*' (* = the CI excludes 0); 'n/a' for the FP row."""
    d = row.get(f"delta_{metric}")
    if d is None or row.get("quant") == "fp":
        return NOT_APPLICABLE
    lo, hi = row.get(f"delta_{metric}_ci_lo"), row.get(f"delta_{metric}_ci_hi")
    out = f"{d:+.4f}"
    if lo is not None and hi is not None:
        out += f" [{lo:+.4f}, {hi:+.4f}]"
    return out + ("*" if row.get(f"delta_{metric}_significant") else "")


def default_metric(rows: list[dict]) -> str:
    """The privacy column of the tables and the y axis of the privacy–utility plot when none is chosen:
    TPR at the lowest FPR that every row resolves (0.1 % with the paper's 25,000 non-members, 1 % with
    digits' ~750), else TPR @ 1 % FPR."""
    for m in sorted(TPR_METRICS, key=lambda k: float(k[len("tpr_at_fpr_"):])):
        if rows and all(r.get(f"{m}_resolved", True) for r in rows):
            return m
    return TPR_METRICS[0]


def _is_resolved(row: dict, metric: str) -> bool:
    return bool(row.get(f"{metric}_resolved", True))


def method_label(r: dict) -> str:
    """The method cell: quantizer plus what tells jobs of one bit-width apart (control strength,
    per-layer overrides, matched references), e.g. ``obc (last 4)``; the bit policy has its own column."""
    method = "FP" if r["quant"] == "fp" else str(r["quant"])
    if r.get("control"):
        method += f" ({r['control']})"
    if r.get("layers"):  # per-layer overrides tell jobs of one bit-width apart, e.g. "obc (last 4)"
        method += f" ({r['layers']})"
    if r.get("act_bits") is not None:  # activations quantized too, e.g. "obc W2A8"
        method += f" {wa_label(r.get('bits'), r['act_bits'])}"
    if r.get("reference") == "matched":
        method += " [matched refs]"
    if r.get("converged") is False:  # learned rounding hardened before it settled (see the warnings)
        method += " (unsettled)"
    return method


def _cells(r: dict, metric: str) -> dict[str, str]:
    """The table cells of one summary row (shared by markdown and LaTeX)."""
    def ci(lo, hi, f):
        return f" [{f(lo)}, {f(hi)}]" if lo is not None and hi is not None else ""

    auc = NOT_APPLICABLE if r["auc"] is None else f"{r['auc']:.4f}" + ci(r["auc_ci_lo"], r["auc_ci_hi"], "{:.4f}".format)
    if not _is_resolved(r, metric):
        priv = BELOW_RESOLUTION
    elif metric.startswith("tpr_at_fpr_") or metric == "balanced_accuracy":
        priv = _pct(r.get(metric)) + ci(r.get(f"{metric}_ci_lo"), r.get(f"{metric}_ci_hi"), _pct)
    else:
        priv = NOT_APPLICABLE if r.get(metric) is None else f"{r[metric]:.4f}"
    pooled = NOT_APPLICABLE
    if metric.startswith("tpr_at_fpr_") and r.get(f"pooled_{metric}") is not None:
        pooled = (_pct(r[f"pooled_{metric}"]) + ci(r.get(f"pooled_{metric}_ci_lo"), r.get(f"pooled_{metric}_ci_hi"), _pct)
                  + f" ({r.get(f'pooled_{metric}_fp')} FP / {r.get('pooled_n_nonmembers')})")
        if r.get(f"delta_pooled_{metric}") is not None and r.get("quant") != "fp":
            lo, hi = r.get(f"delta_pooled_{metric}_ci_lo"), r.get(f"delta_pooled_{metric}_ci_hi")
            pooled += f"; Δ {100 * r[f'delta_pooled_{metric}']:+.2f} [{100 * lo:+.2f}, {100 * hi:+.2f}]"
    return {"method": method_label(r), "bits": fmt_bits(r["bits"]), "pooled": pooled,
            "policy": "full precision" if r["quant"] == "fp" else policy_label(r.get("policy"), r.get("dataset")),
            "targets": NOT_APPLICABLE if r.get("n_targets") is None else str(r["n_targets"]),
            "train": _pct(r.get("train_acc")), "auc": auc, "priv": priv,
            "test": _pct(r.get("test_acc")) + (" (collapsed)" if _is_true(r.get("collapsed")) else ""),
            "delta": _delta(r, "auc")}


def _headers(metric: str) -> dict[str, str]:
    priv = metric_label(metric) + (" (%)" if metric != "auc" else "") + " [95% CI]"
    return {"method": "method", "bits": "bits", "policy": "bit policy", "targets": "targets",
            "train": "train acc (%)", "test": "test acc (%)", "auc": "AUC [95% CI]", "priv": priv,
            "delta": "ΔAUC vs FP [95% CI]",
            "pooled": f"pooled {metric_label(metric)} (%) [95% CI] (false positives / non-members); Δ vs FP"}


def _columns(metric: str) -> list[str]:
    cols = ["method", "bits", "policy", "targets", "train", "test", "auc", "priv", "pooled", "delta"]
    return [c for c in cols if not (c in ("priv", "pooled") and metric == "auc")]


def _groups(rows: list[dict], attacks: list[str]) -> list[tuple[str, str, list[dict]]]:
    """(title, attack, rows) of each table: one per (dataset, model, attack)."""
    out = []
    for ds, model in dict.fromkeys((r["dataset"], r["model"]) for r in rows):
        for attack in attacks:
            sub = [r for r in rows if (r["dataset"], r["model"], r["attack"]) == (ds, model, attack)]
            if sub:
                out.append((f"{sub[0].get('dataset_display') or ds} / {model}", attack, sub))
    return out


def _notes(rows: list[dict], metric: str) -> list[str]:
    ks = sorted({int(r["n_targets"]) for r in rows if r.get("n_targets")})
    notes = ["AUC: P(member score > non-member score) + ½·P(tie). [95% CI]: Student-t interval over the "
             "targets (k ≥ 2), percentile bootstrap of members and non-members (k = 1)"
             + (f"; k = {', '.join(map(str, ks))}." if ks else ".")]
    notes.append("ΔAUC: paired difference quantized − FP on the same examples. [95% CI]: Student-t interval "
                 "over the targets' Δ (k ≥ 2), paired bootstrap (k = 1); * = the CI excludes 0; "
                 f"{NOT_APPLICABLE} = not applicable (the FP row).")
    notes.append("Units: accuracies and TPRs in %; AUC and ΔAUC on the 0–1 scale (0.5 = chance).")
    if any(_is_true(r.get("collapsed")) for r in rows):
        notes.append(f"(collapsed) = {COLLAPSE_NOTE}.")
    if metric.startswith("tpr_at_fpr_") and any(r.get(f"pooled_{metric}") is not None for r in rows):
        notes.append("pooled: one ROC over all targets' members and non-members (one threshold), with the false "
                     "positives and non-member trials behind its TPR; [95% CI]: targets resampled and examples "
                     "reweighted, Student-t with k − 1 df, logit scale (docs/attacks.md); Δ: pooled TPR quantized − "
                     "FP, paired, in percentage points.")
    if any(not _is_resolved(r, metric) for r in rows):
        ns = sorted({int(r["n_nonmembers"]) for r in rows if r.get("n_nonmembers") is not None})
        notes.append(f"{RESOLUTION_NOTE}; N ≈ {', '.join(map(str, ns))} non-members per target.")
    return notes


def markdown_table(rows: list[dict], attack: str | list[str] | None, metric: str | None = None) -> str:
    """Method × bits tables (FP first): bit policy, targets, train/test accuracy, AUC, ``metric``
    (default :func:`default_metric`) and the paired ΔAUC; one table per (dataset, model, attack)
    for ``attack`` (one name, a list, or None for every attack)."""
    attacks = list(dict.fromkeys(r["attack"] for r in rows)) if attack is None else (
        [attack] if isinstance(attack, str) else list(attack))
    rows = [r for r in rows if r["attack"] in attacks]
    metric = metric or default_metric(rows)
    head, cols = _headers(metric), _columns(metric)
    right = {"bits", "targets", "train", "test", "auc", "priv", "pooled", "delta"}
    blocks = []
    for title, name, sub in _groups(rows, attacks):
        lines = [f"### {title} — attack: {name}", "",
                 "| " + " | ".join(head[c] for c in cols) + " |",
                 "|" + "|".join("---:" if c in right else "---" for c in cols) + "|"]
        for r in sub:
            cells = _cells(r, metric)
            lines.append("| " + " | ".join(cells[c] for c in cols) + " |")
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks) + "\n\n" + "\n".join(f"{n}  " for n in _notes(rows, metric)).rstrip() + "\n"


_TEX = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_", "{": r"\{",
        "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}", "×": r"$\times$", "—": "---",
        "–": "--", "−": "$-$", "Δ": r"$\Delta$", "≥": r"$\geq$", "≈": r"$\approx$", "·": r"$\cdot$",
        "½": r"$\frac{1}{2}$", "<": "$<$", ">": "$>$", "ρ": r"$\rho$"}


def tex_escape(text: str) -> str:
    return "".join(_TEX.get(c, c) for c in str(text))


def latex_table(rows: list[dict], attack: str | list[str] | None, metric: str | None = None) -> str:
    """The tables of :func:`markdown_table` as LaTeX ``booktabs`` tables (\\usepackage{booktabs})."""
    attacks = list(dict.fromkeys(r["attack"] for r in rows)) if attack is None else (
        [attack] if isinstance(attack, str) else list(attack))
    rows = [r for r in rows if r["attack"] in attacks]
    metric = metric or default_metric(rows)
    head, cols = _headers(metric), _columns(metric)
    align = "".join("l" if c in ("method", "policy") else "r" for c in cols)
    notes = " ".join(tex_escape(n) for n in _notes(rows, metric))
    out = ["% generated by src/report/summary.py; needs \\usepackage{booktabs}"]
    for title, name, sub in _groups(rows, attacks):
        out += [r"\begin{table}[t]", r"\centering", r"\footnotesize",
                rf"\caption{{{tex_escape(title)} --- attack: {tex_escape(name)}}}",
                rf"\begin{{tabular}}{{{align}}}", r"\toprule",
                " & ".join(tex_escape(head[c]) for c in cols) + r" \\", r"\midrule"]
        for r in sub:
            cells = _cells(r, metric)
            out.append(" & ".join(tex_escape(cells[c]) for c in cols) + r" \\")
        out += [r"\bottomrule", r"\end{tabular}", rf"\par\smallskip\parbox{{\linewidth}}{{\scriptsize {notes}}}",
                r"\end{table}", ""]
    return "\n".join(out)


def write_csv(rows: list[dict], path: Path) -> None:
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(COLUMNS), extrasaction="ignore")
        w.writeheader()
        for row in rows:
            w.writerow({k: ("" if row.get(k) is None else row.get(k)) for k in COLUMNS})


def warnings_section(results: list[dict]) -> str:
    """The jobs' warnings (results.json ``warnings``), each once with the jobs that raised it."""
    seen: dict[str, list[str]] = {}
    for r in results:
        for w in r.get("warnings") or []:
            seen.setdefault(str(w), []).append(Path(str(r.get("job_dir", "?"))).name)
    if not seen:
        return ""
    lines = [f"- {w} (jobs: {', '.join(jobs)})" for w, jobs in seen.items()]
    return "\n### Warnings\n\n" + "\n".join(lines) + "\n"


def read_csv_rows(path: str | Path) -> list[dict]:
    """Summary rows back from a summary.csv (numbers as floats, flags as bools, empty cells None):
    enough to redraw the tables and the row-based figures of a sweep whose job dirs are elsewhere."""
    def value(v: str):
        if v == "":
            return None
        if v in ("True", "False"):
            return v == "True"
        try:
            return float(v)
        except ValueError:
            return v

    text = {"dataset", "model", "quant", "policy", "layers", "reference", "attack", "control", "job_dir",
            "dataset_display", "code_version"}
    with open(path, newline="") as f:
        rows = [{k: (v or None) if k in text else value(v) for k, v in r.items()} for r in csv.DictReader(f)]
    for r in rows:
        for k in ("n_targets", "n_nonmembers", "num_classes", "act_bits"):
            if r.get(k) is not None:
                r[k] = int(r[k])
        r["secondary"] = False
        if r.get("collapsed") is None and r["quant"] != "fp":
            r["collapsed"] = collapsed(r.get("test_acc"), r.get("fp_test_acc"), r.get("num_classes"))
    return rows


def version_note(rows: list[dict], from_csv: bool = False) -> str:
    """The code versions behind a summary: the commit that drew it and the commits that ran its jobs."""
    from src.provenance import code_version

    code = code_version()
    drawn = (str(code["commit"])[:12] + ("+dirty" if code.get("dirty") else "") if code.get("commit")
             else str(code.get("version")))
    jobs = sorted({str(r["code_version"]) for r in rows if r.get("code_version")})
    ran = f"jobs run by ptq-mia {', '.join(jobs)}" if jobs else "the jobs' code version is not in their summary.csv"
    src = " from summary.csv" if from_csv else ""
    return f"Code version: tables and figures drawn{src} by ptq-mia {drawn}; {ran}.\n"


def summary_suffix(attack: str | None, metric: str | None) -> str:
    """'' for the sweep's own summary; '_<attack>_<metric>' for a re-ranked one written beside it."""
    return "".join(f"_{x}" for x in (attack, metric) if x)


def write_summary(sweep_dir: str | Path, quiet: bool = False, attack: str | None = None,
                  metric: str | None = None, rows_csv: str | Path | None = None) -> dict[str, Path]:
    """Write summary.csv, summary.md, summary.tex, privacy_utility.png, privacy_utility_delta.png and
    roc.png into ``sweep_dir`` and print the markdown. The tables cover every attack, or ``attack``
    only; the plots show ``attack`` (default: the primary one). ``metric`` is the tables' privacy
    column and the privacy–utility plot's y axis (default :func:`default_metric`). With ``attack`` or
    ``metric`` the files are named ``summary_<attack>_<metric>.*`` (and the plots likewise), beside
    the sweep's own summary, which stays as the sweep wrote it. ``rows_csv``: redraw from that
    summary.csv where the sweep's results.json files are not at hand (the ROC, which needs them, is
    then not drawn). Returns {name: path}; {} when there are no results. Raises ChoiceError for an
    unknown attack or metric."""
    from src.report import plots

    sweep = Path(sweep_dir)
    results = [] if rows_csv else collect(sweep)
    if rows_csv:
        rows = read_csv_rows(rows_csv)
    elif results:
        rows = rows_from_results(results)
    else:
        return {}
    attacks = list(dict.fromkeys(r["attack"] for r in rows))
    check_choice("ATTACK", attack, attacks, "an attack of this sweep")
    check_choice("METRIC", metric, list(METRICS), "a summary metric")
    shown = attack or (primary_attack(results) if results else attacks[0])
    metric_shown = metric or default_metric([r for r in rows if r["attack"] == shown])
    sfx = summary_suffix(attack, metric)
    paths = {
        "csv": sweep / f"summary{sfx}.csv",
        "md": sweep / f"summary{sfx}.md",
        "tex": sweep / f"summary{sfx}.tex",
        "privacy_utility": sweep / f"privacy_utility{sfx}.png",
        "roc": sweep / f"roc{sfx}.png",
        "privacy_utility_delta": sweep / f"privacy_utility_delta{sfx}.png",
    }
    if not results:
        paths.pop("roc")
    sweep.mkdir(parents=True, exist_ok=True)
    if not rows_csv or Path(rows_csv).resolve() != paths["csv"].resolve():
        write_csv(rows, paths["csv"])
    from src.report.releases import markdown_section

    md = (markdown_table(rows, attack, metric_shown) + markdown_section(results) + warnings_section(results) + "\n"
          + version_note(rows, bool(rows_csv)))
    paths["md"].write_text(md)
    paths["tex"].write_text(latex_table(rows, attack, metric_shown))
    # one point per job and method: FP-reference rows (matched-reference jobs and rows are in the tables)
    primary = [r for r in rows if not r.get("secondary") and r.get("reference") != "matched"] or rows
    plots.privacy_utility(primary, shown, paths["privacy_utility"], metric=metric_shown)
    if results:
        plots.roc(results, shown, paths["roc"])
    plots.privacy_utility_delta(primary, shown, paths["privacy_utility_delta"])
    from src.report.releases import plot_deltas

    if plot_deltas(results, sweep / "releases.png"):  # jobs with attack.release
        paths["releases"] = sweep / "releases.png"
    if not quiet:
        print(md, end="")
    return paths


class ChoiceError(ValueError):
    """An ATTACK or METRIC the sweep does not have."""


def check_choice(name: str, value: str | None, allowed: list[str], what: str) -> None:
    if value is not None and value not in allowed:
        raise ChoiceError(f"{name}={value}: not {what}; allowed: {', '.join(allowed)}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m src.report.summary",
        description="Rebuild summary.csv/.md/.tex and plots of a sweep dir from its */results.json.",
    )
    p.add_argument("sweep_dir")
    p.add_argument("--attack", default=None, help="one attack's table and plots (default: every attack's "
                   "table, the primary attack's plots)")
    p.add_argument("--metric", default=None, help=f"privacy column and plot axis: one of {', '.join(METRICS)} "
                   "(default: TPR at the lowest FPR every row resolves)")
    p.add_argument("--from-csv", default=None, metavar="SUMMARY_CSV",
                   help="redraw the tables and the privacy-utility figures from this summary.csv (the sweep's "
                   "job dirs are not needed; no ROC)")
    args = p.parse_args(argv)
    try:
        paths = write_summary(args.sweep_dir, attack=args.attack or None, metric=args.metric or None,
                              rows_csv=args.from_csv)
    except ChoiceError as e:  # an unknown ATTACK/METRIC: the allowed values, one line
        print(f"error: {e}", file=sys.stderr)
        return 2
    except Exception as e:  # one line, not a traceback, for `make report`
        print(f"error: summary of {args.sweep_dir} failed: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    if not paths:
        print(f"error: no */results.json under {args.sweep_dir}", file=sys.stderr)
        return 2
    print("wrote " + ", ".join(str(p) for p in paths.values()))
    if summary_suffix(args.attack, args.metric):
        print(f"(beside the sweep's own summary.md/.csv/.tex and figures, which are unchanged)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
