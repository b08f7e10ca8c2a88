"""Datasets as in-memory tensors: uint8 images [N,C,H,W] + int64 labels, loaded once per process.

Augmentation and normalisation run later, in batches, on whatever device trains (see
``src/data/augment.py``); nothing here touches PIL in a hot loop.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

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


def _cifar_error(cls, name: str, data_dir: str, download: bool, e: Exception) -> str:
    """One line saying why torchvision could not give the dataset: folder absent, or present with
    files that fail the release's MD5 (truncated copy, another version, a re-pickled file)."""
    from torchvision.datasets.utils import check_integrity

    folder = Path(data_dir) / cls.base_folder
    archive = f"https://www.cs.toronto.edu/~kriz/{cls.filename}"
    if folder.is_dir():
        bad = [f for f, md5 in cls.train_list + cls.test_list + [(cls.meta["filename"], cls.meta["md5"])]
               if not check_integrity(str(folder / f), md5)]
        if bad:
            what = ", ".join(f if (folder / f).exists() else f"{f} (missing)" for f in bad)
            retry = "" if download else "set dataset.download=true to fetch it again, or "
            return (f"dataset={name}: {folder} exists but its files are not the original release "
                    f"(checksum failed: {what}); delete the folder and {retry}unpack {archive} "
                    f"into paths.data_dir={data_dir}")
    return (f"dataset={name}: could not load or download it ({type(e).__name__}); download the python "
            f"version from {archive} and unpack it so that {folder} exists (paths.data_dir={data_dir})")


def load_cifar(name: str, data_dir: str, download: bool) -> ImageData:
    from torchvision.datasets import CIFAR10, CIFAR100

    import socket

    cls = CIFAR10 if name == "cifar10" else CIFAR100
    old_timeout = socket.getdefaulttimeout()
    socket.setdefaulttimeout(60)  # a network that drops packets fails the download instead of hanging
    try:
        tr = cls(data_dir, train=True, download=download)
        te = cls(data_dir, train=False, download=download)
    except Exception as e:  # no network, or missing/altered files with download: false
        raise DataError(_cifar_error(cls, name, data_dir, download, e)) from None
    finally:
        socket.setdefaulttimeout(old_timeout)

    def conv(ds):
        return torch.from_numpy(np.asarray(ds.data)).permute(0, 3, 1, 2).contiguous(), torch.tensor(ds.targets)

    xtr, ytr = conv(tr)
    xte, yte = conv(te)
    mean, std = CIFAR_STATS[name]
    return _finish(name, xtr, ytr, xte, yte, 100 if name == "cifar100" else 10, mean, std)


def _decode_files(paths: list[str], size: int | None) -> list:
    """Decode image files to uint8 [H,W,3] arrays (resized to size×size when ``size`` is set).
    Runs in worker processes: an unreadable file comes back as ``(path, error)`` instead of raising,
    so the parent names it in one line."""
    from PIL import Image

    out = []
    for p in paths:
        try:
            with Image.open(p) as im:
                im = im.convert("RGB")
                if size is not None and im.size != (size, size):
                    im = im.resize((size, size), Image.BILINEAR)
                out.append(np.asarray(im, dtype=np.uint8))
        except Exception as e:  # truncated, not an image, permission denied, ...
            out.append((str(p), f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}".rstrip(": ")))
    return out


MAX_DECODE_WORKERS = 8  # each worker imports torch (~0.3 GB); 8 decode 60k small JPEGs in seconds


def _workers() -> int:
    try:
        n = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        n = os.cpu_count() or 1
    return max(1, min(n, MAX_DECODE_WORKERS))


DECODER = "pil-rgb-bilinear-1"  # part of the decoded-cache key: change it when decoding changes
PARALLEL_MIN_FILES = 2000   # below this, worker start-up (~1-2 s) costs more than it saves
CHUNK = 500


def _read_images(paths: list[Path], size: int | None, what: str = "images", progress: bool = False,
                 key: str = "dataset.root") -> torch.Tensor:
    """uint8 [N,3,H,W] of ``paths``, decoded in parallel worker processes for large lists.

    Raises ``DataError`` naming the first unreadable file, or two files of different sizes when
    ``size`` is None (all images must then share one size)."""
    from tqdm.auto import tqdm

    strs = [str(p) for p in paths]
    chunks = [strs[i:i + CHUNK] for i in range(0, len(strs), CHUNK)]
    results: list = [None] * len(chunks)
    bar = tqdm(total=len(strs), desc=f"decoding {what}", unit="img", disable=not progress, leave=False,
               dynamic_ncols=True)
    n_workers = min(_workers(), len(chunks))
    try:
        if len(strs) < PARALLEL_MIN_FILES or n_workers < 2:
            for i, c in enumerate(chunks):
                results[i] = _decode_files(c, size)
                bar.update(len(c))
        else:
            import multiprocessing as mp
            from concurrent.futures import ProcessPoolExecutor, as_completed

            # spawn: the parent may hold threads (torch, loggers) that fork would copy mid-lock
            with ProcessPoolExecutor(n_workers, mp_context=mp.get_context("spawn")) as ex:
                futs = {ex.submit(_decode_files, c, size): i for i, c in enumerate(chunks)}
                for f in as_completed(futs):
                    results[futs[f]] = f.result()
                    bar.update(len(chunks[futs[f]]))
    finally:
        bar.close()
    arrays = [a for r in results for a in r]
    shape0 = None
    for p, a in zip(strs, arrays):
        if isinstance(a, tuple):
            raise DataError(f"{key}: cannot read image {a[0]} ({a[1]}); remove or replace the file")
        if shape0 is None:
            shape0, p0 = a.shape, p
        elif a.shape != shape0:
            raise DataError(f"{key}: images have different sizes ({shape0[1]}x{shape0[0]} in {p0}, "
                            f"{a.shape[1]}x{a.shape[0]} in {p}); set dataset.image_size=N to resize all to NxN")
    if not arrays:
        return torch.zeros(0, 3, size or 0, size or 0, dtype=torch.uint8)
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()


def _subset(n: int, limit, seed: int) -> np.ndarray:
    """Indices of a seeded random subset of size ``limit`` (all, in order, when no limit): files are
    sorted by class, so a prefix would hold only the first classes."""
    if not limit or int(limit) >= n:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, size=int(limit), replace=False))


def _list_split(root_p: Path, split: str, classes: list[str], key: str) -> tuple[list[Path], list[int], list]:
    """Image files of one split in (class, name) order, their labels, and (relative name, size,
    mtime) per file from the same directory scan (for the fingerprint)."""
    files, labels, stats = [], [], []
    for i, c in enumerate(classes):
        d = root_p / split / c
        if not d.is_dir():
            raise DataError(f"{key}: class folder {d} is missing (train/ has it; {split}/ must hold the same classes)")
        with os.scandir(d) as it:
            entries = sorted((e for e in it if os.path.splitext(e.name)[1].lower() in IMAGE_EXT
                              and e.is_file()), key=lambda e: e.name)
        if not entries:
            raise DataError(f"{key}: class folder {d} holds no images ({', '.join(IMAGE_EXT)}); "
                            f"add images or remove the folder")
        for e in entries:
            st = e.stat()
            files.append(d / e.name)
            stats.append((f"{split}/{c}/{e.name}", st.st_size, st.st_mtime_ns))
        labels += [i] * len(entries)
    return files, labels, stats


def folder_fingerprint(stats: list) -> str:
    """Cheap content key of an image folder: relative names, byte sizes and modification times
    (one ``stat`` per file, no reads). Re-unpacking the same archive keeps it (tar restores mtimes);
    editing, adding or removing any image changes it."""
    import hashlib

    h = hashlib.sha256()
    for rel, size, mtime in stats:
        h.update(f"{rel}\0{size}\0{mtime}\n".encode())
    return h.hexdigest()[:32]


def load_imagefolder(root: str | None, image_size: int | None = None, name: str = "imagefolder",
                     max_train=None, max_test=None, seed: int = 0, cache_dir: str | None = None,
                     progress: bool = False) -> ImageData:
    """``root/train/<class>/*`` and ``root/test/<class>/*``; classes sorted by folder name.

    Every image of both splits is decoded once (in parallel) and, with ``cache_dir``, stored there as
    uint8 tensors keyed by the folder's fingerprint and ``image_size``, so the next job loads them in
    about a second. ``max_train``/``max_test`` then take a seeded random subset of the files."""
    key = "dataset.root"
    if not root or not (Path(root) / "train").is_dir() or not (Path(root) / "test").is_dir():
        raise DataError(f"dataset.root={root!r}: need a folder holding train/<class>/* and test/<class>/* "
                        f"(set dataset.root=DIR)")
    root_p = Path(root)
    classes = sorted(d.name for d in (root_p / "train").iterdir() if d.is_dir())
    if not classes:
        raise DataError(f"dataset.root={root!r}: no class folders under {root_p / 'train'}")
    listing = {s: _list_split(root_p, s, classes, f"{key}={root}") for s in ("train", "test")}

    def decode():
        import logging
        import time

        t0 = time.perf_counter()
        files = listing["train"][0] + listing["test"][0]  # one worker pool for both splits
        x = _read_images(files, image_size, root_p.name, progress, f"{key}={root}")
        n_tr = len(listing["train"][0])
        logging.getLogger(__name__).info("imagefolder: decoded %d images in %.1f s", len(files),
                                         time.perf_counter() - t0)
        return {"classes": classes, "x_train": x[:n_tr].clone(), "x_test": x[n_tr:].clone(),
                "y_train": torch.tensor(listing["train"][1]), "y_test": torch.tensor(listing["test"][1])}

    if cache_dir:
        from src.cache import ArtifactStore

        fp = folder_fingerprint(listing["train"][2] + listing["test"][2])
        art, _ = ArtifactStore(cache_dir).get_or_create(
            "decoded", {"kind": "imagefolder", "fingerprint": fp, "image_size": image_size,
                        "decoder": DECODER}, decode)
    else:
        art = decode()
    tr = torch.from_numpy(_subset(len(art["y_train"]), max_train, seed))
    te = torch.from_numpy(_subset(len(art["y_test"]), max_test, seed))
    return _finish(name, art["x_train"][tr], art["y_train"][tr], art["x_test"][te], art["y_test"][te], len(classes))


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


# name → loader(dataset config node, paths.data_dir) -> ImageData: one line per dataset
DATASETS = {
    "digits": lambda c, d: load_digits(int(c.get("n_test", 297)), int(c.get("split_seed", 0))),
    "synthetic": lambda c, d: make_synthetic(int(c.n_train), int(c.n_test), int(c.num_classes), int(c.image_size),
                                             int(c.get("channels", 1)), float(c.get("noise", 60.0)),
                                             int(c.get("split_seed", 0))),
    "cifar10": lambda c, d: load_cifar("cifar10", d, bool(c.get("download", True))),
    "cifar100": lambda c, d: load_cifar("cifar100", d, bool(c.get("download", True))),
    "tinyimagenet": lambda c, d: load_tinyimagenet(d, bool(c.get("download", False))),
    "imagefolder": lambda c, d: load_imagefolder(c.get("root"), c.get("image_size"), max_train=c.get("max_train"),
                                                 max_test=c.get("max_test"), seed=int(c.get("split_seed", 0)),
                                                 cache_dir=c.get("decode_cache"),
                                                 progress=bool(c.get("progress", False))),
}


def load_dataset(cfg, data_dir: str) -> ImageData:
    """Build the dataset named by ``cfg.name`` (the ``dataset`` config group)."""
    name = cfg.name
    if name not in DATASETS:
        raise DataError(f"dataset.name={name!r} is not known; allowed: {', '.join(DATASETS)}")
    data = DATASETS[name](cfg, data_dir)
    # optional seeded random subsets (any dataset; imagefolder already read only its subset)
    tr = _subset(len(data.y_train), cfg.get("max_train"), int(cfg.get("split_seed", 0)))
    te = _subset(len(data.y_test), cfg.get("max_test"), int(cfg.get("split_seed", 0)))
    data.x_train, data.y_train = data.x_train[tr], data.y_train[tr]
    data.x_test, data.y_test = data.x_test[te], data.y_test[te]
    size = cfg.get("image_size") if name in ("cifar10", "cifar100") else None
    if size and int(size) != data.image_size:
        data.x_train, data.x_test = resize(data.x_train, int(size)), resize(data.x_test, int(size))
    return data


def resize(x: torch.Tensor, size: int) -> torch.Tensor:
    """uint8 [N,C,H,W] → uint8 [N,C,size,size], bilinear with antialiasing (torch's antialias mode
    follows PIL's BILINEAR filter, which the image-folder loader uses), in chunks to bound memory."""
    import torch.nn.functional as F

    out = [F.interpolate(x[i:i + 4096].float(), size=(size, size), mode="bilinear", antialias=True,
                         align_corners=False).round_().clamp_(0, 255).to(torch.uint8) for i in range(0, len(x), 4096)]
    return torch.cat(out) if out else x.new_zeros(0, x.shape[1], size, size)


def data_digest(data: ImageData) -> str:
    """Content hash of the tensors: the cache key depends on what was loaded, not on where from."""
    import hashlib

    h = hashlib.sha256()
    for t in (data.x_train, data.y_train, data.x_test, data.y_test):
        h.update(str(tuple(t.shape)).encode())
        h.update(t.contiguous().numpy().tobytes())
    h.update(repr((data.mean, data.std, data.num_classes)).encode())
    return h.hexdigest()[:16]
