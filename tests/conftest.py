import os

import pytest
import torch

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
# intra-op threads of every test: 1 by default (tiny models: threads only add overhead and
# oversubscribe CI's 2 cores); `make test-portable` sets PTQ_TEST_THREADS=2 to rerun the numeric
# tests on another reduction order
_THREADS_ENV = os.environ.get("PTQ_TEST_THREADS", "1")
_THREADS_OK = _THREADS_ENV.isdigit() and int(_THREADS_ENV) >= 1
THREADS = int(_THREADS_ENV) if _THREADS_OK else 1
torch.set_num_threads(THREADS)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def pytest_configure(config):
    if not _THREADS_OK:
        raise pytest.UsageError(f"PTQ_TEST_THREADS={_THREADS_ENV!r}: not a thread count; "
                                "allowed: a positive integer (default 1)")


@pytest.fixture(autouse=True)
def one_thread():
    """Every test starts on ``THREADS`` intra-op threads (1 unless PTQ_TEST_THREADS says otherwise)
    and gets back whatever it changed: the OBQ loop, the reconstruction loops and the benchmarks
    are many small ops, and on a shared 2-core runner spinning OpenMP threads make them ~10× slower."""
    n = torch.get_num_threads()
    torch.set_num_threads(THREADS)
    yield
    torch.set_num_threads(n)


@pytest.fixture
def repo_root():
    return REPO


@pytest.fixture
def tiny_cfg(tmp_path):
    """``tiny_cfg(*overrides, base=TINY)``: the composed config of a tiny job with a private cache
    (``tmp_path/cache``); overrides replace same-key entries of ``base``."""
    from _main_runner import TINY, compose, merge

    def make(*overrides: str, base: list[str] = TINY):
        return compose(merge(base, [f"paths.cache_dir={tmp_path / 'cache'}"], list(overrides)))

    return make


@pytest.fixture
def run_job(tmp_path, monkeypatch):
    """``run_job(cfg, name="job")``: ``src.main.run(cfg)`` in process with ``tmp_path/name`` as the
    job dir (outside Hydra the job dir is the cwd); returns (results, job dir)."""
    from src.main import run

    def go(cfg, name: str = "job"):
        job = tmp_path / name
        job.mkdir(parents=True, exist_ok=True)
        monkeypatch.chdir(job)
        return run(cfg), job

    return go
