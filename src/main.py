"""Hydra entry point: one job = one (dataset, model, quant, bits, attack) point.

    dataset → membership → pool (train + score, cached) → quantize each target (cached)
            → attack (other pool models are references) → results.json, scores.npz, W&B, table
    with attack.release: also the joint attack over the released versions (src/releases.py)
"""
from __future__ import annotations

import contextlib
import io
import logging
import re
import shutil
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from src import pipeline as P
from src import releases as REL
from src.cache import ArtifactStore
from src.data import DataError, load_dataset
from src.report.results import build_results, job_dir, print_results, write_job
from src.report.wandb_sink import WandbSink
from src.training import resolve_device
from src.validate import (ConfigError, check_image_size, check_override_keys, check_sweep, config_warnings,
                          expand_paths, validate, validate_external, validate_layers, validate_with_data)

if TYPE_CHECKING:
    from omegaconf import DictConfig

log = logging.getLogger("src.main")


def help_options(group: str) -> str:
    """The options of a config group for ``--help`` (conf/<group>/*.yaml; ``_``-prefixed ones are
    building blocks of the others, not choices)."""
    d = Path(__file__).resolve().parents[1] / "conf" / group
    return ", ".join(sorted(p.stem for p in d.glob("*.yaml") if not p.stem.startswith("_")))


HYDRA_OWN = {".hydra", "main.log"}  # what Hydra puts in a job dir before the task runs


class Interrupted(Exception):
    """Ctrl-C, with the line saying what the interrupted job left in the cache."""


def prepare(cfg: DictConfig):
    """Validate the config, load the data and split membership: everything that may reject the job
    before any artifact is computed. Raises ConfigError / DataError with a one-line message."""
    expand_paths(cfg)
    validate(cfg)
    data = load_dataset(cfg.dataset, cfg.paths.data_dir)
    check_image_size(cfg, data.image_size, data.in_channels, f"dataset={cfg.dataset.name}")
    validate_layers(cfg, data.num_classes, data.in_channels)
    validate_external(cfg, data.num_classes, data.in_channels)  # target=external: its checkpoint fits `model`
    keep = P.membership(cfg, data)
    targets = P.target_indices(cfg)
    validate_with_data(cfg, keep, len(data.y_test), targets)
    return data, keep, targets


def _overrides() -> list[str]:
    try:
        from hydra.core.hydra_config import HydraConfig

        return list(HydraConfig.get().overrides.task)
    except Exception:
        return []


def run(cfg: DictConfig) -> dict | None:
    data, keep, targets = prepare(cfg)
    warnings = config_warnings(cfg, _overrides())
    for w in warnings:
        log.warning(w)
    if cfg.get("num_threads"):
        torch.set_num_threads(int(cfg.num_threads))
    device = resolve_device(cfg.get("device", "auto"))
    store = ArtifactStore(cfg.paths.cache_dir, lock=cfg.get("cache_lock", "soft"), device=device)
    try:
        return _run(cfg, data, keep, targets, device, store, warnings)
    except KeyboardInterrupt:
        raise Interrupted(interrupted_line(store, cfg.paths.cache_dir)) from None


def interrupted_line(store: ArtifactStore, cache_dir) -> str:
    made = [f"{store.saved[k]} {what}" for k, what in (("models", "pool models"), ("quantized", "quantized targets"))]
    return (f"interrupted: {' and '.join(made)} finished by this run are saved in {cache_dir}; "
            f"rerun the same command to resume (cached work is loaded, not redone)")


def _run(cfg, data, keep, targets, device, store, warnings) -> dict | None:
    from src.provenance import provenance

    with WandbSink(cfg, job_dir()) as sink:
        if cfg.stage == "train":  # fill the cache only (split the pool across jobs with model_range)
            P.train_pool(cfg, data, keep, store, device, range(*(cfg.model_range or [0, keep.shape[0]])),
                         sink.lightning_logger())
            log.info("written:\n  %-8s %s (%d pool models trained now)", "cache", cfg.paths.cache_dir,
                     store.saved["models"])
            return None
        pool = P.train_pool(cfg, data, keep, store, device, logger=sink.lightning_logger())
        resemblance = P.check_resemblance(cfg, keep, pool, targets, warnings)  # target=external only
        quantized = P.quantize_targets(cfg, data, keep, targets, store, device)
        refs = P.reference_phi(cfg, data, keep, pool, store, device)  # {"fp"|"matched": φ of the references}
        # quantized and FP targets' scores, and references attacked as pseudo-targets (a threshold set
        # without the target's labels)
        scores, fp_scores, ref_out = P.attack_scores(cfg, keep, pool, quantized, refs)
        joint = REL.attack_releases(cfg, data, keep, pool, store, device, targets)  # None without attack.release
        results, arrays = build_results(cfg, data, pool, quantized, scores, fp_scores, refs, ref_out, joint)
        results["warnings"] = warnings + P.result_warnings(results)
        for w in results["warnings"][len(warnings):]:
            log.warning(w)
        if resemblance:
            results["resemblance"] = resemblance
        results["provenance"] = provenance(device)
        write_job(job_dir(), results, arrays, {q.index: q.export for q in quantized})
        with _tee_to_log():
            print_results(results)
        sink.log_results(results)
    log.info(where_written(job_dir()))
    return results


_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def _log_file() -> Path | None:
    """The job's log file (Hydra's ``main.log``): the root logger's file handler."""
    for h in logging.getLogger().handlers:
        if isinstance(h, logging.FileHandler):
            return Path(h.baseFilename)
    return None


class _Tee(io.TextIOBase):
    """stdout that also appends to the job's log file, without terminal colour codes."""

    def __init__(self, out, log_path: Path):
        self.out, self.log = out, open(log_path, "a", encoding="utf-8")

    def write(self, s: str) -> int:
        self.out.write(s)
        self.log.write(_ANSI.sub("", s))
        return len(s)

    def flush(self) -> None:
        self.out.flush()
        self.log.flush()

    def isatty(self) -> bool:
        return self.out.isatty()

    @property
    def encoding(self):
        return getattr(self.out, "encoding", "utf-8")


@contextlib.contextmanager
def _tee_to_log():
    """The results table goes to the console and into main.log (a cached job logs little else)."""
    path = _log_file()
    if path is None:
        yield
        return
    tee = _Tee(sys.stdout, path)
    try:
        with contextlib.redirect_stdout(tee):
            yield
    finally:
        tee.flush()
        tee.log.close()


def where_written(directory: Path) -> str:
    """The block that ends a job: its directory and the files a reader opens first."""
    d = Path(directory)
    rows = [("job dir", d), ("results", d / "results.json"), ("scores", d / "scores.npz")]
    rows += [("plot", p) for p in sorted(d.glob("*.png"))]
    rows += [("log", d / "main.log")] if (d / "main.log").exists() else []
    return "written:\n" + "\n".join(f"  {k:<8} {p}" for k, p in rows)


def remove_refused_job_dir(directory: Path) -> None:
    """A job refused before any work leaves no directory: remove it when it holds only what Hydra
    wrote (.hydra/, main.log); never one with anything else in it."""
    d = Path(directory)
    try:
        if d.is_dir() and d.resolve() != Path.cwd().resolve() and {p.name for p in d.iterdir()} <= HYDRA_OWN:
            shutil.rmtree(d)
    except OSError:
        pass


def _main(cfg: DictConfig) -> None:
    try:
        run(cfg)
    except (ConfigError, DataError) as e:
        print(f"error: {e}", file=sys.stderr)
        remove_refused_job_dir(job_dir())
        sys.exit(2)
    except Interrupted as e:
        print(str(e), file=sys.stderr)
        sys.exit(130)
    except KeyboardInterrupt:  # while validating or loading data
        print("interrupted: nothing was computed yet; rerun the same command to start again", file=sys.stderr)
        sys.exit(130)
    except FloatingPointError as e:  # diverged training/quantization: nothing was cached for it
        print(f"error: {e}".splitlines()[0], file=sys.stderr)
        sys.exit(3)


def main() -> None:
    """The command line (Hydra imported here: the module itself imports without it)."""
    import hydra
    from omegaconf import OmegaConf

    OmegaConf.register_new_resolver("help_options", help_options, replace=True)
    hydra.main(config_path="../conf", config_name="config", version_base="1.3")(_main)()


if __name__ == "__main__":
    try:
        check_override_keys(sys.argv[1:])
        check_sweep(sys.argv[1:])  # every job of a multirun, before the first one starts
    except ConfigError as e:  # before Hydra, whose advice for these would be wrong or a parser trace
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    main()
