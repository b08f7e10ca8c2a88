"""Release-format files, generated here: TinyImageNet's tree and CIFAR-100's pickles through the shared
decode/cache/subset core; every bad input is one line, and nothing is cached for it."""
import io
import pickle
import urllib.error

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image

from src.data import DataError, load_dataset

WNIDS = ["n03444034", "n01443537", "n02124075"]  # release order is not sorted


def make_tin(data_dir, n_train=4, n_val=6, size=64, seed=0):
    """A tiny-imagenet-200 tree laid out like the release: wnids.txt, words.txt, per-class
    images/ + <wnid>_boxes.txt, val/images + tab-separated val_annotations.txt with boxes; every
    third image grayscale (the release has 716)."""
    rng = np.random.default_rng(seed)
    root = data_dir / "tiny-imagenet-200"

    def save(path, k):
        shape = (size, size) if k % 3 == 2 else (size, size, 3)
        Image.fromarray(rng.integers(0, 255, shape, dtype=np.uint8)).save(path, format="JPEG")

    for w in WNIDS:
        d = root / "train" / w / "images"
        d.mkdir(parents=True)
        boxes = []
        for k in range(n_train):
            save(d / f"{w}_{k}.JPEG", k)
            boxes.append(f"{w}_{k}.JPEG\t1\t2\t{size - 3}\t{size - 4}")
        (root / "train" / w / f"{w}_boxes.txt").write_text("\n".join(boxes) + "\n")
    (root / "val" / "images").mkdir(parents=True)
    lines = []
    for k in range(n_val):
        save(root / "val" / "images" / f"val_{k}.JPEG", k)
        lines.append(f"val_{k}.JPEG\t{WNIDS[k % 3]}\t{k}\t{k + 1}\t{size - 2}\t{size - 1}")
    (root / "val" / "val_annotations.txt").write_text("\n".join(lines) + "\n")
    (root / "wnids.txt").write_text("\n".join(WNIDS) + "\n")
    (root / "words.txt").write_text("".join(f"{w}\tname {i}, other name\n" for i, w in enumerate(WNIDS + ["n09999999"])))
    (root / "test" / "images").mkdir(parents=True)  # unlabelled in the release: ignored
    save(root / "test" / "images" / "test_0.JPEG", 0)
    return root


def tin(data_dir, **kw):
    return load_dataset(OmegaConf.create({"name": "tinyimagenet", "download": False, **kw}), str(data_dir))


def decoded(cache):
    return sorted((cache / "decoded").glob("*.pt")) if (cache / "decoded").is_dir() else []


def test_tinyimagenet_release_tree_is_parsed(tmp_path):
    root = make_tin(tmp_path)
    data = tin(tmp_path)
    order = sorted(WNIDS)  # labels index the sorted wnids
    assert data.x_train.dtype == torch.uint8 and data.x_train.shape == (12, 3, 64, 64)
    assert data.x_test.shape == (6, 3, 64, 64) and data.num_classes == 3
    assert data.y_train.tolist() == [0] * 4 + [1] * 4 + [2] * 4
    assert data.y_test.tolist() == [order.index(WNIDS[k % 3]) for k in range(6)]
    # a grayscale JPEG becomes RGB with three equal channels, pixels as PIL decodes them
    w = order[0]
    gray = np.array(Image.open(root / "train" / w / "images" / f"{w}_2.JPEG"))
    assert gray.ndim == 2
    assert all(torch.equal(data.x_train[2, c], torch.from_numpy(gray)) for c in range(3))
    rgb = np.asarray(Image.open(root / "val" / "images" / "val_4.JPEG"))
    assert (data.x_test[4].permute(1, 2, 0).numpy() == rgb).all()
    # the study normalises TinyImageNet with ImageNet's statistics
    assert data.mean == pytest.approx((0.485, 0.456, 0.406))
    small = tin(tmp_path, image_size=16)
    assert small.x_train.shape == (12, 3, 16, 16) and small.x_test.shape == (6, 3, 16, 16)


def test_seeded_subsets_are_deterministic_and_follow_the_seed(tmp_path):
    make_tin(tmp_path, n_train=10, n_val=9)
    a, b = tin(tmp_path, max_train=12, max_test=4, split_seed=1), tin(tmp_path, max_train=12, max_test=4, split_seed=1)
    assert len(a.y_train) == 12 and len(a.y_test) == 4
    assert torch.equal(a.x_train, b.x_train) and torch.equal(a.y_test, b.y_test)
    assert len(set(a.y_train.tolist())) > 1  # not a prefix of the class-sorted files
    full = tin(tmp_path)
    other = tin(tmp_path, max_train=12, split_seed=2)
    assert not torch.equal(a.x_train, other.x_train)
    # a subset is a selection of the full split, labels attached to their images
    idx = [next(i for i in range(30) if torch.equal(full.x_train[i], x)) for x in a.x_train]
    assert full.y_train[idx].tolist() == a.y_train.tolist()


def test_decode_cache_is_reused_and_rebuilt_when_a_file_changes(tmp_path, monkeypatch):
    import src.data.datasets as ds

    root, cache = make_tin(tmp_path / "d"), tmp_path / "cache"
    first = tin(tmp_path / "d", decode_cache=str(cache))
    assert len(decoded(cache)) == 1

    def no_decoding(*a, **k):
        raise AssertionError("decoded again although no file changed")

    monkeypatch.setattr(ds, "_decode_files", no_decoding)
    again = tin(tmp_path / "d", decode_cache=str(cache), max_train=5, split_seed=3)
    assert torch.equal(again.x_train, first.x_train[torch.from_numpy(ds._subset(12, 5, 3))])
    monkeypatch.undo()
    # another image in place of a val file: new key, fresh decode, new pixels
    Image.fromarray(np.full((64, 64, 3), 7, np.uint8)).save(root / "val" / "images" / "val_1.JPEG", format="JPEG")
    changed = tin(tmp_path / "d", decode_cache=str(cache))
    assert len(decoded(cache)) == 2
    assert (changed.x_test[1].float() - 7).abs().max() <= 2 and torch.equal(changed.x_test[0], first.x_test[0])
    # relabelling in val_annotations.txt alone is a change too
    ann = root / "val" / "val_annotations.txt"
    ann.write_text(ann.read_text().replace(f"val_0.JPEG\t{WNIDS[0]}", f"val_0.JPEG\t{WNIDS[1]}"))
    relabelled = tin(tmp_path / "d", decode_cache=str(cache))
    assert len(decoded(cache)) == 3
    assert relabelled.y_test[0] == sorted(WNIDS).index(WNIDS[1]) != first.y_test[0]


def _break_missing_file(root):
    (root / "val" / "images" / "val_3.JPEG").unlink()
    return r"cannot read .*val/images/val_3\.JPEG \(listed in val_annotations\.txt line 4\)"


def _break_unreadable_file(root):
    (root / "train" / WNIDS[1] / "images" / f"{WNIDS[1]}_1.JPEG").write_bytes(b"\xff\xd8 truncated")
    return rf"cannot read image .*{WNIDS[1]}_1\.JPEG"


def _break_unknown_class(root):
    ann = root / "val" / "val_annotations.txt"
    ann.write_text(ann.read_text() + "val_0.JPEG\tn00000000\t0\t0\t10\t10\n")
    return r"val_annotations\.txt line 7 names class 'n00000000', which is not among the 3 classes"


def _break_empty_class(root):
    for f in (root / "train" / WNIDS[2] / "images").iterdir():
        f.unlink()
    return rf"class folder .*train/{WNIDS[2]}/images holds no images"


BREAKS = [_break_missing_file, _break_unreadable_file, _break_unknown_class, _break_empty_class]


@pytest.mark.parametrize("brk", BREAKS, ids=lambda f: f.__name__[7:])
def test_each_bad_input_is_one_line_and_caches_nothing(tmp_path, brk):
    pattern = brk(make_tin(tmp_path / "d"))
    cache = tmp_path / "cache"
    with pytest.raises(DataError, match=r"^dataset=tinyimagenet .*" + pattern) as e:
        tin(tmp_path / "d", decode_cache=str(cache))
    assert "\n" not in str(e.value)
    assert decoded(cache) == []


def test_bad_input_exits_non_zero_with_one_line(tmp_path):
    """Through the CLI: exit code 2, one 'error:' line on stderr, no traceback, nothing cached."""
    from _main_runner import run_main

    _break_unknown_class(make_tin(tmp_path / "d"))
    cache = tmp_path / "cache"
    p = run_main(["dataset=tinyimagenet", f"paths.data_dir={tmp_path / 'd'}", "logger=none", "progress=false",
                  "n_models=4", "train.epochs=1"], cache, tmp_path / "run", check=False)
    assert p.returncode == 2
    lines = [ln for ln in p.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: dataset=tinyimagenet") and "n00000000" in lines[0]
    assert decoded(cache) == []


def test_missing_release_and_failed_downloads_say_why(tmp_path, monkeypatch):
    import src.data.datasets as ds

    with pytest.raises(DataError, match=r"tiny-imagenet-200 not found.*dataset.download=true"):
        tin(tmp_path)

    def offline(*a, **k):
        raise urllib.error.URLError(OSError(-3, "Temporary failure in name resolution"))

    monkeypatch.setattr("urllib.request.urlopen", offline)
    with pytest.raises(DataError, match=r"download of .*tiny-imagenet-200\.zip failed: no network .*name resolution"):
        tin(tmp_path, download=True)
    monkeypatch.undo()
    # an archive whose bytes do not match the release's MD5 is reported and removed
    class Served(io.BytesIO):
        def __init__(self, url):
            super().__init__(b"PK not the release")
            self.url, self.length = url, 18

    monkeypatch.setattr("urllib.request.urlopen", lambda req, *a, **k: Served(req.full_url))
    with pytest.raises(DataError, match=r"failed: checksum mismatch \(expected MD5 90528d7c") as e:
        tin(tmp_path / "data", download=True)
    assert "\n" not in str(e.value) and not (tmp_path / "data" / "tiny-imagenet-200.zip").exists()


# --------------------------------------------------------------------------------------------------
# CIFAR-100 in the python release's format (cifar-100-python/train, test, meta)


def write_cifar100(data_dir, n_train=30, n_test=10, bytes_keys=True, seed=0):
    """Pickles shaped like the release: dicts with data uint8 [N,3072] (R, G, B planes of 32x32),
    fine_labels, coarse_labels, filenames; meta with fine_label_names. The release was pickled by
    Python 2, so Python 3 reads its keys as bytes (b'data') unless decoded; both are accepted."""
    rng = np.random.default_rng(seed)
    folder = data_dir / "cifar-100-python"
    folder.mkdir(parents=True)
    key = (lambda k: k.encode()) if bytes_keys else (lambda k: k)
    out = {}
    for split, n in (("train", n_train), ("test", n_test)):
        fine = rng.integers(0, 100, n).tolist()
        d = {key("data"): rng.integers(0, 256, (n, 3072), dtype=np.uint8), key("fine_labels"): fine,
             key("coarse_labels"): [f // 5 for f in fine], key("filenames"): [f"img_{i}.png".encode() for i in range(n)],
             key("batch_label"): f"{split} batch".encode()}
        (folder / split).write_bytes(pickle.dumps(d, protocol=2))
        out[split] = d
    meta = {key("fine_label_names"): [f"class{i}" for i in range(100)],
            key("coarse_label_names"): [f"super{i}" for i in range(20)]}
    (folder / "meta").write_bytes(pickle.dumps(meta, protocol=2))
    return out


@pytest.mark.parametrize("bytes_keys", [True, False])
def test_cifar100_release_pickles_load_through_the_shared_core(tmp_path, bytes_keys):
    raw = write_cifar100(tmp_path, bytes_keys=bytes_keys)
    k = (lambda s: s.encode()) if bytes_keys else (lambda s: s)
    cfg = {"name": "cifar100", "download": False, "decode_cache": str(tmp_path / "cache")}
    data = load_dataset(OmegaConf.create(cfg), str(tmp_path))
    assert data.num_classes == 100 and data.x_train.shape == (30, 3, 32, 32) and data.x_test.shape == (10, 3, 32, 32)
    assert data.y_train.tolist() == raw["train"][k("fine_labels")]
    # row layout: 1024 red, then green, then blue values, row-major
    assert torch.equal(data.x_train[3].reshape(-1), torch.from_numpy(raw["train"][k("data")][3]))
    assert len(decoded(tmp_path / "cache")) == 1
    small = load_dataset(OmegaConf.create({**cfg, "image_size": 16, "max_train": 8, "split_seed": 2}), str(tmp_path))
    assert small.x_train.shape == (8, 3, 16, 16) and len(decoded(tmp_path / "cache")) == 2
    keep = torch.from_numpy(np.sort(np.random.default_rng(2).choice(30, 8, replace=False)))
    assert small.y_train.tolist() == data.y_train[keep].tolist()


def test_cifar100_unreadable_or_absent_release_is_one_line(tmp_path):
    cfg = OmegaConf.create({"name": "cifar100", "download": False, "decode_cache": str(tmp_path / "cache")})
    with pytest.raises(DataError, match=r"cifar-100-python not found or incomplete.*dataset.download=true"):
        load_dataset(cfg, str(tmp_path))
    write_cifar100(tmp_path)
    (tmp_path / "cifar-100-python" / "test").write_bytes(pickle.dumps({"data": np.zeros((2, 10), np.uint8),
                                                                       "fine_labels": [0, 1]}))
    with pytest.raises(DataError, match=r"checksum failed: train, test, meta; test \(ValueError: data uint8\[2, 10\]") as e:
        load_dataset(cfg, str(tmp_path))
    assert "\n" not in str(e.value) and decoded(tmp_path / "cache") == []


def test_cifar100_cpu_preset_composes(tmp_path):
    """``experiment=cifar100_cpu``: the CIFAR-10 CPU recipe on CIFAR-100 (100 classes)."""
    from _main_runner import compose

    from src.validate import validate

    c10, c100 = compose(["experiment=cifar10_cpu"]), compose(["experiment=cifar100_cpu"])
    validate(c100)
    assert c100.dataset.name == "cifar100" and c100.experiment_name == "cifar100-cpu"
    for k in ("model", "train", "budget"):
        assert c100[k] == c10[k]
    for k in ("max_train", "image_size", "augment", "queries"):
        assert c100.dataset[k] == c10.dataset[k]
    assert (c100.n_models, c100.n_targets, c100.attack.name, c100.bitwidth.policy) == (16, 4, "all", "paper")


def test_tinyimagenet_cpu_preset_composes_and_keeps_the_last_layer_at_8_bits():
    from _main_runner import compose
    from torch import nn

    from src.quant.policy import layer_bits
    from src.validate import validate

    cfg = compose(["experiment=tinyimagenet_cpu", "quant=adaround", "bits=4"])
    validate(cfg)
    assert cfg.dataset.name == "tinyimagenet" and cfg.bitwidth.policy == "paper"
    assert cfg.budget.n_calib <= 0.45 * cfg.dataset.max_train  # fits in a target's members
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.Linear(4, 200))
    for bits in (4, 2, 1.58):
        lb = layer_bits(net, bits, cfg.bitwidth.policy, cfg.dataset.name)
        assert lb["2"] == 8.0 and lb["0"] == bits
