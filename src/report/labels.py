"""Human-readable names and figure styles shared by the console table, the summary and the plots."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from src.attacks.metrics import n_nonmembers_at

# for results written before datasets carried a display name
_DATASET_NAMES = {"digits": "Digits (8×8)", "cifar10": "CIFAR-10", "cifar100": "CIFAR-100",
                  "tinyimagenet": "TinyImageNet", "synthetic": "Synthetic"}

# what each conf/bitwidth policy does (src/quant/policy: which layers stay at 8 bits)
POLICY_LABELS = {"uniform": "all layers", "8bit_ends": "first and last layer 8-bit",
                 "paper": "last layer 8-bit below 2 bits", "fp": "full precision"}

# 14 colours and 12 markers that stay apart in print and for common colour-vision deficiencies; grey
# is left out (the chance diagonal) and black (the full-precision reference); the star is FP's marker
COLOURS = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf",
           "#bcbd22", "#393b79", "#e7ba52", "#843c39", "#637939", "#7b4173")
MARKERS = ("o", "s", "D", "^", "v", "P", "X", "<", ">", "p", "h", "d")

TPR_PREFIX = "tpr_at_fpr_"
# marks in tables, in words so that "not applicable" and "below resolution" cannot be confused
BELOW_RESOLUTION = "below res."
NOT_APPLICABLE = "n/a"
NOT_CERTIFIED = "not certified"
RESOLUTION_NOTE = ("below res. = below resolution: FPR < 1/N non-members, the read would rest on zero false "
                   "positives")


def series_style(i: int) -> dict[str, str]:
    """Colour and marker of series ``i``: colours and markers cycle with different periods, so the
    first 12 series differ in both and the first 84 in the pair."""
    return {"color": COLOURS[i % len(COLOURS)], "marker": MARKERS[i % len(MARKERS)]}


def dataset_display(job: dict, config: dict | None = None) -> str:
    """The dataset's name for titles: ``dataset.display_name`` when the job recorded one, else a known
    dataset's proper name, else an image folder's directory name, else the config name."""
    job = job or {}
    cfg_ds = ((config or {}).get("dataset") or {}) if isinstance(config, dict) else {}
    for name in (job.get("dataset_display"), cfg_ds.get("display_name")):
        if name:
            return str(name)
    name = str(job.get("dataset") or cfg_ds.get("name") or "?")
    if name == "imagefolder" and cfg_ds.get("root"):
        return Path(str(cfg_ds["root"])).name or name
    return _DATASET_NAMES.get(name, name)


def target_label(config: Any, index: int) -> str:
    """A target's name for display: its pool index, or for ``target=external`` (the one keep-matrix row
    after the pool) ``external (<checkpoint file name>)``. The index stays the target's id in the data.
    ``config``: the job's config (a DictConfig, or results.json's ``config``)."""
    t = (config.get("target") if config is not None else None) or {}
    if t.get("name") == "external" and int(index) == int(config.get("n_models", -1)):
        return f"external ({Path(str(t.get('checkpoint'))).name})"
    return str(int(index))


def target_labels(job: dict, config: Any = None) -> list[str]:
    """The display names of a job's targets: results.json's ``job.target_labels``, or derived from its
    config for files written before it."""
    labels = (job or {}).get("target_labels")
    return [str(v) for v in labels] if labels else [target_label(config, t) for t in (job or {}).get("targets") or []]


def targets_text(job: dict, config: Any = None) -> str:
    """``targets [0, 1, 2]`` for pool models; ``target external (mine.pt)`` for an audited checkpoint."""
    labels = target_labels(job, config)
    if len(labels) == 1 and not labels[0].isdigit():
        return f"target {labels[0]}"
    return f"targets [{', '.join(labels)}]"


def policy_label(policy: Any, dataset: Any = None) -> str:
    """The bit policy in words; ``paper`` on TinyImageNet keeps the last layer at 8 bits at every width."""
    if str(policy) == "paper" and str(dataset).lower() == "tinyimagenet":
        return "last layer 8-bit (TinyImageNet: every width)"
    return POLICY_LABELS.get(str(policy), str(policy)) if policy is not None else "–"


def fpr_of(metric: str) -> float | None:
    """0.001 for 'tpr_at_fpr_1e-3'; None for a metric that is not a TPR at an FPR."""
    return float(metric[len(TPR_PREFIX):]) if metric.startswith(TPR_PREFIX) else None


def resolved(metric: str, n_nonmembers: Any) -> bool:
    """Whether ``metric`` is backed by at least one false positive: a TPR at FPR α < 1/N (N
    non-members per target) can only be read at zero false positives. Other metrics always are."""
    alpha = fpr_of(metric)
    if alpha is None or n_nonmembers is None:
        return True
    return n_nonmembers_at(alpha, int(n_nonmembers)) >= 1


def metric_label(metric: str) -> str:
    """'TPR @ 0.1 % FPR' for tpr_at_fpr_1e-3, 'AUC', 'balanced accuracy'."""
    alpha = fpr_of(metric)
    if alpha is not None:
        return f"TPR @ {pct_text(alpha)} FPR"
    return {"auc": "AUC", "balanced_accuracy": "balanced accuracy"}.get(metric, metric)


def pct_text(x: float) -> str:
    """A rate as a short percentage: 0.001 → '0.1 %', 0.5 → '50 %', 2e-5 → '0.002 %'."""
    v = 100.0 * float(x)
    if v == 0:
        return "0 %"
    digits = max(0, -int(math.floor(math.log10(abs(v))))) if abs(v) < 1 else 0
    return f"{v:.{digits}f} %"


def wa_label(bits: Any, act_bits: Any) -> str:
    """``W4A8``: weight bits and activation bits of a W/A job ("" for weight-only jobs)."""
    if act_bits is None:
        return ""
    w = f"{float(bits):g}" if bits is not None else "?"
    return f"W{w}A{int(act_bits)}"


# display names of code names, for figure titles and legends
QUANT_NAMES = {"fp": "FP", "none": "FP", "rtn": "RTN", "adaround": "AdaRound", "brecq": "BRECQ", "obc": "OBC",
               "gptq": "GPTQ", "noise": "weight noise", "prune": "pruning"}
MODEL_NAMES = {"smallcnn": "small ResNet", "resnet18": "ResNet-18", "vgg11_bn": "VGG-11 (BN)",
               "wrn28_2": "WRN-28-2"}
ATTACK_NAMES = {"lira_online": "LiRA (online)", "lira_online_fixed": "LiRA (online, fixed variance)",
                "lira_offline": "LiRA (offline)", "lira_offline_fixed": "LiRA (offline, fixed variance)",
                "rmia": "RMIA", "rmia_offline": "RMIA (offline)", "loss": "loss attack"}
# what each attack's membership score is, for the axes that show scores (docs/attacks.md)
SCORE_DEFINITIONS = {
    "lira_online": "score = log N(φ; μ_in, σ_in²) − log N(φ; μ_out, σ_out²), φ = logit of the confidence in the true label",
    "lira_offline": "score = log Φ((φ − μ_out)/σ_out), φ = logit of the confidence in the true label",
    "rmia": "score = share of population points z with ratio(x)/ratio(z) ≥ γ, ratio = p(x|θ)/p(x)",
    "loss": "score = φ, the logit of the target's confidence in the true label (high = low loss)",
}


def quant_display(name) -> str:
    return QUANT_NAMES.get(str(name), str(name))


def model_display(name) -> str:
    return MODEL_NAMES.get(str(name), str(name))


def attack_display(name) -> str:
    return ATTACK_NAMES.get(str(name), str(name))


def score_definition(attack) -> str:
    """One line saying what the attack's score is ('' for an attack without an entry)."""
    a = str(attack)
    return next((d for k, d in SCORE_DEFINITIONS.items() if a.startswith(k)), "")


def interval_text(ks) -> str:
    """What the error bars are, given the target counts k of the points shown."""
    ks = sorted({int(k) for k in ks if k})
    if not ks:
        return "error bars: 95 % CI"
    if ks == [1]:
        return "error bars: 95 % percentile bootstrap CI (one target; members and non-members resampled)"
    t = f"Student-t over k = {', '.join(map(str, ks))} targets"
    return "error bars: 95 % CI, " + (t if 1 not in ks else t + "; bootstrap where k = 1")
