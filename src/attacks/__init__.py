"""Membership-inference attacks on one target model (REFERENCE.md "Attacks") and their metrics.

Entry point: :func:`run_attacks` turns the reference models' and the target's φ scores into one
membership score per training example per attack (higher = more likely member).

Reference selection and the equal-count rule (REFERENCE.md "Membership split")
------------------------------------------------------------------------------
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

Attacks (names for ``attack.names``)
------------------------------------
lira_online, lira_online_fixed       LiRA online, per-example / fixed variance   (src/attacks/lira.py)
lira_offline, lira_offline_fixed     LiRA offline, per-example / fixed variance
rmia, rmia_offline                   RMIA online (IN+OUT refs) / offline (OUT refs, a)  (rmia.py)
loss                                 global threshold on φ_t                     (loss.py)
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from .lira import CENTRES, FIXED_VARIANCES, OFFLINE_MODES, lira_offline, lira_online
from .loss import loss_attack
from .rmia import QUERY_REDUCES, Population, rmia

ATTACKS: tuple[str, ...] = (
    "lira_online",
    "lira_online_fixed",
    "lira_offline",
    "lira_offline_fixed",
    "rmia",
    "rmia_offline",
    "loss",
)
ONLINE_ATTACKS = ("lira_online", "lira_online_fixed", "rmia")
OFFLINE_ATTACKS = ("lira_offline", "lira_offline_fixed", "rmia_offline")

DEFAULTS: dict[str, Any] = {
    "equal_counts": True,
    "centre": "median",
    "fixed_variance": "residual",
    "offline": "one_sided",
    "sigma_floor": 1e-6,
    "gamma": 1.0,
    "a": 0.3,
    "query_reduce": "ratio_mean",
}

__all__ = [
    "ATTACKS",
    "DEFAULTS",
    "Population",
    "ReferenceSelection",
    "check_names",
    "min_models",
    "run_attacks",
    "select_references",
]


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


def check_names(names: Iterable[str] | str) -> list[str]:
    """Validate ``attack.names``; returns them as a list."""
    lst = [names] if isinstance(names, str) else [str(x) for x in names]
    for x in lst:
        if x not in ATTACKS:
            raise ValueError(f"attack.names={lst}: unknown attack '{x}'; allowed: {', '.join(ATTACKS)}")
    if not lst:
        raise ValueError(f"attack.names is empty; allowed: {', '.join(ATTACKS)}")
    return lst


def min_models(names: Iterable[str] | str) -> int:
    """Smallest pool size M (targets included) for which ``names`` can run on a balanced split.

    Reference-based attacks need, after leaving the target out, ≥ 1 IN and ≥ 1 OUT reference per
    example (online) or ≥ 1 OUT reference (offline). With pkeep = 0.5 the equal count is M/2 − 1,
    so M ≥ 4. (M = 4 gives one reference per side: per-example σ is then 0 and falls back to
    ``sigma_floor``, so the non-fixed LiRA variants degenerate to a nearest-centre rule; the
    fixed-variance variants and RMIA stay meaningful. The paper uses M = 65.) The loss attack needs
    no references; 2 models is the floor of the membership split itself.
    """
    lst = check_names(names)
    return 4 if any(x != "loss" for x in lst) else 2


def _params(cfg: Mapping[str, Any] | None) -> dict[str, Any]:
    p = dict(DEFAULTS)
    if cfg is not None:
        for key in DEFAULTS:
            v = cfg.get(key, None) if hasattr(cfg, "get") else None
            if v is not None:
                p[key] = v
    for key, allowed in (
        ("centre", CENTRES),
        ("fixed_variance", FIXED_VARIANCES),
        ("offline", OFFLINE_MODES),
        ("query_reduce", QUERY_REDUCES),
    ):
        if p[key] not in allowed:
            raise ValueError(f"attack.{key}={p[key]!r}: allowed {', '.join(allowed)}")
    p["equal_counts"] = bool(p["equal_counts"])
    p["sigma_floor"] = float(p["sigma_floor"])
    p["gamma"] = float(p["gamma"])
    p["a"] = float(p["a"])
    if not p["sigma_floor"] > 0:
        raise ValueError(f"attack.sigma_floor={p['sigma_floor']}: must be > 0")
    if not p["gamma"] > 0:
        raise ValueError(f"attack.gamma={p['gamma']}: must be > 0")
    if not 0.0 <= p["a"] <= 1.0:
        raise ValueError(f"attack.a={p['a']}: must lie in [0, 1]")
    return p


def _as_arrays(phi_ref, keep_ref, phi_target, what: str = "") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    phi_ref = np.asarray(phi_ref)
    phi_target = np.asarray(phi_target)
    if phi_ref.ndim == 2:  # single query
        phi_ref = phi_ref[:, :, None]
    if phi_target.ndim == 1:
        phi_target = phi_target[:, None]
    if phi_ref.ndim != 3 or phi_target.ndim != 2 or phi_ref.shape[1:] != phi_target.shape:
        raise ValueError(
            f"{what}phi_ref must be [R, N, Q] and phi_target [N, Q]; got {phi_ref.shape} and {phi_target.shape}"
        )
    if keep_ref is not None:
        keep_ref = np.asarray(keep_ref, dtype=bool)
        if keep_ref.shape != phi_ref.shape[:2]:
            raise ValueError(f"{what}keep_ref shape {keep_ref.shape} != phi_ref [R, N] {phi_ref.shape[:2]}")
    if not (np.isfinite(phi_ref).all() and np.isfinite(phi_target).all()):
        raise ValueError(f"{what}phi scores contain NaN or inf")
    return phi_ref, keep_ref, phi_target


def run_attacks(
    names: Iterable[str] | str,
    phi_ref: np.ndarray,
    keep_ref: np.ndarray,
    phi_target: np.ndarray,
    cfg: Mapping[str, Any] | None = None,
    population: Population | None = None,
) -> dict[str, np.ndarray]:
    """Membership scores [N] (float64, higher = more likely member) for each attack in ``names``.

    phi_ref [R, N, Q]: φ of the R reference models (pool minus the target); keep_ref [R, N]: True =
    the reference trained on the example; phi_target [N, Q]. ``cfg``: the ``attack`` config node
    (keys of :data:`DEFAULTS`; missing keys take the defaults). ``population``: RMIA's population
    points (default: the N examples themselves).
    """
    lst = check_names(names)
    p = _params(cfg)
    phi_ref, keep_ref, phi_target = _as_arrays(phi_ref, keep_ref, phi_target)
    r = phi_ref.shape[0]
    sel = select_references(keep_ref, p["equal_counts"])
    n_models = r + 1

    def need(name: str, online: bool) -> None:
        if online and (sel.n_in.min() < 1 or sel.n_out.min() < 1 or sel.k < 1):
            raise ValueError(
                f"attack '{name}' needs at least one IN and one OUT reference per example, but with "
                f"n_models={n_models} ({r} references after leaving the target out) some example has "
                f"{int(sel.n_in.min())} IN / {int(sel.n_out.min())} OUT references; "
                f"use n_models >= {min_models([name])} with a balanced split"
            )
        if not online and sel.k_out < 1:
            raise ValueError(
                f"attack '{name}' needs at least one OUT reference per example, but with "
                f"n_models={n_models} ({r} references) some example has none; "
                f"use n_models >= {min_models([name])} with a balanced split"
            )

    pop_online = pop_offline = None
    if population is not None and any(x in ("rmia", "rmia_offline") for x in lst):
        pr, pk, pt = _as_arrays(population.phi_ref, population.keep_ref, population.phi_target, "population: ")
        if pr.shape[0] != r or pr.shape[2] != phi_ref.shape[2]:
            raise ValueError(f"population phi_ref {pr.shape} must have R={r} references and Q={phi_ref.shape[2]}")
        if pk is None:  # no reference trained on z: all refs are OUT, use them all
            all_refs = np.ones(pr.shape[:2], dtype=bool)
            pop_online = pop_offline = (pr, all_refs, pt)
        else:
            ps = select_references(pk, p["equal_counts"])
            if "rmia" in lst and (ps.in_mask | ps.out_mask).sum(axis=0).min() < 1:
                raise ValueError("population: some point has no reference for online RMIA")
            if "rmia_offline" in lst and ps.offline_mask.sum(axis=0).min() < 1:
                raise ValueError("population: some point has no OUT reference for offline RMIA")
            pop_online = (pr, ps.in_mask | ps.out_mask, pt)
            pop_offline = (pr, ps.offline_mask, pt)

    common = {"centre": p["centre"], "sigma_floor": p["sigma_floor"]}
    out: dict[str, np.ndarray] = {}
    for name in lst:
        if name == "loss":
            out[name] = loss_attack(phi_target)
        elif name in ("lira_online", "lira_online_fixed"):
            need(name, True)
            fv = p["fixed_variance"] if name.endswith("_fixed") else None
            out[name] = lira_online(phi_ref, sel.in_mask, sel.out_mask, phi_target, fixed_variance=fv, **common)
        elif name in ("lira_offline", "lira_offline_fixed"):
            need(name, False)
            fv = p["fixed_variance"] if name.endswith("_fixed") else None
            out[name] = lira_offline(
                phi_ref, sel.offline_mask, phi_target, fixed_variance=fv, mode=p["offline"], **common
            )
        elif name == "rmia":
            need(name, True)
            out[name] = rmia(
                phi_ref, sel.in_mask | sel.out_mask, phi_target, gamma=p["gamma"], offline_a=None,
                query_reduce=p["query_reduce"], population=pop_online,
            )
        elif name == "rmia_offline":
            need(name, False)
            out[name] = rmia(
                phi_ref, sel.offline_mask, phi_target, gamma=p["gamma"], offline_a=p["a"],
                query_reduce=p["query_reduce"], population=pop_offline,
            )
    return out
