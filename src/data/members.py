"""Which candidate examples an external target trained on (docs/audit.md, "Members").

The candidate set is the training split exactly as the job loads it (``load_dataset(...).x_train``):
its order is stable and documented (image folders: class folders sorted by name, files sorted by name
within each; CIFAR: the release's data_batch_1..5 order; then the seeded ``dataset.max_train``
subset, kept in that order). ``python -m src.data.members OUT [overrides]`` writes that order, one
entry per line, and prints the input contract (image size, normalisation) of the models audited.

A members file is one of
  * a text file, one entry per line (blank lines and ``#`` comments skipped): relative file paths
    (image folders; as written by the command above, e.g. ``train/cat/0001.png``) or, when every
    line is an integer, indices into the candidate order;
  * a ``.npy`` array: a boolean mask over the candidate order (dtype bool, one entry per candidate)
    or integer indices into it.
Paths survive reordering and subsetting: a path of a training image that ``dataset.max_train`` left
out of the candidate set is no candidate and is skipped (counted in the log); a path that is no
training image at all is an error.
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)
KEY = "target.members"


class MembersError(ValueError):
    """A members file that cannot be read as a non-empty, proper subset of the candidate set."""


def _lines(path: Path) -> list[tuple[int, str]]:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        why = getattr(e, "strerror", None) or e
        raise MembersError(f"{KEY}={path}: cannot read it as a text file ({why})") from None
    out = []
    for n, line in enumerate(text.splitlines(), 1):
        s = line.split("#", 1)[0].strip()
        if s:
            out.append((n, s))
    return out


def _from_indices(path: Path, idx: np.ndarray, n: int, where: str = "") -> np.ndarray:
    bad = idx[(idx < 0) | (idx >= n)]
    if bad.size:
        raise MembersError(f"{KEY}={path}: index {int(bad[0])}{where} is outside the candidate set; "
                           f"allowed: 0..{n - 1} "
                           f"(the {n} training examples in the candidate order, docs/audit.md)")
    mask = np.zeros(n, dtype=bool)
    mask[idx] = True
    return mask


def _from_npy(path: Path, n: int) -> np.ndarray:
    try:
        a = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise MembersError(f"{KEY}={path}: not a readable .npy array ({e})") from None
    if a.ndim != 1:
        raise MembersError(f"{KEY}={path}: an array of shape {list(a.shape)}; allowed: a 1-D boolean mask of length "
                           f"{n} or 1-D integer indices")
    if a.dtype == np.bool_:
        if a.shape[0] != n:
            raise MembersError(f"{KEY}={path}: a boolean mask of length {a.shape[0]}, but the candidate set has {n} "
                               f"examples; allowed: length {n}")
        return a.copy()
    if not np.issubdtype(a.dtype, np.integer):
        raise MembersError(f"{KEY}={path}: dtype {a.dtype}; allowed: bool (a mask) or an integer type (indices)")
    return _from_indices(path, a.astype(np.int64), n)


def _from_text(path: Path, n: int, files: list[str] | None, all_files: list[str] | None) -> np.ndarray:
    lines = _lines(path)
    if not lines:
        return np.zeros(n, dtype=bool)
    if all(s.lstrip("-").isdigit() for _, s in lines):
        idx = np.array([int(s) for _, s in lines], dtype=np.int64)
        bad = np.flatnonzero((idx < 0) | (idx >= n))
        where = f" (line {lines[bad[0]][0]})" if bad.size else ""
        return _from_indices(path, idx, n, where)
    if files is None:
        raise MembersError(f"{KEY}={path}: relative file paths name examples of image folders only; this dataset is "
                           f"not read from image files; allowed: indices into the candidate order or a .npy mask")
    pos = {f: i for i, f in enumerate(files)}
    known = set(all_files or files)
    mask = np.zeros(n, dtype=bool)
    skipped = 0
    for line_no, s in lines:
        rel = Path(s[2:] if s.startswith("./") else s).as_posix()
        if rel in pos:
            mask[pos[rel]] = True
        elif rel in known:
            skipped += 1
        else:
            raise MembersError(f"{KEY}={path}: line {line_no} names {s!r}, which is not a training image of the "
                               f"dataset; allowed: paths relative to the dataset root as `python -m src.data.members` "
                               f"lists them, e.g. {files[0]!r}")
    if skipped:
        log.info("target.members: %d listed training images are outside the candidate set (dataset.max_train) and "
                 "are not scored", skipped)
    return mask


def read_members(path: str | Path, n: int, files: list[str] | None = None,
                 all_files: list[str] | None = None) -> np.ndarray:
    """Boolean mask [n] over the candidate order from a members file (module doc). ``files``: the
    candidates' relative paths (image folders), ``all_files``: every training image's (with
    ``max_train``, a superset). Raises MembersError with one line for an unreadable file, an unknown
    path, an index out of range, a mask of the wrong length, no member or no non-member left."""
    p = Path(path)
    if not p.is_file():
        raise MembersError(f"{KEY}={path}: no such file")
    mask = _from_npy(p, n) if p.suffix == ".npy" else _from_text(p, n, files, all_files)
    if not mask.any():
        raise MembersError(f"{KEY}={path}: no member among the {n} candidates; the target's training examples must "
                           f"include some of them")
    if mask.all():
        raise MembersError(f"{KEY}={path}: all {n} candidates are members; membership inference needs non-members "
                           f"too (train the target on a part of the candidate set, e.g. a random half)")
    return mask


def write_candidates(out: str | Path, cfg) -> str:
    """Write the candidate order of the dataset ``cfg`` describes (a composed job config), one line
    per example (relative paths for image folders, else indices); return the input contract line."""
    from src.data.datasets import load_dataset, train_files

    data = load_dataset(cfg.dataset, cfg.paths.data_dir)
    files = train_files(cfg.dataset, cfg.paths.data_dir)
    lines = files if files is not None else [str(i) for i in range(len(data.y_train))]
    Path(out).write_text("".join(f"{s}\n" for s in lines), encoding="utf-8")
    mean = ", ".join(f"{m:.4f}" for m in data.mean)
    std = ", ".join(f"{s:.4f}" for s in data.std)
    return (f"{len(lines)} candidates written to {out}; the models take float images of "
            f"{data.in_channels}x{data.image_size}x{data.image_size}, x = (pixels/255 - mean)/std with "
            f"mean=({mean}), std=({std}), {data.num_classes} classes")


def main(argv: list[str]) -> int:
    """``python -m src.data.members OUT [overrides]``: the candidate order of a job's dataset."""
    import sys

    if not argv or argv[0].startswith("-") or "=" in argv[0]:
        print("usage: python -m src.data.members OUT [dataset/experiment overrides, as for src.main]", file=sys.stderr)
        return 2
    from hydra import compose, initialize_config_dir

    from src.data.datasets import DataError

    conf = Path(__file__).resolve().parents[2] / "conf"
    with initialize_config_dir(config_dir=str(conf), version_base="1.3"):
        cfg = compose("config", overrides=argv[1:])
    for node, key in ((cfg.paths, "data_dir"), (cfg.dataset, "root")):  # ``~`` is the user's home, as in jobs
        if isinstance(node.get(key), str):
            node[key] = str(Path(node[key]).expanduser())
    try:
        print(write_candidates(argv[0], cfg))
    except DataError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    import sys

    sys.exit(main(sys.argv[1:]))
