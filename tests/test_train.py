"""Training really learns, adversarial training really buys robustness, and a resumed trial is the same trial."""

import pytest
import torch

from digits import digits_spec
from rayrs.storage import Storage
from rayrs.train import learning_rate, train_trial


spec = digits_spec


def test_learning_rate_schedules():
    assert [learning_rate("piecewise", 0.1, p) for p in (0, 0.49, 0.5, 0.74, 0.75, 0.99)] == pytest.approx(
        [0.1, 0.1, 0.01, 0.01, 0.001, 0.001]
    )  # Rice et al. (2020)
    assert learning_rate("cosine", 0.1, 0) == pytest.approx(0.1)
    assert learning_rate("cosine", 0.1, 0.5) == pytest.approx(0.05)
    assert learning_rate("constant", 0.1, 0.9) == 0.1
    assert [learning_rate("cyclic", 0.2, p) for p in (0, 0.2, 0.4, 0.7, 1.0)] == pytest.approx([0, 0.1, 0.2, 0.1, 0])


def test_standard_training_on_digits_reaches_95_percent(trained_digits):
    standard = trained_digits[2]["standard"]
    assert standard["test_clean_acc"] >= 0.95
    assert standard["test_robust_acc"] <= 0.10  # a non-robust model falls to PGD


def test_pgd_adversarial_training_buys_robust_accuracy(trained_digits):
    standard, robust = trained_digits[2]["standard"], trained_digits[2]["robust"]
    assert robust["test_robust_acc"] >= 0.35
    assert robust["test_robust_acc"] > standard["test_robust_acc"] + 0.25
    assert robust["test_clean_acc"] >= 0.80  # the price of robustness, but still a working classifier


def test_a_trial_resumed_after_a_crash_ends_exactly_where_an_uninterrupted_one_does(tmp_path):
    quick = {"train": {"method": "pgd", "eps": 0.1, "epochs": 2, "attack": {"steps": 2}},
             "model": {"width": 1}, "eval": {"train_subset": 32, "test_subset": 32, "attack": {"steps": 2}}}
    whole = Storage(tmp_path / "whole")
    train_trial(spec("t", **quick), whole, "cpu")

    interrupted = Storage(tmp_path / "interrupted")
    interrupted.write_json = dies_writing(interrupted, "trials/t/epoch_0002/meta.json")
    with pytest.raises(KeyboardInterrupt):  # died after epoch 2's tensors, before committing epoch 2
        train_trial(spec("t", **quick), interrupted, "cpu")
    resumed = train_trial(spec("t", **quick), Storage(tmp_path / "interrupted"), "cpu")

    assert [m["epoch"] for m in resumed] == [2]  # epoch 1 was not redone
    from rayrs.checkpoint import load_weights

    expected, got = load_weights(whole, "t", 2), load_weights(interrupted, "t", 2)
    assert expected.keys() == got.keys()
    for name in expected:
        assert torch.equal(expected[name], got[name]), name


def dies_writing(storage, path):
    """``storage.write_json`` that dies, as a killed process does, when it comes to ``path``."""
    write_json = storage.write_json

    def write(rel, obj):
        if rel == path:
            raise KeyboardInterrupt
        write_json(rel, obj)

    return write


def test_a_finished_trial_trains_nothing(tmp_path):
    quick = {"train": {"epochs": 1}, "model": {"width": 1}, "eval": {"train_subset": 16, "test_subset": 16, "attack": {"steps": 1}}}
    storage = Storage(tmp_path)
    assert len(train_trial(spec("t", **quick), storage, "cpu")) == 1
    assert train_trial(spec("t", **quick), storage, "cpu") == []


def test_checkpoints_of_another_configuration_are_never_mixed_in(tmp_path):
    from rayrs.errors import UserError

    quick = {"train": {"epochs": 1}, "model": {"width": 1}, "eval": {"train_subset": 16, "test_subset": 16, "attack": {"steps": 1}}}
    storage = Storage(tmp_path)
    train_trial(spec("t", **quick), storage, "cpu")
    changed = {**quick, "train": {"epochs": 1, "lr": 0.2}}
    with pytest.raises(UserError, match="belongs to a different configuration of trial 't'.*--redo t"):
        train_trial(spec("t", **changed), storage, "cpu")
