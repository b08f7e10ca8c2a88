"""Multirun summary: one table, one privacy–utility plot and one ROC plot across all jobs.

Local ``results.json`` files are the source of truth (DESIGN.md); this module only reads
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
ID_COLUMNS = ("dataset", "model", "quant", "bits", "policy", "layers", "reference", "attack")
UTILITY_COLUMNS = ("test_acc", "fp_test_acc", "accuracy_drop", "train_acc")
CI_COLUMNS = tuple(f"{m}_ci_{end}" for m in METRICS for end in ("lo", "hi"))
# paired Δ = metric(quantized) − metric(FP) on the same examples (src/attacks/paired.py)
DELTA_METRICS = ("auc", "tpr_at_fpr_1e-2", "tpr_at_fpr_1e-3")
DELTA_COLUMNS = tuple(f"delta_{m}{end}" for m in DELTA_METRICS for end in ("", "_ci_lo", "_ci_hi", "_significant"))
COLUMNS = (
    ID_COLUMNS + ("control",) + UTILITY_COLUMNS + METRICS + ("n_nonmembers",) + CI_COLUMNS + DELTA_COLUMNS
    + ("eps_lower_bound", "job_dir")
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
    row["eps_lower_bound"] = _float(m.get("eps_lower_bound"))
    return row


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
        "model": job.get("model"),
        "policy": job.get("policy"),
        "reference": reference,
        "fp_test_acc": _float(util.get("fp_test_acc")),
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
            control=_control(job),
            test_acc=_float(util.get("test_acc")),
            train_acc=_float(util.get("train_acc")),
            accuracy_drop=_float(util.get("accuracy_drop")),
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
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.{digits}f}"


def _delta(row: dict, metric: str) -> str:
    """'−0.0412 [−0.0630, −0.0201]*' (* = the CI excludes 0); '–' for the FP row."""
    d = row.get(f"delta_{metric}")
    if d is None or row.get("quant") == "fp":
        return "–"
    lo, hi = row.get(f"delta_{metric}_ci_lo"), row.get(f"delta_{metric}_ci_hi")
    out = f"{d:+.4f}"
    if lo is not None and hi is not None:
        out += f" [{lo:+.4f}, {hi:+.4f}]"
    return out + ("*" if row.get(f"delta_{metric}_significant") else "")


def method_label(row: dict) -> str:
    """The method cell of a table row: quantizer, plus what else tells jobs of one bit-width apart
    (policy, per-layer overrides, control strength, matched references), e.g. ``obc (paper; last 4)``."""
    if row.get("quant") == "fp":
        return "FP"
    extra = [str(x) for x in (row.get("policy") if row.get("policy") not in (None, "uniform", "fp") else None,
                              row.get("layers"), row.get("control")) if x]
    label = str(row["quant"]) + (f" ({'; '.join(extra)})" if extra else "")
    return label + (" [matched refs]" if row.get("reference") == "matched" else "")


def markdown_table(rows: list[dict], attack: str | None) -> str:
    """Method × bits table (FP first) of test accuracy, AUC and TPR@0.1%FPR for ``attack``;
    one table per (dataset, model)."""
    rows = [r for r in rows if r["attack"] == attack]
    blocks = []
    combos = list(dict.fromkeys((r["dataset"], r["model"]) for r in rows))
    for ds, model in combos:
        lines = [
            f"### {ds} / {model} — attack: {attack}",
            "",
            "| method | bits | test acc (%) | AUC | TPR@0.1%FPR (%) | ΔAUC vs FP [95% CI] |",
            "|---|---:|---:|---:|---:|---:|",
        ]
        for r in rows:
            if (r["dataset"], r["model"]) != (ds, model):
                continue
            method = method_label(r)
            auc = "–" if r["auc"] is None else f"{r['auc']:.4f}"
            tpr = _pct(r["tpr_at_fpr_1e-3"])
            lo, hi = r["tpr_at_fpr_1e-3_ci_lo"], r["tpr_at_fpr_1e-3_ci_hi"]
            if lo is not None and hi is not None:
                tpr += f" [{_pct(lo)}, {_pct(hi)}]"
            lines.append(
                f"| {method} | {fmt_bits(r['bits'])} | {_pct(r['test_acc'])} | {auc} | {tpr} | {_delta(r, 'auc')} |"
            )
        blocks.append("\n".join(lines))
    note = ("ΔAUC: paired difference quantized − FP on the same examples (paired bootstrap per target, "
            "t-interval over targets); * = the 95 % CI excludes 0.")
    return "\n\n".join(blocks) + "\n\n" + note + "\n"


def write_csv(rows: list[dict], path: Path) -> None:
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(COLUMNS), extrasaction="ignore")
        w.writeheader()
        for row in rows:
            w.writerow({k: ("" if row.get(k) is None else row.get(k)) for k in COLUMNS})


def write_summary(sweep_dir: str | Path, quiet: bool = False) -> dict[str, Path]:
    """Write summary.csv, summary.md, privacy_utility.png and roc.png into ``sweep_dir``
    and print the markdown table. Returns {name: path}; {} when there are no results."""
    from src.report import plots

    sweep = Path(sweep_dir)
    results = collect(sweep)
    if not results:
        return {}
    rows = rows_from_results(results)
    attack = primary_attack(results)
    paths = {
        "csv": sweep / "summary.csv",
        "md": sweep / "summary.md",
        "privacy_utility": sweep / "privacy_utility.png",
        "roc": sweep / "roc.png",
        "privacy_utility_delta": sweep / "privacy_utility_delta.png",
    }
    write_csv(rows, paths["csv"])
    md = markdown_table(rows, attack)
    paths["md"].write_text(md)
    # the plot shows each job once: with attack.reference=both, its primary (FP-reference) numbers
    # one point per job and method: FP-reference rows (matched-reference jobs and rows are in the tables)
    primary = [r for r in rows if not r.get("secondary") and r.get("reference") != "matched"] or rows
    plots.privacy_utility(primary, attack, paths["privacy_utility"])
    plots.roc(results, attack, paths["roc"])
    plots.privacy_utility_delta(primary, attack, paths["privacy_utility_delta"])
    if not quiet:
        print(md, end="")
    return paths


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m src.report.summary",
        description="Rebuild summary.csv/.md and plots of a sweep dir from its */results.json.",
    )
    p.add_argument("sweep_dir")
    args = p.parse_args(argv)
    try:
        paths = write_summary(args.sweep_dir)
    except Exception as e:  # one line, not a traceback, for `make report`
        print(f"error: summary of {args.sweep_dir} failed: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    if not paths:
        print(f"error: no */results.json under {args.sweep_dir}", file=sys.stderr)
        return 2
    print("wrote " + ", ".join(str(p) for p in paths.values()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
