"""Datasets as in-memory tensors: uint8 images [N,C,H,W] + int64 labels, loaded once per process.

Augmentation and normalisation run later, in batches, on whatever device trains (see
``src/data/augment.py``); nothing here touches PIL in a hot loop.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

DATASETS = ("digits", "synthetic", "cifar10", "cifar100", "tinyimagenet", "imagefolder")
IMAGE_EXT = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


class DataError(RuntimeError):
    """Data missing or malformed; the message says what to download and where to put it."""


@dataclass
class ImageData:
    name: str
    x_train: torch.Tensor  # uint8 [N,C,H,W]
    y_train: torch.Tensor  # int64 [N]
    x_test: torch.Tensor
    y_test: torch.Tensor
    mean: tuple[float, ...]
    std: tuple[float, ...]
    num_classes: int

    @property
    def in_channels(self) -> int:
        return int(self.x_train.shape[1])

    @property
    def image_size(self) -> int:
        return int(self.x_train.shape[-1])


def _channel_stats(x: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    xf = x.float() / 255.0
    return tuple(xf.mean(dim=(0, 2, 3)).tolist()), tuple(xf.std(dim=(0, 2, 3)).clamp_min(1e-3).tolist())


def _finish(name, xtr, ytr, xte, yte, num_classes, mean=None, std=None) -> ImageData:
    if mean is None or std is None:
        mean, std = _channel_stats(xtr)
    return ImageData(name, xtr.contiguous(), ytr.long(), xte.contiguous(), yte.long(),
                     tuple(float(m) for m in mean), tuple(float(s) for s in std), int(num_classes))


def load_digits(n_test: int = 297, seed: int = 0) -> ImageData:
    """scikit-learn's 8×8 digits (1797 images, ships with the package): the offline default."""
    from sklearn.datasets import load_digits as sk_digits

    d = sk_digits()
    x = torch.from_numpy(np.round(d.images * (255.0 / 16.0)).astype(np.uint8)).unsqueeze(1)
    y = torch.from_numpy(d.target.astype(np.int64))
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    te, tr = perm[:n_test], perm[n_test:]
    return _finish("digits", x[tr], y[tr], x[te], y[te], 10)


def make_synthetic(n_train: int = 256, n_test: int = 128, num_classes: int = 4, image_size: int = 8,
                   channels: int = 1, noise: float = 60.0, seed: int = 0) -> ImageData:
    """Class prototypes plus heavy pixel noise: learnable, but with room to memorise (for tests)."""
    g = torch.Generator().manual_seed(seed)
    protos = torch.rand(num_classes, channels, image_size, image_size, generator=g) * 255

    def draw(n):
        y = torch.randint(0, num_classes, (n,), generator=g)
        x = protos[y] + noise * torch.randn(n, channels, image_size, image_size, generator=g)
        return x.clamp(0, 255).round().to(torch.uint8), y

    xtr, ytr = draw(n_train)
    xte, yte = draw(n_test)
    return _finish("synthetic", xtr, ytr, xte, yte, num_classes)


CIFAR_STATS = {
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
}


def load_cifar(name: str, data_dir: str, download: bool) -> ImageData:
    from torchvision.datasets import CIFAR10, CIFAR100

    import socket

    cls = CIFAR10 if name == "cifar10" else CIFAR100
    old_timeout = socket.getdefaulttimeout()
    socket.setdefaulttimeout(60)  # a network that drops packets fails the download instead of hanging
    try:
        tr = cls(data_dir, train=True, download=download)
        te = cls(data_dir, train=False, download=download)
    except Exception as e:  # no network, or missing files with download: false
        folder = "cifar-10-batches-py" if name == "cifar10" else "cifar-100-python"
        raise DataError(
            f"dataset={name}: could not load or download it ({type(e).__name__}); download the python "
            f"version from https://www.cs.toronto.edu/~kriz/ and unpack it so that "
            f"{Path(data_dir) / folder} exists (paths.data_dir={data_dir})") from None
    finally:
        socket.setdefaulttimeout(old_timeout)

    def conv(ds):
        return torch.from_numpy(np.asarray(ds.data)).permute(0, 3, 1, 2).contiguous(), torch.tensor(ds.targets)

    xtr, ytr = conv(tr)
    xte, yte = conv(te)
    mean, std = CIFAR_STATS[name]
    return _finish(name, xtr, ytr, xte, yte, 100 if name == "cifar100" else 10, mean, std)


def _read_images(paths: list[Path], size: int | None) -> torch.Tensor:
    from PIL import Image

    out = []
    for p in paths:
        with Image.open(p) as im:
            im = im.convert("RGB")
            if size is not None and im.size != (size, size):
                im = im.resize((size, size), Image.BILINEAR)
            out.append(np.asarray(im, dtype=np.uint8))
    return torch.from_numpy(np.stack(out)).permute(0, 3, 1, 2).contiguous()


def _subset(n: int, limit, seed: int) -> np.ndarray:
    """Indices of a seeded random subset of size ``limit`` (all, in order, when no limit): files are
    sorted by class, so a prefix would hold only the first classes."""
    if not limit or int(limit) >= n:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, size=int(limit), replace=False))


def load_imagefolder(root: str | None, image_size: int | None = None, name: str = "imagefolder",
                     max_train=None, max_test=None, seed: int = 0) -> ImageData:
    """``root/train/<class>/*`` and ``root/test/<class>/*``; classes sorted by folder name.
    ``max_train``/``max_test`` read only a seeded random subset of the files."""
    if not root or not (Path(root) / "train").is_dir() or not (Path(root) / "test").is_dir():
        raise DataError(f"dataset.root={root!r}: need a folder holding train/<class>/* and test/<class>/* "
                        f"(set dataset.root=DIR)")
    root_p = Path(root)
    classes = sorted(d.name for d in (root_p / "train").iterdir() if d.is_dir())
    index = {c: i for i, c in enumerate(classes)}

    def split(s, limit):
        files, labels = [], []
        for c in classes:
            fs = sorted(f for f in (root_p / s / c).glob("*") if f.suffix.lower() in IMAGE_EXT)
            files += fs
            labels += [index[c]] * len(fs)
        if not files:
            raise DataError(f"dataset.root={root!r}: no images found under {root_p / s}")
        keep = _subset(len(files), limit, seed)
        return _read_images([files[i] for i in keep], image_size), torch.tensor(labels)[torch.from_numpy(keep)]

    xtr, ytr = split("train", max_train)
    xte, yte = split("test", max_test)
    return _finish(name, xtr, ytr, xte, yte, len(classes))


def load_tinyimagenet(data_dir: str, download: bool) -> ImageData:
    """The standard ``tiny-imagenet-200`` folder: train/<wnid>/images/*.JPEG, val/images + val_annotations.txt."""
    root = Path(data_dir) / "tiny-imagenet-200"
    if not root.is_dir() and download:
        try:
            from torchvision.datasets.utils import download_and_extract_archive

            download_and_extract_archive("http://cs231n.stanford.edu/tiny-imagenet-200.zip", data_dir)
        except Exception:
            pass
    if not (root / "train").is_dir() or not (root / "val" / "val_annotations.txt").is_file():
        raise DataError(f"dataset=tinyimagenet: {root} not found; download tiny-imagenet-200.zip "
                        f"(http://cs231n.stanford.edu/tiny-imagenet-200.zip) and unzip it into "
                        f"paths.data_dir={data_dir}")
    wnids = sorted(d.name for d in (root / "train").iterdir() if d.is_dir())
    index = {w: i for i, w in enumerate(wnids)}
    tr_files, tr_labels = [], []
    for w in wnids:
        fs = sorted((root / "train" / w / "images").glob("*.JPEG"))
        tr_files += fs
        tr_labels += [index[w]] * len(fs)
    te_files, te_labels = [], []
    for line in (root / "val" / "val_annotations.txt").read_text().splitlines():
        parts = line.split("\t")
        if len(parts) >= 2 and parts[1] in index:
            te_files.append(root / "val" / "images" / parts[0])
            te_labels.append(index[parts[1]])
    xtr = _read_images(tr_files, 64)
    xte = _read_images(te_files, 64)
    return _finish("tinyimagenet", xtr, torch.tensor(tr_labels), xte, torch.tensor(te_labels), len(wnids))


def load_dataset(cfg, data_dir: str) -> ImageData:
    """Build the dataset named by ``cfg.name`` (the ``dataset`` config group)."""
    name = cfg.name
    if name == "digits":
        data = load_digits(int(cfg.get("n_test", 297)), int(cfg.get("split_seed", 0)))
    elif name == "synthetic":
        data = make_synthetic(int(cfg.n_train), int(cfg.n_test), int(cfg.num_classes), int(cfg.image_size),
                              int(cfg.get("channels", 1)), float(cfg.get("noise", 60.0)), int(cfg.get("split_seed", 0)))
    elif name in ("cifar10", "cifar100"):
        data = load_cifar(name, data_dir, bool(cfg.get("download", True)))
    elif name == "tinyimagenet":
        data = load_tinyimagenet(data_dir, bool(cfg.get("download", False)))
    elif name == "imagefolder":
        data = load_imagefolder(cfg.get("root"), cfg.get("image_size"), max_train=cfg.get("max_train"),
                                max_test=cfg.get("max_test"), seed=int(cfg.get("split_seed", 0)))
    else:
        raise DataError(f"dataset.name={name!r} is not known; allowed: {', '.join(DATASETS)}")
    # optional seeded random subsets (any dataset; imagefolder already read only its subset)
    tr = _subset(len(data.y_train), cfg.get("max_train"), int(cfg.get("split_seed", 0)))
    te = _subset(len(data.y_test), cfg.get("max_test"), int(cfg.get("split_seed", 0)))
    data.x_train, data.y_train = data.x_train[tr], data.y_train[tr]
    data.x_test, data.y_test = data.x_test[te], data.y_test[te]
    return data


def data_digest(data: ImageData) -> str:
    """Content hash of the tensors: the cache key depends on what was loaded, not on where from."""
    import hashlib

    h = hashlib.sha256()
    for t in (data.x_train, data.y_train, data.x_test, data.y_test):
        h.update(str(tuple(t.shape)).encode())
        h.update(t.contiguous().numpy().tobytes())
    h.update(repr((data.mean, data.std, data.num_classes)).encode())
    return h.hexdigest()[:16]
