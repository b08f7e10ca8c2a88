"""Robust Membership Inference Attack (RMIA; Zarifzadeh, Liu, Shokri, Ye, "Low-Cost High-Power
Membership Inference Attacks", ICML 2024).

RMIA compares the target's likelihood ratio on x with its ratio on population points z (paper Eq. 3–4):

    ratio(x) = p(x | θ_t) / p(x),        p(x) = mean over reference models of p(x | θ_ref)
    Score(x) = fraction of population points z with ratio(x) / ratio(z) ≥ γ

with p(x | θ) = sigmoid(φ) = p_y, the model's confidence in the true label (φ is the stored
logit-scaled confidence). Online: p(x) averages all selected references, IN and OUT (with equal
counts, k of each). Offline (paper §3, "offline" approximation): only OUT references,
p(x) ≈ ((1 + a)/2) · mean_OUT p(x | θ_ref) + (1 − a)/2, with ``a`` tuned per setting (default 0.3).

Queries: by default (``query_reduce="ratio_mean"``) the per-query ratios p_t,q / p_ref,q are
averaged over queries; ``"prob_mean"`` instead takes the ratio of query-averaged probabilities.
Everything is computed in the log domain (log-sigmoid, log-mean-exp) so confident examples whose
p rounds to 1 in float32 keep their ordering.

Population: the attacker's population set Z. Default: the N training examples themselves, with their
reference selection (the paper uses non-member population data; with the training set as Z, Score(x)
is a monotone function of ratio(x), i.e. RMIA reduces to ranking by its pairwise likelihood ratio).
An explicit :class:`Population` (e.g. test-set φ, for which every reference is OUT) may be passed.

Score(x) is computed by sorting log ratio(z) once and ``np.searchsorted`` — O((N + Z) log Z), never
an N × Z matrix: ratio(x)/ratio(z) ≥ γ  ⇔  log ratio(z) ≤ log ratio(x) − log γ.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.special import logsumexp

QUERY_REDUCES = ("ratio_mean", "prob_mean")
_CHUNK_ELEMENTS = 4_000_000


@dataclass
class Population:
    """Population points z for RMIA.

    phi_ref [R, Z, Q]: the reference models' φ on z (same reference models, same order, as for x);
    phi_target [Z, Q]: the target's φ on z; keep_ref [R, Z] or None: which references trained on z
    (None = none did, e.g. test data; then every reference is an OUT reference for z).
    """

    phi_ref: np.ndarray
    phi_target: np.ndarray
    keep_ref: np.ndarray | None = None


def log_sigmoid(phi: np.ndarray) -> np.ndarray:
    """log p_y = log sigmoid(φ) = −log(1 + e^{−φ}), stable for any φ."""
    return -np.logaddexp(0.0, -np.asarray(phi, dtype=np.float64))


def _log_mean_ref_prob(phi_ref: np.ndarray, mask: np.ndarray, log_p: np.ndarray | None = None) -> np.ndarray:
    """log mean_{selected refs} sigmoid(φ_ref) per example and query: [N, Q]. ``log_p``:
    log_sigmoid(phi_ref), if already computed."""
    phi_ref = np.asarray(phi_ref)
    mask = np.asarray(mask, dtype=bool)
    r, n, q = phi_ref.shape
    count = mask.sum(axis=0)
    if n and count.min() < 1:
        raise ValueError("RMIA: some example has no selected reference model")
    out = np.empty((n, q))
    step = max(1, _CHUNK_ELEMENTS // max(1, r * q))
    for s in range(0, n, step):
        sl = slice(s, min(n, s + step))
        lp = np.where(mask[:, sl, None], log_sigmoid(phi_ref[:, sl]) if log_p is None else log_p[:, sl], -np.inf)
        out[sl] = logsumexp(lp, axis=0) - np.log(count[sl])[:, None]
    return out


def rmia_log_ratio(
    phi_ref: np.ndarray,
    ref_mask: np.ndarray,
    phi_target: np.ndarray,
    offline_a: float | None = None,
    query_reduce: str = "ratio_mean",
    log_ref: np.ndarray | None = None,
) -> np.ndarray:
    """log ratio(x) = log p(x|θ_t) − log p(x) for every example: [N].

    ``ref_mask`` [R, N]: the references averaged in p(x) (online: IN and OUT; offline: OUT only).
    ``offline_a``: None for online; a ∈ [0, 1] for the offline approximation. ``log_ref``: the
    references' log mean probability [N, Q] over ``ref_mask``, if already computed.
    """
    if query_reduce not in QUERY_REDUCES:
        raise ValueError(f"attack.query_reduce={query_reduce!r}: allowed {', '.join(QUERY_REDUCES)}")
    if log_ref is None:
        log_ref = _log_mean_ref_prob(phi_ref, ref_mask)
    if offline_a is not None:
        a = float(offline_a)
        if not 0.0 <= a <= 1.0:
            raise ValueError(f"attack.a={offline_a}: must lie in [0, 1]")
        log_ref = log_ref + np.log((1.0 + a) / 2.0)
        if a < 1.0:
            log_ref = np.logaddexp(log_ref, np.log((1.0 - a) / 2.0))
    log_t = log_sigmoid(phi_target)
    if log_t.shape != log_ref.shape:
        raise ValueError(f"phi_target shape {log_t.shape} does not match references {log_ref.shape}")
    q = log_t.shape[1]
    if query_reduce == "ratio_mean":
        return logsumexp(log_t - log_ref, axis=1) - np.log(q)
    return logsumexp(log_t, axis=1) - logsumexp(log_ref, axis=1)


def rmia_scores(log_ratio_x: np.ndarray, log_ratio_z: np.ndarray, gamma: float = 1.0) -> np.ndarray:
    """Score(x) = fraction of z with ratio(x)/ratio(z) ≥ γ, via one sort of the population: [N]."""
    if not gamma > 0:
        raise ValueError(f"attack.gamma={gamma}: must be > 0")
    lz = np.sort(np.asarray(log_ratio_z, dtype=np.float64))
    if lz.size == 0:
        raise ValueError("RMIA: empty population")
    thr = np.asarray(log_ratio_x, dtype=np.float64) - np.log(gamma)
    return np.searchsorted(lz, thr, side="right") / lz.size


def rmia(
    phi_ref: np.ndarray,
    ref_mask: np.ndarray,
    phi_target: np.ndarray,
    gamma: float = 1.0,
    offline_a: float | None = None,
    query_reduce: str = "ratio_mean",
    population: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None,
    log_ref: np.ndarray | None = None,
) -> np.ndarray:
    """RMIA score [N] (higher = member).

    ``population``: None (population = the examples themselves, with ``ref_mask``) or a triple
    (phi_ref_z [R, Z, Q], ref_mask_z [R, Z], phi_target_z [Z, Q]) already carrying its reference
    selection (``src.attacks.run_attacks`` builds it from a :class:`Population`). ``log_ref``: as in
    :func:`rmia_log_ratio`, for the examples.
    """
    lx = rmia_log_ratio(phi_ref, ref_mask, phi_target, offline_a, query_reduce, log_ref)
    if population is None:
        lz = lx
    else:
        pr, pm, pt = population
        lz = rmia_log_ratio(pr, pm, pt, offline_a, query_reduce)
    return rmia_scores(lx, lz, gamma)
