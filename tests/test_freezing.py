"""CKA-guided freezing (issue 17, `rayrs.freezing`): what it freezes, when, what it records, and what it saves."""

import math
import shutil

import polars as pl
import pyarrow as pa
import pytest
import torch

from digits import digits_spec
from synthetic import similarity_row
from torch.utils.flop_counter import FlopCounterMode

from analysis import findings
from analysis.dynamics import fig6_convergence
from analysis.load import read_metrics
from rayrs import checkpoint
from rayrs import storage as layout
from rayrs.catalog import write_metrics
from rayrs.config import FreezeConfig
from rayrs.freezing import block_layers, default_adversarial_probe, default_probe_size, probe_generator, probe_indices
from rayrs.methods import METHODS
from rayrs.schema import SIMILARITY_SCHEMA
from rayrs.similarity.cka import MinibatchCKA
from rayrs.similarity.grams import layer_grams
from rayrs.storage import Storage
from rayrs.train import build_for, guided_freezing, load_trial_data, make_attack, train_step, train_trial

# WRN-10-1 on digits: three residual blocks (block1.0, block2.0, block3.0), a few seconds an epoch on a CPU.
TINY = {"model": {"width": 1}, "eval": {"train_subset": 32, "test_subset": 32, "attack": {"steps": 2}}}
PGD = {"method": "pgd", "eps": 0.1, "attack": {"steps": 2}}
BLOCKS = ["block1.0", "block2.0", "block3.0"]
PREFIX = ("conv1.", "block1.", "block2.", "block3.")  # every tensor of the three blocks and the stem


def auto_spec(name, epochs, threshold, patience, probe=128, checkpoint=None, **train):
    """A guided WRN-10-1 trial; one ``threshold`` for the benign and the adversarial probe."""
    auto = {"threshold": threshold, "adversarial_threshold": threshold, "patience": patience, "probe": probe}
    return digits_spec(name, train={"epochs": epochs, "freeze": {"auto": auto}, **train},
                       **TINY, **({"checkpoint": checkpoint} if checkpoint else {}))


def freezing_records(storage, trial, epochs):
    return [checkpoint.read_meta(storage, trial, epoch)["freezing"] for epoch in range(1, epochs + 1)]


def expected_decisions(records, threshold, patience, epochs):
    """An independent replay of the rule on the recorded CKA trace: the first epoch each block trains frozen.

    A block's score is the lower of its benign and adversarial CKA with the previous epoch; its streak the
    epochs in a row at or above the threshold; after epoch e < epochs the longest prefix of blocks with a
    streak >= patience is frozen from epoch e + 1 on, and stays frozen.
    """
    blocks = len(records[0]["blocks"])
    streak, frozen_from = [0] * blocks, [None] * blocks
    for epoch, record in enumerate(records, start=1):
        for b in range(blocks):
            values = [record[key][b] for key in ("cka_benign", "cka_adversarial") if key in record]
            stable = all(v is not None for v in values) and min(values) >= threshold
            streak[b] = streak[b] + 1 if stable else 0
        if epoch < epochs:
            for b in range(blocks):
                if streak[b] < patience:
                    break
                if frozen_from[b] is None:
                    frozen_from[b] = epoch + 1
    return frozen_from


def test_a_threshold_above_one_never_freezes_and_records_the_trace(tmp_path):
    storage = Storage(tmp_path)
    train_trial(auto_spec("never", 4, threshold=1.01, patience=1), storage, "cpu", threads=1)
    records = freezing_records(storage, "never", 4)
    assert [r["blocks"] for r in records] == [BLOCKS] * 4
    assert all(r["frozen_from"] == [None] * 3 and r["frozen_blocks"] == 0 for r in records)
    assert records[0]["cka_benign"] == [None] * 3  # nothing to compare with after epoch 1
    # CKA of a trained block with itself an epoch earlier: a real similarity, below 1 while it still learns.
    assert all(0 < v < 1 for r in records[1:] for v in r["cka_benign"])
    weights = [checkpoint.load_weights(storage, "never", epoch) for epoch in (3, 4)]
    assert not torch.equal(weights[0]["conv1.weight"], weights[1]["conv1.weight"])  # the stem kept training
    write_metrics(storage, ["never"])
    metrics = pl.read_parquet(tmp_path / "metrics.parquet").sort("epoch")
    assert metrics["frozen_blocks"].to_list() == [0, 0, 0, 0]
    assert metrics["probe_cka_benign"].to_list()[1:] == [r["cka_benign"] for r in records[1:]]
    assert (metrics["freeze_check_seconds"] > 0).all() and (metrics["freeze_check_seconds"] < metrics["epoch_seconds"]).all()


@pytest.mark.parametrize("method", ["standard", "pgd"])
def test_a_threshold_of_minus_one_freezes_every_block_at_the_first_chance_and_they_stay_bit_for_bit(tmp_path, method):
    """The first CKA is after epoch 2, so with patience 1 every block is frozen from epoch 3 on: its weights,
    BatchNorm running statistics and num_batches_tracked never change again, while the head keeps training."""
    storage = Storage(tmp_path)
    train = PGD if method == "pgd" else {}
    train_trial(auto_spec("all", 4, threshold=-1, patience=1, **train), storage, "cpu", threads=1)
    records = freezing_records(storage, "all", 4)
    assert [r["frozen_blocks"] for r in records] == [0, 3, 3, 3]
    assert records[-1]["frozen_from"] == [3, 3, 3]
    assert ("cka_adversarial" in records[1]) == (method == "pgd")
    weights = [checkpoint.load_weights(storage, "all", epoch) for epoch in (2, 3, 4)]
    frozen = [name for name in weights[0] if name.startswith(PREFIX)]
    assert any(n.endswith("running_var") for n in frozen) and any(n.endswith("num_batches_tracked") for n in frozen)
    for later in weights[1:]:
        changed = [name for name in frozen if not torch.equal(weights[0][name], later[name])]
        assert not changed, f"frozen tensors changed after epoch 2: {changed[:4]}"
    head = [name for name in weights[0] if name.startswith("fc.")]
    assert all(not torch.equal(weights[0][name], weights[2][name]) for name in head)
    write_metrics(storage, ["all"])
    assert pl.read_parquet(tmp_path / "metrics.parquet").sort("epoch")["frozen_blocks"].to_list() == [0, 0, 3, 3]


def test_blocks_freeze_only_after_their_cka_stayed_above_the_threshold_for_the_patience(tmp_path):
    # Threshold and patience inside the trace of this trial (block CKA 0.85-1.0 from epoch 2 to 6), so that
    # some blocks freeze and some do not; the decisions are replayed independently from the recorded trace.
    storage = Storage(tmp_path)
    threshold, patience, epochs = 0.95, 2, 6
    train_trial(auto_spec("guided", epochs, threshold, patience), storage, "cpu", threads=1)
    records = freezing_records(storage, "guided", epochs)
    decided = records[-1]["frozen_from"]
    assert decided == expected_decisions(records, threshold, patience, epochs)
    assert any(epoch is not None for epoch in decided), decided  # the test says nothing unless something froze
    for b, epoch in enumerate(decided):
        if epoch is not None:  # every block up to b stayed at or above the threshold the `patience` epochs before
            assert epoch >= patience + 2
            assert all(records[e - 1]["cka_benign"][c] >= threshold for e in range(epoch - patience, epoch) for c in range(b + 1))


def test_the_checks_cka_is_the_comparison_engines_on_the_same_probe_and_checkpoints(tmp_path):
    """Recompute each epoch's block CKA with the comparison engine (layer_grams + MinibatchCKA) from the saved
    checkpoints of epochs e - 1 and e, on the same probe (and, for PGD-AT, the same adversarial probe: its first
    64 images, half of the 128 by default)."""
    storage = Storage(tmp_path)
    spec = auto_spec("engine", 3, threshold=1.01, patience=1, **PGD)
    train_trial(spec, storage, "cpu", threads=1)
    records = freezing_records(storage, "engine", 3)
    data = load_trial_data(spec.config, "cpu")
    chosen = probe_indices(spec.config.train.seed, 128, data.train_images.shape[0])
    images, labels = data.train_images[chosen].float() / 255, data.train_labels[chosen]
    grams = {}
    for epoch in (1, 2, 3):
        model = build_for(spec.config, data, "cpu")
        model.load_state_dict(checkpoint.load_weights(storage, "engine", epoch))
        blocks, _ = block_layers(model, images[:2])
        adversarial = make_attack(spec.config, "train", probe_generator(spec.config.train.seed, "cpu"))(
            model.eval(), images[:64], labels[:64])
        grams[epoch] = {"benign": layer_grams(model, blocks, images), "adversarial": layer_grams(model, blocks, adversarial)}
    assert records[0]["adversarial_probe"] == 64 and grams[1]["adversarial"].shape == (3, 64, 64)
    for epoch in (2, 3):
        for probe in ("benign", "adversarial"):
            engine = MinibatchCKA(3, 3)
            engine.update(grams[epoch][probe], grams[epoch - 1][probe])
            expected = engine.compute().diagonal().tolist()
            # float32 Gram products in the engine, float64 in the check: agreement to ~1e-6 relative.
            assert records[epoch - 1][f"cka_{probe}"] == pytest.approx(expected, abs=1e-5), (epoch, probe)
            assert not any(math.isclose(v, 1.0) for v in expected)  # the blocks did change between epochs


def test_a_resumed_trial_makes_the_same_decisions_and_weights_as_an_uninterrupted_one(tmp_path):
    """Interrupted after epoch 4 with a block one epoch into its streak: the resumed trial reloads the streaks
    from meta.json, recomputes epoch 4's Grams from its checkpoint, and ends bit-for-bit where the
    uninterrupted trial ended."""
    whole, resumed = Storage(tmp_path / "whole"), Storage(tmp_path / "resumed")
    # Every epoch keeps its optimiser state, so that deleting epochs 5 and 6 leaves what a crash after epoch 4 leaves.
    spec = auto_spec("guided", 6, threshold=0.95, patience=2, checkpoint={"optimizer": "every"})
    train_trial(spec, whole, "cpu", threads=1)
    shutil.copytree(tmp_path / "whole", tmp_path / "resumed")
    for epoch in (5, 6):
        shutil.rmtree(resumed.full_path(layout.epoch_dir("guided", epoch)))
    assert checkpoint.completed_epochs(resumed, "guided") == [1, 2, 3, 4]
    train_trial(spec, resumed, "cpu", threads=1)
    before, after = freezing_records(whole, "guided", 6), freezing_records(resumed, "guided", 6)
    assert after == before
    assert before[-1]["frozen_from"] != before[3]["frozen_from"]  # a decision was taken after the interruption
    final_whole, final_resumed = checkpoint.load_weights(whole, "guided", 6), checkpoint.load_weights(resumed, "guided", 6)
    assert all(torch.equal(final_whole[name], final_resumed[name]) for name in final_whole)


@pytest.mark.parametrize("method", ["standard", "pgd", "trades"])
def test_the_backward_pass_stops_at_the_frozen_boundary(method):
    """With the prefix frozen (requires_grad off), autograd records nothing for it in the training forward
    pass: the last block's output in that pass needs no gradient and no frozen weight gets one. Attack steps
    (earlier calls, PGD-AT and TRADES) still reach the input through the prefix."""
    spec = digits_spec("cost", train={"epochs": 1, **(PGD | {"method": method} if method != "standard" else {})}, **TINY)
    data = load_trial_data(spec.config, "cpu")
    model = build_for(spec.config, data, "cpu")
    blocks, prefixes = block_layers(model, data.train_images[:2].float())
    for parameter in (p for module in prefixes[1] for p in module.parameters()):  # stem, block1 and block2
        parameter.requires_grad_(False)
    model.train()
    for module in prefixes[1]:
        module.eval()
    needs_gradient = []
    hook = model.get_submodule("block2.0").register_forward_hook(lambda m, i, out: needs_gradient.append(out.requires_grad))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    images, labels = data.train_images[:32].float() / 255, data.train_labels[:32]
    attack = make_attack(spec.config, "train", torch.Generator().manual_seed(0))
    train_step(model, optimizer, images, labels, METHODS[method], attack, spec.config.train)
    hook.remove()
    assert needs_gradient[-1] is False  # the final update's pass: the backward pass starts after block2
    assert (True in needs_gradient) == (method != "standard")  # only attack steps backpropagate through the prefix
    frozen = {id(p) for module in prefixes[1] for p in module.parameters()}
    assert all(p.grad is None for p in model.parameters() if id(p) in frozen)
    assert all(p.grad is not None for p in model.parameters() if id(p) not in frozen)


@pytest.mark.parametrize("method", ["pgd", "trades", "fast"])
def test_the_adversarial_probe_is_attacked_by_the_methods_own_training_attack(method):
    """The probe's adversarial images are the ones the method's loss would train on, from the same random starts:
    PGD-k for PGD-AT, TRADES' KL attack (not cross-entropy PGD), fast AT's single FGSM step (not PGD-k)."""
    spec = digits_spec("probe", train={"epochs": 4, **PGD, "method": method, "attack": {"steps": 3},
                                       "freeze": {"auto": {"probe": 32}}}, **TINY)
    config = spec.config
    data = load_trial_data(config, "cpu")
    model = build_for(config, data, "cpu").eval()
    guide = guided_freezing(config, model, data, "cpu")
    probed = guide.probe_attack()(model, guide.images, guide.labels)
    trained_on = []  # what the training loss feeds its model, spied on its attack

    def spy(*args, **kwargs):
        trained_on.append(attack(*args, **kwargs))
        return trained_on[-1]

    attack = make_attack(config, "train", probe_generator(config.train.seed, "cpu"))
    METHODS[method].loss(model, guide.images, guide.labels, spy, config.train)
    assert len(trained_on) == 1 and torch.equal(probed, trained_on[0])
    plain = make_attack(config, "train", probe_generator(config.train.seed, "cpu"))(model, guide.images, guide.labels)
    # The cross-entropy PGD-k probe that TRADES and fast AT had before is another perturbation (PGD-AT's is this one).
    assert torch.equal(plain, probed) == (method == "pgd")


def test_the_report_marks_each_blocks_freeze_epoch_on_fig6_and_states_the_weight_gradient_work_skipped(tmp_path):
    """A real guided run that freezes every block from epoch 3 (threshold -1, patience 1): metrics.parquet holds
    each block's freeze epoch and the frozen share of the work, Fig 6 draws a rule per frozen block at its epoch,
    and the report's sentence states both."""
    storage = Storage(tmp_path)
    spec = auto_spec("guided", 4, threshold=-1, patience=1)
    train_trial(spec, storage, "cpu", threads=1)
    write_metrics(storage, ["guided"])
    metrics = read_metrics(storage).sort("epoch")
    assert metrics["freeze_blocks"].to_list()[-1] == BLOCKS
    assert metrics["block_frozen_from"].to_list() == [[None] * 3, [3, 3, 3], [3, 3, 3], [3, 3, 3]]
    # An independent count of the work: torch's FLOP counter per module. Freezing the three blocks (and the
    # stem) leaves only the classifier `fc` with weight gradients.
    data = load_trial_data(spec.config, "cpu")
    with FlopCounterMode(display=False) as counter:
        build_for(spec.config, data, "cpu").eval()(data.train_images[:2].float() / 255)
    flops = {name.split(".", 1)[-1]: sum(ops.values()) for name, ops in counter.get_flop_counts().items()}
    frozen_share = 1 - flops["fc"] / flops["Global"]
    assert 0.9 < frozen_share < 1  # the classifier is a small part of a WRN's work
    assert metrics["frozen_macs_share"].to_list() == pytest.approx([0, 0, frozen_share, frozen_share], rel=1e-6)

    layers = [("conv1", "conv"), ("block1.0", "block"), ("block2.0", "block"), ("block3.0", "block"), ("fc", "linear")]
    similarity = pl.from_arrow(pa.Table.from_pylist(
        [similarity_row("cross_epoch", "guided", "guided", i, i, 0.5 + 0.1 * e, epoch_a=e, epoch_b=4, job="guided", layers=layers)
         for e in range(1, 5) for i in range(len(layers))], schema=SIMILARITY_SCHEMA))
    top = fig6_convergence(similarity, metrics).to_dict()
    chart = top["vconcat"][0]
    band, line, rule = chart["spec"]["layer"]
    assert rule["mark"]["type"] == "rule" and rule["encoding"]["x"]["field"] == "epoch"
    marks = [r for r in top["datasets"][chart["data"]["name"]] if r["mark"] == "freeze"]
    assert sorted((r["block_a"], r["frozen_block"], r["epoch"]) for r in marks) == [
        ("block1", "block1.0", 3), ("block2", "block2.0", 3), ("block3", "block3.0", 3)]

    sentence = findings.freezing_finding(metrics)
    assert "trained block1.0 from epoch 3, block2.0 from epoch 3, block3.0 from epoch 3 frozen" in sentence
    # Two of the four epochs trained with the frozen share: half of it over the whole training.
    assert f"skipping {100 * frozen_share / 2:.1f}% of its 4 epochs' weight-gradient work" in sentence
    check = metrics["freeze_check_seconds"].sum() / metrics["epoch_seconds"].sum()
    assert f"the check took {100 * check:.1f}% of its epochs' measured time" in sentence


def test_an_unchanged_model_scores_an_adversarial_cka_of_one():
    """The adversarial probe is attacked from the same random start after every epoch: a model that did not
    change between two checks has the same adversarial representations (CKA 1), not those of another random
    start (CKA 0.986-0.995 for PGD-3 on digits, which kept a 0.995 threshold from ever being reached)."""
    spec = digits_spec("still", train={"epochs": 4, **PGD, "freeze": {"auto": {"probe": 64}}}, **TINY)
    data = load_trial_data(spec.config, "cpu")
    guide = guided_freezing(spec.config, build_for(spec.config, data, "cpu"), data, "cpu")
    guide.after_epoch(1)
    _, record = guide.after_epoch(2)  # no training in between
    assert record["cka_adversarial"] == pytest.approx([1.0] * 3, abs=1e-6)
    assert record["cka_benign"] == pytest.approx([1.0] * 3, abs=1e-6)


def test_the_default_probe_is_256_images_or_a_twentieth_of_a_small_training_set():
    spec = digits_spec("probe", train={"epochs": 4, "freeze": {"auto": {}}}, **TINY)
    data = load_trial_data(spec.config, "cpu")
    guide = guided_freezing(spec.config, build_for(spec.config, data, "cpu"), data, "cpu")
    assert data.train_images.shape[0] == 1347 and guide.images.shape[0] == 1347 // 20
    assert default_probe_size(50_000) == 256 and default_probe_size(100) == 32 and default_probe_size(10) == 10


def test_a_robust_check_attacks_half_the_probe_by_default_and_the_first_images_of_it():
    """The attack is most of a robust check's cost: by default only half the probe (at least 32) is attacked,
    the benign Gram keeps every image; ``adversarial_probe`` sets the count, at most the probe."""
    assert [default_adversarial_probe(n) for n in (256, 67, 40, 20)] == [128, 33, 32, 20]
    attacked = []

    def spy(model, images, labels):
        attacked.append(images)
        return images

    spec = digits_spec("probe", train={"epochs": 4, **PGD}, **TINY)
    data = load_trial_data(spec.config, "cpu")  # neither the data nor the model depends on the freezing settings
    model = build_for(spec.config, data, "cpu")
    for settings, count in (({}, 33), ({"adversarial_probe": 48}, 48), ({"probe": 40, "adversarial_probe": 100}, 40)):
        config = spec.config.model_copy(update={"train": spec.config.train.model_copy(
            update={"freeze": FreezeConfig.model_validate({"auto": settings})})})
        guide = guided_freezing(config, model, data, "cpu")
        guide.probe_attack = lambda: spy
        _, record = guide.after_epoch(1)
        assert record["adversarial_probe"] == count and torch.equal(attacked[-1], guide.images[:count])
