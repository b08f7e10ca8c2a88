"""OBC's row batches are sized from a planned peak (``obq_rows_peak_bytes``): the planned figure must
bound what ``obq_rows`` really allocates. On CPU every storage an op creates is tracked (a dispatch
mode sees each aten op's outputs; a storage is live until its last tensor is collected); with CUDA,
``torch.cuda.max_memory_allocated`` is checked too. The compaction must keep OBQ's arithmetic: the
two gathers select exactly what the advanced index selects."""
import weakref

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from src.quant import obc


class LiveBytes(TorchDispatchMode):
    """Peak bytes of the storages created by the ops run inside (tensors that exist before are not counted)."""

    def __init__(self, external=()):
        super().__init__()
        self.owners: dict[int, list] = {}
        self.size: dict[int, int] = {}
        self.external = {t.untyped_storage().data_ptr() for t in external}
        self.live = self.peak = 0

    def _release(self, key, ref):
        refs = self.owners.get(key)
        if refs is None:
            return
        refs.remove(ref)
        if not refs:
            del self.owners[key]
            self.live -= self.size.pop(key)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_leaves(out):
            if not isinstance(t, torch.Tensor):
                continue
            st = t.untyped_storage()
            key = st.data_ptr()
            if key in self.external or st.nbytes() == 0:
                continue
            if key not in self.owners:
                self.owners[key], self.size[key] = [], st.nbytes()
                self.live += st.nbytes()
                self.peak = max(self.peak, self.live)
            ref = weakref.ref(t, lambda r, k=key: self._release(k, r))
            self.owners[key].append(ref)
        return out


def problem(B, d, seed=0):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(4 * d, d, generator=g, dtype=torch.float64)
    H = 2 * X.T @ X
    H += 0.01 * torch.diagonal(H).mean() * torch.eye(d, dtype=torch.float64)
    Hinv = torch.cholesky_inverse(torch.linalg.cholesky(H)).float()
    W = torch.randn(B, d, generator=g)
    scale = W.abs().amax(1) / 1.5
    zero = torch.full((B,), 2.0)
    floor = (1.0 / torch.diagonal(H)).float()
    return W, Hinv, floor, scale, zero


@pytest.mark.parametrize("B,d,block", [(8, 200, 64), (3, 300, 32), (16, 96, 64), (4, 40, 64)])
def test_planned_peak_bounds_what_obq_rows_allocates(B, d, block):
    """Measured ≤ planned, and the plan is not loose: the [B, ·, ·] buffers it counts are what is
    really there, so it stays within 1.25x of the measured peak (a looser plan wastes row batches)."""
    W, Hinv, floor, scale, zero = problem(B, d)
    with LiveBytes(external=(W, Hinv, floor, scale, zero)) as mode:
        obc.obq_rows(W, Hinv, floor, scale, zero, 0, 3, block)
    planned = obc.obq_rows_peak_bytes(B, d, block)
    assert 0 < mode.peak <= planned
    assert planned <= 1.25 * mode.peak, (planned, mode.peak)


def test_plan_is_linear_in_rows_and_dominated_by_two_square_buffers():
    """Peak ∝ B; for a wide layer it is ≈ 2 float32 [B, d, d] buffers (8·B·d² bytes), far from the
    ≈ 32·B·d² of a compaction that materialises int64 broadcast indices."""
    d = 4608                                                     # ResNet-18's widest conv: 512·3·3
    one = obc.obq_rows_peak_bytes(1, d)
    assert obc.obq_rows_peak_bytes(7, d) == 7 * one
    assert 7.5 * d * d <= one <= 8.5 * d * d


def test_auto_row_batch_fits_the_budget():
    """The rows chosen for an explicit budget keep the planned peak (batch + layer) inside it, and one
    more row would not fit."""
    d, rows = 1152, 4096
    budget_gb = 3.0
    B = obc.auto_row_batch(d, rows, torch.device("cuda"), "auto", budget_gb)
    total = obc.obq_rows_peak_bytes(B, d) + obc.obq_layer_fixed_bytes(rows, d)
    assert total <= budget_gb * 2**30 < obc.obq_rows_peak_bytes(B + 1, d) + obc.obq_layer_fixed_bytes(rows, d)


def test_gather_compaction_equals_advanced_index():
    """Hi[b, keep_b, keep_b] as two gathers: the same values, bit for bit."""
    g = torch.Generator().manual_seed(3)
    B, r, k = 5, 37, 21
    Hi = torch.randn(B, r, r, generator=g)
    keep = torch.stack([torch.randperm(r, generator=g)[:k].sort().values for _ in range(B)])
    ar = torch.arange(B)
    ref = Hi[ar.view(B, 1, 1), keep.unsqueeze(2), keep.unsqueeze(1)]
    two = Hi.gather(1, keep.unsqueeze(2).expand(B, k, r)).gather(2, keep.unsqueeze(1).expand(B, k, k))
    assert torch.equal(ref, two)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_planned_peak_bounds_cuda_allocation():
    B, d, block = 64, 1152, 64
    W, Hinv, floor, scale, zero = (t.cuda() for t in problem(B, d))
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    obc.obq_rows(W, Hinv, floor, scale, zero, 0, 3, block)
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated() - base
    planned = obc.obq_rows_peak_bytes(B, d, block)
    assert peak <= planned, (peak, planned)
