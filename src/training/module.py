"""LightningModule that trains one classifier of the pool on in-memory uint8 tensors.

Batches arrive as (uint8 images, labels); crop+flip augmentation and normalisation run batched on
the training device inside ``training_step`` (no per-image PIL transforms). SGD with momentum,
weight decay and a cosine schedule over all steps (the paper's recipe; ``train=paper``).

Training curves: per epoch, the mean cross-entropy and the accuracy on the (augmented) training
batches (torchmetrics ``MulticlassAccuracy``, micro average = the fraction of correct predictions),
under per-model keys ``<prefix>/train_loss``, ``<prefix>/train_acc`` (``pool/m03/...`` for pool
model 3, see :func:`curve_prefix`); the fast path logs the same keys.
"""
from __future__ import annotations

import math
import re

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics.classification import MulticlassAccuracy

from src.data.augment import normalize, random_crop_flip


def curve_prefix(name: str, n_models: int | None = None) -> str:
    """Metric-key prefix of a model's training curves: ``pool/m03`` for "pool model 3" (zero-padded
    to the width of the largest index, at least 2 digits, so keys sort by index), else ``train/<name>``."""
    m = re.fullmatch(r"pool model (\d+)", str(name).strip())
    if m:
        width = max(2, len(str(max(0, int(n_models or 0) - 1))))
        return f"pool/m{int(m.group(1)):0{width}d}"
    return "train/" + (re.sub(r"[^0-9A-Za-z_.-]+", "_", str(name)).strip("_") or "model")


class Classifier(L.LightningModule):
    def __init__(self, model: nn.Module, mean, std, lr: float, momentum: float, weight_decay: float,
                 epochs: int, steps_per_epoch: int, pad: int = 0, flip: bool = False, schedule: str = "cosine",
                 name: str = "model", num_classes: int | None = None, prefix: str | None = None,
                 channels_last: bool = False):
        super().__init__()
        self.channels_last = channels_last
        self.model = model
        self.mean, self.std = tuple(mean), tuple(std)
        self.lr, self.momentum, self.weight_decay = lr, momentum, weight_decay
        self.total_steps = max(1, epochs * steps_per_epoch)
        self.pad, self.flip, self.schedule, self.name = pad, flip, schedule, name
        self.prefix = prefix or curve_prefix(name)
        # a metric only reads the logits: the optimisation (and so the trained model) is unchanged
        # validate_args=False: its checks of the labels would wait for the device at every step
        self.train_acc = (MulticlassAccuracy(num_classes=int(num_classes), average="micro", validate_args=False)
                          if num_classes else None)
        self._finite: torch.Tensor | None = None   # all losses of the epoch finite, kept on the device

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        x = normalize(random_crop_flip(x, self.pad, self.flip), self.mean, self.std)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        logits = self.model(x)
        loss = F.cross_entropy(logits, y)
        # checked once per epoch (on_train_epoch_end): a check here would wait for the device every step
        finite = torch.isfinite(loss.detach())
        self._finite = finite if self._finite is None else self._finite & finite
        self.log(f"{self.prefix}/train_loss", loss, prog_bar=True, on_step=False, on_epoch=True)
        if self.train_acc is not None:
            self.train_acc(logits.detach(), y)
            self.log(f"{self.prefix}/train_acc", self.train_acc, on_step=False, on_epoch=True)
        return loss

    def on_train_epoch_end(self):
        finite, self._finite = self._finite, None
        if finite is not None and not bool(finite):
            raise FloatingPointError(f"training {self.name}: non-finite loss in epoch {self.current_epoch}")

    def configure_optimizers(self):
        opt = torch.optim.SGD(self.model.parameters(), lr=self.lr, momentum=self.momentum,
                              weight_decay=self.weight_decay, nesterov=False)
        if self.schedule != "cosine":
            return opt
        total = self.total_steps
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, total) / total)))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
