"""The W&B comparison charts of a sweep, as plain data (no wandb import).

One source for what the summary run logs (:meth:`src.report.wandb_sink.WandbSink.log_charts`,
each spec becomes a ``wandb.plot.line`` chart over a ``wandb.Table``) and for what the saved Report
shows (:mod:`src.report.wandb_report` points its panels at the same tables). Charts, built from the
summary rows (:func:`src.report.summary.rows_from_results`):

* ``charts/test_acc_vs_bits``: test accuracy vs bits, one line per quantizer;
* per attack ``charts/<attack>/auc_vs_bits`` and ``charts/<attack>/tpr_at_fpr_1e-3_vs_bits``;
* per attack ``charts/<attack>/privacy_utility``: TPR at 0.1 % FPR vs test accuracy, one line (colour)
  per quantizer through its bit-widths.

The full-precision target is the line ``FP (32-bit)``: in the charts over bits it is drawn flat at
its value across the sweep's bit-widths (a reference level; a point at 32 bits would squeeze the
1.58–8 bit range), in the privacy–utility chart it is one point. Lines are labelled by quantizer,
plus the bit-width policy when not uniform and the per-layer overrides (``last 4``), ``[matched refs]`` for the matched-reference numbers of
``attack.reference=both``, and ``dataset/model:`` when the sweep spans several. Matched-utility
controls (``quant=noise|prune``, rows with a ``control``) have no bit-width: they appear only in the
privacy–utility chart, one line per control through its strengths.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

FP_LABEL = "FP (32-bit)"
TPR_KEY = "tpr_at_fpr_1e-3"
# (row key = the column in the chart's table, label in titles); column names stay plain identifiers
# because the charts' Vega specs read a "." in a field name as nesting
BITS_METRICS = (("auc", "AUC"), (TPR_KEY, "TPR@0.1%FPR"))


@dataclass(frozen=True)
class ChartSpec:
    key: str                      # the run.log key; W&B stores the table under f"{key}_table"
    title: str
    columns: tuple[str, ...]
    data: tuple[tuple, ...]
    x: str
    y: str
    stroke: str = "quantizer"

    @property
    def table_key(self) -> str:
        return f"{self.key}_table"


def _num(v) -> float | None:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(f) else f


def series_label(row: dict, multi_combo: bool) -> str:
    if row.get("quant") == "fp":
        label = FP_LABEL
    else:
        label = str(row.get("quant"))
        if row.get("policy") not in (None, "uniform", "fp"):
            label += f" ({row['policy']})"
        if row.get("layers"):
            label += f" ({row['layers']})"
        if row.get("act_bits") is not None:
            label += f" A{int(row['act_bits'])}"
        if row.get("secondary"):
            label += " [matched refs]"
    if multi_combo:
        label = f"{row.get('dataset')}/{row.get('model')}: {label}"
    return label


def attacks_of(rows: list[dict]) -> list[str]:
    return list(dict.fromkeys(str(r["attack"]) for r in rows if r.get("attack") is not None))


def _vs_bits(rows: list[dict], value_key: str, multi: bool) -> list[tuple]:
    """(bits, value, label) for the quantized rows, plus the FP rows flat over each combo's bits."""
    out, seen = [], set()
    bits_of_combo: dict[tuple, list[float]] = {}
    for r in rows:
        if r.get("quant") == "fp" or r.get("control"):  # controls (noise, prune) have no bit-width
            continue
        b, v = _num(r.get("bits")), _num(r.get(value_key))
        if b is None or v is None:
            continue
        label = series_label(r, multi)
        if (label, b) in seen:  # test accuracy repeats for every attack of a job
            continue
        seen.add((label, b))
        out.append((b, v, label))
        bits_of_combo.setdefault((r.get("dataset"), r.get("model")), []).append(b)
    for r in rows:
        if r.get("quant") != "fp" or _num(r.get(value_key)) is None:
            continue
        label = series_label(r, multi)
        for b in sorted(set(bits_of_combo.get((r.get("dataset"), r.get("model")), []))):
            if (label, b) not in seen:
                seen.add((label, b))
                out.append((b, _num(r.get(value_key)), label))
    return sorted(out, key=lambda t: (t[2], t[0]))


def chart_specs(rows: list[dict]) -> list[ChartSpec]:
    """Every chart of the summary run, in display order (test accuracy, then per attack)."""
    if not rows:
        return []
    multi = len({(r.get("dataset"), r.get("model")) for r in rows}) > 1
    specs = []
    data = _vs_bits(rows, "test_acc", multi)
    if data:
        specs.append(ChartSpec("charts/test_acc_vs_bits", "test accuracy vs bits (one line per quantizer)",
                               ("bits", "test_acc", "quantizer"), tuple(data), "bits", "test_acc"))
    for attack in attacks_of(rows):
        ar = [r for r in rows if r["attack"] == attack]
        for key, col in BITS_METRICS:
            data = _vs_bits(ar, key, multi)
            if data:
                specs.append(ChartSpec(f"charts/{attack}/{key}_vs_bits",
                                       f"{attack}: {col} vs bits (one line per quantizer)",
                                       ("bits", key, "quantizer"), tuple(data), "bits", key))
        pts = []
        for r in ar:
            acc, tpr = _num(r.get("test_acc")), _num(r.get(TPR_KEY))
            if acc is not None and tpr is not None:
                pts.append((acc, tpr, series_label(r, multi), _num(r.get("bits"))))
        if pts:
            specs.append(ChartSpec(f"charts/{attack}/privacy_utility",
                                   f"{attack}: privacy–utility, TPR@0.1%FPR vs test accuracy "
                                   "(one line per quantizer through its bit-widths)",
                                   ("test_acc", TPR_KEY, "quantizer", "bits"),
                                   tuple(sorted(pts, key=lambda t: (t[2], t[0]))), "test_acc", TPR_KEY))
    return specs
