"""Global-threshold (loss) attack (Yeom et al., CSF 2018; the "global threshold" baseline of LiRA).

score = mean over queries of φ_t = log p_y − log(1 − p_y). φ is a monotone function of the
cross-entropy loss −log p_y (decreasing), so thresholding φ is thresholding the loss: low loss →
member. No reference models are used.
"""
from __future__ import annotations

import numpy as np


def loss_attack(phi_target: np.ndarray) -> np.ndarray:
    """Score [N]: the target's φ averaged over queries (phi_target [N, Q] or [N])."""
    x = np.asarray(phi_target, dtype=np.float64)
    return x if x.ndim == 1 else x.mean(axis=1)
