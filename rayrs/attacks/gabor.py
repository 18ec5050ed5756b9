"""The Gabor threat model of Kang et al. (2019, "Testing robustness against unforeseen adversaries", §3).

The adversary adds Gabor noise (Co et al. 2019, "Procedural noise UAPs"): a sparse random grid of points,
convolved with a Gabor kernel of random orientation, scale and symmetry drawn per image, normalised to [0, 1]
and scaled by ``eps``. The variables are the values at the grid points, optimised by sign-gradient steps in
the l_inf ball ``[-1, 1]``; the grid and the kernel stay fixed during the search. (Kang et al.'s code masks
with ``sparse == 0``, the complement of the grid, so after its first step every other pixel becomes a
variable and the map is dense; we keep the sparse grid their paper and Co et al. describe.)

Units are Kang et al.'s: ``eps`` is the amplitude of the normalised noise on the 0-255 pixel scale, so a pixel
brightens by at most ``eps / 255`` on the [0, 1] scale (eps 75 on CIFAR-10: +0.29); ``step_size`` is on the
variables' ``[-1, 1]`` scale.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from rayrs.attacks.base import Objective, attack_mode, loss_gradient

SPARSITY = 1 / 14  # fraction of pixels that are grid points (Kang et al.'s `grid = 14`)
KERNEL_SIZE = 23  # Kang et al.'s kernel side, in pixels, at every resolution
MAX_SIDES = 10  # a kernel sums 1..10 Gabor waves at evenly spread orientations
SIGMA_RANGE = (0.1, 0.4)  # Gaussian envelope, in units of the kernel side
FREQUENCY_RANGE = (3.0, KERNEL_SIZE / 4)  # cycles per kernel side
GAIN_FLOOR = 1e-3  # Kang et al.'s minC of the variance normalisation


def gabor_kernels(batch: int, generator: torch.Generator | None, device: torch.device | str) -> torch.Tensor:
    """One random Gabor kernel per image, ``(batch, 1, 23, 23)`` float32.

    A kernel is an isotropic Gaussian envelope times the sum of ``sides`` cosine waves whose orientations are
    ``theta + pi i / sides``; sides, envelope width, frequency and theta are drawn per image (Kang et al.).
    """
    def uniform(low: float, high: float) -> torch.Tensor:
        return (low + (high - low) * torch.rand(batch, generator=generator, device=device)).view(batch, 1, 1, 1)

    sides = torch.randint(1, MAX_SIDES + 1, (batch,), generator=generator, device=device).view(batch, 1, 1, 1)
    sigma, frequency, theta = uniform(*SIGMA_RANGE), uniform(*FREQUENCY_RANGE), uniform(0.0, math.pi)
    coordinates = torch.linspace(-0.5, 0.5, KERNEL_SIZE, device=device)
    y, x = coordinates.view(1, 1, -1, 1), coordinates.view(1, 1, 1, -1)
    wave = torch.arange(MAX_SIDES, device=device).view(1, -1, 1, 1)
    angle = theta + math.pi * wave / sides  # (batch, MAX_SIDES, 1, 1)
    along = x * torch.cos(angle) + y * torch.sin(angle)
    waves = torch.cos(2 * math.pi * frequency * along) * (wave < sides)  # only the first `sides` waves count
    envelope = torch.exp(-0.5 * (x**2 + y**2) / (sigma + 1e-3) ** 2)
    return (envelope * waves.sum(1, keepdim=True)).float()


def normalise(noise: torch.Tensor) -> torch.Tensor:
    """Kang et al.'s variance normalisation, then min-max scaling to [0, 1], per image; ``(B, 1, H, W)``.

    Each value's deviation from the image mean is multiplied by ``(1 + c) / (c + |dev| / max |dev|)`` with
    c = 1e-3 (their "spectral variance" normalisation; its FFT round trip is the identity, so it is written
    without one), which pushes the noise towards two levels. As in their code the mean, the gain and the
    min-max bounds are constants for the gradient.
    """
    flat = noise.flatten(1)
    mean = flat.mean(1).view(-1, 1, 1, 1).detach()
    deviation = (noise - mean).abs().detach()
    spread = deviation / deviation.flatten(1).amax(1).clamp_min(1e-12).view(-1, 1, 1, 1)
    levelled = mean + (noise - mean) * ((1 + GAIN_FLOOR) / (GAIN_FLOOR + spread))
    low = levelled.flatten(1).amin(1).view(-1, 1, 1, 1).detach()
    high = levelled.flatten(1).amax(1).view(-1, 1, 1, 1).detach()
    return (levelled - low) / (high - low).clamp_min(1e-12)


def gabor_noise(values: torch.Tensor, kernels: torch.Tensor) -> torch.Tensor:
    """Normalised Gabor noise in [0, 1], ``(B, 1, H, W)``: the sparse ``values`` (B, 1, H, W) convolved per
    image with ``kernels`` (B, 1, k, k), zero padding, same size."""
    batch, _, height, width = values.shape
    filtered = F.conv2d(values.reshape(1, batch, height, width), kernels, padding=kernels.shape[-1] // 2, groups=batch)
    return normalise(filtered.view(batch, 1, height, width))


def project(values: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
    """Onto the constraint set: values in ``[-1, 1]`` on the grid points (``grid``, bool (B, 1, H, W)), 0 elsewhere."""
    return values.clamp(-1, 1) * grid


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
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Sign-gradient ascent on the grid values; returns ``(adversarial, values, grid)``.

    images: (B, C, H, W) float in [0, 1]; labels: (B,) int64 true labels. The grid (each pixel a grid point
    with probability 1/14) and the kernels are drawn from ``generator``; so is the start, uniform in [-1, 1] on
    the grid (zero without ``random_start``). Returns adversarial (B, C, H, W) float32 in [0, 1], the values
    (B, 1, H, W) float32 and the grid (B, 1, H, W) bool, with ``adversarial == clamp(images + eps / 255 *
    gabor_noise(values, kernels), 0, 1)`` (the same noise on every channel). ``eps == 0`` or ``steps == 0``:
    the benign images.
    """
    images = images.float()
    batch, _, height, width = images.shape
    device = images.device
    values = torch.zeros(batch, 1, height, width, device=device)
    if eps == 0 or steps == 0:
        return images.clone(), values, values.bool()
    grid = torch.rand(batch, 1, height, width, generator=generator, device=device) < SPARSITY
    kernels = gabor_kernels(batch, generator, device)

    def render(v: torch.Tensor) -> torch.Tensor:
        return (images + eps / 255 * gabor_noise(v, kernels)).clamp(0, 1)

    if random_start:
        values = project(torch.rand(values.shape, generator=generator, device=device) * 2 - 1, grid)
    with attack_mode(model, bn_eval):
        for _ in range(steps):
            gradient = loss_gradient(model, render, values, labels, objective)
            values = project(values.detach() + step_size * gradient.sign(), grid)
    with torch.no_grad(), torch.autocast(device.type, enabled=False):
        return render(values), values, grid


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
    """Gabor-noise adversarial images (Kang et al. 2019): ``images + eps / 255 * noise``, noise in [0, 1].

    images: (B, C, H, W) float in [0, 1]; labels: (B,) int64. ``objective`` (default: summed cross-entropy)
    is what the attack maximises. Returns (B, C, H, W) float32.
    """
    return gabor_search(model, images, labels, eps=eps, steps=steps, step_size=step_size, random_start=random_start,
                        generator=generator, bn_eval=bn_eval, objective=objective)[0]
