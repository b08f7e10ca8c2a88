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

from .lira import CENTRES, FIXED_VARIANCES, OFFLINE_MODES, RefStats, lira_offline, lira_online, reference_stats
from .loss import loss_attack
from .references import select_references
from .rmia import QUERY_REDUCES, Population, _log_mean_ref_prob, log_sigmoid, rmia


@dataclass(frozen=True)
class Attack:
    """``references``: 'online' (IN and OUT per example), 'offline' (OUT only) or None (none);
    ``score(refs: References, phi_target) -> [N]``."""

    references: str | None
    score: Callable[..., np.ndarray]


def _lira_online(fixed: bool):
    def score(refs, x):
        p = refs.p
        return lira_online(refs.phi_ref, refs.sel.in_mask, refs.sel.out_mask, x,
                           fixed_variance=p["fixed_variance"] if fixed else None, centre=p["centre"],
                           sigma_floor=p["sigma_floor"], stats=(refs.stats("in"), refs.stats("out")))
    return score


def _lira_offline(fixed: bool):
    def score(refs, x):
        p = refs.p
        return lira_offline(refs.phi_ref, refs.sel.offline_mask, x, fixed_variance=p["fixed_variance"] if fixed else None,
                            mode=p["offline"], centre=p["centre"], sigma_floor=p["sigma_floor"],
                            stats=refs.stats("offline"))
    return score


def _rmia(offline: bool):
    def score(refs, x):
        p, which = refs.p, "offline" if offline else "online"
        return rmia(refs.phi_ref, refs.mask(which), x, gamma=p["gamma"], offline_a=p["a"] if offline else None,
                    query_reduce=p["query_reduce"], population=refs.populations[1 if offline else 0],
                    log_ref=refs.log_ref_prob(which))
    return score


ATTACKS: dict[str, Attack] = {
    "lira_online": Attack("online", _lira_online(False)),
    "lira_online_fixed": Attack("online", _lira_online(True)),
    "lira_offline": Attack("offline", _lira_offline(False)),
    "lira_offline_fixed": Attack("offline", _lira_offline(True)),
    "rmia": Attack("online", _rmia(False)),
    "rmia_offline": Attack("offline", _rmia(True)),
    "loss": Attack(None, lambda refs, x: loss_attack(x)),
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
    if phi_ref.ndim == 2:  # single query
        phi_ref = phi_ref[:, :, None]
    if phi_target is not None:
        phi_target = np.asarray(phi_target)
        if phi_target.ndim == 1:
            phi_target = phi_target[:, None]
    if phi_ref.ndim != 3 or (phi_target is not None and (phi_target.ndim != 2 or phi_ref.shape[1:] != phi_target.shape)):
        got = phi_ref.shape if phi_target is None else f"{phi_ref.shape} and {phi_target.shape}"
        raise ValueError(f"{what}phi_ref must be [R, N, Q] and phi_target [N, Q]; got {got}")
    if keep_ref is not None:
        keep_ref = np.asarray(keep_ref, dtype=bool)
        if keep_ref.shape != phi_ref.shape[:2]:
            raise ValueError(f"{what}keep_ref shape {keep_ref.shape} != phi_ref [R, N] {phi_ref.shape[:2]}")
    if not (np.isfinite(phi_ref).all() and (phi_target is None or np.isfinite(phi_target).all())):
        raise ValueError(f"{what}phi scores contain NaN or inf")
    return phi_ref, keep_ref, phi_target


class PoolLogProb:
    """log sigmoid(φ) of every model of a pool ([M, N, Q]), made at first read: RMIA's reference
    probabilities, elementwise in φ, so each set of references taken from the pool (a target's, a
    pseudo-target's) reads its rows instead of computing its own."""

    def __init__(self, phi: np.ndarray) -> None:
        self.phi, self._value = phi, None

    def rows(self, models) -> np.ndarray:
        if self._value is None:
            self._value = log_sigmoid(self.phi)
        return self._value[models]


class References:
    """One target's reference models, prepared once for every attack and every φ scored against
    them: the reference selection, and each statistic an attack reads (LiRA's per-example Gaussian
    fits, RMIA's mean reference probability), computed at first use and kept. The per-example and
    fixed-variance LiRA variants read the same fits; offline LiRA reads the OUT fit of online LiRA
    when its mask is the same (the balanced split: k = k_out); a quantized target and its FP
    original share their references (src/pipeline.py). ``log_p``: gives log sigmoid(``phi_ref``) when
    first needed, if it can be read rather than computed (the references' rows of a :class:`PoolLogProb`)."""

    def __init__(self, phi_ref: np.ndarray, keep_ref: np.ndarray, cfg: Mapping[str, Any] | None = None,
                 population: Population | None = None, log_p: Callable[[], np.ndarray] | None = None) -> None:
        self.p = _params(cfg)
        self._pool_log_p = log_p
        self.phi_ref, self.keep_ref, _ = _as_arrays(phi_ref, keep_ref, None)
        self.sel = select_references(self.keep_ref, self.p["equal_counts"])
        self._stats: dict[str, Any] = {}
        self._log_ref: dict[str, np.ndarray] = {}
        self._population_in = population
        self._populations: tuple | None = None

    def mask(self, which: str) -> np.ndarray:
        """[R, N]: ``in``/``out`` (online LiRA), ``offline`` (offline attacks), ``online`` (RMIA: IN or OUT)."""
        sel = self.sel
        if which == "online":
            return sel.in_mask | sel.out_mask
        return {"in": sel.in_mask, "out": sel.out_mask, "offline": sel.offline_mask}[which]

    @property
    def populations(self) -> tuple:
        """RMIA's (online, offline) population triples, or (None, None): the examples themselves."""
        if self._populations is None:
            pop = self._population_in
            self._populations = (None, None) if pop is None else self._population(pop)
        return self._populations

    def _same_as(self, which: str) -> str:
        if which == "offline" and np.array_equal(self.sel.offline_mask, self.sel.out_mask):
            return "out"
        return which

    def stats(self, which: str) -> RefStats:
        which = self._same_as(which)
        if which not in self._stats:
            self._stats[which] = reference_stats(self.phi_ref, self.mask(which), self.p["centre"])
        return self._stats[which]

    def log_ref_prob(self, which: str) -> np.ndarray:
        if which not in self._log_ref:
            if "log_p" not in self._log_ref:  # log sigmoid(φ) of every reference, shared by both masks
                self._log_ref["log_p"] = log_sigmoid(self.phi_ref) if self._pool_log_p is None else self._pool_log_p()
            self._log_ref[which] = _log_mean_ref_prob(self.phi_ref, self.mask(which), self._log_ref["log_p"])
        return self._log_ref[which]

    def _population(self, population: Population):
        r, q = self.phi_ref.shape[0], self.phi_ref.shape[2]
        pr, pk, pt = _as_arrays(population.phi_ref, population.keep_ref, population.phi_target, "population: ")
        if pr.shape[0] != r or pr.shape[2] != q:
            raise ValueError(f"population phi_ref {pr.shape} must have R={r} references and Q={q}")
        if pk is None:  # no reference trained on z: all refs are OUT, use them all
            all_refs = np.ones(pr.shape[:2], dtype=bool)
            return (pr, all_refs, pt), (pr, all_refs, pt)
        ps = select_references(pk, self.p["equal_counts"])
        return (pr, ps.in_mask | ps.out_mask, pt), (pr, ps.offline_mask, pt)

    def _need(self, name: str, online: bool) -> None:
        sel, r = self.sel, self.phi_ref.shape[0]
        n_models = r + 1
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

    def scores(self, names: Iterable[str] | str, phi_target: np.ndarray) -> dict[str, np.ndarray]:
        """Membership scores [N] (float64, higher = more likely member) of ``phi_target`` [N, Q]."""
        lst = check_names(names)
        _, _, x = _as_arrays(self.phi_ref, None, phi_target)
        if self._population_in is not None and any(x in ("rmia", "rmia_offline") for x in lst):
            pk = self.populations[0][1]
            if "rmia" in lst and pk.sum(axis=0).min() < 1:
                raise ValueError("population: some point has no reference for online RMIA")
            if "rmia_offline" in lst and self.populations[1][1].sum(axis=0).min() < 1:
                raise ValueError("population: some point has no OUT reference for offline RMIA")
        out: dict[str, np.ndarray] = {}
        for name in lst:
            attack = ATTACKS[name]
            if attack.references is not None:
                self._need(name, attack.references == "online")
            out[name] = attack.score(self, x)
        return out


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
    points (default: the N examples themselves). Several targets against the same references:
    :class:`References`.
    """
    check_names(names)
    _as_arrays(phi_ref, keep_ref, phi_target)
    return References(phi_ref, keep_ref, cfg, population).scores(names, phi_target)
