"""Keep matrix balance and φ against an independent float64 computation."""
import numpy as np
import pytest
import torch

from src.attacks.scores import compute_phi, logit_confidence
from src.data import keep_matrix
from src.data.augment import apply_query, random_crop_flip
from src.models import build_model


@pytest.mark.parametrize("m,n,pkeep", [(16, 500, 0.5), (65, 300, 0.5), (4, 10, 0.5), (10, 50, 0.3)])
def test_keep_matrix_balanced(m, n, pkeep):
    keep = keep_matrix(m, n, pkeep, seed=3)
    assert keep.shape == (m, n) and keep.dtype == bool
    k = int(m * pkeep)
    assert (keep.sum(0) == k).all()  # each example IN for exactly k models
    # every model gets roughly half the data, and different models differ
    assert abs(keep.sum(1).mean() - n * k / m) < 1e-9
    assert len({r.tobytes() for r in keep}) == m


def test_keep_matrix_is_the_reference_formula():
    # docs/design.md, "Membership split": U ~ Uniform(M×N) with a fixed seed, keep = argsort(U, axis=0) < M/2
    u = np.random.default_rng(5).uniform(size=(8, 30))
    assert (keep_matrix(8, 30, 0.5, 5) == (np.argsort(u, axis=0) < 4)).all()


def test_keep_matrix_deterministic_and_seeded():
    a, b, c = keep_matrix(8, 100, 0.5, 1), keep_matrix(8, 100, 0.5, 1), keep_matrix(8, 100, 0.5, 2)
    assert (a == b).all() and (a != c).any()


@pytest.mark.parametrize("bad", [0.0, 1.0, -0.1, 1.5])
def test_keep_matrix_rejects_bad_pkeep(bad):
    with pytest.raises(ValueError, match="pkeep"):
        keep_matrix(4, 10, bad, 0)


def test_phi_matches_float64_softmax():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(200, 10, generator=g) * 6
    logits[:5, 3] = 40.0  # near-certain predictions: p_y rounds to 1 in float32
    y = torch.randint(0, 10, (200,), generator=g)
    y[:5] = 3
    phi = logit_confidence(logits, y).numpy()
    z = logits.double().numpy()
    p = np.exp(z - z.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    py = p[np.arange(200), y.numpy()]
    ref = np.log(py) - np.log1p(-py)
    finite = py < 1 - 1e-12
    np.testing.assert_allclose(phi[finite], ref[finite], rtol=1e-4, atol=1e-4)
    assert np.isfinite(phi).all() and (phi[:5] > 15).all()  # float64 log(p)−log(1−p) would be inf


def test_compute_phi_queries_eval_mode():
    torch.manual_seed(0)
    model = build_model("smallcnn", 4, 1)
    model.train()  # compute_phi must switch to eval (BN running stats): result independent of batch
    x = torch.randint(0, 256, (20, 1, 8, 8), dtype=torch.uint8)
    y = torch.randint(0, 4, (20,))
    mean, std = (0.5,), (0.25,)
    a = compute_phi(model, x, y, mean, std, ["identity", "mirror"], batch_size=20)
    b = compute_phi(model, x, y, mean, std, ["identity", "mirror"], batch_size=3)
    assert a.shape == (20, 2) and a.dtype == np.float32
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
    # the mirror column equals the identity column of mirrored images
    c = compute_phi(model, x.flip(-1), y, mean, std, ["identity"])
    np.testing.assert_allclose(a[:, 1], c[:, 0], rtol=1e-5, atol=1e-5)


def test_query_shift_and_crop():
    x = torch.arange(16, dtype=torch.uint8).view(1, 1, 4, 4)
    s = apply_query(x, "shift_1_0")
    assert (s[..., :, 0] == 0).all() and (s[..., :, 1:] == x[..., :, :3]).all()
    with pytest.raises(ValueError, match="allowed"):
        apply_query(x, "rotate")
    xs = torch.randint(0, 255, (64, 3, 8, 8), dtype=torch.uint8)
    out = random_crop_flip(xs, 0, False)
    assert torch.equal(out, xs)
    out = random_crop_flip(xs, 2, True, torch.Generator().manual_seed(0))
    assert out.shape == xs.shape and out.dtype == torch.uint8
    # every crop is a shifted window of the zero-padded image (or its mirror)
    for i in range(8):
        padded = torch.nn.functional.pad(xs[i], (2, 2, 2, 2))
        wins = [padded[:, dy:dy + 8, dx:dx + 8] for dy in range(5) for dx in range(5)]
        assert any(torch.equal(out[i], w) or torch.equal(out[i], w.flip(-1)) for w in wins)
