"""Batched tensor augmentation and the deterministic attack queries.

Training augmentation (random crop with zero padding + horizontal flip) is applied to a whole
uint8 batch at once on its device; queries are the fixed views each model is scored on
(docs/design.md, "Scores": identity and mirror by default, optional pixel shifts).
"""
from __future__ import annotations

import re

import torch
import torch.nn.functional as F


def normalize(x_uint8: torch.Tensor, mean, std) -> torch.Tensor:
    """uint8 [B,C,H,W] → float, per-channel standardised."""
    x = x_uint8.float().div_(255.0)
    m = torch.tensor(mean, device=x.device, dtype=x.dtype).view(1, -1, 1, 1)
    s = torch.tensor(std, device=x.device, dtype=x.dtype).view(1, -1, 1, 1)
    return (x - m) / s


def random_crop_flip(x: torch.Tensor, pad: int, flip: bool, generator: torch.Generator | None = None) -> torch.Tensor:
    """Random crop after zero padding by ``pad`` and random horizontal flip, per example, batched."""
    b, _, h, w = x.shape
    dev = x.device
    if pad > 0:
        xp = F.pad(x, (pad, pad, pad, pad))
        dx = torch.randint(0, 2 * pad + 1, (b,), generator=generator, device="cpu").to(dev)
        dy = torch.randint(0, 2 * pad + 1, (b,), generator=generator, device="cpu").to(dev)
        rows = (dy.view(b, 1) + torch.arange(h, device=dev).view(1, h))  # [B,H]
        cols = (dx.view(b, 1) + torch.arange(w, device=dev).view(1, w))  # [B,W]
        idx_b = torch.arange(b, device=dev).view(b, 1, 1)
        x = xp.permute(0, 2, 3, 1)[idx_b, rows.view(b, h, 1), cols.view(b, 1, w)].permute(0, 3, 1, 2)
    if flip:
        m = torch.rand(b, generator=generator, device="cpu").to(dev) < 0.5
        x = torch.where(m.view(b, 1, 1, 1), x.flip(-1), x)
    return x.contiguous()


_SHIFT = re.compile(r"^shift_(-?\d+)_(-?\d+)$")


RANDOM_QUERY = "random_aug"  # a random crop + flip (dataset.augment), drawn per model (the study's code)


def check_query(name: str) -> None:
    if name not in ("identity", "mirror", RANDOM_QUERY) and not _SHIFT.match(name):
        raise ValueError(f"query {name!r} is not known; allowed: identity, mirror, random_aug, shift_<dx>_<dy> "
                         f"(e.g. shift_1_0)")


def apply_query(x: torch.Tensor, name: str) -> torch.Tensor:
    """One deterministic view of a batch: identity, mirror, or a zero-filled shift by (dx, dy) pixels."""
    check_query(name)
    if name == RANDOM_QUERY:
        raise ValueError("query random_aug has no fixed view: it is drawn per model by scores.compute_phi")
    if name == "identity":
        return x
    if name == "mirror":
        return x.flip(-1)
    dx, dy = (int(v) for v in _SHIFT.match(name).groups())
    out = torch.zeros_like(x)
    h, w = x.shape[-2:]
    ys, yd = (slice(0, h - dy), slice(dy, h)) if dy >= 0 else (slice(-dy, h), slice(0, h + dy))
    xs, xd = (slice(0, w - dx), slice(dx, w)) if dx >= 0 else (slice(-dx, w), slice(0, w + dx))
    out[..., yd, xd] = x[..., ys, xs]
    return out


def normalizer(mean, std, device):
    """uint8 → standardised float, with mean/std uploaded once (``augment.normalize`` builds them
    from Python lists at every call, a host→device copy per step on CUDA). Same operations, same bits."""
    m = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1).to(device)
    s = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1).to(device)
    return lambda x: (x.float().div_(255.0) - m) / s


def normalized_crop_flip(pad: int, flip: bool, mean, std):
    """``random_crop_flip`` for images that are already normalised: the padding takes the value a
    black pixel has after normalisation (−mean/std), so the result equals augmenting the raw image
    and normalising it afterwards (crop and flip only move pixels)."""
    black = (-torch.tensor(mean, dtype=torch.float32) / torch.tensor(std, dtype=torch.float32)).view(1, -1, 1, 1)

    def augment(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        b = black.to(x.device, x.dtype)
        return random_crop_flip(x - b, pad, flip, generator) + b

    return augment
