"""Pool training of the CPU protocols, end to end through the job's own path, side by side in one run.

Trains the same ``--models`` pool models of ``experiment=cifar10_cpu`` (smallcnn width 32, 16×16,
~2,000 images per model, SGD recipe; ``--epochs`` of its 40) on generated 10-class images of that
shape, three ways, each from an empty cache:

- ``fp32, 1 process``: ``train.precision=32-true train.channels_last=false cpu_workers=1`` (the
  protocol before bf16 and workers);
- ``bf16+CL, 1 process``: the preset's ``precision: auto`` + ``channels_last: true``, ``cpu_workers=1``;
- ``bf16+CL, cpu_workers=auto``: the preset as it ships.

and prints wall time, models per minute and the ratio to the first row. The variants run in turn,
interleaved over ``--rounds`` rounds (best round per variant), so load on the machine hits all alike.

    python -m benchmarks.pool_speed [--models 4] [--epochs 4] [--rounds 1] [--model smallcnn --width 32] [--tiny]
"""
from __future__ import annotations

import argparse
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

VARIANTS = {
    "fp32 NCHW, 1 process": ["train.precision=32-true", "train.channels_last=false", "cpu_workers=1"],
    "bf16+CL, 1 process": ["cpu_workers=1"],
    "bf16+CL, cpu_workers=auto": [],
}


def _data(n_train: int, size: int):
    from src.data.datasets import ImageData

    g = torch.Generator().manual_seed(0)
    protos = torch.randint(0, 256, (10, 3, size, size), generator=g).float()
    y = torch.randint(0, 10, (n_train + 1000,), generator=g)
    x = (protos[y] * 0.5 + torch.randint(0, 128, (len(y), 3, size, size), generator=g)).clamp(0, 255).to(torch.uint8)
    return ImageData("bench", x[:n_train], y[:n_train], x[n_train:], y[n_train:], (0.5,) * 3, (0.25,) * 3, 10)


def run_variant(overrides: list[str], models: int, epochs: int, model: str, width: int, n_train: int = 4000) -> float:
    from hydra import compose, initialize_config_dir

    from src.cache import ArtifactStore
    from src.data import keep_matrix
    from src.pipeline import _train_missing, _train_missing_parallel, cpu_workers, model_key
    from src.cache import cache_key
    from src.data import data_digest

    conf = str(Path(__file__).resolve().parents[1] / "conf")
    with tempfile.TemporaryDirectory() as tmp, initialize_config_dir(config_dir=conf, version_base="1.3"):
        cfg = compose("config", overrides=["experiment=cifar10_cpu", f"model={model}", f"model.width={width}",
                                           f"train.epochs={epochs}", "n_models=16", "progress=false",
                                           "logger=none", f"paths.cache_dir={tmp}", *overrides])
        torch.set_num_threads(int(cfg.num_threads))
        data = _data(n_train, int(cfg.dataset.image_size))
        keep = keep_matrix(16, n_train, 0.5, 0)
        store = ArtifactStore(tmp)
        digest = data_digest(data)
        todo = list(range(models))
        keys = {m: cache_key(model_key(cfg, digest, m, "cpu")) for m in todo}
        workers = cpu_workers(cfg, "cpu", len(todo))
        t0 = time.perf_counter()
        if workers > 1:
            _train_missing_parallel(cfg, data, keep, store, "cpu", todo, keys, digest, workers, None)
        else:
            _train_missing(cfg, data, keep, store, "cpu", todo, keys, digest, 1, None, None)
        return time.perf_counter() - t0


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", type=int, default=4)
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--model", default="smallcnn")
    ap.add_argument("--width", type=int, default=32)
    ap.add_argument("--tiny", action="store_true",
                    help="a check of the code paths in seconds: 2 models x 1 epoch, width 4, ~64 images each")
    args = ap.parse_args(argv)
    n_train = 4000
    if args.tiny:
        args.models, args.epochs, args.rounds, args.width, n_train = 2, 1, 1, 4, 128
    from src.training import native_bf16_cpu

    best = {name: float("inf") for name in VARIANTS}
    for _ in range(args.rounds):
        for name, ov in VARIANTS.items():
            best[name] = min(best[name], run_variant(ov, args.models, args.epochs, args.model, args.width, n_train))
    cpu = platform.machine()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    print(f"pool training, {args.model} w{args.width}, {args.models} models x {args.epochs} epochs, ~2,000 images "
          f"each; CPU {cpu}, native bf16: {native_bf16_cpu()}, torch {torch.__version__}")
    base = best["fp32 NCHW, 1 process"]
    for name, sec in best.items():
        print(f"  {name:28s} {sec:7.1f} s  {60 * args.models / sec:5.2f} models/min  {base / sec:4.2f}x")


if __name__ == "__main__":
    main()
