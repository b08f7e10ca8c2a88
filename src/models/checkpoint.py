"""Weights of a model trained elsewhere, loaded strictly into the configured architecture.

A checkpoint is a state_dict saved with ``torch.save``, or a dict holding one under ``state_dict``,
``model_state_dict`` or ``model`` (the usual training-script layouts). Keys carrying one common
wrapper prefix (``module.`` from DataParallel/DDP, ``_orig_mod.`` from ``torch.compile``) are taken
without it. Everything else must match exactly: every key of the model present, no other key, every
shape equal; a mismatch raises ``CheckpointError`` in one line naming the first keys and shapes.
"""
from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

KEY = "target.checkpoint"
WRAPPER_PREFIXES = ("module.", "_orig_mod.")
HOLDER_KEYS = ("state_dict", "model_state_dict", "model")


class CheckpointError(ValueError):
    """A checkpoint that is not readable or does not fit the configured model."""


def _shape(t) -> str:
    return "[" + ",".join(str(d) for d in getattr(t, "shape", ())) + "]"


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """The state_dict a checkpoint file holds (module doc), on the CPU, tensors only."""
    p = Path(path)
    if not p.is_file():
        raise CheckpointError(f"{KEY}={path}: no such file")
    try:
        obj = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:  # not a torch file, truncated, or pickled objects beyond tensors
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise CheckpointError(f"{KEY}={path}: not a readable torch state_dict ({msg[:160]}); save one with "
                              f"torch.save(model.state_dict(), PATH)") from None
    if isinstance(obj, nn.Module):
        obj = obj.state_dict()
    if isinstance(obj, Mapping) and not any(torch.is_tensor(v) for v in obj.values()):
        for k in HOLDER_KEYS:
            if isinstance(obj.get(k), Mapping):
                obj = obj[k]
                break
    if not isinstance(obj, Mapping) or not obj or not all(isinstance(k, str) and torch.is_tensor(v)
                                                         for k, v in obj.items()):
        raise CheckpointError(f"{KEY}={path}: holds no state_dict (a mapping of parameter names to tensors, or a dict "
                              f"with one under {', '.join(HOLDER_KEYS)}); save one with "
                              f"torch.save(model.state_dict(), PATH)")
    sd = dict(obj)
    for prefix in WRAPPER_PREFIXES:
        if all(k.startswith(prefix) for k in sd):
            sd = {k[len(prefix):]: v for k, v in sd.items()}
    return sd


def mismatch(model: nn.Module, sd: Mapping[str, torch.Tensor], limit: int = 3) -> str | None:
    """One line naming the first missing keys, unexpected keys and shape differences of ``sd``
    against ``model`` (with their shapes); None when it loads strictly."""
    want = model.state_dict()
    missing = [k for k in want if k not in sd]
    unexpected = [k for k in sd if k not in want]
    shapes = [k for k in want if k in sd and tuple(sd[k].shape) != tuple(want[k].shape)]
    parts = []
    if missing:
        parts.append(f"missing {len(missing)} key(s): " + ", ".join(f"{k} {_shape(want[k])}" for k in missing[:limit]))
    if unexpected:
        parts.append(f"unexpected {len(unexpected)} key(s): "
                     + ", ".join(f"{k} {_shape(sd[k])}" for k in unexpected[:limit]))
    if shapes:
        parts.append(f"{len(shapes)} shape(s) differ: "
                     + ", ".join(f"{k} checkpoint {_shape(sd[k])} vs model {_shape(want[k])}" for k in shapes[:limit]))
    return "; ".join(parts) or None


def load_strict(model: nn.Module, path: str | Path, what: str) -> nn.Module:
    """Load the checkpoint at ``path`` into ``model`` strictly; ``what`` names the configured model in
    the error line (e.g. ``model=smallcnn (width=32)``)."""
    sd = read_state_dict(path)
    bad = mismatch(model, sd)
    if bad:
        raise CheckpointError(f"{KEY}={path}: does not fit {what}: {bad}; set model (and model.width, ...) to the "
                              f"architecture the checkpoint was trained as")
    model.load_state_dict(sd, strict=True)
    return model
