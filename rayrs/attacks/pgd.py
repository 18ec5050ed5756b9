"""Projected gradient descent in l_inf and l_2 balls (Madry et al. 2018), on the [0, 1] pixel scale, as the paper's
code runs it (``attacks/lp.py`` of Cianfarani et al.'s code; golden values in tests/test_paper_code_jpeg_pgd.py).

- l_inf: the start is uniform in ``[-eps, eps]`` per pixel and is *not* clipped to [0, 1] (the first gradient may
  be taken just outside the pixel range); a step moves ``step_size * sign(gradient)``, then clips the move to
  ``[-eps, eps]`` and the image to [0, 1].
- l_2: the start is uniform ``[-1, 1]`` noise renormalised per example to norm at most ``eps`` (``torch.renorm``;
  the noise's norm is about ``sqrt(C * H * W / 3)``, 32 for CIFAR-10, so at the usual budgets the start lies *on*
  the sphere of radius eps, not uniformly in the ball), not clipped to [0, 1]; a step moves ``step_size`` along the gradient divided by its l_2 norm, where an example whose
  gradient is exactly zero moves along unnormalised standard normal noise instead; then the move is renormalised
  to norm at most ``eps`` and the image clipped to [0, 1].

The paper's code maximises the batch-mean cross-entropy; rayrs's default objective is the summed one (the same
sign and normalised direction, without the 1/B). The inner loop is the cost floor of adversarial training: each
step takes only the input gradient, with the model frozen (`rayrs.attacks.base`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from rayrs.attacks.base import Objective, attack_mode, loss_gradient


@dataclass(frozen=True)
class PgdDraws:
    """The random numbers of one PGD run, drawn up front so that a test can hand in another run's.

    noise: ``(B, C, H, W)`` float32, uniform in [-1, 1]: the random start before it is fitted to the ball
        (l_inf: times eps; l_2: renormalised to norm at most eps).
    zero_gradient: ``(steps, B, C, H, W)`` standard normal, or None; l_2 only: step ``t`` moves example ``i``
        along ``zero_gradient[t, i]`` when its gradient is exactly zero. None: drawn from the attack's generator
        when that happens (only a flat loss has an exactly zero gradient).
    """

    noise: torch.Tensor
    zero_gradient: torch.Tensor | None = None


def draw_pgd(shape: torch.Size, generator: torch.Generator | None, device: torch.device) -> PgdDraws:
    """A PGD run's random start for images of ``shape`` (B, C, H, W), from ``generator``."""
    return PgdDraws(noise=torch.empty(shape, device=device).uniform_(-1, 1, generator=generator))


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
    draws: PgdDraws | None = None,
) -> torch.Tensor:
    """Adversarial images within ``eps`` of ``images`` in l_inf, and inside [0, 1] (the start excepted: see above).

    images: (B, C, H, W) float in [0, 1]; labels: (B,) int64 true labels. ``objective`` (default: summed
    cross-entropy) is what the attack maximises. ``draws``: the random start (default: drawn from ``generator``).
    Returns (B, C, H, W) float32; ``eps == 0`` or ``steps == 0``: the benign images.
    """
    images = images.float()
    if eps == 0 or steps == 0:
        return images.clone()
    adversarial = images
    if random_start:
        draws = draws or draw_pgd(images.shape, generator, images.device)
        adversarial = images + eps * draws.noise  # not clipped to [0, 1], as in the paper's code
    with attack_mode(model, bn_eval):
        for _ in range(steps):
            gradient = loss_gradient(model, lambda x: x, adversarial, labels, objective)
            adversarial = adversarial.detach() + step_size * gradient.sign()
            adversarial = (images + (adversarial - images).clamp(-eps, eps)).clamp(0, 1)
    return adversarial.detach()


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
    draws: PgdDraws | None = None,
) -> torch.Tensor:
    """Adversarial images within l_2 distance ``eps`` of ``images`` (per example), and inside [0, 1] (the start
    excepted: see above).

    images: (B, C, H, W) float in [0, 1]; labels: (B,) int64 true labels. ``objective`` (default: summed
    cross-entropy) is what the attack maximises. ``draws``: the random start and any zero-gradient noise
    (default: drawn from ``generator``). Returns (B, C, H, W) float32; ``eps == 0`` or ``steps == 0``: the benign
    images.
    """
    images = images.float()
    if eps == 0 or steps == 0:
        return images.clone()
    view = (-1,) + (1,) * (images.dim() - 1)

    def project(adversarial: torch.Tensor) -> torch.Tensor:
        return (images + (adversarial - images).renorm(p=2, dim=0, maxnorm=eps)).clamp(0, 1)

    adversarial = images
    if random_start:
        draws = draws or draw_pgd(images.shape, generator, images.device)
        adversarial = images + draws.noise.renorm(p=2, dim=0, maxnorm=eps)  # not clipped, as in the paper's code
    with attack_mode(model, bn_eval):
        for step in range(steps):
            gradient = loss_gradient(model, lambda x: x, adversarial, labels, objective)
            norms = gradient.flatten(1).norm(dim=1)
            direction = gradient / norms.view(view)
            flat = norms == 0
            if flat.any():  # the paper's code steps along plain Gaussian noise where there is no gradient
                if draws is not None and draws.zero_gradient is not None:
                    noise = draws.zero_gradient[step][flat]
                else:
                    noise = torch.randn((int(flat.sum()), *images.shape[1:]), generator=generator,
                                        device=images.device)
                direction[flat] = noise
            adversarial = project(adversarial.detach() + step_size * direction)
    return adversarial.detach()
