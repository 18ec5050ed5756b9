"""PGD stays inside its threat model, finds worse inputs than random noise, and leaves the model untouched."""

import pytest
import torch
from torch import nn

from rayrs.attacks import THREAT_MODELS, attack_schedule, default_eps
from rayrs.attacks.base import attack_mode
from rayrs.attacks.pgd import pgd_l2, pgd_linf


def small_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(32, 10)
    )


@pytest.fixture
def batch():
    generator = torch.Generator().manual_seed(1)
    images = torch.rand(16, 1, 12, 12, generator=generator)
    images[:4] = 0.0  # pixels at the edges of [0, 1] must stay inside it
    images[4:8] = 1.0
    return images, torch.randint(0, 10, (16,), generator=generator)


@pytest.mark.parametrize("eps", [0.03, 0.3])
def test_linf_pgd_stays_in_the_eps_ball_and_in_pixel_range(batch, eps):
    images, labels = batch
    adversarial = pgd_linf(small_net(), images, labels, eps=eps, steps=7, step_size=eps / 3,
                           generator=torch.Generator().manual_seed(0))
    assert (adversarial - images).abs().max() <= eps + 1e-6
    assert adversarial.min() >= 0 and adversarial.max() <= 1
    assert (adversarial - images).abs().max() > 0.5 * eps  # it moved


@pytest.mark.parametrize("eps", [0.1, 2.0])
def test_l2_pgd_stays_in_the_eps_ball_and_in_pixel_range(batch, eps):
    images, labels = batch
    adversarial = pgd_l2(small_net(), images, labels, eps=eps, steps=7, step_size=eps / 3,
                         generator=torch.Generator().manual_seed(0))
    norms = (adversarial - images).flatten(1).norm(dim=1)
    assert norms.max() <= eps * (1 + 1e-5)
    assert adversarial.min() >= 0 and adversarial.max() <= 1


@pytest.mark.parametrize("attack", [pgd_linf, pgd_l2])
def test_the_attack_raises_the_loss_far_more_than_random_noise_of_the_same_budget(batch, attack):
    images, labels = batch
    model = small_net().eval()
    eps = 0.1 if attack is pgd_linf else 1.0
    adversarial = attack(model, images, labels, eps=eps, steps=10, step_size=eps / 4, random_start=False)
    if attack is pgd_linf:
        noise = images + eps * torch.sign(torch.randn_like(images))
    else:
        direction = torch.randn_like(images)
        noise = images + eps * direction / direction.flatten(1).norm(dim=1).view(-1, 1, 1, 1)
    loss = nn.functional.cross_entropy
    with torch.no_grad():
        benign, noisy, adv = (loss(model(x.clamp(0, 1)), labels).item() for x in (images, noise, adversarial))
    assert adv - benign > 5 * abs(noisy - benign)


def test_the_attack_touches_no_parameter_gradient_and_restores_the_model(batch):
    images, labels = batch
    model = small_net().train()
    running_mean = model[1].running_mean.clone()
    pgd_linf(model, images, labels, eps=0.1, steps=3, step_size=0.03)
    assert model.training
    assert all(p.grad is None and p.requires_grad for p in model.parameters())
    assert torch.equal(model[1].running_mean, running_mean)  # BatchNorm in eval mode while attacking


def test_attack_mode_restores_state_even_after_an_error():
    model = small_net().train()
    with pytest.raises(RuntimeError), attack_mode(model):
        assert not model.training
        raise RuntimeError("boom")
    assert model.training and all(p.requires_grad for p in model.parameters())


def test_eps_zero_returns_the_benign_images(batch):
    images, labels = batch
    assert torch.equal(pgd_linf(small_net(), images, labels, eps=0, steps=5, step_size=0.1), images)


def test_every_threat_model_documents_its_unit_and_the_papers_settings():
    assert default_eps("linf", "cifar10") == pytest.approx(8 / 255)  # paper §2.3
    assert default_eps("linf", "imagenette") == pytest.approx(4 / 255)
    assert attack_schedule("linf", "cifar10", "train", 8 / 255, None, None) == (10, pytest.approx(2 / 255))  # PGD-10
    assert attack_schedule("linf", "cifar10", "eval", 8 / 255, None, None)[0] == 20  # PGD-20 at test
    assert attack_schedule("l2", "cifar10", "eval", 1.0, None, None) == (20, pytest.approx(0.1))
    for threat in THREAT_MODELS.values():
        assert threat.unit and threat.description
        assert set(threat.defaults) == {"digits", "cifar10", "imagenette", "imagewoof"}


def test_an_unset_step_size_scales_with_the_budget_and_the_step_count():
    # Half the budget and twice the steps: a quarter of the default step, the same travel relative to the ball.
    steps, step_size = attack_schedule("linf", "cifar10", "train", 4 / 255, 20, None)
    assert steps == 20 and step_size == pytest.approx(2 / 255 / 4)
    assert attack_schedule("linf", "cifar10", "train", 8 / 255, 7, 0.01) == (7, 0.01)  # explicit wins
    # Snow's variables are flake intensities in [0, 1] whatever eps is: its step does not grow with eps.
    assert attack_schedule("snow", "cifar10", "train", 1.0, None, None) == attack_schedule("snow", "cifar10", "train", 2.0, None, None)
