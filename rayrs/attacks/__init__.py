"""Threat models, picked by name in a sweep file (``train.threat_model``).

Each threat model turns benign images into adversarial ones inside its own constraint set. ``eps`` is on the
threat model's own scale, documented in `ThreatModel.unit`; for ``linf`` and ``l2`` that is the [0, 1] pixel
scale. Attacks always use the true labels, run on whatever device the images are on, and never touch the
model's parameter gradients.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from rayrs.attacks.gabor import gabor_attack, gabor_sparse_attack
from rayrs.attacks.jpeg import jpeg_l2, jpeg_unblurred_l2
from rayrs.attacks.pgd import pgd_l2, pgd_linf
from rayrs.attacks.snow import snow_attack, snow_projected_attack


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
    # The largest eps with a meaning, for inputs of ``values`` = C x H x W numbers: past it the constraint set
    # holds every image (linf, l2, jpeg) or the rendering saturates (gabor, snow). Sweep files are checked
    # against [0, max_eps] (rayrs.config), so that eps 300 under linf is refused, not trained. Required: a
    # threat model without a range would take any eps.
    max_eps: Callable[[int], float]
    defaults: dict[str, AttackDefaults] = field(default_factory=dict)  # per dataset: the paper's settings, digits ours
    # Whether the attack's variables live in the eps-ball (linf, l2, jpeg), so that an unset step size should
    # grow with eps; Gabor and Snow optimise variables in a fixed range and eps scales what they render.
    step_scales_with_eps: bool = True

    def eps_range(self, values: int) -> tuple[float, float]:
        """The eps range ``(0, max_eps)`` for inputs of ``values`` = C x H x W numbers."""
        return 0.0, self.max_eps(values)


def _jpeg_max_eps(values: int) -> float:
    """|v| <= 2 on each of at most ``values`` coefficients: past this l_2 norm the ball holds every image."""
    return 2 * math.sqrt(values)


_JPEG_DEFAULTS = {  # jpeg and jpeg_unblurred
    # The paper's code (opt: l2): eps 25, training 4 steps of 1.6, evaluation 10 steps of 1.0.
    "cifar10": AttackDefaults(25.0, 4, 1.6, 10, 1.0),
    # Ours: 224x224 has 49x the coefficients of 32x32, so the budget grows 7x (their square root), and each
    # coefficient's share is halved as the paper halves l_inf (8/255 -> 4/255): 25 * 7 / 2; steps alike.
    "imagenette": AttackDefaults(87.5, 4, 5.6, 10, 3.5),
    "imagewoof": AttackDefaults(87.5, 4, 5.6, 10, 3.5),
    # Ours (16x16 grey, 256 coefficients): a standard WRN-10 falls from ~96% to 0-13%; a random v of the
    # same norm costs nothing.
    "digits": AttackDefaults(16.0, 4, 4.0, 10, 3.0),
}


THREAT_MODELS: dict[str, ThreatModel] = {
    "linf": ThreatModel(
        name="linf",
        description="PGD in an l_inf ball (Madry et al. 2018)",
        unit="max per-pixel change on the [0, 1] scale",
        perturb=pgd_linf,
        max_eps=lambda values: 1.0,  # a change of 1 per pixel reaches every image in [0, 1]
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
        max_eps=math.sqrt,  # the diameter of [0, 1]^values
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
    # The unforeseen threat models of Kang et al. (2019), in their units (rayrs/attacks/{jpeg,gabor,snow}.py). Steps
    # are the paper's code's: 4 in training, 10 in evaluation (configs_cifar.yml, TrainAttack / EvalAttack). For
    # gabor and snow eps scales the rendered noise, not the variables' range (step_scales_with_eps=False). The
    # paper's names behave as its code does; gabor_sparse and snow_projected are rayrs's earlier definitions.
    "jpeg": ThreatModel(
        name="jpeg",
        description="PGD on the quantised JPEG coefficients, l_2 variant, as the paper's code runs it (Kang et al. "
        "2019): the benign image's colour 4:2:0-blurred even where nothing moves",
        unit="l_2 norm of Kang et al.'s JPEG variable v over an image's quantised 8x8-block DCT coefficients "
        "(Y, and Cb/Cr at 4:2:0; pixels on the 0-255 scale); a coefficient moves by v/2 quantisation steps, "
        "at most one after every step",
        perturb=jpeg_l2,
        max_eps=_jpeg_max_eps,
        defaults=_JPEG_DEFAULTS,
    ),
    # rayrs's reading of Kang et al.'s definition, kept for researchers who want the threat model without the
    # paper code's accidents (rayrs/attacks/jpeg.py): a zero move gives back the benign image, the first gradient
    # is taken at the start, the start is projected. Same units and settings as jpeg.
    "jpeg_unblurred": ThreatModel(
        name="jpeg_unblurred",
        description="PGD on the quantised JPEG coefficients, l_2 variant, the move added to the unmodified benign "
        "image (jpeg without the paper code's chroma blur, first-step scaling and unclipped start)",
        unit="l_2 norm of Kang et al.'s JPEG variable v over an image's quantised 8x8-block DCT coefficients "
        "(Y, and Cb/Cr at 4:2:0; pixels on the 0-255 scale); a coefficient moves by v/2 quantisation steps, "
        "at most one",
        perturb=jpeg_unblurred_l2,
        max_eps=_jpeg_max_eps,
        defaults=_JPEG_DEFAULTS,
    ),
    "gabor": ThreatModel(
        name="gabor",
        description="Adversarial Gabor noise as the paper's code runs it: variables off a sparse grid, convolved "
        "with a random Gabor kernel per image (Kang et al. 2019)",
        unit="amplitude of the [0, 1]-normalised Gabor noise on the 0-255 pixel scale (pixels brighten by at most "
        "eps/255); steps act on the variables, in [-1, 1]",
        perturb=gabor_attack,
        max_eps=lambda values: 255.0,  # the 0-255 scale: the noise's unit then spans every pixel value
        defaults={
            # The paper's code: eps 75, training 4 steps of 0.08, evaluation 10 steps of 0.05.
            "cifar10": AttackDefaults(75.0, 4, 0.08, 10, 0.05),
            # Ours: the amplitude halved as the paper halves l_inf; steps act on [-1, 1] whatever the resolution.
            "imagenette": AttackDefaults(37.5, 4, 0.08, 10, 0.05),
            "imagewoof": AttackDefaults(37.5, 4, 0.08, 10, 0.05),
            # The paper's settings (16x16 grey): a standard WRN-10-1 falls from 96% to 11% (256 test digits);
            # the drawn grid's own noise costs 18 points. Steps of 0.3 clamp the variables and do worse (17%).
            "digits": AttackDefaults(75.0, 4, 0.08, 10, 0.05),
        },
        step_scales_with_eps=False,
    ),
    "gabor_sparse": ThreatModel(
        name="gabor_sparse",
        description="Adversarial Gabor noise with its variables on the sparse grid, as Kang et al.'s paper and Co "
        "et al. describe it (the paper's code optimises every other pixel: gabor); a weaker attack",
        unit="as gabor; steps act on the grid values, in [-1, 1]",
        perturb=gabor_sparse_attack,
        max_eps=lambda values: 255.0,  # as gabor
        defaults={
            "cifar10": AttackDefaults(75.0, 4, 0.08, 10, 0.05),
            "imagenette": AttackDefaults(37.5, 4, 0.08, 10, 0.05),
            "imagewoof": AttackDefaults(37.5, 4, 0.08, 10, 0.05),
            # Ours (16x16 grey, ~18 grid points, so larger steps): a standard WRN-10-1 falls from 96% to 31%;
            # the grid's start values cost 18 points.
            "digits": AttackDefaults(75.0, 4, 0.3, 10, 0.3),
        },
        step_scales_with_eps=False,
    ),
    "snow": ThreatModel(
        name="snow",
        description="Adversarial snowflakes as the paper's code runs them: motion-blurred streaks, flake budget "
        "0.15 rescaled after each step but the last (Kang et al. 2019)",
        unit="brightness of the snow layer on the [0, 1] pixel scale (a flake of intensity 1 adds eps times its "
        "streak, peak 0.65-1); steps act on the flake intensities, rescaled to mean at most 0.15 but the last",
        perturb=snow_attack,
        # Past 16 a flake of half intensity (brightness 0.5^4 = 1/16) already turns its streak's peak white:
        # only the dimmest flakes still change. The paper uses 2 on CIFAR-10.
        max_eps=lambda values: 16.0,
        defaults={
            # The paper's code (budget 0.15): eps 2.0, training 4 steps of 0.16, evaluation 10 steps of 0.1.
            "cifar10": AttackDefaults(2.0, 4, 0.16, 10, 0.1),
            # Ours: the brightness halved as the paper halves l_inf; steps act on [0, 1] whatever the resolution.
            "imagenette": AttackDefaults(1.0, 4, 0.16, 10, 0.1),
            "imagewoof": AttackDefaults(1.0, 4, 0.16, 10, 0.1),
            # Ours (16x16 grey, one budget region): the evaluation attack takes a standard WRN-10-1 from 96% to
            # 23% (256 test digits); random flakes of the same budget cost 36 points (13 px streaks on a 16 px
            # digit look like strokes). Steps of 0.1 lose to random snow here (80%): each rescale dims the flakes
            # and the free last step is too short to matter. Training steps are half as long: the free last step
            # sets how bright the snow gets, and 4 x 0.25 (or 2 x 0.5) whitens digits until training fails (2 x
            # 0.5: 8% clean); 4 x 0.125 trains a WRN-10-1 to 80% clean, 66% under the evaluation attack.
            "digits": AttackDefaults(0.5, 4, 0.125, 10, 0.25),
        },
        step_scales_with_eps=False,
    ),
    "snow_projected": ThreatModel(
        name="snow_projected",
        description="Adversarial snowflakes that never leave the flake budget: the exact projection after every "
        "step (rayrs's earlier definition; the paper's code rescales and leaves the last step free: snow)",
        unit="as snow; the intensities stay in [0, 1] with every region mean at most 0.15",
        perturb=snow_projected_attack,
        max_eps=lambda values: 16.0,  # as snow
        defaults={
            "cifar10": AttackDefaults(2.0, 4, 0.16, 10, 0.1),
            "imagenette": AttackDefaults(1.0, 4, 0.16, 10, 0.1),
            "imagewoof": AttackDefaults(1.0, 4, 0.16, 10, 0.1),
            # Ours, as snow's evaluation: a standard WRN-10-1 falls from 96% to 45%; projected random flakes cost
            # 23 points. Training as rayrs's earlier snow did.
            "digits": AttackDefaults(0.5, 4, 0.25, 10, 0.25),
        },
        step_scales_with_eps=False,
    ),
}


# Datasets attacked with another's settings: a user's own image folder (rayrs.data's image_folder) is resized
# to 224 px as the paper's ImageNet subsets are, so it takes their budgets and steps.
SETTINGS_OF = {"image_folder": "imagenette"}


def _defaults(threat: ThreatModel, dataset: str) -> AttackDefaults:
    return threat.defaults[SETTINGS_OF.get(dataset, dataset)]


def default_eps(threat_model: str, dataset: str) -> float:
    """The paper's eps for this threat model and dataset (ours for digits; Imagenette's for image_folder)."""
    return _defaults(THREAT_MODELS[threat_model], dataset).eps


def attack_schedule(threat_model: str, dataset: str, phase: str, eps: float, steps: int | None,
                    step_size: float | None) -> tuple[int, float]:
    """(steps, step size) of the ``phase`` ("train" or "eval") attack at ``eps``, defaults filled in.

    Unset steps take the threat model's default for the dataset. An unset step size is the default step
    scaled to the requested budget and step count, ``default_step * (eps / default_eps) * (default_steps /
    steps)``, so the attack travels as far relative to its ball as the tuned default does (without the eps
    factor for threat models whose variables do not live in the eps-ball: Gabor, Snow).
    """
    threat = THREAT_MODELS[threat_model]
    defaults = _defaults(threat, dataset)
    default_steps = defaults.train_steps if phase == "train" else defaults.eval_steps
    default_step = defaults.train_step_size if phase == "train" else defaults.eval_step_size
    steps = steps if steps is not None else default_steps
    if step_size is None:
        budget = eps / defaults.eps if threat.step_scales_with_eps else 1.0
        step_size = default_step * budget * (default_steps / steps)
    return steps, step_size
