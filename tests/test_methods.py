"""Training methods (standard, PGD-AT, TRADES, fast), their defaults, layer freezing, and attacks strong enough to trust."""

import polars as pl
import pytest
import torch
import torch.nn.functional as F
from pydantic import ValidationError
from torch import nn

from digits import digits_spec, load_trained
from rayrs import checkpoint
from rayrs.attacks import THREAT_MODELS
from rayrs.attacks.pgd import pgd_linf
from rayrs.config import TrainConfig, load_experiment
from rayrs.methods import METHODS, trades_loss
from rayrs.storage import Storage
from rayrs.sweep import SweepOptions, run_sweep
from rayrs.train import evaluate, strongest_of, train_trial

TINY = {"model": {"width": 1}, "eval": {"train_subset": 32, "test_subset": 32, "attack": {"steps": 2}}}


def test_each_method_brings_its_own_defaults_and_a_sweep_file_overrides_them():
    assert TrainConfig(method="trades").weight_decay == 2e-4  # Zhang et al. 2019
    assert TrainConfig(method="pgd").weight_decay == 5e-4
    assert TrainConfig(method="fast").schedule == "cyclic"  # Wong et al. 2020
    assert TrainConfig(method="pgd").schedule == "piecewise"  # Rice et al. 2020
    assert TrainConfig(method="trades", weight_decay=1e-3, schedule="cosine").weight_decay == 1e-3
    assert TrainConfig(method="trades").trades_beta == 6.0


def test_every_method_trains_and_evaluates_from_a_sweep_file(tmp_path):
    sweep = tmp_path / "methods.yaml"
    sweep.write_text(
        """
name: methods
model: {arch: wrn, depth: 10, width: 1}
train: {epochs: 1, batch_size: 128, attack: {steps: 2}}
eval: {attack: {steps: 2}, train_subset: 32, test_subset: 32}
grid:
  - {method: [standard, pgd, trades, fast], threat_model: [linf, l2, jpeg, gabor, snow]}
  - {method: [pgd], threat_model: [jpeg_unblurred, gabor_sparse, snow_projected]}  # rayrs's earlier definitions
compare: []
"""
    )
    experiment = load_experiment(sweep)
    outcome = run_sweep(experiment, SweepOptions(local=True, report=False), results=str(tmp_path / "r"))
    metrics = pl.read_parquet(f"{outcome.storage.root}/metrics.parquet")
    assert metrics.height == len(outcome.trials) == 23  # each threat model's eps on its own scale (its default)
    assert set(metrics["method"]) == set(METHODS) and set(metrics["threat_model"]) == set(THREAT_MODELS)
    assert metrics["test_clean_acc"].is_between(0, 1).all() and metrics["train_objective"].is_finite().all()


def test_trades_loss_is_cross_entropy_plus_beta_times_the_kl_to_the_adversarial_output():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 5)).train()
    images, labels = torch.rand(8, 1, 4, 4), torch.randint(0, 5, (8,))
    shifted = (images + 0.05).clamp(0, 1)

    def fixed_attack(model, images, labels, objective=None):
        assert objective is not None  # TRADES maximises its own KL term, not the cross-entropy
        return shifted

    train = TrainConfig(method="trades", trades_beta=3.0)
    loss = trades_loss(model, images, labels, fixed_attack, train)
    logits, adversarial_logits = model(images), model(shifted)
    p = F.softmax(logits, 1)
    kl = (p * (F.log_softmax(logits, 1) - F.log_softmax(adversarial_logits, 1))).sum(1).mean()
    assert loss.item() == pytest.approx((F.cross_entropy(logits, labels) + 3.0 * kl).item(), rel=1e-5)


def test_freezing_a_prefix_stops_its_weights_and_batchnorm_statistics(tmp_path):
    storage = Storage(tmp_path)
    spec = digits_spec("frozen", train={"epochs": 2, "freeze": {"through": "block1", "from_epoch": 2}}, **TINY)
    train_trial(spec, storage, "cpu")
    before, after = checkpoint.load_weights(storage, "frozen", 1), checkpoint.load_weights(storage, "frozen", 2)
    frozen = [name for name in before if name.startswith(("conv1.", "block1."))]
    trained = [name for name in before if name.startswith(("block3.", "fc.")) and before[name].is_floating_point()]
    assert frozen and all(torch.equal(before[name], after[name]) for name in frozen)  # running stats included
    assert any(not torch.equal(before[name], after[name]) for name in trained)


@pytest.mark.parametrize("method", ["pgd", "trades"])
def test_freezing_survives_the_attacks_of_adversarial_training(tmp_path, method):
    """Every attack step switches the model to eval mode and back: the frozen prefix must come back in eval
    mode too, or its BatchNorm layers return to batch statistics and keep updating their running ones. Two attack
    steps switch it as every attack does (the count does not matter, only that there is an attack)."""
    storage = Storage(tmp_path)
    spec = digits_spec("frozen", train={"method": method, "eps": 0.1, "epochs": 3, "attack": {"steps": 2},
                                        "freeze": {"through": "block1", "from_epoch": 2}}, **TINY)
    train_trial(spec, storage, "cpu")
    epochs = [checkpoint.load_weights(storage, "frozen", epoch) for epoch in (1, 2, 3)]
    frozen = [name for name in epochs[0] if name.startswith(("conv1.", "block1."))]
    assert any(name.endswith("running_var") for name in frozen) and any(name.endswith("num_batches_tracked") for name in frozen)
    for later in epochs[1:]:
        changed = [name for name in frozen if not torch.equal(epochs[0][name], later[name])]
        assert not changed, f"frozen tensors changed after epoch 1: {changed[:4]}"
    trained = [name for name in epochs[0] if name.startswith(("block3.", "fc.")) and epochs[0][name].is_floating_point()]
    assert all(any(not torch.equal(epochs[0][name], later[name]) for name in trained) for later in epochs[1:])


def test_freezing_an_unknown_layer_is_refused_with_the_valid_prefixes_before_training():
    # Checked when the trial's settings are validated (on the meta device), long before train_trial.
    with pytest.raises(ValidationError, match="no layer name starts with 'stage9'; layers start with: conv1, block1, block2, block3"):
        digits_spec("bad", train={"epochs": 1, "freeze": {"through": "stage9", "from_epoch": 1}}, **TINY)


def test_the_best_epoch_is_recorded_without_deleting_any(tmp_path):
    sweep = tmp_path / "best.yaml"
    sweep.write_text("name: best\nmodel: {width: 1, depth: 10}\ntrain: {method: standard, epochs: 3}\n"
                     "eval: {train_subset: 16, test_subset: 64, attack: {steps: 1}}\ncompare: []\n")
    outcome = run_sweep(load_experiment(sweep), SweepOptions(local=True, report=False), results=str(tmp_path / "r"))
    metrics = pl.read_parquet(f"{outcome.storage.root}/metrics.parquet").sort("epoch")
    assert metrics["epoch"].to_list() == [1, 2, 3]
    best = metrics.sort("test_robust_acc", descending=True).filter(
        pl.col("test_robust_acc") == pl.col("test_robust_acc").max())["epoch"].min()
    assert (metrics["best_epoch"] == best).all()


# -- is the evaluation attack strong enough to trust? (on a PGD-trained digits model) -----------------------
@pytest.fixture(scope="module")
def robust_model(trained_digits):
    storage, specs, _ = trained_digits
    from rayrs.train import load_trial_data

    data = load_trial_data(specs["robust"].config, "cpu")
    return load_trained(storage, specs["robust"]), data.test_images[:200], data.test_labels[:200]


def _robust_accuracy(model, images, labels, eps, steps, restarts=1, seed=0):
    generator = torch.Generator().manual_seed(seed)

    def attack(model, x, y):
        return pgd_linf(model, x, y, eps=eps, steps=steps, step_size=max(2.5 * eps / steps, 1e-4), generator=generator)

    return evaluate(model, images, labels, strongest_of(attack, restarts), 200, "fp32")["robust_acc"]


def test_restarts_find_few_examples_that_one_pgd20_run_misses(robust_model):
    """The evaluation attack is strong enough when two more random restarts break few extra images.

    Measured on this model (4 attack seeds, 200 test digits): restarts break 2-3 more images, 1.0-1.5 points.
    The bound, 3 points (6 images), leaves twice the largest gain seen: a weak or masked attack misses far
    more (Rice et al. see restarts gain well under a point on converged CIFAR-10 PGD-AT models; a single
    PGD-20 run that misses 1 breakable image in 15 would exceed it). A point, the bound this test had before,
    is 2 images of 200: within the seed-to-seed spread of the count itself.
    """
    model, images, labels = robust_model
    single, restarted = _robust_accuracy(model, images, labels, 0.1, 20), _robust_accuracy(model, images, labels, 0.1, 20, restarts=3)
    assert restarted <= single  # keeping the worst of several runs can only lower robust accuracy
    assert single - restarted <= 0.03 + 1e-9


def test_no_gradient_masking_robust_accuracy_falls_with_eps_and_fgsm_is_weaker_than_pgd(robust_model):
    model, images, labels = robust_model
    accuracies = [_robust_accuracy(model, images, labels, eps, 20) for eps in (0.05, 0.1, 0.2, 0.3)]
    assert all(a >= b for a, b in zip(accuracies, accuracies[1:])), accuracies
    assert accuracies[-1] < 0.2  # a large enough budget breaks the model: the gradients are informative
    fgsm = _robust_accuracy(model, images, labels, 0.1, 1)
    assert fgsm >= accuracies[1]
