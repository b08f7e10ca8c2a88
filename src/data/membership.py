"""The balanced keep matrix of the LiRA protocol (REFERENCE.md "Membership split").

U ~ Uniform(M × N) with a fixed seed; keep = argsort(U, axis=0) < M·pkeep. Each column then has
exactly round(M·pkeep) True entries: every example is IN for exactly M/2 models at pkeep = 0.5.
"""
from __future__ import annotations

import numpy as np


def keep_matrix(n_models: int, n_examples: int, pkeep: float = 0.5, seed: int = 0) -> np.ndarray:
    if n_models < 2:
        raise ValueError(f"n_models={n_models}: need at least 2 models for a membership split")
    if not 0.0 < pkeep < 1.0:
        raise ValueError(f"pkeep={pkeep}: must lie strictly between 0 and 1")
    u = np.random.default_rng(seed).uniform(size=(n_models, n_examples))
    order = np.argsort(u, axis=0)  # order[r, i] = model holding the r-th smallest draw for example i
    k = int(round(n_models * pkeep))
    keep = np.zeros((n_models, n_examples), dtype=bool)
    cols = np.arange(n_examples)
    for r in range(k):
        keep[order[r], cols] = True
    return keep
