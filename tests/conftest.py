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
