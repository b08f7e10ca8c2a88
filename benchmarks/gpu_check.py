"""The paper path on one CUDA GPU in one command: does it work, and how fast is it.

    python3 -m benchmarks.gpu_check [--device cuda|cpu] [--tiny] [--data DIR] [--out DIR]
                                    [--budget S] [--sections 1,2,3,4,5,6] [--workdir DIR]

``--out`` receives gpu_check.json and gpu_check.txt (the table) and nothing else; both are rewritten
after every step and each row is printed as soon as it is measured, so a killed run keeps (and has
shown) everything measured so far. The work dir (cache, jobs, a dataset download) is --workdir or a
new folder in the system's temp dir, removed at the end. Needs torch, torchvision, lightning,
torchmetrics, scikit-learn, and hydra-core / omegaconf on PYTHONPATH; docs/gpu.md: how to run it on a GPU.

Sections (each independent: a failure is recorded with its one-line reason and the next one runs):

1. bench: the reference-style training loop vs our trainer (``benchmarks.bench``), their ratio and the
   projected time of the paper protocol (65 ResNet-18 × 100 epochs × 25,000 images per model). Its
   CUDA-graph variants run after every other section (a failed capture can poison the process).
2. fast vs plain: K models with the same seeds and member sets, a short recipe, trained by the fast
   path (``train.fast=true``: K models per step, bf16 on CUDA) and by the plain Lightning path;
   test accuracy of each, their difference in points and img/s.
3. mini paper protocol: ResNet-18, 8 pool models × a few epochs, AdaRound / BRECQ / OBC (and GPTQ when
   ``quant=gptq`` exists) at 4 / 2 / 1.58 bits with a reduced budget, ``attack=all``,
   ``attack.reference=both``, the fixed-variance online LiRA in the table, run in-process through ``src.main.run`` (Hydra compose): the summary
   table (test accuracy, LiRA AUC and TPR at 1 % FPR with FP and with matched references).
4. seconds per quantizer with the paper preset's budget (``experiment=paper_cifar10``: 1,024
   calibration images and 20k iterations for AdaRound / BRECQ, 2,048 images for OBC), projected
   from timed short runs (two budgets, linear in the iterations); OBC has no iteration budget: its
   cost is Σ_layers rows·d_col³, projected
   from timed runs of ``obq_layer`` on each distinct layer width with a subset of the rows (two row
   counts, linear in the rows). Peak GPU memory of each (null on CPU).
5. scoring throughput of ``compute_phi_fast`` (φ of K models × examples × 2 query views).
6. newer paths: one model's training steps on each path in 32-true and bf16-mixed (projected to the
   protocol's 65 × 100 epochs × 25,000 images), and quantizer rows with their config taken from the
   presets: W/A (``quant.act_bits=8``) RTN and BRECQ, AdaRound with ``bitwidth.*`` overrides, AdaRound
   and BRECQ at the CPU preset's reconstruction settings; seconds per model at the row's own budget
   and hours per paper job (65 models: the target and its matched references).

Sections run in the order 1, 5, 2, 4, 6, 3, then section 1's CUDA graphs: section 3 is the most
elastic (it skips the jobs that no longer fit, predicted from a timed quantization of its target)
and uses what is left of the budget.

``--tiny`` runs every section on CPU at tiny sizes (generated 16×16 data, ResNet-18 of base width 4
and 8, bench's tiny sizes) in under 3 minutes; it checks the code paths, not the speed. Targets
(``TARGETS``) are printed next to the figures; pass / fail is judged only on CUDA.
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import importlib.util
import io
import math
import os
import platform
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks import bench

REPO = Path(__file__).resolve().parents[1]
SECTIONS = {1: "bench", 2: "fast_vs_plain", 3: "mini_protocol", 4: "quant_seconds", 5: "scoring", 6: "new_paths"}
RUN_ORDER = (1, 5, 2, 4, 6, 3)
PAPER_ITERS = 20_000
PAPER_EXPERIMENT = bench.PAPER_EXPERIMENT
# the paper protocol per job: the target and its 64 matched references, each quantized once
PROTOCOL_MODELS = bench.PROTOCOL["models"]
# fixed-variance online LiRA: the per-example variance of `lira_online` is unreliable below 16 references
ATTACK = "lira_online_fixed"
TPR_KEY = "tpr_at_fpr_1e-2"
JSON_NAME, TABLE_NAME = "gpu_check.json", "gpu_check.txt"
_NO_VALUE = re.compile(r"\s-(\s{3}\S|\s*$)")      # a table row whose figure is not measured yet
# fast vs plain: equivalence margin in test-accuracy points (the fast path's acceptance criterion,
# conf/train/paper.yaml) and the level of each one-sided test of TOST (a 90% interval)
EQUIV_MARGIN_PTS, EQUIV_ALPHA = 0.5, 0.05

# (key, label, comparison, threshold, unit); value paths are filled by _targets().
TARGETS = {
    "trainer_ratio": ("trainer / reference loop", ">=", 10.0, "x"),
    "protocol_h": ("projected paper protocol", "<=", 1.0, "h"),
    "quant_20k_s": ("each quantizer at 20k iterations", "<=", 300.0, "s"),
    "scoring_img_s": ("scoring compute_phi_fast", ">=", 200_000.0, "img/s"),
    "fast_plain_pts": ("fast - plain test accuracy, 90% CI within", "+-", EQUIV_MARGIN_PTS, "points"),
}

# Sizes. gpu: one H200, 8 minutes wall-clock in all (budget 450 s after start-up); tiny: CPU, < 3 min.
PROFILES = {
    "gpu": dict(
        budget_s=450.0,
        caps={1: 45.0, 5: 25.0, 2: 75.0, 4: 90.0, 6: 75.0},   # section 3 gets what is left but graphs_cap
        # CUDA graphs last of all: a sticky CUDA error in a capture cannot fail the other sections
        bench_size="cifar", variants=("eager",), deferred_variants=("graphs", "graphs_k8"), graphs_cap=35.0,
        # section 6: one ResNet-18 (width 64) on each training path, and the quantizer rows timed at two
        # iteration budgets as in section 4
        s6=dict(prec_models=[("resnet18", 64, 32, 128, 5, 30)], prec_rounds=1, quant_iters=[100, 300]),
        quant_iters=[100, 300], obc_row_cap=128, width=64,
        s2=dict(models=4, epochs=2, width=64, batch=None),
        # base width 16: OBC costs ∝ width⁴ (Σ rows·d_col³), and with matched references every job
        # quantizes all 8 pool models; width 64 is what sections 1, 4 and 5 time
        s3=dict(n_models=8, epochs=10, width=16, max_train=10_000, max_test=5_000, iters=50, n_calib=128,
                bootstrap=50, models_per_step=8, batch=None),
    ),
    "tiny": dict(
        budget_s=None, caps={},
        bench_size="tiny", variants=("eager",), deferred_variants=("graphs",), graphs_cap=0.0,
        s6=dict(prec_models=[("smallcnn", 8, 8, 16, 1, 1)], prec_rounds=1, quant_iters=[2, 4]),
        quant_iters=None, obc_row_cap=None, width=None,   # bench's tiny spec
        # batch 16: a few steps per epoch on 64 members. Generated data (random class prototypes +
        # noise) at 16×16 without augmentation: ResNet-18 w4 reaches ~0.6 test accuracy in 8 epochs,
        # while at 32×32 with crop+flip it stays near chance (0.1-0.2) in any budget that fits here
        s2=dict(models=2, epochs=8, width=8, batch=16),
        s3=dict(n_models=8, epochs=8, width=4, max_train=None, max_test=None, iters=4, n_calib=32,
                bootstrap=10, models_per_step=4, batch=16),
        synthetic=dict(n_train=128, n_test=64, num_classes=10, image_size=16, channels=3),
        folder=dict(max_train=256, max_test=128),          # --tiny --data DIR: a subset of the folder
    ),
}


# generated stand-in for CIFAR-10 when it cannot be read (timing sections; paths of sections 2 and 3)
GENERATED_CIFAR = dict(n_train=50_000, n_test=10_000, num_classes=10, image_size=32, channels=3, noise=60.0)


def _error(e: BaseException) -> str:
    return bench._error(e)


def _sync(device):
    bench._sync(device)


def _cuda(device) -> bool:
    return str(device).startswith("cuda")


# ------------------------------------------------------------------------------------- context
class Context:
    """What the sections share: device, sizes, the time budget, the working dir, loaded data."""

    def __init__(self, device: str, tiny: bool, data_dir: str | None, out: str | Path, workdir: Path,
                 budget_s: float | None, echo: bool = True):
        self.device, self.tiny, self.workdir = device, tiny, workdir
        self.out = Path(out)
        self.cuda = _cuda(device)
        self.prof = PROFILES["tiny" if tiny else "gpu"]
        self.data_dir = str(Path(data_dir).resolve()) if data_dir else None
        self.download_dir = str((Path(workdir) / "data").resolve())   # never under --out
        self.data_failed: str | None = None   # the one failed read of the dataset (not retried)
        self.echo, self._shown = echo, set()
        self.t_start = time.perf_counter()
        self.budget_s = budget_s
        self.deadline = None
        self.start_budget()
        self._memo: dict = {}
        self.obc_model = None        # OBC cost model from section 4 (used by section 3 to skip jobs)
        self.res: dict = {}

    def start_budget(self):
        """The budget counts from now: called again once start-up (imports, reading the dataset) is done."""
        self.deadline = time.perf_counter() + self.budget_s if self.budget_s else None

    def until(self, deadline=None) -> float | None:
        """The earlier of the overall and a section's deadline (perf_counter), None = no limit."""
        d = [x for x in (self.deadline, deadline) if x is not None]
        return min(d) if d else None

    def left(self, deadline=None) -> float:
        d = self.until(deadline)
        return float("inf") if d is None else d - time.perf_counter()

    def checkpoint(self):
        """JSON and table rewritten; the table's rows not shown yet are printed (flushed) now."""
        self.res["total_s"] = time.perf_counter() - self.t_start
        self.res["targets"] = _targets(self.res, self.cuda)
        bench._write(self.res, str(self.out / JSON_NAME))
        table = format_table(self.res)
        tmp = self.out / (TABLE_NAME + ".tmp")
        tmp.write_text(table + "\n")
        os.replace(tmp, self.out / TABLE_NAME)
        if self.echo:
            for line in table.splitlines()[1:]:        # the header's running total changes every time
                if line.strip() and line not in self._shown and not _NO_VALUE.search(line):
                    self._shown.add(line)
                    print(line, flush=True)

    def note(self, msg: str):
        self.res.setdefault("notes", []).append(msg)
        self._shown.add(f"note: {msg}")                 # the table repeats it; shown once, now
        if self.echo:
            print(f"note: {msg}", flush=True)

    # -- data -----------------------------------------------------------------------------------
    def dataset_overrides(self, subset: dict | None = None) -> list[str]:
        """Hydra overrides of the dataset: the image folder, torchvision's CIFAR-10, or (tiny) generated."""
        subset = {k: v for k, v in (subset or {}).items() if v}
        if self.data_dir:
            ov = ["dataset=imagefolder", f"dataset.root={self.data_dir}"]
            if self.tiny:
                subset = {**self.prof["folder"], **subset}
        elif self.tiny:
            ov = ["dataset=synthetic", "dataset.augment.pad=0", "dataset.augment.flip=false"]
            ov += [f"dataset.{k}={v}" for k, v in self.prof["synthetic"].items()]
        elif self.data_failed:   # generated: the subset's sizes become the generated sizes
            gen = dict(GENERATED_CIFAR, n_train=subset.pop("max_train", GENERATED_CIFAR["n_train"]),
                       n_test=subset.pop("max_test", GENERATED_CIFAR["n_test"]))
            ov = ["dataset=synthetic"] + [f"dataset.{k}={v}" for k, v in gen.items()]
        else:
            ov = ["dataset=cifar10"]
        return ov + [f"dataset.{k}={v}" for k, v in subset.items()]

    def common_overrides(self) -> list[str]:
        # full sizes: torch's own thread count (the embedded default's num_threads=1 is for its tiny model)
        ov = ["logger=none", "progress=false", f"paths.data_dir={self.download_dir}",
              f"paths.cache_dir={self.workdir / 'cache'}", f"device={self.device}"]
        return ov + (["num_threads=1"] if self.tiny else ["num_threads=null"])

    def load(self, dataset_cfg, data_dir: str | None = None):
        """``src.data.load_dataset``, read once per dataset config (jobs of a sweep share the folder).
        A shallow copy: load_dataset's callers may rebind the tensors of what they get."""
        from omegaconf import OmegaConf

        from src.data import load_dataset

        data_dir = data_dir or self.download_dir
        key = OmegaConf.to_yaml(dataset_cfg) + "|" + str(data_dir)
        if key not in self._memo:
            self._memo[key] = load_dataset(dataset_cfg, data_dir)
        return copy.copy(self._memo[key])

    def full_data(self):
        """The whole training split (GPU profile) for sections 1, 4 and 5. Read (or downloaded) once:
        after a failure every section gets generated CIFAR-sized data instead, without retrying."""
        if self.data_failed:
            raise RuntimeError(self.data_failed)
        try:
            cfg = compose(self.dataset_overrides() + self.common_overrides())
            return self.load(cfg.dataset, cfg.paths.data_dir)
        except Exception as e:
            if self.data_dir or self.tiny:
                raise
            self.data_failed = f"CIFAR-10 not readable and its download failed once ({_error(e)})"
            self.note(f"data: {self.data_failed}; not retried: generated CIFAR-sized images from here on "
                      "(speeds are valid, accuracies are not); pass --data DIR (an image folder)")
            raise RuntimeError(self.data_failed) from None

    def bench_data(self, spec, sec: dict):
        """Data of the timing sections (1, 4, 5). Their speed does not depend on the pixels: without
        a readable dataset they run on generated CIFAR-sized data and say so."""
        if self.tiny:
            return bench.load_data("tiny", spec, None)
        try:
            return self.full_data()
        except Exception as e:
            from src.data.datasets import make_synthetic

            sec["data_note"] = f"generated 50k x 3x32x32 images ({_error(e)})"
            if "generated" not in self._memo:
                self._memo["generated"] = make_synthetic(seed=0, **GENERATED_CIFAR)
            return copy.copy(self._memo["generated"])

    def bench_spec(self) -> dict:
        spec = dict(bench.SIZES[self.prof["bench_size"]])
        spec["k"] = bench.preset_models_per_step()     # the preset's K: its variant is the one projected
        if self.prof["quant_iters"]:
            spec["quant_iters"] = list(self.prof["quant_iters"])
        if self.prof["width"]:
            spec["width"] = self.prof["width"]
        return spec


def compose(overrides: list[str]):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        return hydra_compose(config_name="config", overrides=list(overrides))


def has_width_knob() -> bool:
    """Whether ``model.width`` reaches ResNet-18 (a base width below 64 keeps every layer type)."""
    from src.models import build_model

    try:
        return build_model("resnet18", 10, 3, 8).conv1.out_channels == 8
    except Exception:
        return False


def quant_methods() -> list[str]:
    """The reconstruction quantizers of the study, plus GPTQ when it is registered."""
    from src.quant import METHODS

    ms = ["adaround", "brecq", "obc"]
    if "gptq" in METHODS and (REPO / "conf" / "quant" / "gptq.yaml").exists():
        ms.append("gptq")
    return ms


def _quant_yaml(method: str):
    """The method's config as the paper preset runs it (its n_calib and iters)."""
    return bench.paper_quant_config(method)


@contextlib.contextmanager
def _isolated(device):
    """Each section starts from the same global torch state: the plain path's Lightning Trainer
    switches deterministic algorithms on for the whole process (slower scatter kernels), which must
    not leak into the timing of the next section."""
    det, warn = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    cudnn_bench, threads = torch.backends.cudnn.benchmark, torch.get_num_threads()
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(det, warn_only=warn)
        torch.backends.cudnn.benchmark = cudnn_bench
        torch.set_num_threads(threads)
        bench._free(device)


def _peak_reset(device):
    if _cuda(device):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()


def _peak_gib(device):
    if not _cuda(device):
        return None
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() / 2**30


# ------------------------------------------------------------------------------------ 1. bench
def section_bench(ctx: Context, sec: dict, deadline):
    spec = ctx.bench_spec()
    data = ctx.bench_data(spec, sec)
    res = sec
    res.update(size=ctx.prof["bench_size"], model=spec["model"], width=spec["width"], n_train=len(data.y_train),
               protocol=bench.PROTOCOL, k=spec["k"], fast={"variants": {}})
    try:
        res["reference"] = bench.bench_reference(data, spec, ctx.device)
    except Exception as e:
        err = _error(e)
        res["reference"] = {"error": err, "batch": spec["ref_batch"]}
        bench._free(ctx.device)
        if ctx.cuda:  # e.g. a DataLoader worker killed (small /dev/shm): in-process loading
            try:
                res["reference"] = dict(bench.bench_reference(data, spec, ctx.device, workers=0),
                                        error_with_workers=err)
            except Exception as e2:
                res["reference"]["error"] += " | with workers=0: " + _error(e2)
    bench._free(ctx.device)
    ctx.checkpoint()
    for v in ctx.prof["variants"]:
        _bench_variant(ctx, sec, data, spec, v, deadline)
    res["compile"] = "not run here (its cold compile takes minutes): see make bench"
    if "ratio" not in res:
        raise RuntimeError("no ratio: " + (res["reference"].get("error") or "every fast variant failed"))


def section_bench_graphs(ctx: Context, sec: dict, deadline):
    """Section 1's CUDA-graph variants, after every other section: a failed capture can leave a
    sticky CUDA error that fails every later CUDA call of the process, so nothing may come after it."""
    spec = ctx.bench_spec()
    data = ctx.bench_data(spec, sec)
    for v in ctx.prof["deferred_variants"]:
        _bench_variant(ctx, sec, data, spec, v, deadline)


def _bench_variant(ctx: Context, sec: dict, data, spec: dict, v: str, deadline) -> None:
    """Time fast-path variant ``v`` into ``sec["fast"]["variants"][v]`` (an error row, with the
    models per step and batch it would have used, when it fails or the time budget is spent), then
    refresh the section's summary and checkpoint it."""
    if ctx.left(deadline) <= 0:
        row = {"error": "skipped: time budget"}
    else:
        try:
            row = bench.bench_fast(data, spec, ctx.device, v)
        except Exception as e:
            row = {"error": _error(e)}
    if "error" in row:
        row.update(models_per_step=8 if v.endswith("_k8") else spec["k"], batch=spec["batch"])
    sec.setdefault("fast", {"variants": {}})["variants"][v] = row
    bench._free(ctx.device)
    bench.summarise(sec)
    ctx.checkpoint()


# ------------------------------------------------------------------------------ 2. fast vs plain
def _train_images(n_members: int, batch: int, epochs: int) -> int:
    """Images one model sees: DataLoader(drop_last) steps as in both paths, times the batch."""
    steps = n_members // batch if n_members > batch else 1
    return epochs * steps * min(batch, n_members)


def _container(node):
    from omegaconf import OmegaConf

    return OmegaConf.to_container(node, resolve=True)


def equivalence(diffs, margin: float = EQUIV_MARGIN_PTS, alpha: float = EQUIV_ALPHA) -> dict:
    """TOST on paired differences (points): equivalent when the (1 − 2α) t-interval of the mean lies
    inside (−margin, margin) (both one-sided tests reject); different when it lies wholly outside;
    'sample too small to decide' when the interval is wider than the margin band itself, so no mean
    could show equivalence; 'undecided' otherwise. With the SD seen, the models a pair count would
    need for an interval of half-width margin/2 (a mean near 0 would then pass)."""
    from scipy import stats

    d = np.asarray(diffs, dtype=float)
    n = len(d)
    out = {"margin_points": margin, "alpha": alpha, "n": n, "mean": float(d.mean()) if n else None}
    if n < 2:
        return {**out, "verdict": "sample too small to decide", "pass": None}
    sd = float(d.std(ddof=1))
    se = sd / math.sqrt(n)
    t = float(stats.t.ppf(1 - alpha, n - 1))
    lo, hi = out["mean"] - t * se, out["mean"] + t * se
    p_lower = float(stats.t.sf((out["mean"] + margin) / se, n - 1)) if se > 0 else float(out["mean"] <= -margin)
    p_upper = float(stats.t.cdf((out["mean"] - margin) / se, n - 1)) if se > 0 else float(out["mean"] >= margin)
    if -margin < lo and hi < margin:
        verdict, ok = "equivalent", True
    elif lo >= margin or hi <= -margin:
        verdict, ok = "different", False
    elif hi - lo >= 2 * margin:
        verdict, ok = "sample too small to decide", None
    else:
        verdict, ok = "undecided", None
    need = n
    while need < 10_000 and float(stats.t.ppf(1 - alpha, need - 1)) * sd / math.sqrt(need) > margin / 2:
        need += 1
    return {**out, "sd": sd, "se": se, "ci": [lo, hi], "p_tost": max(p_lower, p_upper), "verdict": verdict,
            "pass": ok, "models_needed": need}


def section_fast_vs_plain(ctx: Context, sec: dict, deadline):
    from src.data import keep_matrix
    from src.training.fast import train_models_fast
    from src.training.pool import evaluate_accuracy, train_model
    from src.training.recipe import Recipe

    p = ctx.prof["s2"]
    width = p["width"] if has_width_knob() else None
    model = "resnet18" if (width is not None or not ctx.tiny) else "smallcnn"
    base = ctx.dataset_overrides() + ctx.common_overrides() + [
        f"model={model}", "train=paper", f"train.epochs={p['epochs']}", f"train.models_per_step={p['models']}"]
    if p["batch"]:
        base.append(f"train.batch_size={p['batch']}")
    if width is not None:
        base.append(f"model.width={width}")
    cfg_fast, cfg_plain = compose(base + ["train.fast=true"]), compose(base + ["train.fast=false"])
    data = ctx.load(cfg_fast.dataset, cfg_fast.paths.data_dir)
    k = int(p["models"])
    keep = keep_matrix(max(2, k), len(data.y_train), 0.5, 0)[:k]
    members = [torch.from_numpy(np.flatnonzero(row)) for row in keep]
    seeds = [1000 + i for i in range(k)]
    batch, epochs = int(cfg_fast.train.batch_size), int(cfg_fast.train.epochs)
    images = [_train_images(len(m), batch, epochs) for m in members]
    sec.update(model=model, width=cfg_fast.model.get("width"),
               models=k, epochs=epochs, batch=batch, train_images=len(data.y_train), n_test=len(data.y_test),
               seeds=seeds, recipe=_container(cfg_fast.train),
               bf16=ctx.cuda and bool(cfg_fast.train.get("bf16", True)))

    def acc(m):
        return evaluate_accuracy(m, data.x_test, data.y_test, data.mean, data.std, ctx.device)

    _sync(ctx.device)
    t0 = time.perf_counter()
    fast_models = train_models_fast(Recipe.of(cfg_fast), data, members, seeds, ctx.device, [f"fast {i}" for i in range(k)])
    _sync(ctx.device)
    dt = time.perf_counter() - t0
    sec["fast"] = {"test_acc": [acc(m) for m in fast_models], "seconds": dt, "images": sum(images),
                   "images_per_s": sum(images) / dt}
    ctx.checkpoint()
    plain = {"test_acc": [], "seconds": 0.0, "images": 0}
    sec["plain"] = plain
    for i in range(k):          # one model at a time (the plain path); stop when the time is up
        if i and ctx.left(deadline) < plain["seconds"] / i:
            plain["stopped"] = f"time budget: {i} of {k} models"
            break
        t0 = time.perf_counter()
        m = train_model(Recipe.of(cfg_plain), data, members[i], seeds[i], ctx.device, name=f"plain {i}")
        _sync(ctx.device)
        plain["seconds"] += time.perf_counter() - t0
        plain["images"] += images[i]
        plain["test_acc"].append(acc(m))
        plain["images_per_s"] = plain["images"] / plain["seconds"]
        ctx.checkpoint()
    n = len(plain["test_acc"])
    d = 100.0 * (np.array(sec["fast"]["test_acc"][:n]) - np.array(plain["test_acc"]))
    sec["compared_models"] = n
    sec["acc_diff_points"] = float(d.mean())                    # fast − plain, mean over the same seeds
    sec["acc_diff_se_points"] = float(d.std(ddof=1) / math.sqrt(n)) if n > 1 else None
    sec["equivalence"] = equivalence(d)
    sec["speedup"] = sec["fast"]["images_per_s"] / plain["images_per_s"]


# -------------------------------------------------------------------------- 4. quantizer seconds
class ObcCostModel:
    """Seconds of ``obq_layer`` for (rows, d_col): per measured d_col ``a + b·rows`` per row batch
    (a: per-column latency of the loop and the Hessian inverse, b: the GEMM-bound part), elsewhere
    the least-squares fit ``α·d·batches + β·rows·d³`` over every measured point."""

    def __init__(self, points: list[tuple[int, int, float]], device, block: int = 64, max_mem_gb=None):
        self.device, self.block, self.max_mem_gb = torch.device(device), int(block), max_mem_gb
        self.per_d: dict[int, tuple[float, float]] = {}
        by_d: dict[int, list[tuple[int, float]]] = {}
        for r, d, t in points:
            by_d.setdefault(d, []).append((r, t))
        for d, pts in by_d.items():
            (r1, t1), (r2, t2) = pts[0], pts[-1]
            if r2 != r1:
                b = max(0.0, (t2 - t1) / (r2 - r1))
                a = max(0.0, t2 - b * r2)
            else:
                a, b = 0.0, t2 / r2
            self.per_d[d] = (a, b)
        X = np.array([[d, r * float(d) ** 3] for r, d, _ in points])
        y = np.array([t for _, _, t in points])
        coef = np.linalg.lstsq(X, y, rcond=None)[0] if len(points) >= 2 else np.array([0.0, y[0] / X[0, 1]])
        self.alpha, self.beta = (max(0.0, float(c)) for c in coef)

    def row_batch(self, rows: int, d: int) -> int:
        """The row batch a real run picks (the same budget rule, on the memory free for PyTorch now)."""
        from src.quant.obc import auto_row_batch

        return auto_row_batch(d, rows, self.device, "auto", self.max_mem_gb, self.block)

    def predict(self, rows: int, d: int) -> float:
        batches = math.ceil(rows / self.row_batch(rows, d))
        if d in self.per_d:
            a, b = self.per_d[d]
            return batches * a + b * rows
        return self.alpha * d * batches + self.beta * rows * float(d) ** 3

    def predict_model(self, model) -> float:
        from src.quant.policy import quantizable_layers

        return sum(self.predict(m.weight.shape[0], m.weight[0].numel()) for _, m in quantizable_layers(model))


def obc_projection(ctx: Context, spec: dict, data, deadline) -> dict:
    """OBC seconds for the whole model, projected from ``obq_layer`` timed on each distinct d_col with
    two row counts; plus the Hessians of every layer (timed in full, as ``quantize_obc`` builds them)."""
    from src.data import normalize
    from src.quant.bn_fold import fold_batchnorm
    from src.quant.grid import init_grid
    from src.quant.obc import layer_hessian, obq_layer
    from src.quant.policy import quantizable_layers

    qcfg = _quant_yaml("obc")
    dev = torch.device(ctx.device)
    n_calib = min(int(qcfg.get("n_calib", 2048)) if spec["quant_calib"] is None else spec["quant_calib"],
                  len(data.y_train))
    model = fold_batchnorm(bench._calibrated_model(spec["model"], spec["width"], data, ctx.device)).to(dev).eval()
    layers = quantizable_layers(model)
    calib = normalize(data.x_train[:n_calib], data.mean, data.std).to(dev)
    threads = torch.get_num_threads()
    if dev.type == "cpu" and qcfg.get("cpu_threads", 1) is not None:
        torch.set_num_threads(int(qcfg.get("cpu_threads", 1)))   # as quantize_obc runs its loop
    try:
        _peak_reset(ctx.device)
        _sync(ctx.device)
        t0 = time.perf_counter()
        hess = {n: layer_hessian(model, m, calib, int(qcfg.get("calib_batch", 128))) for n, m in layers}
        _sync(ctx.device)
        hessian_s = time.perf_counter() - t0
        widest: dict[int, tuple[str, torch.nn.Module]] = {}
        for n, m in layers:
            d = m.weight[0].numel()
            if d not in widest or m.weight.shape[0] > widest[d][1].weight.shape[0]:
                widest[d] = (n, m)
        points, timed = [], {}
        n0, m0 = layers[0]                 # one untimed run first: kernel / allocator warm-up
        W0 = m0.weight.detach().reshape(m0.weight.shape[0], -1).float()
        obq_layer(W0, hess[n0], init_grid(W0, 2, False, "minmax").to(dev), float(qcfg.get("damp", 0.01)), "auto")
        for d, (n, m) in sorted(widest.items(), reverse=True):      # the costly widths first
            if ctx.left(deadline) <= 0:
                raise RuntimeError(f"time budget: OBC timed on {len(timed)} of {len(widest)} layer widths")
            W = m.weight.detach().reshape(m.weight.shape[0], -1).float()
            cap = ctx.prof["obc_row_cap"] or W.shape[0]
            r2 = min(W.shape[0], cap)
            r1 = max(1, r2 // 2)
            for r in sorted({r1, r2}):
                grid = init_grid(W[:r], 2, bool(qcfg.get("symmetric", False)), qcfg.get("init", "lp"),
                                 float(qcfg.get("p", 2.4))).to(dev)
                _sync(ctx.device)
                t1 = time.perf_counter()
                obq_layer(W[:r], hess[n], grid, float(qcfg.get("damp", 0.01)), "auto", int(qcfg.get("block", 64)),
                          bool(qcfg.get("outlier", True)))
                _sync(ctx.device)
                t = time.perf_counter() - t1
                points.append((r, d, t))
                timed[f"{n} [{W.shape[0]}x{d}] rows={r}"] = t
        peak = _peak_gib(ctx.device)
    finally:
        torch.set_num_threads(threads)
    del hess
    bench._free(ctx.device)
    cost = ObcCostModel(points, ctx.device, int(qcfg.get("block", 64)), qcfg.get("max_mem_gb"))
    ctx.obc_model = cost
    layers_s = cost.predict_model(model)
    batches = {f"{m.weight.shape[0]}x{m.weight[0].numel()}": cost.row_batch(m.weight.shape[0], m.weight[0].numel())
               for _, m in layers}
    return {"model": spec["model"], "width": spec["width"], "n_calib": n_calib, "hessian_seconds": hessian_s,
            "timed_runs": timed, "projected_seconds": hessian_s + layers_s, "projected_layer_seconds": layers_s,
            "row_batches": batches,
            "peak_gib": peak, "peak_note": "of the timed row subsets (a full run sizes its row batch to "
                                           "60% of the memory free for PyTorch)" if ctx.cuda else None,
            "bits": 2, "default_iters": None,
            "reduced": "no iteration budget: projected from rows subsets, Σ rows·d_col³"}


def section_quant_seconds(ctx: Context, sec: dict, deadline):
    """OBC first (its cost model also lets section 3 skip OBC jobs that cannot fit), then the rest."""
    spec = ctx.bench_spec()
    data = ctx.bench_data(spec, sec)
    sec.update(model=spec["model"], width=spec["width"], bits=2, paper_iters=PAPER_ITERS, methods={})
    methods = quant_methods()
    try:
        sec["methods"]["obc"] = obc_projection(ctx, spec, data, deadline)
        if ctx.tiny:  # small enough to run in full: the projection's error is part of the report
            from src.data import normalize
            from src.quant import quantize

            qcfg = _quant_yaml("obc")
            qcfg.progress = False
            n_calib = sec["methods"]["obc"]["n_calib"]
            model = bench._calibrated_model(spec["model"], spec["width"], data, ctx.device)
            calib = normalize(data.x_train[:n_calib], data.mean, data.std)
            qcfg.n_calib = n_calib
            sec["methods"]["obc"]["measured_seconds"] = quantize(model, 2, qcfg, "uniform", calib, "bench",
                                                                 ctx.device).seconds
    except Exception as e:
        sec["methods"]["obc"] = {"error": _error(e)}
    bench._free(ctx.device)
    ctx.checkpoint()
    for m in methods:
        if m == "obc":
            continue
        _peak_reset(ctx.device)
        bench.bench_quant(data, spec, ctx.device, [m], sec["methods"], ctx.until(deadline))
        row = sec["methods"][m]
        row["peak_gib"] = _peak_gib(ctx.device)
        if "projected_seconds" in row:      # bench projects to the YAML's iters: restate at the paper's 20k
            row["projected_seconds_20k"] = row["seconds"] + row["seconds_per_iter"] * (PAPER_ITERS - row["iters"])
        ctx.checkpoint()
    bad = [m for m, v in sec["methods"].items() if "error" in v]
    if bad and len(bad) == len(sec["methods"]):
        raise RuntimeError("every quantizer failed: " + sec["methods"][bad[0]]["error"])


# ------------------------------------------------------------------------------------ 5. scoring
def section_scoring(ctx: Context, sec: dict, deadline):
    spec = ctx.bench_spec()
    data = ctx.bench_data(spec, sec)
    sec.update(model=spec["model"], width=spec["width"], **bench.bench_scoring(data, spec, ctx.device))


# ------------------------------------------------------------------------------ 6. newer paths
# (label, method, experiment preset, overrides): the quantizer's config is what a job of that preset
# composes (conf/quant/*.yaml under conf/experiment/*.yaml), so the rows follow the presets
NEW_PATH_ROWS = (
    ("rtn W2A8", "rtn", PAPER_EXPERIMENT, ("quant.act_bits=8",)),
    ("brecq W2A8", "brecq", PAPER_EXPERIMENT, ("quant.act_bits=8",)),
    ("adaround W2, bitwidth.first=4 last=fp", "adaround", PAPER_EXPERIMENT, ("bitwidth.first=4", "bitwidth.last=fp")),
    ("adaround, cifar10_cpu preset", "adaround", "cifar10_cpu", ()),
    ("brecq, cifar10_cpu preset", "brecq", "cifar10_cpu", ()),
)


def _preset_quant(method: str, preset: str, overrides=()):
    """(quant config, bit-width policy, bitwidth overrides) as a job of ``experiment=preset`` composes them."""
    from omegaconf import OmegaConf

    from src.quant.policy import Overrides

    cfg = compose([f"experiment={preset}", f"quant={method}", "logger=none", *overrides])
    qcfg = OmegaConf.create(OmegaConf.to_container(cfg.quant, resolve=True))
    qcfg.progress = False
    return qcfg, str(cfg.bitwidth.policy), Overrides.of(cfg.bitwidth)


def section_new_paths(ctx: Context, sec: dict, deadline):
    """Training precision on both paths (bf16-mixed against 32-true) and quantizer rows that the other
    sections do not time: W/A quantization, ``bitwidth.*`` overrides, AdaRound / BRECQ at the CPU
    preset's reconstruction settings. Each with its projection to the paper protocol."""
    from src.data import normalize

    p = ctx.prof["s6"]
    total = bench.PROTOCOL["models"] * bench.PROTOCOL["images"] * bench.PROTOCOL["epochs"]
    sec.update(training={}, quant={})
    try:
        tr = bench.bench_precision({"prec_models": p["prec_models"], "prec_rounds": p["prec_rounds"]}, "wall",
                                   ctx.device)
        for r in tr["rows"]:
            r["projected_protocol_h"] = {k: total / v / 3600 for k, v in r["images_per_s"].items()}
        sec["training"] = tr
    except Exception as e:
        sec["training"] = {"error": _error(e)}
    bench._free(ctx.device)
    ctx.checkpoint()
    spec = ctx.bench_spec()
    data = ctx.bench_data(spec, sec)
    model = bench._calibrated_model(spec["model"], spec["width"], data, ctx.device)
    sec.update(model=spec["model"], width=spec["width"], bits=2)
    weight_only = ctx.res["sections"].get("quant_seconds", {}).get("methods", {})
    for label, method, preset, overrides in NEW_PATH_ROWS:
        row: dict = {"method": method, "preset": preset, "overrides": list(overrides)}
        sec["quant"][label] = row
        if ctx.left(deadline) <= 0:
            row["error"] = "skipped: time budget"
            ctx.checkpoint()
            continue
        try:
            qcfg, policy, ov = _preset_quant(method, preset, overrides)
            n_calib = min(int(qcfg.get("n_calib", 1024)) if spec["quant_calib"] is None else spec["quant_calib"],
                          len(data.y_train))
            qcfg.n_calib = n_calib
            if "calib_batch" in qcfg and spec["quant_calib_batch"] < int(qcfg.calib_batch):
                qcfg.calib_batch = spec["quant_calib_batch"]
            calib = normalize(data.x_train[:n_calib], data.mean, data.std)
            _peak_reset(ctx.device)
            row.update(n_calib=n_calib, policy=policy,
                       **bench.time_quantizer(model, calib, qcfg, p["quant_iters"], ctx.device, 2, policy, ov))
            row["peak_gib"] = _peak_gib(ctx.device)
            per_model = row.get("projected_seconds", row["seconds"])
            row["protocol_job_h"] = per_model * PROTOCOL_MODELS / 3600
            w = weight_only.get(method, {}).get("seconds_per_iter")
            if w and row.get("seconds_per_iter") and overrides and "act_bits" in overrides[0]:
                row["per_iter_vs_weight_only"] = row["seconds_per_iter"] / w
        except Exception as e:
            row["error"] = _error(e)
        bench._free(ctx.device)
        ctx.checkpoint()
    bad = [v for v in sec["quant"].values() if "error" in v]
    if "error" in sec["training"] and len(bad) == len(sec["quant"]):
        raise RuntimeError("every row failed: " + sec["training"]["error"])


# ------------------------------------------------------------------------------ 3. mini protocol
def _job(cfg, directory: Path, ctx: Context):
    """One job through ``src.main.run``, writing into ``directory`` (its outputs go to the cwd outside
    Hydra), its printed table into ``directory/stdout.txt``; the dataset read once per config."""
    import src.main as main

    directory.mkdir(parents=True, exist_ok=True)
    cwd, buf = os.getcwd(), io.StringIO()
    patched = hasattr(main, "load_dataset")
    orig = getattr(main, "load_dataset", None)
    try:
        os.chdir(directory)
        if patched:
            main.load_dataset = ctx.load
        with contextlib.redirect_stdout(buf):
            return main.run(cfg)
    finally:
        if patched:
            main.load_dataset = orig
        os.chdir(cwd)
        (directory / "stdout.txt").write_text(buf.getvalue())


def _metrics(block: dict | None) -> dict:
    return {a: {"auc": v.get("auc"), TPR_KEY: v.get(TPR_KEY)} for a, v in (block or {}).items()}


def section_mini_protocol(ctx: Context, sec: dict, deadline):
    import src.main as main
    from src import pipeline as P
    from src.cache import ArtifactStore
    from src.models import build_model
    from src.quant.bn_fold import fold_batchnorm

    p = ctx.prof["s3"]
    width = p["width"] if has_width_knob() else None
    model = "resnet18" if (width is not None or not ctx.tiny) else "smallcnn"   # tiny: no OBC on width 64 on CPU
    base = ctx.dataset_overrides({"max_train": p["max_train"], "max_test": p["max_test"]}) + ctx.common_overrides()
    base += [f"model={model}", "train=paper", f"train.epochs={p['epochs']}",
             f"train.models_per_step={p['models_per_step']}",
             f"n_models={p['n_models']}", "pkeep=0.5", "targets=[0]", "attack=all", "attack.reference=both",
             f"attack.bootstrap={p['bootstrap']}", "bitwidth=paper", "seed=0"]
    if p["batch"]:
        base.append(f"train.batch_size={p['batch']}")
    if width is not None:
        base.append(f"model.width={width}")
    methods = [m for m in quant_methods() if m in p.get("methods", (m,))]
    bits = list(p.get("bits", (4, 2, 1.58)))
    cheap = [m for m in methods if m != "obc"]
    plan = [(m, b) for b in bits for m in cheap] + ([("obc", b) for b in bits] if "obc" in methods else [])
    sec.update(model=model, width=width, n_models=p["n_models"], epochs=p["epochs"], iters=p["iters"],
               n_calib=p["n_calib"], attack=ATTACK, reference="both", methods=methods, bits=bits, jobs=[])
    if width is None and ctx.tiny:
        sec["note"] = "resnet18 has no model.width knob: smallcnn instead (OBC on width 64 does not fit a CPU)"
    jobs_dir = ctx.workdir / "jobs"

    # the pool first (stage=train): its training time apart from the per-job times
    cfg = compose(base + ["quant=rtn", "bits=4", "stage=train"])
    t0 = time.perf_counter()
    _job(cfg, jobs_dir / "pool", ctx)
    _sync(ctx.device)
    sec["pool_seconds"] = time.perf_counter() - t0
    sec["train_path"] = "fast" if P.model_key(cfg, "-", 0, ctx.device)["train"].get("path") == "fast" else "plain"
    ctx.checkpoint()
    obc_pred = None
    if ctx.obc_model is not None and "obc" in methods:
        net = fold_batchnorm(build_model(model, 10, 3, width))
        obc_pred = ctx.obc_model.predict_model(net)
        sec["obc_predicted_seconds_per_model"] = obc_pred
    for m, b in plan:
        row = {"quant": m, "bits": b}
        sec["jobs"].append(row)
        try:
            left = ctx.left(deadline)
            if left <= 0:
                raise TimeoutError("skipped: time budget")
            if m == "obc" and obc_pred is not None and obc_pred * p["n_models"] > left:
                raise TimeoutError(f"skipped: OBC projected {obc_pred * p['n_models']:.0f} s "
                                   f"({p['n_models']} models) > {left:.0f} s left")
            # the shared budget reaches the methods that have the key (conf/quant/*.yaml)
            ov = base + [f"quant={m}", f"bits={b}", f"++budget.n_calib={p['n_calib']}", f"++budget.iters={p['iters']}"]
            cfg = compose(ov)
            t0 = time.perf_counter()
            # the target first, timed (cached: the job loads it): predicts the job's cost
            orig = getattr(main, "load_dataset", None)
            if orig is not None:
                main.load_dataset = ctx.load
            try:
                data, keep, targets = main.prepare(cfg)
            finally:
                if orig is not None:
                    main.load_dataset = orig
            store = ArtifactStore(cfg.paths.cache_dir, lock=cfg.get("cache_lock", "soft"))
            q = P.quantize_pool_model(cfg, data, keep, targets[0], store, ctx.device)
            per_model = time.perf_counter() - t0
            row["quant_seconds_per_model"] = q.seconds
            predicted = per_model * (p["n_models"] - 1)
            if predicted > ctx.left(deadline):
                raise TimeoutError(f"skipped: projected {predicted:.0f} s for the matched references "
                                   f"> {ctx.left(deadline):.0f} s left")
            res = _job(cfg, jobs_dir / f"{m}_{b:g}", ctx)
            _sync(ctx.device)
            row["seconds"] = time.perf_counter() - t0
            u = res["utility"]
            row.update(test_acc=u["test_acc"], fp_test_acc=u["fp_test_acc"], attacks=_metrics(res.get("attacks")),
                       attacks_matched=_metrics(res.get("attacks_matched")))
            if "fp" not in sec:
                sec["fp"] = {"test_acc": u["fp_test_acc"], "attacks": _metrics(res.get("fp_attacks"))}
        except Exception as e:
            row["error"] = _error(e)
        bench._free(ctx.device)
        ctx.checkpoint()
    done = [r for r in sec["jobs"] if "error" not in r]
    sec["jobs_done"] = f"{len(done)} of {len(plan)}"
    if not done:
        raise RuntimeError("no job finished: " + sec["jobs"][0]["error"])


# ------------------------------------------------------------------------------------ targets
def _targets(res: dict, cuda: bool) -> list[dict]:
    s = res.get("sections", {})
    vals: list[tuple[str, str, float | None]] = []
    b = s.get("bench", {})
    vals.append(("trainer_ratio", "", b.get("ratio")))
    vals.append(("protocol_h", "", b.get("projected_protocol_h")))
    for m, v in s.get("quant_seconds", {}).get("methods", {}).items():
        vals.append(("quant_20k_s", m, v.get("projected_seconds_20k", v.get("projected_seconds", v.get("seconds")))))
    vals.append(("scoring_img_s", "", s.get("scoring", {}).get("images_per_s")))
    fvp = s.get("fast_vs_plain", {})
    vals.append(("fast_plain_pts", "", fvp.get("acc_diff_points")))
    out = []
    for key, what, v in vals:
        label, op, thr, unit = TARGETS[key]
        ok = None
        if cuda and v is not None:
            if key == "fast_plain_pts":   # decided by the equivalence test, not by the mean alone
                ok = fvp.get("equivalence", {}).get("pass")
            else:
                ok = bool(v >= thr) if op == ">=" else bool(v <= thr)
        out.append({"target": key, "what": what, "label": label + (f" ({what})" if what else ""), "value": v,
                    "op": op, "threshold": thr, "unit": unit, "pass": ok})
    return out


# -------------------------------------------------------------------------------------- table
def _num(v, unit="", nd=2):
    if v is None:
        return "-"
    if unit == "img/s":
        return f"{v:,.0f} img/s"
    return f"{v:,.{nd}f} {unit}".rstrip()


def format_table(res: dict) -> str:
    cuda = _cuda(res["device"])
    s = res.get("sections", {})
    tg = {(t["target"], t["what"]): t for t in res.get("targets", [])}
    lines = [f"gpu_check: device={res['device']} ({res.get('gpu', 'cpu')}), {'tiny' if res['tiny'] else 'full'} sizes, "
             f"torch {res['torch']}, total {res.get('total_s', 0):.0f} s"
             + (f" of a {res['budget_s']:.0f} s budget" if res.get("budget_s") else ""), ""]
    lines += [f"note: {n}" for n in res.get("notes", [])]
    head = f"{'figure':<58}{'value':>18}   {'target':<14}" + ("pass" if cuda else "")
    lines += [head, "-" * len(head)]

    def row(label, value, key=None, what=""):
        t = tg.get((key, what)) if key else None
        target = f"{t['op']} {t['threshold']:g} {t['unit']}" if t else ""
        verdict = ("" if t is None or t["pass"] is None else ("PASS" if t["pass"] else "FAIL")) if cuda else ""
        if cuda and t is not None and t["pass"] is None and t["value"] is not None:
            verdict = "n/a"
        lines.append(f"{label:<58}{value:>18}   {target:<14}{verdict}")

    def failed(title, sec):
        if sec.get("error"):
            lines.append(f"{title:<58}{'failed':>18}   {sec['error']}")
            return True
        return False

    b = s.get("bench")
    if b is not None and not (failed("1 bench", b) and "reference" not in b):
        r = b.get("reference", {})
        row(f"1 reference loop (PIL+DataLoader, fp32, batch {r.get('batch', '?')})",
            _num(r.get("images_per_s"), "img/s") if "images_per_s" in r else "failed")
        if "error" in r and "images_per_s" not in r:
            lines.append(f"    {r['error']}")
        for name, v in b.get("fast", {}).get("variants", {}).items():
            label = f"  fast trainer [{name}] K={v.get('models_per_step', '?')} x batch {v.get('batch', '?')}"
            row(label, _num(v.get("images_per_s"), "img/s") if "images_per_s" in v else "failed")
            if "error" in v:
                lines.append(f"    {v['error']}")
        row(f"  ratio (best: {b.get('fast', {}).get('best', '-')})", _num(b.get("ratio"), "x"), "trainer_ratio")
        pre = b.get("fast", {}).get("preset")
        row(f"  projected paper protocol, 65 x 100 ep x 25k [{pre or 'preset not timed'}]",
            _num(b.get("projected_protocol_h"), "h"), "protocol_h")
        best = b.get("fast", {}).get("best")
        if best and best != pre and b.get("projected_protocol_best_h") is not None:
            row(f"    if you set {b.get('best_settings')} [{best}]", _num(b["projected_protocol_best_h"], "h"))
    f = s.get("fast_vs_plain")
    if f is not None and not (failed("2 fast vs plain", f) and "fast" not in f):
        for path in ("fast", "plain"):
            v = f.get(path, {})
            accs = v.get("test_acc") or []
            acc = f"acc {100 * np.mean(accs):.2f}%" if accs else "-"
            row(f"2 {path} path: {len(accs)} x {f.get('model')} w{f.get('width')}, {f.get('epochs')} ep, test {acc}",
                _num(v.get("images_per_s"), "img/s"))
        se = f.get("acc_diff_se_points")
        row("  test accuracy fast - plain" + (f" (SE {se:.2f})" if se is not None else ""),
            _num(f.get("acc_diff_points"), "points"), "fast_plain_pts")
        eq = f.get("equivalence")
        if eq:
            ci = f"90% CI [{eq['ci'][0]:+.2f}, {eq['ci'][1]:+.2f}], " if eq.get("ci") else ""
            need = f"; ~{eq['models_needed']} models for a decision" if eq.get("pass") is None and eq.get("models_needed") else ""
            lines.append(f"    TOST, margin +-{eq['margin_points']:g} points: {ci}{eq['verdict']}{need}")
    q = s.get("quant_seconds")
    if q is not None and not (failed("4 quantizers", q) and not q.get("methods")):
        for m, v in q.get("methods", {}).items():
            title = f"4 {m} 2-bit {q.get('model')} w{q.get('width')}"
            if "error" in v:
                lines.append(f"{title:<58}{'failed':>18}   {v['error']}")
                continue
            peak = f", peak {v['peak_gib']:.2f} GiB" if v.get("peak_gib") is not None else ""
            if "projected_seconds_20k" in v:
                row(f"{title}: {v['seconds']:.1f} s at {v['iters']} it{peak}", _num(v["projected_seconds_20k"], "s"),
                    "quant_20k_s", m)
            elif m == "obc":
                meas = f", measured {v['measured_seconds']:.2f} s" if "measured_seconds" in v else ""
                row(f"{title}: projected (rows subsets){meas}{peak}", _num(v.get("projected_seconds"), "s"),
                    "quant_20k_s", m)
            else:
                row(f"{title}: measured{peak}", _num(v.get("seconds"), "s"), "quant_20k_s", m)
    sc = s.get("scoring")
    if sc is not None and not failed("5 scoring", sc):
        row(f"5 scoring phi: {sc.get('models')} models x {sc.get('examples')} x {sc.get('queries')} views",
            _num(sc.get("images_per_s"), "img/s"), "scoring_img_s")
        row("  compute_phi (1 model, fp32)", _num(sc.get("reference_images_per_s"), "img/s"))
    npth = s.get("new_paths")
    if npth is not None and not (failed("6 newer paths", npth) and not npth.get("quant")):
        tr = npth.get("training", {})
        if tr.get("error"):
            lines.append(f"{'6 training precision':<58}{'failed':>18}   {tr['error']}")
        for r in tr.get("rows", []):
            for cell in ("32-true", "bf16-mixed"):
                h = r.get("projected_protocol_h", {}).get(cell)
                row(f"6 {r['path']} path {cell}: {r['model']}", _num(r["images_per_s"].get(cell), "img/s"))
                if h is not None:
                    row(f"    projected paper protocol at this rate (1 model/step)", _num(h, "h"))
        for label, v in npth.get("quant", {}).items():
            title = f"6 {label} ({v.get('preset')})"
            if "error" in v:
                lines.append(f"{title:<58}{'failed':>18}   {v['error']}")
                continue
            at = f" at {v['default_iters']} it" if "default_iters" in v else ""
            vs = f", x{v['per_iter_vs_weight_only']:.2f} per it vs weight-only" if "per_iter_vs_weight_only" in v else ""
            row(f"{title}: s/model{at}{vs}", _num(v.get("projected_seconds", v.get("seconds")), "s"))
            row(f"    paper job (target + 64 matched references)", _num(v.get("protocol_job_h"), "h"))
    if b is not None and b.get("graphs_error"):
        lines.append(f"{'1 CUDA-graph variants':<58}{'failed':>18}   {b['graphs_error']}")
    mp = s.get("mini_protocol")
    if mp is not None:
        lines.append("")
        if not (failed("3 mini protocol", mp) and not mp.get("jobs")):
            lines.append(f"3 mini protocol: {mp.get('model')} w{mp.get('width')}, {mp.get('n_models')} models x "
                         f"{mp.get('epochs')} ep ({mp.get('train_path')} path, "
                         f"pool {mp.get('pool_seconds', 0):.0f} s), "
                         f"iters {mp.get('iters')}, n_calib {mp.get('n_calib')}, {ATTACK}, refs fp | matched")
            if mp.get("note"):
                lines.append(f"  {mp['note']}")
            lines.append(f"  {'method':<10}{'bits':>5}{'test acc':>10}{'AUC fp':>9}{'AUC mt':>9}"
                         f"{'TPR1% fp':>10}{'TPR1% mt':>10}{'s/model':>9}{'job s':>8}")

            def g(block, k):
                v = (block or {}).get(ATTACK, {}).get(k)
                return f"{v:.3f}" if v is not None else "-"
            fp = mp.get("fp")
            if fp:
                lines.append(f"  {'fp':<10}{32:>5}{fp['test_acc']:>10.3f}{g(fp['attacks'], 'auc'):>9}{'':>9}"
                             f"{g(fp['attacks'], TPR_KEY):>10}")
            for j in mp.get("jobs", []):
                if "error" in j:
                    lines.append(f"  {j['quant']:<10}{j['bits']:>5g}   {j['error']}")
                    continue
                lines.append(f"  {j['quant']:<10}{j['bits']:>5g}{j['test_acc']:>10.3f}{g(j['attacks'], 'auc'):>9}"
                             f"{g(j['attacks_matched'], 'auc'):>9}{g(j['attacks'], TPR_KEY):>10}"
                             f"{g(j['attacks_matched'], TPR_KEY):>10}{j.get('quant_seconds_per_model', 0):>9.1f}"
                             f"{j.get('seconds', 0):>8.0f}")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------- run
RUNNERS = {1: section_bench, 2: section_fast_vs_plain, 3: section_mini_protocol, 4: section_quant_seconds,
           5: section_scoring, 6: section_new_paths}


def run(device: str, tiny: bool, data_dir: str | None, out: str, budget_s: float | None = None,
        sections=None, workdir: str | None = None, keep: bool = False) -> dict:
    """``out``: the folder of the results, gpu_check.json and gpu_check.txt, and nothing else. The
    work dir (cache, jobs, a dataset download) is ``workdir`` or a new folder in the system's temp
    dir, removed at the end unless ``keep``."""
    prof = PROFILES["tiny" if tiny else "gpu"]
    budget_s = prof["budget_s"] if budget_s is None else (budget_s if budget_s > 0 else None)
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    wd = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="gpu_check_work_"))
    wd.mkdir(parents=True, exist_ok=True)
    ctx = Context(device, tiny, data_dir, out_dir, wd, budget_s)
    res = ctx.res
    res.update(device=device, tiny=tiny, data=data_dir or ("generated" if tiny else "torchvision cifar10"),
               torch=torch.__version__, python=platform.python_version(), threads=torch.get_num_threads(),
               budget_s=budget_s, sections={})
    if ctx.cuda:
        res["gpu"] = torch.cuda.get_device_name()
    print(f"gpu_check: device={device} ({res.get('gpu', 'cpu')}), {'tiny' if tiny else 'full'} sizes, "
          f"torch {res['torch']}, {res['threads']} threads; writing {out_dir}", flush=True)
    wanted = [i for i in RUN_ORDER if sections is None or i in sections]
    if not tiny:   # read the dataset once, before the sections' own time limits start
        t0 = time.perf_counter()
        try:
            data = ctx.full_data()
            res["data_train_images"] = len(data.y_train)
        except Exception as e:
            res["data_error"] = _error(e)
        res["data_seconds"] = time.perf_counter() - t0
    ctx.start_budget()          # the budget is for the sections: start-up and reading the data are not in it
    ctx.checkpoint()
    graphs = 1 in wanted and bool(prof["deferred_variants"])
    try:
        for i in wanted:
            name = SECTIONS[i]
            sec: dict = {}
            res["sections"][name] = sec
            cap = prof["caps"].get(i)
            t0 = time.perf_counter()
            deadline = t0 + cap if cap else None
            if i == 3 and graphs and ctx.deadline is not None:   # section 3 leaves the graphs their time
                deadline = ctx.deadline - prof["graphs_cap"]
            if ctx.left(deadline) <= 0:
                sec["error"] = "skipped: time budget"
            else:
                with _isolated(device):
                    try:
                        RUNNERS[i](ctx, sec, deadline)
                    except Exception as e:
                        sec["error"] = _error(e)
            sec["section_seconds"] = time.perf_counter() - t0
            ctx.checkpoint()
        if graphs:
            sec = res["sections"]["bench"]
            t0 = time.perf_counter()
            with _isolated(device):
                try:
                    section_bench_graphs(ctx, sec, None)
                except Exception as e:
                    sec["graphs_error"] = _error(e)
            sec["graphs_seconds"] = time.perf_counter() - t0
            ctx.checkpoint()
    finally:
        if not keep:
            shutil.rmtree(wd, ignore_errors=True)
    ctx.checkpoint()
    print("\n" + format_table(res))
    print(f"\ntotal {res['total_s']:.0f} s; written {out_dir / JSON_NAME} and {TABLE_NAME}"
          + (f"; work dir {wd}" if keep else ""), flush=True)
    return res


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, no usage block
        print(f"error: {message}", file=sys.stderr)
        sys.exit(2)


def main(argv=None) -> dict:
    p = _Parser(prog="python -m benchmarks.gpu_check", description=__doc__.split("\n\n")[0])
    cuda = torch.cuda.is_available()
    p.add_argument("--device", choices=["cpu", "cuda"], default="cuda" if cuda else "cpu")
    p.add_argument("--tiny", action="store_true",
                   help="tiny sizes (a CPU check of every section's code path, not of speed)")
    p.add_argument("--data", default=None, help="image folder with train/<class>/* and test/<class>/* "
                   "(e.g. the CIFAR-10 JPEGs); default: torchvision's CIFAR-10 download (or generated with --tiny)")
    p.add_argument("--out", default="outputs/gpu_check",
                   help=f"folder of the results: {JSON_NAME} and {TABLE_NAME}, nothing else")
    p.add_argument("--budget", type=float, default=None,
                   help="wall-clock budget in s after start-up: later work is skipped and reported "
                        f"(default {PROFILES['gpu']['budget_s']:.0f} on full sizes, none with --tiny; 0 = none)")
    p.add_argument("--sections", default=None, help="comma-separated subset of 1..6 (default: all)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: 1 with --tiny)")
    p.add_argument("--workdir", default=None,
                   help="cache, job outputs, a dataset download (default: a new folder in the temp dir, removed)")
    p.add_argument("--keep", action="store_true", help="keep the work dir")
    a = p.parse_args(argv)
    missing = [m for m in ("hydra", "omegaconf") if importlib.util.find_spec(m) is None]
    if missing:
        p.error(f"{' and '.join(missing)} not importable: install the bundle's wheels into a folder of their own "
                "and put it on PYTHONPATH (docs/gpu.md)")
    if Path(a.out).suffix == ".json":
        p.error(f"--out {a.out}: a folder (the check writes {JSON_NAME} and {TABLE_NAME} there)")
    if a.device == "cuda" and not cuda:
        p.error("--device cuda: CUDA is not available (use --device cpu --tiny)")
    if a.device == "cpu" and not a.tiny:
        p.error("--device cpu needs --tiny: the full sizes are for a GPU (hours on a CPU)")
    if a.data and not (Path(a.data) / "train").is_dir():
        p.error(f"--data {a.data}: need a folder holding train/<class>/* and test/<class>/*")
    sections = None
    if a.sections:
        try:
            sections = {int(s) for s in a.sections.split(",") if s.strip()}
        except ValueError:
            sections = {0}
        if not sections or not sections <= set(SECTIONS):
            p.error(f"--sections {a.sections}: allowed: comma-separated numbers from 1..6")
    if a.threads or a.tiny:
        torch.set_num_threads(a.threads or 1)
    os.environ.setdefault("WANDB_MODE", "disabled")
    return run(a.device, a.tiny, a.data, a.out, a.budget, sections, a.workdir, a.keep)


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        main()
    sys.exit(0)
