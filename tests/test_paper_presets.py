"""The paper presets, end to end: the path every GPU user takes, at test size.

Each ``conf/experiment/paper_*.yaml`` is composed as a user would (``experiment=paper_<dataset>``), with
size-only overrides: generated images of the dataset's shape, ``model.width`` (ResNet-18 with every
layer type and stride of the paper's network, at a small base width so OBC runs on CPU), 4 models,
1 epoch, a small reconstruction budget. The job then trains the pool, quantizes the target with
AdaRound, BRECQ and OBC under the paper's bit policy at 1.58 bits (fc at 8 bits), runs every attack,
and writes results.json and scores.npz, which are checked against what the preset promises.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from _main_runner import REPO, compose
PRESETS = sorted(p.stem for p in (REPO / "conf" / "experiment").glob("paper_*.yaml"))
ATTACKS = {"lira_online", "lira_online_fixed", "lira_offline", "lira_offline_fixed", "rmia", "rmia_offline", "loss"}
# size only: the recipe, policy, attacks and quantizer algorithms stay the preset's
SIZE = ["model.width=8", "n_models=4", "train.epochs=1", "quant.n_calib=32",
        "attack.bootstrap=10", "logger=none", "progress=false", "num_threads=1"]




@pytest.mark.parametrize("preset", PRESETS)
def test_preset_composes_the_paper_protocol(preset):
    """Every paper preset composes to the study's protocol (docs/configuration.md): ResNet-18 at base width 64,
    65 models, 100 epochs of SGD 0.1 / cosine, the paper bit policy, every attack, its own dataset."""
    cfg = compose([f"experiment={preset}"])
    assert cfg.dataset.name == preset.removeprefix("paper_")
    assert (cfg.model.name, cfg.model.width) == ("resnet18", 64)
    assert (cfg.n_models, cfg.pkeep, list(cfg.targets)) == (65, 0.5, [0])
    assert (cfg.train.epochs, cfg.train.lr, cfg.train.schedule) == (100, 0.1, "cosine")
    assert cfg.bitwidth.policy == "paper" and set(cfg.attack.names) == ATTACKS


def _tiny_imagenet(root: Path, n_classes: int = 200, per_class: int = 2) -> None:
    """A ``tiny-imagenet-200`` folder in the real layout: train/<wnid>/images/<wnid>_<i>.JPEG,
    val/images/val_<i>.JPEG and val/val_annotations.txt (file, wnid, box), 64×64 RGB JPEGs."""
    from PIL import Image

    rng = np.random.default_rng(0)
    base = root / "tiny-imagenet-200"
    protos = rng.integers(0, 256, (n_classes, 64, 64, 3))
    lines = []
    for c in range(n_classes):
        wnid = f"n{c:08d}"
        d = base / "train" / wnid / "images"
        d.mkdir(parents=True)
        for i in range(per_class):
            img = np.clip(protos[c] + rng.normal(0, 40, protos[c].shape), 0, 255).astype(np.uint8)
            Image.fromarray(img).save(d / f"{wnid}_{i}.JPEG")
        (base / "val" / "images").mkdir(parents=True, exist_ok=True)
        img = np.clip(protos[c] + rng.normal(0, 40, protos[c].shape), 0, 255).astype(np.uint8)
        Image.fromarray(img).save(base / "val" / "images" / f"val_{c}.JPEG")
        lines.append(f"val_{c}.JPEG\t{wnid}\t0\t0\t63\t63")
    (base / "val" / "val_annotations.txt").write_text("\n".join(lines) + "\n")
    (base / "wnids.txt").write_text("\n".join(f"n{c:08d}" for c in range(n_classes)) + "\n")


def _data_overrides(preset: str, tmp: Path) -> list[str]:
    if preset == "paper_tinyimagenet":
        _tiny_imagenet(tmp / "data")
        return [f"paths.data_dir={tmp / 'data'}"]
    # CIFAR's loader checks torchvision's release checksums, so generated CIFAR files cannot stand in:
    # generated images of CIFAR's shape (32×32×3, its class count), with CIFAR's augmentation and queries
    classes = 100 if preset == "paper_cifar100" else 10
    return ["dataset=synthetic", "dataset.image_size=32", "dataset.channels=3", f"dataset.num_classes={classes}",
            "dataset.n_train=160", "dataset.n_test=64", "dataset.augment={pad: 4, flip: true}"]


@pytest.mark.parametrize("preset", ["paper_cifar10", "paper_tinyimagenet"])
def test_preset_runs_end_to_end(preset, tmp_path, run_job):
    from src.models import build_model

    base = [f"experiment={preset}", *SIZE, *_data_overrides(preset, tmp_path), "bits=1.58",
            f"paths.cache_dir={tmp_path / 'cache'}"]
    for quant in ("adaround", "brecq", "obc"):
        budget = [] if quant == "obc" else ["quant.iters=20"]  # OBC has no iteration budget
        res, job = run_job(compose(base + [f"quant={quant}", *budget]), quant)
        on_disk = json.loads((job / "results.json").read_text())
        assert on_disk["attacks"]["lira_online"]["auc"] == res["attacks"]["lira_online"]["auc"]
        assert on_disk["config"]["model"] == {"name": "resnet18", "width": 8}
        # the paper's policy at 1.58 bits: the classifier at 8 bits, every other layer ternary
        bits = on_disk["quant"]["layer_bits"]
        assert bits.pop("fc") == 8.0 and set(bits.values()) == {1.58} and len(bits) == 20  # 17 convs + 3 shortcuts
        assert set(on_disk["attacks"]) == set(on_disk["fp_attacks"]) == ATTACKS
        for block in on_disk["attacks"].values():
            assert 0.0 <= block["auc"] <= 1.0
        z = np.load(job / "scores.npz")
        n = len(z["labels"])
        assert z["phi"].shape == (4, n, 2) and z["target_phi"].shape == (1, n, 2)  # identity + mirror
        assert np.isfinite(z["target_phi"]).all() and not np.allclose(z["target_phi"][0], z["phi"][0])
        # the integer export: three levels per output channel in the ternary layers, ≤ 256 in fc
        export = torch.load(job / "quantized_target0.pt", weights_only=False)
        model = build_model("resnet18", 200 if preset == "paper_tinyimagenet" else 10, 3, 8)
        assert set(export) == {k.removesuffix(".weight") for k, v in model.state_dict().items()
                               if k.endswith(".weight") and v.dim() in (2, 4)}
        for name, e in export.items():
            levels = max(len(torch.unique(c)) for c in e["codes"].reshape(e["codes"].shape[0], -1))
            assert levels <= (256 if name == "fc" else 3), name
    # one pool for the three jobs: 4 models trained once, 3 quantized targets
    assert len(list((tmp_path / "cache" / "models").glob("*.json"))) == 4
    assert len(list((tmp_path / "cache" / "quantized").glob("*.json"))) == 3
