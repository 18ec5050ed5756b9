"""What a trial's checkpoints keep (the sweep's `checkpoint:` section), and that a resume stays exact with less.

Every test trains small digits trials on the CPU (WRN-10-1, standard training, tiny evaluation subsets): a few
seconds an epoch. The reference is always the same trial trained in one go, compared bit for bit.
"""

import shutil

import pytest
import torch
from safetensors.torch import load_file

from digits import digits_spec
from rayrs import checkpoint
from rayrs import storage as layout
from rayrs.config import SweepFileError, expand, load_experiment
from rayrs.cost import trial_storage
from rayrs.errors import UserError
from rayrs.storage import Storage
from rayrs.train import train_trial

QUICK = {"train": {"epochs": 3}, "model": {"width": 1},
         "eval": {"train_subset": 16, "test_subset": 16, "attack": {"steps": 1}}}


def quick_spec(optimizer="last", weights_dtype="float32"):
    return digits_spec("t", **QUICK, checkpoint={"optimizer": optimizer, "weights_dtype": weights_dtype})


class Interrupted(Exception):
    """What a killed worker is to the trial: nothing after this point runs."""


def stop_after(epoch):
    def report(metrics):
        if metrics["epoch"] == epoch:
            raise Interrupted
    return report


def files(storage, name):
    """For each epoch folder of trial ``t``, whether ``name`` is in it."""
    return {e: storage.exists(f"{layout.epoch_dir('t', e)}/{name}") for e in (1, 2, 3)}


def assert_same_tensors(expected, got):
    assert expected.keys() == got.keys()
    for name in expected:
        assert expected[name].dtype == got[name].dtype and torch.equal(expected[name], got[name]), name


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """The 3-epoch trial trained in one go, with the default checkpoint settings (optimizer: last, float32).

    Its storage records, in order, every JSON file written and every file deleted (``.events``).
    """
    storage = Storage(tmp_path_factory.mktemp("uninterrupted"))
    storage.events = []
    write_json, delete_file = storage.write_json, storage.delete_file
    storage.write_json = lambda rel, obj: (storage.events.append(("write", rel)), write_json(rel, obj))
    storage.delete_file = lambda rel: (storage.events.append(("delete", rel)), delete_file(rel))
    train_trial(quick_spec(), storage, "cpu")
    return storage


def test_a_trial_keeps_every_epochs_weights_and_the_optimiser_state_of_its_last_epoch_only(uninterrupted):
    assert files(uninterrupted, "model.safetensors") == {1: True, 2: True, 3: True}
    assert files(uninterrupted, "meta.json") == {1: True, 2: True, 3: True}
    assert files(uninterrupted, "optimizer.safetensors") == {1: False, 2: False, 3: True}
    assert checkpoint.completed_epochs(uninterrupted, "t") == [1, 2, 3]  # an epoch without one is still complete


def test_the_previous_optimiser_state_is_deleted_only_after_the_new_epoch_commits(uninterrupted):
    events = uninterrupted.events
    for epoch in (1, 2):
        deleted = events.index(("delete", layout.optimizer_state("t", epoch)))
        assert deleted > events.index(("write", layout.epoch_meta("t", epoch + 1)))


def test_with_optimizer_every_all_optimiser_states_are_kept(tmp_path):
    storage = Storage(tmp_path)
    train_trial(quick_spec(optimizer="every"), storage, "cpu")
    assert files(storage, "optimizer.safetensors") == {1: True, 2: True, 3: True}
    assert_estimate_matches(quick_spec(optimizer="every"), tmp_path)


def test_a_trial_killed_after_epoch_2_resumes_to_the_uninterrupted_weights_bit_for_bit(tmp_path, uninterrupted):
    storage = Storage(tmp_path)
    with pytest.raises(Interrupted):
        train_trial(quick_spec(), storage, "cpu", report=stop_after(2))
    assert files(storage, "optimizer.safetensors") == {1: False, 2: True, 3: False}  # epoch 1's already deleted
    assert [m["epoch"] for m in train_trial(quick_spec(), storage, "cpu")] == [3]
    for epoch in (1, 2, 3):
        assert_same_tensors(checkpoint.load_weights(uninterrupted, "t", epoch), checkpoint.load_weights(storage, "t", epoch))
    assert_same_tensors(load_file(tmp_path / layout.optimizer_state("t", 3)),
                        load_file(uninterrupted.local_path(layout.optimizer_state("t", 3))))


def test_a_latest_epoch_without_its_optimiser_state_is_one_line_with_the_way_out(tmp_path, uninterrupted):
    shutil.copytree(uninterrupted.local_path(), tmp_path, dirs_exist_ok=True)
    (tmp_path / layout.epoch_meta("t", 3)).unlink()  # epoch 2 is the latest now, and its state was deleted
    with pytest.raises(UserError) as caught:
        train_trial(quick_spec(), Storage(tmp_path), "cpu")
    missing = tmp_path / layout.optimizer_state("t", 2)
    assert str(caught.value).startswith(f"{missing} is missing: epoch 2 is t's latest complete epoch")
    assert str(caught.value).endswith("rerun the sweep with --redo t to retrain that trial")


def test_a_crash_between_the_commit_and_the_deletion_resumes_exactly_and_cleans_up(tmp_path, monkeypatch, uninterrupted):
    storage = Storage(tmp_path)

    def crash(storage, trial, epochs):
        raise Interrupted

    with monkeypatch.context() as patch:
        patch.setattr(checkpoint, "drop_optimizer_states", crash)
        with pytest.raises(Interrupted):
            train_trial(quick_spec(), storage, "cpu")  # epoch 2 committed, epoch 1's state not yet deleted
    assert checkpoint.completed_epochs(storage, "t") == [1, 2]
    assert files(storage, "optimizer.safetensors") == {1: True, 2: True, 3: False}
    train_trial(quick_spec(), storage, "cpu")
    assert files(storage, "optimizer.safetensors") == {1: False, 2: False, 3: True}
    assert_same_tensors(checkpoint.load_weights(uninterrupted, "t", 3), checkpoint.load_weights(storage, "t", 3))


def test_a_bf16_archive_rounds_the_parameters_and_still_resumes_exactly(tmp_path, uninterrupted):
    storage = Storage(tmp_path)
    with pytest.raises(Interrupted):
        train_trial(quick_spec(weights_dtype="bfloat16"), storage, "cpu", report=stop_after(2))
    train_trial(quick_spec(weights_dtype="bfloat16"), storage, "cpu")
    exact = checkpoint.load_weights(uninterrupted, "t", 3)
    archive = load_file(tmp_path / layout.weights("t", 3))
    for name, tensor in archive.items():
        if name.endswith(("running_mean", "running_var", "num_batches_tracked")):  # buffers keep their dtype
            assert tensor.dtype == exact[name].dtype and torch.equal(tensor, exact[name]), name
        else:
            assert tensor.dtype == torch.bfloat16 and torch.equal(tensor, exact[name].to(torch.bfloat16)), name
    # The archive's dtype changes nothing in training: resumed from bf16 archives, the trial's float32 weights
    # (kept in the last epoch's resume state) are those of the float32 trial, bit for bit.
    resume = load_file(tmp_path / layout.optimizer_state("t", 3))
    assert_same_tensors({k: v for k, v in exact.items() if archive[k].dtype == torch.bfloat16},
                        {k.removeprefix("weights:"): v for k, v in resume.items() if k.startswith("weights:")})
    assert checkpoint.read_meta(storage, "t", 3)["weights_dtype"] == "bfloat16"
    assert_estimate_matches(quick_spec(weights_dtype="bfloat16"), tmp_path)


def test_the_storage_estimate_matches_the_bytes_on_disk(uninterrupted):
    assert_estimate_matches(quick_spec(), uninterrupted.local_path())


def assert_estimate_matches(spec, root):
    """`trial_storage`'s estimate of ``spec`` against the bytes of trial ``t``'s epoch files under ``root``."""
    on_disk = sum(path.stat().st_size for path in (root / layout.trial_dir("t")).glob("epoch_*/*"))
    estimate = trial_storage(spec.config)
    # The estimate counts tensor bytes; safetensors' headers (a line of JSON per tensor) and meta.json (~1 KB)
    # add ~2% at this tiny size (WRN-10-1: 78k parameters), far less at real ones.
    assert estimate.total <= on_disk <= estimate.total * 1.04


@pytest.mark.parametrize("setting, message", [
    ("{optimizer: some}", "checkpoint.optimizer: Input should be 'last' or 'every'"),
    ("{weights_dtype: float16}", "checkpoint.weights_dtype: Input should be 'float32' or 'bfloat16'"),
    ("{keep: 3}", "checkpoint: unknown key 'keep' (allowed: optimizer, weights_dtype)"),
])
def test_checkpoint_settings_are_checked_when_the_sweep_file_is_read(tmp_path, setting, message):
    path = tmp_path / "sweep.yaml"
    path.write_text(f"name: x\ncheckpoint: {setting}\n")
    with pytest.raises(SweepFileError) as caught:
        load_experiment(path)
    assert str(caught.value) == f"{path}: {message}"


def test_only_a_bf16_archive_changes_a_trials_fingerprint(tmp_path):
    def fingerprint(checkpoint):
        path = tmp_path / "sweep.yaml"
        path.write_text(f"name: x\ncheckpoint: {checkpoint}\n")
        return expand(load_experiment(path))[0].fingerprint

    default = fingerprint("{}")
    # Which optimiser states stay changes no weight and nothing a comparison reads: the same trial, so a
    # sweep may switch it on --resume. bf16 archives are other weights for every comparison: another trial.
    assert fingerprint("{optimizer: every}") == fingerprint("{optimizer: last, weights_dtype: float32}") == default
    assert fingerprint("{weights_dtype: bfloat16}") != default
