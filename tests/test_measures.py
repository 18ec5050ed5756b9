"""Procrustes distance and SVCCA (App. B.1) against independent numpy/scipy computations, and their invariances."""

import numpy as np
import pytest
import scipy.linalg
import torch
from torch import nn

from rayrs.models import comparable_layers
from rayrs.similarity.measures import (
    layer_sample_spaces,
    procrustes,
    procrustes_distance,
    sample_space,
    svcca,
    svcca_similarity,
    svcca_variance,
    svcca_variance_similarity,
)


def features(n: int, p: int, seed: int, rank: int | None = None) -> torch.Tensor:
    """(n, p) float64 features with a decaying spectrum (like a real layer), optionally of low rank."""
    generator = torch.Generator().manual_seed(seed)
    rank = rank or min(n, p)
    left = torch.randn(n, rank, generator=generator, dtype=torch.float64)
    scales = torch.logspace(0, -2, rank, dtype=torch.float64)
    return (left * scales) @ torch.randn(rank, p, generator=generator, dtype=torch.float64) + 3.0


def related(n: int, p: int, q: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Two layers on the same n examples: y is a random linear map of x plus independent features."""
    x = features(n, p, seed)
    mixing = torch.randn(p, q, generator=torch.Generator().manual_seed(seed + 100), dtype=torch.float64)
    return x, x @ mixing / p**0.5 + features(n, q, seed + 1)


def reference_procrustes(x: np.ndarray, y: np.ndarray) -> float:
    """min over orthogonal R of ||A R - B||_F^2 by scipy, A and B centred and unit-Frobenius (Ding et al. 2021)."""
    a, b = (m - m.mean(axis=0) for m in (x, y))
    a, b = a / np.linalg.norm(a), b / np.linalg.norm(b)
    width = max(a.shape[1], b.shape[1])  # an orthogonal map between different widths: pad with zero features
    a, b = (np.pad(m, ((0, 0), (0, width - m.shape[1]))) for m in (a, b))
    rotation, _ = scipy.linalg.orthogonal_procrustes(a, b)
    return float(np.linalg.norm(a @ rotation - b) ** 2)


def reference_svcca(x: np.ndarray, y: np.ndarray, keep: float | None = None, dims: int | None = None) -> float:
    """SVD of the centred features keeping 99% (``keep``) of the variance or the top ``dims`` directions (at most
    the rank), then CCA as principal angles (scipy)."""
    reduced = []
    for m in (x, y):
        centred = m - m.mean(axis=0)
        u, s, _ = np.linalg.svd(centred, full_matrices=False)
        if keep is not None:
            k = int(np.searchsorted(np.cumsum(s**2) / np.sum(s**2), keep) + 1)
        else:
            k = min(dims, int(np.sum(s > s[0] * 1e-10)))
        reduced.append(u[:, :k] * s[:k])
    return float(np.cos(scipy.linalg.subspace_angles(*reduced)).mean())


@pytest.mark.parametrize("p, q", [(30, 30), (12, 50), (200, 80)])
def test_procrustes_matches_scipys_orthogonal_procrustes(p, q):
    x, y = related(60, p, q, 0)
    assert procrustes_distance(x, y) == pytest.approx(reference_procrustes(x.numpy(), y.numpy()), rel=1e-9, abs=1e-12)


@pytest.mark.parametrize("p, q", [(30, 30), (12, 50), (200, 80)])
def test_svcca_matches_svd_then_principal_angles(p, q):
    x, y = related(60, p, q, 2)
    # svcca: the top 20 directions (all 12 of a 12-feature layer); svcca_variance: those of 99% of the variance
    assert svcca_similarity(x, y) == pytest.approx(reference_svcca(x.numpy(), y.numpy(), dims=20), rel=1e-9)
    assert svcca_similarity(x, y, dims=7) == pytest.approx(reference_svcca(x.numpy(), y.numpy(), dims=7), rel=1e-9)
    assert svcca_variance_similarity(x, y) == pytest.approx(reference_svcca(x.numpy(), y.numpy(), keep=0.99), rel=1e-9)


def test_both_measures_ignore_rotation_shift_and_scale_of_the_features():
    x = features(50, 40, 4)
    rotation, _ = torch.linalg.qr(torch.randn(40, 40, generator=torch.Generator().manual_seed(5), dtype=torch.float64))
    moved = 7.0 * x @ rotation - 2.0
    assert procrustes_distance(x, moved) == pytest.approx(0.0, abs=1e-10)
    assert svcca_similarity(x, moved) == pytest.approx(1.0, abs=1e-10)
    assert svcca_variance_similarity(x, moved) == pytest.approx(1.0, abs=1e-10)
    y = features(50, 40, 6)
    assert procrustes_distance(x, y) == pytest.approx(procrustes_distance(moved, y), rel=1e-9)
    assert procrustes_distance(x, y) == pytest.approx(procrustes_distance(y, x), rel=1e-9)  # symmetric
    assert 0 < procrustes_distance(x, y) <= 2 and 0 <= svcca_similarity(x, y) < 1


def test_the_sample_space_keeps_the_centred_gram_and_every_measure():
    x = features(40, 300, 7)  # wider than the batch: reduced to 40 x 40
    z = sample_space(x)
    centred = x - x.mean(0)
    assert z.shape == (40, 40)
    assert torch.allclose(z @ z.T, centred @ centred.T, atol=1e-9)
    y = features(40, 20, 8)  # narrower: columns past its rank are zero
    assert procrustes_distance(z, y) == pytest.approx(procrustes_distance(x, y), rel=1e-9)
    assert svcca_similarity(z, y) == pytest.approx(svcca_similarity(x, y), rel=1e-9)
    assert svcca_variance_similarity(z, y) == pytest.approx(svcca_variance_similarity(x, y), rel=1e-9)


def test_matrices_over_layers_and_their_same_layer_diagonal():
    xs = torch.stack([sample_space(features(30, p, seed)) for seed, p in enumerate((8, 20, 50))])
    ys = torch.stack([sample_space(features(30, p, seed + 10)) for seed, p in enumerate((8, 20, 50))])
    for measure in (procrustes, svcca, svcca_variance):
        full = measure(xs, ys)
        assert full.shape == (3, 3) and full.dtype == torch.float64
        assert torch.allclose(measure(xs, ys, same_layer=True), full.diagonal(), atol=1e-12)
    assert torch.allclose(procrustes(xs, xs).diagonal(), torch.zeros(3, dtype=torch.float64), atol=1e-10)
    assert torch.allclose(svcca(xs, xs).diagonal(), torch.ones(3, dtype=torch.float64), atol=1e-10)
    assert torch.allclose(svcca_variance(xs, xs).diagonal(), torch.ones(3, dtype=torch.float64), atol=1e-10)


def test_a_constant_layer_gives_nan_not_an_error():
    constant = torch.ones(20, 5, dtype=torch.float64)
    assert np.isnan(procrustes_distance(constant, features(20, 5, 0)))
    assert np.isnan(svcca_similarity(constant, features(20, 5, 0)))
    assert np.isnan(svcca_variance_similarity(constant, features(20, 5, 0)))


def test_hooks_reduce_each_layer_to_its_sample_space_before_in_place_ops():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(inplace=True), nn.Flatten(), nn.Linear(144, 3)).eval()
    inputs = torch.randn(16, 1, 8, 8)
    layers = comparable_layers(model, inputs[:1])
    spaces, output = layer_sample_spaces(model, layers, inputs)
    assert [layer.type for layer in layers] == ["conv", "bn", "act", "linear"] and spaces.shape == (4, 16, 16)
    batch_normed = model[1](model[0](inputs))  # the bn output, which ReLU(inplace=True) overwrites afterwards
    assert torch.allclose(spaces[1] @ spaces[1].T, sample_space(batch_normed) @ sample_space(batch_normed).T, atol=1e-6)
    assert torch.allclose(output, model(inputs))
