"""Datasets as in-memory tensors: uint8 images [N,C,H,W] + int64 labels, loaded once per process.

Augmentation and normalisation run later, in batches, on whatever device trains (see
``src/data/augment.py``); nothing here touches PIL in a hot loop.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

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


# ---------------------------------------------------------------------------------------------------
# Image datasets read from files: a lister per dataset says which files hold which labels; one shared
# core decodes them (in parallel), caches the tensors keyed by those files, and draws seeded subsets.


@dataclass
class Source:
    """A dataset on disk before decoding. ``stats`` (relative name, byte size, mtime of every file read)
    keys the decoded-tensor cache; ``items()`` gives what to decode, either a list of image files or a
    uint8 array [N,H,W,3] (data already stored as pixels, e.g. the CIFAR pickles), plus labels."""
    name: str
    where: str                      # starts every error line: the key/path the user has to fix
    stats: list
    items: Callable[[], dict]       # {"classes", "train": (files|array, labels), "test": (...)}
    mean: tuple | None = None       # fixed normalisation (None: computed from the training images)
    std: tuple | None = None
    root: Path | None = None        # image files: the folder their relative names start from


def _stat(path: Path, root: Path, where: str, why: str = "") -> tuple[str, int, int]:
    try:
        st = path.stat()
    except OSError as e:
        raise DataError(f"{where}: cannot read {path}{why} ({e.strerror or type(e).__name__})") from None
    return str(path.relative_to(root)), st.st_size, st.st_mtime_ns


def _scan_images(d: Path, root: Path, where: str) -> tuple[list[Path], list]:
    """Image files of one class folder in name order and their stats (one directory scan, no reads)."""
    if not d.is_dir():
        raise DataError(f"{where}: class folder {d} is missing")
    with os.scandir(d) as it:
        entries = sorted((e for e in it if os.path.splitext(e.name)[1].lower() in IMAGE_EXT and e.is_file()),
                         key=lambda e: e.name)
    if not entries:
        raise DataError(f"{where}: class folder {d} holds no images ({', '.join(IMAGE_EXT)}); "
                        f"add images or remove the folder")
    stats = []
    for e in entries:
        st = e.stat()
        stats.append((str((d / e.name).relative_to(root)), st.st_size, st.st_mtime_ns))
    return [d / e.name for e in entries], stats


def _pixels(x: np.ndarray, size: int | None) -> torch.Tensor:
    """uint8 [N,H,W,3] already decoded (the CIFAR pickles) → [N,3,H,W], resized when ``size`` is set."""
    t = torch.from_numpy(x).permute(0, 3, 1, 2).contiguous()
    return resize(t, size) if size and size != t.shape[-1] else t


def load_source(src: Source, image_size: int | None = None, cache_dir: str | None = None,
                progress: bool = False) -> dict:
    """Decoded tensors of ``src`` ({"classes", "x_train", "y_train", "x_test", "y_test"}, uint8 [N,3,H,W]),
    from ``cache_dir`` when the same files were decoded at the same ``image_size`` before. Any error is
    raised before anything is stored, so a bad file never leaves a cached artifact behind."""
    size = int(image_size) if image_size else None

    def decode():
        import logging
        import time

        t0 = time.perf_counter()
        it = src.items()
        tr, te = it["train"], it["test"]
        if isinstance(tr[0], np.ndarray):
            x_tr, x_te = _pixels(tr[0], size), _pixels(te[0], size)
        else:  # one worker pool for both splits
            x = _read_images(list(tr[0]) + list(te[0]), size, src.name, progress, src.where)
            x_tr, x_te = x[:len(tr[0])].clone(), x[len(tr[0]):].clone()
        logging.getLogger(__name__).info("%s: decoded %d images in %.1f s", src.name, len(x_tr) + len(x_te),
                                         time.perf_counter() - t0)
        return {"classes": list(it["classes"]), "x_train": x_tr, "x_test": x_te,
                "y_train": torch.as_tensor(np.asarray(tr[1]), dtype=torch.int64),
                "y_test": torch.as_tensor(np.asarray(te[1]), dtype=torch.int64)}

    if not cache_dir:
        return decode()
    from src.cache import ArtifactStore

    art, _ = ArtifactStore(cache_dir).get_or_create(
        "decoded", {"kind": src.name, "fingerprint": folder_fingerprint(src.stats), "image_size": size,
                    "decoder": DECODER}, decode)
    return art


def folder_fingerprint(stats: list) -> str:
    """Cheap content key of a dataset's files: relative names, byte sizes and modification times
    (one ``stat`` per file, no reads). Re-unpacking the same archive keeps it (tar restores mtimes);
    editing, adding or removing any file changes it."""
    import hashlib

    h = hashlib.sha256()
    for rel, size, mtime in stats:
        h.update(f"{rel}\0{size}\0{mtime}\n".encode())
    return h.hexdigest()[:32]


def _download(url: str, data_dir: str, md5: str, name: str) -> None:
    """Fetch and unpack a release archive into ``data_dir``; one line saying why when that fails."""
    import socket
    import urllib.error

    from torchvision.datasets.utils import download_url, extract_archive

    archive = Path(data_dir) / url.rsplit("/", 1)[-1]
    old_timeout = socket.getdefaulttimeout()
    socket.setdefaulttimeout(60)  # a network that drops packets fails the download instead of hanging
    try:
        download_url(url, data_dir, md5=md5)
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", None) or e
        raise DataError(f"dataset={name}: download of {url} failed: no network or the server is unreachable "
                        f"({reason}); download it elsewhere and unpack it into paths.data_dir={data_dir}") from None
    except RuntimeError:  # torchvision: the downloaded bytes fail the MD5
        archive.unlink(missing_ok=True)
        raise DataError(f"dataset={name}: download of {url} failed: checksum mismatch (expected MD5 {md5}; "
                        f"a truncated or altered file, removed); try again or download it elsewhere and "
                        f"unpack it into paths.data_dir={data_dir}") from None
    except Exception as e:
        raise DataError(f"dataset={name}: download of {url} failed ({type(e).__name__}: {e}); download it "
                        f"elsewhere and unpack it into paths.data_dir={data_dir}") from None
    finally:
        socket.setdefaulttimeout(old_timeout)
    try:
        extract_archive(str(archive), data_dir)
    except Exception as e:
        raise DataError(f"dataset={name}: cannot unpack {archive} ({type(e).__name__}: {e}); "
                        f"delete it and try again") from None


def imagefolder_source(root: str | None, name: str = "imagefolder") -> Source:
    """``root/train/<class>/*`` and ``root/test/<class>/*``; classes sorted by folder name."""
    where = f"dataset.root={root}"
    if not root or not (Path(root) / "train").is_dir() or not (Path(root) / "test").is_dir():
        raise DataError(f"dataset.root={root!r}: need a folder holding train/<class>/* and test/<class>/* "
                        f"(set dataset.root=DIR)")
    root_p = Path(root)
    classes = sorted(d.name for d in (root_p / "train").iterdir() if d.is_dir())
    if not classes:
        raise DataError(f"dataset.root={root!r}: no class folders under {root_p / 'train'}")
    split, stats = {}, []
    for s in ("train", "test"):
        files, labels = [], []
        for i, c in enumerate(classes):
            if s == "test" and not (root_p / s / c).is_dir():
                raise DataError(f"{where}: class folder {root_p / s / c} is missing "
                                f"(train/ has it; test/ must hold the same classes)")
            f, st = _scan_images(root_p / s / c, root_p, where)
            files += f
            stats += st
            labels += [i] * len(f)
        split[s] = (files, labels)
    return Source(name, where, stats, lambda: {"classes": classes, **split}, root=root_p)


IMAGENET_STATS = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))  # the study normalises TinyImageNet so
TINYIMAGENET_URL = "http://cs231n.stanford.edu/tiny-imagenet-200.zip"
TINYIMAGENET_MD5 = "90528d7ca1a48142e341f4ef8d21d0de"


def tinyimagenet_source(data_dir: str, download: bool = False) -> Source:
    """The ``tiny-imagenet-200`` release: ``wnids.txt`` (the classes, sorted for labels),
    ``train/<wnid>/images/*.JPEG``, ``val/images/*.JPEG`` labelled by ``val/val_annotations.txt``
    (tab-separated: file, wnid, box). The labelled val split is the test set (the release's test/
    has no labels)."""
    root = Path(data_dir) / "tiny-imagenet-200"
    ann = root / "val" / "val_annotations.txt"
    if not root.is_dir() and download:
        _download(TINYIMAGENET_URL, data_dir, TINYIMAGENET_MD5, "tinyimagenet")
    if not (root / "train").is_dir() or not ann.is_file():
        raise DataError(f"dataset=tinyimagenet: {root} not found (need train/ and val/val_annotations.txt); "
                        f"download {TINYIMAGENET_URL} and unzip it into paths.data_dir={data_dir}, "
                        f"or set dataset.download=true")
    where = f"dataset=tinyimagenet ({root})"
    stats = []
    if (root / "wnids.txt").is_file():
        stats.append(_stat(root / "wnids.txt", root, where))
        wnids = sorted({w.strip() for w in (root / "wnids.txt").read_text().split() if w.strip()})
    else:  # a hand-made tree without the class list: its train folders are the classes
        wnids = sorted(d.name for d in (root / "train").iterdir() if d.is_dir())
    if not wnids:
        raise DataError(f"{where}: no classes (wnids.txt is empty and train/ has no class folders)")
    index = {w: i for i, w in enumerate(wnids)}
    tr_files, tr_labels = [], []
    for w in wnids:
        f, st = _scan_images(root / "train" / w / "images", root, where)
        tr_files += f
        stats += st
        tr_labels += [index[w]] * len(f)
    stats.append(_stat(ann, root, where))
    te_files, te_labels = [], []
    for n, line in enumerate(ann.read_text().splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split("\t")
        if len(parts) < 2:
            raise DataError(f"{where}: {ann} line {n} is not 'file<TAB>wnid<TAB>box': {line[:60]!r}")
        if parts[1] not in index:
            raise DataError(f"{where}: {ann} line {n} names class {parts[1]!r}, which is not among the "
                            f"{len(wnids)} classes of wnids.txt/train/")
        f = root / "val" / "images" / parts[0]
        stats.append(_stat(f, root, where, f" (listed in {ann.name} line {n})"))
        te_files.append(f)
        te_labels.append(index[parts[1]])
    if not te_files:
        raise DataError(f"{where}: {ann} lists no images")
    split = {"classes": wnids, "train": (tr_files, tr_labels), "test": (te_files, te_labels)}
    return Source("tinyimagenet", where, stats, lambda: split, *IMAGENET_STATS, root=root)


CIFAR_STATS = {
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
}


def _cifar_class(name: str):
    from torchvision.datasets import CIFAR10, CIFAR100

    return CIFAR10 if name == "cifar10" else CIFAR100


def _cifar_error(cls, name: str, data_dir: str, download: bool, unreadable: str | None = None) -> str:
    """One line saying why the release could not be read: folder absent, present with files that fail
    the release's MD5 (truncated copy, another version, a re-pickled file), or a file that does not
    parse (``unreadable``: which and why)."""
    from torchvision.datasets.utils import check_integrity

    folder = Path(data_dir) / cls.base_folder
    archive = f"https://www.cs.toronto.edu/~kriz/{cls.filename}"
    fetch = f"unpack {archive} into paths.data_dir={data_dir}"
    if folder.is_dir():
        bad = [f for f, md5 in cls.train_list + cls.test_list + [(cls.meta["filename"], cls.meta["md5"])]
               if not check_integrity(str(folder / f), md5)]
        if bad:
            what = ", ".join(f if (folder / f).exists() else f"{f} (missing)" for f in bad)
            retry = "" if download else "set dataset.download=true to fetch it again, or "
            why = f"; {unreadable}" if unreadable else ""
            return (f"dataset={name}: {folder} exists but its files are not the original release "
                    f"(checksum failed: {what}{why}); delete the folder and {retry}{fetch}")
    if unreadable:
        return f"dataset={name}: cannot read {folder}/{unreadable}; delete the folder and {fetch}"
    return (f"dataset={name}: {folder} not found or incomplete; download the python version from "
            f"{archive} and unpack it so that {folder} exists (paths.data_dir={data_dir}), "
            f"or set dataset.download=true")


def _unpickle(path: Path) -> dict:
    import pickle

    with open(path, "rb") as f:
        d = pickle.load(f, encoding="latin1")
    if not isinstance(d, dict):
        raise ValueError(f"{path.name} holds a {type(d).__name__}, not a dict")
    return {(k.decode() if isinstance(k, bytes) else k): v for k, v in d.items()}  # py2 str / py3 bytes keys


def cifar_source(name: str, data_dir: str, download: bool = True) -> Source:
    """The python release of CIFAR-10/100 (``cifar-10-batches-py/``, ``cifar-100-python/``): pickled
    dicts with ``data`` uint8 [N,3072] (RGB planes of 32×32) and ``labels``/``fine_labels``. The pickle
    files are the source: their stats key the decoded cache."""
    cls = _cifar_class(name)
    folder = Path(data_dir) / cls.base_folder
    names = [f for f, _ in cls.train_list + cls.test_list] + [cls.meta["filename"]]
    if download and not all((folder / f).is_file() for f in names):
        _download(cls.url, data_dir, cls.tgz_md5, name)
    if not all((folder / f).is_file() for f in names):
        raise DataError(_cifar_error(cls, name, data_dir, download))
    where = f"dataset={name} ({folder})"
    stats = [_stat(folder / f, folder, where) for f in names]
    n_classes = 10 if name == "cifar10" else 100

    def read(f: str, check=None) -> dict:
        try:
            d = _unpickle(folder / f)
            if check:
                check(d)
            return d
        except Exception as e:  # not a pickle, truncated, other keys or shapes
            msg = f"{f} ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}".rstrip(": ") + ")"
            raise DataError(_cifar_error(cls, name, data_dir, download, msg)) from None

    def check(d: dict) -> None:
        x, y = np.asarray(d["data"]), np.asarray(d["labels"] if "labels" in d else d["fine_labels"])
        if x.dtype != np.uint8 or x.ndim != 2 or x.shape[1] != 3072 or y.shape != (len(x),):
            raise ValueError(f"data {x.dtype}{list(x.shape)} / labels {list(y.shape)}; expected uint8[N,3072] / [N]")
        if len(y) and (y.min() < 0 or y.max() >= n_classes):
            raise ValueError(f"labels outside 0..{n_classes - 1}")

    def part(files):
        ds = [read(f, check) for f in files]
        x = np.concatenate([np.asarray(d["data"]).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1) for d in ds])
        y = np.concatenate([np.asarray(d["labels"] if "labels" in d else d["fine_labels"], dtype=np.int64)
                            for d in ds])
        return np.ascontiguousarray(x), y

    def items():
        classes = list(read(cls.meta["filename"]).get(cls.meta["key"]) or range(n_classes))
        return {"classes": classes, "train": part([f for f, _ in cls.train_list]),
                "test": part([f for f, _ in cls.test_list])}

    return Source(name, where, stats, items, *CIFAR_STATS[name])


def _decode_files(paths: list[str], size: int | None) -> list:
    """Decode image files to uint8 [H,W,3] arrays (resized to size×size when ``size`` is set; grayscale
    and palette images become RGB). Runs in worker processes: an unreadable file comes back as
    ``(path, error)`` instead of raising, so the parent names it in one line."""
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
            from concurrent.futures import as_completed

            from src.workers import spawn_pool

            with spawn_pool(n_workers) as ex:
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


def load_imagefolder(root: str | None, image_size: int | None = None, name: str = "imagefolder",
                     max_train=None, max_test=None, seed: int = 0, cache_dir: str | None = None,
                     progress: bool = False) -> ImageData:
    """An image folder as tensors (``imagefolder_source`` + the shared decode/cache/subset core)."""
    cfg = {"max_train": max_train, "max_test": max_test, "split_seed": seed}
    return _from_source(imagefolder_source(root, name), cfg, image_size, cache_dir, progress)


def _from_source(src: Source, cfg, image_size, cache_dir, progress) -> ImageData:
    """Decode (or load from the cache) all of ``src``, then take the seeded ``max_train``/``max_test``
    subsets: the cache holds whole splits, so another subset size or seed decodes nothing."""
    art = load_source(src, image_size, cache_dir, progress)
    seed = int(cfg.get("split_seed", 0) or 0)
    tr = torch.from_numpy(_subset(len(art["y_train"]), cfg.get("max_train"), seed))
    te = torch.from_numpy(_subset(len(art["y_test"]), cfg.get("max_test"), seed))
    return _finish(src.name, art["x_train"][tr], art["y_train"][tr], art["x_test"][te], art["y_test"][te],
                   len(art["classes"]), src.mean, src.std)


# name → Source(dataset config node, paths.data_dir): one line per dataset read from files
SOURCES = {
    "imagefolder": lambda c, d: imagefolder_source(c.get("root")),
    "tinyimagenet": lambda c, d: tinyimagenet_source(d, bool(c.get("download", False))),
    "cifar10": lambda c, d: cifar_source("cifar10", d, bool(c.get("download", True))),
    "cifar100": lambda c, d: cifar_source("cifar100", d, bool(c.get("download", True))),
}
# name → ImageData(dataset config node, paths.data_dir): datasets generated in memory
GENERATED = {
    "digits": lambda c, d: load_digits(int(c.get("n_test", 297)), int(c.get("split_seed", 0))),
    "synthetic": lambda c, d: make_synthetic(int(c.n_train), int(c.n_test), int(c.num_classes), int(c.image_size),
                                             int(c.get("channels", 1)), float(c.get("noise", 60.0)),
                                             int(c.get("split_seed", 0))),
}
DATASETS = {**GENERATED, **SOURCES}


def load_dataset(cfg, data_dir: str) -> ImageData:
    """Build the dataset named by ``cfg.name`` (the ``dataset`` config group)."""
    name = cfg.name
    if name not in DATASETS:
        raise DataError(f"dataset.name={name!r} is not known; allowed: {', '.join(DATASETS)}")
    if name in SOURCES:
        return _from_source(SOURCES[name](cfg, data_dir), cfg, cfg.get("image_size"), cfg.get("decode_cache"),
                            bool(cfg.get("progress", False)))
    data = GENERATED[name](cfg, data_dir)
    # optional seeded random subsets of the generated sets too
    tr = _subset(len(data.y_train), cfg.get("max_train"), int(cfg.get("split_seed", 0)))
    te = _subset(len(data.y_test), cfg.get("max_test"), int(cfg.get("split_seed", 0)))
    data.x_train, data.y_train = data.x_train[tr], data.y_train[tr]
    data.x_test, data.y_test = data.x_test[te], data.y_test[te]
    return data


def train_files(cfg, data_dir: str, subset: bool = True) -> list[str] | None:
    """Relative names (POSIX, from the dataset's root folder) of the training examples, in the order of
    ``load_dataset(cfg, data_dir).x_train``: the file-reading datasets' candidate order (class folders
    sorted by name, files sorted by name within each, then the seeded ``max_train`` subset kept in that
    order; ``subset=False``: every training image, before that subset). None for datasets not read
    from image files (CIFAR's pickles, digits, synthetic)."""
    if cfg.name not in SOURCES:
        return None
    src = SOURCES[cfg.name](cfg, data_dir)
    if src.root is None:
        return None
    files = src.items()["train"][0]
    keep = (_subset(len(files), cfg.get("max_train"), int(cfg.get("split_seed", 0) or 0)) if subset
            else range(len(files)))
    return [Path(files[i]).relative_to(src.root).as_posix() for i in keep]


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
