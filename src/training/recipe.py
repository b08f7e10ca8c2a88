"""What training a model reads from a job's config, and nothing else."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Recipe:
    """The ``train`` node (SGD recipe, path and speed keys), the ``model`` node, the dataset's
    training augmentation (random-crop padding, horizontal flip) and two run options. Built once per
    job with ``Recipe.of(cfg)``, so the training paths never see the whole config."""

    train: Any                   # cfg.train (a DictConfig or a mapping)
    model: Any                   # cfg.model
    pad: int = 0
    flip: bool = False
    num_workers: int = 0         # DataLoader workers of the plain path
    progress: bool = True        # the plain path's progress bar
    pool_size: int | None = None  # n_models: zero-pad width of the pool/mNN curve keys

    @classmethod
    def of(cls, cfg) -> "Recipe":
        aug = cfg.dataset.get("augment", {}) or {}
        return cls(cfg.train, cfg.model, int(aug.get("pad", 0)), bool(aug.get("flip", False)),
                   int(cfg.get("num_workers", 0) or 0), bool(cfg.get("progress", True)), cfg.get("n_models"))
