"""What every attack shares: the model frozen while it is attacked, and the gradient of the attacker's objective.

An attack step needs only the gradient with respect to the attack's own variables (a perturbation, JPEG
coefficients, Gabor grid values, snowflake intensities). With every parameter's ``requires_grad`` off and
`torch.autograd.grad` on the variables, the backward pass skips every weight-gradient product (an attack step
costs about two thirds of a training step) and no parameter ``.grad`` is ever touched. The image the model sees
is rendered from the variables with autocast off, so the perturbation stays float32 under bf16 autocast.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn

Objective = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (logits, labels) -> summed loss to maximise


@contextmanager
def attack_mode(model: nn.Module, bn_eval: bool = True) -> Iterator[None]:
    """Freeze parameters (and BatchNorm statistics when ``bn_eval``); restore both afterwards.

    Each module gets back its *own* training flag, not the model's: during layer freezing (App. D.5) the
    frozen prefix is in eval mode inside a training model, and ``model.train()`` here would put its
    BatchNorm layers back on batch statistics for the rest of the epoch.
    """
    modes = [(module, module.training) for module in model.modules()]
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
        for module, training in modes:
            module.training = training


def summed_cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The default objective. Summed, not averaged: each example's gradient does not shrink with the batch."""
    return F.cross_entropy(logits.float(), labels, reduction="sum")


def loss_gradient(
    model: nn.Module,
    render: Callable[[torch.Tensor], torch.Tensor],
    variables: torch.Tensor,
    labels: torch.Tensor,
    objective: Objective | None = None,
) -> torch.Tensor:
    """d objective(model(render(variables)), labels) / d variables, touching no parameter's gradient.

    render: the attack's variables -> adversarial images (B, C, H, W) in [0, 1], run with autocast off.
    """
    variables = variables.detach().requires_grad_(True)
    with torch.autocast(variables.device.type, enabled=False):
        adversarial = render(variables)
    loss = (objective or summed_cross_entropy)(model(adversarial), labels)
    (gradient,) = torch.autograd.grad(loss, variables)
    return gradient
