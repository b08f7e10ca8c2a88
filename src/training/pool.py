"""Training one pool model on its IN half with the ``train`` recipe, through a Lightning Trainer."""
from __future__ import annotations

import contextlib
import logging
import os
import signal
import warnings

import lightning as L
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from src.data import ImageData, normalize
from src.models import build_model

from .fast import train_models_fast, use_fast_path
from .module import Classifier, curve_prefix
from .precision import resolve_channels_last, resolve_precision, to_memory_format
from .recipe import Recipe

log = logging.getLogger(__name__)


def resolve_device(device: str) -> str:
    if device in (None, "auto"):
        return "cuda" if torch.cuda.is_available() else "cpu"
    return str(device)


@contextlib.contextmanager
def _quiet_lightning():
    """Lightning's rank-zero info lines ("GPU available", tips, "`Trainer.fit` stopped") would repeat
    for every pool model; warnings and the progress bar stay."""
    lg = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    level = lg.level
    lg.setLevel(max(level, logging.WARNING))
    try:
        yield
    finally:
        lg.setLevel(level)


@contextlib.contextmanager
def _process_flags_kept():
    """The Trainer switches deterministic algorithms on (and cuDNN's autotuner off) for the whole
    process; they are put back after each model, so quantizers, scoring and the next stages run as
    they would after a model read from the cache."""
    det, warn = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    cudnn_benchmark, cublas = torch.backends.cudnn.benchmark, os.environ.get("CUBLAS_WORKSPACE_CONFIG")
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(det, warn_only=warn)
        torch.backends.cudnn.benchmark = cudnn_benchmark
        if cublas is None:
            os.environ.pop("CUBLAS_WORKSPACE_CONFIG", None)
        else:
            os.environ["CUBLAS_WORKSPACE_CONFIG"] = cublas


def train_models(recipe: Recipe, data: ImageData, members: list[torch.Tensor], seeds: list[int], device: str,
                 names: list[str] | None = None, logger=None, on_epoch=None) -> list[nn.Module]:
    """Train fresh ``recipe.model``s, model k on ``data.x_train[members[k]]`` with seed ``seeds[k]``.
    The fast path (``train.fast``; 'auto' = on CUDA) trains them together; the plain Lightning path
    one after the other. ``on_epoch(n)``: called after each epoch with the number of models it
    trained (an overall progress bar; it replaces the plain path's per-model bar). Returns them on
    CPU, eval mode."""
    names = names or [f"model {k}" for k in range(len(seeds))]
    if use_fast_path(recipe.train, device):
        return train_models_fast(recipe, data, members, seeds, device, names, logger, on_epoch)
    return [train_model(recipe, data, m, s, device, n, logger, on_epoch) for m, s, n in zip(members, seeds, names)]


class _EpochTick(L.Callback):
    def __init__(self, on_epoch):
        self.on_epoch = on_epoch

    def on_train_epoch_end(self, trainer, pl_module):
        self.on_epoch(1)


def train_model(recipe: Recipe, data: ImageData, member_idx: torch.Tensor, seed: int, device: str,
                name: str = "model", logger=None, on_epoch=None, callbacks=None) -> nn.Module:
    """Train a fresh ``recipe.model`` on ``data.x_train[member_idx]`` through a Lightning Trainer (the
    plain path); returns it on CPU, eval mode. ``callbacks``: extra Trainer callbacks (the benchmark's timer)."""
    tc = recipe.train
    L.seed_everything(seed, workers=True, verbose=False)
    model = build_model(recipe.model, data.num_classes, data.in_channels)
    channels_last = resolve_channels_last(tc, device)
    to_memory_format(model, channels_last)
    x, y = data.x_train[member_idx], data.y_train[member_idx]
    g = torch.Generator().manual_seed(seed)
    loader = DataLoader(TensorDataset(x, y), batch_size=int(tc.batch_size), shuffle=True, generator=g,
                        num_workers=recipe.num_workers, drop_last=len(x) > int(tc.batch_size))
    module = Classifier(model, data.mean, data.std, float(tc.lr), float(tc.momentum),
                        float(tc.weight_decay), int(tc.epochs), len(loader),
                        recipe.pad, recipe.flip, tc.get("schedule", "cosine"),
                        name=name, num_classes=data.num_classes,
                        prefix=curve_prefix(name, recipe.pool_size),  # pool/mNN/train_loss|train_acc
                        channels_last=channels_last)
    accel = "gpu" if str(device).startswith("cuda") else "cpu"
    with _process_flags_kept():
        _fit(recipe, module, loader, accel, device, tc, logger, on_epoch, callbacks)
    # bf16-mixed keeps fp32 weights; channels_last is undone so later stages see the usual layout
    return to_memory_format(model, False).cpu().eval()


def _fit(recipe, module, loader, accel, device, tc, logger, on_epoch, callbacks) -> None:
    with _quiet_lightning():  # the Trainer's device banner
        trainer = L.Trainer(max_epochs=int(tc.epochs), accelerator=accel, devices=1,
                            precision=resolve_precision(tc, device), logger=logger if logger else False,
                            enable_checkpointing=False, enable_model_summary=False,
                            enable_progress_bar=recipe.progress and on_epoch is None,
                            callbacks=(list(callbacks or []) + ([_EpochTick(on_epoch)] if on_epoch else [])) or None,
                            deterministic=True if accel == "cpu" else "warn",  # some CUDA backward kernels have no deterministic version
                            log_every_n_steps=max(1, min(50, len(loader))))
    with warnings.catch_warnings(), _quiet_lightning():
        warnings.filterwarnings("ignore", message=".*(does not have many workers|LeafSpec|GPU available).*")
        try:
            trainer.fit(module, loader)
        except SystemExit:
            # Lightning turns Ctrl-C into a graceful stop and sys.exit(1), ignoring SIGINT from then on:
            # give the job the interrupt back
            if not trainer.interrupted:
                raise
            signal.signal(signal.SIGINT, signal.default_int_handler)
            raise KeyboardInterrupt from None


@torch.no_grad()
def evaluate_accuracy(model: nn.Module, x_uint8: torch.Tensor, y: torch.Tensor, mean, std, device: str = "cpu",
                      batch_size: int = 1024) -> float:
    model = model.to(device).eval()
    correct = 0
    for i in range(0, len(y), batch_size):
        xb = normalize(x_uint8[i:i + batch_size].to(device), mean, std)
        correct += (model(xb).argmax(1).cpu() == y[i:i + batch_size]).sum().item()
    model.cpu()
    return correct / max(1, len(y))
