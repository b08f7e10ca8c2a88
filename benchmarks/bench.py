"""Throughput benchmark of the performance path, in one run on the same data and model.

    python -m benchmarks.bench [--device cpu|cuda] [--size tiny|small|cifar] [--data DIR]
                               [--out outputs/bench/bench.json]

(a) reference-style training: in-memory PIL images, per-image torchvision transforms
    (RandomCrop(32, padding=4) + RandomHorizontalFlip + ToTensor + Normalize) in a DataLoader
    (4 workers on GPU, 0 on CPU), fp32, batch 128, one model, SGD;
(b) the fast trainer (src/training/fast.py): K models per step, aggregate images/s, for each
    variant (eager / torch.compile / whole-step CUDA graphs), K = the paper preset's models per step;
    ratio = b/a at the best variant; the paper-protocol time 65 × 25,000 × 100 / b at the variant the
    preset runs (conf/train/paper.yaml), the best one's beside it;
(c) scoring: φ for K models × examples × 2 queries (``compute_phi_fast``) vs ``compute_phi``;
(d) seconds per quantizer (RTN, AdaRound, BRECQ, OBC) at 2 bits with conf/quant/*.yaml settings as
    the paper preset composes them (its n_calib and iters; reduced on the small sizes, and extrapolated linearly in ``iters`` where the default budget
    does not fit; the table says which);
(e) CPU only: the plain training path (``src.training.pool.train_model``, Lightning Trainer) against a
    bare PyTorch loop (randperm batches, same batched augmentation and normalisation, SGD + cosine
    LambdaLR, no Lightning) on the model and recipe of ``experiment=cifar10_cpu`` (smallcnn width 32,
    16x16, batch 64, one thread), ~2,000 members, the same epochs; whole calls timed (model build and
    Trainer set-up count against the plain path), best of ``pvb_repeats`` interleaved runs;
    ratio = plain / bare;
(f) CPU only: one model's training steps on the plain path and on the fast trainer for each
    ``train.precision`` (32-true, bf16-mixed) x memory format (NCHW, channels_last), interleaved,
    best of ``prec_rounds``; ratios to the same path's fp32 NCHW; the CPU and its bf16 support named.
    ``--only precision`` runs this section alone.

All rates are warm: first iterations (and compilation / graph capture) are excluded, and the device
is synchronised before and after each timed region. Default: cuda + cifar if CUDA is available,
else cpu + small.

Robustness (the GPU run happens once): every section and every variant / quantizer reports its own
failure in its row; the JSON is rewritten after each section; the torch.compile variant runs last
(its cold compile is the least predictable cost); with a time budget (``--budget``, default 420 s for
cifar) sections that would start too late are reported as skipped.
"""
from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import platform
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
PROTOCOL = {"models": 65, "images": 25_000, "epochs": 100}
# the preset whose quantizer budgets the timings follow (n_calib, iters: conf/quant/*.yaml under it)
PAPER_EXPERIMENT = "paper_cifar10"

# (f): (model, width, image px, batch, warm-up steps, timed steps): the cifar10_cpu model, ResNet-18
# narrow and at full width; a few seconds per cell on 2 cores
PREC_MODELS = [("smallcnn", 32, 16, 64, 2, 16), ("resnet18", 16, 32, 128, 1, 4), ("resnet18", 64, 32, 128, 1, 2)]
# Step counts per size. tiny: the unit test; small: ~2-3 min on 2 CPU cores; cifar: < 8 min on an H200.
SIZES = {
    "tiny": dict(model="smallcnn", width=8, n_train=96, image_size=16, ref_batch=16, ref_warm=1, ref_steps=2,
                 k=2, batch=16, fast_warm=1, fast_steps=2, score_n=64, score_batch=64,
                 quant_model={}, quant_calib=16, quant_iters=[2, 4], quant_calib_batch=16,
                 pvb_n=96, pvb_epochs=1, pvb_repeats=1,
                 prec_models=[("smallcnn", 8, 8, 16, 1, 1)], prec_rounds=1),
    "small": dict(model="resnet18", width=64, n_train=512, image_size=32, ref_batch=128, ref_warm=1, ref_steps=2,
                  k=2, batch=128, fast_warm=1, fast_steps=1, score_n=128, score_batch=128,
                  quant_model={"obc": "smallcnn", "brecq": "smallcnn", "adaround": "smallcnn"}, quant_calib=64,
                  quant_iters=[4, 8], quant_calib_batch=64, pvb_n=2000, pvb_epochs=8, pvb_repeats=2,
                  prec_models=PREC_MODELS, prec_rounds=2),
    "cifar": dict(model="resnet18", width=64, n_train=None, image_size=32, ref_batch=128, ref_warm=20, ref_steps=150,
                  k=4, batch=128, fast_warm=10, fast_steps=60, score_n=25_000, score_batch=4096,
                  quant_model={}, quant_calib=None, quant_iters=[250, 500], quant_calib_batch=128),
}
VARIANTS_CUDA = ("eager", "compile", "graphs", "graphs_k8")
VARIANTS_CPU = ("eager",)
# Run after scoring and the quantizers: torch.compile's first call (Dynamo + Inductor + Triton
# builds, ~1-2 min cold) is the least predictable part of the GPU run, so it must not starve the rest.
DEFERRED_VARIANTS = ("compile",)
# Soft time budget (s, from the start of run()) per size: a section that would start later is
# skipped and reported as such. The H200 slot is 8 minutes including start-up and data loading.
BUDGET_S = {"cifar": 420.0}
MIN_LEFT_FOR_COMPILE_S = 150.0


def _sync(device):
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


def _free(device):
    gc.collect()
    if str(device).startswith("cuda"):
        try:  # after a sticky CUDA error this raises too; the failure is already in its row
            torch.cuda.empty_cache()
        except Exception:
            pass


def _error(e: BaseException) -> str:
    return f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"


# ------------------------------------------------------------------------------------------ data
def load_data(size: str, spec: dict, data_dir: str | None):
    from src.data.datasets import CIFAR_STATS, load_imagefolder, make_synthetic

    if size == "cifar":
        if not data_dir:
            raise SystemExit("--size cifar needs --data DIR holding train/<class>/*.jpg and test/<class>/*.jpg "
                             "(unpack /work/shared/data/cifar10-jpeg.tar.gz)")
        data = load_imagefolder(data_dir, 32, name="cifar10")
        data.mean, data.std = CIFAR_STATS["cifar10"]
        return data
    return make_synthetic(n_train=spec["n_train"], n_test=16, num_classes=10, image_size=spec["image_size"],
                          channels=3, noise=60.0, seed=0)


def make_model(name: str, width: int, num_classes: int = 10):
    from src.models import build_model

    return build_model(name, num_classes, 3, width)


# ----------------------------------------------------------------------------- (a) reference loop
class PILDataset(torch.utils.data.Dataset):
    """The reference input pipeline: one PIL image per example, torchvision transforms per image."""

    def __init__(self, x_uint8: torch.Tensor, y: torch.Tensor, transform):
        from PIL import Image

        arr = x_uint8.permute(0, 2, 3, 1).contiguous().numpy()
        self.images = [Image.fromarray(a) for a in arr]
        self.labels = y.tolist()
        self.transform = transform

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        return self.transform(self.images[i]), self.labels[i]


def bench_reference(data, spec, device, workers: int | None = None) -> dict:
    from torchvision import transforms as T

    size = data.image_size
    tf = T.Compose([T.RandomCrop(size, padding=4), T.RandomHorizontalFlip(), T.ToTensor(),
                    T.Normalize(data.mean, data.std)])
    cuda = str(device).startswith("cuda")
    workers = (4 if cuda else 0) if workers is None else workers
    ds = PILDataset(data.x_train, data.y_train, tf)
    loader = torch.utils.data.DataLoader(ds, batch_size=spec["ref_batch"], shuffle=True, num_workers=workers,
                                         pin_memory=cuda, drop_last=True, persistent_workers=workers > 0,
                                         # a stuck worker raises (and is reported) instead of hanging the GPU slot
                                         timeout=120 if workers > 0 else 0)
    torch.manual_seed(0)
    model = make_model(spec["model"], spec["width"], data.num_classes).to(device).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    loss_fn = torch.nn.CrossEntropyLoss()

    def batches():
        while True:
            yield from loader

    it = batches()

    def step():
        x, y = next(it)
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(model(x), y)
        loss.backward()
        opt.step()

    for _ in range(spec["ref_warm"]):
        step()
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(spec["ref_steps"]):
        step()
    _sync(device)
    dt = time.perf_counter() - t0
    del it, loader
    n = spec["ref_steps"] * spec["ref_batch"]
    return {"images_per_s": n / dt, "seconds": dt, "images": n, "batch": spec["ref_batch"], "num_workers": workers,
            "precision": "fp32", "models": 1}


# ----------------------------------------------------------------------------- (b) fast trainer
def _fast_cfg(spec, variant: str, k: int):
    from omegaconf import OmegaConf

    train = {"epochs": 100, "batch_size": spec["batch"], "lr": 0.1, "momentum": 0.9, "weight_decay": 5e-4,
             "schedule": "cosine", "models_per_step": k, "compile": variant == "compile",
             "cuda_graphs": variant.startswith("graphs"), "bf16": True, "channels_last": True}
    return OmegaConf.create({"model": {"name": spec["model"], "width": spec["width"]}, "train": train,
                             "dataset": {"augment": {"pad": 4, "flip": True}}})


def bench_fast(data, spec, device, variant: str) -> dict:
    from src.training.fast import MultiModelTrainer, _nondeterministic_ok
    from src.training.recipe import Recipe

    k = 8 if variant.endswith("_k8") else spec["k"]
    cfg = _fast_cfg(spec, variant, k)
    n = len(data.y_train)
    g = torch.Generator().manual_seed(1)
    members = [torch.randperm(n, generator=g)[: n // 2] for _ in range(k)]  # each model: a random half
    with _nondeterministic_ok(str(device).startswith("cuda")):
        tr = MultiModelTrainer(Recipe.of(cfg), data.x_train, data.y_train, data.mean, data.std, data.num_classes, members,
                               list(range(k)), device)
        t0 = time.perf_counter()
        tr.steps(spec["fast_warm"] + (tr.GRAPH_WARMUP if tr.graphs else 0))  # compile / capture happen here
        tr.synchronize()
        warm = time.perf_counter() - t0
        t0 = time.perf_counter()
        tr.steps(spec["fast_steps"])
        tr.synchronize()
        dt = time.perf_counter() - t0
        try:  # lr 0.1 from step 0 on random init: a diverging model must not discard the timing
            losses = tr.check_losses(0)
            loss_note = {"mean_loss": [float(v) for v in losses]}
        except FloatingPointError as e:
            loss_note = {"loss_error": _error(e)}
    imgs = spec["fast_steps"] * k * spec["batch"]
    del tr
    _free(device)
    return {"images_per_s": imgs / dt, "seconds": dt, "images": imgs, "warmup_s": warm, "models_per_step": k,
            "batch": spec["batch"], "bf16": str(device).startswith("cuda"),
            "channels_last": str(device).startswith("cuda"), **loss_note}


# ----------------------------------------------------------------------------------- (c) scoring
def bench_scoring(data, spec, device) -> dict:
    from src.attacks.scores import compute_phi
    from src.attacks.scores import compute_phi_fast

    k, n, queries = spec["k"], min(spec["score_n"], len(data.y_train)), ["identity", "mirror"]
    torch.manual_seed(0)
    models = [make_model(spec["model"], spec["width"], data.num_classes).eval() for _ in range(k)]
    x, y = data.x_train[:n], data.y_train[:n]
    bs = spec["score_batch"]
    compute_phi_fast(models, x[:bs], y[:bs], data.mean, data.std, queries, device, bs)  # warm-up
    _sync(device)
    t0 = time.perf_counter()
    compute_phi_fast(models, x, y, data.mean, data.std, queries, device, bs)
    _sync(device)
    dt = time.perf_counter() - t0
    # the plain scorer, one model, fp32, its default batch
    compute_phi(models[0], x[:256], y[:256], data.mean, data.std, queries, device)
    _sync(device)
    t1 = time.perf_counter()
    compute_phi(models[0], x, y, data.mean, data.std, queries, device)
    _sync(device)
    dt_ref = time.perf_counter() - t1
    fast_rate, ref_rate = k * n * len(queries) / dt, n * len(queries) / dt_ref
    _free(device)
    return {"images_per_s": fast_rate, "seconds": dt, "models": k, "examples": n, "queries": len(queries),
            "batch": bs, "bf16": str(device).startswith("cuda"), "reference_images_per_s": ref_rate,
            "ratio": fast_rate / ref_rate}


# --------------------------------------------------------------------------------- (d) quantizers
def _calibrated_model(name, width, data, device, n_bn=256):
    """A model with non-trivial BatchNorm statistics (a few train-mode passes), so BN folding and the
    reconstruction see realistic activations. Weights are random: timing does not depend on them."""
    from src.data import normalize

    torch.manual_seed(0)
    model = make_model(name, width, data.num_classes).to(device).train()
    with torch.no_grad():
        for i in range(0, min(n_bn, len(data.y_train)), 64):
            model(normalize(data.x_train[i:i + 64].to(device), data.mean, data.std))
    return model.cpu().eval()


def paper_quant_config(method: str):
    """``conf/quant/<method>.yaml`` as the paper preset composes it: its calibration size and
    iterations (the embedded default's smaller budget does not apply)."""
    from src.quant import quant_config

    return quant_config(method, (f"experiment={PAPER_EXPERIMENT}",))


def time_quantizer(model, calib, qcfg, quant_iters, device, bits: float = 2, policy: str = "uniform",
                   overrides=None) -> dict:
    """Seconds of ``quantize``. A method with an iteration budget is timed at the two budgets
    ``quant_iters`` and projected linearly to ``qcfg.iters`` (the per-iteration cost is constant)."""
    from src.quant import quantize

    qcfg = qcfg.copy()
    if "iters" not in qcfg:
        _sync(device)
        return {"seconds": quantize(model, bits, qcfg, policy, calib, "bench", device, overrides=overrides).seconds}
    default_iters = int(qcfg.iters)
    secs = []
    for it in quant_iters:
        qcfg.iters = it
        _sync(device)
        secs.append(quantize(model, bits, qcfg, policy, calib, "bench", device, overrides=overrides).seconds)
    (i1, i2), (s1, s2) = quant_iters, secs
    per_iter = max(0.0, (s2 - s1) / (i2 - i1))
    return dict(seconds=s2, iters=i2, seconds_per_iter=per_iter,
                projected_seconds=s2 + per_iter * (default_iters - i2), default_iters=default_iters)


def bench_quant(data, spec, device, methods, out: dict | None = None, deadline: float | None = None,
                on_row=None) -> dict:
    """Fills ``out`` (returned) method by method; ``on_row()`` after each (incremental JSON);
    methods that would start after ``deadline`` (perf_counter) are reported as skipped."""
    from src.data import normalize

    out = {} if out is None else out
    for m in methods:
        row: dict = {}
        if deadline is not None and time.perf_counter() > deadline:
            out[m] = {"error": "skipped: time budget"}
            continue
        try:
            qcfg = paper_quant_config(m)
            qcfg.progress = False
            model_name = spec["quant_model"].get(m, spec["model"])
            n_calib = int(qcfg.get("n_calib", 1024)) if spec["quant_calib"] is None else spec["quant_calib"]
            n_calib = min(n_calib, len(data.y_train))
            reduced = []
            if spec["quant_calib"] is not None:
                qcfg.n_calib = n_calib
                reduced.append(f"n_calib={n_calib}")
            if "calib_batch" in qcfg and spec["quant_calib_batch"] < int(qcfg.calib_batch):
                qcfg.calib_batch = spec["quant_calib_batch"]
            model = _calibrated_model(model_name, spec["width"] if model_name == spec["model"] else 16, data, device)
            calib = normalize(data.x_train[:n_calib], data.mean, data.std)
            row.update(model=model_name, n_calib=n_calib)
            row.update(time_quantizer(model, calib, qcfg, spec["quant_iters"], device))
            if "default_iters" in row:
                i1, i2 = spec["quant_iters"]
                reduced.append(f"iters={i1},{i2} (default {row['default_iters']}, projected)")
            if model_name != spec["model"]:
                reduced.append(f"model={model_name}")
            row["reduced"] = ", ".join(reduced)
        except Exception as e:  # a method still being written, or failing: report, continue
            row["error"] = _error(e)
        out[m] = row
        _free(device)  # outside the except block: the traceback no longer pins the failed run's tensors
        if on_row is not None:
            on_row()
    return out


# ------------------------------------------------------------- (e) plain training path vs bare loop
def _preset_train_cfg(epochs: int):
    """The model + recipe of ``conf/experiment/cifar10_cpu.yaml`` merged onto its groups' defaults
    (read from the YAML files, so the bench follows the preset), with ``epochs`` replaced."""
    from omegaconf import OmegaConf

    conf = REPO / "conf"
    pre = OmegaConf.load(conf / "experiment" / "cifar10_cpu.yaml")
    base_train = OmegaConf.load(conf / "train" / "default.yaml")
    base_model = OmegaConf.load(conf / "model" / "smallcnn.yaml")
    cfg = OmegaConf.create({"train": OmegaConf.merge(base_train, pre.get("train", {})),
                            "model": OmegaConf.merge(base_model, pre.get("model", {})),
                            "dataset": {"augment": pre.dataset.augment}, "device": "cpu", "num_workers": 0,
                            "progress": False})
    cfg.train.epochs = int(epochs)
    cfg.train.fast = False
    cfg.train.precision, cfg.train.channels_last = "32-true", False  # the bare loop is fp32 NCHW; (f) has bf16
    return cfg, int(pre.dataset.get("image_size") or 32), int(pre.get("num_threads") or 0)


def bare_train(cfg, data, members: torch.Tensor, seed: int) -> torch.nn.Module:
    """The recipe as a bare PyTorch loop: what the plain path computes, without Lightning."""
    import math

    import torch.nn.functional as F

    from src.data.augment import normalize, random_crop_flip

    torch.manual_seed(seed)
    model = make_model(cfg.model.name, int(cfg.model.width), data.num_classes)
    x, y = data.x_train[members], data.y_train[members]
    tc, aug = cfg.train, cfg.dataset.augment
    bs, n = int(tc.batch_size), len(y)
    steps = n // bs if n > bs else 1
    total = max(1, int(tc.epochs) * steps)
    opt = torch.optim.SGD(model.parameters(), lr=float(tc.lr), momentum=float(tc.momentum),
                          weight_decay=float(tc.weight_decay))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda t: 0.5 * (1 + math.cos(math.pi * min(t, total) / total)))
    g = torch.Generator().manual_seed(seed)
    pad, flip = int(aug.get("pad", 0)), bool(aug.get("flip", False))
    model.train()
    for _ in range(int(tc.epochs)):
        perm = torch.randperm(n, generator=g)
        for s in range(steps):
            idx = perm[s * bs:(s + 1) * bs]
            xb = x[idx]
            if pad or flip:
                xb = random_crop_flip(xb, pad, flip)
            loss = F.cross_entropy(model(normalize(xb, data.mean, data.std)), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    return model.eval()


def bench_plain_vs_bare(spec, data_dir: str | None = None) -> dict:
    from src.data.datasets import load_imagefolder, make_synthetic
    from src.training.pool import train_model
    from src.training.recipe import Recipe

    cfg, size, threads = _preset_train_cfg(spec["pvb_epochs"])
    n = int(spec["pvb_n"])
    if data_dir:
        data = load_imagefolder(data_dir, size, max_train=n, max_test=16)
    else:
        data = make_synthetic(n_train=n, n_test=16, num_classes=10, image_size=size, channels=3, seed=0)
    members = torch.arange(len(data.y_train))
    bs = int(cfg.train.batch_size)
    steps = len(members) // bs if len(members) > bs else 1
    images = int(cfg.train.epochs) * steps * min(bs, len(members))
    old_threads = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    times = {"plain": [], "bare": []}
    cpu = {"plain": [], "bare": []}
    try:
        for r in range(int(spec.get("pvb_repeats", 1))):  # interleaved: load changes hit both alike
            for name, fn in (("plain", lambda: train_model(Recipe.of(cfg), data, members, 1000 + r, "cpu")),
                             ("bare", lambda: bare_train(cfg, data, members, 1000 + r))):
                t0, c0 = time.perf_counter(), time.process_time()
                fn()
                times[name].append(time.perf_counter() - t0)
                cpu[name].append(time.process_time() - c0)
    finally:
        torch.set_num_threads(old_threads)
    plain, bare = min(times["plain"]), min(times["bare"])
    # CPU seconds of this process: on a shared machine they measure the work, wall time also the
    # other tenants' load (both are reported; the headline ratio is wall time, best of the repeats)
    plain_cpu, bare_cpu = min(cpu["plain"]), min(cpu["bare"])
    return {"model": f"{cfg.model.name} width {cfg.model.width}", "image_size": size, "members": len(members),
            "epochs": int(cfg.train.epochs), "batch": bs, "threads": threads or old_threads, "images": images,
            "plain_seconds": times["plain"], "bare_seconds": times["bare"],
            "plain_cpu_seconds": cpu["plain"], "bare_cpu_seconds": cpu["bare"],
            "plain_images_per_s": images / plain, "bare_images_per_s": images / bare,
            "ratio": bare / plain, "ratio_cpu": bare_cpu / plain_cpu}


# --------------------------------------------- (f) training precision x memory format, CPU
PRECISION_CELLS = (("32-true", False), ("32-true", True), ("bf16-mixed", False), ("bf16-mixed", True))


def cpu_name() -> str:
    """The CPU's model name, torch's kernel capability and whether bf16 is native (what `auto` reads)."""
    from src.training.precision import native_bf16_cpu

    model = platform.processor() or "cpu"
    with contextlib.suppress(OSError):
        model = next((ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name")),
                     model)
    return (f"{model}; ATen {torch.backends.cpu.get_cpu_capability()}; "
            f"native bf16 {'yes' if native_bf16_cpu() else 'no'}")


class _StepTimer:
    """Lightning callback: wall and process CPU time from the start of batch ``warm`` to the end of the
    last batch."""

    def __init__(self, warm: int, device: str = "cpu"):
        import lightning as L

        outer = self

        class CB(L.Callback):
            def on_train_batch_start(self, trainer, module, batch, i):
                if trainer.global_step == outer.warm:
                    _sync(device)
                    outer.t0 = (time.perf_counter(), time.process_time())

            def on_train_batch_end(self, trainer, module, outputs, batch, i):
                if i == trainer.num_training_batches - 1:   # one epoch: the clock stops after its last step
                    _sync(device)
                outer.steps, outer.t1 = trainer.global_step, (time.perf_counter(), time.process_time())

        self.warm, self.t0, self.t1, self.steps, self.callback = warm, None, None, 0, CB()


def _precision_cfg(model: str, width: int, batch: int, precision: str, channels_last: bool, fast: bool):
    from omegaconf import OmegaConf

    return OmegaConf.create({
        "model": {"name": model, "width": width},
        "train": {"epochs": 1, "batch_size": batch, "lr": 0.05, "momentum": 0.9, "weight_decay": 5e-4,
                  "schedule": "cosine", "precision": precision, "channels_last": channels_last, "fast": fast,
                  "models_per_step": 1, "bf16": precision == "bf16-mixed"},
        "dataset": {"augment": {"pad": 0, "flip": False}}, "progress": False})


def bench_precision(spec, clock: str = "wall", device: str = "cpu") -> dict:
    """img/s of one model's training steps on each path (plain Lightning, fast trainer) for each
    precision x memory format, interleaved, best of ``prec_rounds``; ratios to that path's fp32 NCHW.
    ``clock``: wall time, or this process's CPU time (on a machine shared with other work it measures
    the work and not the other tenants' load; with one thread both count the same steps)."""
    c = 0 if clock == "wall" else 1
    from src.data.datasets import make_synthetic
    from src.training.fast import MultiModelTrainer
    from src.training.pool import train_model
    from src.training.recipe import Recipe

    rounds = int(spec["prec_rounds"])
    rows = []
    for name, width, px, batch, warm, steps in spec["prec_models"]:
        n = batch * (warm + steps)
        data = make_synthetic(n_train=n, n_test=8, num_classes=10, image_size=px, channels=3, seed=0)
        members = torch.arange(n)
        best = {}
        for _ in range(rounds):   # interleaved: the other tenants' load hits every cell alike
            for path in ("plain", "fast"):
                for prec, cl in PRECISION_CELLS:
                    cfg = _precision_cfg(name, width, batch, prec, cl, path == "fast")
                    if path == "plain":
                        timer = _StepTimer(warm, device)
                        train_model(Recipe.of(cfg), data, members, 0, device, callbacks=[timer.callback])
                        rate = (timer.steps - warm) * batch / (timer.t1[c] - timer.t0[c])
                    else:
                        tr = MultiModelTrainer(Recipe.of(cfg), data.x_train, data.y_train, data.mean, data.std,
                                               data.num_classes, [members], [0], device)
                        tr.steps(warm)
                        _sync(device)
                        t0 = (time.perf_counter(), time.process_time())
                        tr.steps(steps)
                        _sync(device)
                        rate = steps * batch / ((time.perf_counter(), time.process_time())[c] - t0[c])
                    key = (path, prec, cl)
                    best[key] = max(best.get(key, 0.0), rate)
        for path in ("plain", "fast"):
            base = best[(path, "32-true", False)]
            rows.append({"model": f"{name} w{width} {px}px b{batch}", "path": path, "steps": steps,
                         "fp32_images_per_s": base,
                         "images_per_s": {f"{p}{' CL' if cl else ''}": best[(path, p, cl)]
                                          for p, cl in PRECISION_CELLS},
                         "ratio": {f"{p}{' CL' if cl else ''}": best[(path, p, cl)] / base
                                   for p, cl in PRECISION_CELLS}})
    return {"device": device, "cpu": cpu_name(), "threads": torch.get_num_threads(), "clock": clock, "rounds": rounds, "rows": rows}


def format_precision(p: dict) -> list[str]:
    lines = [f"(f) training precision x memory format: {p['cpu']}, {p['threads']} thread(s), {p['clock']} clock; "
             "ratio to the same path's fp32 NCHW",
             f"    {'model':<26}{'path':<7}{'fp32 img/s':>11}{'CL':>8}{'bf16':>8}{'bf16+CL':>9}"]
    for r in p["rows"]:
        q = r["ratio"]
        lines.append(f"    {r['model']:<26}{r['path']:<7}{r['fp32_images_per_s']:>11,.0f}{q['32-true CL']:>7.2f}x"
                     f"{q['bf16-mixed']:>7.2f}x{q['bf16-mixed CL']:>8.2f}x")
    return lines


# ---------------------------------------------------------------------------------------- report
VARIANT_SETTINGS = {"eager": "", "compile": "train.compile=true", "graphs": "train.cuda_graphs=true",
                    "graphs_k8": "train.cuda_graphs=true train.models_per_step=8"}


def _paper_train() -> dict:
    import yaml

    return yaml.safe_load((REPO / "conf" / "train" / "paper.yaml").read_text())


def preset_models_per_step() -> int:
    return int(_paper_train().get("models_per_step", 1))


def preset_variant(k: int) -> str | None:
    """The fast-trainer variant the paper presets run (conf/train/paper.yaml): None when no variant
    here matches its settings (then no projection is made for it)."""
    t = _paper_train()
    mps, graphs, comp = int(t.get("models_per_step", 1)), bool(t.get("cuda_graphs")), t.get("compile") not in (False, None)
    if comp:
        return "compile" if mps == k else None
    if graphs:
        return "graphs" if mps == k else ("graphs_k8" if mps == 8 else None)
    return "eager" if mps == k else None


def summarise(res: dict) -> dict:
    """Headline figures, computed from the reported numbers (so they can be checked from the JSON):
    the ratio at the best variant; the protocol's time at the variant the paper preset runs, and
    beside it the best variant's with the settings that select it."""
    ok = {k: v for k, v in res.get("fast", {}).get("variants", {}).items() if "images_per_s" in v}
    total = PROTOCOL["models"] * PROTOCOL["images"] * PROTOCOL["epochs"]
    a = res.get("reference", {}).get("images_per_s")   # absent when the reference loop failed
    if ok:
        best = max(ok, key=lambda k: ok[k]["images_per_s"])
        b = ok[best]["images_per_s"]
        res["fast"].update(best=best, images_per_s=b)
        preset = preset_variant(int(res["k"])) if "k" in res else None
        res["fast"]["preset"] = preset
        if preset in ok:
            rate = ok[preset]["images_per_s"]
            res["projected_protocol_s"] = total / rate
            res["projected_protocol_h"] = total / rate / 3600
        else:
            res.pop("projected_protocol_s", None)
            res.pop("projected_protocol_h", None)
        res["projected_protocol_best_h"] = total / b / 3600
        k_best = ok[best].get("models_per_step")
        res["best_settings"] = VARIANT_SETTINGS.get(best, best) if best != "eager" else f"train.models_per_step={k_best}"
        if a:
            res["ratio"] = b / a
    if a:
        res["projected_reference_protocol_h"] = total / a / 3600
    return res


def format_table(res: dict) -> str:
    lines = [f"benchmark: device={res['device']} ({res.get('gpu', 'cpu')}), size={res['size']}, "
             f"model={res['model']}, train images={res['n_train']}, torch {res['torch']}", ""]
    r = res.get("reference", {})
    label = f"(a) reference (PIL+DataLoader, fp32, batch {r.get('batch', '?')}, 1 model)"
    if "images_per_s" in r:
        note = f"   (with 4 workers: {r['error_with_workers']})" if "error_with_workers" in r else ""
        lines.append(f"{label:<62}{r['images_per_s']:>12,.0f} img/s   workers={r['num_workers']}{note}")
    else:
        lines.append(f"{label:<62}{'failed':>12}   {r.get('error')}")
    for name, v in res.get("fast", {}).get("variants", {}).items():
        label = f"(b) fast [{name}] K={v.get('models_per_step', '?')} x batch {v.get('batch', '?')}"
        if "images_per_s" in v:
            note = f"   {v['loss_error']}" if "loss_error" in v else ""
            lines.append(f"{label:<62}{v['images_per_s']:>12,.0f} img/s   warm-up {v['warmup_s']:.1f}s{note}")
        else:
            lines.append(f"{label:<62}{'failed':>12}   {v.get('error')}")
    if "ratio" in res:
        lines.append(f"{'    ratio b/a (best: ' + res['fast']['best'] + ')':<62}{res['ratio']:>12.2f} x")
        pre = res["fast"].get("preset")
        if "projected_protocol_h" in res:
            lines.append(f"{'    projected protocol 65 x 25k x 100 ep, preset [' + pre + ']':<62}"
                         f"{res['projected_protocol_h']:>12.2f} h   (reference: {res['projected_reference_protocol_h']:.2f} h)")
        if res["fast"]["best"] != pre:
            lines.append(f"{'    if you set ' + res['best_settings'] + ' [' + res['fast']['best'] + ']':<62}"
                         f"{res['projected_protocol_best_h']:>12.2f} h")
    s = res.get("scoring", {})
    if "images_per_s" in s:
        lines.append(f"{'(c) scoring phi (' + str(s['models']) + ' models x ' + str(s['examples']) + ' x 2 queries)':<62}"
                     f"{s['images_per_s']:>12,.0f} img/s   compute_phi: {s['reference_images_per_s']:,.0f} img/s "
                     f"(x{s['ratio']:.1f})")
    elif s:
        lines.append(f"{'(c) scoring':<62}{'failed':>12}   {s.get('error')}")
    for m, v in res.get("quant", {}).items():
        label = f"(d) quantize {m} 2-bit"
        if "error" in v:
            lines.append(f"{label:<62}{'failed':>12}   {v['error']}")
            continue
        if "seconds" not in v:
            lines.append(f"{label:<62}{'-':>12}")
            continue
        extra = f"   projected {v['projected_seconds']:.1f}s at {v['default_iters']} iters" \
            if "projected_seconds" in v else ""
        note = f"   [reduced: {v['reduced']}]" if v.get("reduced") else ""
        lines.append(f"{label:<62}{v['seconds']:>12.2f} s{extra}{note}")
    pb = res.get("plain_vs_bare", {})
    if "ratio" in pb:
        label = f"(e) plain path vs bare loop: {pb['model']}, {pb['image_size']}px, batch {pb['batch']}"
        lines.append(f"{label:<62}{pb['plain_images_per_s']:>12,.0f} img/s   bare loop {pb['bare_images_per_s']:,.0f} "
                     f"img/s (plain/bare {pb['ratio']:.1%}; CPU time {pb['ratio_cpu']:.1%})")
    elif pb:
        lines.append(f"{'(e) plain path vs bare loop':<62}{'failed':>12}   {pb.get('error')}")
    pr = res.get("precision", {})
    if "rows" in pr:
        lines += format_precision(pr)
    elif pr:
        lines.append(f"{'(f) training precision x memory format':<62}{'failed':>12}   {pr.get('error')}")
    return "\n".join(lines)


def _write(res: dict, out: str):
    """Atomic JSON write; called after every section so a crash or a kill later in the run (one GPU
    slot) still leaves everything measured so far."""
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(out).with_suffix(".json.tmp")
    tmp.write_text(json.dumps(res, indent=1, default=lambda o: o.item() if hasattr(o, "item") else str(o)))
    os.replace(tmp, out)


def run(device: str, size: str, data_dir: str | None, out: str, variants=None, methods=None,
        sizes: dict | None = None, budget_s: float | None = None, clock: str = "wall") -> dict:
    spec = dict((sizes or SIZES)[size])
    spec["k"] = preset_models_per_step()   # the preset's K: its variant is the one the protocol is projected at
    cuda = device.startswith("cuda")
    variants = list(variants or (VARIANTS_CUDA if cuda else VARIANTS_CPU))
    methods = list(methods or ("rtn", "adaround", "brecq", "obc"))
    budget_s = BUDGET_S.get(size) if budget_s is None else (budget_s if budget_s > 0 else None)
    t_start = time.perf_counter()
    deadline = t_start + budget_s if budget_s else None

    def left() -> float:
        return float("inf") if deadline is None else deadline - time.perf_counter()

    data = load_data(size, spec, data_dir)
    res = {"device": device, "size": size, "model": spec["model"], "n_train": len(data.y_train), "k": spec["k"],
           "torch": torch.__version__, "python": platform.python_version(), "threads": torch.get_num_threads(),
           "protocol": PROTOCOL, "budget_s": budget_s}
    if cuda:
        res["gpu"] = torch.cuda.get_device_name()

    def checkpoint():
        res["total_s"] = time.perf_counter() - t_start
        summarise(res)
        _write(res, out)

    ref_error = None
    try:
        res["reference"] = bench_reference(data, spec, device)
    except Exception as e:
        ref_error = _error(e)
    _free(device)
    if ref_error is not None:  # e.g. a DataLoader worker killed (small /dev/shm): retry in-process on CUDA
        res["reference"] = {"error": ref_error, "batch": spec["ref_batch"]}
        if cuda:
            try:
                res["reference"] = dict(bench_reference(data, spec, device, workers=0), error_with_workers=ref_error)
            except Exception as e:
                res["reference"]["error"] += " | with workers=0: " + _error(e)
            _free(device)
    res["fast"] = {"variants": {}}
    checkpoint()

    def fast_variant(v):
        row = None
        if left() < (MIN_LEFT_FOR_COMPILE_S if v == "compile" else 0.0):
            row = {"error": "skipped: time budget"}
        else:
            try:
                row = bench_fast(data, spec, device, v)
            except Exception as e:
                row = {"error": _error(e)}
        if "error" in row:
            row.update(models_per_step=8 if v.endswith("_k8") else spec["k"], batch=spec["batch"])
        res["fast"]["variants"][v] = row
        _free(device)  # outside the except block (see bench_quant)
        checkpoint()

    for v in variants:
        if v not in DEFERRED_VARIANTS:
            fast_variant(v)
    if left() > 0:
        try:
            res["scoring"] = bench_scoring(data, spec, device)
        except Exception as e:
            res["scoring"] = {"error": _error(e)}
    else:
        res["scoring"] = {"error": "skipped: time budget"}
    _free(device)
    checkpoint()
    if not cuda and "pvb_n" in spec:
        try:
            res["plain_vs_bare"] = bench_plain_vs_bare(spec, data_dir if size != "tiny" else None)
        except Exception as e:
            res["plain_vs_bare"] = {"error": _error(e)}
        checkpoint()
    if not cuda and "prec_models" in spec:
        try:
            res["precision"] = bench_precision(spec, clock)
        except Exception as e:
            res["precision"] = {"error": _error(e)}
        checkpoint()
    res["quant"] = {}
    bench_quant(data, spec, device, methods, res["quant"], deadline, checkpoint)
    for v in variants:
        if v in DEFERRED_VARIANTS:
            fast_variant(v)
    # keep the variants in their canonical order in the report
    res["fast"]["variants"] = {v: res["fast"]["variants"][v] for v in variants}
    checkpoint()
    print(format_table(res))
    print(f"\ntotal {res['total_s']:.0f}s; written {out}")
    return res


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(prog="python -m benchmarks.bench", description=__doc__.split("\n\n")[0])
    cuda = torch.cuda.is_available()
    p.add_argument("--device", choices=["cpu", "cuda"], default="cuda" if cuda else "cpu")
    p.add_argument("--size", choices=list(SIZES), default=None, help="default: cifar on cuda, small on cpu")
    p.add_argument("--data", default=None, help="CIFAR-10 image folder (train/<class>/*.jpg, test/<class>/*.jpg)")
    p.add_argument("--out", default="outputs/bench/bench.json")
    p.add_argument("--variants", default=None, help=f"fast-trainer variants, comma-separated: {','.join(VARIANTS_CUDA)}")
    p.add_argument("--methods", default=None, help="quantizers, comma-separated (default rtn,adaround,brecq,obc)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: leave)")
    p.add_argument("--only", choices=["precision"], default=None, help="run one section alone (CPU)")
    p.add_argument("--clock", choices=["wall", "cpu"], default="wall",
                   help="(f): time steps by wall clock or by this process's CPU time (a shared machine)")
    p.add_argument("--budget", type=float, default=None,
                   help="soft time budget in s: later sections are skipped and reported (default: "
                        f"{BUDGET_S} per size, else none; 0 = none)")
    a = p.parse_args(argv)
    if a.device == "cuda" and not cuda:
        p.error("--device cuda: CUDA is not available")
    if a.threads:
        torch.set_num_threads(a.threads)
    size = a.size or ("cifar" if a.device == "cuda" else "small")
    if a.only == "precision":
        res = {"device": "cpu", "size": size, "torch": torch.__version__,
               "precision": bench_precision(SIZES[size], a.clock)}
        _write(res, a.out)
        print("\n".join(format_precision(res["precision"])))
        return res
    split = lambda s: [v.strip() for v in s.split(",") if v.strip()] if s else None  # noqa: E731
    return run(a.device, size, a.data, a.out, split(a.variants), split(a.methods), budget_s=a.budget,
               clock=a.clock)


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        main()
    sys.exit(0)
