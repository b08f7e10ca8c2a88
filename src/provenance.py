"""What produced a result or an artifact: code version, library versions and the machine.

Recorded in results.json and in every cache manifest, so numbers can be traced to the code and
hardware that made them (CPU kernels differ by instruction set: torch's CPU capability).
"""
from __future__ import annotations

import functools
import platform
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


@functools.lru_cache(maxsize=1)
def code_version() -> dict:
    """``{"commit", "dirty"}`` of the git checkout the code runs from, else the package version."""
    try:
        def git(*args: str) -> str:
            return subprocess.run(["git", "-C", str(REPO), *args], capture_output=True, text=True, timeout=10,
                                  check=True).stdout.strip()

        commit = git("rev-parse", "HEAD")
        # changes to the code, not to committed results or docs (a page regenerated in place is no code change)
        dirty = bool(git("status", "--porcelain", "--untracked-files=no", "--", ".", ":(exclude)outputs",
                         ":(exclude)docs", ":(exclude)*.md"))
        return {"commit": commit, "dirty": dirty}
    except (OSError, subprocess.SubprocessError):
        try:
            from importlib.metadata import version

            return {"version": version("ptq-mia")}
        except Exception:
            return {"version": None}


@functools.lru_cache(maxsize=8)
def _machine(device: str | None) -> dict:
    import torch

    out = {"torch": torch.__version__, "cuda": torch.version.cuda, "python": platform.python_version(),
           "cpu_capability": torch.backends.cpu.get_cpu_capability(), "device": device}
    if device and str(device).startswith("cuda") and torch.cuda.is_available():
        out["gpu"] = torch.cuda.get_device_name(torch.device(device))
    return out


def provenance(device: str | None = None) -> dict:
    """Code version, torch/CUDA/Python versions, the compute device and the CPU's instruction set."""
    return {"code": code_version(), **_machine(device)}
