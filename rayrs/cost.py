"""What a sweep will cost, before it runs: GPU-hours from the epoch count and the model's size.

The unit of work is one forward pass of one example, counted in FLOPs by `torch.utils.flop_counter` on the
meta device (no memory, no weights). An adversarial-training step costs its attack steps plus one training
step: an attack step is a forward and an input-only backward (about 2 forwards: no weight gradients), a
training step a forward and a full backward (about 3 forwards). The sustained throughput is an assumption
the user sets (``--gpu-tflops``; measure yours with ``benchmarks/train_step.py``, which prints it).
"""

from __future__ import annotations

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
