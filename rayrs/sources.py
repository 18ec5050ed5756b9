"""Sources: the networks a stage runs and the images it feeds them, built from a trial's configuration.

Training (`rayrs.train`) and the similarity stage (`rayrs.similarity`) both stand on this floor; neither imports
the other. Two kinds of source feed a comparison:

- a **model source** yields a network in eval mode for an epoch, with its compared layers (`model_layers`)
  and the input normalisation it applies to its [0, 1] pixels. `TrialModel` is a trial's checkpoints: the
  architecture from the trial's configuration (`build_for`, the very network training builds) and the weights
  of an epoch from storage (`rayrs.checkpoint`). A user's own weights file is another model source with the
  same three answers.
- a **probe source** holds the probe: the same test images, in the same order, for every compared model
  (`ProbeSource`: the TEST split alone, `rayrs.data.load_test_split`, so a comparison never reads or holds the
  training split), and the attack that crafts adversarial probes on a checkpoint (`probe_attack`: the source
  trial's evaluation attack, i.e. its threat model at its evaluation eps and steps; PGD-20 in the paper).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property, partial
from typing import Any, Protocol

import torch
from torch import nn

from rayrs import checkpoint
from rayrs.attacks import THREAT_MODELS
from rayrs.config import TrialConfig
from rayrs.data import ImageDataset, TestSplit, load_test_split, to_float
from rayrs.methods import Attack
from rayrs.models import PAPER_LAYER_TYPES, Layer, build_model, model_layers
from rayrs.storage import Storage

# Either a whole dataset or its test split alone: whatever has ``test_images`` (N, C, H, W) uint8,
# ``test_labels`` (N,) int64, ``num_classes`` and ``in_channels``.
TestImages = ImageDataset | TestSplit


# -- the pieces training and comparisons share ------------------------------------------------------------
def build_for(config: TrialConfig, data: Any, device: torch.device | str) -> nn.Module:
    """The trial's freshly initialised model (seeded by ``train.seed``), on ``device``.

    ``data``: the dataset it is trained or probed on (an `ImageDataset` or `TestSplit`), which gives the
    classifier's width (``num_classes``) and the input channels (``in_channels``).
    """
    device = torch.device(device)
    torch.manual_seed(config.train.seed)
    model = build_model(
        config.model.arch,
        num_classes=data.num_classes,
        in_channels=data.in_channels,
        depth=config.model.depth,
        width=config.model.width,
        normalize=config.model.normalize,
    )
    model = model.to(device)
    if device.type == "cuda":  # tensor cores prefer NHWC; padded_crop yields it, the first conv converts the rest
        model = model.to(memory_format=torch.channels_last)
    return model


def make_attack(config: TrialConfig, phase: str, generator: torch.Generator) -> Attack:
    """The trial's ``phase`` ("train" or "eval") attack, drawing random starts from ``generator``."""
    eps, steps, step_size = config.attack_schedule(phase)
    settings = config.train.attack if phase == "train" else config.eval.attack
    return partial(
        THREAT_MODELS[config.train.threat_model].perturb,
        eps=eps,
        steps=steps,
        step_size=step_size,
        random_start=settings.random_start,
        generator=generator,
        bn_eval=settings.bn_eval,
    )


def fixed_subset(size: int, population: int, device: torch.device) -> torch.Tensor:
    """The same ``size`` example indices for every trial and epoch, so evaluations are comparable."""
    order = torch.randperm(population, generator=torch.Generator().manual_seed(0))
    return order[: min(size, population)].to(device)


# -- model sources ------------------------------------------------------------------------------------------
class ModelSource(Protocol):
    """A network to compare: its layers, what it does to its pixels, and its weights after an epoch."""

    normalize: str  # `rayrs.models.NORMALIZATIONS`: applied inside the model to its [0, 1] pixel inputs

    def layers(self, types: Any = PAPER_LAYER_TYPES) -> list[Layer]:
        """The compared layers of ``types``, in execution order (`rayrs.models.comparable_layers`)."""
        ...

    def load(self, epoch: int) -> nn.Module:
        """The network with its weights after ``epoch``, in eval mode, on the source's device."""
        ...


@dataclass(frozen=True, eq=False)
class TrialModel:
    """A trained trial's checkpoints as a model source.

    ``data`` is what the trial is probed on (its test split suffices): it sizes the classifier and the input
    channels exactly as at training time, and its device is where models are loaded.
    """

    storage: Storage
    trial: str
    config: TrialConfig
    data: Any  # TestImages

    @property
    def normalize(self) -> str:
        return self.config.model.normalize

    def layers(self, types: Any = PAPER_LAYER_TYPES) -> list[Layer]:
        return model_layers(self.config, types)

    def load(self, epoch: int) -> nn.Module:
        model = build_for(self.config, self.data, self.data.test_images.device)
        checkpoint.load_model_weights(self.storage, self.trial, epoch, model)
        return model.eval()


# -- probe sources ------------------------------------------------------------------------------------------
def load_probe_data(config: TrialConfig, device: torch.device | str) -> TestSplit:
    """The test split of the dataset a trial is probed on (`rayrs.config.probe_dataset`), alone: the
    training split is neither read nor held."""
    return load_test_split(config.data.dataset, root=config.data.root, image_size=config.data.image_size, device=device)


def probe_indices(data: Any, size: int) -> torch.Tensor:
    """(n,) int64 indices of the probe's test images, n = min(size, test set): the same for every model."""
    return fixed_subset(size, data.test_images.shape[0], data.test_images.device)


def probe_attack(config: TrialConfig, generator: torch.Generator) -> Attack:
    """The attack that crafts a trial's adversarial probes: its evaluation attack (threat model, eval eps and
    steps; PGD-20 at the training eps in the paper's settings), random starts drawn from ``generator``."""
    return make_attack(config, "eval", generator)


@dataclass(frozen=True, eq=False)
class ProbeSource:
    """The benign probe: ``size`` test images of ``data``, the same ones in the same order for every model.

    ``data``: an `ImageDataset` or a `TestSplit` (what `load_probe_data` returns); its device is the probe's.
    """

    data: Any  # TestImages
    size: int

    @classmethod
    def of(cls, config: TrialConfig, size: int, device: torch.device | str) -> ProbeSource:
        """The probe of a trial's probe dataset, loaded from its test split alone."""
        return cls(load_probe_data(config, device), size)

    @cached_property
    def indices(self) -> torch.Tensor:
        """(n,) int64 positions of the probe's images in the test split."""
        return probe_indices(self.data, self.size)

    @property
    def count(self) -> int:
        return min(self.size, self.data.test_images.shape[0])

    @cached_property
    def labels(self) -> torch.Tensor:
        """(n,) int64 true labels of the probe's images."""
        return self.data.test_labels[self.indices]

    def benign(self, positions: torch.Tensor) -> torch.Tensor:
        """(b, C, H, W) float32 in [0, 1]: the probe's images at ``positions`` (b,) of the probe, on its device."""
        return to_float(self.data.test_images[self.indices[positions.to(self.data.test_images.device)]])


__all__ = [
    "ModelSource",
    "ProbeSource",
    "TestImages",
    "TrialModel",
    "build_for",
    "fixed_subset",
    "load_probe_data",
    "make_attack",
    "probe_attack",
    "probe_indices",
]
