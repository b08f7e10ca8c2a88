"""Weights & Biases sink: one W&B run per job, never a reason for a job to fail.

Local ``results.json`` is the source of truth (docs/design.md, "Design rules"); W&B only mirrors it. Every W&B
call goes through :meth:`WandbSink._guard`, which turns any exception into one warning line.

Mode (``logger.mode``):

* ``auto`` (default): ``online`` when credentials exist (``WANDB_API_KEY``, an api key for
  the W&B host in ``~/.netrc``/``$NETRC``), else ``offline``. ``WANDB_MODE`` in the
  environment decides instead of the credential check when set.
* ``online`` | ``offline`` | ``disabled``: forced; ``WANDB_MODE=disabled`` still wins (the
  usual "switch W&B off" switch for tests and CI).
* An online ``wandb.init`` that fails (no network, bad key) is retried offline.

Offline runs land in ``<dir>/wandb/offline-run-*`` where ``dir`` is ``logger.dir`` or, when
null, the job dir (``outputs/runs/<stamp>`` or ``outputs/multirun/<stamp>/<n>``), so
``wandb sync $(find outputs -path '*/wandb/offline-run-*' -prune)`` (``make sync``) uploads
them all later (the glob ``outputs/**/wandb/offline-run-*`` with bash globstar is the same set).

What each run holds (docs/wandb.md, "The dashboard"):

* job runs (``job_type=quantize-attack``): headline numbers in ``run.summary`` (CIs only for rates,
  never for counts such as ``fp_at_fpr_*``), a results table, the ROC; the per-model training curves
  ``pool/mNN/train_loss|train_acc`` against their own step metric ``pool/mNN/epoch`` (in the run that
  trained the model); a ``results`` artifact (results.json, scores.npz, .hydra/config.yaml,
  .hydra/overrides.yaml) and the ``pool`` reference artifact (the cache manifests of the pool models,
  no weights), so the lineage graph shows which pool a job used;
* the sweep's summary run (``job_type=summary``, written by the multirun callback): config = the sweep
  (overrides, job list), the summary table and native charts over ``bits``, one line per quantizer
  (:mod:`src.report.dashboard`).

``logger.name|group|tags|notes`` set the run's name, group, extra tags and notes.
"""

from __future__ import annotations

import hashlib
import logging
import math
import netrc
import os
import re
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator
from urllib.parse import urlparse

from omegaconf import DictConfig, OmegaConf

log = logging.getLogger(__name__)

JOB_TYPE = "quantize-attack"
SUMMARY_JOB_TYPE = "summary"
BACKENDS = ("wandb", "none")
# files of a job dir that make up its ``results`` artifact (relative paths = names in the artifact)
RESULT_FILES = ("results.json", "scores.npz", ".hydra/config.yaml", ".hydra/overrides.yaml")
_CURVE_KEY = re.compile(r"^(pool/m\d+)/(.+)$")
MODES = ("online", "offline", "disabled")
LOGGER_MODES = ("auto",) + MODES  # the values of logger.mode
# W&B's own folders, kept under the project's outputs/ unless the user set them: run files go to the job
# dir (wandb.init's dir), but wandb also stages artifacts in WANDB_DATA_DIR (~/.local/share/wandb), writes
# its service logs to WANDB_CACHE_DIR (~/.cache/wandb) and `wandb sync` its CLI log to
# $WANDB_DIR/wandb/ (else the system's temp folder). WANDB_CONFIG_DIR (~/.config/wandb) is left alone:
# it holds the user's own wandb settings, which a job reads and never writes.
WANDB_DIRS = {"WANDB_DIR": "", "WANDB_CACHE_DIR": "cache", "WANDB_DATA_DIR": "data"}
WANDB_ROOT = Path("outputs") / "wandb"
# every offline run dir under outputs/ (runs, multirun jobs, multirun summary); shell-safe
# without globstar, for `make sync`: wandb sync $(find outputs -path '*/wandb/offline-run-*' -prune)
SYNC_CMD = "wandb sync $(find outputs -path '*/wandb/offline-run-*' -prune)"
_ENV_MODES = {"online": "online", "run": "online", "offline": "offline", "dryrun": "offline",
              "disabled": "disabled"}
# Per-process flags (multirun jobs share a process): print the upload hint once, and after
# one failed online init go straight to offline instead of waiting for the network per job.
_sync_hint_shown = False
_online_failed = False


def local_wandb_dirs(root: str | Path = WANDB_ROOT) -> dict[str, str]:
    """Point W&B's data, cache and CLI-log folders into ``root`` (default ``outputs/wandb``, from the
    working directory), each only when its environment variable is unset. Returns what was set."""
    base = Path(root).resolve()
    out = {}
    for var, sub in WANDB_DIRS.items():
        if os.environ.get(var):
            continue
        path = base / sub if sub else base
        (path / "wandb" if var == "WANDB_DIR" else path).mkdir(parents=True, exist_ok=True)
        os.environ[var] = out[var] = str(path)
    return out


def _settings(online: bool):
    """Offline runs are quiet (no per-job wall of summary lines; we print one upload hint);
    online init gives up after 30 s instead of wandb's 90 s, then we retry offline."""
    import wandb

    return wandb.Settings(init_timeout=30) if online else wandb.Settings(quiet=True)


def _layers_label(node) -> str | None:
    """``last 4``-style label of the job's ``bitwidth`` overrides (None: none, or unreadable)."""
    from src.quant.policy import Overrides

    try:
        return Overrides.of(node).describe()
    except (ValueError, TypeError, AttributeError):
        return None


def _one_line(e: BaseException) -> str:
    return f"{type(e).__name__}: {' '.join(str(e).split())}"[:500]


def has_credentials() -> bool:
    """True if wandb could log in without prompting: ``WANDB_API_KEY`` or a netrc entry for
    the W&B host (``WANDB_BASE_URL``, default api.wandb.ai). Never touches the network."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    host = urlparse(os.environ.get("WANDB_BASE_URL") or "https://api.wandb.ai").hostname or ""
    candidates = [os.environ.get("NETRC"), "~/.netrc", "~/_netrc"]
    for c in candidates:
        if not c:
            continue
        p = Path(c).expanduser()
        try:
            if p.is_file():
                auth = netrc.netrc(str(p)).authenticators(host)
                return bool(auth and auth[2])
        except (netrc.NetrcParseError, OSError):
            continue
    return False


def resolve_mode(mode: str | None = "auto") -> str:
    """``online`` | ``offline`` | ``disabled`` from ``logger.mode`` and the environment
    (see module docstring for the precedence)."""
    env = _ENV_MODES.get((os.environ.get("WANDB_MODE") or "").strip().lower())
    if env == "disabled" or os.environ.get("WANDB_DISABLED", "").lower() in ("true", "1"):
        return "disabled"
    mode = (mode or "auto").strip().lower()
    if mode in _ENV_MODES:
        return _ENV_MODES[mode]
    if mode != "auto":
        from src.errors import ConfigError

        raise ConfigError(f"logger.mode={mode}: allowed: {', '.join(LOGGER_MODES)}")
    if env:
        return env
    return "online" if has_credentials() else "offline"


def sweep_stamp(job_dir: str | Path | None = None) -> str:
    """The sweep's start time: basename of ``hydra.sweep.dir`` in a multirun, of the run dir
    otherwise. Without a Hydra context, derived from ``job_dir`` (``<stamp>/<n>`` layout)."""
    try:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        if HydraConfig.initialized():
            hc = HydraConfig.get()
            if hc.mode == RunMode.MULTIRUN:
                return Path(str(hc.sweep.dir)).name
            return Path(str(hc.runtime.output_dir or hc.run.dir)).name
    except Exception:  # no/partial Hydra context: fall through
        pass
    if job_dir is None:
        return "local"
    p = Path(job_dir).resolve()
    return p.parent.name if p.name.isdigit() else p.name


def _to_cfg(cfg: Any) -> DictConfig:
    if isinstance(cfg, DictConfig):
        return cfg
    return OmegaConf.create(cfg or {})


def config_dict(cfg: Any) -> dict:
    """Resolved config as a plain dict, without the ``hydra`` node (falls back to
    unresolved when an interpolation cannot be resolved outside Hydra)."""
    cfg = _to_cfg(cfg)
    try:
        d = OmegaConf.to_container(cfg, resolve=True)
    except Exception:
        d = OmegaConf.to_container(cfg, resolve=False)
    d.pop("hydra", None)
    return d


def is_rate(metric: str) -> bool:
    from src.attacks.metrics import is_rate as _is_rate

    return _is_rate(metric)


def _artifact_name(text: str) -> str:
    """W&B artifact names: letters, digits, ``-``, ``_``, ``.``."""
    return re.sub(r"[^0-9A-Za-z_.-]+", "-", text).strip("-")[:120] or "x"


def logger_options(cfg: Any) -> dict:
    """``logger.name|group|tags|notes`` (null/empty = the defaults); tags as a list of strings."""
    lcfg = OmegaConf.select(_to_cfg(cfg), "logger", default=None) or {}
    tags = lcfg.get("tags") or []
    if isinstance(tags, str):
        tags = [t for t in tags.split(",")]
    out = {k: (str(lcfg.get(k)) if lcfg.get(k) not in (None, "") else None) for k in ("name", "group", "notes")}
    out["tags"] = [str(t).strip() for t in tags if str(t).strip()]
    return out


def summary_values(results: dict) -> dict[str, float]:
    """Headline numbers for ``run.summary``: utility, and per attack ``<attack>/<metric>``,
    ``<attack>/<metric>_ci_lo|hi`` (rates only: AUC, balanced accuracy, TPR at FPR); the FP target's under ``fp/<attack>/...`` and, with
    ``attack.reference=both``, the matched-reference numbers under ``matched/<attack>/...``."""
    out: dict[str, float] = {}
    util = results.get("utility") or {}
    for k in ("test_acc", "fp_test_acc", "accuracy_drop", "train_acc", "fp_train_acc"):
        if util.get(k) is not None:
            out[k] = util[k]
    if util.get("collapsed") is not None:  # 1: accuracy collapsed, lower leakage is lost utility (src/report/collapse.py)
        out["collapsed"] = int(bool(util["collapsed"]))
    for section, prefix in (("attacks", ""), ("attacks_matched", "matched/"), ("fp_attacks", "fp/")):
        for attack, m in (results.get(section) or {}).items():
            for k, v in m.items():
                if isinstance(v, (int, float)) and not isinstance(v, bool):
                    out[f"{prefix}{attack}/{k}"] = v
            for k, lo_hi in (m.get("ci") or {}).items():
                # counts (n_members, fp_at_fpr_*) are fixed by the split: their "CI" is a constant
                if not is_rate(k):
                    continue
                if isinstance(lo_hi, (list, tuple)) and len(lo_hi) == 2:
                    out[f"{prefix}{attack}/{k}_ci_lo"] = lo_hi[0]
                    out[f"{prefix}{attack}/{k}_ci_hi"] = lo_hi[1]
            out.update({f"{prefix}{attack}/{k}": v for k, v in evidence_values(m).items()})
            out.update({f"{prefix}{attack}/{k}": v for k, v in pooled_values(m).items()})
    if (results.get("quant") or {}).get("seconds") is not None:
        out["quant_seconds"] = results["quant"]["seconds"]
    conv = ((results.get("quant") or {}).get("convergence") or {}).get("summary")
    if conv:  # learned rounding: did it settle before hardening (src/quant/rounding.py)
        out.update({"quant/max_unsettled": conv["max_unsettled"], "quant/max_hard_over_soft": conv["max_hard_over_soft"],
                    "quant/converged": int(conv["converged"])})
    from src.report.releases import release_values

    out.update(release_values(results))  # attack.release: joint vs single releases
    return out


def pooled_values(m: dict) -> dict[str, float]:
    """Flat numbers of the pooled ROC over targets (src/attacks/pooled.py): ``pooled/<metric>`` with
    its CI, the non-member trials and false positives behind each TPR, and the pooled paired Δ."""
    out: dict[str, float] = {}
    pooled = m.get("pooled") or {}
    for k, v in pooled.items():
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            out[f"pooled/{k}"] = v
    for k, lo_hi in (pooled.get("ci") or {}).items():
        if isinstance(lo_hi, (list, tuple)) and len(lo_hi) == 2:
            out[f"pooled/{k}_ci_lo"], out[f"pooled/{k}_ci_hi"] = lo_hi
    for k, d in (m.get("paired_pooled") or {}).items():
        out[f"pooled/delta_{k}"] = d["delta"]
        out[f"pooled/delta_{k}_ci_lo"], out[f"pooled/delta_{k}_ci_hi"] = d["ci"]
        if d.get("significant") is not None:
            out[f"pooled/delta_{k}_significant"] = int(bool(d["significant"]))
    return out


def evidence_values(m: dict) -> dict[str, float]:
    """Flat numbers of an attack block's evidence (src/report/evidence.py): paired Δ with CI and
    significance, per-example shifts, the reference-calibrated threshold, calibration subsets' AUC."""
    out: dict[str, float] = {}
    for k, d in (m.get("paired") or {}).items():
        out[f"delta_{k}"] = d["delta"]
        if d.get("ci") and d["ci"][0] is not None:
            out[f"delta_{k}_ci_lo"], out[f"delta_{k}_ci_hi"] = d["ci"]
        if d.get("significant") is not None:
            out[f"delta_{k}_significant"] = int(bool(d["significant"]))
    for k, v in (m.get("per_example") or {}).items():
        if isinstance(v, (int, float)) and v is not None:
            out[k] = v
    rt = m.get("reference_threshold") or {}
    for k in ("tpr", "fpr"):
        if rt.get(k) is not None:
            out[f"reference_threshold/{k}"] = rt[k]
    for prior, v in (rt.get("ppv") or {}).items():
        if v is not None:
            out[f"reference_threshold/ppv_{prior}"] = v
    for part, kinds in (m.get("subsets") or {}).items():
        for kind, metrics in kinds.items():
            if metrics.get("auc") is not None:
                out[f"subsets/{part}/{kind}/auc"] = metrics["auc"]
    return out


class WandbSink:
    """Context manager owning one W&B run for one job (or the multirun summary).

    ``with WandbSink(cfg, job_dir) as sink: ...`` — the run starts on enter and is finished
    on exit, even when the body raises, so jobs sharing a process never share a run. With
    ``logger.backend == 'none'``, mode ``disabled`` or a failed ``wandb.init``, ``sink.run`` is
    None and every method is a no-op. ``run_config`` replaces the run's config (the summary run
    describes the sweep, not one job).
    """

    def __init__(
        self,
        cfg: Any,
        job_dir: str | Path,
        job_type: str = JOB_TYPE,
        name: str | None = None,
        tags: list[str] | None = None,
        group: str | None = None,
        run_config: dict | None = None,
    ) -> None:
        self.cfg = _to_cfg(cfg)
        self.job_dir = Path(job_dir)
        self.job_type = job_type
        self._name, self._tags, self._group = name, tags, group
        self._run_config = run_config
        self.run = None
        self.curves: PoolCurveLogger | None = None
        self._pool_artifact_name: str | None = None
        lcfg = OmegaConf.select(self.cfg, "logger", default=None) or {}
        backend = str(lcfg.get("backend", "none")).lower()
        if backend not in BACKENDS:
            from src.errors import ConfigError

            raise ConfigError(f"logger.backend={backend!r}: allowed: {', '.join(BACKENDS)} (or logger=wandb|none)")
        self.enabled = backend == "wandb"
        self.mode = resolve_mode(lcfg.get("mode", "auto")) if self.enabled else "disabled"
        if self.mode == "disabled":
            self.enabled = False

    # -- guard ------------------------------------------------------------------------

    @contextmanager
    def _guard(self, what: str) -> Iterator[None]:
        """Any exception inside becomes one warning line; the job goes on."""
        try:
            yield
        except Exception as e:
            log.warning("W&B: %s failed (%s); continuing without it", what, _one_line(e))

    # -- run lifecycle ----------------------------------------------------------------

    def _init_kwargs(self) -> dict:
        c = self.cfg
        sel = lambda key, default=None: OmegaConf.select(c, key, default=default)  # noqa: E731
        opts = logger_options(c)
        quant = str(sel("quant.name", "none"))
        bits = sel("bits")
        bits_s = f"{float(bits):g}" if bits is not None else "?"
        fp = quant.lower() in ("none", "fp")
        layers = None if fp else _layers_label(sel("bitwidth"))
        default_name = "fp" if fp else f"{quant}-{bits_s}bit" + (f" ({layers})" if layers else "")
        name = self._name or opts["name"] or default_name
        tags = self._tags
        if tags is None:
            tags = [str(sel("dataset.name", "")), str(sel("model.name", "")), quant,
                    "32bit" if fp else f"{bits_s}bit"] + ([f"layers: {layers}"] if layers else [])
        tags = list(dict.fromkeys(t[:64] for t in list(tags) + opts["tags"] if t))
        exp = sel("experiment_name") or f"{sel('dataset.name', 'run')}-{sel('model.name', '')}"
        group = self._group or opts["group"] or f"{exp}-{sweep_stamp(self.job_dir)}"
        base = sel("logger.dir")
        wdir = Path(str(base)) if base else self.job_dir
        wdir.mkdir(parents=True, exist_ok=True)
        return dict(
            project=sel("logger.project") or "ptq-mia",
            entity=sel("logger.entity") or None,
            group=group[:128],
            job_type=self.job_type,
            name=name,
            tags=tags,
            notes=opts["notes"],
            config=self._run_config if self._run_config is not None else config_dict(c),
            dir=str(wdir),
            reinit="finish_previous",
        )

    def start(self) -> "WandbSink":
        if not self.enabled:
            return self
        kwargs = None
        with self._guard("building wandb.init arguments"):
            kwargs = self._init_kwargs()
        if kwargs is None:
            return self
        global _online_failed
        local_wandb_dirs()
        import wandb

        if self.mode == "online" and _online_failed:
            self.mode = "offline"  # don't wait for the network again in this process
        if self.mode == "online":
            try:
                self.run = wandb.init(mode="online", settings=_settings(online=True), **kwargs)
                return self
            except Exception as e:
                _online_failed = True
                log.warning("W&B: online init failed (%s); falling back to offline", _one_line(e))
                self.mode = "offline"
        with self._guard("wandb.init"):
            self.run = wandb.init(mode=self.mode, settings=_settings(online=False), **kwargs)
        if self.run is not None and self.mode == "offline":
            self._sync_hint()
        return self

    def _sync_hint(self) -> None:
        global _sync_hint_shown
        if _sync_hint_shown:
            return
        _sync_hint_shown = True
        run_dir = Path(getattr(self.run, "dir", "") or ".").parent
        print(
            f"[wandb] offline: runs are saved locally (this one: {run_dir}). Upload later with "
            f"`wandb login` then `make sync` (= {SYNC_CMD}).",
            flush=True,
        )

    def finish(self, exit_code: int = 0) -> None:
        run, self.run = self.run, None
        if run is None:
            return
        with self._guard("run.finish"):
            run.finish(exit_code=exit_code)

    def __enter__(self) -> "WandbSink":
        return self.start()

    def __exit__(self, exc_type, exc, tb) -> bool:
        self.finish(exit_code=0 if exc_type is None else 1)
        return False  # never swallow the job's own exceptions

    # -- logging ----------------------------------------------------------------------

    def lightning_logger(self):
        """A Lightning logger (Trainer and Fabric) that writes the pool models' training curves
        into this run under per-model keys with their own step metric (:class:`PoolCurveLogger`),
        or None when W&B is off. One per sink: it also records which models this run trained."""
        if self.run is None:
            return None
        if self.curves is None:
            with self._guard("pool curve logger"):
                self.curves = PoolCurveLogger(self.run, self._guard)
        return self.curves

    def log_results(self, results: dict) -> None:
        """Headline numbers into ``run.summary``; per-job results table; log-log ROC."""
        if self.run is None:
            return
        with self._guard("run.summary"):
            self.run.summary.update(summary_values(results))
        with self._guard("results table"):
            self._log_results_table(results)
        with self._guard("ROC plot"):
            self._log_roc(results)
        with self._guard("pool artifact"):
            self._log_pool_artifact(results)
        with self._guard("results artifact"):
            self._log_results_artifact(results)

    def pool_artifact(self, results: dict):
        """A reference artifact (type ``pool``) of the job's pool: one ``file://`` reference per pool
        model's cache manifest (its key config and the SHA-256 of the weights), no weights. Its name
        and digest depend only on the pool's cache keys and manifests, so every job of a pool logs
        the same version. None when results.json names no pool or no manifest exists."""
        import wandb

        pool = results.get("pool") or {}
        keys = [str(k) for k in pool.get("model_keys") or []]
        if not keys:
            return None
        cache = Path(str(OmegaConf.select(self.cfg, "paths.cache_dir", default="outputs/cache"))).resolve()
        manifests = [(k, cache / "models" / f"{k}.json") for k in keys]
        manifests = [(k, m) for k, m in manifests if m.is_file()]
        if not manifests:
            return None
        job = results.get("job") or {}
        pool_id = hashlib.sha256(",".join(keys).encode()).hexdigest()[:12]
        art = wandb.Artifact(
            _artifact_name(f"pool-{job.get('dataset', 'data')}-{job.get('model', 'model')}-{pool_id}"),
            type="pool",
            description="Full-precision model pool: references to the cache manifests (key config + "
                        "SHA-256 of each model's weights); the weights stay in paths.cache_dir.",
            metadata={"n_models": len(keys), "data_digest": pool.get("data"), "model_keys": keys,
                      "dataset": job.get("dataset"), "model": job.get("model")},
        )
        for k, m in manifests:
            art.add_reference(m.as_uri(), name=f"models/{k}.json")
        return art

    def _log_pool_artifact(self, results: dict) -> None:
        art = self.pool_artifact(results)
        if art is None:
            return
        self._pool_artifact_name = art.name
        trained_here = bool(self.curves is not None and self.curves.models)
        if self.mode == "online" and not trained_here:
            self.run.use_artifact(art)  # loaded from the cache: the pool is this run's input
        else:
            # offline runs cannot declare inputs (wandb raises); the run that trained the pool
            # produced it. Same name and digest in every job: one version after `make sync`.
            self.run.log_artifact(art)

    def _log_results_artifact(self, results: dict) -> None:
        import wandb

        from src.report.summary import METRICS

        job = results.get("job") or {}
        meta = {k: job.get(k) for k in ("dataset", "model", "quant", "bits", "policy", "layers", "act_bits", "reference",
                                         "targets", "target_labels")}
        meta["test_acc"] = (results.get("utility") or {}).get("test_acc")
        for attack, m in (results.get("attacks") or {}).items():
            meta.update({f"{attack}/{k}": m.get(k) for k in METRICS if m.get(k) is not None})
        if self._pool_artifact_name:
            meta["pool_artifact"] = self._pool_artifact_name
        art = wandb.Artifact(_artifact_name(f"results-{getattr(self.run, 'name', '') or 'job'}-{self.run.id}"),
                             type="results", metadata=meta,
                             description="results.json, scores.npz and the Hydra config of one job")
        added = 0
        for rel in RESULT_FILES:
            f = self.job_dir / rel
            if f.is_file():
                art.add_file(str(f), name=rel)
                added += 1
        if added:
            self.run.log_artifact(art)

    def _log_results_table(self, results: dict) -> None:

        from src.report.summary import COLUMNS, job_rows

        res = dict(results, job_dir=str(self.job_dir))
        rows = job_rows(res) + job_rows(res, fp=True)
        self.run.log({"results": rows_table(rows, COLUMNS)})

    def _log_roc(self, results: dict) -> None:
        """Our own ROC points (exact low-FPR values, unlike wandb.plot.roc_curve which
        rounds FPR): a table of (curve, fpr, tpr, log10 fpr, log10 tpr), a line chart on
        log10 axes, and the matplotlib log-log figure as an image."""
        import wandb

        from src.report import plots
        from src.report.summary import primary_attack

        table = wandb.Table(columns=["curve", "fpr", "tpr", "log10_fpr", "log10_tpr"])
        xs, ys, keys = [], [], []
        for section, prefix in (("attacks", ""), ("attacks_matched", "matched/"), ("fp_attacks", "fp/")):
            for attack, m in (results.get(section) or {}).items():
                roc = m.get("roc") or {}
                pts = [(f, t) for f, t in zip(roc.get("fpr", []), roc.get("tpr", [])) if f > 0 and t > 0]
                if not pts:
                    continue
                for f, t in pts:
                    table.add_data(prefix + attack, f, t, math.log10(f), math.log10(t))
                xs.append([math.log10(f) for f, _ in pts])
                ys.append([math.log10(t) for _, t in pts])
                keys.append(prefix + attack)
        if not keys:
            return
        payload = {
            "roc/points": table,
            "roc/log10": wandb.plot.line_series(
                xs=xs, ys=ys, keys=keys, title="ROC (log10 TPR vs log10 FPR)", xname="log10 FPR"
            ),
        }
        attack = primary_attack([results])
        with tempfile.TemporaryDirectory() as tmp:
            png = plots.roc([dict(results, job_dir=str(self.job_dir))], attack, Path(tmp) / "roc.png")
            payload["roc/loglog"] = wandb.Image(str(png))
            self.run.log(payload)

    def log_charts(self, rows: list[dict]) -> None:
        """Native W&B line charts (``wandb.plot.line``, one line per ``stroke`` value) built from
        the summary rows: the specs of :func:`src.report.dashboard.chart_specs`."""
        import wandb

        from src.report.dashboard import chart_specs

        payload = {}
        for spec in chart_specs(rows):
            table = wandb.Table(columns=list(spec.columns), data=[list(r) for r in spec.data])
            payload[spec.key] = wandb.plot.line(table, spec.x, spec.y, stroke=spec.stroke, title=spec.title)
        if payload:
            self.run.log(payload)

    def log_summary(self, rows: list[dict], images: dict[str, str | Path], markdown: str | None = None) -> None:
        """For the multirun summary run: the summary table, the native charts, the plots, the markdown."""
        if self.run is None:
            return
        import wandb

        from src.report.summary import COLUMNS

        with self._guard("summary table"):
            self.run.log({"summary": rows_table(rows, COLUMNS)})
        with self._guard("summary charts"):
            self.log_charts(rows)
        for key, path in images.items():
            with self._guard(f"image {key}"):
                self.run.log({key: wandb.Image(str(path))})
        if markdown:
            with self._guard("summary markdown"):
                self.run.summary["summary_md"] = markdown


def rows_table(rows: list[dict], columns: tuple[str, ...]):
    import wandb

    cols = [c for c in columns if c != "job_dir"]
    return wandb.Table(columns=cols, data=[[r.get(c) for c in cols] for r in rows])


def _lightning_logger_base():
    from lightning.pytorch.loggers.logger import Logger

    return Logger


class PoolCurveLogger(_lightning_logger_base()):
    """Lightning logger (a ``pytorch`` Logger is also a Fabric logger) for the pool models' curves.

    Keys ``pool/mNN/<metric>`` (from ``Classifier`` and the fast path) are logged with
    ``pool/mNN/epoch`` = epochs completed, and on first sight each gets
    ``run.define_metric(key, step_metric="pool/mNN/epoch")``: every model's curve has its own
    x axis, instead of one ``train/loss`` whose global step restarts with each model. ``run.log``
    is called without ``step`` (W&B's ``_step`` only grows), and ``finalize`` leaves the run open
    (the sink owns it). Other keys pass through unchanged.
    """

    def __init__(self, run, guard=None):
        super().__init__()
        self._run = run
        self._guard = guard
        self._defined: set[str] = set()
        self.models: set[str] = set()     # prefixes of the models trained (curves logged) in this run

    @property
    def name(self) -> str:
        return "wandb-pool-curves"

    @property
    def version(self) -> str:
        return str(getattr(self._run, "id", "0"))

    @property
    def experiment(self):
        return self._run

    @property
    def save_dir(self):
        return None

    @property
    def log_dir(self):
        return None

    def log_hyperparams(self, params, *args, **kwargs) -> None:
        pass  # the run's config is the job's resolved config already

    def _define(self, key: str, step_metric: str | None) -> None:
        if key in self._defined:
            return
        self._defined.add(key)
        if step_metric is None:
            self._run.define_metric(key)
        else:
            self._run.define_metric(key, step_metric=step_metric)

    def log_metrics(self, metrics, step=None) -> None:
        if self._guard is None:
            self._log_metrics(metrics)
        else:
            with self._guard("training curves"):
                self._log_metrics(metrics)

    def _log_metrics(self, metrics) -> None:
        payload, epoch = {}, metrics.get("epoch")
        for k, v in metrics.items():
            if k == "epoch":
                continue
            v = float(v.item() if hasattr(v, "item") else v)
            m = _CURVE_KEY.match(k)
            if m and m.group(2) != "epoch":
                prefix = m.group(1)
                step_key = f"{prefix}/epoch"
                self.models.add(prefix)
                self._define(step_key, None)
                self._define(k, step_key)
                if epoch is not None:
                    payload[step_key] = int(epoch) + 1
            payload[k] = v
        if payload:
            self._run.log(payload)

    def finalize(self, status: str) -> None:
        pass
