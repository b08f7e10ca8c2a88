import os

import pytest
import torch

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
torch.set_num_threads(1)  # tiny models: threads only add overhead (and oversubscribe CI's 2 cores)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(autouse=True)
def one_thread():
    """Every test starts on one intra-op thread and gets back whatever it changed: the OBQ loop,
    the reconstruction loops and the benchmarks are many small ops, and on a shared 2-core runner
    spinning OpenMP threads make them ~10× slower."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture
def repo_root():
    return REPO
