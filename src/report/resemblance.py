"""Do the references resemble the target? (LiRA's validity rests on references trained like it.)

LiRA (Carlini et al., S&P 2022, §4) models a target's φ on an example by the φ distribution of
reference models trained *the same way*; when the target was trained elsewhere (another recipe,
epochs, augmentation, normalisation), those Gaussians describe other models and the scores lose their
meaning. Three numbers summarise how a model was trained, each computed the same way for the target
and for every reference:

    train_acc  accuracy on its own members;
    test_acc   accuracy on the test split;
    loss_gap   mean cross-entropy on its non-members minus on its members, over the candidate set
               (−log p_y = softplus(−φ), the first query view), the generalisation gap MIAs exploit.

The target passes when each lies within the references' range [min, max] widened on both sides by
half its width, and at least by ``FLOOR`` (a range of 16 exchangeable models is ~3.5 σ wide, so the
widened one holds ±3.5 σ around the mid-range; the floors keep a degenerate range, e.g. train
accuracy 1.0 for all, from flagging a difference of one example).
"""
from __future__ import annotations

import numpy as np

FLOOR = {"train_acc": 0.01, "test_acc": 0.01, "loss_gap": 0.05}


def loss_gap(phi: np.ndarray, members: np.ndarray) -> float:
    """Mean −log p_y on non-members minus on members, from φ [N, Q] (first view) and a mask [N]."""
    x = np.asarray(phi, dtype=np.float64)
    x = x[:, 0] if x.ndim == 2 else x
    loss = np.logaddexp(0.0, -x)  # −log sigmoid(φ) = −log p_y
    m = np.asarray(members, dtype=bool)
    return float(loss[~m].mean() - loss[m].mean())


def resemblance(pool, target: int, refs: list[int]) -> dict:
    """{metric: {target, ref_min, ref_max, low, high, inside}} for train_acc, test_acc, loss_gap."""
    values = {"train_acc": np.asarray(pool.train_acc, dtype=np.float64),
              "test_acc": np.asarray(pool.test_acc, dtype=np.float64),
              "loss_gap": np.array([loss_gap(pool.phi[m], pool.keep[m]) for m in range(pool.phi.shape[0])])}
    out = {}
    for name, v in values.items():
        r = v[refs]
        lo, hi = float(r.min()), float(r.max())
        pad = max((hi - lo) / 2, FLOOR[name])
        t = float(v[target])
        out[name] = {"target": t, "ref_min": lo, "ref_max": hi, "low": lo - pad, "high": hi + pad,
                     "inside": bool(lo - pad <= t <= hi + pad)}
    return out


def resemblance_warning(check: dict) -> str | None:
    """One line naming each metric of the target outside the references' widened range; None if none."""
    bad = [f"{k}={c['target']:.3f} (references {c['ref_min']:.3f}..{c['ref_max']:.3f})"
           for k, c in check.items() if not c["inside"]]
    if not bad:
        return None
    return ("target: the references do not resemble the external target: " + ", ".join(bad)
            + "; LiRA assumes references trained like the target: give the pool its recipe "
              "(train.*, dataset.augment, model.*; docs/audit.md)")
