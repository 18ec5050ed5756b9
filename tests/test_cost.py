"""GPU-hour estimates: the model's FLOPs are counted, and adversarial training costs its attack steps; storage
estimates: the model's tensors, every epoch's weights and the optimiser state the sweep keeps."""

import pytest

from rayrs.config import TrialConfig
from rayrs.cost import format_bytes, forward_flops, trial_forwards, trial_gpu_hours, trial_storage


def test_wrn_28_10_forward_flops_match_the_known_figure():
    # WRN-28-10 on 32x32 inputs: about 5.25 GMACs = 10.5 GFLOPs per image (Zagoruyko & Komodakis 2016).
    assert forward_flops("wrn", 28, 10, 3, 32, 10) == pytest.approx(10.5e9, rel=0.02)


def test_pgd_training_costs_its_attack_steps_plus_a_training_step():
    def config(method: str, eps: float) -> TrialConfig:
        return TrialConfig.model_validate({
            "data": {"dataset": "cifar10"},
            "train": {"method": method, "eps": eps, "epochs": 1},
            "eval": {"train_subset": 1, "test_subset": 1},
        })

    standard, pgd = trial_forwards(config("standard", 0)), trial_forwards(config("pgd", 8 / 255))
    evaluation = 2 * (20 * 2 + 2)
    assert standard == 50_000 * 3 + evaluation
    assert pgd == 50_000 * (10 * 2 + 3) + evaluation  # PGD-10: ten input-gradient steps and a training step
    hours = trial_gpu_hours(config("pgd", 8 / 255), gpu_tflops=50)
    assert hours == pytest.approx(pgd * 10.5e9 / 50e12 / 3600, rel=0.02)


def test_wrn_28_10_storage_follows_its_known_parameter_count():
    def config(**checkpoint) -> TrialConfig:
        return TrialConfig.model_validate({"data": {"dataset": "cifar10"}, "train": {"epochs": 100}, "checkpoint": checkpoint})

    parameters = 36_479_194  # WRN-28-10 on CIFAR-10: 36.5M (Zagoruyko & Komodakis 2016, Table 1)
    # Pre-activation blocks, 4 a group: BatchNorms on 16 + 7 x 160, 160 + 7 x 320, 320 + 7 x 640 channels and a
    # last one on 640; each keeps a running mean and a running variance.
    batchnorm_channels = 2 * (16 + 7 * 160 + 160 + 7 * 320 + 320 + 7 * 640 + 640)
    last = trial_storage(config())
    assert last.resume_state == 4 * parameters  # one float32 momentum buffer per parameter
    assert last.weights_per_epoch == 4 * parameters + 4 * batchnorm_channels + 8 * 25  # + int64 num_batches_tracked
    assert last.total == 100 * last.weights_per_epoch + last.resume_state
    every = trial_storage(config(optimizer="every"))
    assert every.total == 100 * (every.weights_per_epoch + every.resume_state)
    assert last.total / every.total == pytest.approx(0.505, abs=0.001)  # half, plus the one state kept
    bf16 = trial_storage(config(weights_dtype="bfloat16"))
    assert bf16.weights_per_epoch == 2 * parameters + 4 * batchnorm_channels + 8 * 25  # parameters rounded, buffers not
    assert bf16.resume_state == 4 * parameters + 4 * parameters  # momentum and the exact float32 weights


def test_byte_counts_read_in_decimal_units():
    assert [format_bytes(n) for n in (0, 999, 1_000, 1_220_000, 95_900_000_000, 3e15)] == [
        "0 B", "999 B", "1 kB", "1.22 MB", "95.9 GB", "3e+03 TB"]
