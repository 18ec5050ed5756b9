"""Projected gradient descent in l_inf and l_2 balls (Madry et al. 2018), on the [0, 1] pixel scale.

The inner loop is the cost floor of adversarial training: each step takes only the input gradient, with the
model frozen (`rayrs.attacks.base`), so it costs about two thirds of a training step.
"""

from __future__ import annotations

import torch
from torch import nn

from rayrs.attacks.base import Objective, attack_mode, loss_gradient


def _random_unit_l2(shape: torch.Size, generator: torch.Generator | None, device: torch.device) -> torch.Tensor:
    direction = torch.randn(shape, generator=generator, device=device)
    return direction / direction.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, *[1] * (len(shape) - 1))


def pgd_linf(
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
    """Adversarial images within ``eps`` of ``images`` in l_inf, and inside [0, 1].

    images: (B, C, H, W) float in [0, 1]; labels: (B,) int64 true labels. ``objective`` (default: summed
    cross-entropy) is what the attack maximises. Returns (B, C, H, W) float32.
    """
    images = images.float()
    if eps == 0 or steps == 0:
        return images.clone()
    delta = torch.zeros_like(images)
    if random_start:
        delta = (torch.rand(images.shape, generator=generator, device=images.device) * 2 - 1) * eps
        delta = (images + delta).clamp_(0, 1) - images
    with attack_mode(model, bn_eval):
        for _ in range(steps):
            gradient = loss_gradient(model, lambda d: images + d, delta, labels, objective)
            delta = (delta.detach() + step_size * gradient.sign()).clamp_(-eps, eps)
            delta = (images + delta).clamp_(0, 1) - images
    return (images + delta).detach()


def pgd_l2(
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
    """Adversarial images within l_2 distance ``eps`` of ``images`` (per example), and inside [0, 1].

    images: (B, C, H, W) float in [0, 1]; labels: (B,) int64 true labels. ``objective`` (default: summed
    cross-entropy) is what the attack maximises. Returns (B, C, H, W) float32.
    """
    images = images.float()
    if eps == 0 or steps == 0:
        return images.clone()
    view = (-1,) + (1,) * (images.dim() - 1)

    def project(delta: torch.Tensor) -> torch.Tensor:
        norms = delta.flatten(1).norm(dim=1).view(view)
        delta = delta * (eps / norms.clamp_min(eps))
        return (images + delta).clamp_(0, 1) - images

    delta = torch.zeros_like(images)
    if random_start:
        radius = torch.rand(images.shape[0], generator=generator, device=images.device).view(view) * eps
        delta = project(_random_unit_l2(images.shape, generator, images.device) * radius)
    with attack_mode(model, bn_eval):
        for _ in range(steps):
            gradient = loss_gradient(model, lambda d: images + d, delta, labels, objective)
            direction = gradient / gradient.flatten(1).norm(dim=1).clamp_min(1e-12).view(view)
            delta = project(delta.detach() + step_size * direction)
    return (images + delta).detach()
