"""Linear CKA with unbiased HSIC, checked against an independent reference written here.

The reference is Song et al. 2012, eq. 5, term by term on raw (uncentred) Grams K = X X^T, in NumPy:
float64 arrays for ordinary data, Python integers (exact) where float64 itself would lose the answer.
It never calls rayrs' u_center.
"""

import math
from fractions import Fraction

import numpy as np
import pytest
import torch

from rayrs.similarity import MinibatchCKA, centered_gram, cka_matrix, u_center

RNG_SEED = 0


# ---------------------------------------------------------------- independent reference (Song et al. 2012)


def hsic_song(K: np.ndarray, L: np.ndarray):
    """Unbiased HSIC_1 (Song et al. 2012, eq. 5) of two (n, n) Grams, term by term.

    Works on float64 arrays and on object arrays of Python ints (then the result is an exact Fraction).
    """
    n = K.shape[0]
    Kt, Lt = K.copy(), L.copy()
    np.fill_diagonal(Kt, 0)
    np.fill_diagonal(Lt, 0)
    trace_KL = np.sum(Kt * Lt.T)  # tr(K~ L~) = sum_ij K~_ij L~_ji
    ones_K_ones, ones_L_ones = Kt.sum(), Lt.sum()
    ones_KL_ones = np.sum(Kt.sum(axis=0) * Lt.sum(axis=1))  # 1^T K~ L~ 1 = sum_k colsum_k(K~) rowsum_k(L~)
    return (
        trace_KL
        + ones_K_ones * ones_L_ones * Fraction(1, (n - 1) * (n - 2))
        - Fraction(2, n - 2) * ones_KL_ones
    ) * Fraction(1, n * (n - 3))


def flat64(x: torch.Tensor) -> np.ndarray:
    return x.detach().reshape(x.shape[0], -1).double().numpy()


def cka_reference(xs, ys) -> np.ndarray:
    """(L_a, L_b) CKA from the Song formula on raw float64 Grams (Kornblith et al. 2019, eq. 2)."""
    Ks = [flat64(x) @ flat64(x).T for x in xs]
    Ls = [flat64(y) @ flat64(y).T for y in ys]
    out = np.empty((len(Ks), len(Ls)))
    for i, K in enumerate(Ks):
        for j, L in enumerate(Ls):
            out[i, j] = hsic_song(K, L) / math.sqrt(hsic_song(K, K) * hsic_song(L, L))
    return out


def randn(*shape, seed=RNG_SEED, dtype=torch.float32) -> torch.Tensor:
    return torch.from_numpy(np.random.default_rng(seed).standard_normal(shape)).to(dtype)


def assert_matches(actual: torch.Tensor, expected: np.ndarray, atol=1e-5) -> None:
    assert actual.dtype == torch.float64
    np.testing.assert_allclose(actual.numpy(), expected, rtol=0, atol=atol)


# ---------------------------------------------------------------- the U-centring identity


@pytest.mark.parametrize("n", [4, 5, 17])
def test_u_centring_gives_song_hsic(n):
    # HSIC_1(K, L) = <U(K), U(L)>_F / (n(n-3)) (Székely & Rizzo 2014) -- the identity the fast path rests on.
    X, Y = randn(n, 7, seed=1, dtype=torch.float64) + 3, randn(n, 11, seed=2, dtype=torch.float64) - 2
    K, L = X @ X.T, Y @ Y.T
    via_u = (u_center(K) * u_center(L)).sum() / (n * (n - 3))
    assert via_u.item() == pytest.approx(hsic_song(K.numpy(), L.numpy()), rel=1e-10)
    # Also for a symmetric Gram that is not positive semi-definite.
    S = randn(n, n, seed=3, dtype=torch.float64)
    S = S + S.T
    assert ((u_center(S) * u_center(L)).sum() / (n * (n - 3))).item() == pytest.approx(
        hsic_song(S.numpy(), L.numpy()), rel=1e-10
    )


def test_u_center_shape_dtype_and_zero_diagonal():
    features = randn(3, 9, 5, seed=4)
    U = u_center(features @ features.transpose(1, 2))
    assert U.shape == (3, 9, 9) and U.dtype == torch.float32
    assert torch.all(U.diagonal(dim1=-2, dim2=-1) == 0)
    # A U-centred symmetric matrix has zero row and column sums (Székely & Rizzo 2014, §2).
    torch.testing.assert_close(U.sum(-1), torch.zeros(3, 9), atol=1e-5, rtol=0)
    torch.testing.assert_close(U.sum(-2), torch.zeros(3, 9), atol=1e-5, rtol=0)


def test_centring_features_is_a_no_op_under_u_centring():
    X = randn(12, 30, seed=5, dtype=torch.float64) * 2 + 40
    Xc = X - X.mean(0)
    torch.testing.assert_close(u_center(Xc @ Xc.T), u_center(X @ X.T), rtol=0, atol=1e-9)


def test_centered_gram_is_float32_gram_of_centred_flattened_features():
    x = randn(10, 2, 3, 4, seed=6, dtype=torch.float64) + 5
    gram = centered_gram(x)
    assert gram.shape == (10, 10) and gram.dtype == torch.float32
    flat = flat64(x)
    flat = flat - flat.mean(0)
    np.testing.assert_allclose(gram.numpy(), flat @ flat.T, rtol=1e-5, atol=1e-4)


# ---------------------------------------------------------------- cka_matrix against the reference


def test_random_features_match_reference():
    n = 40
    xs = [randn(n, 5, seed=10), randn(n, 64, seed=11), randn(n, 300, seed=12)]
    ys = [randn(n, 20, seed=13), xs[1] @ randn(64, 16, seed=14) + 0.3 * randn(n, 16, seed=15)]
    assert_matches(cka_matrix(xs, ys), cka_reference(xs, ys))


def test_rank_deficient_features_match_reference():
    n = 30
    rank2 = randn(n, 2, seed=20) @ randn(2, 50, seed=21)  # (30, 50) of rank 2
    rank1 = randn(n, 1, seed=22) @ randn(1, 8, seed=23)
    xs, ys = [rank2, rank1], [randn(n, 40, seed=24), rank2[:, :10]]
    assert_matches(cka_matrix(xs, ys), cka_reference(xs, ys))


def test_invariant_to_orthogonal_rotation_and_isotropic_scaling():
    n, p = 50, 24
    X = randn(n, p, seed=30)
    Z = X[:, :9] + randn(n, 9, seed=31)  # shares structure with X, so CKA(X, Z) is far from 0
    Q, _ = torch.linalg.qr(randn(p, p, seed=32, dtype=torch.float64))
    rotated, scaled = (X.double() @ Q).float(), 3.7 * X
    cka = cka_matrix([X, rotated, scaled], [X, Z])
    torch.testing.assert_close(cka[:, 0], torch.ones(3, dtype=torch.float64), rtol=0, atol=1e-5)
    torch.testing.assert_close(cka[1:, 1], cka[0, 1].expand(2), rtol=0, atol=1e-5)
    assert_matches(cka, cka_reference([X, rotated, scaled], [X, Z]))


def test_self_similarity_is_one_and_cka_is_symmetric():
    n = 25
    xs = [randn(n, 3, seed=40), randn(n, 4, 5, seed=41), randn(n, 100, seed=42) ** 2]
    ys = [randn(n, 7, seed=43), xs[0] + 0.5 * randn(n, 3, seed=44)]
    self_cka = cka_matrix(xs, xs)
    torch.testing.assert_close(self_cka.diagonal(), torch.ones(3, dtype=torch.float64), rtol=0, atol=1e-5)
    torch.testing.assert_close(self_cka, self_cka.T, rtol=0, atol=1e-6)
    torch.testing.assert_close(cka_matrix(xs, ys), cka_matrix(ys, xs).T, rtol=0, atol=1e-6)


def test_conv_feature_maps_are_flattened_per_example():
    n = 16
    conv_a = torch.relu(randn(n, 4, 6, 6, seed=50))
    conv_b = torch.nn.functional.avg_pool2d(conv_a, 2) + 0.1 * randn(n, 4, 3, 3, seed=51)
    logits = randn(n, 10, seed=52)
    xs, ys = [conv_a, conv_b], [conv_b, logits]
    assert_matches(cka_matrix(xs, ys), cka_reference(xs, ys))


def exact_gram(x: torch.Tensor, scale: int) -> np.ndarray:
    """Raw Gram in Python integers of features that are exact multiples of 1/scale."""
    ints = (x.double() * scale).round().long().numpy().astype(object)
    return ints @ ints.T


def test_large_mean_relu_features_keep_their_digits_in_float32():
    # ReLU-like features shifted to mean ~1e3 with spread ~1, quantised to 1/64 so float32 holds them exactly.
    n, p, q, scale = 64, 100, 30, 64
    base = randn(n, p, seed=60, dtype=torch.float64)
    mixed = base @ randn(p, q, seed=61, dtype=torch.float64) / 10 + randn(n, q, seed=62, dtype=torch.float64)
    x = (1e3 + torch.round(scale * torch.relu(base)) / scale).float()
    y = (1e3 + torch.round(scale * torch.relu(mixed)) / scale).float()

    # Reference: the Song formula on the raw Grams in exact integer arithmetic.
    K, L = exact_gram(x, scale), exact_gram(y, scale)
    expected = float(hsic_song(K, L) / (hsic_song(K, K) * hsic_song(L, L)) ** Fraction(1, 2))
    assert cka_matrix([x], [y]).item() == pytest.approx(expected, abs=1e-5)  # measured: |error| ~ 1e-9
    # For comparison, on this data (expected CKA = 0.1761):
    #   - the same Song formula on raw float64 Grams gives 0.2165: entries of ~1e8 must cancel down to ~1e2,
    #     which is why the reference above is exact rather than float64;
    #   - the naive float32 path (raw Gram X X^T in float32, no mean subtraction) rounds every entry to a
    #     multiple of 8; the Song formula in float32 then gives HSIC(K, K) = 0.0 and CKA = inf, and U-centring
    #     the naive Grams gives -0.178:
    naive_K, naive_L = u_center(x @ x.T).double(), u_center(y @ y.T).double()
    naive = (naive_K * naive_L).sum() / ((naive_K**2).sum() * (naive_L**2).sum()).sqrt()
    assert abs(naive.item() - expected) > 0.1


# ---------------------------------------------------------------- minibatch accumulation


def u_centred_grams(acts) -> torch.Tensor:
    return u_center(torch.stack([centered_gram(a) for a in acts]))


def test_minibatch_sums_over_uneven_batches_equal_song_sums():
    xs = [randn(37, 6, seed=70), randn(37, 3, 4, seed=71)]
    ys = [randn(37, 5, seed=72), xs[0][:, :2] * 2 + 0.2 * randn(37, 2, seed=73), randn(37, 9, seed=74) + 4]
    bounds = [0, 10, 17, 30, 32, 37]  # batches of 10, 7, 13, 2 (skipped) and 5 examples
    cka = MinibatchCKA(len(xs), len(ys))
    ref_ab, ref_aa, ref_bb = np.zeros((2, 3)), np.zeros(2), np.zeros(3)
    for lo, hi in zip(bounds, bounds[1:]):
        batch_x, batch_y = [x[lo:hi] for x in xs], [y[lo:hi] for y in ys]
        if hi - lo < 4:  # U-centring needs n >= 3; MinibatchCKA must ignore this batch whatever it holds
            raw_x, raw_y = (torch.stack([centered_gram(a) for a in batch]) for batch in (batch_x, batch_y))
            cka.update(raw_x, raw_y)
            continue
        cka.update(u_centred_grams(batch_x), u_centred_grams(batch_y))
        Ks = [flat64(x) @ flat64(x).T for x in batch_x]
        Ls = [flat64(y) @ flat64(y).T for y in batch_y]
        ref_ab += [[hsic_song(K, L) for L in Ls] for K in Ks]
        ref_aa += [hsic_song(K, K) for K in Ks]
        ref_bb += [hsic_song(L, L) for L in Ls]

    assert cka.n_examples == 35 and cka.n_skipped == 2
    assert cka.hsic_ab.dtype == cka.hsic_aa.dtype == cka.hsic_bb.dtype == torch.float64
    np.testing.assert_allclose(cka.hsic_ab.numpy(), ref_ab, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(cka.hsic_aa.numpy(), ref_aa, rtol=1e-5)
    np.testing.assert_allclose(cka.hsic_bb.numpy(), ref_bb, rtol=1e-5)
    assert_matches(cka.compute(), ref_ab / np.sqrt(np.outer(ref_aa, ref_bb)))


def test_batches_of_fewer_than_four_examples_are_skipped():
    cka = MinibatchCKA(1, 2)
    for n in (1, 2, 3):
        cka.update(torch.zeros(1, n, n), torch.zeros(2, n, n))
    assert cka.n_examples == 0 and cka.n_skipped == 6
    assert torch.all(cka.hsic_ab == 0) and torch.all(cka.hsic_aa == 0)
    with pytest.raises(RuntimeError, match="no minibatch of at least 4"):
        cka.compute()
    with pytest.raises(ValueError, match="at least 4 examples"):
        cka_matrix([randn(3, 5)], [randn(3, 2)])


def test_all_pairs_product_equals_per_pair_loop():
    n = 12
    grams_a = u_centred_grams([randn(n, 5, seed=s) for s in range(80, 84)])
    grams_b = u_centred_grams([randn(n, 7, seed=s) for s in range(90, 93)])
    cka = MinibatchCKA(4, 3)
    cka.update(grams_a, grams_b)
    scale = 1 / (n * (n - 3))
    pairs = [[(a.double() * b.double()).sum().item() * scale for b in grams_b] for a in grams_a]
    selves = [(a.double() ** 2).sum().item() * scale for a in grams_a]
    torch.testing.assert_close(cka.hsic_ab, torch.tensor(pairs, dtype=torch.float64), rtol=1e-6, atol=1e-9)
    # Self terms carry the float32 precision of the cross terms they are divided by (float32 norms).
    torch.testing.assert_close(cka.hsic_aa, torch.tensor(selves, dtype=torch.float64), rtol=1e-6, atol=0)


def test_a_model_against_itself_takes_its_self_terms_from_the_product_so_the_diagonal_is_exactly_one():
    grams = u_centred_grams([randn(16, 9, seed=s) for s in range(3)])
    cka = MinibatchCKA(3, 3)
    cka.update(grams, grams)
    assert torch.equal(cka.compute().diagonal(), torch.ones(3, dtype=torch.float64))


def test_constant_layer_gives_nan_and_others_stay_finite():
    # A layer with no variance across examples has HSIC(K, K) = 0 exactly: its CKA is undefined -> NaN.
    n = 20
    constant = (torch.rand(1, 8, generator=torch.Generator().manual_seed(0)) * 0.1 + 0.1).expand(n, 8)
    xs = [constant, randn(n, 8, seed=100)]
    cka = cka_matrix(xs, [randn(n, 3, seed=101), torch.relu(randn(n, 30, seed=102))])
    assert torch.isnan(cka[0]).all()
    assert torch.isfinite(cka[1]).all()
    assert torch.all(centered_gram(constant) == 0)


def test_update_rejects_mismatched_grams():
    cka = MinibatchCKA(2, 3)
    with pytest.raises(ValueError, match="same examples"):
        cka.update(torch.zeros(2, 8, 8), torch.zeros(3, 9, 9))
    with pytest.raises(ValueError, match=r"\(2, 8, 8\)"):
        cka.update(torch.zeros(1, 8, 8), torch.zeros(3, 8, 8))


def test_reduced_precision_settings_do_not_reach_the_grams():
    x = randn(30, 200, seed=110)
    exact = centered_gram(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # would otherwise run the Gram in bf16
        in_autocast = centered_gram(x)
    assert in_autocast.dtype == torch.float32
    torch.testing.assert_close(in_autocast, exact, rtol=0, atol=0)
    backend = torch.backends.mkldnn.matmul
    previous = backend.fp32_precision
    backend.fp32_precision = "bf16"
    try:
        torch.testing.assert_close(centered_gram(x), exact, rtol=0, atol=0)
        assert backend.fp32_precision == "bf16"  # the caller's setting is restored
    finally:
        backend.fp32_precision = previous


def test_the_tf32_split_is_exact_in_its_high_part():
    from rayrs.similarity.cka import _TF32_MASK

    x = randn(50, 40, seed=122) * 1e3
    high = (x.view(torch.int32) & _TF32_MASK).view(torch.float32)
    assert torch.all((high.view(torch.int32) & ~_TF32_MASK) == 0)  # 10 mantissa bits: exact in TF32
    assert torch.all((x - high).abs() <= x.abs() * 2.0**-10) and torch.equal(high + (x - high), x)


def test_gram_paths_match_float64():
    # n >= 64 takes the block products (the TF32 split on a GPU), smaller n one product: all equal X X^T.
    from rayrs.similarity.cka import blocked_gram, flatten_examples, split_tf32_gram, symmetric_gram

    x = randn(130, 257, seed=120) * 3 + 1
    exact = flat64(x) @ flat64(x).T
    for gram in (symmetric_gram(x), symmetric_gram(x[:20]), blocked_gram(x), split_tf32_gram(x)):
        np.testing.assert_allclose(gram.numpy(), exact[: len(gram), : len(gram)], rtol=1e-6, atol=1e-3)
        np.testing.assert_allclose(gram.numpy(), gram.numpy().T, rtol=1e-5, atol=1e-3)  # BLAS blocks may round apart
    maps = randn(70, 4, 5, 6, seed=121)
    last = maps.contiguous(memory_format=torch.channels_last)
    assert flatten_examples(last).data_ptr() == last.data_ptr()  # a view, not a copy
    np.testing.assert_allclose(centered_gram(last).numpy(), centered_gram(maps).numpy(), rtol=0, atol=1e-4)


# ---------------------------------------------------------------- the int8 route (CPUs with AMX)
# `centered_gram_int8` runs on any CPU (torch._int_mm); `centered_gram` only picks it where AMX makes it pay.


def int8_u_grams(acts, scratch=None) -> torch.Tensor:
    from rayrs.similarity.cka import centered_gram_int8, flatten_examples

    return u_center(torch.stack([centered_gram_int8(flatten_examples(a), scratch) for a in acts]))


def test_int8_route_cka_matches_reference():
    n = 96
    relu = torch.relu(randn(n, 700, seed=130))
    xs = [
        relu,
        randn(n, 500, seed=131) * 0.1 + 30,  # a large mean next to a small spread
        randn(n, 3, seed=132) @ randn(3, 900, seed=133),  # rank 3
        torch.relu(randn(n, 8, 9, 9, seed=134) + 1),  # a conv map
        relu[:, :400] @ randn(400, 600, seed=135) + 0.5 * randn(n, 600, seed=136),  # related to the first
    ]
    grams = int8_u_grams(xs)
    cka = MinibatchCKA(len(xs), len(xs))
    cka.update(grams, grams)
    expected = cka_reference(xs, xs)
    assert expected[0, 4] > 0.5  # the related pair really is related
    assert_matches(cka.compute(), expected, atol=5e-5)  # measured: 4.6e-6 (the float32 route: 3.1e-6)


def test_int8_gram_is_exactly_symmetric_and_close_to_float64_after_u_centring():
    from rayrs.similarity.cka import centered_gram_int8

    x = torch.relu(randn(200, 3000, seed=137)) * 5 + 2
    gram = centered_gram_int8(x)
    assert gram.dtype == torch.float32 and torch.equal(gram, gram.T)
    centred = flat64(x) - flat64(x).mean(0)
    expected = u_center(torch.from_numpy(centred @ centred.T))
    error = (u_center(gram.double()) - expected).abs().max() / expected.abs().max()
    assert error < 5e-3  # features kept to 2^-16 of their example's largest; measured 1e-3 (float32: 4e-7)


def test_int8_route_keeps_a_constant_layer_exactly_zero_and_lets_nan_through():
    from rayrs.similarity.cka import centered_gram_float32, centered_gram_int8

    constant = (torch.rand(1, 5000, generator=torch.Generator().manual_seed(1)) * 0.1 + 0.1).expand(70, 5000)
    assert torch.all(centered_gram_int8(constant) == 0)
    broken = randn(70, 5000, seed=138)
    broken[3, 17] = float("nan")
    # The NaN reaches the feature's mean, so every example's Gram row: all NaN, as on the float32 route,
    # rather than a finite number from a NaN cast to int8.
    assert torch.isnan(centered_gram_int8(broken)).all() and torch.isnan(centered_gram_float32(broken)).all()


def test_int8_route_splits_long_rows_so_int32_sums_cannot_overflow():
    from rayrs.similarity.cka import centered_gram_int8

    # 8 examples of +-1 with every feature's mean exactly 0: each example splits into 136,072 slices of
    # +-127, whose squares sum to 2.2e9, past int32's 2.1e9. The exact Gram is the integer sign agreement.
    p = (1 << 17) + 5000
    generator = torch.Generator().manual_seed(143)
    order = torch.rand(8, p, generator=generator).argsort(dim=0)  # a random half of the examples is +1
    signs = torch.where(order < 4, 1.0, -1.0)
    exact = signs.double() @ signs.double().T
    np.testing.assert_allclose(centered_gram_int8(signs).double().numpy(), exact.numpy(), rtol=1e-6, atol=0)


def test_int8_scratch_reused_across_layers_of_different_sizes_gives_the_same_grams():
    from rayrs.similarity.cka import Int8Scratch

    layers = [randn(80, 3000, seed=139), randn(80, 200, seed=140), torch.relu(randn(80, 4000, seed=141))]
    fresh = int8_u_grams(layers)
    scratch = Int8Scratch()
    assert torch.equal(int8_u_grams(layers, scratch), fresh)
    assert torch.equal(int8_u_grams(layers[::-1], scratch), fresh.flip(0))


def test_centered_gram_takes_the_int8_route_only_for_wide_cpu_layers_on_amx():
    from rayrs.similarity.cka import (
        INT8_MIN_EXAMPLES,
        INT8_MIN_FEATURES,
        _cpu_has_int8_matrix_units,
        centered_gram_float32,
        centered_gram_int8,
    )

    wide = torch.relu(randn(INT8_MIN_EXAMPLES, INT8_MIN_FEATURES, seed=142))
    narrow = wide[:, :-1]
    assert torch.equal(centered_gram(narrow), centered_gram_float32(narrow))
    assert torch.equal(centered_gram(wide.double()), centered_gram_float32(wide.double()))
    int8_taken = torch.equal(centered_gram(wide), centered_gram_int8(wide))
    float32_taken = torch.equal(centered_gram(wide), centered_gram_float32(wide))
    assert (int8_taken, float32_taken) == (_cpu_has_int8_matrix_units(), not _cpu_has_int8_matrix_units())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_on_cuda_the_gram_stays_accurate_even_where_tf32_is_switched_on():
    # The tensor-core split keeps inputs exact; its float32 accumulation truncates (3e-5 seen on an H200),
    # far from plain TF32 inputs (10 bits) or bf16 (8 bits).
    x = randn(1024, 4096, seed=123) * 5 + 2
    torch.backends.cuda.matmul.fp32_precision = "tf32"  # what training code often sets
    try:
        gram = centered_gram(x.cuda()).double().cpu().numpy()
    finally:
        torch.backends.cuda.matmul.fp32_precision = "ieee"
    centred = flat64(x) - flat64(x).mean(0)
    exact = centred @ centred.T
    assert np.abs(gram - exact).max() <= 1e-4 * np.abs(exact).max()
