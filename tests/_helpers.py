"""Models, inputs and quantizer configs shared by the quantizer tests.

``smallcnn``, ``random_images`` and ``quant_cfg`` build the untrained model, the random calibration
images and the method config that the mechanism tests quantize; ``digits_resnet`` trains the
SmallResNet that the tests comparing against round-to-nearest need (a few seconds on a CPU).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

from src.data import load_dataset, normalize
from src.models import SmallResNet, build_model
from src.quant.interface import quant_config


def smallcnn(seed: int = 0):
    """An untrained smallcnn of width 8 for 3×16×16 inputs and 10 classes, in eval mode."""
    torch.manual_seed(seed)
    return build_model(OmegaConf.create({"name": "smallcnn", "width": 8}), 10, 3).eval()


def random_images(n: int = 96, seed: int = 1):
    """``n`` standard-normal 3×16×16 images (the inputs of :func:`smallcnn`)."""
    return torch.randn(n, 3, 16, 16, generator=torch.Generator().manual_seed(seed))


def quant_cfg(name: str, *overrides: str):
    """conf/quant/<name>.yaml with ``quant.key=value`` overrides, without progress bars."""
    q = quant_config(name, overrides)
    q.progress = False
    return q


def digits_resnet(data_dir: str, epochs: int):
    """A SmallResNet (width 16) trained on scikit-learn digits with Adam (lr 3e-3, batch 64) for
    ``epochs`` epochs from seed 0, in eval mode; with the normalised train and test images and the
    dataset: ``(model, x_train, x_test, data)``."""
    data = load_dataset(OmegaConf.create({"name": "digits"}), data_dir)
    x = normalize(data.x_train, data.mean, data.std)
    xte = normalize(data.x_test, data.mean, data.std)
    g = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    model = SmallResNet(10, 1, 16)
    opt = torch.optim.Adam(model.parameters(), 3e-3)
    for _ in range(epochs):
        model.train()
        perm = torch.randperm(len(x), generator=g)
        for i in range(0, len(x), 64):
            idx = perm[i:i + 64]
            loss = F.cross_entropy(model(x[idx]), data.y_train[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return model.eval(), x, xte, data
