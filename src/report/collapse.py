"""Whether a quantized model's accuracy has collapsed, so that its lower leakage reflects lost utility.

A model that no longer does its task also stops fitting its members, so every attack weakens: a
negative ΔAUC next to it is no privacy gain. The criterion compares the accuracy above chance (the
share of the task the model still solves beyond guessing, chance = 1/classes) with the full-precision
model's: collapsed when the quantized model keeps less than half of it,

    test_acc − chance < COLLAPSE_FRACTION · (fp_test_acc − chance).

Half is where most of what the model learned is gone. It is relative to FP and to chance, so it
reads the same on digits (FP 98 %, chance 10 %: collapsed below 54 %), CIFAR-10 on a CPU (FP 49 %:
below 30 %) and TinyImageNet (FP 5.7 %, chance 0.5 %: below 3.1 %), where a fixed drop in points
would mean very different things.
"""
from __future__ import annotations

from typing import Any

COLLAPSE_FRACTION = 0.5
# class counts of the built-in datasets, for results.json files written before jobs recorded theirs
NUM_CLASSES = {"digits": 10, "cifar10": 10, "cifar100": 100, "tinyimagenet": 200}
COLLAPSE_NOTE = ("collapsed: the quantized model keeps less than half of the FP model's test accuracy above "
                 "chance (1/classes); its lower leakage reflects lost utility, not privacy")


def num_classes_of(job: dict | None, config: dict | None = None) -> int | None:
    """The job's class count: recorded by the job, else the config's, else a built-in dataset's."""
    job = job or {}
    for v in (job.get("num_classes"), ((config or {}).get("dataset") or {}).get("num_classes")):
        if v:
            return int(v)
    return NUM_CLASSES.get(str(job.get("dataset")))


def collapse_threshold(fp_test_acc: float, num_classes: int) -> float:
    """The test accuracy below which a model counts as collapsed."""
    chance = 1.0 / num_classes
    return chance + COLLAPSE_FRACTION * (fp_test_acc - chance)


def collapsed(test_acc: Any, fp_test_acc: Any, num_classes: Any) -> bool | None:
    """True when ``test_acc`` is below :func:`collapse_threshold`; None when a value is unknown."""
    if test_acc is None or fp_test_acc is None or not num_classes:
        return None
    return float(test_acc) < collapse_threshold(float(fp_test_acc), int(num_classes))
