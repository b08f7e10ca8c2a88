"""The fast multi-model trainer (src/training/fast.py) on CPU: same recipe as the plain path,
each model trained only on its own members, deterministic, non-finite losses named."""
import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from torch import nn

from src.attacks.scores import compute_phi
from src.data.augment import random_crop_flip
from src.data.datasets import ImageData, make_synthetic
from src.training import fast
from src.attacks.scores import compute_phi_fast
from src.training.fast import FastOptions, MultiModelTrainer, crop_flip, train_models_fast, use_fast_path
from src.training.pool import evaluate_accuracy, train_model
from src.training.recipe import Recipe


def make_job(epochs=6, flip=True, **train):
    return OmegaConf.create({
        "model": {"name": "smallcnn", "width": 8},
        "train": {"epochs": epochs, "batch_size": 32, "lr": 0.05, "momentum": 0.9, "weight_decay": 5e-4,
                  "schedule": "cosine", "precision": "32-true", **train},
        "dataset": {"augment": {"pad": 1, "flip": flip}},
        "device": "cpu", "progress": False, "seed": 0, "n_models": 4, "pkeep": 0.5,
    })


def make_cfg(epochs=6, flip=True, **train) -> Recipe:
    return Recipe.of(make_job(epochs, flip, **train))


def states_equal(a: nn.Module, b: nn.Module) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


def test_crop_flip_is_random_crop_flip_with_draws_on_device():
    x = torch.randint(0, 256, (32, 3, 8, 8), dtype=torch.uint8)
    for pad, flip in ((0, True), (2, False), (4, True)):
        ref = random_crop_flip(x, pad, flip, torch.Generator().manual_seed(5))
        assert torch.equal(crop_flip(x, pad, flip, torch.Generator().manual_seed(5)), ref)


def test_options_and_dispatch():
    cfg = make_job()
    assert not use_fast_path(cfg.train, "cpu") and use_fast_path(cfg.train, "cuda")  # auto = CUDA only
    cfg.train.fast = True
    assert use_fast_path(cfg.train, "cpu")
    cfg.train.fast = "false"
    assert not use_fast_path(cfg.train, "cuda")
    assert FastOptions.from_cfg(OmegaConf.create({})) == FastOptions(4, None, None, True, False)
    o = FastOptions.from_cfg(OmegaConf.create({"compile": "reduce-overhead", "models_per_step": 8, "bf16": False}))
    assert (o.compile, o.models_per_step, o.bf16) == ("reduce-overhead", 8, False)
    assert FastOptions.from_cfg(OmegaConf.create({"compile": True})).compile == "default"


def test_accuracy_comparable_to_plain_path():
    """Two models trained together reach the plain path's test accuracy on the same data.

    Tolerance 0.08: with 256 test images at ~95% accuracy the binomial s.d. is ~0.014, and the two
    paths differ only in shuffling/augmentation draws (seed-to-seed spread of the same size), so
    0.08 is > 5 s.d.; a broken recipe (wrong schedule, no momentum, mixed-up members) lands far lower.
    """
    data = make_synthetic(n_train=512, n_test=256, num_classes=4, image_size=8, noise=60.0)
    cfg = make_cfg(epochs=8, flip=False)  # the prototypes are not mirror-symmetric
    members = [torch.arange(0, 256), torch.arange(256, 512)]
    models = train_models_fast(cfg, data, members, [1, 2], "cpu")
    plain = train_model(cfg, data, members[0], 1, "cpu")
    acc_plain = evaluate_accuracy(plain, data.x_test, data.y_test, data.mean, data.std)
    for m in models:
        acc = evaluate_accuracy(m, data.x_test, data.y_test, data.mean, data.std)
        assert acc > 0.6 and abs(acc - acc_plain) <= 0.08, (acc, acc_plain)
        assert not m.training and next(m.parameters()).device.type == "cpu"


def test_each_model_sees_only_its_members():
    """Same images twice, with labels y for the first copy and (y+1) mod C for the second: model 0
    trains on copy 1 only, model 1 on copy 2 only. Any leak between the models' batches would pull
    both towards chance on the other labelling."""
    base = make_synthetic(n_train=256, n_test=8, num_classes=4, image_size=8, noise=30.0, seed=3)
    x = torch.cat([base.x_train, base.x_train])
    y = torch.cat([base.y_train, (base.y_train + 1) % 4])
    data = ImageData("twin", x, y, base.x_test, base.y_test, base.mean, base.std, 4)
    members = [torch.arange(0, 256), torch.arange(256, 512)]
    m0, m1 = train_models_fast(make_cfg(epochs=6, flip=False), data, members, [0, 1], "cpu")
    acc = lambda m, yy: evaluate_accuracy(m, base.x_train, yy, base.mean, base.std)  # noqa: E731
    assert acc(m0, base.y_train) > 0.9 and acc(m0, (base.y_train + 1) % 4) < 0.1
    assert acc(m1, (base.y_train + 1) % 4) > 0.9 and acc(m1, base.y_train) < 0.1


def test_batches_are_drawn_from_own_members_only():
    data = make_synthetic(n_train=200, n_test=8, num_classes=4, image_size=8)
    members = [torch.arange(0, 70), torch.arange(100, 200)]
    seen = {0: [], 1: []}

    class Spy(MultiModelTrainer):
        def _batch(self, slot):
            xb, yb = super()._batch(slot)
            b = len(yb)
            seen[slot.index].append(slot.order[((slot.pos - 1) % slot.steps_per_epoch) * b:][:b].clone())
            return xb, yb

    tr = Spy(make_cfg(epochs=1), data.x_train, data.y_train, data.mean, data.std, 4, members, [0, 1], "cpu")
    tr.epoch()
    assert [s.steps_per_epoch for s in tr.slots] == [2, 3]                     # drop_last, as the DataLoader
    for k in (0, 1):
        got = torch.cat(seen[k])
        assert set(got.tolist()) <= set(members[k].tolist()) and len(set(got.tolist())) == len(got)


def test_non_finite_loss_names_the_model(monkeypatch):
    calls = {"n": 0}
    real = fast.build_model

    class Poisoned(nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, x):
            return self.inner(x) * float("nan")

    def build(*a, **k):
        calls["n"] += 1
        m = real(*a, **k)
        return Poisoned(m) if calls["n"] == 2 else m

    monkeypatch.setattr(fast, "build_model", build)
    data = make_synthetic(n_train=128, n_test=8, num_classes=4, image_size=8)
    with pytest.raises(FloatingPointError, match=r"model index 1 \(pool model 7\)"):
        train_models_fast(make_cfg(epochs=2), data, [torch.arange(64), torch.arange(64, 128)], [0, 1], "cpu",
                          names=["pool model 3", "pool model 7"])


def test_deterministic_given_seeds():
    data = make_synthetic(n_train=128, n_test=8, num_classes=4, image_size=8)
    members = [torch.arange(0, 64), torch.arange(64, 128)]
    a = train_models_fast(make_cfg(epochs=2), data, members, [4, 5], "cpu")
    b = train_models_fast(make_cfg(epochs=2), data, members, [4, 5], "cpu")
    c = train_models_fast(make_cfg(epochs=2), data, members, [4, 6], "cpu")
    assert all(states_equal(x, y) for x, y in zip(a, b))
    assert states_equal(a[0], c[0]) and not states_equal(a[1], c[1])  # seeds are per model


def test_graph_step_body_matches_eager_step():
    """``cuda_graphs``: the captured body (lr from a device step counter, tensor lr) runs eagerly on
    CPU; after a few steps it matches the float-lr path up to float32 rounding of the schedule."""
    data = make_synthetic(n_train=128, n_test=8, num_classes=4, image_size=8)
    members = [torch.arange(0, 128)]
    ref = MultiModelTrainer(make_cfg(epochs=2), data.x_train, data.y_train, data.mean, data.std, 4, members, [0],
                            "cpu")
    gr = MultiModelTrainer(make_cfg(epochs=2, cuda_graphs=True), data.x_train, data.y_train, data.mean, data.std,
                           4, members, [0], "cpu")
    ref.steps(5)
    gr.steps(5)
    assert float(gr.slots[0].t_dev) == 5
    for p, q in zip(ref.slots[0].model.parameters(), gr.slots[0].model.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-5)


def test_compute_phi_fast_equals_compute_phi():
    data = make_synthetic(n_train=96, n_test=8, num_classes=4, image_size=8, channels=3)
    queries = ["identity", "mirror", "shift_1_0"]
    torch.manual_seed(0)
    models = [fast.build_model("smallcnn", 4, 3, 8) for _ in range(3)]
    for m in models:  # non-trivial BatchNorm statistics
        m.train()
        m(torch.randn(64, 3, 8, 8) * 2 + 1)
        m.eval()
    phi = compute_phi_fast(models, data.x_train, data.y_train, data.mean, data.std, queries, "cpu", batch_size=40)
    ref = np.stack([compute_phi(m, data.x_train, data.y_train, data.mean, data.std, queries) for m in models])
    assert phi.shape == (3, 96, 3) and phi.dtype == np.float32
    np.testing.assert_allclose(phi, ref, atol=1e-5, rtol=0)


def test_train_pool_on_the_fast_path_trains_in_groups_and_fills_the_cache(tmp_path, monkeypatch):
    """``pipeline.train_pool`` on the fast path trains ``models_per_step`` models per call of the fast
    trainer (4 models, K = 3: groups [0, 1, 2] and [3]), writes the artifacts ``get_pool_model`` loads,
    and trains nothing once they are cached."""
    from src import pipeline
    from src.cache import ArtifactStore
    from src.data import keep_matrix
    from src.pipeline import get_pool_model, train_pool

    data = make_synthetic(n_train=64, n_test=16, num_classes=4, image_size=8)
    cfg = make_job(epochs=1, models_per_step=3, fast=True)
    cfg.dataset.name = "synthetic"
    cfg.dataset.queries = ["identity"]
    keep = keep_matrix(4, 64, 0.5, 0)
    store = ArtifactStore(tmp_path)
    groups = []
    real = pipeline.train_models

    def spy(cfg_, data_, members, seeds, *a, **k):
        groups.append(list(seeds))
        return real(cfg_, data_, members, seeds, *a, **k)

    monkeypatch.setattr(pipeline, "train_models", spy)
    pool = train_pool(cfg, data, keep, store, device="cpu")
    assert groups == [[pipeline.model_seed(cfg, m) for m in (0, 1, 2)], [pipeline.model_seed(cfg, 3)]]
    assert pool.phi.shape == (4, 64, 1)
    train_pool(cfg, data, keep, store, device="cpu")
    assert len(groups) == 2                                                       # all cached now
    model, info = get_pool_model(cfg, data, keep, 2, store, "cpu")                      # loads, does not train
    assert 0.0 <= info["test_acc"] <= 1.0 and isinstance(model, nn.Module)
