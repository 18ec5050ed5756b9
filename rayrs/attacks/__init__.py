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
class AttackDefaults:
    """A threat model's settings for one dataset: the budget, and the attack used in training and evaluation."""

    eps: float
    train_steps: int
    train_step_size: float
    eval_steps: int
    eval_step_size: float


@dataclass(frozen=True)
class ThreatModel:
    name: str
    description: str
    unit: str  # what eps measures, in words
    perturb: Callable[..., torch.Tensor]  # (model, images, labels, *, eps, steps, step_size, random_start, generator, bn_eval)
    defaults: dict[str, AttackDefaults] = field(default_factory=dict)  # per dataset: the paper's settings, digits ours


THREAT_MODELS: dict[str, ThreatModel] = {
    "linf": ThreatModel(
        name="linf",
        description="PGD in an l_inf ball (Madry et al. 2018)",
        unit="max per-pixel change on the [0, 1] scale",
        perturb=pgd_linf,
        defaults={
            # Paper §2.3: 8/255 on CIFAR-10 and 4/255 on the ImageNet subsets, PGD-10 in training and PGD-20 at
            # test; steps of 2/255 (Madry et al.; Rice et al. 2020) and 1/255 at 4/255.
            "cifar10": AttackDefaults(8 / 255, 10, 2 / 255, 20, 2 / 255),
            "imagenette": AttackDefaults(4 / 255, 10, 1 / 255, 20, 1 / 255),
            "imagewoof": AttackDefaults(4 / 255, 10, 1 / 255, 20, 1 / 255),
            # Digits (16x16 strokes, MNIST-like): 0.1 drives a standard WRN to a few % robust accuracy while
            # PGD-AT keeps most of it. Steps of 2.5 * eps / steps (Madry et al.).
            "digits": AttackDefaults(0.1, 10, 0.025, 20, 0.0125),
        },
    ),
    "l2": ThreatModel(
        name="l2",
        description="PGD in an l_2 ball (Madry et al. 2018)",
        unit="l_2 norm of the whole perturbation on the [0, 1] scale",
        perturb=pgd_l2,
        defaults={
            # The paper's code (CIFAR-10): eps 1.0, training 10 steps of 0.2, evaluation 20 steps of 0.1.
            "cifar10": AttackDefaults(1.0, 10, 0.2, 20, 0.1),
            # ImageNet-scale l2 budget of Engstrom et al.'s robustness library (224x224 inputs).
            "imagenette": AttackDefaults(3.0, 10, 0.5, 20, 0.375),
            "imagewoof": AttackDefaults(3.0, 10, 0.5, 20, 0.375),
            # Digits: 16x16x1 = 256 pixels; 1.0 in l2 is about 0.06 per pixel spread evenly.
            "digits": AttackDefaults(1.0, 10, 0.25, 20, 0.125),
        },
    ),
}


def default_eps(threat_model: str, dataset: str) -> float:
    """The paper's eps for this threat model and dataset (ours for digits)."""
    return THREAT_MODELS[threat_model].defaults[dataset].eps


def attack_schedule(threat_model: str, dataset: str, phase: str, eps: float, steps: int | None,
                    step_size: float | None) -> tuple[int, float]:
    """(steps, step size) of the ``phase`` ("train" or "eval") attack at ``eps``, defaults filled in.

    Unset steps take the threat model's default for the dataset. An unset step size is the default step
    scaled to the requested budget and step count, ``default_step * (eps / default_eps) * (default_steps /
    steps)``, so the attack travels as far relative to its ball as the tuned default does.
    """
    defaults = THREAT_MODELS[threat_model].defaults[dataset]
    default_steps = defaults.train_steps if phase == "train" else defaults.eval_steps
    default_step = defaults.train_step_size if phase == "train" else defaults.eval_step_size
    steps = steps if steps is not None else default_steps
    if step_size is None:
        step_size = default_step * (eps / defaults.eps) * (default_steps / steps)
    return steps, step_size
