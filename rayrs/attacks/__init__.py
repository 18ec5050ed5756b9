"""Threat models, picked by name in a sweep file (``train.threat_model``).

Each threat model turns benign images into adversarial ones inside its own constraint set. ``eps`` is on the
threat model's own scale, documented in `ThreatModel.unit`; for ``linf`` and ``l2`` that is the [0, 1] pixel
scale. Attacks always use the true labels, run on whatever device the images are on, and never touch the
model's parameter gradients.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from rayrs.attacks.pgd import pgd_l2, pgd_linf


@dataclass(frozen=True)
class ThreatModel:
    name: str
    description: str
    unit: str
    perturb: Callable[..., torch.Tensor]  # (model, images, labels, *, eps, steps, step_size, random_start, generator)
    default_eps: dict[str, float] = field(default_factory=dict)  # per dataset: the paper's settings, digits ours


THREAT_MODELS: dict[str, ThreatModel] = {
    "linf": ThreatModel(
        name="linf",
        description="PGD in an l_inf ball (Madry et al. 2018)",
        unit="max per-pixel change on the [0, 1] scale",
        perturb=pgd_linf,
        # Paper §2.3: 8/255 on CIFAR-10, 4/255 on the ImageNet subsets. Digits (16x16, MNIST-like strokes):
        # 0.1 drives a standard WRN to ~0% robust accuracy while PGD-AT keeps most of it.
        default_eps={"cifar10": 8 / 255, "imagenette": 4 / 255, "imagewoof": 4 / 255, "digits": 0.1},
    ),
    "l2": ThreatModel(
        name="l2",
        description="PGD in an l_2 ball (Madry et al. 2018)",
        unit="l_2 norm of the whole perturbation on the [0, 1] scale",
        perturb=pgd_l2,
        default_eps={"cifar10": 1.0, "imagenette": 3.0, "imagewoof": 3.0, "digits": 1.0},
    ),
}


def default_eps(threat_model: str, dataset: str) -> float:
    """The paper's eps for this threat model and dataset (ours for digits)."""
    return THREAT_MODELS[threat_model].default_eps[dataset]
