"""Which reference models each example uses, for one target (docs/design.md, "Membership split").

Reference selection and the equal-count rule (docs/design.md, "Membership split")
---------------------------------------------------------------------------------
The references for target t are all pool models except t (leave-one-out). In the balanced protocol
every example is IN for exactly K = M·pkeep pool models, so among the references it is IN for
K − keep[t, i] and OUT for M − 1 − K + keep[t, i]: the raw counts encode t's membership. With
``equal_counts`` (default) every example uses the **same global numbers**

    k     = min over examples of min(#IN refs, #OUT refs)   — for online attacks, k IN and k OUT
    k_out = min over examples of #OUT refs                  — for offline attacks, k_out OUT

taking, per example, the first k (k_out) qualifying references in model order. Because k and
k_out are single numbers for the whole target, no per-example count can depend on whether t
trained on that example (a per-example min(#in, #out) would be constant only at pkeep = 0.5: with
K ≠ M/2 it equals K − keep[t, i] and leaks). In the balanced pkeep = 0.5 protocol k = k_out =
M/2 − 1. With i.i.d. (non-balanced) splits the global minimum depends only on the references'
keep rows, which are independent of t's. ``equal_counts: false`` uses every reference as it comes.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class ReferenceSelection:
    """Which references each example uses. Masks are [R, N] bool.

    in_mask / out_mask: k IN and k OUT references per example (online attacks);
    offline_mask: k_out OUT references per example (offline attacks).
    With equal_counts=False, in_mask = keep, out_mask = offline_mask = ~keep and k, k_out are the
    minimum counts (informational).
    """

    in_mask: np.ndarray
    out_mask: np.ndarray
    offline_mask: np.ndarray
    k: int
    k_out: int
    n_in: np.ndarray  # [N] available IN references before truncation
    n_out: np.ndarray  # [N] available OUT references before truncation


def _first_k(mask: np.ndarray, k: int) -> np.ndarray:
    """Keep, per column, the first k True entries of ``mask`` in row (model) order."""
    return mask & (np.cumsum(mask, axis=0) <= k)


def select_references(keep_ref: np.ndarray, equal_counts: bool = True) -> ReferenceSelection:
    """Reference masks for one target from the references' keep rows ``keep_ref`` [R, N]."""
    keep = np.asarray(keep_ref, dtype=bool)
    if keep.ndim != 2:
        raise ValueError(f"keep_ref must be [R, N], got shape {keep.shape}")
    n_in = keep.sum(axis=0)
    n_out = (~keep).sum(axis=0)
    n = keep.shape[1]
    k_in_min = int(n_in.min()) if n else 0
    k_out = int(n_out.min()) if n else 0
    k = min(k_in_min, k_out)
    if not equal_counts:
        return ReferenceSelection(keep, ~keep, ~keep, k, k_out, n_in, n_out)
    return ReferenceSelection(_first_k(keep, k), _first_k(~keep, k), _first_k(~keep, k_out), k, k_out, n_in, n_out)
