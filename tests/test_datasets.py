"""Dataset loaders on generated files: imagefolder layout, seeded class-balanced-ish subsets, errors."""
import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image

from src.data import DataError, load_dataset


def make_folder(root, n_per_class=6, classes=("a", "b", "c"), size=8):
    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        for c in classes:
            d = root / split / c
            d.mkdir(parents=True)
            for i in range(n_per_class):
                Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(d / f"{i}.png")


def test_imagefolder_loads_tensors(tmp_path):
    make_folder(tmp_path)
    data = load_dataset(OmegaConf.create({"name": "imagefolder", "root": str(tmp_path)}), "unused")
    assert data.x_train.dtype == torch.uint8 and data.x_train.shape == (18, 3, 8, 8)
    assert data.num_classes == 3 and sorted(set(data.y_train.tolist())) == [0, 1, 2]
    first = np.asarray(Image.open(tmp_path / "train" / "a" / "0.png"))
    assert (data.x_train[0].permute(1, 2, 0).numpy() == first).all()


def test_max_train_is_a_seeded_random_subset_not_a_prefix(tmp_path):
    make_folder(tmp_path)
    cfg = OmegaConf.create({"name": "imagefolder", "root": str(tmp_path), "max_train": 9, "split_seed": 1})
    a = load_dataset(cfg, "unused")
    b = load_dataset(cfg, "unused")
    assert len(a.y_train) == 9 and torch.equal(a.x_train, b.x_train)
    assert len(set(a.y_train.tolist())) > 1  # a prefix of class-sorted files would hold class 0 only


def test_missing_data_errors_name_the_key(tmp_path):
    with pytest.raises(DataError, match="dataset.root"):
        load_dataset(OmegaConf.create({"name": "imagefolder", "root": str(tmp_path / "nope")}), "unused")
    with pytest.raises(DataError, match="tiny-imagenet-200"):
        load_dataset(OmegaConf.create({"name": "tinyimagenet", "download": False}), str(tmp_path))


def test_digits_offline_default():
    data = load_dataset(OmegaConf.create({"name": "digits", "n_test": 297}), "unused")
    assert data.x_train.shape == (1500, 1, 8, 8) and data.x_test.shape == (297, 1, 8, 8)
    assert data.x_train.max() == 255 and data.num_classes == 10


def test_tinyimagenet_layout(tmp_path):
    root = tmp_path / "tiny-imagenet-200"
    rng = np.random.default_rng(0)
    wnids = ["n01", "n02"]
    for w in wnids:
        (root / "train" / w / "images").mkdir(parents=True)
        for i in range(3):
            Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(
                root / "train" / w / "images" / f"{w}_{i}.JPEG", format="JPEG")
    (root / "val" / "images").mkdir(parents=True)
    lines = []
    for i, w in enumerate(["n02", "n01", "n02"]):
        Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(
            root / "val" / "images" / f"val_{i}.JPEG", format="JPEG")
        lines.append(f"val_{i}.JPEG\t{w}\t0\t0\t63\t63")
    (root / "val" / "val_annotations.txt").write_text("\n".join(lines) + "\n")
    data = load_dataset(OmegaConf.create({"name": "tinyimagenet", "download": False}), str(tmp_path))
    assert data.x_train.shape == (6, 3, 64, 64) and data.num_classes == 2
    assert data.y_train.tolist() == [0, 0, 0, 1, 1, 1] and data.y_test.tolist() == [1, 0, 1]


def _imagefolder(root, **kw):
    return load_dataset(OmegaConf.create({"name": "imagefolder", "root": str(root), **kw}), "unused")


def test_mixed_image_sizes_are_an_error_unless_image_size_is_set(tmp_path):
    make_folder(tmp_path, n_per_class=2)
    Image.fromarray(np.zeros((10, 12, 3), np.uint8)).save(tmp_path / "train" / "b" / "odd.png")
    with pytest.raises(DataError, match=r"dataset.root=.*different sizes.*odd.png.*dataset.image_size"):
        _imagefolder(tmp_path)
    data = _imagefolder(tmp_path, image_size=6)
    assert data.x_train.shape == (7, 3, 6, 6) and data.x_test.shape == (6, 3, 6, 6)


def test_empty_class_folder_is_an_error(tmp_path):
    make_folder(tmp_path, n_per_class=2)
    (tmp_path / "train" / "d").mkdir()
    (tmp_path / "train" / "d" / "notes.txt").write_text("not an image")
    with pytest.raises(DataError, match=r"dataset.root=.*train/d holds no images"):
        _imagefolder(tmp_path)
    # a class present in train/ but absent from test/ is named too
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "train" / "d" / "0.png")
    with pytest.raises(DataError, match=r"test/d is missing"):
        _imagefolder(tmp_path)


def test_unreadable_file_is_named(tmp_path):
    make_folder(tmp_path, n_per_class=2)
    (tmp_path / "test" / "c" / "broken.jpg").write_bytes(b"\xff\xd8 this is not a JPEG")
    with pytest.raises(DataError, match=r"dataset.root=.*cannot read image .*broken.jpg"):
        _imagefolder(tmp_path)


def test_decoded_tensors_are_cached_by_folder_content(tmp_path, monkeypatch):
    import src.data.datasets as ds

    root, cache = tmp_path / "imgs", tmp_path / "cache"
    make_folder(root, n_per_class=3)
    first = _imagefolder(root, decode_cache=str(cache))
    assert len(list((cache / "decoded").glob("*.pt"))) == 1

    def no_decoding(*a, **k):
        raise AssertionError("decoded again although the folder did not change")

    monkeypatch.setattr(ds, "_decode_files", no_decoding)
    again = _imagefolder(root, decode_cache=str(cache), max_train=4, split_seed=3)  # the subset comes from the cache
    direct = ds._subset(9, 4, 3)
    assert torch.equal(again.x_train, first.x_train[torch.from_numpy(direct)])
    assert torch.equal(again.x_test, first.x_test)
    monkeypatch.undo()
    # a changed image (different bytes, so a different size) gives a new key and a fresh decode
    Image.fromarray(np.full((8, 8, 3), 7, np.uint8)).save(root / "train" / "a" / "0.png")
    changed = _imagefolder(root, decode_cache=str(cache))
    assert len(list((cache / "decoded").glob("*.pt"))) == 2
    assert (changed.x_train[0] == 7).all() and not torch.equal(changed.x_train[0], first.x_train[0])


def test_parallel_decode_matches_serial_and_names_bad_files(tmp_path, monkeypatch):
    """The worker-process path (used from 2,000 files up) returns the same tensors, in file order."""
    import src.data.datasets as ds

    make_folder(tmp_path, n_per_class=5)
    serial = _imagefolder(tmp_path)
    monkeypatch.setattr(ds, "PARALLEL_MIN_FILES", 0)
    monkeypatch.setattr(ds, "CHUNK", 4)
    monkeypatch.setattr(ds, "_workers", lambda: 2)
    parallel = _imagefolder(tmp_path, progress=True)
    assert torch.equal(serial.x_train, parallel.x_train) and torch.equal(serial.x_test, parallel.x_test)
    assert torch.equal(serial.y_train, parallel.y_train)
    (tmp_path / "train" / "b" / "3.png").write_bytes(b"truncated")
    with pytest.raises(DataError, match=r"cannot read image .*b/3.png"):
        _imagefolder(tmp_path)


def test_cifar_folder_with_altered_files_says_checksum_not_missing(tmp_path):
    """An existing cifar-10-batches-py whose files fail torchvision's MD5 check: the error must say
    the folder is there but is not the original release, not ask to unpack it so that it exists."""
    from torchvision.datasets import CIFAR10

    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    for f, _ in CIFAR10.train_list + CIFAR10.test_list + [(CIFAR10.meta["filename"], None)]:
        (folder / f).write_bytes(b"not the release")
    with pytest.raises(DataError) as e:
        load_dataset(OmegaConf.create({"name": "cifar10", "download": False}), str(tmp_path))
    msg = str(e.value)
    assert "exists but its files are not the original release" in msg and "checksum failed" in msg
    assert "data_batch_1" in msg and "dataset.download=true" in msg and "unpack it so that" not in msg
    assert "\n" not in msg
    # without the folder the message still asks for it
    import shutil

    shutil.rmtree(folder)
    with pytest.raises(DataError, match="unpack it so that .*cifar-10-batches-py exists"):
        load_dataset(OmegaConf.create({"name": "cifar10", "download": False}), str(tmp_path))


def test_resize_keeps_flat_images_flat_and_averages_stripes():
    """Antialiased bilinear 2x downsampling: a constant image stays constant, and 1-px stripes of 0
    and 200 become ~100 (the filter averages neighbours; ±30 allows for the edge taps)."""
    from src.data.datasets import resize

    x = torch.full((2, 3, 8, 8), 90, dtype=torch.uint8)
    assert torch.equal(resize(x, 4), torch.full((2, 3, 4, 4), 90, dtype=torch.uint8))
    s = torch.zeros(1, 1, 8, 8, dtype=torch.uint8)
    s[..., ::2] = 200
    y = resize(s, 4).float()
    assert y.shape == (1, 1, 4, 4) and (y - 100).abs().max() <= 30


def test_cifar10_cpu_preset_applies_to_torchvision_and_image_folder_data(tmp_path):
    """``experiment=cifar10_cpu`` sets the pool, resolution and recipe whichever CIFAR source is used;
    on an image folder the decoded tensors go to ``paths.cache_dir``."""
    from _main_runner import compose

    from src.validate import validate

    for extra in ([], ["dataset=imagefolder", f"dataset.root={tmp_path}", f"paths.cache_dir={tmp_path / 'c'}"]):
        cfg = compose(["experiment=cifar10_cpu", *extra])
        validate(cfg)
        assert cfg.dataset.name == ("imagefolder" if extra else "cifar10")
        assert (cfg.dataset.max_train, cfg.dataset.image_size) == (4000, 16)
        assert (cfg.dataset.augment.pad, cfg.dataset.augment.flip) == (0, False)
        assert list(cfg.dataset.queries) == ["identity", "mirror"]
        assert (cfg.model.name, cfg.model.width, cfg.n_models, cfg.n_targets) == ("smallcnn", 32, 16, 4)
        assert cfg.attack.name == "all" and cfg.bitwidth.policy == "paper"
        # calibration must fit in a target's ~2,000 members (4,000 x pkeep 0.5)
        assert cfg.budget.n_calib <= 0.45 * cfg.dataset.max_train
        assert compose(["experiment=cifar10_cpu", "quant=obc", *extra]).quant.n_calib == cfg.budget.n_calib
        if extra:
            assert cfg.dataset.decode_cache == str(tmp_path / "c")


def test_cifar_pool_subset_and_resize_follow_the_config(tmp_path):
    """dataset=cifar10 with max_train/image_size (the cifar10_cpu preset without DATA=): a seeded
    subset of the release's arrays, resized to image_size; labels follow their images."""
    import pickle

    import src.data.datasets as ds
    from torchvision.datasets import CIFAR10

    y = np.arange(60) % 10
    x = np.repeat((y * 20).astype(np.uint8)[:, None], 3072, axis=1)  # image i is flat at 20·y_i
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    for i, (f, _) in enumerate(CIFAR10.train_list):  # 5 batches of 10, then the test batch
        (folder / f).write_bytes(pickle.dumps({"data": x[10 * i:10 * i + 10], "labels": y[10 * i:10 * i + 10].tolist()}))
    (folder / "test_batch").write_bytes(pickle.dumps({"data": x[50:], "labels": y[50:].tolist()}))
    (folder / "batches.meta").write_bytes(pickle.dumps({"label_names": [str(c) for c in range(10)]}))
    cfg = OmegaConf.create({"name": "cifar10", "download": False, "max_train": 12, "image_size": 16, "split_seed": 0})
    data = load_dataset(cfg, str(tmp_path))
    assert data.x_train.shape == (12, 3, 16, 16) and data.x_test.shape == (10, 3, 16, 16)
    # flat images stay flat under the resize, so each one still shows its own label's value
    assert torch.equal(data.x_train[:, :, 5, 7].long(), (data.y_train * 20).view(-1, 1).expand(12, 3))
    keep = ds._subset(50, 12, 0)
    assert torch.equal(data.y_train, torch.from_numpy(y[:50][keep]))
