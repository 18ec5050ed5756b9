"""Linear CKA with the unbiased HSIC estimator, for every pair of layers at once.

Sources:
  - Linear CKA: Kornblith et al. 2019, "Similarity of Neural Network Representations Revisited"
    (paper eq. 2-3: CKA(K, L) = HSIC(K, L) / sqrt(HSIC(K, K) HSIC(L, L)) with K = X X^T, L = Y Y^T).
  - Unbiased HSIC: Song et al. 2012, "Feature Selection via Dependence Maximization", eq. 5. With K~, L~ the
    Grams with zeroed diagonals,
        HSIC_1(K, L) = [tr(K~ L~) + (1^T K~ 1)(1^T L~ 1) / ((n-1)(n-2)) - 2/(n-2) 1^T K~ L~ 1] / (n(n-3)).
  - U-centring: Székely & Rizzo 2014, "Partial distance correlation with methods for dissimilarities", §2.
    HSIC_1(K, L) = <U(K), U(L)>_F / (n(n-3)), so a layer's Gram is U-centred once and every pair of layers
    then costs one inner product; all pairs together are one matrix product.
  - Minibatch CKA: Nguyen, Raghu & Kornblith 2021, "Do Wide and Deep Networks Learn the Same Things?", §3.1:
    sum HSIC_1 over minibatches, then CKA = sum HSIC(K, L) / sqrt(sum HSIC(K, K) * sum HSIC(L, L)).
    The paper (Cianfarani et al. §2.3) uses minibatches of 1024 and three passes over the probe set.

Numerics: Grams are float32 (they are the costly part: n^2 p per layer); the HSIC sums are float64. On a CPU
with AMX, wide layers' Grams come from exact int8 products of a two-slice split of each example
(`centered_gram_int8`): each feature kept to 2^-16 of its example's largest, at 1.6x the speed.
Features are centred before the Gram is formed. U-centring makes that a no-op in exact arithmetic (it removes
any term of the form a_i + b_j from the off-diagonal of a Gram, which is what a shift of the features adds),
but in float32 it is what keeps the digits: a ReLU feature with mean 1e3 and spread 1 has a raw Gram whose
entries are ~1e6 times the part CKA measures.
"""

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from functools import cache

import torch
from torch import Tensor

__all__ = [
    "Int8Scratch",
    "MinibatchCKA",
    "blocked_gram",
    "centered_gram",
    "centered_gram_float32",
    "centered_gram_int8",
    "cka_matrix",
    "flatten_examples",
    "jackknife_std_error",
    "split_tf32_gram",
    "symmetric_gram",
    "u_center",
]

# The unbiased estimator divides by n(n-3): a minibatch needs at least this many examples.
MIN_EXAMPLES = 4
# The delete-a-group jackknife of every CKA value (`MinibatchCKA`): 20 groups of probe examples. Its variance
# estimate has G - 1 = 19 degrees of freedom, so a 95% interval is +- t(19, 0.975) = 2.093 standard errors.
JACKKNIFE_GROUPS = 20
JACKKNIFE_T95 = 2.093


@contextmanager
def exact_float32(device: torch.device) -> Iterator[None]:
    """Run the enclosed matmuls on `device` in IEEE float32, whatever precision the caller chose.

    Why: training code often enables TF32 (`torch.set_float32_matmul_precision("high")`), which keeps
    10 mantissa bits, and autocast would run a Gram in bf16; either costs CKA about three digits.
    Only the per-backend flag of PyTorch's fp32-precision API is touched, and restored on exit.
    """
    with _fp32_precision(device, "ieee"), torch.autocast(device_type=device.type, enabled=False):
        yield


@contextmanager
def _fp32_precision(device: torch.device, precision: str) -> Iterator[None]:
    """Set the float32 matmul precision ("ieee" or "tf32") of `device`'s backend inside the block."""
    backend = {"cuda": torch.backends.cuda.matmul, "cpu": torch.backends.mkldnn.matmul}.get(device.type)
    previous = backend.fp32_precision if backend is not None else precision
    if previous != precision:
        backend.fp32_precision = precision
    try:
        yield
    finally:
        if previous != precision:
            backend.fp32_precision = previous


def centered_gram(x: Tensor, scratch: "Int8Scratch | None" = None) -> Tensor:
    """Linear-kernel Gram matrix of mean-centred, per-example-flattened features.

    x: (n, ...) activations of n examples, any real dtype; each example is flattened to p features
       (a conv map (n, C, H, W) gives p = C*H*W).
    scratch: buffers to reuse across calls on the int8 route (see `Int8Scratch`); None allocates afresh.
    Returns: (n, n) float32, K = Xc Xc^T with Xc the features minus their minibatch mean.

    Two routes: `centered_gram_float32`, and on a CPU with AMX int8 units, for float32 layers of at least
    512 examples and 4,096 features, `centered_gram_int8`: 1.6x as fast on a 32,768-feature layer, at
    CKA-grade rather than float32 accuracy (CKA within about 1e-5 of float64 instead of 1e-6).
    """
    features = flatten_examples(x)
    if _takes_int8_route(features):
        return centered_gram_int8(features, scratch)
    return centered_gram_float32(features)


def centered_gram_float32(features: Tensor) -> Tensor:
    """Centred Gram of (n, p) features in float32 (centred in float64 when given float64): (n, n) float32.

    Centring first is a no-op for U-centred use (see the module docstring) but keeps float32 exact enough.
    The first example is subtracted before the mean, which is exact for features that barely vary (Sterbenz)
    and turns a constant feature into exact zeros, so a constant layer gives an exactly zero Gram. (A float64
    mean would do the same at twice the cost of the whole centring.)
    """
    # Centre in float64 when given float64, else in float32: never in a narrower type than the Gram's.
    features = features.to(torch.promote_types(features.dtype, torch.float32))
    features = features - features[:1]  # a new tensor: the caller's activation is never modified
    features -= features.mean(dim=0, keepdim=True)
    features = features.to(torch.float32)
    with exact_float32(features.device):
        return symmetric_gram(features)


# Below these sizes the int8 route's passes over the features cost about what its faster products save.
# Measured on 2 Sapphire Rapids cores, against the float32 route: at n = 1024, 0.85-1.15x its speed at 2,048
# features, 1.2-1.3x at 4,096 and 1.6-1.8x from 8,192 to 32,768; at n = 512, 1.0-1.3x at 4,096.
INT8_MIN_EXAMPLES = 512
INT8_MIN_FEATURES = 4096


def _takes_int8_route(features: Tensor) -> bool:
    n, p = features.shape
    return (
        features.device.type == "cpu"
        and features.dtype == torch.float32
        and n >= INT8_MIN_EXAMPLES
        and p >= INT8_MIN_FEATURES
        and _cpu_has_int8_matrix_units()
    )


@cache
def _cpu_has_int8_matrix_units() -> bool:
    """Whether this CPU has AMX tiles (Intel Sapphire Rapids and later), where int8 GEMMs run 8x float32's."""
    probe = getattr(torch.cpu, "_is_amx_tile_supported", None)  # private, so guarded: absent means no
    return bool(probe()) if probe is not None else False


# A product of two int8 slices is at most 127^2 = 16129 an entry, so sums of up to 2^17 of them fit an int32.
_INT8_TERMS_PER_PRODUCT = 1 << 17
# Elements of the float32 row block the int8 route works on: 2 MB, which stays in a core's L2 cache.
_ROW_BLOCK_ELEMENTS = 1 << 19
# The low slice holds the high slice's rounding residual (|r| <= 1/2) times 254: |low| <= 127.
_LOW_SLICE_SCALE = 254.0


class Int8Scratch:
    """Buffers `centered_gram_int8` reuses from one layer to the next.

    Why: the int8 slices of a 32,768-feature layer at n = 1024 take 64 MB, and freshly mapped memory costs
    about 15 ms of page faults per call, a ninth of the Gram's time. Keep one scratch for the layers of a
    forward pass (`GramRecorder` does) and drop it afterwards; it holds the largest layer's slices.
    """

    def __init__(self) -> None:
        self._slices = torch.empty(0, dtype=torch.int8)
        self._blocks = torch.empty(0)

    def take(self, n: int, p: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """(high, low) int8 (n, p) and two float32 (rows, p) row blocks, rows * p <= 2^19 (at least 1 row)."""
        rows = max(1, min(n, _ROW_BLOCK_ELEMENTS // p))
        if self._slices.numel() < 2 * n * p:
            self._slices = torch.empty(2 * n * p, dtype=torch.int8)
        if self._blocks.numel() < 2 * rows * p:
            self._blocks = torch.empty(2 * rows * p)
        high, low = self._slices[: 2 * n * p].view(2, n, p)
        block, rounded = self._blocks[: 2 * rows * p].view(2, rows, p)
        return high, low, block, rounded


def centered_gram_int8(features: Tensor, scratch: Int8Scratch | None = None) -> Tensor:
    """Centred Gram of (n, p) float32 CPU features from exact int8 products (a two-slice Ozaki split).

    Each centred example x_i is scaled by u_i = max_k |x_ik| / 127 and split into two int8 slices,
    x_i = u_i (H_i + L_i / 254) + e_i with H_i = round(x_i / u_i) and L_i = round(254 (x_i / u_i - H_i)),
    so |e_ik| <= u_i / 508: every feature is kept to 2^-16 of its example's largest. Then
        K_ij = u_i u_j (H_i.H_j + (H_i.L_j + L_i.H_j) / 254)
    from two int8 GEMMs (H H^T by `blocked_gram`, H L^T) whose int32 sums are exact (the splitting of
    Ozaki et al. 2012, "Error-free transformations of matrix multiplication", on integer units as in Ootomo,
    Ozaki & Yokota 2024). L L^T / 254^2, about 2^-16 of the Gram, is dropped to save a third GEMM: it is the
    largest error left, rounding noise that the sums of HSIC average out. On AMX an int8 GEMM runs about 8x
    faster than a float32 one. Accuracy on ReLU features: U-centred Gram entries within about 1e-3 of the
    largest (float32: 4e-7); CKA within 1e-5 of float64 on a WRN-16-2 (float32: 1.3e-6; `benchmarks/cka.py`),
    far below the spread between minibatches.

    Centring as in `centered_gram_float32`, and as much needed here (a large feature mean would crowd the
    int8 range): the mean is taken of each example minus the first, then the first added back, so a constant
    feature becomes exact zeros and a constant layer an exactly zero Gram. The features are read twice, in
    cache-sized row blocks: once for the mean, once to centre, scale and split each block in place.
    """
    n, p = features.shape
    high, low, block, rounded = (scratch or Int8Scratch()).take(n, p)
    rows = block.shape[0]

    first = features[0]
    offset_sum = torch.zeros(p)
    for start in range(0, n, rows):
        part = block[: min(rows, n - start)]
        torch.sub(features[start : start + part.shape[0]], first, out=part)
        offset_sum += part.sum(dim=0)
    mean = offset_sum.div_(n).add_(first)

    unit = torch.empty(n)
    for start in range(0, n, rows):
        stop = min(start + rows, n)
        part, part_rounded = block[: stop - start], rounded[: stop - start]
        torch.sub(features[start:stop], mean, out=part)
        peak = torch.maximum(part.amax(dim=1), part.amin(dim=1).neg_())  # NaN or inf: that Gram row is too
        unit[start:stop] = peak / 127
        part.mul_(torch.where(peak > 0, 127 / peak, 0.0).unsqueeze(1))
        torch.round(part, out=part_rounded)
        high[start:stop].copy_(part_rounded)
        part.sub_(part_rounded).mul_(_LOW_SLICE_SCALE)
        low[start:stop].copy_(part.round_())

    gram = blocked_gram(high, _int8_product)
    cross = _int8_product(high, low)
    gram.add_(_plus_transpose(cross), alpha=1 / _LOW_SLICE_SCALE)  # c_ij + c_ji == c_ji + c_ij: symmetric
    return gram.mul_(torch.outer(unit, unit))


def _int8_product(a: Tensor, b: Tensor) -> Tensor:
    """a b^T of (n, p) and (m, p) int8 matrices as (n, m) float32, from exact int32 partial sums."""
    p = a.shape[1]
    product = torch._int_mm(a[:, :_INT8_TERMS_PER_PRODUCT], b[:, :_INT8_TERMS_PER_PRODUCT].T).float()
    for start in range(_INT8_TERMS_PER_PRODUCT, p, _INT8_TERMS_PER_PRODUCT):
        stop = start + _INT8_TERMS_PER_PRODUCT
        product += torch._int_mm(a[:, start:stop], b[:, start:stop].T)
    return product


# Side of the square tiles a transpose is done in: a whole 1024 x 1024 matrix read transposed takes 3x longer.
_TRANSPOSE_TILE = 256


def _transpose_tiles(rows: int, cols: int) -> Iterator[tuple[slice, slice]]:
    """(row slice, column slice) of the tiles of a (rows, cols) matrix."""
    for top in range(0, rows, _TRANSPOSE_TILE):
        for left in range(0, cols, _TRANSPOSE_TILE):
            yield slice(top, top + _TRANSPOSE_TILE), slice(left, left + _TRANSPOSE_TILE)


def _plus_transpose(square: Tensor) -> Tensor:
    """square + square^T, tile by tile."""
    total = torch.empty_like(square)
    for rows, cols in _transpose_tiles(*square.shape):
        torch.add(square[rows, cols], square[cols, rows].T, out=total[rows, cols])
    return total


def flatten_examples(x: Tensor) -> Tensor:
    """(n, ...) -> (n, p), without a copy for a contiguous or a channels-last tensor.

    A Gram X X^T does not depend on the order of the features, so a channels-last conv map is flattened in
    its memory order (n, H, W, C), where `reshape` would copy it into (n, C, H, W) order first.
    """
    n = x.shape[0]
    if x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last):
        return x.permute(0, 2, 3, 1).reshape(n, -1)
    return x.reshape(n, -1)


def symmetric_gram(features: Tensor) -> Tensor:
    """X X^T of (n, p) float32 features, to float32 accuracy, by the fastest exact route of the device.

    On a GPU with TF32 tensor cores (compute capability 8.0+), `split_tf32_gram`; elsewhere `blocked_gram`.
    """
    n = features.shape[0]
    if n < 64:  # too small for either trick to pay
        return features @ features.T
    if features.is_cuda and torch.cuda.get_device_capability(features.device) >= (8, 0):
        return split_tf32_gram(features)
    return blocked_gram(features)


def blocked_gram(features: Tensor, product: Callable[[Tensor, Tensor], Tensor] | None = None) -> Tensor:
    """X X^T of (n, p) features from three of its four (n/2)-row block products.

    product(a, b): a b^T of two row blocks; by default a matmul in the features' dtype (the int8 route passes
    its exact int8 product, which returns float32).
    The Gram is symmetric, so the lower-left block is the upper-right one transposed; PyTorch has no
    symmetric rank-k product (syrk), and this saves a quarter of the dominant cost of CKA. (SciPy's BLAS
    ssyrk is no faster on CPU inside a forward pass: its threads spin after each call and slow PyTorch's.)
    """
    product = product or (lambda a, b: a @ b.T)
    n = features.shape[0]
    half = n // 2
    top, bottom = features[:half], features[half:]
    corner = product(top, top)
    gram = torch.empty(n, n, dtype=corner.dtype, device=corner.device)
    gram[:half, :half] = corner
    gram[half:, half:] = product(bottom, bottom)
    gram[:half, half:] = product(top, bottom)
    for rows, cols in _transpose_tiles(half, n - half):
        gram[half:, :half][cols, rows] = gram[:half, half:][rows, cols].T
    return gram


# Clears the 13 low mantissa bits of a float32: what is left (sign, exponent, 10 bits) is exact in TF32.
_TF32_MASK = -(1 << 13)


def split_tf32_gram(features: Tensor) -> Tensor:
    """X X^T of (n, p) float32 features from TF32 tensor-core products, with float32 inputs kept exact.

    The "3xTF32" split (Ootomo & Yokota 2022, "Recovering single precision accuracy from Tensor Cores while
    surpassing the FP32 theoretical peak performance"): X = H + L with H the leading 11 significant bits of
    each entry (exact in TF32) and L = X - H (exact in float32, at most 2^-10 of X). Then
    X X^T = H H^T + (H L^T + (H L^T)^T) + L L^T; the last term, about 2^-20 of the first, is dropped, and L's
    own rounding to TF32 costs about 2^-21. Two TF32 products (H H^T by `blocked_gram`, H L^T) run faster than
    one IEEE float32 product: WRN-28-10's 80 Grams at n = 1024 take 0.19 s instead of 0.30 s on an H200.
    What remains is the tensor cores' float32 accumulation, which truncates: measured on an H200, Gram entries
    are within 3e-5 of float64 (IEEE products: 1.4e-6), and CKA values within 2e-6 of the float64 reference
    on a WRN-28-10, the same as with IEEE products (`benchmarks/cka.py`). Off CUDA the same split runs in IEEE
    float32 (for tests; `symmetric_gram` does not choose it there).
    """
    high = (features.view(torch.int32) & _TF32_MASK).view(torch.float32)
    low = features - high
    with _fp32_precision(features.device, "tf32" if features.is_cuda else "ieee"):
        gram = blocked_gram(high)
        cross = high @ low.T
    gram += cross + cross.T  # c_ij + c_ji == c_ji + c_ij: the sum stays exactly symmetric
    return gram


def u_center(grams: Tensor) -> Tensor:
    """U-centre Gram matrices (Székely & Rizzo 2014, §2), for the unbiased HSIC of Song et al. 2012.

    grams: (..., n, n) Gram matrices of n examples, n >= 3.
    Returns: same shape and dtype; with K~ = K with a zeroed diagonal, for i != j
        U(K)_ij = K~_ij - rowsum_i(K~)/(n-2) - colsum_j(K~)/(n-2) + sum(K~)/((n-1)(n-2)),
    and U(K)_ii = 0. Then HSIC_1(K, L) = <U(K), U(L)>_F / (n(n-3)) (Song et al. 2012, eq. 5).
    """
    n = grams.shape[-1]
    if grams.shape[-2] != n or n < 3:
        raise ValueError(f"u_center needs square Grams of at least 3 examples, got shape {tuple(grams.shape)}")
    centred = grams.clone()
    centred.diagonal(dim1=-2, dim2=-1).zero_()
    row_sums = centred.sum(dim=-1, keepdim=True)  # (..., n, 1)
    col_sums = centred.sum(dim=-2, keepdim=True)  # (..., 1, n)
    total = row_sums.sum(dim=-2, keepdim=True)  # (..., 1, 1)
    centred -= row_sums / (n - 2)
    centred -= col_sums / (n - 2)
    centred += total / ((n - 1) * (n - 2))
    centred.diagonal(dim1=-2, dim2=-1).zero_()
    return centred


class MinibatchCKA:
    """Sums of unbiased HSIC over minibatches for every (row layer, column layer) pair (Nguyen et al. 2021),
    and, with ``groups``, the delete-a-group jackknife that gives every CKA value its standard error.

    rows, cols: number of layers on each side (L_a, L_b). Feed `update` the U-centred Grams of both sides on
    the same examples, once per minibatch, then `compute` (and `std_error` / `jackknife`). The sums are
    float64 on `device`; with device=None they follow the first minibatch's device.

    Uncertainty (``groups`` = G >= 2). The probe's examples are split into G fixed groups (the caller labels
    each example of a minibatch with its group, e.g. its position in the probe modulo G, the same in every
    pass). For each group g the accumulator also sums each minibatch's HSIC with g's examples left out, so
    that ``jackknife()[g]`` is the whole estimate (every minibatch, every pass) computed without g. Why this
    and not the spread across minibatches: with a probe that fits in one minibatch (the digits quickstart:
    450 images, minibatches of 1024) every pass sees the same examples and gives the same number, and across
    passes the minibatches share examples, so their spread says nothing about sampling. The delete-a-group
    jackknife (Quenouille 1956; Efron & Stein 1981) of this ratio of U-statistics is asymptotically valid,
    needs no refitting (each left-out HSIC follows from sums over the Grams already in hand, below), and its
    replicates are aligned across jobs on the same probe, so any statistic derived from several values
    (a block-structure score, a difference of two models' CKA) gets its own jackknife error from them.

    Leaving a set S of m examples out of a minibatch of n: HSIC_1 is unchanged by adding a_j + b_k to the
    off-diagonal of a Gram (that is what U-centring removes), so the U-centred Grams restricted to the other
    n' = n - m examples R can stand in for theirs in Song et al.'s formula:
        HSIC_1 = [tr(A B) + (1^T A 1)(1^T B 1) / ((n'-1)(n'-2)) - 2/(n'-2) 1^T A B 1] / (n'(n'-3)),
    with A = U(K)[R, R], B = U(L)[R, R], and each term follows from the full product and S's rows:
    tr(A B) = <U(K), U(L)> - 2 <U(K)[S, :], U(L)[S, :]> + <U(K)[S, S], U(L)[S, S]>; the row sums over R are
    column sums minus S's rows' sums. All G groups together cost about three more all-pairs products a minibatch.

    Attributes:
        hsic_ab: (L_a, L_b) float64, sum over minibatches of HSIC_1(K_a, L_b).
        hsic_aa: (L_a,) float64, sum of HSIC_1(K_a, K_a). hsic_bb: (L_b,) likewise.
        n_examples: examples in the minibatches used. n_skipped: examples in minibatches of fewer than 4
            examples, which the unbiased estimator cannot use (it divides by n(n-3)) and are skipped.
    """

    def __init__(self, rows: int, cols: int, device: torch.device | str | None = None, groups: int = 0) -> None:
        if groups == 1 or groups < 0:
            raise ValueError(f"MinibatchCKA: groups must be 0 (no jackknife) or at least 2, got {groups}")
        self.rows, self.cols, self.groups = rows, cols, groups
        self._follow_inputs = device is None
        device = torch.device("cpu" if device is None else device)
        self.hsic_ab = torch.zeros(rows, cols, dtype=torch.float64, device=device)
        self.hsic_aa = torch.zeros(rows, dtype=torch.float64, device=device)
        self.hsic_bb = torch.zeros(cols, dtype=torch.float64, device=device)
        # Leave-group-out sums: [g] is the sum over minibatches of HSIC_1 without group g's examples.
        self.left_out_ab = torch.zeros(groups, rows, cols, dtype=torch.float64, device=device)
        self.left_out_aa = torch.zeros(groups, rows, dtype=torch.float64, device=device)
        self.left_out_bb = torch.zeros(groups, cols, dtype=torch.float64, device=device)
        self.n_examples = 0
        self.n_skipped = 0

    def update(self, grams_a: Tensor, grams_b: Tensor, group_of: Tensor | None = None) -> None:
        """Add one minibatch.

        grams_a: (L_a, n, n) U-centred Grams (see `u_center`), float32 or float64.
        grams_b: (L_b, n, n) U-centred Grams of the SAME n examples, same dtype as grams_a.
        group_of: (n,) int64 group of each example, in 0..G-1 (required when ``groups`` was given).
        All L_a * L_b cross terms are one (L_a, n^2) x (n^2, L_b) matrix product; the self terms are
        squared row norms. A minibatch of n < 4 examples is skipped and counted in `n_skipped`.
        """
        n = grams_a.shape[-1]
        expected_a, expected_b = (self.rows, n, n), (self.cols, n, n)
        if tuple(grams_a.shape) != expected_a or tuple(grams_b.shape) != expected_b:
            raise ValueError(
                f"MinibatchCKA({self.rows}, {self.cols}).update expects Grams of shapes {expected_a} and "
                f"{expected_b} (same examples on both sides), got {tuple(grams_a.shape)} and {tuple(grams_b.shape)}"
            )
        if self.groups and (group_of is None or tuple(group_of.shape) != (n,)):
            raise ValueError(f"MinibatchCKA(groups={self.groups}).update needs group_of, the (n,) group of each example")
        if n < MIN_EXAMPLES:
            self.n_skipped += n
            return
        if self._follow_inputs:
            self._follow_inputs = False
            for name in ("hsic_ab", "hsic_aa", "hsic_bb", "left_out_ab", "left_out_aa", "left_out_bb"):
                setattr(self, name, getattr(self, name).to(grams_a.device))
        scale = 1.0 / (n * (n - 3))
        flat_a = grams_a.reshape(self.rows, n * n)
        flat_b = grams_b.reshape(self.cols, n * n)
        with exact_float32(flat_a.device):
            cross = flat_a @ flat_b.T
        device = self.hsic_ab.device
        same = grams_a is grams_b  # one model against itself: the self terms are the product's diagonal
        if same:
            self_a = self_b = cross.diagonal().to(device, torch.float64)
        else:
            self_a, self_b = _squared_norms(flat_a).to(device), _squared_norms(flat_b).to(device)
        self.hsic_ab += cross.to(device, torch.float64) * scale
        self.hsic_aa += self_a * scale
        self.hsic_bb += self_b * scale
        self.n_examples += n
        if self.groups:
            self._leave_groups_out(grams_a, grams_b, group_of.to(grams_a.device), cross.to(device, torch.float64),
                                   self_a, self_b, same)

    def _leave_groups_out(self, grams_a: Tensor, grams_b: Tensor, group_of: Tensor, cross: Tensor,
                          self_a: Tensor, self_b: Tensor, same: bool) -> None:
        """Add this minibatch's HSIC_1 without each group's examples to ``left_out_*`` (class docstring).

        Every group at once: the rows' inner products of every layer pair, one (L_a, n) x (n, L_b) product per
        example in one batched product (as many FLOPs as the all-pairs product itself), summed per group; the
        groups' diagonal blocks (n^2 / G entries a layer in all) one small product each; the rest is (G, L, n).
        The groups' rows are read as slices: the Grams are put in group order first (a copy) unless the caller
        already did (jobs.py feeds each minibatch in group order).
        """
        n = grams_a.shape[-1]
        device = self.hsic_ab.device
        if bool((group_of[1:] < group_of[:-1]).any()):
            order = torch.argsort(group_of, stable=True)
            grams_a = grams_a[:, order][:, :, order]
            grams_b = grams_a if same else grams_b[:, order][:, :, order]
            group_of = group_of[order]
        counts = torch.bincount(group_of, minlength=self.groups)
        member = torch.nn.functional.one_hot(group_of, self.groups).T.to(grams_a.dtype)  # (G, n)
        with exact_float32(grams_a.device):
            # rows[j] = U_a[:, j, :] U_b[:, j, :]^T: each example's row products, (n, L_a, L_b).
            by_row_a = grams_a.transpose(0, 1)
            rows = torch.bmm(by_row_a, (by_row_a if same else grams_b.transpose(0, 1)).transpose(1, 2))
            in_rows = (member @ rows.reshape(n, -1)).reshape(self.groups, self.rows, self.cols)  # (G, L_a, L_b)
            in_block = torch.zeros_like(in_rows)  # <U_a[S, S], U_b[S, S]> of each group S
            stop = 0
            for group, m in enumerate(counts.tolist()):
                start, stop = stop, stop + m
                if m:
                    block_a = grams_a[:, start:stop, start:stop].reshape(self.rows, m * m)
                    block_b = block_a if same else grams_b[:, start:stop, start:stop].reshape(self.cols, m * m)
                    in_block[group] = block_a @ block_b.T
            # Row sums over each group's rows, and over all rows (zero in exact arithmetic: U-centred).
            group_sums_a = member @ grams_a  # (L_a, G, n)
            group_sums_b = group_sums_a if same else member @ grams_b
        outside = (1 - member).to(device, torch.float64)  # (G, n): 1 where an example is not in the group
        kept_a = (grams_a.sum(dim=1)[:, None, :] - group_sums_a).to(device, torch.float64) * outside
        kept_b = kept_a if same else (grams_b.sum(dim=1)[:, None, :] - group_sums_b).to(device, torch.float64) * outside
        totals_a, totals_b = kept_a.sum(dim=-1).T, kept_b.sum(dim=-1).T  # (G, L)
        middle = torch.bmm(kept_a.transpose(0, 1), kept_b.transpose(0, 1).transpose(1, 2))  # (G, L_a, L_b)
        trace = cross - 2 * in_rows.to(device, torch.float64) + in_block.to(device, torch.float64)
        kept = (n - counts).to(device, torch.float64).view(-1, 1, 1)  # examples left, per group
        usable = kept >= MIN_EXAMPLES  # too few left: the minibatch drops out of that replicate
        kept = torch.where(usable, kept, torch.full_like(kept, MIN_EXAMPLES))  # (no division by zero)

        def hsic(trace: Tensor, total_x: Tensor, total_y: Tensor, middle: Tensor) -> Tensor:
            terms = trace + total_x * total_y / ((kept - 1) * (kept - 2)) - 2 * middle / (kept - 2)
            return torch.where(usable, terms / (kept * (kept - 3)), 0.0)

        self.left_out_ab += hsic(trace, totals_a[:, :, None], totals_b[:, None, :], middle)
        if same:
            diagonal = hsic(trace.diagonal(dim1=1, dim2=2)[..., None], totals_a[..., None], totals_a[..., None],
                            middle.diagonal(dim1=1, dim2=2)[..., None])[..., 0]
            self.left_out_aa += diagonal
            self.left_out_bb += diagonal
            return
        for grams, sums, total, kept_side, accumulated in (
            (grams_a, self_a, totals_a, kept_a, self.left_out_aa),
            (grams_b, self_b, totals_b, kept_b, self.left_out_bb),
        ):
            with exact_float32(grams.device):  # squared norms of each group's rows, and of its block: (G, L)
                row_norms = member @ torch.linalg.vector_norm(grams, dim=-1).square().T
            blocks = torch.stack([
                torch.linalg.vector_norm(grams[:, start:stop, start:stop], dim=(1, 2)).square()
                for start, stop in _bounds(counts.tolist())
            ])
            trace_self = sums - 2 * row_norms.to(device, torch.float64) + blocks.to(device, torch.float64)
            middle_self = kept_side.square().sum(dim=-1).T  # (G, L)
            accumulated += hsic(trace_self[..., None], total[..., None], total[..., None], middle_self[..., None])[..., 0]

    def compute(self) -> Tensor:
        """(L_a, L_b) float64 CKA = hsic_ab / sqrt(hsic_aa hsic_bb) (Nguyen et al. 2021, §3.1).

        A layer whose features were constant on every example used has hsic_aa = 0 (Grams exactly zero, see
        `centered_gram`); its CKA is undefined and comes out NaN. The unbiased estimate may be slightly
        negative for unrelated layers; |CKA| <= 1 by Cauchy-Schwarz.
        """
        self._check_fed()
        return self.hsic_ab / torch.sqrt(torch.outer(self.hsic_aa, self.hsic_bb))

    def jackknife(self) -> Tensor:
        """(G, L_a, L_b) float64: the CKA estimate with each group's examples left out (``groups`` = G)."""
        self._check_fed()
        if not self.groups:
            raise RuntimeError("MinibatchCKA.jackknife: this accumulator was made without groups")
        return self.left_out_ab / torch.sqrt(self.left_out_aa[:, :, None] * self.left_out_bb[:, None, :])

    def std_error(self) -> Tensor:
        """(L_a, L_b) float64 delete-a-group jackknife standard error of `compute` (see `jackknife_std_error`)."""
        return jackknife_std_error(self.jackknife())

    def _check_fed(self) -> None:
        if self.n_examples == 0:
            raise RuntimeError(
                f"MinibatchCKA.compute: no minibatch of at least {MIN_EXAMPLES} examples was added "
                f"({self.n_skipped} examples were in smaller ones)"
            )


def _bounds(counts: list[int]) -> list[tuple[int, int]]:
    """(start, stop) of each group's slice, from the groups' sizes in order."""
    bounds, stop = [], 0
    for count in counts:
        bounds.append((stop, stop + count))
        stop += count
    return bounds


def jackknife_std_error(replicates: Tensor) -> Tensor:
    """Delete-a-group jackknife standard error from G leave-one-group-out replicates along dim 0.

    replicates: (G, ...) the statistic computed with each group left out. Returns (...):
    sqrt((G - 1) / G * sum_g (theta_g - mean theta)^2) (Efron & Stein 1981). A 95% interval is the estimate
    +- t(G - 1, 0.975) times this (`JACKKNIFE_T95` for G = `JACKKNIFE_GROUPS`).
    """
    count = replicates.shape[0]
    centred = replicates - replicates.mean(dim=0, keepdim=True)
    return torch.sqrt((count - 1) / count * centred.square().sum(dim=0))


def _squared_norms(flat: Tensor) -> Tensor:
    """(L, m) -> (L,) float64 squared row norms.

    The norm is taken in the Grams' own dtype (PyTorch's reductions sum pairwise, ~1e-8 relative in float32)
    and squared in float64: a float64 reduction over n^2 entries a layer costs 3x the all-pairs product.
    """
    return torch.linalg.vector_norm(flat, dim=1).to(torch.float64).square()


def cka_matrix(xs: Sequence[Tensor], ys: Sequence[Tensor]) -> Tensor:
    """Linear CKA between every layer in `xs` and every layer in `ys`, on one minibatch (unbiased HSIC).

    xs: L_a activations, each (n, ...) on the same n examples (flattened per example; sizes may differ).
    ys: L_b activations, each (n, ...) on the same n examples as xs, same device.
    Returns: (L_a, L_b) float64 on the inputs' device; entry [i, j] = CKA(xs[i], ys[j])
    (Kornblith et al. 2019 with HSIC_1 of Song et al. 2012). NaN for a layer constant on all n examples.
    """
    if len(xs) == 0 or len(ys) == 0:
        raise ValueError("cka_matrix needs at least one activation on each side")
    device = xs[0].device
    n = xs[0].shape[0]
    for side, acts in (("xs", xs), ("ys", ys)):
        for i, act in enumerate(acts):
            if act.shape[0] != n or act.device != device:
                raise ValueError(
                    f"cka_matrix: {side}[{i}] holds {act.shape[0]} examples on {act.device}, "
                    f"expected {n} on {device} like xs[0]"
                )
    if n < MIN_EXAMPLES:
        raise ValueError(f"cka_matrix: the unbiased HSIC needs at least {MIN_EXAMPLES} examples, got {n}")
    grams_a = _u_centred_grams(xs)
    grams_b = grams_a if ys is xs else _u_centred_grams(ys)
    cka = MinibatchCKA(len(xs), len(ys), device=device)
    cka.update(grams_a, grams_b)
    return cka.compute()


def _u_centred_grams(acts: Sequence[Tensor]) -> Tensor:
    """L activations (n, ...) -> (L, n, n) float32 U-centred Grams, one layer at a time."""
    n = acts[0].shape[0]
    grams = torch.empty(len(acts), n, n, dtype=torch.float32, device=acts[0].device)
    scratch = Int8Scratch()
    for slot, act in enumerate(acts):
        grams[slot] = u_center(centered_gram(act, scratch))
    return grams
