"""Orthogonal Procrustes distance and SVCCA (paper App. B.1), the measures compared with CKA.

Sources:
  - Procrustes: Ding, Denain & Steinhardt 2021, "Grounding Representation Similarity through Statistical
    Testing", §2: with A, B the centred representations scaled to unit Frobenius norm,
        d_Proc(A, B) = min_R ||A - B R||_F^2 (R orthogonal) = ||A||_F^2 + ||B||_F^2 - 2 ||A^T B||_* = 2 - 2 ||A^T B||_*,
    a distance in [0, 2]: 0 when the layers agree up to a rotation, shift and scale.
  - SVCCA: Raghu, Gilmer, Yosinski & Sohl-Dickstein 2017, "SVCCA: Singular Vector Canonical Correlation
    Analysis ...", §2: reduce each layer to its top singular directions, run CCA between the two reduced
    layers, report the mean canonical correlation, a similarity in [0, 1]. How many directions: ``svcca`` keeps
    the top 20 of each layer, as the paper's code does (``similarity_metrics/metrics.py: svcca(acts1, acts2,
    n_dims=20)``, after centring each neuron; its App. B.1 numbers came from it); ``svcca_variance`` keeps those
    that explain 99% of the variance (sum of squared singular values), Raghu et al.'s choice. CCA
    correlations of centred data are the singular values of Q_a^T Q_b, with Q an orthonormal basis of each
    side's (reduced) column space (Björck & Golub 1973).

Both measures need activations, not the U-centred Grams of CKA, but only through the centred Gram
Xc Xc^T: with Xc = U S V^T, the principal-component scores Z = U S (n x n) satisfy Z = Xc V, and
||Xa^T Xb||_* = ||Za^T Zb||_* (V has orthonormal columns spanning Xc's row space), while the top singular
directions of Xc are the leading columns of Z. So a layer of any width is reduced, inside its forward hook,
to Z: n^2 float64 numbers (8 MiB at n = 1024), formed from the float64 centred Gram by `torch.linalg.eigh`.
Both are computed on one minibatch of at most `MEASURE_EXAMPLES` probe inputs (the first ones of the
probe), since the Gram must hold every compared example at once.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from rayrs.similarity.grams import pool_features

__all__ = [
    "MEASURES",
    "MEASURE_EXAMPLES",
    "SVCCA_DIMS",
    "SVCCA_KEEP",
    "layer_sample_spaces",
    "procrustes",
    "procrustes_distance",
    "sample_space",
    "svcca",
    "svcca_similarity",
    "svcca_variance",
    "svcca_variance_similarity",
]

# Procrustes and SVCCA use one minibatch of this many probe inputs at most (the paper's CKA minibatch size).
MEASURE_EXAMPLES = 1024
# `svcca` keeps each layer's top singular directions, this many: the paper's code (metrics.svcca's n_dims).
SVCCA_DIMS = 20
# `svcca_variance` keeps the singular directions that explain this fraction of a layer's variance (Raghu et al.).
SVCCA_KEEP = 0.99


def sample_space(x: Tensor) -> Tensor:
    """A layer's centred principal-component scores, the only part of it Procrustes and SVCCA depend on.

    x: (n, ...) activations of n examples, flattened per example to p features.
    Returns: (n, n) float64 Z with Z Z^T = Xc Xc^T (Xc: x minus its mean over the examples), columns in
    decreasing variance, Z[:, j] = sqrt(lambda_j) u_j for the eigenpairs of Xc Xc^T (columns past rank(Xc),
    i.e. with lambda_j below n * eps * lambda_max, are zero). Formed from the float64 Gram: float32 would leave
    eigenvalues of ~1e-7 lambda_max, whose square roots (~3e-4) summed over a thousand directions would blur
    the nuclear norm.
    """
    n = x.shape[0]
    features = x.reshape(n, -1).to(torch.float64)
    features = features - features.mean(dim=0, keepdim=True)
    values, vectors = torch.linalg.eigh(features @ features.T)  # ascending
    values, vectors = values.flip(-1), vectors.flip(-1)
    # Below this the eigenvalue is rounding noise of a rank-deficient Gram (a layer narrower than the batch, or
    # the centring's null direction); its square root, ~1e-8 of the largest, would add up in a nuclear norm.
    noise = values[0] * n * torch.finfo(torch.float64).eps
    return vectors * torch.where(values > noise, values, 0).sqrt()


def procrustes(za: Tensor, zb: Tensor, same_layer: bool = False) -> Tensor:
    """Orthogonal Procrustes distance between every pair of layers (Ding et al. 2021), from sample spaces.

    za: (L_a, n, r) `sample_space` of each layer on side a; zb: (L_b, n, r) on the same n examples.
    Returns: (L_a, L_b) float64 distances 2 - 2 ||A^T B||_* in [0, 2] (A, B unit-Frobenius), or with
    ``same_layer`` (L_a == L_b) the (L,) distances of layer i with layer i. NaN for a constant layer.
    """
    norms_a = torch.linalg.matrix_norm(za)  # (L_a,) Frobenius: sqrt of the total variance
    norms_b = torch.linalg.matrix_norm(zb)
    if same_layer:
        nuclear = torch.linalg.svdvals(za.mT @ zb).sum(-1)
        return 2 - 2 * nuclear / (norms_a * norms_b)
    nuclear = torch.stack([torch.linalg.svdvals(z.T @ zb).sum(-1) for z in za])  # one (L_b, r, r) batch per row
    return 2 - 2 * nuclear / torch.outer(norms_a, norms_b)


def svcca(za: Tensor, zb: Tensor, same_layer: bool = False, dims: int = SVCCA_DIMS) -> Tensor:
    """Mean SVCCA correlation between every pair of layers, the paper code's way: top ``dims`` directions.

    za: (L_a, n, r), zb: (L_b, n, r) as in `procrustes`. Each layer keeps its ``dims`` leading singular
    directions (all of them when it has fewer: a layer narrower than ``dims``, or of lower rank on these
    examples); the value is the mean of the min(k_a, k_b) canonical correlations, in [0, 1]. Returns
    (L_a, L_b) float64, or (L,) with ``same_layer``. NaN for a constant layer.

    Where both layers have at least ``dims`` directions this is the reference's ``metrics.svcca`` (golden values
    in tests/test_paper_code_measures.py). It has no answer for fewer (NumPy cannot broadcast its
    ``s[:n_dims] * np.eye(n_dims)``), and at a rank below ``dims`` it averages in zeros for the missing
    directions; rayrs averages the correlations of the directions that exist.
    """
    return _svcca(za, zb, same_layer, lambda z: _top_directions(z, dims))


def svcca_variance(za: Tensor, zb: Tensor, same_layer: bool = False, keep: float = SVCCA_KEEP) -> Tensor:
    """Mean SVCCA correlation between every pair of layers, Raghu et al.'s way: directions of ``keep`` variance.

    As `svcca`, but each layer keeps its leading directions explaining ``keep`` of its variance (k_a, k_b of
    them), however many that is. Returns (L_a, L_b) float64, or (L,) with ``same_layer``.
    """
    return _svcca(za, zb, same_layer, lambda z: _variance_directions(z, keep))


def _svcca(za: Tensor, zb: Tensor, same_layer: bool, directions: Callable[[Tensor], Tensor | None]) -> Tensor:
    bases_a = [directions(z) for z in za]
    bases_b = bases_a if zb is za else [directions(z) for z in zb]
    if same_layer:
        return torch.stack([_mean_correlation(qa, qb, za.device) for qa, qb in zip(bases_a, bases_b, strict=True)])
    return torch.stack([torch.stack([_mean_correlation(qa, qb, za.device) for qb in bases_b]) for qa in bases_a])


def _top_directions(z: Tensor, dims: int) -> Tensor | None:
    """(n, r) sample space -> (n, k) orthonormal basis of its k = min(dims, rank) leading directions."""
    variances = z.square().sum(dim=0)  # the eigenvalues, decreasing
    if variances.sum() <= 0:
        return None
    k = min(dims, int((variances > 0).sum().item()))
    return z[:, :k] / variances[:k].sqrt()


def _variance_directions(z: Tensor, keep: float) -> Tensor | None:
    """(n, r) sample space -> (n, k) orthonormal basis of the directions explaining ``keep`` of the variance."""
    variances = z.square().sum(dim=0)  # the eigenvalues, decreasing
    total = variances.sum()
    if total <= 0:
        return None
    k = int((variances.cumsum(0) < keep * total).sum().item()) + 1
    k = min(k, int((variances > 0).sum().item()))
    return z[:, :k] / variances[:k].sqrt()


def _mean_correlation(qa: Tensor | None, qb: Tensor | None, device: torch.device) -> Tensor:
    if qa is None or qb is None:
        return torch.tensor(float("nan"), dtype=torch.float64, device=device)
    return torch.linalg.svdvals(qa.T @ qb).clamp(max=1).mean()


@dataclass(frozen=True)
class Measure:
    name: str
    description: str
    compute: Callable[..., Tensor]  # (za, zb, same_layer) -> (L_a, L_b) or (L,)
    # Raised when what the name computes changes; a revision above 1 enters the id of the measure's comparison
    # jobs (rayrs.similarity.jobs), so a file written under an older definition is never read as the new one.
    revision: int = 1


MEASURES: dict[str, Measure] = {
    "procrustes": Measure(
        "procrustes", "orthogonal Procrustes distance in [0, 2], 0 = same (Ding et al. 2021)", procrustes
    ),
    "svcca": Measure(
        "svcca", "mean SVCCA correlation of each layer's top 20 directions, in [0, 1], 1 = same (the paper's code)",
        svcca,
        revision=2,  # 1: the directions of 99% of the variance, now `svcca_variance`
    ),
    "svcca_variance": Measure(
        "svcca_variance",
        "mean SVCCA correlation of the directions of 99% of each layer's variance, in [0, 1] (Raghu et al. 2017)",
        svcca_variance,
    ),
}


# -- for a notebook: two activation matrices in, one number out ------------------------------------------------
def procrustes_distance(x: Tensor, y: Tensor) -> float:
    """Procrustes distance between activations x (n, ...) and y (n, ...) of the same n examples."""
    return procrustes(sample_space(x)[None], sample_space(y)[None])[0, 0].item()


def svcca_similarity(x: Tensor, y: Tensor, dims: int = SVCCA_DIMS) -> float:
    """`svcca` (top ``dims`` directions) between activations x (n, ...) and y (n, ...) of the same n examples."""
    return svcca(sample_space(x)[None], sample_space(y)[None], dims=dims)[0, 0].item()


def svcca_variance_similarity(x: Tensor, y: Tensor, keep: float = SVCCA_KEEP) -> float:
    """`svcca_variance` (directions of ``keep`` variance) between activations x (n, ...) and y (n, ...)."""
    return svcca_variance(sample_space(x)[None], sample_space(y)[None], keep=keep)[0, 0].item()


# -- in a forward pass: each layer reduced to its sample space the moment it returns -------------------------
def layer_sample_spaces(
    model: nn.Module, layers: Sequence, inputs: Tensor, pool: bool = False
) -> tuple[Tensor, Tensor]:
    """`sample_space` of every layer in ``layers`` for one batch, and the model's output.

    layers: `rayrs.models.Layer`-like (index 0..L-1, module_name, call); inputs: (n, ...) with n examples;
    pool: spatially average 4-D outputs first (`rayrs.similarity.grams.pool_features`, ``cka.pool_features``).
    Returns ((L, n, n) float64 on the model's device, the model's output). Each layer is reduced inside its
    forward hook (so an in-place op after it cannot change what is recorded, and no activation is kept); the
    forward pass runs under no_grad with the model as it is (callers put it in eval mode).
    """
    routes: dict[str, dict[int, int]] = {}
    for layer in layers:
        routes.setdefault(layer.module_name, {})[layer.call] = layer.index
    calls = dict.fromkeys(routes, 0)
    spaces: list[Tensor | None] = [None] * len(layers)

    def hook_for(name: str):
        def hook(module: nn.Module, args: object, output: Tensor) -> None:
            slot = routes[name].get(calls[name])
            calls[name] += 1
            if slot is not None:
                spaces[slot] = sample_space(pool_features(output.detach()) if pool else output.detach())

        return hook

    handles = [model.get_submodule(name).register_forward_hook(hook_for(name)) for name in routes]
    try:
        with torch.no_grad():
            output = model(inputs)
    finally:
        for handle in handles:
            handle.remove()
    missing = [layer.name for layer, space in zip(sorted(layers, key=lambda l: l.index), spaces) if space is None]
    if missing:
        raise RuntimeError(f"layer_sample_spaces: layers {missing} did not run in the forward pass")
    return torch.stack(spaces), output
