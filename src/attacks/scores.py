"""The per-example membership signal φ (docs/design.md, "Scores").

For logits z = f(a(x)) of example (x, y) under query view a:
    φ = z_y − logsumexp_{j≠y} z_j  (= log p_y − log(1 − p_y)),
computed this way because it stays finite in float32 even when p_y rounds to 1.
Models are queried in eval mode (BatchNorm running statistics).
"""
from __future__ import annotations

import contextlib

import numpy as np
import torch
from torch import nn

from src.data.augment import RANDOM_QUERY, apply_query, normalize, normalizer, random_crop_flip


# Raised whenever φ changes for the same model and queries: part of every score artifact's cache key.
SCORER_VERSION = 1


def logit_confidence(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """φ per row: true-class logit minus logsumexp of the other logits."""
    logits = logits.float()
    z_y = logits.gather(1, y.view(-1, 1)).squeeze(1)
    others = logits.scatter(1, y.view(-1, 1), float("-inf"))
    return z_y - torch.logsumexp(others, dim=1)


@torch.no_grad()
def compute_phi(model: nn.Module, x_uint8: torch.Tensor, y: torch.Tensor, mean, std, queries,
                device: str = "cpu", batch_size: int = 1024, seed: int = 0,
                augment: tuple[int, bool] = (0, False)) -> np.ndarray:
    """φ [N, Q] float32 for every example and query view. A ``random_aug`` view is a random crop
    (pad ``augment[0]``) + flip (``augment[1]``) with its own generator per (``seed``, query): each model
    (seed) sees its own draws, not aligned across models, as in the study's code."""
    model = model.to(device).eval()
    out = np.empty((len(y), len(queries)), dtype=np.float32)
    gens = {q: torch.Generator().manual_seed(int(seed) * 1_000 + q) for q, n in enumerate(queries) if n == RANDOM_QUERY}
    for i in range(0, len(y), batch_size):
        xb = x_uint8[i:i + batch_size].to(device)
        yb = y[i:i + batch_size].to(device)
        for q, name in enumerate(queries):  # views made on raw pixels, as training augmentation is
            view = random_crop_flip(xb, int(augment[0]), bool(augment[1]), gens[q]) if q in gens else apply_query(xb, name)
            logits = model(normalize(view, mean, std))
            out[i:i + len(yb), q] = logit_confidence(logits, yb).cpu().numpy()
    model.cpu()
    return out


@torch.no_grad()
def compute_phi_fast(models: list[nn.Module], x_uint8: torch.Tensor, y: torch.Tensor, mean, std, queries,
                     device="cpu", batch_size: int = 4096, bf16: bool = True,
                     channels_last: bool = True) -> np.ndarray:
    """φ [M, N, Q] float32 of every model, example and query view (``scores.compute_phi`` for M
    models at once). Data uploaded once, each view built once per batch and shared by all models,
    results kept on the device until the end (one transfer). bf16 autocast and channels_last apply
    on CUDA only; on CPU this equals ``compute_phi`` up to float32 rounding."""
    dev = torch.device(device)
    cuda = dev.type == "cuda"
    bf16, channels_last = bf16 and cuda, channels_last and cuda
    x = x_uint8.to(dev)
    yd = y.to(dev).long()
    norm = normalizer(mean, std, dev)
    out = torch.empty(len(models), len(y), len(queries), device=dev, dtype=torch.float32)
    prepared = []
    for m in models:
        m = m.to(dev).eval()
        prepared.append(m.to(memory_format=torch.channels_last) if channels_last else m)
    ctx = torch.autocast("cuda", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
    with ctx:
        for i in range(0, len(y), batch_size):
            xb, yb = x[i:i + batch_size], yd[i:i + batch_size]
            for q, name in enumerate(queries):
                xq = norm(apply_query(xb, name))
                if channels_last:
                    xq = xq.contiguous(memory_format=torch.channels_last)
                for j, m in enumerate(prepared):
                    out[j, i:i + len(yb), q] = logit_confidence(m(xq), yb)
    res = out.cpu().numpy()
    for m in prepared:
        (m.to(memory_format=torch.contiguous_format) if channels_last else m).cpu()
    return res
