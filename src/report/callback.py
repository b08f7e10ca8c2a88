"""Hydra callback: at the end of a multirun, summarize all jobs of the sweep.

Registered in conf/config.yaml under ``hydra.callbacks.summary``. Writes summary.csv,
summary.md, privacy_utility.png and roc.png into ``hydra.sweep.dir`` and, when the logger
is W&B and not disabled, mirrors them to one extra W&B run (job_type ``summary``) in the
jobs' group: the summary table, native charts over bits (one line per quantizer, per attack) and
the plots. Its config describes the sweep (``sweep.overrides``, ``sweep.jobs``: each job's number,
overrides and point), never one job's config, so grouping runs by a config key does not put the
summary among the jobs. A callback that raises would turn a finished sweep into a failed command,
so everything here is guarded: failures are one warning line.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf, open_dict

log = logging.getLogger(__name__)


def _job_config(config: DictConfig) -> DictConfig:
    """The sweep's base config without the ``hydra`` node (what a job's cfg looks like)."""
    cfg = OmegaConf.create(OmegaConf.to_container(config, resolve=False))
    with open_dict(cfg):
        cfg.pop("hydra", None)
    return cfg


def _overrides(path: Path) -> list[str]:
    try:
        v = OmegaConf.to_container(OmegaConf.load(path))
        return [str(o) for o in v] if isinstance(v, list) else []
    except Exception:
        return []


def sweep_config(config: DictConfig, sweep_dir: Path, results: list[dict]) -> dict:
    """The summary run's config: the sweep's command-line overrides and its jobs (number, own
    overrides from ``<job>/.hydra/overrides.yaml``, and the point: dataset, model, quant, bits,
    policy, per-layer overrides, reference, targets)."""
    try:
        task = [str(o) for o in (OmegaConf.select(config, "hydra.overrides.task", default=None) or [])]
    except Exception:
        task = []
    jobs = []
    for r in results:
        d = Path(str(r.get("job_dir", "")))
        job = r.get("job") or {}
        jobs.append({
            "num": int(d.name) if d.name.isdigit() else d.name,
            "overrides": _overrides(d / ".hydra" / "overrides.yaml"),
            **{k: job.get(k) for k in ("dataset", "model", "quant", "bits", "policy", "layers", "act_bits", "reference",
                                       "targets", "target_labels")},
            **({"control": job["control"]} if job.get("control") else {}),
        })
    return {"sweep": {"dir": str(sweep_dir), "stamp": sweep_dir.name, "overrides": task,
                      "n_jobs": len(jobs), "jobs": jobs}}


def sweep_written(sweep_dir: Path, paths: dict) -> str:
    """The block that ends a multirun: the sweep dir, its summary files and each job's results."""
    jobs = sorted(sweep_dir.glob("*/results.json"), key=lambda p: (len(p.parent.name), p.parent.name))
    rows = [("sweep dir", sweep_dir)] + [(f"summary {k}", Path(p)) for k, p in paths.items() if Path(p).exists()]
    rows += [("results", p) for p in jobs]
    return "sweep written:\n" + "\n".join(f"  {k:<30} {p}" for k, p in rows)


def sweep_warnings(sweep_dir: Path) -> list[str]:
    """Each distinct warning of the sweep's jobs (results.json ``warnings``) once, with its jobs."""
    import json

    seen: dict[str, list[str]] = {}
    for p in sorted(sweep_dir.glob("*/results.json")):
        try:
            for w in json.loads(p.read_text()).get("warnings") or []:
                seen.setdefault(str(w), []).append(p.parent.name)
        except (OSError, ValueError):
            continue
    return [f"{w} (jobs {', '.join(jobs)})" for w, jobs in seen.items()]


class SummaryCallback(Callback):
    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        try:
            self._run(config)
        except Exception as e:  # never fail the sweep over its summary
            log.warning("summary callback failed (%s: %s)", type(e).__name__, e)

    def _run(self, config: DictConfig) -> None:
        from src.report.summary import write_summary

        sweep_dir = Path(str(config.hydra.sweep.dir))
        paths = write_summary(sweep_dir)
        if not paths:
            log.warning("summary: no */results.json under %s (all jobs failed?)", sweep_dir)
            return
        log.info(sweep_written(sweep_dir, paths))
        for line in sweep_warnings(sweep_dir):
            log.warning(line)

        if str(OmegaConf.select(config, "logger.backend", default="none")).lower() != "wandb":
            return
        try:
            self._log_wandb(config, sweep_dir, paths)
        except Exception as e:
            log.warning("W&B: summary run failed (%s: %s); local summary is complete",
                        type(e).__name__, e)

    def _log_wandb(self, config: DictConfig, sweep_dir: Path, paths: dict) -> None:
        from src.report.summary import collect, markdown_table, primary_attack, rows_from_results
        from src.report.wandb_sink import SUMMARY_JOB_TYPE, WandbSink, logger_options

        results = collect(sweep_dir)
        rows = rows_from_results(results)
        # group = the jobs' group: their experiment_name (when they agree) + sweep stamp
        names = {(r.get("config") or {}).get("experiment_name") for r in results} - {None}
        cfg = _job_config(config)
        if len(names) == 1:
            experiment = names.pop()
        else:
            try:
                experiment = OmegaConf.select(cfg, "experiment_name", throw_on_resolution_failure=False)
            except Exception:
                experiment = None
            experiment = experiment or "sweep"
        opts = logger_options(cfg)
        group = opts["group"] or f"{experiment}-{sweep_dir.name}"  # logger.group: the jobs' group too
        tags = sorted({str(r["dataset"]) for r in rows} | {str(r["model"]) for r in rows}) + ["summary"]
        name = f"{opts['name']}-summary" if opts["name"] else "summary"
        with WandbSink(cfg, sweep_dir, job_type=SUMMARY_JOB_TYPE, name=name, tags=tags, group=group,
                       run_config=sweep_config(config, sweep_dir, results)) as sink:
            if sink.run is None:
                return
            images = {k: paths[k] for k in ("privacy_utility", "roc", "releases") if k in paths}
            sink.log_summary(rows, images, markdown_table(rows, primary_attack(results)))
