"""The attack registry and :func:`run_attacks` (docs/attacks.md).

:func:`run_attacks` turns the reference models' and the target's φ scores into one membership score
per training example per attack (higher = more likely member). An attack is one module, one entry
in :data:`ATTACKS` (which references it needs and how it scores) and a name in ``attack.names``.

Attacks (names for ``attack.names``)
------------------------------------
lira_online, lira_online_fixed       LiRA online, per-example / fixed variance   (src/attacks/lira.py)
lira_offline, lira_offline_fixed     LiRA offline, per-example / fixed variance
rmia, rmia_offline                   RMIA online (IN+OUT refs) / offline (OUT refs, a)  (rmia.py)
loss                                 global threshold on φ_t                     (loss.py)
"""
from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from .lira import CENTRES, FIXED_VARIANCES, OFFLINE_MODES, lira_offline, lira_online
from .loss import loss_attack
from .references import select_references
from .rmia import QUERY_REDUCES, Population, rmia


@dataclass(frozen=True)
class Attack:
    """``references``: 'online' (IN and OUT per example), 'offline' (OUT only) or None (none);
    ``score(phi_ref, sel, phi_target, params, populations) -> [N]``."""

    references: str | None
    score: Callable[..., np.ndarray]


def _lira_online(fixed: bool):
    def score(phi_ref, sel, phi_target, p, pops):
        fv = p["fixed_variance"] if fixed else None
        return lira_online(phi_ref, sel.in_mask, sel.out_mask, phi_target, fixed_variance=fv,
                           centre=p["centre"], sigma_floor=p["sigma_floor"])
    return score


def _lira_offline(fixed: bool):
    def score(phi_ref, sel, phi_target, p, pops):
        fv = p["fixed_variance"] if fixed else None
        return lira_offline(phi_ref, sel.offline_mask, phi_target, fixed_variance=fv, mode=p["offline"],
                            centre=p["centre"], sigma_floor=p["sigma_floor"])
    return score


def _rmia(offline: bool):
    def score(phi_ref, sel, phi_target, p, pops):
        mask = sel.offline_mask if offline else sel.in_mask | sel.out_mask
        return rmia(phi_ref, mask, phi_target, gamma=p["gamma"], offline_a=p["a"] if offline else None,
                    query_reduce=p["query_reduce"], population=pops[1] if offline else pops[0])
    return score


ATTACKS: dict[str, Attack] = {
    "lira_online": Attack("online", _lira_online(False)),
    "lira_online_fixed": Attack("online", _lira_online(True)),
    "lira_offline": Attack("offline", _lira_offline(False)),
    "lira_offline_fixed": Attack("offline", _lira_offline(True)),
    "rmia": Attack("online", _rmia(False)),
    "rmia_offline": Attack("offline", _rmia(True)),
    "loss": Attack(None, lambda phi_ref, sel, phi_target, p, pops: loss_attack(phi_target)),
}
ONLINE_ATTACKS = tuple(n for n, a in ATTACKS.items() if a.references == "online")
OFFLINE_ATTACKS = tuple(n for n, a in ATTACKS.items() if a.references == "offline")

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


# Pool size below which online LiRA's per-example variance is unreliable: on simulated φ
# (benchmarks/lira_reference_count.py) its AUC falls behind the fixed-variance variant for every
# n_models from 6 to 12 and matches it only from 16 on; at 4 and 5 models each example has one IN
# and one OUT reference, σ is 0, and both degenerate to a nearest-centre rule.
MIN_MODELS_PER_EXAMPLE_VARIANCE = 16
PER_EXAMPLE_VARIANCE = {"lira_online": "lira_online_fixed"}  # attack → its fixed-variance variant


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

    out: dict[str, np.ndarray] = {}
    for name in lst:
        attack = ATTACKS[name]
        if attack.references is not None:
            need(name, attack.references == "online")
        out[name] = attack.score(phi_ref, sel, phi_target, p, (pop_online, pop_offline))
    return out
