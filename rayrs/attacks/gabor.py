"""The Gabor threat model of Kang et al. (2019, "Testing robustness against unforeseen adversaries", §3), as the
paper's code runs it (its ``attacks/gabor.py``, a copy of Kang et al.'s advex-uar ``GaborAttack``).

The adversary adds Gabor noise (Co et al. 2019, "Procedural noise UAPs"): a map of variables convolved with a
Gabor kernel of random orientation, scale and symmetry drawn per image, normalised to [0, 1] and scaled by ``eps``.
What the paper's code does, and therefore what ``gabor`` does:

- The draws: per image a kernel (`gabor_kernels`); then a sparse random grid over the whole *batch*, exactly
  ``round(batch * H * W / 14)`` points (scipy's ``sparse.random``: not a count per image, not a coin per pixel),
  each with a value uniform in [-1, 1). The grid's values are the start.
- The variables are every pixel *off* the grid: the code masks with ``sp_conv == 0``, so its first sign step sets
  the grid points to 0 and turns every other pixel into a variable, and the map is dense from then on. The sign
  steps move the variables inside ``[-1, 1]``.
- The noise is the map cross-correlated with its image's 23x23 kernel (zero padding), then `normalise`: a
  "spectral variance" gain that pushes the noise towards two levels, and min-max scaling to [0, 1].
- The image is ``clamp(x + eps / 255 * noise, 0, 1)``, the same noise on every channel.

``gabor_sparse`` keeps the variables on the sparse grid instead, as Kang et al.'s paper and Co et al. describe
Gabor noise; everything else is the same. At the same eps and steps it is a much weaker attack than the code's.

Units are Kang et al.'s: ``eps`` is the amplitude of the normalised noise on the 0-255 pixel scale, so a pixel
brightens by at most ``eps / 255`` on the [0, 1] scale (eps 75 on CIFAR-10: +0.29); ``step_size`` is on the
variables' ``[-1, 1]`` scale. As the noise is min-max normalised, the size of a step only matters once the
variables reach ±1 (10 steps of 0.05 never do: the attack is then a running sum of gradient signs).

Where the reference cannot run, rayrs chooses: a greyscale image gets the noise on its one channel (the reference
expands the noise to 3 channels); odd sizes work (the reference's FFT round trip drops a column, and fails); and
without ``random_start`` the variables start at 0 off the same grid (the reference has no such mode).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from rayrs.attacks.base import Objective, attack_mode, loss_gradient

SPARSITY = 1 / 14  # the grid's share of the batch's pixels (Kang et al.'s `grid = 14`, scipy's `density`)
KERNEL_SIZE = 23  # Kang et al.'s kernel side, in pixels, at every resolution
MAX_SIDES = 10  # a kernel sums 1..10 Gabor waves at evenly spread orientations
SIGMA_RANGE = (0.1, 0.4)  # Gaussian envelope, in units of the kernel side
FREQUENCY_RANGE = (3.0, KERNEL_SIZE / 4)  # cycles per kernel side (the code's `Lambda`)
GAIN_FLOOR = 1e-3  # Kang et al.'s minC of the variance normalisation

Variables = Literal["off_grid", "grid"]  # which pixels the attack optimises: the code's, or the sparse grid


@dataclass(frozen=True)
class GaborDraws:
    """What one Gabor attack draws (`draw_gabor`), or what a test feeds it.

    kernels: (B, 1, 23, 23) float32, one Gabor kernel per image. grid: (B, 1, H, W) bool, the sparse grid's
    points. start: (B, 1, H, W) float32, the variables' start: the grid's values in [-1, 1) on its points and 0
    elsewhere (0 everywhere without a random start).
    """

    kernels: torch.Tensor
    grid: torch.Tensor
    start: torch.Tensor


def gabor_kernels(sides: torch.Tensor, sigma: torch.Tensor, frequency: torch.Tensor,
                  theta: torch.Tensor) -> torch.Tensor:
    """Gabor kernels ``(B, 1, 23, 23)`` float32 from their parameters, each ``(B,)``.

    On the square [-1/2, 1/2]^2 sampled at 23 points a side, a kernel is an isotropic Gaussian envelope of width
    ``sigma + 1e-3`` times the sum of ``sides`` cosine waves of ``frequency`` cycles, their orientations
    ``theta + pi i / sides`` (Kang et al.; Co et al. 2019).
    """
    batch, device = sides.shape[0], sides.device
    coordinates = torch.linspace(-0.5, 0.5, KERNEL_SIZE, device=device)
    y, x = coordinates.view(1, 1, -1, 1), coordinates.view(1, 1, 1, -1)
    sides, sigma, frequency, theta = (p.view(batch, 1, 1, 1) for p in (sides, sigma, frequency, theta))
    wave = torch.arange(MAX_SIDES, device=device).view(1, -1, 1, 1)
    angle = theta + math.pi * wave / sides  # (B, MAX_SIDES, 1, 1)
    along = x * torch.cos(angle) + y * torch.sin(angle)
    waves = torch.cos(2 * math.pi * frequency * along) * (wave < sides)  # only the first `sides` waves count
    envelope = torch.exp(-0.5 * (x**2 + y**2) / (sigma + 1e-3) ** 2)
    return (envelope * waves.sum(1, keepdim=True)).float()


def draw_kernel_parameters(batch: int, generator: torch.Generator | None,
                           device: torch.device | str) -> tuple[torch.Tensor, ...]:
    """``(sides, sigma, frequency, theta)``, each ``(batch,)``: the reference's per-image draws, sides uniform in
    1..10, sigma in [0.1, 0.4), frequency in [3, 23/4), theta in [0, pi)."""
    def uniform(low: float, high: float) -> torch.Tensor:
        return low + (high - low) * torch.rand(batch, generator=generator, device=device)

    sides = torch.randint(1, MAX_SIDES + 1, (batch,), generator=generator, device=device)
    return sides, uniform(*SIGMA_RANGE), uniform(*FREQUENCY_RANGE), uniform(0.0, math.pi)


def draw_grid(batch: int, height: int, width: int, generator: torch.Generator | None,
              device: torch.device | str) -> tuple[torch.Tensor, torch.Tensor]:
    """The sparse grid ``(points, values)``, both ``(batch, 1, height, width)`` (bool; float32 in [-1, 1) on the
    points, 0 elsewhere): exactly ``round(batch * height * width / 14)`` points, a uniform choice without
    replacement among all the batch's pixels, as ``scipy.sparse.random(height * batch, width, 1 / 14)`` draws."""
    total = batch * height * width
    count = round(SPARSITY * total)  # the same float product and rounding as scipy's `int(round(density * size))`
    chosen = torch.randperm(total, generator=generator, device=device)[:count]
    points = torch.zeros(total, dtype=torch.bool, device=device)
    points[chosen] = True
    values = torch.zeros(total, device=device)
    values[chosen] = 2 * torch.rand(count, generator=generator, device=device) - 1
    shape = (batch, 1, height, width)
    return points.view(shape), values.view(shape)


def draw_gabor(batch: int, height: int, width: int, *, generator: torch.Generator | None,
               device: torch.device | str, random_start: bool = True) -> GaborDraws:
    """One attack's draws: a kernel per image, then the grid over the batch (its values the start when
    ``random_start``, else a start of 0)."""
    kernels = gabor_kernels(*draw_kernel_parameters(batch, generator, device))
    grid, values = draw_grid(batch, height, width, generator, device)
    return GaborDraws(kernels=kernels, grid=grid, start=values if random_start else torch.zeros_like(values))


def normalise(noise: torch.Tensor) -> torch.Tensor:
    """Kang et al.'s "spectral variance" normalisation, then min-max scaling to [0, 1], per image; ``(B, 1, H, W)``.

    Each value's deviation ``d`` from the image mean is multiplied by ``(1 + c) / (c + s / max s)`` with c = 1e-3,
    which pushes the noise towards two levels; ``s = sqrt(|irfft2(rfft2(d^2))|)``, which is ``|d|`` in exact
    arithmetic. The FFT round trip stays, as in the reference: near the mean, where ``d^2`` is small, the square
    root magnifies its float32 round-off, the gain there is up to 7% lower, and the noise moves by up to 0.5% of
    its range (measured on the golden fixture's 32 x 32 noise; with the round trip rayrs matches the reference
    exactly there). As in the reference, the mean, the gain and the min-max bounds are constants for the
    gradient; an all-zero map (a zero start) gives zero noise where the reference gives NaN.
    """
    batch = noise.shape[0]
    mean = noise.reshape(batch, -1).mean(1).view(batch, 1, 1, 1).detach()
    deviation = noise.detach() - mean
    spread = torch.fft.irfft2(torch.fft.rfft2(deviation**2), s=noise.shape[-2:]).abs().sqrt()
    spread = spread / spread.reshape(batch, -1).amax(1).clamp_min(torch.finfo(spread.dtype).tiny).view(batch, 1, 1, 1)
    gain = (1 + GAIN_FLOOR) / (GAIN_FLOOR + spread)
    levelled = mean + (noise - mean) * gain
    low = levelled.reshape(batch, -1).amin(1).view(batch, 1, 1, 1).detach()
    high = levelled.reshape(batch, -1).amax(1).view(batch, 1, 1, 1).detach()
    return (levelled - low) / (high - low).clamp_min(torch.finfo(noise.dtype).tiny)


def filtered(values: torch.Tensor, kernels: torch.Tensor) -> torch.Tensor:
    """``values`` (B, 1, H, W) cross-correlated with each image's kernel (B, 1, k, k), zero padding, same size."""
    batch, _, height, width = values.shape
    out = F.conv2d(values.reshape(1, batch, height, width), kernels, padding=kernels.shape[-1] // 2, groups=batch)
    return out.view(batch, 1, height, width)


def gabor_noise(values: torch.Tensor, kernels: torch.Tensor) -> torch.Tensor:
    """Normalised Gabor noise in [0, 1], ``(B, 1, H, W)``, of the variables ``values`` (B, 1, H, W)."""
    return normalise(filtered(values, kernels))


def gabor_search(
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
    variables: Variables = "off_grid",
    draws: GaborDraws | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Sign-gradient ascent on the noise's variables; returns ``(adversarial, values, mask)``.

    images: (B, C, H, W) float in [0, 1]; labels: (B,) int64 true labels. ``draws`` (default: `draw_gabor` from
    ``generator``) gives the kernels, the grid and the start. ``variables``: "off_grid" (the paper's code: every
    pixel but the grid's points) or "grid" (the grid's points only). Each step is ``values = clamp(values +
    step_size * sign(gradient), -1, 1) * mask``. Returns adversarial (B, C, H, W) float32 in [0, 1], the final
    values (B, 1, H, W) float32 and the mask (B, 1, H, W) bool, with ``adversarial == clamp(images + eps / 255 *
    gabor_noise(values, kernels), 0, 1)`` (the same noise on every channel). ``eps == 0`` or ``steps == 0``: the
    benign images.
    """
    images = images.float()
    batch, _, height, width = images.shape
    device = images.device
    if eps == 0 or steps == 0:
        zeros = torch.zeros(batch, 1, height, width, device=device)
        return images.clone(), zeros, zeros.bool()
    if draws is None:
        draws = draw_gabor(batch, height, width, generator=generator, device=device, random_start=random_start)
    mask = ~draws.grid if variables == "off_grid" else draws.grid

    def render(v: torch.Tensor) -> torch.Tensor:
        return (images + eps / 255 * gabor_noise(v, draws.kernels)).clamp(0, 1)

    values = draws.start
    with attack_mode(model, bn_eval):
        for _ in range(steps):
            gradient = loss_gradient(model, render, values, labels, objective)
            values = (values.detach() + step_size * gradient.sign()).clamp(-1, 1) * mask
    with torch.no_grad(), torch.autocast(device.type, enabled=False):
        return render(values), values, mask


def gabor_attack(
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
    """Gabor-noise adversarial images as the paper's code makes them (variables off the grid; module docstring).

    images: (B, C, H, W) float in [0, 1]; labels: (B,) int64. ``objective`` (default: summed cross-entropy)
    is what the attack maximises. Returns (B, C, H, W) float32.
    """
    return gabor_search(model, images, labels, eps=eps, steps=steps, step_size=step_size, random_start=random_start,
                        generator=generator, bn_eval=bn_eval, objective=objective)[0]


def gabor_sparse_attack(
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
    """Gabor noise whose variables stay on the sparse grid, as Kang et al.'s paper and Co et al. describe it (the
    paper's code optimises every other pixel instead: `gabor_attack`). Same draws, noise and units.

    images: (B, C, H, W) float in [0, 1]; labels: (B,) int64. Returns (B, C, H, W) float32.
    """
    return gabor_search(model, images, labels, eps=eps, steps=steps, step_size=step_size, random_start=random_start,
                        generator=generator, bn_eval=bn_eval, objective=objective, variables="grid")[0]
