"""Joint LiRA over released versions of one model: the attacker sees the target's φ in k releases
(e.g. the FP model and its quantized copies) and models them together.

Per example i and query q, the k-vector x = (φ_t^(1), …, φ_t^(k)) of the target's scores in the k
releases is modelled under the IN and the OUT world as a k-variate Gaussian fitted to the reference
models' k-vectors (each reference in the same k versions: FP, and quantized exactly as the target):

    online:   score = mean_q [ log N_k(x_q; μ_in,q, Σ_in,q) − log N_k(x_q; μ_out,q, Σ_out,q) ]
    offline, one-sided:  score = mean_q log Φ(z_q),
              z = dᵀ Σ_out⁻¹ (x − μ_out) / sqrt(dᵀ Σ_out⁻¹ d),   d = sqrt(diag Σ_out)
    offline, two-sided:  score = mean_q −log N_k(x_q; μ_out,q, Σ_out,q)

This is the single-version LiRA (src/attacks/lira.py) with a Gaussian over the releases in place of
the univariate one, and reduces to it exactly for k = 1. Queries are handled as there: statistics
per query view, the per-query log-likelihood ratios (or offline scores) averaged. (A kQ-variate
Gaussian over releases and queries together would need more than kQ references per example to be
non-singular and is not what the single attack does.)

The one-sided offline score is the z-test of the OUT hypothesis against a shift along d: the
direction in which every release's score moves by the same number of its own OUT standard
deviations (members are fitted better in every release). z is the generalised (correlated) Stouffer
combination of the per-release z-scores; for k = 1 it is (φ_t − μ_out)/σ_out, the paper's test.

Centre: the ``median`` or ``mean`` of the references, as in the single attack, taken coordinate-wise
along the principal axes of the releases (the eigenvectors of the references' within-example
scatter, below): for near-copies a coordinate-wise median in the release axes would take the two
releases' medians from different references and invent a difference between them that no reference
has. Σ per example is the population covariance (ddof 0, about the mean). Fixed covariance (``*_fixed``):
``residual`` = the mean of (φ − centre)(φ − centre)ᵀ over all selected values of a world (one k×k
matrix per world); ``pooled_in`` = the covariance of all selected IN values about their grand mean,
used for both worlds (offline: the OUT values).

Degenerate releases. Directions in which no reference varies around its per-example mean in any
example (a release that is an exact copy, or an exact linear function, of others) carry no
density: they are dropped once per target, using the eigenvectors of the within-example scatter
summed over the worlds used (eigenvalue ≤ 1e-9 × the largest). On the remaining orthonormal basis
the scores are computed as above (the likelihood ratio does not depend on the basis), and each per-example covariance has its eigenvalues floored at
``sigma_floor``² (the single attack's floor on σ). A copy of a release thus gives exactly the
single-release online and one-sided offline scores (the two-sided one up to a constant, +½ log k
for k identical copies: densities, unlike their ratios, depend on the basis).
"""
from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.special import log_ndtr

from .lira import FIXED_VARIANCES, reference_stats
from .references import select_references

_LOG_2PI = np.log(2.0 * np.pi)
NULL_TOLERANCE = 1e-9  # relative eigenvalue below which a direction of the releases is degenerate
_CHUNK_ELEMENTS = 4_000_000


@dataclass
class JointStats:
    """Per-example statistics of one world over k releases.

    centre [N, Q, k]; cov [N, Q, k, k] (about the per-example mean, ddof 0); scatter [k, k]: the
    within-example scatter Σ count·cov summed over examples and queries; resid [k, k]: Σ (φ − centre)
    (φ − centre)ᵀ over all selected values; pooled [k, k]: the same about the grand mean; n_values.
    """

    centre: np.ndarray
    cov: np.ndarray
    scatter: np.ndarray
    resid: np.ndarray
    pooled: np.ndarray
    n_values: int


def _as_releases(phi_ref: np.ndarray, phi_target: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    phi_ref, phi_target = np.asarray(phi_ref), np.asarray(phi_target)
    if phi_ref.ndim == 3:  # one query
        phi_ref = phi_ref[..., None]
    if phi_target.ndim == 2:
        phi_target = phi_target[..., None]
    if phi_ref.ndim != 4 or phi_target.ndim != 3 or phi_ref.shape[0] != phi_target.shape[0] \
            or phi_ref.shape[2:] != phi_target.shape[1:]:
        raise ValueError(f"phi_ref must be [k, R, N, Q] and phi_target [k, N, Q]; got {phi_ref.shape} "
                         f"and {phi_target.shape}")
    if not (np.isfinite(phi_ref).all() and np.isfinite(phi_target).all()):
        raise ValueError("phi scores contain NaN or inf")
    return phi_ref, phi_target


def joint_stats(phi_ref: np.ndarray, mask: np.ndarray, centre: str = "median") -> JointStats:
    """Masked per-example statistics of phi_ref [k, R, N, Q] over the reference axis; mask [R, N]."""
    phi_ref = np.asarray(phi_ref)
    mask = np.asarray(mask, dtype=bool)
    k, r, n, q = phi_ref.shape
    # the centre of each release exactly as the single attack computes it
    ctr = np.stack([reference_stats(phi_ref[j], mask, centre).centre for j in range(k)], axis=-1)
    count = mask.sum(axis=0)
    cov = np.empty((n, q, k, k))
    means = np.empty((n, q, k))
    resid = np.zeros((k, k))
    step = max(1, _CHUNK_ELEMENTS // max(1, k * r * q))
    for s in range(0, n, step):
        sl = slice(s, min(n, s + step))
        x = phi_ref[:, :, sl].astype(np.float64)                      # [k, R, n, Q]
        m = mask[None, :, sl, None]
        c = count[sl].astype(np.float64)[:, None]                     # [n, 1]
        mean = np.where(m, x, 0.0).sum(axis=1) / c                     # [k, n, Q]
        dev = np.where(m, x - mean[:, None], 0.0)
        cov[sl] = np.einsum("arnq,brnq->nqab", dev, dev) / c[:, :, None, None]
        means[sl] = np.moveaxis(mean, 0, -1)
        res = np.where(m, x - np.moveaxis(ctr[sl], -1, 0)[:, None], 0.0)
        resid += np.einsum("arnq,brnq->ab", res, res)
    w = np.repeat(count[:, None].astype(np.float64), q, axis=1)       # [N, Q] values behind each mean
    n_values = int(w.sum())
    scatter = np.einsum("nq,nqab->ab", w, cov)
    grand = np.einsum("nq,nqa->a", w, means) / max(n_values, 1)
    between = means - grand
    pooled = scatter + np.einsum("nq,nqa,nqb->ab", w, between, between)
    return JointStats(ctr, cov, scatter, resid, pooled, n_values)


def release_basis(*scatters: np.ndarray) -> np.ndarray:
    """Orthonormal basis [k, p] of the directions in which the references vary within examples
    (eigenvectors of the summed scatter with eigenvalue > NULL_TOLERANCE × the largest)."""
    s = np.sum(scatters, axis=0)
    lam, vec = np.linalg.eigh(0.5 * (s + s.T))
    if lam[-1] <= 0:  # nothing varies anywhere: keep every release, the floor decides
        return np.eye(s.shape[0])
    return vec[:, lam > NULL_TOLERANCE * lam[-1]]


def _eig_floor(cov: np.ndarray, sigma_floor: float) -> tuple[np.ndarray, np.ndarray]:
    lam, vec = np.linalg.eigh(cov)
    return np.maximum(lam, sigma_floor ** 2), vec


def log_normal(x: np.ndarray, mu: np.ndarray, cov: np.ndarray, sigma_floor: float) -> np.ndarray:
    """log N_p(x; μ, Σ) over the last axis, Σ [..., p, p] (broadcast), eigenvalues floored at sigma_floor²."""
    lam, vec = _eig_floor(cov, sigma_floor)
    z = np.einsum("...ab,...a->...b", vec, x - mu)
    p = x.shape[-1]
    return -0.5 * (z * z / lam).sum(axis=-1) - 0.5 * np.log(lam).sum(axis=-1) - 0.5 * p * _LOG_2PI


def shift_z(x: np.ndarray, mu: np.ndarray, cov: np.ndarray, d: np.ndarray, sigma_floor: float) -> np.ndarray:
    """dᵀΣ⁻¹(x − μ) / sqrt(dᵀΣ⁻¹d) over the last axis (Σ eigenvalues floored at sigma_floor²)."""
    lam, vec = _eig_floor(cov, sigma_floor)
    zx = np.einsum("...ab,...a->...b", vec, x - mu)
    zd = np.einsum("...ab,...a->...b", vec, d)
    num = (zd * zx / lam).sum(axis=-1)
    den = np.sqrt((zd * zd / lam).sum(axis=-1))
    return num / np.maximum(den, np.finfo(float).tiny)


def _fixed_cov(st: JointStats, fixed: str, pooled: JointStats) -> np.ndarray:
    if fixed == "residual":
        return st.resid / st.n_values
    return pooled.pooled / pooled.n_values  # pooled_in


def principal_releases(phi_ref: np.ndarray, phi_target: np.ndarray, masks) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """phi_ref [k, R, N, Q] and phi_target [k, N, Q] rotated onto :func:`release_basis` of the
    within-example scatter of the worlds in ``masks``: (y_ref [p, R, N, Q], y_target [p, N, Q], basis [k, p])."""
    basis = release_basis(*(joint_stats(phi_ref, m, "mean").scatter for m in masks))
    y_ref = np.einsum("arnq,ap->prnq", phi_ref.astype(np.float64), basis)
    y_target = np.einsum("anq,ap->pnq", phi_target.astype(np.float64), basis)
    return y_ref, y_target, basis


def _check(fixed_variance: str | None) -> None:
    if fixed_variance is not None and fixed_variance not in FIXED_VARIANCES:
        raise ValueError(f"attack.fixed_variance={fixed_variance!r}: allowed {', '.join(FIXED_VARIANCES)}")


def joint_online(phi_ref: np.ndarray, in_mask: np.ndarray, out_mask: np.ndarray, phi_target: np.ndarray,
                 centre: str = "median", fixed_variance: str | None = None,
                 sigma_floor: float = 1e-6) -> np.ndarray:
    """Online joint LiRA score [N] from phi_ref [k, R, N, Q] and phi_target [k, N, Q] (module doc)."""
    phi_ref, phi_target = _as_releases(phi_ref, phi_target)
    _check(fixed_variance)
    y_ref, y_t, _ = principal_releases(phi_ref, phi_target, (in_mask, out_mask))
    st_in, st_out = joint_stats(y_ref, in_mask, centre), joint_stats(y_ref, out_mask, centre)
    x = np.moveaxis(y_t, 0, -1)   # [N, Q, p]
    if fixed_variance is None:
        cov_in, cov_out = st_in.cov, st_out.cov
    else:
        cov_in, cov_out = _fixed_cov(st_in, fixed_variance, st_in), _fixed_cov(st_out, fixed_variance, st_in)
    llr = log_normal(x, st_in.centre, cov_in, sigma_floor) - log_normal(x, st_out.centre, cov_out, sigma_floor)
    return llr.mean(axis=1)


def joint_offline(phi_ref: np.ndarray, out_mask: np.ndarray, phi_target: np.ndarray, centre: str = "median",
                  fixed_variance: str | None = None, mode: str = "one_sided",
                  sigma_floor: float = 1e-6) -> np.ndarray:
    """Offline joint LiRA score [N] from OUT references only (module doc)."""
    phi_ref, phi_target = _as_releases(phi_ref, phi_target)
    if mode not in ("one_sided", "two_sided"):
        raise ValueError(f"attack.offline={mode!r}: allowed one_sided, two_sided")
    _check(fixed_variance)
    y_ref, y_t, basis = principal_releases(phi_ref, phi_target, (out_mask,))
    st = joint_stats(y_ref, out_mask, centre)
    x = np.moveaxis(y_t, 0, -1)
    cov = st.cov if fixed_variance is None else _fixed_cov(st, fixed_variance, st)
    if mode == "two_sided":
        return (-log_normal(x, st.centre, cov, sigma_floor)).mean(axis=1)
    var = np.einsum("ap,...pr,ar->...a", basis, cov, basis)   # per-release σ_out², original coordinates
    d = np.sqrt(np.maximum(var, sigma_floor ** 2)) @ basis
    return log_ndtr(shift_z(x, st.centre, cov, d, sigma_floor)).mean(axis=1)


# ---------------------------------------------------------------------------------------------
# registry: the joint version of each single-version LiRA attack, under the single attack's name


@dataclass(frozen=True)
class JointAttack:
    references: str  # 'online' (IN and OUT) or 'offline' (OUT only), as the single attack
    score: Callable[..., np.ndarray]


def _online(fixed: bool):
    def score(phi_ref, sel, phi_target, p):
        return joint_online(phi_ref, sel.in_mask, sel.out_mask, phi_target, centre=p["centre"],
                            fixed_variance=p["fixed_variance"] if fixed else None, sigma_floor=p["sigma_floor"])
    return score


def _offline(fixed: bool):
    def score(phi_ref, sel, phi_target, p):
        return joint_offline(phi_ref, sel.offline_mask, phi_target, centre=p["centre"],
                             fixed_variance=p["fixed_variance"] if fixed else None, mode=p["offline"],
                             sigma_floor=p["sigma_floor"])
    return score


JOINT_ATTACKS: dict[str, JointAttack] = {
    "lira_online": JointAttack("online", _online(False)),
    "lira_online_fixed": JointAttack("online", _online(True)),
    "lira_offline": JointAttack("offline", _offline(False)),
    "lira_offline_fixed": JointAttack("offline", _offline(True)),
}


def joint_names(names: Iterable[str]) -> list[str]:
    """The attacks of ``attack.names`` that have a joint version."""
    return [n for n in names if n in JOINT_ATTACKS]


def run_joint(names: Iterable[str], phi_ref: np.ndarray, keep_ref: np.ndarray, phi_target: np.ndarray,
              cfg: Mapping[str, Any] | None = None) -> dict[str, np.ndarray]:
    """Joint scores [N] for every attack in ``names`` that has a joint version.

    phi_ref [k, R, N, Q]: the R references in each of the k releases; keep_ref [R, N]; phi_target
    [k, N, Q]. ``cfg``: the ``attack`` node (the single attacks' parameters and reference selection).
    """
    from .registry import _params

    p = _params(cfg)
    phi_ref, phi_target = _as_releases(phi_ref, phi_target)
    sel = select_references(keep_ref, p["equal_counts"])
    out = {}
    for name in joint_names(names):
        attack = JOINT_ATTACKS[name]
        if attack.references == "online" and (sel.k < 1):
            raise ValueError(f"joint attack '{name}' needs at least one IN and one OUT reference per example")
        if attack.references == "offline" and sel.k_out < 1:
            raise ValueError(f"joint attack '{name}' needs at least one OUT reference per example")
        out[name] = attack.score(phi_ref, sel, phi_target, p)
    return out
