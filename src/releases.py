"""Released versions of one model (``attack.release``) and the joint attack over them (docs/releases.md).

A model is often published at several precisions side by side. With ``attack.release=[fp,q]`` (or a
list of bit-widths such as ``[fp,4,2]``) the job attacks each target as an attacker who sees its
score in every listed version: the joint LiRA of src/attacks/joint.py, next to the single-version
LiRA on each release alone. References: every reference model in the same versions, i.e. the FP
pool for the FP release and the pool quantized exactly as the target (the matched references of
``attack.reference=matched``, read from and written to the same cache) for each quantized release.

Releases: ``fp`` (the FP model), ``q`` (the job's quantized target, at ``bits``) and bit-widths
(the job's quantizer and bit policy at that width, applied to every pool model). The job's own
target is always one of them: a job is one (quantizer, bits) point, and the list says what is
released beside it.
"""
from __future__ import annotations

import copy
import logging
import time
from dataclasses import dataclass

import numpy as np

from src.attacks.release_list import FP, Q, Release, parse_releases  # noqa: F401 (re-exported)

log = logging.getLogger(__name__)

def _at_bits(cfg, bits: float):
    """The job's config with another bit-width (same quantizer, bit policy, layer overrides)."""
    if abs(float(cfg.bits) - bits) < 1e-9:
        return cfg
    other = copy.deepcopy(cfg)
    other.bits = bits
    return other


@dataclass
class ReleaseScores:
    releases: list[Release]
    phi: np.ndarray                        # [k, M, N, Q] φ of every pool model in every release
    joint: dict[int, dict[str, np.ndarray]]           # {target: {attack: [N]}}
    single: dict[str, dict[int, dict[str, np.ndarray]]]  # {release label: {target: {attack: [N]}}}
    cost: dict                             # quantization time of the matched references, attack time


def release_phi(cfg, data, keep, pool, store, device, releases: list[Release]) -> tuple[np.ndarray, dict]:
    """φ [k, M, N, Q] of every pool model (targets and references) in every release, and per
    quantized release the quantization seconds of its M models (as measured when each was made)."""
    from src.pipeline import quantize_targets

    phis, cost = [], {}
    everyone = list(range(keep.shape[0]))
    for rel in releases:
        if rel.bits is None and rel.label == FP:
            phis.append(pool.phi)
            continue
        quantized = quantize_targets(_at_bits(cfg, rel.bits) if rel.bits is not None else cfg, data, keep, everyone,
                                     store, device)
        phis.append(np.stack([q.phi for q in quantized]))
        cost[rel.label] = {"models": len(quantized), "quantize_seconds": float(sum(q.seconds for q in quantized))}
    return np.stack(phis).astype(np.float32), cost


def attack_releases(cfg, data, keep, pool, store, device, targets: list[int]) -> ReleaseScores | None:
    """Joint and single-release scores of every target (None without ``attack.release``)."""
    from src.attacks import run_attacks
    from src.attacks.joint import joint_names, run_joint
    from src.pipeline import reference_models

    releases = parse_releases(cfg)
    if releases is None:
        return None
    phi, cost = release_phi(cfg, data, keep, pool, store, device, releases)
    names = joint_names(cfg.attack.names)
    start = time.perf_counter()
    joint, single = {}, {r.label: {} for r in releases}
    for t in targets:
        refs = np.array(reference_models(cfg, keep, t))
        joint[t] = run_joint(names, phi[:, refs], keep[refs], phi[:, t], cfg.attack)
        for j, rel in enumerate(releases):
            single[rel.label][t] = run_attacks(names, phi[j, refs], keep[refs], phi[j, t], cfg.attack)
    cost["attack_seconds"] = time.perf_counter() - start
    log.info("releases %s: joint attack of %d target(s) in %.1f s", [r.label for r in releases], len(targets),
             cost["attack_seconds"])
    return ReleaseScores(releases, phi, joint, single, cost)
