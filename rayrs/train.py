"""Training one trial: standard or adversarial training, evaluated and checkpointed after every epoch.

`train_trial` is a plain function (spec, storage, device) so that Ray Tune, the ``--local`` debugging mode
and a notebook all run exactly the same code. It resumes from the last complete checkpoint in storage, so a
retried or interrupted trial never redoes a finished epoch. Randomness (initial weights, data order,
augmentation, attack starts) derives from the trial's seed and the epoch number, so a resumed trial follows
the same path as an uninterrupted one.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from rayrs import checkpoint
from rayrs import storage as layout
from rayrs.attacks import THREAT_MODELS
from rayrs.config import TrialConfig, TrialSpec
from rayrs.data import DATASETS, ImageDataset, augment, load_dataset, to_float
from rayrs.errors import UserError
from rayrs.models import MODELS, build_model
from rayrs.storage import Storage

Attack = Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]  # (model, images, labels) -> adversarial


# -- training methods ---------------------------------------------------------------------------------
def standard_loss(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, attack: Attack) -> torch.Tensor:
    """Empirical risk on benign inputs."""
    return F.cross_entropy(model(images), labels)


def pgd_loss(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, attack: Attack) -> torch.Tensor:
    """Madry et al. (2018), eq. 1 of the paper: risk on the inner maximiser found by PGD-k."""
    adversarial = attack(model, images, labels)
    return F.cross_entropy(model(adversarial), labels)


@dataclass(frozen=True)
class TrainingMethod:
    name: str
    description: str
    loss: Callable[[nn.Module, torch.Tensor, torch.Tensor, Attack], torch.Tensor]


METHODS: dict[str, TrainingMethod] = {
    "standard": TrainingMethod("standard", "non-robust training on benign inputs", standard_loss),
    "pgd": TrainingMethod("pgd", "PGD adversarial training, k steps with random start (Madry et al. 2018)", pgd_loss),
}


# -- pieces of a trial ------------------------------------------------------------------------------------
def best_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def learning_rate(schedule: str, base_lr: float, progress: float) -> float:
    """Learning rate at ``progress`` = fraction of training done, in [0, 1).

    piecewise: Rice et al. (2020): base, x0.1 at 50% and x0.01 at 75% of the epochs. cosine: half a cosine
    from base to 0. constant: base.
    """
    if schedule == "piecewise":
        return base_lr * (1.0 if progress < 0.5 else 0.1 if progress < 0.75 else 0.01)
    if schedule == "cosine":
        return base_lr * 0.5 * (1 + math.cos(math.pi * progress))
    return base_lr


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


def autocast(device: torch.device, precision: str):
    """bf16 autocast on CUDA (``auto`` or ``bf16``); plain fp32 elsewhere."""
    if device.type == "cuda" and precision in ("auto", "bf16"):
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return nullcontext()


def epoch_generator(seed: int, epoch: int, device: torch.device) -> torch.Generator:
    """The random stream of one epoch: the same for a resumed trial as for an uninterrupted one."""
    return torch.Generator(device=device).manual_seed(seed * 100_003 + epoch)


def fixed_subset(size: int, population: int, device: torch.device) -> torch.Tensor:
    """The same ``size`` example indices for every trial and epoch, so evaluations are comparable."""
    order = torch.randperm(population, generator=torch.Generator().manual_seed(0))
    return order[: min(size, population)].to(device)


def train_epoch(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    data: ImageDataset,
    config: TrialConfig,
    epoch: int,
    attack: Attack,
    generator: torch.Generator,
) -> float:
    """One pass over the training set with the trial's method; returns the mean training objective."""
    settings = config.train
    method = METHODS[settings.method]
    device = data.train_images.device
    total = data.train_images.shape[0]
    order = torch.randperm(total, generator=generator, device=device)
    batches = [b for b in order.split(settings.batch_size) if b.numel() > 1]  # BatchNorm needs 2+ examples
    dataset = DATASETS[config.data.dataset]
    objective = torch.zeros((), device=device)
    model.train()
    for step, batch in enumerate(batches):
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(settings.schedule, settings.lr, (epoch - 1 + step / len(batches)) / settings.epochs)
        images = to_float(data.train_images[batch])
        if settings.augment:
            images = augment(images, generator=generator, crop_padding=dataset.crop_padding, flip=dataset.flip)
        labels = data.train_labels[batch]
        with autocast(device, settings.precision):
            loss = method.loss(model, images, labels, attack)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        objective += loss.detach() * batch.numel()  # no .item(): the GPU never waits for the host here
    return objective.item() / sum(b.numel() for b in batches)


def evaluate(
    model: nn.Module, images: torch.Tensor, labels: torch.Tensor, attack: Attack, batch_size: int, precision: str
) -> dict[str, float]:
    """Clean and robust accuracy and mean loss of ``model`` on uint8 ``images`` (N, C, H, W)."""
    model.eval()
    sums = torch.zeros(4, dtype=torch.float64, device=images.device)  # clean/robust correct, clean/robust loss
    for batch in torch.arange(images.shape[0], device=images.device).split(batch_size):
        x, y = to_float(images[batch]), labels[batch]
        adversarial = attack(model, x, y)
        with torch.no_grad(), autocast(images.device, precision):
            for i, inputs in enumerate((x, adversarial)):
                logits = model(inputs).float()
                sums[i] += (logits.argmax(1) == y).sum()
                sums[2 + i] += F.cross_entropy(logits, y, reduction="sum")
    clean_correct, robust_correct, clean_loss, robust_loss = (sums / images.shape[0]).tolist()
    return {"clean_acc": clean_correct, "robust_acc": robust_correct, "clean_loss": clean_loss, "robust_loss": robust_loss}


def build_for(config: TrialConfig, data: ImageDataset, device: torch.device) -> nn.Module:
    """The trial's freshly initialised model (seeded), on ``device``."""
    torch.manual_seed(config.train.seed)
    model = build_model(
        config.model.arch,
        num_classes=data.num_classes,
        in_channels=data.in_channels,
        depth=config.model.depth,
        width=config.model.width,
    )
    return model.to(device)


def load_trial_data(config: TrialConfig, device: torch.device) -> ImageDataset:
    return load_dataset(config.data.dataset, root=config.data.root, image_size=config.data.image_size, device=device)


def trial_record(spec: TrialSpec) -> dict[str, Any]:
    """What ``trial.json`` holds and every metrics row repeats: the trial's identity and key parameters."""
    config = spec.config
    return {
        "experiment": spec.experiment,
        "trial": spec.name,
        "fingerprint": spec.fingerprint,
        "axes": spec.axes,
        "config": config.model_dump(mode="json"),
        "dataset": config.data.dataset,
        "arch": config.model.arch,
        "depth": config.model.depth if config.model.depth is not None else MODELS[config.model.arch].default_depth,
        "width": config.model.width if config.model.width is not None else MODELS[config.model.arch].default_width,
        "method": config.train.method,
        "threat_model": config.train.threat_model,
        "eps": config.train.eps,
        "seed": config.train.seed,
    }


# -- the trial ----------------------------------------------------------------------------------------------
def train_trial(
    spec: TrialSpec,
    storage: Storage,
    device: torch.device | str | None = None,
    report: Callable[[dict[str, Any]], None] = lambda metrics: None,
) -> list[dict[str, Any]]:
    """Train ``spec`` to its last epoch, checkpointing every epoch under ``storage``; resume if started before.

    ``report`` receives each new epoch's metrics (Ray Tune's ``tune.report`` in a sweep). Returns the metrics of
    the epochs trained by this call.
    """
    device = torch.device(device) if device is not None else best_device()
    config = spec.config
    _claim_trial(storage, spec)
    data = load_trial_data(config, device)
    model = build_for(config, data, device)
    optimizer = torch.optim.SGD(
        model.parameters(), lr=config.train.lr, momentum=config.train.momentum, weight_decay=config.train.weight_decay
    )
    done = checkpoint.completed_epochs(storage, spec.name)
    if done:
        checkpoint.restore(storage, spec.name, done[-1], model, optimizer)
    train_subset = fixed_subset(config.eval.train_subset, data.train_images.shape[0], device)
    test_subset = fixed_subset(config.eval.test_subset, data.test_images.shape[0], device)
    history = []
    for epoch in range((done[-1] if done else 0) + 1, config.train.epochs + 1):
        started = time.perf_counter()
        generator = epoch_generator(config.train.seed, epoch, device)
        train_attack = make_attack(config, "train", generator)
        objective = train_epoch(model, optimizer, data, config, epoch, train_attack, generator)
        eval_attack = make_attack(config, "eval", generator)
        metrics: dict[str, Any] = {
            "epoch": epoch,
            "lr": optimizer.param_groups[0]["lr"],
            "train_objective": objective,
            "eval_eps": config.eval_eps,
        }
        for split, images, labels, subset in (
            ("train", data.train_images, data.train_labels, train_subset),
            ("test", data.test_images, data.test_labels, test_subset),
        ):
            scores = evaluate(model, images[subset], labels[subset], eval_attack, config.eval.batch_size, config.train.precision)
            metrics.update({f"{split}_{name}": value for name, value in scores.items()})
        metrics["epoch_seconds"] = time.perf_counter() - started
        checkpoint.save_epoch(storage, spec.name, epoch, model, optimizer, {"metrics": metrics, "device": str(device)})
        report(metrics)
        history.append(metrics)
    return history


def _claim_trial(storage: Storage, spec: TrialSpec) -> None:
    """Write trial.json, or check that existing checkpoints belong to this very trial."""
    path = layout.trial_spec(spec.name)
    if storage.exists(path):
        existing = storage.read_json(path).get("fingerprint")
        if existing != spec.fingerprint:
            raise UserError(
                f"{storage.full_path(path)} belongs to a different configuration of trial {spec.name!r} "
                f"(fingerprint {existing} != {spec.fingerprint}); rerun with --redo {spec.name} to retrain it"
            )
        return
    storage.write_json(path, trial_record(spec))
