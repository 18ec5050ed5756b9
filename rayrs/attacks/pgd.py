"""Projected gradient descent in l_inf and l_2 balls (Madry et al. 2018), on the [0, 1] pixel scale.

The inner loop is the cost floor of adversarial training, so it is written for speed: parameters stop
requiring grad for the attack and the input gradient comes from `torch.autograd.grad`, so the backward pass
skips every weight-gradient product (an attack step costs about two thirds of a training step) and no
parameter ``.grad`` is ever touched. The perturbation stays in float32 even under bf16 autocast.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn


@contextmanager
def attack_mode(model: nn.Module, bn_eval: bool = True) -> Iterator[None]:
    """Freeze parameters (and BatchNorm statistics when ``bn_eval``); restore both afterwards."""
    was_training = model.training
    requires_grad = [p.requires_grad for p in model.parameters()]
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    if bn_eval:
        model.eval()
    try:
        yield
    finally:
        for parameter, flag in zip(model.parameters(), requires_grad):
            parameter.requires_grad_(flag)
        model.train(was_training)


def _input_gradient(model: nn.Module, images: torch.Tensor, delta: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    delta.requires_grad_(True)
    # Summed (not mean) loss: the gradient of each example does not shrink with the batch size.
    loss = F.cross_entropy(model(images + delta).float(), labels, reduction="sum")
    (gradient,) = torch.autograd.grad(loss, delta)
    return gradient


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
) -> torch.Tensor:
    """Adversarial images within ``eps`` of ``images`` in l_inf, and inside [0, 1].

    images: (B, C, H, W) float in [0, 1]; labels: (B,) int64 true labels. Returns (B, C, H, W) float32.
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
            gradient = _input_gradient(model, images, delta, labels)
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
) -> torch.Tensor:
    """Adversarial images within l_2 distance ``eps`` of ``images`` (per example), and inside [0, 1].

    images: (B, C, H, W) float in [0, 1]; labels: (B,) int64 true labels. Returns (B, C, H, W) float32.
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
            gradient = _input_gradient(model, images, delta, labels)
            direction = gradient / gradient.flatten(1).norm(dim=1).clamp_min(1e-12).view(view)
            delta = project(delta.detach() + step_size * direction)
    return (images + delta).detach()
