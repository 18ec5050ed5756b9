"""Probes: the inputs fed to the compared models. Benign test images, or the same images attacked on a checkpoint.

Every probe of an experiment holds the same ``size`` test images in the same order (`probe_indices`), so the
i-th input of every probe is the same example, as CKA needs. An adversarial probe is crafted once per
(checkpoint, threat model, eps, attack steps) with that trial's evaluation attack (`rayrs.sources.probe_attack`:
PGD-20 in its own threat model at its evaluation eps, in the paper's settings) and cached at
``probes/<probe id>.safetensors`` (`rayrs.storage.probe`), which every later job reads instead of attacking
again. The probe id (`rayrs.schema`) is ``adversarial:<trial>@<epoch>:<threat_model>:<eps>:<steps>``.

The cached images are float32, not uint8: an attack step moves a pixel by a fraction of 1/255 (2/255 steps
clipped to an 8/255 ball, or l2 steps spread over every pixel), so rounding to 8 bits changes the very inputs
whose representations and accuracy are measured, and can even leave the eps-ball; float16 would too, by up to
1/4096 near 1. float32 is exactly what the attack returned (12.6 MB for 1024 CIFAR-10 images).

A file is written atomically (`Storage.write_bytes`), so two tasks crafting the same probe at once both leave
a complete, correct file: the last rename wins and the two are the same attack on the same checkpoint.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Callable
from dataclasses import dataclass

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors
from torch import nn

from rayrs import storage as layout
from rayrs.checkpoint import read_stamp, stamp
from rayrs.config import TrialConfig
from rayrs.data import to_float
from rayrs.sources import TestImages, probe_attack, probe_indices
from rayrs.storage import Storage

BENIGN = "benign"
ADVERSARIAL = "adversarial"


@dataclass(frozen=True)
class AdversarialProbe:
    """The probe's test images attacked on checkpoint ``trial``@``epoch`` with that trial's evaluation attack.

    ``eps`` is on the threat model's scale ([0, 1] pixels for linf and l2); ``size`` is the number of probe
    images. ``fingerprint`` pins the trial's configuration (and with it the attack's step size and start).
    """

    trial: str
    epoch: int
    fingerprint: str
    threat_model: str
    eps: float
    steps: int
    step_size: float
    size: int

    @classmethod
    def of(cls, trial: str, epoch: int, config: TrialConfig, size: int, fingerprint: str | None = None) -> AdversarialProbe:
        """``fingerprint``: the model's (`rayrs.similarity.plan.ModelRef`), default the trial configuration's; a
        model entry's hashes its weights files, so a probe cached for other weights is crafted again."""
        eps, steps, step_size = config.attack_schedule("eval")
        return cls(trial, epoch, fingerprint or config.fingerprint(), config.train.threat_model, eps, steps, step_size,
                   size)

    @property
    def id(self) -> str:
        return f"{ADVERSARIAL}:{self.trial}@{self.epoch}:{self.threat_model}:{self.eps:g}:{self.steps}"

    @property
    def path(self) -> str:
        return layout.probe(self.id)

    def metadata(self) -> dict[str, str]:
        """What the cached file must match to be reused (safetensors metadata is str -> str)."""
        return {
            "probe": self.id,
            "fingerprint": self.fingerprint,
            "size": str(self.size),
            "eps": repr(self.eps),
            "step_size": repr(self.step_size),
        }


def benign_probe(data: TestImages, size: int) -> torch.Tensor:
    """The benign probe: (n, C, H, W) uint8 test images on the data's device."""
    return data.test_images[probe_indices(data, size)]


def craft(probe: AdversarialProbe, model: nn.Module, config: TrialConfig, data: TestImages) -> torch.Tensor:
    """Attack the probe's test images on ``model`` (the checkpoint ``probe`` names, in eval mode).

    Returns (n, C, H, W) float32 in [0, 1] on the data's device. Random starts come from a generator seeded
    by the probe id, so crafting the same probe twice gives the same images on the same device.
    """
    device = data.test_images.device
    indices = probe_indices(data, probe.size)
    seed = int.from_bytes(hashlib.sha256(probe.id.encode()).digest()[:7], "little")
    attack = probe_attack(config, torch.Generator(device=device).manual_seed(seed))
    batches = [
        attack(model, to_float(data.test_images[batch]), data.test_labels[batch])
        for batch in indices.split(config.eval.batch_size)
    ]
    return torch.cat(batches).float()


def adversarial_probe(
    probe: AdversarialProbe,
    storage: Storage,
    data: TestImages,
    config: TrialConfig,
    load_model: Callable[[], nn.Module],
) -> tuple[torch.Tensor, bool]:
    """The probe's images from the cache, or crafted (and cached) if absent or made for other settings.

    ``load_model`` returns the source checkpoint's model; it is only called when crafting.
    Returns ((n, C, H, W) float32 on the CPU, whether it was crafted now). The CPU, because a task may hold one
    probe per epoch (adversarial cross_epoch) and moves only a minibatch at a time to the device.
    """
    cached = read_probe(probe, storage)
    if cached is not None:
        return cached, False
    images = craft(probe, load_model(), config, data).cpu()
    tensors = {"images": images.contiguous(), "indices": probe_indices(data, probe.size).cpu()}
    storage.write_bytes(probe.path, save_safetensors(tensors, metadata=stamp(probe.metadata())))
    return images, True


def read_probe(probe: AdversarialProbe, storage: Storage) -> torch.Tensor | None:
    """The cached images of ``probe`` on the CPU, or None when there is no usable file for these settings
    (absent, unreadable, or made by an older run with another probe size or attack: crafting replaces it)."""
    if not storage.exists(probe.path):
        return None
    raw = storage.read_bytes(probe.path)
    try:
        if read_stamp(raw) != probe.metadata():
            return None
        return load_safetensors(raw)["images"]
    except (SafetensorError, KeyError, ValueError, struct.error):
        return None
