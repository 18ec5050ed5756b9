"""The Snow threat model of Kang et al. (2019, "Testing robustness against unforeseen adversaries", §3).

Snowflakes sit on seven interleaved grids of flake centres, 4 px apart (offsets (0, 0..3) and (1..3, 0)
modulo 4). Each grid has its own streak: a short anti-aliased line through the centre of a 13x13 kernel,
random direction and width, lightly Gaussian-blurred, like a flake in motion blur; the seven streaks of one
image lean the same way (one random mirror per image). A flake's brightness is its intensity to the fourth
power; the snow layer is the sum of all streaks. The image is first whitened a little, as in snowy weather
(ImageNet-C's snow, which Kang et al. reuse), then the snow layer times ``eps`` is added; clamp to [0, 1].

The variables are the flake intensities, optimised by sign-gradient steps in the l_inf box ``[0, 1]`` under a
budget: in every region of 8x8 flake cells (32x32 px, the whole image on CIFAR-10) each grid's mean intensity
is at most ``budget`` (0.15 in the paper's code; Kang et al. use 0.2), so the snow stays sparse. After each
step we project onto that set exactly (Euclidean projection); Kang et al. instead rescale an over-budget
region, which with sign steps drives every flake towards the same dim intensity (brightness is intensity to
the fourth) and left the attack weaker than random snow in our digits runs.

Units are Kang et al.'s: ``eps`` is the brightness of the snow layer on the [0, 1] pixel scale (a flake of
intensity 1 adds ``eps`` times its streak, whose peak is 0.75 to 1); ``step_size`` is on the intensities'
``[0, 1]`` scale.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from rayrs.attacks.base import Objective, attack_mode, loss_gradient

BUDGET = 0.15  # mean flake intensity per grid and region (the paper's code, configs_cifar.yml `budget`)
SPACING = 4  # px between the flake centres of one grid
OFFSETS = ((0, 0), (0, 1), (0, 2), (0, 3), (1, 0), (2, 0), (3, 0))  # the seven grids, (row, column) mod 4
REGION = 8  # the budget holds per region of REGION x REGION flake cells
KERNEL_SIZE = 13  # streak kernel side, px (Kang et al.'s snow_length_bound)
REACH_RANGE = (2, 6)  # a streak reaches 2..6 px from the centre along each axis, on both sides
WIDTHS, WIDTH_ODDS = (1.0, 3.0, 5.0), (0.6, 0.3, 0.1)  # streak width, px, and its probability
BLUR_RANGE = (0.41, 0.6)  # sigma, px, of the 3x3 Gaussian blur of a streak
DISCOLOUR = 0.25  # how far the image is pulled towards max(image, 1.5 luminance + 0.5)
FLOOR = 1e-9  # the smallest intensity: a flake at 0 would have no gradient (4 i^3)
LUMA = (0.2126, 0.7152, 0.0722)  # Rec. 709 luminance weights of RGB


def streak_kernels(batch: int, generator: torch.Generator | None, device: torch.device | str) -> torch.Tensor:
    """Seven random streak kernels per image, ``(batch, 7, 13, 13)`` float32, values in [0, 1].

    A streak is the segment from ``-(dy, dx)`` to ``(dy, dx)`` through the kernel centre, dy and dx uniform in
    2..6 px, mirrored left-right for a random half of the images; a pixel at distance d from it gets
    ``clamp(1 + width / 4 - d, 0, 1)``; then a 3x3 Gaussian blur.
    """
    shape = (batch, len(OFFSETS), 1, 1)
    dy, dx = (torch.randint(REACH_RANGE[0], REACH_RANGE[1] + 1, shape, generator=generator, device=device).float()
              for _ in range(2))
    mirror = torch.rand(batch, 1, 1, 1, generator=generator, device=device) < 0.5
    dx = torch.where(mirror, -dx, dx)
    pick = torch.rand(shape, generator=generator, device=device)
    cumulative = torch.tensor(WIDTH_ODDS, device=device).cumsum(0)
    width = torch.tensor(WIDTHS, device=device)[(pick.unsqueeze(-1) > cumulative).sum(-1).clamp_max(len(WIDTHS) - 1)]
    half = KERNEL_SIZE // 2
    offsets = torch.arange(-half, half + 1, device=device, dtype=torch.float32)
    y, x = offsets.view(1, 1, -1, 1), offsets.view(1, 1, 1, -1)
    along = ((y * dy + x * dx) / (dy**2 + dx**2)).clamp(-1, 1)  # nearest point of the segment, as a fraction
    distance = torch.sqrt((y - along * dy) ** 2 + (x - along * dx) ** 2)
    streaks = (1 + width / 4 - distance).clamp(0, 1)
    sigma = BLUR_RANGE[0] + (BLUR_RANGE[1] - BLUR_RANGE[0]) * torch.rand(shape, generator=generator, device=device)
    taps = torch.arange(-1, 2, device=device, dtype=torch.float32)
    blur = torch.exp(-(taps.view(1, 1, -1, 1) ** 2 + taps.view(1, 1, 1, -1) ** 2) / (2 * sigma**2))
    blur = (blur / blur.sum((-2, -1), keepdim=True)).view(-1, 1, 3, 3)
    streaks = F.conv2d(streaks.view(1, -1, KERNEL_SIZE, KERNEL_SIZE), blur, padding=1, groups=blur.shape[0])
    return streaks.view(batch, len(OFFSETS), KERNEL_SIZE, KERNEL_SIZE)


def flake_grid_shape(height: int, width: int) -> tuple[int, int]:
    """Flake cells per grid: one per 4x4 px."""
    return math.ceil(height / SPACING), math.ceil(width / SPACING)


def snow_layer(intensities: torch.Tensor, kernels: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """The snow layer ``(B, 1, height, width)``: every flake's streak times its intensity ** 4, summed.

    intensities: (B, 7, ceil(height / 4), ceil(width / 4)); kernels: (B, 7, 13, 13), from `streak_kernels`.
    Written as one strided transposed convolution per image (groups = B) with each grid's streak placed at its
    offset in a 16x16 kernel, which also sums the seven grids.
    """
    batch, grids, rows, columns = intensities.shape
    placed = torch.stack(
        [F.pad(kernels[:, grid], (column, SPACING - 1 - column, row, SPACING - 1 - row))
         for grid, (row, column) in enumerate(OFFSETS)], dim=1,
    )  # (B, 7, 16, 16)
    side = KERNEL_SIZE + SPACING - 1
    layer = F.conv_transpose2d(intensities.pow(4).reshape(1, batch * grids, rows, columns),
                               placed.reshape(batch * grids, 1, side, side), stride=SPACING, groups=batch)
    half = KERNEL_SIZE // 2  # a streak is centred on its flake
    return layer[..., half : half + height, half : half + width].reshape(batch, 1, height, width)


def whiten(images: torch.Tensor) -> torch.Tensor:
    """The snowy-weather whitening, ``(B, C, H, W)``: ``0.75 x + 0.25 max(x, 1.5 luminance + 0.5)``."""
    if images.shape[1] == 3:
        luminance = torch.einsum("c,bchw->bhw", torch.tensor(LUMA, device=images.device), images).unsqueeze(1)
    else:
        luminance = images.mean(1, keepdim=True)
    return (1 - DISCOLOUR) * images + DISCOLOUR * torch.maximum(images, 1.5 * luminance + 0.5)


def region_means(intensities: torch.Tensor) -> torch.Tensor:
    """Mean intensity of each grid in each region of 8x8 flake cells (fewer at the edges, all of a small
    image): ``(B, 7, rows, columns) -> (B, 7, region rows, region columns)``."""
    rows, columns = intensities.shape[-2:]
    return F.avg_pool2d(intensities, (min(REGION, rows), min(REGION, columns)), ceil_mode=True)


def project(intensities: torch.Tensor, budget: float = BUDGET, iterations: int = 30) -> torch.Tensor:
    """The Euclidean projection onto the constraint set, ``(B, 7, rows, columns)``: intensities in [0, 1]
    (then floored at 1e-9) with every region mean at most ``budget``.

    Where a region's clipped mean is over budget, a shift ``tau`` is subtracted from all its intensities
    before clipping, ``clip(v - tau, 0, 1)``, with tau found by bisection so that the mean is the budget.
    """
    rows, columns = intensities.shape[-2:]
    region = (min(REGION, rows), min(REGION, columns))

    def spread(per_region: torch.Tensor) -> torch.Tensor:
        return per_region.repeat_interleave(region[0], 2).repeat_interleave(region[1], 3)[..., :rows, :columns]

    low = torch.zeros_like(region_means(intensities))
    high = torch.ones_like(low) * intensities.detach().abs().amax().clamp_min(1.0)  # tau = high clips all to 0
    for _ in range(iterations):
        middle = (low + high) / 2
        over = region_means((intensities - spread(middle)).clamp(0, 1)) > budget
        low, high = torch.where(over, middle, low), torch.where(over, high, middle)
    return (intensities - spread(high)).clamp(FLOOR, 1)


def snow_search(
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
    budget: float = BUDGET,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sign-gradient ascent on the flake intensities; returns ``(adversarial, intensities)``.

    images: (B, C, H, W) float in [0, 1]; labels: (B,) int64 true labels. Kernels come from ``generator``, and
    so does the start: intensities ``exp(-U / budget)``, U uniform in [0, 1] (Kang et al.; mean about
    ``budget``), or ``budget`` everywhere without ``random_start``; every step is projected (`project`).
    Returns adversarial (B, C, H, W) float32 in [0, 1] and intensities (B, 7, ceil(H / 4), ceil(W / 4))
    float32, with ``adversarial == clamp(whiten(images) + eps * snow_layer(intensities, kernels), 0, 1)`` (the
    same snow on every channel). ``eps == 0`` or ``steps == 0``: the benign images.
    """
    images = images.float()
    batch, _, height, width = images.shape
    device = images.device
    intensities = torch.zeros(batch, len(OFFSETS), *flake_grid_shape(height, width), device=device)
    if eps == 0 or steps == 0:
        return images.clone(), intensities
    with torch.autocast(device.type, enabled=False):  # float32 even under bf16 autocast
        kernels = streak_kernels(batch, generator, device)
        whitened = whiten(images)

    def render(v: torch.Tensor) -> torch.Tensor:
        return (whitened + eps * snow_layer(v, kernels, height, width)).clamp(0, 1)

    if random_start:
        uniform = torch.rand(intensities.shape, generator=generator, device=device)
        intensities = project(torch.exp(-uniform / budget), budget)
    else:
        intensities = torch.full_like(intensities, budget)
    with attack_mode(model, bn_eval):
        for _ in range(steps):
            gradient = loss_gradient(model, render, intensities, labels, objective)
            intensities = project(intensities.detach() + step_size * gradient.sign(), budget)
    with torch.no_grad(), torch.autocast(device.type, enabled=False):
        return render(intensities), intensities


def snow_attack(
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
    """Snow adversarial images (Kang et al. 2019) with the paper's flake budget 0.15.

    images: (B, C, H, W) float in [0, 1]; labels: (B,) int64. ``objective`` (default: summed cross-entropy)
    is what the attack maximises. Returns (B, C, H, W) float32.
    """
    return snow_search(model, images, labels, eps=eps, steps=steps, step_size=step_size, random_start=random_start,
                       generator=generator, bn_eval=bn_eval, objective=objective)[0]
