"""What the CUDA path records and leaves behind, checked on a CPU: the fast path's cache key names the
precision it trains in, RTN's activation ranges are calibrated on the job's device, and the plain
path neither waits for the device at each step nor leaves Lightning's process-wide flags behind."""
from __future__ import annotations

import pytest
import torch


@pytest.mark.parametrize("bf16, precision, expected", [
    (True, "32-true", "bf16-mixed"), (False, "32-true", "32-true"), (False, "bf16-mixed", "bf16-mixed")])
def test_fast_path_key_records_what_trains_on_cuda(tiny_cfg, bf16, precision, expected):
    """On CUDA with train.bf16 the fast path autocasts in bf16 whatever train.precision says: the key
    must say bf16-mixed, and train.bf16=false keys (and trains) 32-true."""
    from src.pipeline import model_key
    from src.training.fast import fast_precision

    cfg = tiny_cfg("train.fast=true", f"train.bf16={bf16}", f"train.precision={precision}")
    key = model_key(cfg, "digest", 0, "cuda")
    assert key["train"]["path"] == "fast" and key["train"]["precision"] == expected
    assert fast_precision(cfg.train, "cuda") == expected
    # on a CPU train.bf16 does not apply: the key keeps train.precision
    assert model_key(cfg, "digest", 0, "cpu")["train"]["precision"] == precision


def test_fast_trainer_trains_in_the_keyed_precision(tiny_cfg):
    from src.data import load_dataset
    from src.pipeline import model_key
    from src.training.fast import MultiModelTrainer
    from src.training.recipe import Recipe

    cfg = tiny_cfg("train.fast=true", "train.precision=bf16-mixed")
    data = load_dataset(cfg.dataset, cfg.paths.data_dir)
    tr = MultiModelTrainer(Recipe.of(cfg), data.x_train, data.y_train, data.mean, data.std, data.num_classes,
                           [torch.arange(16)], [0], "cpu")
    assert tr.bf16 and tr.precision == model_key(cfg, "d", 0, "cpu")["train"]["precision"] == "bf16-mixed"


def test_rtn_activation_ranges_on_the_given_device(monkeypatch):
    """RTN does not calibrate activations itself: ``quantize`` does, on the device it was given (a
    distinct CPU device object stands in for CUDA here), with the model on that device."""
    import src.quant.interface as I
    from omegaconf import OmegaConf

    from src.models import build_model

    seen = []
    real = I.calibrate_act

    def spy(model, names, x, device, *a):
        seen.append((torch.device(device), next(model.parameters()).device))
        return real(model, names, x, device, *a)

    monkeypatch.setattr(I, "calibrate_act", spy)
    torch.manual_seed(0)
    model = build_model("smallcnn", 10, 3, 8).eval()
    qcfg = OmegaConf.create({"name": "rtn", "act_bits": 8, "symmetric": False})
    dev = torch.device("cpu", 0)
    res = I.quantize(model, 4, qcfg, "uniform", torch.randn(16, 3, 8, 8), "synthetic", dev)
    assert seen and all(d == dev and p.type == "cpu" for d, p in seen)
    assert res.act and all(v["step"] > 0 for v in res.act.values())
    assert next(res.model.parameters()).device == torch.device("cpu")


def test_plain_path_restores_process_flags_and_detects_nonfinite(tiny_cfg):
    """After a model on the plain path the deterministic-algorithms mode is what it was before (the
    Trainer switches it on for the whole process); a non-finite loss still stops training, named."""
    from src.data import load_dataset
    from src.training.pool import train_model
    from src.training.recipe import Recipe

    cfg = tiny_cfg("train.fast=false", "train.epochs=1")
    data = load_dataset(cfg.dataset, cfg.paths.data_dir)
    before = (torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.benchmark)
    train_model(Recipe.of(cfg), data, torch.arange(64), 0, "cpu", name="m")
    assert (torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.benchmark) == before
    bad = tiny_cfg("train.fast=false", "train.epochs=3", "train.lr=1e30")   # step 0 is finite, later ones not
    with pytest.raises(FloatingPointError, match="training m: non-finite loss in epoch [12]"):
        train_model(Recipe.of(bad), data, torch.arange(64), 0, "cpu", name="m")
    assert torch.are_deterministic_algorithms_enabled() == before[0]


def test_training_step_does_not_wait_for_the_device(monkeypatch, tiny_cfg):
    """No Python bool of a tensor inside a training step (each would synchronise with the GPU)."""
    from src.data import load_dataset
    from src.models import build_model
    from src.training.module import Classifier

    cfg = tiny_cfg()
    data = load_dataset(cfg.dataset, cfg.paths.data_dir)
    module = Classifier(build_model(cfg.model, data.num_classes, data.in_channels), data.mean, data.std, 0.1, 0.9,
                        5e-4, 1, 1, num_classes=data.num_classes)
    module.log = lambda *a, **k: None          # logging belongs to the Trainer
    batch = (data.x_train[:8], data.y_train[:8])

    def no_bool(self):
        raise AssertionError("a tensor was read as a Python bool in training_step")

    monkeypatch.setattr(torch.Tensor, "__bool__", no_bool)
    loss = module.training_step(batch, 0)
    monkeypatch.undo()
    assert torch.isfinite(loss) and bool(module._finite)
