"""The balanced keep matrix of the LiRA protocol (docs/design.md, "Membership split").

U ~ Uniform(M × N) with a fixed seed; keep = argsort(U, axis=0) < ⌊M·pkeep⌋, exactly as written there
(and as the LiRA reference code does), so the same seed gives the same split. Column i of
argsort(U, axis=0) is a permutation of 0..M−1, hence every example is IN for exactly ⌊M·pkeep⌋
models (M/2 at pkeep = 0.5; 32 of 65 for the paper's 64 shadows + target).
"""
from __future__ import annotations

import numpy as np


def independent_rows(n_rows: int, n_examples: int, pkeep: float = 0.5, seed: int = 0) -> np.ndarray:
    """``n_rows`` membership rows drawn independently of the pool and of each other: each a uniformly
    random subset of exactly round(pkeep·N) examples (a target trained on its own random half)."""
    out = np.zeros((n_rows, n_examples), dtype=bool)
    for i in range(n_rows):
        perm = np.random.default_rng([int(seed), 104_729, i]).permutation(n_examples)
        out[i, perm[:int(round(pkeep * n_examples))]] = True
    return out


def keep_matrix(n_models: int, n_examples: int, pkeep: float = 0.5, seed: int = 0) -> np.ndarray:
    if n_models < 2:
        raise ValueError(f"n_models={n_models}: need at least 2 models for a membership split")
    if not 0.0 < pkeep < 1.0:
        raise ValueError(f"pkeep={pkeep}: must lie strictly between 0 and 1")
    u = np.random.default_rng(seed).uniform(size=(n_models, n_examples))
    return np.argsort(u, axis=0) < int(pkeep * n_models)
