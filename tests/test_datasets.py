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
