"""Hydra entry point: one job = one (dataset, model, quant, bits, attack) point.

    dataset → membership → pool (train + score, cached) → quantize each target (cached)
            → attack (other pool models are references) → results.json, scores.npz, W&B, table
"""
from __future__ import annotations

import logging
import sys

import hydra
import torch
from omegaconf import DictConfig

from src import pipeline as P
from src.cache import ArtifactStore
from src.data import DataError, load_dataset
from src.report.results import build_results, job_dir, print_results, write_job
from src.report.wandb_sink import WandbSink
from src.training import resolve_device
from src.validate import ConfigError, validate, validate_layers, validate_with_data

log = logging.getLogger("src.main")


def prepare(cfg: DictConfig):
    """Validate the config, load the data and split membership: everything that may reject the job
    before any artifact is computed. Raises ConfigError / DataError with a one-line message."""
    validate(cfg)
    data = load_dataset(cfg.dataset, cfg.paths.data_dir)
    validate_layers(cfg, data.num_classes, data.in_channels)
    keep = P.membership(cfg, data)
    targets = P.target_indices(cfg)
    validate_with_data(cfg, keep, len(data.y_test), targets)
    return data, keep, targets


def run(cfg: DictConfig) -> dict | None:
    data, keep, targets = prepare(cfg)
    if cfg.get("num_threads"):
        torch.set_num_threads(int(cfg.num_threads))
    device = resolve_device(cfg.get("device", "auto"))
    store = ArtifactStore(cfg.paths.cache_dir, lock=cfg.get("cache_lock", "soft"))
    with WandbSink(cfg, job_dir()) as sink:
        if cfg.stage == "train":  # fill the cache only (split the pool across jobs with model_range)
            P.train_pool(cfg, data, keep, store, device, range(*(cfg.model_range or [0, keep.shape[0]])),
                         sink.lightning_logger())
            return None
        pool = P.train_pool(cfg, data, keep, store, device, logger=sink.lightning_logger())
        quantized = [P.quantize_pool_model(cfg, data, keep, t, store, device) for t in targets]
        refs = P.reference_phi(cfg, data, keep, pool, store, device)  # {"fp"|"matched": φ of the references}
        scores = {kind: {t.index: P.attack_target(cfg, keep, phi, t.index, t.phi) for t in quantized}
                  for kind, phi in refs.items()}
        fp_scores = {t: P.attack_target(cfg, keep, pool.phi, t, pool.phi[t]) for t in targets}
        # scores of references attacked as pseudo-targets: a threshold set without the target's labels
        ref_out = {kind: {t: P.reference_out_scores(cfg, keep, phi, t) for t in targets}
                   for kind, phi in {"fp": pool.phi, **refs}.items()}
        results, arrays = build_results(cfg, data, pool, quantized, scores, fp_scores, refs, ref_out)
        write_job(job_dir(), results, arrays, {q.index: q.export for q in quantized})
        print_results(results)
        sink.log_results(results)
    return results


@hydra.main(config_path="../conf", config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> None:
    try:
        run(cfg)
    except (ConfigError, DataError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except FloatingPointError as e:  # diverged training/quantization: nothing was cached for it
        print(f"error: {e}".splitlines()[0], file=sys.stderr)
        sys.exit(3)


if __name__ == "__main__":
    main()
