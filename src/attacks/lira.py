"""Likelihood Ratio Attack (LiRA; Carlini et al., "Membership Inference Attacks From First
Principles", IEEE S&P 2022), online and offline, per-example or fixed variance.

Inputs are the logit-scaled confidences φ = log p_y − log(1 − p_y) (docs/design.md, "Scores") of the
reference models, ``phi_ref`` [R, N, Q], and of the target, ``phi_target`` [N, Q], plus boolean
masks [R, N] saying which reference models serve as IN (trained on example i) or OUT references
for each example (see ``src.attacks.select_references``; they carry the equal-count truncation).

LiRA models φ of one example under the IN and the OUT world as Gaussians (paper §4.2, Eq. 4):

    online:  score = mean_q [ log N(φ_t,q; μ_in,q, σ_in,q²) − log N(φ_t,q; μ_out,q, σ_out,q²) ]
    offline, one-sided (paper §4.3):   score = mean_q log Φ((φ_t,q − μ_out,q) / σ_out,q)
    offline, two-sided (reference code): score = mean_q −log N(φ_t,q; μ_out,q, σ_out,q²)

Statistics are taken per query q separately (the paper's query augmentations, §5.3); the per-query
log-likelihood ratios are then averaged. Higher score = more likely member.

Centre: ``median`` (reference code, robust to outlying references) or ``mean``. σ per example is
the population standard deviation (ddof 0, about the mean), floored at ``sigma_floor`` so that a
degenerate reference set (one reference, identical φ) yields a finite score.

Fixed variance (paper §4.2: "with few shadow models, a global variance works better"):
  * ``residual`` (default): σ_in = sqrt(mean of (φ − centre_i,q)² over all selected IN values of all
    examples, references and queries), σ_out likewise from the OUT values — the maximum-likelihood
    σ of the model φ ~ N(centre_i,q, σ²), estimated separately for each world.
  * ``pooled_in`` (reference-code variant, kept for comparability): the standard deviation of all
    selected IN φ values pooled over examples (so it includes the spread *between* examples), used
    for both IN and OUT. For the offline attack, which sees no IN references, the pooled OUT values
    play that role.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.special import log_ndtr

CENTRES = ("median", "mean")
FIXED_VARIANCES = ("residual", "pooled_in")
OFFLINE_MODES = ("one_sided", "two_sided")
_LOG_SQRT_2PI = 0.5 * np.log(2.0 * np.pi)
_CHUNK_ELEMENTS = 4_000_000  # float64 values per working block (≈ 32 MB) to bound memory


@dataclass
class RefStats:
    """Per-example, per-query Gaussian statistics of the selected references of one world.

    centre, std: [N, Q]; count: [N] references used per example; ss_resid: scalar sum of squared
    residuals (φ − centre)² over all selected values; ss_pooled: scalar sum of squared deviations of
    all selected values from their grand mean; n_values: number of selected values (count·Q summed).
    """

    centre: np.ndarray
    std: np.ndarray
    count: np.ndarray
    ss_resid: float
    ss_pooled: float
    n_values: int


def _check_choice(value: str, allowed: tuple[str, ...], key: str) -> str:
    if value not in allowed:
        raise ValueError(f"{key}={value!r}: allowed {', '.join(allowed)}")
    return value


def reference_stats(phi_ref: np.ndarray, mask: np.ndarray, centre: str = "median") -> RefStats:
    """Masked per-example statistics over the reference axis, computed in float64 in example chunks.

    phi_ref [R, N, Q]; mask [R, N] bool (which references to use for each example; every example
    must have at least one).
    """
    _check_choice(centre, CENTRES, "attack.centre")
    phi_ref = np.asarray(phi_ref)
    mask = np.asarray(mask, dtype=bool)
    r, n, q = phi_ref.shape
    count = mask.sum(axis=0)
    if n and count.min() < 1:
        raise ValueError("reference_stats: some example has no selected reference")
    centre_out = np.empty((n, q))
    std_out = np.empty((n, q))
    ss_resid = 0.0
    step = max(1, _CHUNK_ELEMENTS // max(1, r * q))
    means = np.empty((n, q))
    for s in range(0, n, step):
        sl = slice(s, min(n, s + step))
        x = phi_ref[:, sl].astype(np.float64)
        m = mask[:, sl, None]
        c = count[sl].astype(np.float64)[:, None]
        mean = np.where(m, x, 0.0).sum(axis=0) / c
        dev = np.where(m, x - mean, 0.0)
        std_out[sl] = np.sqrt((dev * dev).sum(axis=0) / c)
        means[sl] = mean
        if centre == "mean":
            ctr = mean
        else:
            cnt = count[sl]
            # unselected values sort to the end; only the middle order statistics are needed
            kth = np.unique(np.r_[(cnt - 1) // 2, cnt // 2])
            masked = np.where(m, x, np.inf)
            srt = np.partition(masked, kth, axis=0) if kth.size <= 4 else np.sort(masked, axis=0)
            lo = ((cnt - 1) // 2)[None, :, None].repeat(q, axis=2)
            hi = (cnt // 2)[None, :, None].repeat(q, axis=2)
            ctr = 0.5 * (np.take_along_axis(srt, lo, 0)[0] + np.take_along_axis(srt, hi, 0)[0])
        centre_out[sl] = ctr
        res = np.where(m, x - ctr, 0.0)
        ss_resid += float((res * res).sum())
    # pooled sum of squares about the grand mean = within-example + between-example parts (exact)
    w = np.repeat(count[:, None].astype(np.float64), q, axis=1)
    n_values = int(w.sum())
    grand = float((w * means).sum() / n_values) if n_values else 0.0
    ss_pooled = float((w * std_out**2).sum() + (w * (means - grand) ** 2).sum())
    return RefStats(centre_out, std_out, count, ss_resid, ss_pooled, n_values)


def _sigmas(stats: RefStats, fixed_variance: str | None, pooled: RefStats, sigma_floor: float) -> np.ndarray:
    """σ of one world: per example [N, Q], or one global value (broadcastable)."""
    if fixed_variance is None:
        sig = stats.std
    elif fixed_variance == "residual":
        sig = np.asarray(np.sqrt(stats.ss_resid / stats.n_values))
    else:  # pooled_in: the pooled spread of `pooled` (the IN world online, OUT world offline)
        sig = np.asarray(np.sqrt(pooled.ss_pooled / pooled.n_values))
    return np.maximum(sig, sigma_floor)


def _log_normal(x: np.ndarray, mu: np.ndarray, sigma: np.ndarray) -> np.ndarray:
    z = (x - mu) / sigma
    return -0.5 * z * z - np.log(sigma) - _LOG_SQRT_2PI


def _as_target(phi_target: np.ndarray, stats: RefStats) -> np.ndarray:
    x = np.asarray(phi_target, dtype=np.float64)
    if x.shape != stats.centre.shape:
        raise ValueError(f"phi_target shape {x.shape} does not match references {stats.centre.shape}")
    return x


def lira_online(
    phi_ref: np.ndarray,
    in_mask: np.ndarray,
    out_mask: np.ndarray,
    phi_target: np.ndarray,
    centre: str = "median",
    fixed_variance: str | None = None,
    sigma_floor: float = 1e-6,
    stats: tuple[RefStats, RefStats] | None = None,
) -> np.ndarray:
    """Online LiRA score [N]: mean over queries of log N(φ_t; μ_in, σ_in²) − log N(φ_t; μ_out, σ_out²).

    ``fixed_variance``: None (per-example σ), ``"residual"`` or ``"pooled_in"`` (see module doc).
    ``stats``: the (IN, OUT) :func:`reference_stats` of these masks, if already computed.
    """
    if fixed_variance is not None:
        _check_choice(fixed_variance, FIXED_VARIANCES, "attack.fixed_variance")
    st_in, st_out = stats or (reference_stats(phi_ref, in_mask, centre), reference_stats(phi_ref, out_mask, centre))
    x = _as_target(phi_target, st_in)
    sig_in = _sigmas(st_in, fixed_variance, st_in, sigma_floor)
    sig_out = _sigmas(st_out, fixed_variance, st_in, sigma_floor)
    llr = _log_normal(x, st_in.centre, sig_in) - _log_normal(x, st_out.centre, sig_out)
    return llr.mean(axis=1)


def lira_offline(
    phi_ref: np.ndarray,
    out_mask: np.ndarray,
    phi_target: np.ndarray,
    centre: str = "median",
    fixed_variance: str | None = None,
    mode: str = "one_sided",
    sigma_floor: float = 1e-6,
    stats: RefStats | None = None,
) -> np.ndarray:
    """Offline LiRA score [N] from OUT references only.

    ``mode="one_sided"`` (paper): mean_q log Φ((φ_t − μ_out)/σ_out), with a stable log-CDF;
    ``mode="two_sided"`` (reference code): mean_q −log N(φ_t; μ_out, σ_out²).
    ``stats``: the :func:`reference_stats` of ``out_mask``, if already computed.
    """
    _check_choice(mode, OFFLINE_MODES, "attack.offline")
    if fixed_variance is not None:
        _check_choice(fixed_variance, FIXED_VARIANCES, "attack.fixed_variance")
    st_out = stats or reference_stats(phi_ref, out_mask, centre)
    x = _as_target(phi_target, st_out)
    sig = _sigmas(st_out, fixed_variance, st_out, sigma_floor)
    if mode == "one_sided":
        s = log_ndtr((x - st_out.centre) / sig)
    else:
        s = -_log_normal(x, st_out.centre, sig)
    return s.mean(axis=1)
