"""The JPEG threat model of Kang et al. (2019, "Testing robustness against unforeseen adversaries", §3).

The adversary perturbs an image's quantised JPEG coefficients. The image is read the way JPEG encodes it:
RGB -> YCbCr (JFIF), chroma subsampled 4:2:0, each plane cut into 8x8 blocks, each block's DCT divided by
the standard quantisation table (luminance for Y, chrominance for Cb and Cr). Decoding a coefficient move
(times the table, inverse DCT, nearest-neighbour chroma upsampling, YCbCr -> RGB) gives a pixel move. Kang et
al. do not round, so every stage is linear and the adversarial image is the benign image plus the decoded
move, clamped to [0, 1]. (Their code also passes the benign image itself through the 4:2:0 subsampling,
blurring its colour even when nothing moves; we do not, so a zero move gives back the benign image.)
One-channel images are luminance only (greyscale JPEG).

Units are Kang et al.'s (their code, which the paper's code reuses): pixels on the 0-255 scale, and one
variable ``v`` per quantised coefficient that moves the coefficient by ``v / 2`` quantisation steps (their
"noisy rounding" adds ``eps * (u - 1/2)`` with ``u = (1 + v / eps) / 2``). ``eps`` bounds ``||v||_2`` per
image; the l_2 variant also caps every ``|v|`` at 2, a whole quantisation step (their ``l1_max``). The
l_inf variant (Kang et al.'s JPEG-l_inf) bounds ``max |v|``: ``jpeg_search(..., norm="linf")``.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from rayrs.attacks.base import Objective, attack_mode, loss_gradient

BLOCK = 8
COEFFICIENT_CAP = 2.0  # Kang et al.'s l1_max: |v| <= 2, i.e. a coefficient moves at most one quantisation step

# ITU-T T.81 (the JPEG standard), Annex K, tables K.1 and K.2; rows are vertical frequency, as in (H, W) images.
LUMINANCE_TABLE = (
    (16, 11, 10, 16, 24, 40, 51, 61),
    (12, 12, 14, 19, 26, 58, 60, 55),
    (14, 13, 16, 24, 40, 57, 69, 56),
    (14, 17, 22, 29, 51, 87, 80, 62),
    (18, 22, 37, 56, 68, 109, 103, 77),
    (24, 35, 55, 64, 81, 104, 113, 92),
    (49, 64, 78, 87, 103, 121, 120, 101),
    (72, 92, 95, 98, 112, 100, 103, 99),
)
CHROMINANCE_TABLE = (
    (17, 18, 24, 47, 99, 99, 99, 99),
    (18, 21, 26, 66, 99, 99, 99, 99),
    (24, 26, 56, 99, 99, 99, 99, 99),
    (47, 66, 99, 99, 99, 99, 99, 99),
    *((99,) * 8,) * 4,
)
# JFIF YCbCr -> RGB, the linear part (the offsets cancel in a difference): rows R, G, B; columns Y, Cb, Cr.
YCBCR_TO_RGB = ((1.0, 0.0, 1.402), (1.0, -0.344136, -0.714136), (1.0, 1.772, 0.0))


def dct_matrix(device: torch.device | str = "cpu") -> torch.Tensor:
    """The orthonormal 8-point DCT-II, ``(8, 8)``: ``M[u, x] = a(u) / 2 * cos((2x + 1) u pi / 16)``, a(0) = 1/sqrt 2.

    A block's JPEG DCT is ``M @ block @ M.T`` and its inverse ``M.T @ coefficients @ M`` (T.81, A.3.3).
    """
    u = torch.arange(BLOCK, dtype=torch.float64).view(-1, 1)
    x = torch.arange(BLOCK, dtype=torch.float64).view(1, -1)
    matrix = torch.cos((2 * x + 1) * u * math.pi / (2 * BLOCK)) / 2
    matrix[0] /= math.sqrt(2)
    return matrix.float().to(device)


def _padded(size: int, multiple: int) -> int:
    return -(-size // multiple) * multiple


def _planes(channels: int, height: int, width: int) -> list[tuple[int, int, tuple[tuple[int, ...], ...]]]:
    """(height, width, quantisation table) of each coded plane, on a grid padded to whole blocks (MCUs)."""
    if channels == 1:
        return [(_padded(height, BLOCK), _padded(width, BLOCK), LUMINANCE_TABLE)]
    if channels == 3:
        h, w = _padded(height, 2 * BLOCK), _padded(width, 2 * BLOCK)  # 4:2:0 chroma: whole 16x16 MCUs
        return [(h, w, LUMINANCE_TABLE), (h // 2, w // 2, CHROMINANCE_TABLE), (h // 2, w // 2, CHROMINANCE_TABLE)]
    raise ValueError(
        f"the JPEG threat model needs 1-channel (greyscale) or 3-channel (RGB) images, got {channels} channels"
    )


def coefficient_count(channels: int, height: int, width: int) -> int:
    """Number of quantised coefficients (variables) of one image: Y, then Cb and Cr for RGB images."""
    return sum(h * w for h, w, _ in _planes(channels, height, width))


def decode(variables: torch.Tensor, channels: int, height: int, width: int) -> torch.Tensor:
    """The pixel move, on the [0, 1] scale, of moving the quantised coefficients by ``variables / 2``.

    variables: ``(B, coefficient_count(channels, height, width))`` float32, planes Y[, Cb, Cr] one after the
    other, each as (block row, block column, vertical frequency, horizontal frequency). Images whose sides are
    not whole blocks (8, or 16 for 4:2:0 RGB) are coded on a grid padded at the bottom and right, then cropped,
    as JPEG does. Returns ``(B, channels, height, width)`` float32.
    """
    batch = variables.shape[0]
    basis = dct_matrix(variables.device)
    planes, start = [], 0
    for plane_height, plane_width, table in _planes(channels, height, width):
        count = plane_height * plane_width
        quantised = variables[:, start : start + count].reshape(
            batch, plane_height // BLOCK, plane_width // BLOCK, BLOCK, BLOCK
        )
        start += count
        coefficients = quantised / 2 * torch.tensor(table, dtype=variables.dtype, device=variables.device)
        pixels = torch.einsum("ux,bijuv,vy->bixjy", basis, coefficients, basis)  # inverse DCT of every block
        pixels = pixels.reshape(batch, plane_height, plane_width)
        if planes and pixels.shape[-1] != planes[0].shape[-1]:  # chroma: nearest-neighbour 4:2:0 upsampling
            pixels = pixels.repeat_interleave(2, dim=1).repeat_interleave(2, dim=2)
        planes.append(pixels)
    stacked = torch.stack(planes, dim=1)  # (B, 1 or 3, padded H, padded W): Y or YCbCr
    if channels == 3:
        stacked = torch.einsum("rc,bchw->brhw", torch.tensor(YCBCR_TO_RGB, device=variables.device), stacked)
    return stacked[:, :, :height, :width] / 255.0


def project(variables: torch.Tensor, eps: float, norm: str = "l2") -> torch.Tensor:
    """Kang et al.'s projection onto the JPEG constraint set, per image (row of ``variables``).

    l2: scale into the l_2 ball of radius ``eps``, then clip every variable to ``[-2, 2]`` (which keeps the
    norm within ``eps``); linf: clip to ``[-eps, eps]``.
    """
    if norm == "l2":
        norms = variables.norm(dim=1, keepdim=True)
        variables = variables * (eps / norms.clamp_min(eps))
        return variables.clamp(-COEFFICIENT_CAP, COEFFICIENT_CAP)
    if norm == "linf":
        return variables.clamp(-eps, eps)
    raise ValueError(f"JPEG norm must be 'l2' or 'linf', got {norm!r}")


def jpeg_search(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    eps: float,
    steps: int,
    step_size: float,
    random_start: bool = True,
    generator: torch.Generator | None = None,
    bn_eval: bool = True,
    objective: Objective | None = None,
    norm: str = "l2",
) -> tuple[torch.Tensor, torch.Tensor]:
    """PGD on the quantised JPEG coefficients; returns ``(adversarial, variables)``.

    images: (B, C, H, W) float in [0, 1] with C = 1 or 3; labels: (B,) int64 true labels. ``eps`` and
    ``step_size`` in Kang et al.'s coefficient units (module docstring); l2 steps move ``step_size`` along the
    normalised gradient, linf steps ``step_size`` along its sign. The random start is uniform in the ball.
    Returns adversarial (B, C, H, W) float32 in [0, 1] and variables (B, coefficient_count) float32, with
    ``adversarial == clamp(images + decode(variables), 0, 1)``. ``eps == 0`` or ``steps == 0``: the benign images.
    """
    images = images.float()
    batch, channels, height, width = images.shape
    count = coefficient_count(channels, height, width)
    if norm not in ("l2", "linf"):
        raise ValueError(f"JPEG norm must be 'l2' or 'linf', got {norm!r}")
    variables = torch.zeros(batch, count, device=images.device)
    if eps == 0 or steps == 0:
        return images.clone(), variables

    def render(v: torch.Tensor) -> torch.Tensor:
        return (images + decode(v, channels, height, width)).clamp(0, 1)

    if random_start and norm == "l2":
        direction = torch.randn(batch, count, generator=generator, device=images.device)
        radius = torch.rand(batch, 1, generator=generator, device=images.device) ** (1 / count)  # uniform in the ball
        variables = project(direction / direction.norm(dim=1, keepdim=True).clamp_min(1e-12) * radius * eps, eps, norm)
    elif random_start:
        variables = (torch.rand(batch, count, generator=generator, device=images.device) * 2 - 1) * eps
    with attack_mode(model, bn_eval):
        for _ in range(steps):
            gradient = loss_gradient(model, render, variables, labels, objective)
            if norm == "l2":
                direction = gradient / gradient.norm(dim=1, keepdim=True).clamp_min(1e-12)
            else:
                direction = gradient.sign()
            variables = project(variables.detach() + step_size * direction, eps, norm)
    with torch.no_grad(), torch.autocast(images.device.type, enabled=False):
        return render(variables), variables


def jpeg_l2(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    eps: float,
    steps: int,
    step_size: float,
    random_start: bool = True,
    generator: torch.Generator | None = None,
    bn_eval: bool = True,
    objective: Objective | None = None,
) -> torch.Tensor:
    """JPEG adversarial images, l_2 variant (the paper's code): ``||v||_2 <= eps``, ``|v| <= 2``.

    images: (B, C, H, W) float in [0, 1], C = 1 or 3; labels: (B,) int64. ``objective`` (default: summed
    cross-entropy) is what the attack maximises. Returns (B, C, H, W) float32.
    """
    return jpeg_search(model, images, labels, eps=eps, steps=steps, step_size=step_size, random_start=random_start,
                       generator=generator, bn_eval=bn_eval, objective=objective, norm="l2")[0]
