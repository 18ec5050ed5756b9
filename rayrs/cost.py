"""What a sweep will cost, before it runs: GPU-hours from the epoch count and the model's size.

The unit of work is one forward pass of one example, counted in FLOPs by `torch.utils.flop_counter` on the
meta device (no memory, no weights). An adversarial-training step costs its attack steps plus one training
step: an attack step is a forward and an input-only backward (about 2 forwards: no weight gradients), a
training step a forward and a full backward (about 3 forwards). The sustained throughput is an assumption
the user sets (``--gpu-tflops``; measure yours with ``benchmarks/train_step.py``, which prints it).

Storage (`trial_storage`) is counted from the model's tensors and the sweep's ``checkpoint:`` section.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import torch
from torch.utils.flop_counter import FlopCounterMode

from rayrs.config import TrialConfig
from rayrs.data import DATASETS
from rayrs.models import build_model

DEFAULT_GPU_TFLOPS = 50.0
ATTACK_STEP_FORWARDS = 2.0  # forward + input-only backward
TRAIN_STEP_FORWARDS = 3.0  # forward + full backward


@lru_cache(maxsize=64)
def forward_flops(arch: str, depth: int | None, width: int | None, in_channels: int, image_size: int, classes: int) -> float:
    """FLOPs of one forward pass of one example (counted on the meta device)."""
    with torch.device("meta"):
        model = build_model(arch, num_classes=classes, in_channels=in_channels, depth=depth, width=width)
        with FlopCounterMode(display=False) as counter:
            model(torch.empty(1, in_channels, image_size, image_size))
    return float(counter.get_total_flops())


def trial_forwards(config: TrialConfig) -> float:
    """Forward-pass equivalents of one example that the whole trial costs (training and per-epoch evaluation)."""
    dataset = DATASETS[config.data.dataset]
    _, train_steps, _ = config.attack_schedule("train")
    attack_steps = 0 if not config.train.robust else 1 if config.train.method == "fast" else train_steps
    per_example = attack_steps * ATTACK_STEP_FORWARDS + TRAIN_STEP_FORWARDS
    if config.train.method == "trades" and config.train.robust:
        per_example += 1 + TRAIN_STEP_FORWARDS  # the benign target, and the second (benign) branch of the loss
    _, eval_steps, _ = config.attack_schedule("eval")
    evaluation = (config.eval.train_subset + config.eval.test_subset) * (eval_steps * ATTACK_STEP_FORWARDS + 2)
    return config.train.epochs * (dataset.train_examples * per_example + evaluation)


def trial_gpu_hours(config: TrialConfig, gpu_tflops: float = DEFAULT_GPU_TFLOPS) -> float:
    """Estimated GPU-hours to train ``config`` at ``gpu_tflops`` sustained TFLOP/s (a positive number)."""
    if not gpu_tflops > 0:
        raise ValueError(f"gpu_tflops must be positive, got {gpu_tflops}")
    dataset = DATASETS[config.data.dataset]
    size = config.data.image_size or dataset.default_image_size
    flops = forward_flops(config.model.arch, config.model.depth, config.model.width, dataset.channels, size, 10)  # 10 classes each
    return trial_forwards(config) * flops / (gpu_tflops * 1e12) / 3600


@dataclass(frozen=True)
class StorageEstimate:
    """Bytes one trial's checkpoints take (`rayrs.checkpoint`): tensor bytes, which are all but a few KB of each
    file (safetensors' JSON header names each tensor; meta.json holds the epoch's metrics)."""

    weights_per_epoch: int  # model.safetensors: parameters and buffers at their archived dtypes
    resume_state: int  # one optimizer.safetensors: SGD momentum, plus the float32 copies a bf16 archive needs
    epochs: int
    resume_states_kept: int  # 1 with checkpoint.optimizer: last, every epoch's with every

    @property
    def total(self) -> int:
        return self.weights_per_epoch * self.epochs + self.resume_state * self.resume_states_kept

    @property
    def per_epoch(self) -> float:
        return self.total / self.epochs


def trial_storage(config: TrialConfig) -> StorageEstimate:
    """What ``config``'s checkpoints will take on storage, from its model's tensors (built on the meta device).

    Weights: every parameter and buffer at the dtype the archive stores it in (`rayrs.checkpoint.archived`),
    every epoch. Resume state: one momentum buffer per parameter (SGD keeps none without momentum; a layer
    frozen from the first epoch never gets one, so the estimate is an upper bound there), plus the float32 value
    of each tensor a bf16 archive rounds; kept for the last epoch only, or every epoch.
    """
    from rayrs.checkpoint import archived

    dataset = DATASETS[config.data.dataset]
    with torch.device("meta"):
        model = build_model(config.model.arch, num_classes=10, in_channels=dataset.channels, depth=config.model.depth,
                            width=config.model.width, normalize=config.model.normalize)
    state = model.state_dict()
    archive = archived(model, state, config.checkpoint.weights_dtype)
    weights = sum(_bytes(tensor) for tensor in archive.values())
    momentum = sum(_bytes(p) for p in model.parameters()) if config.train.momentum > 0 else 0
    exact = sum(_bytes(state[name]) for name, tensor in archive.items() if tensor.dtype != state[name].dtype)
    epochs = config.train.epochs
    return StorageEstimate(weights, momentum + exact, epochs, 1 if config.checkpoint.optimizer == "last" else epochs)


def format_bytes(count: float) -> str:
    """``count`` bytes in decimal units, three significant digits: 1.22 MB, 190 GB."""
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if count < 999.5 or unit == "TB":
            return f"{count:.3g} {unit}" if unit != "B" else f"{count:.0f} B"
        count /= 1000
    raise AssertionError("unreachable")


def _bytes(tensor: torch.Tensor) -> int:
    return tensor.numel() * tensor.element_size()
