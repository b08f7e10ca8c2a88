"""The study-code switches (protocol=study_code and each key it sets) do what they say."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from _main_runner import compose
from omegaconf import OmegaConf

from src.attacks.scores import compute_phi
from src.data import normalize
from src.data.augment import normalized_crop_flip, random_crop_flip
from src.data.datasets import make_synthetic
from src.models import SmallResNet
from src.quant import quantize
from src.quant.adaround import layer_units
from src.quant.bn_fold import fold_batchnorm
from src.quant.grid import init_grid
from src.validate import ConfigError, validate
from test_paper_presets import SIZE, _data_overrides




def test_normalized_crop_flip_equals_augmenting_raw_pixels():
    """Cropping/flipping normalised images with the normalised-black padding is the same as doing it
    on the raw uint8 images (zero padding) and normalising afterwards; two draws differ."""
    x = torch.randint(0, 256, (16, 3, 8, 8), dtype=torch.uint8)
    mean, std = (0.4, 0.5, 0.6), (0.2, 0.25, 0.3)
    aug = normalized_crop_flip(2, True, mean, std)
    got = aug(normalize(x, mean, std), torch.Generator().manual_seed(3))
    want = normalize(random_crop_flip(x, 2, True, torch.Generator().manual_seed(3)), mean, std)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-5)
    g = torch.Generator().manual_seed(0)
    assert not torch.equal(aug(normalize(x, mean, std), g), aug(normalize(x, mean, std), g))


def _trained_smallnet():
    torch.manual_seed(0)
    data = make_synthetic(n_train=128, n_test=32, num_classes=4, image_size=8, channels=1)
    model = SmallResNet(4, 1, 8)
    model.train()
    with torch.no_grad():
        model(normalize(data.x_train, data.mean, data.std))  # BN statistics of real inputs
    return model.eval(), data


def test_augmented_calibration_draws_fresh_member_batches():
    """With calib_augment every reconstruction step augments a batch of the calibration images
    (each input row is one of them) and the batches differ from step to step."""
    model, data = _trained_smallnet()
    calib = normalize(data.x_train[:48], data.mean, data.std)
    base = normalized_crop_flip(1, True, data.mean, data.std)
    seen_in, seen_out = [], []

    def spy(x, g):
        seen_in.append(x.clone())
        out = base(x, g)
        seen_out.append(out.clone())
        return out

    cfg = OmegaConf.create(dict(name="adaround", iters=6, batch_size=8, lr=1e-3, reg_lambda=0.01, warmup=0.2,
                                b_start=20, b_end=2, init="lp", p=2.4, fold_bn=True, progress=False))
    quantize(model, 2.0, cfg, "uniform", calib, augment=spy)
    n_layers = sum(isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)) for m in model.modules())
    assert len(seen_in) == n_layers * 6  # one fresh batch per layer and iteration
    flat = calib.flatten(1)
    for xb in seen_in:
        assert all((flat == row).all(1).any() for row in xb.flatten(1))  # every row is a calibration image
    assert not torch.equal(seen_out[0], seen_out[1])


@pytest.mark.parametrize("source", ["members", "train"])
def test_bn_tune_reads_only_its_source_and_averages_batches(source):
    """bn_tune=members touches only the target's members; train also non-members. The first BN's
    running mean is the average of its batch means: recomputed here from the conv1 outputs of the
    images each batch used (the tuning draws are replayed with the same seed)."""
    from src import pipeline as P
    from src.quant.bn_tune import retune_batchnorm

    model, data = _trained_smallnet()
    keep = np.zeros(len(data.y_train), bool)
    keep[::2] = True
    cfg = OmegaConf.create({"seed": 0, "quant": {"bn_tune": source, "bn_tune_images": 40, "bn_tune_batches": 5,
                                                 "bn_tune_batch_size": 16}})
    used = P.bn_tune(cfg, data, keep[None], 0, model, None, "cpu")
    assert len(used) > 0 and (keep[used].all() if source == "members" else (~keep[used]).any())
    # independent recomputation of the running mean for a direct call
    m2, _ = _trained_smallnet()
    images = normalize(data.x_train[:40], data.mean, data.std)
    idx = retune_batchnorm(m2, images, 5, 16, torch.Generator().manual_seed(1))
    with torch.no_grad():
        means = [m2.conv1(images[b]).mean((0, 2, 3)) for b in idx.view(5, 16)]
    torch.testing.assert_close(m2.bn1.running_mean, torch.stack(means).mean(0), rtol=1e-4, atol=1e-5)


def test_affine_ternary_has_three_levels_and_can_be_one_sided():
    """Affine ternary: codes {0, 1, 2} with s = (hi − lo)/2 and z = round(−lo/s); an all-positive
    channel gets z = 0, i.e. the one-sided levels {0, s, 2s}; symmetric stays {−δ, 0, δ}."""
    w = torch.stack([torch.linspace(0.1, 1.0, 50), torch.linspace(-1.0, 0.5, 50)])
    g = init_grid(w, 1.58, method="minmax", ternary="affine")
    assert (g.qmin, g.qmax) == (0, 2)
    assert g.zero_point[0] == 0 and g.scale[0] == pytest.approx(0.5)  # lo clamps to 0: range [0, 1]
    assert g.zero_point[1] == round(1.0 / 0.75)
    levels = [torch.unique(g.dequantize(g.codes(w))[c]) for c in range(2)]
    assert all(len(lv) <= 3 for lv in levels) and (levels[0] >= 0).all()
    sym = init_grid(w, 1.58, method="minmax")
    assert (sym.qmin, sym.qmax) == (-1, 1) and (sym.zero_point == 0).all()


def test_random_aug_queries_are_drawn_per_model():
    """random_aug views: the same model seed reproduces its φ, another seed draws other crops."""
    model, data = _trained_smallnet()
    args = (data.x_train, data.y_train, data.mean, data.std, ["random_aug", "identity"], "cpu")
    a = compute_phi(model, *args, seed=1, augment=(1, True))
    b = compute_phi(model, *args, seed=1, augment=(1, True))
    c = compute_phi(model, *args, seed=2, augment=(1, True))
    assert np.array_equal(a, b) and not np.array_equal(a[:, 0], c[:, 0]) and np.array_equal(a[:, 1], c[:, 1])


def test_adaround_without_activation_and_validation():
    """activation_in_loss=false: no unit carries a ReLU (raw outputs are reconstructed); AdaRound with
    BN unfolded is accepted only that way."""
    model = fold_batchnorm(SmallResNet(4, 1, 8).eval())
    names = [n for n, m in model.named_modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
    assert not any(isinstance(m, torch.nn.ReLU) for u in layer_units(model, names, False) for m in u.module)
    assert any(isinstance(m, torch.nn.ReLU) for u in layer_units(model, names, True) for m in u.module)
    with pytest.raises(ConfigError, match="quant.fold_bn=false"):
        validate(compose(["quant=adaround", "quant.fold_bn=false"]))
    validate(compose(["quant=adaround", "quant.fold_bn=false", "quant.activation_in_loss=false"]))
    with pytest.raises(ConfigError, match="quant.bn_tune=train: needs BatchNorm"):
        validate(compose(["quant=obc", "quant.bn_tune=train"]))
    with pytest.raises(ConfigError, match="quant.calib_augment=crop_flip: quant=rtn"):
        validate(compose(["quant=rtn", "+quant.calib_augment=crop_flip"]))


def test_study_code_protocol_composes_and_runs_the_paper_preset(tmp_path, run_job):
    """experiment=paper_cifar10 protocol=study_code at test size: the composed config carries every
    switch, and AdaRound and OBC (BN re-estimated on training images) run end to end."""
    base = ["experiment=paper_cifar10", "protocol=study_code", *SIZE, *_data_overrides("paper_cifar10", tmp_path),
            "bits=1.58", f"paths.cache_dir={tmp_path / 'cache'}"]
    cfg = compose(base + ["quant=obc", "quant.calib_passes=2", "quant.bn_tune_batches=4"])
    q = OmegaConf.to_container(cfg.quant, resolve=True)
    assert (q["calib_augment"], q["ternary"], q["bn_tune"], q["fold_bn"]) == ("crop_flip", "affine", "train", False)
    assert list(cfg.dataset.queries) == ["random_aug", "random_aug"] and cfg.attack.offline == "two_sided"
    assert cfg.membership.target == "independent"
    for quant, extra in (("obc", ["quant.calib_passes=2", "quant.bn_tune_batches=4"]), ("adaround", ["quant.iters=10"])):
        _, job = run_job(compose(base + [f"quant={quant}", *extra]), quant)
        res = json.loads((job / "results.json").read_text())
        assert res["config"]["protocol"]["name"] == "study_code"
        assert res["job"]["targets"] == [4]  # the independent target after the 4 pool models
        codes = torch.load(job / "quantized_target4.pt", weights_only=False)["conv1"]["codes"]
        assert codes.min() >= 0 and codes.max() <= 2  # affine ternary codes


def test_independent_target_split_and_references(tiny_cfg, run_job):
    """membership.target=independent: the n_models pool rows stay balanced (each example IN for
    exactly n_models/2 of them), each target gets one more row, exactly half the examples, drawn
    independently (its overlap with a pool row is ≈ N/4, not the pool's structure), and every pool
    model, and no other target, is a reference."""
    from src import pipeline as P

    cfg = tiny_cfg("dataset.n_train=200", "n_models=6", "membership.target=independent", "targets=[0,1]",
                   "train.epochs=1", "attack.bootstrap=5")
    data = make_synthetic(n_train=200, n_test=128, num_classes=4, image_size=8)
    keep = P.membership(cfg, data)
    assert keep.shape == (8, 200) and (keep[:6].sum(0) == 3).all() and (keep[6:].sum(1) == 100).all()
    assert not np.array_equal(keep[6], keep[7])
    overlap = (keep[6] & keep[:6]).sum(1)  # hypergeometric around 50, sd ≈ 3.5
    assert (abs(overlap - 50) < 20).all()
    assert P.target_indices(cfg) == [6, 7] and P.reference_models(cfg, keep, 6) == [0, 1, 2, 3, 4, 5]
    res, _ = run_job(cfg)
    assert res["job"]["targets"] == [6, 7]
    assert res["fp_attacks"]["lira_online"]["per_target"][0]["n_members"] == 100
