"""Learned rounding (AdaRound, BRECQ): speed and convergence of each reconstruction schedule, side by side.

Quantizes one pool model of a protocol with each schedule in turn, through the job's own path (the same
calibration images, grid and units as a job; nothing is cached), and prints per schedule: the time,
reconstruction iterations per second per unit, the worst unit's share of unsettled rounding variables
h(V) ∈ (0.01, 0.99) and its hard/soft reconstruction-loss ratio, whether every unit meets the
convergence limits (src/quant/rounding.py), and the quantized model's test and member accuracy.

    python -m benchmarks.convergence --experiment cifar10_cpu --data <cifar10 image folder> \\
        --quant brecq --bits 1.58 [--target 0] [--schedules old,cpu] [--cache outputs/cache]
    python -m benchmarks.convergence --tiny        # digits, a few seconds per schedule

Schedules (``--schedules``, comma-separated; each is a list of overrides):
``old`` = 500 iterations at lr 1e-3 (the CPU presets before convergence was measured), ``cpu`` = the
protocol's preset as it ships, ``paper`` = 20,000 at 1e-3, or any ``iters:lr`` pair such as ``2000:1e-2``.
"""
from __future__ import annotations

import argparse
import platform
import time
from pathlib import Path

import torch

NAMED = {"old": ["budget.iters=500", "quant.lr=1e-3"], "cpu": [],
         "paper": ["budget.iters=20000", "quant.lr=1e-3"]}


def schedule_overrides(name: str) -> list[str]:
    if name in NAMED:
        return NAMED[name]
    try:
        iters, lr = name.split(":")
        return [f"budget.iters={int(iters)}", f"quant.lr={float(lr)}"]
    except ValueError:
        raise SystemExit(f"error: --schedules: {name!r}: allowed: {', '.join(NAMED)} or ITERS:LR (e.g. 2000:1e-2)")


def compose(overrides: list[str]):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(Path(__file__).resolve().parents[1] / "conf"), version_base="1.3"):
        return hydra_compose("config", overrides=overrides)


def run(base: list[str], schedules: list[str], target: int) -> list[dict]:
    from src import pipeline as P
    from src.cache import ArtifactStore
    from src.main import prepare

    cfg = compose(base)
    data, keep, _ = prepare(cfg)
    if cfg.get("num_threads"):
        torch.set_num_threads(int(cfg.num_threads))
    store = ArtifactStore(cfg.paths.cache_dir)
    fp_model, info = P.get_pool_model(cfg, data, keep, target, store, "cpu")
    rows = []
    for name in schedules:
        c = compose(base + schedule_overrides(name))
        prepare(c)  # the same validation a job gets
        t0 = time.perf_counter()
        art = P._quantized_artifact(c, data, keep, target, fp_model, "cpu", P.bit_overrides(c))
        wall = time.perf_counter() - t0
        conv = art["convergence"]
        from src.quant.rounding import convergence_summary

        s = convergence_summary({target: conv})
        steps = sum(u["iters"] for u in conv)
        rows.append({"schedule": name, "iters": int(c.quant.iters), "lr": float(c.quant.lr), "seconds": wall,
                     "it_per_s_unit": steps / art["seconds"] if art["seconds"] else float("nan"),
                     "units": len(conv), "max_unsettled": s["max_unsettled"],
                     "max_hard_over_soft": s["max_hard_over_soft"], "converged": s["converged"],
                     "test_acc": art["test_acc"], "train_acc": art["train_acc"], "fp_test_acc": info["test_acc"],
                     "per_unit": conv})
    return rows


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--experiment", default="default")
    ap.add_argument("--data", default=None, help="image folder (dataset=imagefolder); default: the preset's dataset")
    ap.add_argument("--quant", default="brecq", choices=["adaround", "brecq"])
    ap.add_argument("--bits", default="1.58")
    ap.add_argument("--target", type=int, default=0)
    ap.add_argument("--schedules", default="old,cpu")
    ap.add_argument("--cache", default="outputs/cache")
    ap.add_argument("--units", action="store_true", help="also print every unit's record")
    ap.add_argument("--tiny", action="store_true", help="digits, 4 pool models, 2 schedules of 60 iterations")
    ap.add_argument("extra", nargs="*", help="more config overrides, e.g. quant.batch_size=64")
    a = ap.parse_args(argv)
    base = [f"experiment={a.experiment}", f"quant={a.quant}", f"bits={a.bits}", "logger=none", "progress=false",
            f"paths.cache_dir={a.cache}", *a.extra]
    if a.data:
        base += ["dataset=imagefolder", f"dataset.root={a.data}"]
    schedules = a.schedules.split(",")
    if a.tiny:
        base += ["n_models=4", "train.epochs=2", "budget.n_calib=64"]
        schedules = ["60:1e-3", "60:1e-2"]
    print(f"# {platform.processor() or platform.machine()}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads; {' '.join(base)}")
    rows = run(base, schedules, a.target)
    fp = rows[0]["fp_test_acc"]
    print(f"FP test accuracy {100 * fp:.2f} %")
    print(f"{'schedule':>12} {'iters':>6} {'lr':>7} {'wall s':>7} {'it/s/unit':>9} {'max unsettled':>13} "
          f"{'max hard/soft':>13} {'settled':>7} {'test acc':>8} {'member acc':>10}")
    for r in rows:
        print(f"{r['schedule']:>12} {r['iters']:>6} {r['lr']:>7.0e} {r['seconds']:>7.1f} {r['it_per_s_unit']:>9.1f} "
              f"{100 * r['max_unsettled']:>12.2f}% {r['max_hard_over_soft']:>13.3f} {str(r['converged']):>7} "
              f"{100 * r['test_acc']:>7.2f}% {100 * r['train_acc']:>9.2f}%")
        if a.units:
            for u in r["per_unit"]:
                print(f"{'':>14}{u['unit']:<14} unsettled {100 * u['unsettled']:6.2f}%  soft {u['soft_loss']:.4g}"
                      f"  hard {u['hard_loss']:.4g}")


if __name__ == "__main__":
    main()
