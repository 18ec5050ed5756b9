"""GPU-hour estimates: the model's FLOPs are counted, and adversarial training costs its attack steps."""

import pytest

from rayrs.config import TrialConfig
from rayrs.cost import forward_flops, trial_forwards, trial_gpu_hours


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
