"""Training methods, picked by name in a sweep file (``train.method``): each is a loss and its defaults.

A method's loss takes (model, benign images, true labels, the trial's training attack, the train settings)
and returns the mean objective of the minibatch, with the model in train mode. The registry `METHODS` sits
below `rayrs.config`, which validates ``train.method`` against it and fills each method's default weight
decay and schedule; `rayrs.train` runs the chosen loss.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from rayrs.attacks.base import attack_mode

if TYPE_CHECKING:  # the settings type only: config imports this module, not the other way round
    from rayrs.config import TrainConfig

Attack = Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]  # (model, images, labels) -> adversarial


def standard_loss(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, attack: Attack, train: TrainConfig) -> torch.Tensor:
    """Empirical risk on benign inputs."""
    return F.cross_entropy(model(images), labels)


def pgd_adversarial(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, attack: Attack, train: TrainConfig) -> torch.Tensor:
    """PGD-AT's inner maximiser: the trial's attack as configured (PGD-k on the cross-entropy)."""
    return attack(model, images, labels)


def pgd_loss(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, attack: Attack, train: TrainConfig) -> torch.Tensor:
    """Madry et al. (2018), eq. 1 of the paper: risk on the inner maximiser found by PGD-k."""
    adversarial = pgd_adversarial(model, images, labels, attack, train)
    return F.cross_entropy(model(adversarial), labels)


def fast_adversarial(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, attack: Attack, train: TrainConfig) -> torch.Tensor:
    """Fast AT's inner maximiser: one FGSM step of 1.25 eps from a uniform random start (Wong et al. 2020)."""
    return attack(model, images, labels, steps=1, step_size=1.25 * train.eps, random_start=True)


def fast_loss(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, attack: Attack, train: TrainConfig) -> torch.Tensor:
    """Wong et al. (2020), "Fast is better than free": FGSM from a uniform random start, one step of 1.25 eps."""
    adversarial = fast_adversarial(model, images, labels, attack, train)
    return F.cross_entropy(model(adversarial), labels)


def trades_adversarial(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, attack: Attack, train: TrainConfig) -> torch.Tensor:
    """TRADES' inner maximiser: x' maximising KL(f(x) || f(x')) in the ball, f(x) taken once, without gradient.

    The inner maximisation starts uniformly inside the ball (as PGD does) rather than at x + 0.001 N(0, I):
    both only serve to leave x' = x, where the KL term has zero gradient.
    """
    with torch.no_grad(), attack_mode(model, train.attack.bn_eval):
        benign_probabilities = F.softmax(model(images).float(), dim=1)

    def divergence_from_benign(adversarial_logits: torch.Tensor, _labels: torch.Tensor) -> torch.Tensor:
        log_probabilities = F.log_softmax(adversarial_logits.float(), dim=1)
        return F.kl_div(log_probabilities, benign_probabilities, reduction="sum")

    return attack(model, images, labels, objective=divergence_from_benign)


def trades_loss(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, attack: Attack, train: TrainConfig) -> torch.Tensor:
    """Zhang et al. (2019): CE(f(x), y) + beta * KL(f(x) || f(x')), x' maximising the KL term in the ball
    (`trades_adversarial`)."""
    adversarial = trades_adversarial(model, images, labels, attack, train)
    logits = model(images)
    adversarial_log_probabilities = F.log_softmax(model(adversarial).float(), dim=1)
    robust_term = F.kl_div(adversarial_log_probabilities, F.softmax(logits.float(), dim=1), reduction="batchmean")
    return F.cross_entropy(logits, labels) + train.trades_beta * robust_term


@dataclass(frozen=True)
class TrainingMethod:
    name: str
    description: str
    loss: Callable[[nn.Module, torch.Tensor, torch.Tensor, Attack, TrainConfig], torch.Tensor]
    weight_decay: float  # the method's default (train.weight_decay overrides)
    schedule: str  # the method's default learning-rate schedule (train.schedule overrides)
    # The adversarial images the loss trains on, from the same arguments (None: standard training has none).
    # CKA-guided freezing attacks its probe with it (`rayrs.freezing`), so each method is probed by its own attack.
    adversarial: Callable[[nn.Module, torch.Tensor, torch.Tensor, Attack, TrainConfig], torch.Tensor] | None = None


METHODS: dict[str, TrainingMethod] = {
    method.name: method
    for method in (
        TrainingMethod("standard", "non-robust training on benign inputs", standard_loss, 5e-4, "piecewise"),
        TrainingMethod("pgd", "PGD adversarial training, k steps from a random start (Madry et al. 2018)", pgd_loss,
                       5e-4, "piecewise", pgd_adversarial),
        TrainingMethod("trades", "TRADES: CE + beta * KL(f(x) || f(x')) (Zhang et al. 2019; weight decay 2e-4)",
                       trades_loss, 2e-4, "piecewise", trades_adversarial),
        TrainingMethod("fast", "FGSM from a random start, step 1.25 eps, cyclic lr (Wong et al. 2020)", fast_loss,
                       5e-4, "cyclic", fast_adversarial),
    )
}
