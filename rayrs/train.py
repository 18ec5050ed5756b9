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
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from rayrs import checkpoint
from rayrs import storage as layout
from rayrs.catalog import read_trial_record
from rayrs.config import TrainConfig, TrialConfig, TrialSpec
from rayrs.data import DATASETS, ImageDataset, load_dataset, to_float
from rayrs.errors import UserError
from rayrs.freezing import GuidedFreezing, probe_generator
from rayrs.methods import METHODS, Attack, TrainingMethod
from rayrs.models import MODELS, comparable_layers
from rayrs.sources import build_for, fixed_subset, make_attack
from rayrs.storage import Storage


# -- pieces of a trial ------------------------------------------------------------------------------------
def best_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def learning_rate(schedule: str, base_lr: float, progress: float) -> float:
    """Learning rate at ``progress`` = fraction of training done, in [0, 1).

    piecewise: Rice et al. (2020): base, x0.1 at 50% and x0.01 at 75% of the epochs. cosine: half a cosine
    from base to 0. cyclic: one triangle from 0 up to base at 40% of training and back to 0 (Wong et al.
    2020). constant: base.
    """
    if schedule == "piecewise":
        return base_lr * (1.0 if progress < 0.5 else 0.1 if progress < 0.75 else 0.01)
    if schedule == "cosine":
        return base_lr * 0.5 * (1 + math.cos(math.pi * progress))
    if schedule == "cyclic":
        peak = 0.4
        return base_lr * (progress / peak if progress < peak else (1 - progress) / (1 - peak))
    return base_lr


def autocast(device: torch.device, precision: str):
    """bf16 autocast on CUDA (``auto`` or ``bf16``); plain fp32 elsewhere."""
    if device.type == "cuda" and precision in ("auto", "bf16"):
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return nullcontext()


def epoch_generator(seed: int, epoch: int, device: torch.device) -> torch.Generator:
    """The random stream of one epoch: the same for a resumed trial as for an uninterrupted one."""
    return torch.Generator(device=device).manual_seed(seed * 100_003 + epoch)


def train_epoch(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    data: ImageDataset,
    config: TrialConfig,
    epoch: int,
    attack: Attack,
    generator: torch.Generator,
    frozen: Sequence[nn.Module] = (),
) -> float:
    """One pass over the training set with the trial's method; returns the mean training objective.

    ``frozen`` modules keep their BatchNorm statistics (eval mode); their parameters must already have
    ``requires_grad`` off, so the optimiser skips them (no update, no weight decay).
    """
    settings = config.train
    method = METHODS[settings.method]
    device = data.train_images.device
    total = data.train_images.shape[0]
    order = torch.randperm(total, generator=generator, device=device)
    batches = [b for b in order.split(settings.batch_size) if b.numel() > 1]  # BatchNorm needs 2+ examples
    dataset = DATASETS[config.data.dataset]
    objective = torch.zeros((), device=device)
    model.train()
    for module in frozen:
        module.eval()
    for step, batch in enumerate(batches):
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(settings.schedule, settings.lr, (epoch - 1 + step / len(batches)) / settings.epochs)
        # The dataset's own training transform (rayrs.data registry), batched on the device.
        images = dataset.augmentation(data, batch, generator) if settings.augment else to_float(data.train_images[batch])
        loss = train_step(model, optimizer, images, data.train_labels[batch], method, attack, settings)
        objective += loss * batch.numel()  # no .item(): the GPU never waits for the host here
    return objective.item() / sum(b.numel() for b in batches)


def train_step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    images: torch.Tensor,
    labels: torch.Tensor,
    method: TrainingMethod,
    attack: Attack,
    settings: TrainConfig,
) -> torch.Tensor:
    """One optimiser step of ``method`` on a minibatch already on the device; returns the detached loss.

    images: (B, C, H, W) float in [0, 1] (augmented); labels: (B,) int64.
    """
    with autocast(images.device, settings.precision):
        loss = method.loss(model, images, labels, attack, settings)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss.detach()


def strongest_of(attack: Attack, restarts: int) -> Attack:
    """``attack`` run ``restarts`` times, keeping per example the run that fools the model (else the highest loss).

    The model must already be in the mode it is evaluated in.
    """
    if restarts == 1:
        return attack

    def run(model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        best, best_fooled, best_loss = None, None, None
        for _ in range(restarts):
            candidate = attack(model, images, labels)
            with torch.no_grad():
                logits = model(candidate).float()
            fooled, loss = logits.argmax(1) != labels, F.cross_entropy(logits, labels, reduction="none")
            if best is None:
                best, best_fooled, best_loss = candidate, fooled, loss
                continue
            better = (fooled & ~best_fooled) | ((fooled == best_fooled) & (loss > best_loss))
            best = torch.where(better.view(-1, 1, 1, 1), candidate, best)
            best_fooled, best_loss = best_fooled | fooled, torch.where(better, loss, best_loss)
        return best

    return run


def evaluate(
    model: nn.Module, images: torch.Tensor, labels: torch.Tensor, attack: Attack, batch_size: int, precision: str
) -> dict[str, float | int]:
    """Clean and robust accuracy and mean loss of ``model`` on uint8 ``images`` (N, C, H, W), and ``examples``:
    N, the count each accuracy is a fraction of (what its binomial interval needs)."""
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
    return {"clean_acc": clean_correct, "robust_acc": robust_correct, "clean_loss": clean_loss, "robust_loss": robust_loss,
            "examples": int(images.shape[0])}


def frozen_prefix(model: nn.Module, example: torch.Tensor, through: str) -> list[nn.Module]:
    """The modules of every compared layer up to and including the last one named ``through...`` (App. D.5).

    example: (B, C, H, W) float, any B >= 2; used once to trace the layer order.
    """
    layers = comparable_layers(model, example)
    matches = [layer.index for layer in layers if layer.name.startswith(through)]
    if not matches:
        prefixes = dict.fromkeys(layer.name.split(".")[0] for layer in layers)  # in network order
        raise UserError(f"train.freeze.through: no layer name starts with {through!r}; layers start with: {', '.join(prefixes)}")
    modules = dict(model.named_modules())
    return list({id(m): m for m in (modules[layer.module_name] for layer in layers[: matches[-1] + 1])}.values())


def freeze_probe_attack(config: TrialConfig, device: torch.device) -> Attack:
    """The adversarial probe's attack: the method's own inner maximiser (`TrainingMethod.adversarial`: PGD-k for
    PGD-AT, the KL attack for TRADES, one FGSM step for fast AT) with the trial's training attack settings, its
    random starts from `probe_generator` (the same at every call). Only for robust trials."""
    method = METHODS[config.train.method]
    attack = make_attack(config, "train", probe_generator(config.train.seed, device))
    return lambda model, images, labels: method.adversarial(model, images, labels, attack, config.train)


def guided_freezing(config: TrialConfig, model: nn.Module, data: ImageDataset, device: torch.device) -> GuidedFreezing:
    """The trial's CKA-guided freezing (`rayrs.freezing`), probing with its training method's attack when it is robust."""
    attack = (lambda: freeze_probe_attack(config, device)) if config.train.robust else None
    return GuidedFreezing(config.train.freeze.auto, model, data.train_images, data.train_labels, config.train.seed,
                          config.train.epochs, attack)


def load_trial_data(config: TrialConfig, device: torch.device) -> ImageDataset:
    """The trial's dataset, both splits, on ``device`` (comparisons read the test split alone:
    `rayrs.sources.load_probe_data`)."""
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
        "freeze": trial_freeze(config),
    }


def trial_freeze(config: TrialConfig) -> str | None:
    """How the trial freezes layers, in words for labels: None, "block1 from epoch 20" or "CKA-guided"."""
    freeze = config.train.freeze
    if freeze is None:
        return None
    return "CKA-guided" if freeze.auto is not None else f"{freeze.through} from epoch {freeze.from_epoch}"


# -- the trial ----------------------------------------------------------------------------------------------
@contextmanager
def cpu_threads(device: torch.device, threads: int | None) -> Iterator[None]:
    """Run the block with ``threads`` intra-op threads when training on the CPU (unchanged elsewhere).

    Why: a CPU kernel splits its sums over its threads, so the thread count changes the rounding, and after
    a few hundred SGD steps the weights differ. A Ray worker with one CPU runs one thread, a plain process
    one per core: without a fixed count, the same trial trained with ``--local`` and through Ray (or resumed
    in the other mode) would not give the same checkpoints.
    """
    if device.type != "cpu" or threads is None:
        yield
        return
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def train_trial(
    spec: TrialSpec,
    storage: Storage,
    device: torch.device | str | None = None,
    report: Callable[[dict[str, Any]], None] = lambda metrics: None,
    where: dict[str, Any] | None = None,
    threads: int | None = None,
    data: ImageDataset | None = None,
) -> list[dict[str, Any]]:
    """Train ``spec`` to its last epoch, checkpointing every epoch under ``storage``; resume if started before.

    ``report`` receives each new epoch's metrics (Ray Tune's ``tune.report`` in a sweep). ``where`` (e.g. the
    Ray node) is recorded in each epoch's meta.json next to the device. ``threads``: CPU threads to train
    with (`cpu_threads`; a sweep passes its ``resources.cpus_per_trial`` in every mode); None keeps the
    process's. ``data``: the trial's dataset (`load_trial_data`) on ``device``, already loaded (a reused Ray
    actor's, `rayrs.sweep`), which the trial only reads; None loads it. Returns the metrics of the epochs trained
    by this call.
    """
    device = torch.device(device) if device is not None else best_device()
    with cpu_threads(device, threads):
        return _train_trial(spec, storage, device, report, where, data)


def _train_trial(spec: TrialSpec, storage: Storage, device: torch.device, report: Callable[[dict[str, Any]], None],
                 where: dict[str, Any] | None, data: ImageDataset | None = None) -> list[dict[str, Any]]:
    config = spec.config
    _claim_trial(storage, spec)
    data = data if data is not None else load_trial_data(config, device)
    model = build_for(config, data, device)
    optimizer = torch.optim.SGD(
        model.parameters(), lr=config.train.lr, momentum=config.train.momentum, weight_decay=config.train.weight_decay
    )
    done = checkpoint.completed_epochs(storage, spec.name)
    keep = config.checkpoint
    restored = checkpoint.restore(storage, spec.name, done[-1], model, optimizer) if done else None
    if done and keep.optimizer == "last":  # also what a crash between an epoch's commit and the deletion below left
        checkpoint.drop_optimizer_states(storage, spec.name, done[:-1])
    freeze = config.train.freeze
    static = freeze is not None and freeze.auto is None
    frozen = frozen_prefix(model, to_float(data.train_images[:2]), freeze.through) if static else []
    guide = guided_freezing(config, model, data, device) if freeze is not None and freeze.auto is not None else None
    if guide is not None and restored is not None:
        guide.resume(done[-1], restored)
    compiled = config.train.compile is True or (config.train.compile == "auto" and device.type == "cuda")
    runner = torch.compile(model) if compiled else model  # weights stay shared with `model`
    train_subset = fixed_subset(config.eval.train_subset, data.train_images.shape[0], device)
    test_subset = fixed_subset(config.eval.test_subset, data.test_images.shape[0], device)
    history = []
    for epoch in range((done[-1] if done else 0) + 1, config.train.epochs + 1):
        started = time.perf_counter()
        generator = epoch_generator(config.train.seed, epoch, device)
        frozen_now = guide.frozen_modules() if guide else frozen if static and epoch >= freeze.from_epoch else []
        for parameter in (p for module in frozen_now for p in module.parameters()):
            parameter.requires_grad_(False)
        train_attack = make_attack(config, "train", generator)
        objective = train_epoch(runner, optimizer, data, config, epoch, train_attack, generator, frozen_now)
        checked, freezing = guide.after_epoch(epoch) if guide else ({}, None)
        eval_attack = strongest_of(make_attack(config, "eval", generator), config.eval.attack.restarts)
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
            scores = evaluate(runner, images[subset], labels[subset], eval_attack, config.eval.batch_size, config.train.precision)
            metrics.update({f"{split}_{name}": value for name, value in scores.items()})
        metrics.update(checked)
        metrics["epoch_seconds"] = time.perf_counter() - started
        extra = {"freezing": freezing} if freezing is not None else {}
        checkpoint.save_epoch(storage, spec.name, epoch, model, optimizer,
                              {"metrics": metrics, "device": str(device), **extra, **(where or {})},
                              weights_dtype=keep.weights_dtype)
        if keep.optimizer == "last" and epoch > 1:  # only now that epoch `epoch` has committed (meta.json written)
            checkpoint.drop_optimizer_states(storage, spec.name, [epoch - 1])
        report(metrics)
        history.append(metrics)
    return history


def _claim_trial(storage: Storage, spec: TrialSpec) -> None:
    """Write trial.json, or check that existing checkpoints belong to this very trial."""
    path = layout.trial_spec(spec.name)
    if storage.exists(path):
        existing = read_trial_record(storage, spec.name)["fingerprint"]
        if existing != spec.fingerprint:
            raise UserError(
                f"{storage.full_path(path)} belongs to a different configuration of trial {spec.name!r} "
                f"(fingerprint {existing} != {spec.fingerprint}); rerun with --redo {spec.name} to retrain it"
            )
        return
    storage.write_json(path, trial_record(spec))
