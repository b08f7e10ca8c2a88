"""The per-example membership signal φ (REFERENCE.md "Scores").

For logits z = f(a(x)) of example (x, y) under query view a:
    φ = z_y − logsumexp_{j≠y} z_j  (= log p_y − log(1 − p_y)),
computed this way because it stays finite in float32 even when p_y rounds to 1.
Models are queried in eval mode (BatchNorm running statistics).
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from src.data.augment import apply_query, normalize


def logit_confidence(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """φ per row: true-class logit minus logsumexp of the other logits."""
    logits = logits.float()
    z_y = logits.gather(1, y.view(-1, 1)).squeeze(1)
    others = logits.scatter(1, y.view(-1, 1), float("-inf"))
    return z_y - torch.logsumexp(others, dim=1)


@torch.no_grad()
def compute_phi(model: nn.Module, x_uint8: torch.Tensor, y: torch.Tensor, mean, std, queries,
                device: str = "cpu", batch_size: int = 1024) -> np.ndarray:
    """φ [N, Q] float32 for every example and query view."""
    model = model.to(device).eval()
    out = np.empty((len(y), len(queries)), dtype=np.float32)
    for i in range(0, len(y), batch_size):
        xb = x_uint8[i:i + batch_size].to(device)
        yb = y[i:i + batch_size].to(device)
        for q, name in enumerate(queries):  # views made on raw pixels, as training augmentation is
            logits = model(normalize(apply_query(xb, name), mean, std))
            out[i:i + len(yb), q] = logit_confidence(logits, yb).cpu().numpy()
    model.cpu()
    return out
