"""One tiny job config and the ways tests run a job.

``TINY`` is the smallest job that exercises every stage; a test states only what it changes
(``merge``, later same-key overrides win), composes it with Hydra as a user would (``compose``; the
conftest fixtures ``tiny_cfg`` and ``run_job`` give it a private cache and job dir and run
``src.main.run`` in process), and runs ``python -m src.main`` as a subprocess only where the process
boundary is the point (CLI errors and exit codes, multirun sweeps, kill/resume, parallel jobs).
Every run gets its own ``paths.cache_dir`` and job dir under pytest's tmp_path, so nothing leaks
into the repository's outputs/.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PY = sys.executable

# A few seconds per job on a CPU: 4 models (online LiRA's minimum), 2 epochs, RTN, tiny synthetic data;
# budget.n_calib reaches every quantizer that calibrates (conf/experiment/default.yaml)
TINY = ["dataset=synthetic", "n_models=4", "train.epochs=2", "logger=none", "progress=false",
        "budget.n_calib=64", "attack.bootstrap=20"]


def _key(override: str) -> str:
    return override.split("=", 1)[0].lstrip("+~")


def merge(*lists: list[str]) -> list[str]:
    """Hydra overrides concatenated, a later override replacing an earlier one of the same key
    (Hydra itself rejects a key given twice)."""
    out: dict[str, str] = {}
    for overrides in lists:
        for o in overrides:
            out.pop(_key(o), None)
            out[_key(o)] = o
    return list(out.values())


def compose(overrides: list[str]):
    """The job config of ``python -m src.main <overrides>`` (without the hydra node)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        return hydra_compose(config_name="config", overrides=list(overrides))


def env() -> dict:
    e = dict(os.environ)
    e.update(WANDB_MODE="disabled", WANDB_SILENT="true", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1",
             PYTHONUNBUFFERED="1")
    e.pop("HYDRA_FULL_ERROR", None)
    return e


def command(overrides: list[str], cache_dir: Path, run_dir: Path) -> list[str]:
    own = [f"paths.cache_dir={cache_dir}", f"hydra.run.dir={run_dir}"]
    keys = {_key(o) for o in overrides}
    return [PY, "-m", "src.main", *overrides, *(o for o in own if _key(o) not in keys)]


def run_main(overrides: list[str], cache_dir: Path, run_dir: Path, timeout: float = 240,
             check: bool = True) -> subprocess.CompletedProcess:
    p = subprocess.run(command(overrides, cache_dir, run_dir), cwd=REPO, env=env(), capture_output=True,
                       text=True, timeout=timeout)
    if check and p.returncode != 0:
        raise AssertionError(f"src.main failed (rc={p.returncode}):\n{p.stderr[-3000:]}")
    return p


def popen_main(overrides: list[str], cache_dir: Path, run_dir: Path) -> subprocess.Popen:
    run_dir.mkdir(parents=True, exist_ok=True)
    out = open(run_dir.parent / f"{run_dir.name}.out", "w")
    return subprocess.Popen(command(overrides, cache_dir, run_dir), cwd=REPO, env=env(), stdout=out,
                            stderr=subprocess.STDOUT, text=True)


def numbers(run_dir: Path) -> dict:
    """The result numbers of a job (everything in results.json but the config and the timings)."""
    r = json.loads((Path(run_dir) / "results.json").read_text())
    return {k: r[k] for k in ("job", "utility", "attacks", "fp_attacks")} | {
        "calib_idx": r["quant"]["calib_idx"], "layer_bits": r["quant"]["layer_bits"]}


def log_lines(run_dir: Path, needle: str) -> list[str]:
    """Lines of the job's Hydra log (``<run_dir>/main.log``) containing ``needle``."""
    log = Path(run_dir) / "main.log"
    return [ln for ln in log.read_text().splitlines() if needle in ln] if log.exists() else []


def manifests(cache_dir: Path, kind: str) -> list[Path]:
    d = Path(cache_dir) / kind
    return sorted(d.glob("*.json")) if d.is_dir() else []
