"""Training precision and memory format (src/training/precision.py): `auto` follows the device's native
bf16, the resolved precision keys the pool model, and bf16 / channels_last training hands back an fp32,
contiguous model."""
import pytest
import torch
from omegaconf import OmegaConf

from src import pipeline
from src.cache import cache_key
from src.data.datasets import make_synthetic
from src.models import build_model
from src.training import fast as fast_path
from src.training import pool as plain_path
from src.training import precision, train_models
from src.training.recipe import Recipe


def job(**train):
    return OmegaConf.create({
        "model": {"name": "smallcnn", "width": 8},
        "train": {"epochs": 1, "batch_size": 32, "lr": 0.05, "momentum": 0.9, "weight_decay": 5e-4,
                  "schedule": "cosine", "precision": "32-true", "fast": False, **train},
        "dataset": {"augment": {"pad": 1, "flip": True}},
        "progress": False, "seed": 0, "n_models": 4, "pkeep": 0.5,
    })


@pytest.fixture
def native(monkeypatch):
    """Set whether the CPU has native bf16 (the capability check is mocked)."""
    def set_native(value: bool):
        monkeypatch.setattr(precision, "native_bf16_cpu", lambda: value)
    return set_native


def test_names_resolve_to_lightnings():
    for raw, want in (("32", "32-true"), (32, "32-true"), ("32-true", "32-true"), ("bf16-mixed", "bf16-mixed"),
                      ("16-mixed", "16-mixed")):
        assert precision.resolve_precision({"precision": raw}, "cpu") == want
    assert precision.resolve_precision({}, "cpu") == "32-true"


def test_validation_names_the_allowed_precisions():
    from _main_runner import TINY, compose, merge

    from src.validate import ConfigError, validate

    validate(compose(merge(TINY, ["train.precision=auto"])))
    with pytest.raises(ConfigError, match="train.precision=bf16: allowed: auto, 32, 32-true, bf16-mixed"):
        validate(compose(merge(TINY, ["train.precision=bf16"])))


def test_auto_is_bf16_only_with_native_bf16(native):
    native(False)
    assert precision.resolve_precision({"precision": "auto"}, "cpu") == "32-true"
    native(True)
    assert precision.resolve_precision({"precision": "auto"}, "cpu") == "bf16-mixed"


def test_capability_check(monkeypatch):
    try:
        monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
        monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)
        precision.native_bf16_cpu.cache_clear()
        assert not precision.native_bf16_cpu()                  # e.g. an AVX2-only CPU: bf16 is emulated
        monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: True)
        precision.native_bf16_cpu.cache_clear()
        monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")        # oneDNN told not to use it
        assert not precision.native_bf16_cpu()
    finally:
        precision.native_bf16_cpu.cache_clear()


def test_channels_last_auto_is_cuda_only():
    assert not precision.resolve_channels_last({}, "cpu") and precision.resolve_channels_last({}, "cuda")
    assert precision.resolve_channels_last({"channels_last": "auto"}, "cuda:0")
    assert precision.resolve_channels_last({"channels_last": True}, "cpu")
    assert not precision.resolve_channels_last({"channels_last": "false"}, "cuda")


def test_cache_key_holds_the_resolved_precision(native):
    def key(**train):
        return cache_key(pipeline.model_key(job(**train), "digest", 0, "cpu"))

    fp32, bf16 = key(precision="32-true"), key(precision="bf16-mixed")
    assert fp32 != bf16
    assert key(precision="32") == fp32
    assert key(precision="32", channels_last=True) == fp32      # the memory format is speed only
    native(False)
    assert key(precision="auto") == fp32
    native(True)
    assert key(precision="auto") == bf16
    assert pipeline.model_key(job(precision="auto"), "digest", 0, "cpu")["train"]["precision"] == "bf16-mixed"


@pytest.mark.parametrize("fast", [False, True])
def test_bf16_channels_last_training_gives_an_fp32_contiguous_model(fast, monkeypatch):
    data = make_synthetic(n_train=64, n_test=16, num_classes=4, image_size=8, channels=3, noise=60.0, seed=0)
    cfg = job(precision="bf16-mixed", channels_last=True, fast=fast)
    seen = []

    def record(module, inputs, output):   # the forward pass ran in bf16 and on channels_last inputs
        seen.append((output.dtype, inputs[0].is_contiguous(memory_format=torch.channels_last)))

    def hooked(*args, **kwargs):
        m = build_model(*args, **kwargs)
        next(x for x in m.modules() if isinstance(x, torch.nn.Conv2d)).register_forward_hook(record)
        return m

    for path in (fast_path, plain_path):
        monkeypatch.setattr(path, "build_model", hooked)
    (model,) = train_models(Recipe.of(cfg), data, [torch.arange(64)], [3], "cpu")
    assert seen and all(dt == torch.bfloat16 and cl for dt, cl in seen)
    assert all(p.dtype == torch.float32 and p.is_contiguous() for p in model.parameters())
    assert all(b.dtype != torch.bfloat16 for b in model.buffers())
    assert not model.training
    out = model((data.x_test.float() - 128) / 64)
    assert out.dtype == torch.float32 and torch.isfinite(out).all()
