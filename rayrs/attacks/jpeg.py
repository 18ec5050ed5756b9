"""The JPEG threat model of Kang et al. (2019, "Testing robustness against unforeseen adversaries", §3).

The adversary perturbs an image's quantised JPEG coefficients. The image is read the way JPEG encodes it:
RGB -> YCbCr (JFIF), chroma subsampled 4:2:0, each plane cut into 8x8 blocks, each block's DCT divided by
the standard quantisation table (luminance for Y, chrominance for Cb and Cr). Decoding a coefficient move
(times the table, inverse DCT, nearest-neighbour chroma upsampling, YCbCr -> RGB) gives a pixel move. Kang et
al. do not round, so every stage is linear: the adversarial image is a base image plus the decoded move, clamped
to [0, 1].

Units are Kang et al.'s (their code, which the paper's code reuses): pixels on the 0-255 scale, and one
variable ``v`` per quantised coefficient that moves the coefficient by ``v / 2`` quantisation steps (their
"noisy rounding" adds ``eps * (u - 1/2)`` with ``u = (1 + v / eps) / 2``). ``eps`` bounds ``||v||_2`` per
image; the l_2 variant also caps every ``|v|`` at 2, a whole quantisation step (their ``l1_max``). The
l_inf variant (Kang et al.'s JPEG-l_inf) bounds ``max |v|``: ``jpeg_search(..., norm="linf")``.

Two variants of the search (`VARIANTS`), each a threat model of its own:

- ``paper_code`` (threat model ``jpeg``): as the paper's code (``attacks/jpeg.py``, ``JPEGAttack``) runs it,
  accidents included, since they produced the paper's numbers (golden values: tests/test_paper_code_jpeg_pgd.py).
  (1) The base image is the benign image after the 4:2:0 round trip: its colour is blurred over 2x2 pixels even
  where nothing moves. (2) The first gradient is taken at ``eps`` times the start (the reference's first forward
  pass renders its variables without dividing them by ``eps``, every later one divides). (3) The random start
  (uniform in the l_2 ball of radius eps) is not clipped to the per-coefficient cap of 2; every step's projection
  is. Steps, projection and output are otherwise the reference's: ``step_size`` along the l_2-normalised gradient,
  scaled into the eps ball, clipped to [-2, 2].
- ``unblurred`` (threat model ``jpeg_unblurred``): rayrs's reading of Kang et al.'s definition: the base is the
  unmodified benign image (a zero move gives back the benign image, so the threat model contains the benign
  point), the first gradient is taken at the start itself, and the start is projected like every step.

Where the reference cannot run, both variants choose: one-channel images are luminance only (greyscale JPEG: no
chroma, so nothing to blur); sides that are not whole MCUs (16 for 4:2:0 RGB, 8 for grey; the reference raises)
are coded on a grid padded at the bottom and right and cropped, as JPEG encoders do; an exactly zero gradient
makes no move (the reference divides by its norm and writes NaN).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
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
# JFIF RGB -> YCbCr, the linear part (the offsets cancel in a round trip): rows Y, Cb, Cr; columns R, G, B. It and
# YCBCR_TO_RGB are the standard's rounded coefficients, inverse to about 1e-6; the reference uses the same pair.
RGB_TO_YCBCR = ((0.299, 0.587, 0.114), (-0.168736, -0.331264, 0.5), (0.5, -0.418688, -0.081312))
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


def chroma_subsampled(images: torch.Tensor) -> torch.Tensor:
    """The benign image after JPEG's 4:2:0 round trip with no coefficient moved: the ``paper_code`` base image.

    RGB -> YCbCr (JFIF), Cb and Cr averaged over each 2x2 pixel square and repeated back over it, YCbCr -> RGB;
    luminance is untouched (the DCT and its inverse cancel). images: ``(B, 3, H, W)`` float32 in [0, 1]; returns
    the same shape, not clamped (the render clamps after adding the move). Odd sides repeat their last row or
    column to the even size, then crop. One-channel images (greyscale JPEG, no chroma) come back unchanged.
    """
    if images.shape[1] == 1:
        return images
    height, width = images.shape[-2:]
    forward = torch.tensor(RGB_TO_YCBCR, device=images.device)
    ycbcr = torch.einsum("cr,brhw->bchw", forward, images)
    chroma = F.pad(ycbcr[:, 1:], (0, width % 2, 0, height % 2), mode="replicate")
    chroma = F.avg_pool2d(chroma, 2).repeat_interleave(2, dim=2).repeat_interleave(2, dim=3)[:, :, :height, :width]
    backward = torch.tensor(YCBCR_TO_RGB, device=images.device)
    return torch.einsum("rc,bchw->brhw", backward, torch.cat([ycbcr[:, :1], chroma], dim=1))


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


@dataclass(frozen=True)
class JpegVariant:
    """Where the two JPEG searches differ (module docstring): the paper's code, or rayrs's reading of Kang et al."""

    name: str
    blurs_benign_chroma: bool  # the base image is the benign image after the 4:2:0 round trip
    first_gradient_at_eps_times_start: bool  # the reference's first forward pass skips its division by eps
    projects_start: bool  # the random start is projected onto the constraint set like every step


VARIANTS: dict[str, JpegVariant] = {
    variant.name: variant
    for variant in (
        JpegVariant("paper_code", blurs_benign_chroma=True, first_gradient_at_eps_times_start=True,
                    projects_start=False),
        JpegVariant("unblurred", blurs_benign_chroma=False, first_gradient_at_eps_times_start=False,
                    projects_start=True),
    )
}


@dataclass(frozen=True)
class JpegDraws:
    """The random numbers of one JPEG search, drawn up front so that a test can hand in another run's.

    start: ``(B, coefficient_count)`` float32, a point of the norm's unit ball (l2: uniform in the l_2 ball, a
        Gaussian direction times ``u ** (1 / count)``; linf: uniform in ``[-1, 1]``); the search starts at
        ``eps * start``. Variables in `decode`'s layout.
    """

    start: torch.Tensor


def draw_jpeg(batch: int, count: int, norm: str, generator: torch.Generator | None,
              device: torch.device) -> JpegDraws:
    """A JPEG search's random start for ``batch`` images of ``count`` coefficients each, from ``generator``."""
    if norm == "l2":
        direction = torch.randn(batch, count, generator=generator, device=device)
        radius = torch.rand(batch, 1, generator=generator, device=device) ** (1 / count)  # uniform in the ball
        return JpegDraws(start=direction / direction.norm(dim=1, keepdim=True).clamp_min(1e-12) * radius)
    return JpegDraws(start=torch.rand(batch, count, generator=generator, device=device) * 2 - 1)


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
    variant: str = "paper_code",
    draws: JpegDraws | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """PGD on the quantised JPEG coefficients; returns ``(adversarial, variables)``.

    images: (B, C, H, W) float in [0, 1] with C = 1 or 3; labels: (B,) int64 true labels. ``eps`` and
    ``step_size`` in Kang et al.'s coefficient units (module docstring); l2 steps move ``step_size`` along the
    normalised gradient, linf steps ``step_size`` along its sign. ``variant``: a key of `VARIANTS`. ``draws``:
    the random start (default: drawn from ``generator``). Returns adversarial (B, C, H, W) float32 in [0, 1] and
    variables (B, coefficient_count) float32, with ``adversarial == clamp(base + decode(variables), 0, 1)``, base
    the benign images (``unblurred``) or ``chroma_subsampled(images)`` (``paper_code``). ``eps == 0`` or
    ``steps == 0``: nothing moves, and the adversarial images are the base clamped.
    """
    images = images.float()
    batch, channels, height, width = images.shape
    count = coefficient_count(channels, height, width)
    if norm not in ("l2", "linf"):
        raise ValueError(f"JPEG norm must be 'l2' or 'linf', got {norm!r}")
    if variant not in VARIANTS:
        raise ValueError(f"JPEG variant must be one of {sorted(VARIANTS)}, got {variant!r}")
    rules = VARIANTS[variant]
    with torch.autocast(images.device.type, enabled=False):  # the base stays float32 under bf16 autocast
        base = chroma_subsampled(images) if rules.blurs_benign_chroma else images

    def render(v: torch.Tensor) -> torch.Tensor:
        return (base + decode(v, channels, height, width)).clamp(0, 1)

    variables = torch.zeros(batch, count, device=images.device)
    if eps == 0 or steps == 0:
        return base.clamp(0, 1), variables
    if random_start:
        variables = eps * (draws or draw_jpeg(batch, count, norm, generator, images.device)).start
        if rules.projects_start:
            variables = project(variables, eps, norm)
    with attack_mode(model, bn_eval):
        for step in range(steps):
            scale = eps if step == 0 and rules.first_gradient_at_eps_times_start else 1.0
            gradient = loss_gradient(model, lambda v: render(scale * v), variables, labels, objective)
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
    """JPEG adversarial images, l_2 variant, as the paper's code runs it (``paper_code``): ``||v||_2 <= eps``,
    ``|v| <= 2`` after every step, the benign colour 4:2:0-blurred.

    images: (B, C, H, W) float in [0, 1], C = 1 or 3; labels: (B,) int64. ``objective`` (default: summed
    cross-entropy) is what the attack maximises. Returns (B, C, H, W) float32.
    """
    return jpeg_search(model, images, labels, eps=eps, steps=steps, step_size=step_size, random_start=random_start,
                       generator=generator, bn_eval=bn_eval, objective=objective, norm="l2", variant="paper_code")[0]


def jpeg_unblurred_l2(
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
    """JPEG adversarial images, l_2 variant, ``unblurred``: the decoded move added to the unmodified benign image.

    Same constraint set and units as `jpeg_l2`; it differs from the paper's code where the module docstring says
    (no chroma blur of the benign image, first gradient at the start, start projected). Returns (B, C, H, W)
    float32.
    """
    return jpeg_search(model, images, labels, eps=eps, steps=steps, step_size=step_size, random_start=random_start,
                       generator=generator, bn_eval=bn_eval, objective=objective, norm="l2", variant="unblurred")[0]
