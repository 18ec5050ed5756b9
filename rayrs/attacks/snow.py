"""The Snow threat model of Kang et al. (2019, "Testing robustness against unforeseen adversaries", §3), as the
paper's code runs it (its ``attacks/snow.py``, a copy of Kang et al.'s advex-uar ``SnowAttack``).

Snowflakes sit on seven interleaved grids of flake cells, 4 px apart: grids 0-3 at rows 0 mod 4 and columns
0..3 mod 4, grids 4-6 at rows 1..3 mod 4 and columns 0 mod 4. Each grid has its own streak kernel, like a flake in
motion blur (`streak_kernels`); one set of seven is drawn for the whole batch. A flake's brightness is its
intensity to the fourth power, and the snow layer is every flake's brightness cross-correlated with its grid's
kernel, summed. The image is first whitened a little, as in snowy weather (ImageNet-C's snow, which Kang et al.
reuse: Rec. 709 luminance), then ``eps`` times the snow layer is added; clamp to [0, 1].

The variables are the flake intensities, moved by sign-gradient steps. What the paper's code does, and therefore
what ``snow`` does:

- The start is ``exp(-U / budget)``, U uniform in [0, 1] (mean about ``budget``), neither clamped nor rescaled.
- After each step but the last, the next forward pass is rendered from the raw stepped intensities (which may be
  negative or above 1); only then are they clamped to [1e-9, 1] and, in every region of 8x8 flake cells (32x32 px)
  where a grid's mean intensity is over ``budget`` (0.15 in the paper's code), multiplied down to it
  (`rescale`). The code does this on ``.data`` between the forward and the backward pass, so the backward pass
  takes the derivative of ``i^4``, ``4 i^3``, at the rescaled intensities: the step moves the rescaled
  intensities along the sign of d loss / d brightness, whatever the sign of the raw intensity.
- After the last step nothing is clamped or rescaled: the result is rendered from the raw intensities.

``snow_projected`` is rayrs's earlier definition: the intensities stay in the constraint set, the Euclidean
projection onto it (`project`) after the start and every step, and each gradient is taken where the forward pass
was. The two are different attacks, neither the stronger everywhere: rescaling dims every flake of an over-budget
region alike, while the free last step adds brightness (``(1 + step)^4`` a full flake) that the projection never
allows. Measured: on the golden fixture's model at eps 0.25, 26% robust accuracy under ``snow``, 2% under
``snow_projected``; on digits at eps 0.5 a standard WRN-10-1 keeps 23% and 45%.

Units are Kang et al.'s: ``eps`` is the brightness of the snow layer on the [0, 1] pixel scale (a flake of
intensity 1 adds ``eps`` times its streak, whose peak is at most 1); ``step_size`` is on the intensities' scale.

Where the reference cannot run, rayrs chooses: greyscale images take their one channel as the luminance (the
reference reads three); sizes that are not a multiple of 4 get ``ceil(H / 4)`` cells a side (the reference's
``resol // 4`` cells do not fit there); regions are 8x8 cells, smaller at the edges, and one region when a side
has fewer than 8 cells. The reference, with ``(resol // 4) // 8`` regions a side, only clamps below 32 px and
rescales nothing (no budget at all; run at 16 px), and on sizes that are not a multiple of 32 px averages over
adaptive windows but rescales only the whole 8x8 regions (read, not run).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from rayrs.attacks.base import Objective, attack_mode, loss_gradient

BUDGET = 0.15  # mean flake intensity per grid and region (the paper's code, configs_cifar.yml `budget`)
SPACING = 4  # px between the flake centres of one grid
OFFSETS = ((0, 0), (0, 1), (0, 2), (0, 3), (1, 0), (2, 0), (3, 0))  # the seven grids, (row, column) mod 4
REGION = 8  # the budget holds per region of REGION x REGION flake cells
KERNEL_SIZE = 13  # streak kernel side, px (Kang et al.'s snow_length_bound)
WIDTHS, WIDTH_ODDS = (1.0, 3.0, 5.0), (0.6, 0.3, 0.1)  # streak width, px, and its probability
BLUR_RANGE = (0.41, 0.6)  # sigma, px, of the 3x3 Gaussian blur of a streak
DISCOLOUR = 0.25  # how far the image is pulled towards max(image, 1.5 luminance + 0.5)
FLOOR = 1e-9  # the smallest intensity after a clamp: a flake at 0 would have no gradient (4 i^3)
LUMA = (0.2126, 0.7152, 0.0722)  # Rec. 709 luminance weights of RGB

Constraint = Literal["rescale", "project"]  # the paper's code's budget, or the exact projection


@dataclass(frozen=True)
class SnowDraws:
    """What one Snow attack draws (`draw_snow`), or what a test feeds it.

    kernels: (7, 13, 13) float32, one streak per grid, shared by the batch. start: (B, 7, rows, columns) float32,
    the intensities' start (rows, columns = ceil(H / 4), ceil(W / 4)).
    """

    kernels: torch.Tensor
    start: torch.Tensor


def streak_lines(ends: torch.Tensor, widths: torch.Tensor, flip: torch.Tensor) -> torch.Tensor:
    """The seven streaks before their blur, ``(7, 13, 13)`` float32, as the reference draws them.

    ends: (7, 2) int, the far end (row, column) of each line from the kernel centre (6, 6), both in 8..12;
    widths: (7,) float; flip: () bool. A line is anti-aliased along its longer axis: at each step ``a`` along it,
    the pixels across it get ``clamp(1 + w / 2 - |b - b(a)|, 0, 1)``, ``b(a)`` the line's exact position and
    ``w = width * sqrt(1 + slope) / 2`` (the reference's weighted_line, including its sqrt(1 + |slope|), not
    sqrt(1 + slope^2)); nothing outside the lower-right quadrant. The upper-left quadrant is then that quadrant
    turned by 180 degrees, so the streak runs through the centre, and ``flip`` mirrors all seven left-right.
    """
    device, half = ends.device, KERNEL_SIZE // 2
    rise, run = (ends[:, 0] - half).float().view(-1, 1, 1), (ends[:, 1] - half).float().view(-1, 1, 1)
    steps_along_columns = run >= rise  # the reference switches axes when the rows rise further than the columns
    slope = torch.where(steps_along_columns, rise / run, run / rise)
    width = widths.float().view(-1, 1, 1) * torch.sqrt(1 + slope) / 2
    index = torch.arange(KERNEL_SIZE, device=device, dtype=torch.float32)
    rows, columns = index.view(1, -1, 1), index.view(1, 1, -1)
    along = torch.where(steps_along_columns, columns, rows)
    across = torch.where(steps_along_columns, rows, columns)
    end = torch.where(steps_along_columns, ends[:, 1].view(-1, 1, 1), ends[:, 0].view(-1, 1, 1)).float()
    centre = half + (along - half) * slope
    value = (1 + width / 2 - (across - centre).abs()).clamp(0, 1)
    lines = value * ((along >= half) & (along <= end) & (across >= half))
    upper_left = (rows <= half) & (columns <= half)
    lines = torch.where(upper_left, lines.flip(-2, -1), lines)
    return torch.where(flip, lines.flip(-1), lines)


def blurred(lines: torch.Tensor, blur: torch.Tensor) -> torch.Tensor:
    """Each streak ``(7, 13, 13)`` convolved with a normalised 3x3 Gaussian of sigma ``blur`` (7,), zero padding."""
    taps = torch.arange(-1, 2, device=lines.device, dtype=torch.float32)
    sigma = blur.float().view(-1, 1, 1)
    weights = torch.exp(-(taps.view(1, -1, 1) ** 2 + taps.view(1, 1, -1) ** 2) / (2 * sigma**2))
    weights = (weights / weights.sum((-2, -1), keepdim=True)).unsqueeze(1)  # (7, 1, 3, 3)
    return F.conv2d(lines.unsqueeze(0), weights, padding=1, groups=lines.shape[0])[0]


def streak_kernels(ends: torch.Tensor, widths: torch.Tensor, blur: torch.Tensor, flip: torch.Tensor) -> torch.Tensor:
    """The seven streak kernels ``(7, 13, 13)`` float32 of `streak_lines`, blurred (`blurred`)."""
    return blurred(streak_lines(ends, widths, flip), blur)


def draw_streak_parameters(generator: torch.Generator | None,
                           device: torch.device | str) -> tuple[torch.Tensor, ...]:
    """``(ends, widths, blur, flip)`` for one kernel set, the reference's distributions: ends (7, 2) int64 each
    uniform in 8..12; widths (7,) 1, 3 or 5 with probability 0.6, 0.3, 0.1; blur (7,) uniform in [0.41, 0.6);
    flip () bool, with probability 1/2."""
    flip = torch.rand((), generator=generator, device=device) < 0.5
    half = KERNEL_SIZE // 2
    ends = torch.randint(half + 2, KERNEL_SIZE, (len(OFFSETS), 2), generator=generator, device=device)
    odds = torch.tensor(WIDTH_ODDS, device=device)
    widths = torch.tensor(WIDTHS, device=device)[
        torch.multinomial(odds, len(OFFSETS), replacement=True, generator=generator)]
    blur = BLUR_RANGE[0] + (BLUR_RANGE[1] - BLUR_RANGE[0]) * torch.rand(len(OFFSETS), generator=generator,
                                                                          device=device)
    return ends, widths, blur, flip


def flake_grid_shape(height: int, width: int) -> tuple[int, int]:
    """Flake cells per grid: one per 4x4 px."""
    return math.ceil(height / SPACING), math.ceil(width / SPACING)


def draw_snow(batch: int, height: int, width: int, *, generator: torch.Generator | None,
              device: torch.device | str, budget: float = BUDGET, random_start: bool = True) -> SnowDraws:
    """One attack's draws: the start ``exp(-U / budget)`` (``budget`` everywhere without ``random_start``), then
    one kernel set for the batch (the reference's order)."""
    shape = (batch, len(OFFSETS), *flake_grid_shape(height, width))
    if random_start:
        start = torch.exp(-torch.rand(shape, generator=generator, device=device) / budget)
    else:
        start = torch.full(shape, budget, device=device)
    return SnowDraws(kernels=streak_kernels(*draw_streak_parameters(generator, device)), start=start)


def snow_layer(brightness: torch.Tensor, kernels: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """The snow layer ``(B, 1, height, width)``: the flakes' ``brightness`` (B, 7, rows, columns), placed on their
    grids, cross-correlated with their grid's kernel (7, 13, 13) with zero padding 6, and summed (the reference's
    snow_creator, given intensities to the fourth power).

    Written as one strided transposed convolution: the kernel turned by 180 degrees (which makes the transposed
    convolution a cross-correlation) and placed at its grid's offset in a 16x16 tile; 1/16 of the work of
    convolving the whole image. Flakes whose cell lies past an edge that is not a multiple of 4 still shine in.
    """
    placed = torch.stack([F.pad(kernels[grid].flip(-2, -1), (column, SPACING - 1 - column, row, SPACING - 1 - row))
                          for grid, (row, column) in enumerate(OFFSETS)]).unsqueeze(1)  # (7, 1, 16, 16)
    layer = F.conv_transpose2d(brightness, placed, stride=SPACING)
    half = KERNEL_SIZE // 2
    return layer[..., half : half + height, half : half + width]


def whiten(images: torch.Tensor) -> torch.Tensor:
    """The snowy-weather whitening, ``(B, C, H, W)``: ``0.75 x + 0.25 max(x, 1.5 luminance + 0.5)``, luminance
    Rec. 709 for RGB and the channel itself for a greyscale image."""
    if images.shape[1] == 3:
        luminance = LUMA[0] * images[:, 0:1] + LUMA[1] * images[:, 1:2] + LUMA[2] * images[:, 2:3]
    else:
        luminance = images.mean(1, keepdim=True)
    return (1 - DISCOLOUR) * images + DISCOLOUR * torch.maximum(images, luminance * 1.5 + 0.5)


def region_shape(rows: int, columns: int) -> tuple[int, int]:
    """Flake cells per region: 8x8, or the whole side when it has fewer."""
    return min(REGION, rows), min(REGION, columns)


def region_means(intensities: torch.Tensor) -> torch.Tensor:
    """Mean intensity of each grid in each region (`region_shape`; partial regions at the edges average what
    they hold): ``(B, 7, rows, columns) -> (B, 7, region rows, region columns)``."""
    return F.avg_pool2d(intensities, region_shape(*intensities.shape[-2:]), ceil_mode=True)


def per_cell(per_region: torch.Tensor, rows: int, columns: int) -> torch.Tensor:
    """A value per region ``(B, 7, R, C)`` spread to its cells, ``(B, 7, rows, columns)``."""
    region = region_shape(rows, columns)
    return per_region.repeat_interleave(region[0], 2).repeat_interleave(region[1], 3)[..., :rows, :columns]


def rescale(intensities: torch.Tensor, budget: float = BUDGET) -> torch.Tensor:
    """The paper's code's budget, ``(B, 7, rows, columns)``: clamp to [1e-9, 1], then multiply each grid's
    region by ``budget / mean`` where its mean is over ``budget``."""
    clamped = intensities.clamp(FLOOR, 1)
    factor = budget / region_means(clamped).clamp_min(budget)
    return clamped * per_cell(factor, *clamped.shape[-2:])


def project(intensities: torch.Tensor, budget: float = BUDGET, iterations: int = 30) -> torch.Tensor:
    """The Euclidean projection onto the constraint set, ``(B, 7, rows, columns)``: intensities in [0, 1]
    (then floored at 1e-9) with every region mean at most ``budget``.

    Where a region's clipped mean is over budget, a shift ``tau`` is subtracted from all its intensities
    before clipping, ``clip(v - tau, 0, 1)``, with tau found by bisection so that the mean is the budget.
    """
    rows, columns = intensities.shape[-2:]
    low = torch.zeros_like(region_means(intensities))
    high = torch.ones_like(low) * intensities.detach().abs().amax().clamp_min(1.0)  # tau = high clips all to 0
    for _ in range(iterations):
        middle = (low + high) / 2
        over = region_means((intensities - per_cell(middle, rows, columns)).clamp(0, 1)) > budget
        low, high = torch.where(over, middle, low), torch.where(over, high, middle)
    return (intensities - per_cell(high, rows, columns)).clamp(FLOOR, 1)


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
    constraint: Constraint = "rescale",
    draws: SnowDraws | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sign-gradient ascent on the flake intensities; returns ``(adversarial, intensities)``.

    images: (B, C, H, W) float in [0, 1]; labels: (B,) int64 true labels. ``draws`` (default: `draw_snow` from
    ``generator``) gives the kernels and the start. ``constraint``: "rescale" (the paper's code, module
    docstring) or "project" (the start and every step projected, `project`). Returns adversarial (B, C, H, W)
    float32 in [0, 1] and the final intensities (B, 7, ceil(H / 4), ceil(W / 4)) float32, with ``adversarial ==
    clamp(whiten(images) + eps * snow_layer(intensities ** 4, kernels), 0, 1)`` (the same snow on every
    channel). ``eps == 0`` or ``steps == 0``: the benign images (not whitened).
    """
    images = images.float()
    batch, _, height, width = images.shape
    device = images.device
    if eps == 0 or steps == 0:
        return images.clone(), torch.zeros(batch, len(OFFSETS), *flake_grid_shape(height, width), device=device)
    with torch.autocast(device.type, enabled=False):  # float32 even under bf16 autocast
        if draws is None:
            draws = draw_snow(batch, height, width, generator=generator, device=device, budget=budget,
                              random_start=random_start)
        whitened = whiten(images)

    def render(brightness: torch.Tensor) -> torch.Tensor:
        return (whitened + eps * snow_layer(brightness, draws.kernels, height, width)).clamp(0, 1)

    with attack_mode(model, bn_eval):
        if constraint == "project":
            intensities = project(draws.start, budget)
            for _ in range(steps):
                gradient = loss_gradient(model, lambda i: render(i.pow(4)), intensities, labels, objective)
                intensities = project(intensities.detach() + step_size * gradient.sign(), budget)
        else:
            # `raw` is what each forward pass renders, `seen` where its backward pass takes 4 i^3 (module docstring).
            raw = seen = draws.start
            for step in range(steps):
                gradient = loss_gradient(model, render, raw.pow(4), labels, objective) * 4 * seen.pow(3)
                raw = seen + step_size * gradient.sign()
                if step < steps - 1:
                    seen = rescale(raw, budget)
            intensities = raw
    with torch.no_grad(), torch.autocast(device.type, enabled=False):
        return render(intensities.pow(4)), intensities


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
    """Snow adversarial images as the paper's code makes them (flake budget 0.15, rescaled; module docstring).

    images: (B, C, H, W) float in [0, 1]; labels: (B,) int64. ``objective`` (default: summed cross-entropy)
    is what the attack maximises. Returns (B, C, H, W) float32.
    """
    return snow_search(model, images, labels, eps=eps, steps=steps, step_size=step_size, random_start=random_start,
                       generator=generator, bn_eval=bn_eval, objective=objective)[0]


def snow_projected_attack(
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
    """Snow whose intensities never leave the budget: the exact projection after every step (rayrs's earlier
    definition; the paper's code rescales and leaves the last step free: `snow_attack`). Same draws and units.

    images: (B, C, H, W) float in [0, 1]; labels: (B,) int64. Returns (B, C, H, W) float32.
    """
    return snow_search(model, images, labels, eps=eps, steps=steps, step_size=step_size, random_start=random_start,
                       generator=generator, bn_eval=bn_eval, objective=objective, constraint="project")[0]
