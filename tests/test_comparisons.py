"""Every comparison kind of the paper, from a sweep file through Ray tasks into Parquet (schema: rayrs.schema).

One tiny sweep (digits, WRN-10-1, a standard and a PGD-trained trial, 2 epochs) computes all five kinds; the
tests read its Parquet files the way the figures do.
"""

import dataclasses
import hashlib
import json
import shutil
from pathlib import Path

import polars as pl
import pytest
import torch
from safetensors.torch import load_file

from rayrs import storage as layout
from rayrs.config import SweepFileError, expand, load_experiment
from rayrs.models import ALL_LAYER_TYPES, PAPER_LAYER_TYPES
from rayrs.similarity import jobs as jobs_module
from rayrs.similarity.jobs import TRANSFER_ACCURACY, load_checkpoint_model, plan_jobs, plan_tasks, run_job, run_task
from rayrs.similarity.cka import jackknife_std_error
from rayrs.similarity.probes import AdversarialProbe, adversarial_probe
from rayrs.storage import Storage
from rayrs.sweep import SweepOptions, run_sweep
from rayrs.train import load_trial_data

LAYERS = 25  # WRN-10-1 (tests/test_models.py pins the list)
EPOCH_LAYERS = LAYERS + 3  # cross_epoch also compares the output of each of its 3 residual blocks
FINAL = 2

SWEEP = """
name: kinds
data: {dataset: digits}
model: {arch: wrn, depth: 10, width: 1}
train: {method: pgd, epochs: 2, batch_size: 64, attack: {steps: 2}}
eval: {eps: 0.1, attack: {steps: 2}, train_subset: 64, test_subset: 64}
grid: {eps: [0, 0.1]}
cka: {probe_size: 128, batch_size: 64, passes: 2}
compare:
  - {kind: cross_layer}
  - {kind: cross_model, measures: [cka, procrustes, svcca]}
  - {kind: benign_vs_adversarial}
  - {kind: transfer}
  - {kind: cross_epoch, probes: [benign, adversarial], layers: [conv1, -1], measures: [cka, procrustes]}
"""


@pytest.fixture(scope="module")
def sweep(tmp_path_factory, ray_session):
    folder = tmp_path_factory.mktemp("kinds")
    (folder / "kinds.yaml").write_text(SWEEP)
    experiment = load_experiment(folder / "kinds.yaml")
    outcome = run_sweep(experiment, SweepOptions(report=False), results=str(folder / "results"))
    return experiment, outcome


@pytest.fixture(scope="module")
def rows(sweep) -> pl.DataFrame:
    _, outcome = sweep
    return pl.read_parquet(Path(outcome.storage.root) / layout.SIMILARITY_DIR / "**" / "*.parquet")


def of(rows: pl.DataFrame, kind: str, measure: str = "cka") -> pl.DataFrame:
    return rows.filter((pl.col("kind") == kind) & (pl.col("measure") == measure))


def diagonal(frame: pl.DataFrame) -> pl.DataFrame:
    return frame.filter(pl.col("layer_a") == pl.col("layer_b"))


def test_every_kind_and_measure_writes_its_rows(sweep, rows):
    _, outcome = sweep
    counts = {(kind, measure): n for kind, measure, n in rows.group_by("kind", "measure").len().rows()}
    per_epoch_job = FINAL * EPOCH_LAYERS + 2 * FINAL * (FINAL - 1)  # every layer vs the final epoch + 2 matrix layers
    assert counts == {
        ("cross_layer", "cka"): 2 * LAYERS**2,
        ("cross_model", "cka"): LAYERS**2,  # one pair of trials
        ("cross_model", "procrustes"): LAYERS**2,
        ("cross_model", "svcca"): LAYERS**2,
        ("benign_vs_adversarial", "cka"): 2 * LAYERS**2,
        ("transfer", "cka"): 4 * LAYERS**2,  # 2 sources x 2 targets, white-box included
        ("transfer", TRANSFER_ACCURACY): 4,
        ("cross_epoch", "cka"): 2 * 2 * per_epoch_job,  # 2 trials x benign and adversarial probes
        ("cross_epoch", "procrustes"): 2 * 2 * per_epoch_job,
    }
    assert outcome.jobs_run == 2 + 3 + 2 + 8 + 8
    assert rows["job"].n_unique() == outcome.jobs_run and not rows["value"].is_nan().any()


def test_every_job_is_charged_its_compute_time_for_the_appb1_cost_figure(rows):
    from analysis.measures import appb1_cost

    per_job = rows.group_by("job").agg(pl.col("seconds").n_unique().alias("values"), pl.col("seconds").min())
    assert per_job["values"].to_list() == [1] * len(per_job)  # one time per job, on each of its rows
    assert (per_job["seconds"] > 0).all()
    chart = appb1_cost(rows, pl.DataFrame()).to_dict()
    bars = {row["measure"]: row for row in next(iter(chart["datasets"].values()))}
    assert set(bars) >= {"cka", "procrustes", "svcca"} and bars["cka"]["times"] == pytest.approx(1.0)


def test_cka_is_in_zero_one_and_one_where_a_layer_meets_itself(rows):
    cka = rows.filter(pl.col("measure") == "cka")
    assert cka["value"].is_between(-1e-6, 1 + 1e-6).all()
    assert diagonal(of(rows, "cross_layer"))["value"].to_numpy() == pytest.approx(1.0, abs=1e-5)
    white_box = of(rows, "transfer").filter(pl.col("model_a") == pl.col("model_b"))  # same model, same inputs
    assert diagonal(white_box)["value"].to_numpy() == pytest.approx(1.0, abs=1e-5)


def test_every_cka_and_accuracy_carries_its_jackknife_and_standard_error(sweep, rows):
    """Each value's 20 leave-one-group-out replicates and standard error (`rayrs.schema.STD_ERROR_FIELD`); the
    replicates are the value computed without each group of probe examples, checked here for the transfer
    accuracy by recounting from the source's adversarial probe."""
    from rayrs.similarity.cka import JACKKNIFE_GROUPS

    cka = rows.filter(pl.col("measure") == "cka")
    assert (cka["jackknife"].list.len() == JACKKNIFE_GROUPS).all() and cka["std_error"].is_not_null().all()
    replicates = torch.tensor(cka["jackknife"].to_list(), dtype=torch.float64).T
    torch.testing.assert_close(cka["std_error"].to_torch().double(), jackknife_std_error(replicates))
    off_diagonal = of(rows, "cross_model").filter(pl.col("layer_a") != pl.col("layer_b"))
    assert (off_diagonal["std_error"] > 0).all() and off_diagonal["std_error"].max() < 0.2
    # A layer against itself is exactly 1 without any group too: no uncertainty.
    assert diagonal(of(rows, "cross_layer"))["std_error"].max() < 1e-5
    assert of(rows, "cross_model", "procrustes")["std_error"].is_null().all()  # one minibatch: no jackknife

    experiment, outcome = sweep
    accuracy = of(rows, "transfer", TRANSFER_ACCURACY).filter(model_a="eps0.1", model_b="eps0")
    job = next(j for j in plan_jobs(experiment, expand(experiment)) if j.id == accuracy["job"][0])
    trials = {t.name: t for t in expand(experiment)}
    data = load_trial_data(trials["eps0"].config, "cpu")
    probe = AdversarialProbe.of("eps0.1", FINAL, trials["eps0.1"].config, 128)
    images, crafted = adversarial_probe(probe, outcome.storage, data, trials["eps0.1"].config, lambda: None)
    assert not crafted
    model = load_checkpoint_model(outcome.storage, job.b, trials["eps0"].config, data)
    from rayrs.similarity.probes import probe_indices

    labels = data.test_labels[probe_indices(data, 128)]
    with torch.no_grad():
        hits = (model(images).argmax(1) == labels).double()
    group = torch.arange(128) % JACKKNIFE_GROUPS
    expected = [hits[group != g].mean().item() for g in range(JACKKNIFE_GROUPS)]
    assert accuracy["value"][0] == pytest.approx(hits.mean().item())
    assert accuracy["jackknife"][0].to_list() == pytest.approx(expected)


def test_cross_model_compares_two_final_models_on_benign_probes(rows):
    for measure in ("cka", "procrustes", "svcca"):
        frame = of(rows, "cross_model", measure)
        assert frame.select("model_a", "model_b", "epoch_a", "epoch_b").unique().rows() == [("eps0", "eps0.1", FINAL, FINAL)]
        assert (frame["probe_a"] == "benign").all() and (frame["probe_b"] == "benign").all()
    assert of(rows, "cross_model", "procrustes")["value"].is_between(-1e-9, 2).all()  # a distance
    assert of(rows, "cross_model", "svcca")["value"].is_between(0, 1 + 1e-9).all()
    assert (of(rows, "cross_model", "procrustes")["n_examples"] == 64).all()  # one minibatch of the probe


def test_benign_vs_adversarial_uses_each_models_own_attack_and_robustness_shows_late(rows):
    frame = of(rows, "benign_vs_adversarial")
    probes = dict(frame.select("model_a", "probe_b").unique().rows())
    assert probes == {"eps0": "adversarial:eps0@2:linf:0.1:2", "eps0.1": "adversarial:eps0.1@2:linf:0.1:2"}
    assert (frame["probe_a"] == "benign").all() and (frame["model_a"] == frame["model_b"]).all()
    per_layer = diagonal(frame).pivot(on="model_a", index="layer_a", values="value").sort("layer_a")
    assert per_layer["eps0"][0] > 0.8  # the first layer barely notices the perturbation (paper §4.1)
    last = per_layer.tail(3)  # robust training keeps late adversarial representations closer (Fig 4)
    assert last["eps0.1"].mean() > last["eps0"].mean()


def test_transfer_has_the_accuracy_of_every_source_and_target(rows):
    accuracy = of(rows, "transfer", TRANSFER_ACCURACY)
    assert sorted(accuracy.select("model_a", "model_b").rows()) == [
        ("eps0", "eps0"), ("eps0", "eps0.1"), ("eps0.1", "eps0"), ("eps0.1", "eps0.1")
    ]
    assert (accuracy["layer_a"] == -1).all() and (accuracy["name_b"] == "output").all() and (accuracy["type_a"] == "output").all()
    assert (accuracy["probe_a"] == accuracy["probe_b"]).all() and (accuracy["n_examples"] == 128).all()
    assert accuracy["value"].is_between(0, 1).all()
    value = {(a, b): v for a, b, v in accuracy.select("model_a", "model_b", "value").rows()}
    assert value[("eps0.1", "eps0.1")] <= value[("eps0", "eps0.1")]  # white-box is the strongest attack on it
    cross = of(rows, "transfer").filter(pl.col("model_a") != pl.col("model_b"))
    assert (cross["probe_a"] == cross["probe_b"]).all()
    assert set(cross["probe_a"]) == {"adversarial:eps0@2:linf:0.1:2", "adversarial:eps0.1@2:linf:0.1:2"}


def test_cross_epoch_keeps_same_layer_pairs_for_fig6_and_the_epoch_matrix(rows):
    for measure, identical in (("cka", 1.0), ("procrustes", 0.0)):
        frame = of(rows, "cross_epoch", measure)
        assert (frame["layer_a"] == frame["layer_b"]).all()
        same_epoch = frame.filter(pl.col("epoch_a") == pl.col("epoch_b"))["value"].to_numpy()
        assert same_epoch == pytest.approx(identical, abs=1e-5)
        to_final = frame.filter((pl.col("epoch_b") == FINAL) & (pl.col("probe_a") == "benign") & (pl.col("model_a") == "eps0"))
        assert sorted(to_final.select("epoch_a", "layer_a").rows()) == [(e, l) for e in (1, 2) for l in range(EPOCH_LAYERS)]
        matrix = frame.filter(pl.col("epoch_b") != FINAL)
        assert set(matrix["layer_a"]) == {0, EPOCH_LAYERS - 1} and set(matrix["name_a"]) == {"conv1", "fc"}
        # The paper's layers and, by default, each residual block's output: Fig 6 draws the blocks'.
        layers = to_final.filter(pl.col("epoch_a") == 1).sort("layer_a")
        assert layers.filter(pl.col("type_a") == "block")["name_a"].to_list() == ["block1.0", "block2.0", "block3.0"]
        paper = of(rows, "cross_layer").filter((pl.col("model_a") == "eps0") & (pl.col("layer_b") == 0))
        paper = paper.sort("layer_a")["name_a"].to_list()
        assert layers.filter(pl.col("type_a") != "block")["name_a"].to_list() == paper
    adversarial = of(rows, "cross_epoch").filter(pl.col("probe_a") != "benign")
    pairs = set(adversarial.filter(pl.col("model_a") == "eps0").select("epoch_a", "probe_a").rows())
    assert pairs == {(1, "adversarial:eps0@1:linf:0.1:2"), (2, "adversarial:eps0@2:linf:0.1:2")}  # each epoch its own


def test_adversarial_probes_are_float32_files_made_once_and_then_read(sweep, tmp_path):
    experiment, outcome = sweep
    root = Path(outcome.storage.root)
    names = {p.name for p in (root / layout.PROBES_DIR).iterdir()}
    assert names == {f"adversarial:{t}@{e}:linf:0.1:2.safetensors" for t in ("eps0", "eps0.1") for e in (1, 2)}
    tensors = load_file(root / layout.probe("adversarial:eps0@2:linf:0.1:2"))
    assert tensors["images"].dtype == torch.float32 and tensors["images"].shape == (128, 1, 16, 16)

    trial = next(t for t in expand(experiment) if t.name == "eps0.1")
    probe = AdversarialProbe.of(trial.name, FINAL, trial.config, 128)
    data = load_trial_data(trial.config, torch.device("cpu"))
    storage = Storage(root)
    before = (root / probe.path).stat().st_mtime_ns

    def never() -> torch.nn.Module:
        raise AssertionError("a cached probe must be read, not crafted again")

    images, crafted = adversarial_probe(probe, storage, data, trial.config, never)
    assert not crafted and (root / probe.path).stat().st_mtime_ns == before
    assert torch.equal(images, load_file(root / probe.path)["images"])
    # Crafting again (as a racing task would) gives the same file content, written atomically.
    copy = Storage(tmp_path)
    model = load_checkpoint_model(storage, jobs_module.ModelRef(trial.name, FINAL, trial.fingerprint), trial.config, data)
    again, crafted = adversarial_probe(probe, copy, data, trial.config, lambda: model)
    assert crafted and torch.equal(again, images)


def test_a_rerun_computes_nothing_and_a_lost_job_is_redone_from_cached_probes(sweep):
    experiment, outcome = sweep
    root = Path(outcome.storage.root)
    again = run_sweep(experiment, SweepOptions(resume=True, report=False), results=str(root.parent))
    assert again.trained == [] and again.jobs_run == 0 and again.jobs_skipped == 23

    probes = {p: p.stat().st_mtime_ns for p in (root / layout.PROBES_DIR).iterdir()}
    lost = next((root / layout.SIMILARITY_DIR / "transfer").iterdir())
    before = pl.read_parquet(lost)
    lost.unlink()
    redo = run_sweep(experiment, SweepOptions(resume=True, report=False), results=str(root.parent))
    assert redo.jobs_run == 1
    assert {p: p.stat().st_mtime_ns for p in (root / layout.PROBES_DIR).iterdir()} == probes  # read, not crafted
    assert pl.read_parquet(lost).drop("seconds").equals(before.drop("seconds"))  # the same rows, timed anew


def test_a_task_forms_each_views_grams_once_per_minibatch(sweep, tmp_path, monkeypatch):
    experiment, outcome = sweep
    shutil.copytree(Path(outcome.storage.root) / layout.TRIALS_DIR, tmp_path / layout.TRIALS_DIR)
    shutil.copytree(Path(outcome.storage.root) / layout.PROBES_DIR, tmp_path / layout.PROBES_DIR)
    trials = expand(experiment)
    tasks = plan_tasks(plan_jobs(experiment, trials))
    assert [task.trial for task in tasks] == ["eps0", "eps0.1"]  # one task per home trial
    task = tasks[1]
    formed = []
    original = jobs_module._TaskRun._grams

    def counting(self, view, batch):
        formed.append((view, tuple(batch.tolist())))
        return original(self, view, batch)

    monkeypatch.setattr(jobs_module._TaskRun, "_grams", counting)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in a Ray worker: the 2 cores are shared with Ray's idle workers
    try:
        events = list(run_task(task, {t.name: t.config for t in trials}, Storage(tmp_path), torch.device("cpu")))
    finally:
        torch.set_num_threads(threads)
    minibatches = 2 * 2  # 2 passes over 128 probe inputs in minibatches of 64
    # eps0.1's views: epochs 2 and 1 on benign and on their own adversarial probes, and eps0 (a transfer target)
    # on eps0.1's probe; cross_model's pair belongs to eps0's task
    assert len(formed) == len(set(formed)) == 5 * minibatches
    assert sum(isinstance(e, jobs_module.JobDone) for e in events) == len(task.jobs)


def test_a_job_reads_its_own_layers_out_of_views_that_record_more(sweep, tmp_path):
    experiment, outcome = sweep
    shutil.copytree(Path(outcome.storage.root) / layout.TRIALS_DIR, tmp_path / layout.TRIALS_DIR)
    trials = expand(experiment)
    jobs = plan_jobs(experiment, trials)
    job = next(j for j in jobs if j.kind == "cross_layer" and j.a.trial == "eps0.1")
    # In the sweep this job shared its views with eps0.1's cross_epoch jobs, which also record the residual
    # blocks: it read its 25 layers out of 28 Grams a view. Alone, its views record just its own layers.
    assert "block" not in job.layer_types
    assert any(j.kind == "cross_epoch" and "block" in j.layer_types and j.a.trial == "eps0.1" for j in jobs)
    run_job(job, {t.name: t.config for t in trials}, Storage(tmp_path), torch.device("cpu"))
    alone = pl.read_parquet(tmp_path / job.output).drop("seconds")
    shared = pl.read_parquet(Path(outcome.storage.root) / job.output).drop("seconds")
    assert alone.drop("value").equals(shared.drop("value"))
    # The same Grams either way; only the all-pairs product's float32 summation order may differ.
    assert alone["value"].to_numpy() == pytest.approx(shared["value"].to_numpy(), abs=1e-6)


BAD_COMPARISONS = {
    "unknown kind": ("compare: [{kind: cross_galaxy}]", ("unknown comparison kind 'cross_galaxy'; choose one of: "
                                                          "cross_layer, cross_model, benign_vs_adversarial, transfer, cross_epoch")),
    "unknown trial": ("compare: [{kind: cross_model, pairs: [[eps0, eps9]]}]",
                      "compare.0.cross_model.pairs: no trial named 'eps9' in this sweep; its trials are: eps0, eps0.1"),
    "unknown trial in a list": ("compare: [{kind: cross_layer}, {kind: transfer, models: [eps0, robust]}]",
                                "compare.1.transfer.models: no trial named 'robust'"),
    "a trial with itself": ("compare: [{kind: cross_model, pairs: [[eps0, eps0]]}]", "compares a trial with itself"),
    "bad layer name": ("compare: [{kind: cross_epoch, layers: [conv1, block9.conv]}]",
                       "compare.0.cross_epoch.layers: trial 'eps0': no layer named 'block9.conv'; the model's 28 layers of "
                       "types conv, bn, act, pool, linear, block are named like conv1"),
    "a block not compared": ("compare: [{kind: cross_epoch, layer_types: [conv], layers: [block1.0]}]",
                             "no layer named 'block1.0'; the model's 9 layers of types conv are named like conv1"),
    "layer index out of range": ("compare: [{kind: cross_epoch, layers: [28]}]", "layer index 28 is out of range for the model's 28 layers"),
    "unknown layer type": ("compare: [{kind: cross_layer, layer_types: [conv, residual]}]",
                           "compare.0.cross_layer.layer_types.1: Input should be 'conv', 'bn', 'act', 'pool', 'linear' or 'block'"),
    "layer type twice": ("compare: [{kind: cross_layer, layer_types: [block, block]}]",
                         "compare.0.cross_layer.layer_types: list each layer type once, got ['block', 'block']"),
    "epoch past the end": ("compare: [{kind: benign_vs_adversarial, epochs: [3]}]", "compare.0.benign_vs_adversarial.epochs: benign_vs_adversarial epoch 3 is past trial 'eps0''s 2 epochs"),
    "unknown measure": ("compare: [{kind: cross_layer, measures: [cka, pwcca]}]", "Input should be 'cka', 'procrustes', 'svcca' or 'svcca_variance'"),
    "measure twice": ("compare: [{kind: cross_layer, measures: [cka, cka]}]", "list each measure once"),
    "unknown probe": ("compare: [{kind: cross_epoch, probes: [noisy]}]", "Input should be 'benign' or 'adversarial'"),
    "not a list of trials": ("compare: [{kind: transfer, models: eps0}]", "compare.0.transfer.models: give 'all' or a list of trial names, got 'eps0'"),
    "not a pair": ("compare: [{kind: cross_model, pairs: [[eps0]]}]", "give 'all' or a list of [trial, trial] pairs, got ['eps0'] in the list"),
    "too many matrix layers": ("compare: [{kind: cross_epoch, layers: [0, 1, 2, 3, 4, 5, 6, 7, 8]}]", "give 1 to 8 layers for the epoch x epoch matrix, got 9"),
}


@pytest.mark.parametrize("case", list(BAD_COMPARISONS))
def test_a_bad_comparison_is_one_line_naming_the_field(tmp_path, case):
    text, expected = BAD_COMPARISONS[case]
    path = tmp_path / "bad.yaml"
    path.write_text(f"model: {{arch: wrn, depth: 10, width: 1}}\ntrain: {{epochs: 2}}\ngrid: {{eps: [0, 0.1]}}\n{text}\n")
    with pytest.raises(SweepFileError) as caught:
        load_experiment(path)
    message = str(caught.value)
    assert message.startswith(f"{path}: ") and expected in message and "\n" not in message


def test_models_on_different_probe_datasets_cannot_be_compared(tmp_path):
    path = tmp_path / "mixed.yaml"
    path.write_text("grid: {dataset: [digits, cifar10]}\ncompare: [{kind: cross_model, pairs: [[digits, cifar10]]}]\n")
    with pytest.raises(SweepFileError, match=r"compare.0.cross_model.pairs: trials 'digits' \(digits at 16 px\) and 'cifar10' "
                                             r"\(cifar10 at 32 px\) see different probe datasets"):
        load_experiment(path)
    path.write_text("grid: {dataset: [digits, cifar10]}\ncompare: [{kind: cross_model}, {kind: transfer}]\n")
    experiment = load_experiment(path)  # `all` pairs only trials of the same dataset: none here but white-box
    jobs = plan_jobs(experiment, expand(experiment))
    assert {job.kind for job in jobs} == {"transfer"} and all(job.a == job.b for job in jobs)


def test_job_ids_pin_everything_that_changes_the_rows(tmp_path):
    path = tmp_path / "ids.yaml"
    path.write_text(SWEEP)
    experiment = load_experiment(path)
    jobs = plan_jobs(experiment, expand(experiment))
    assert len({job.id for job in jobs}) == len(jobs) == 23
    fewer_passes = experiment.model_copy(update={"cka": experiment.cka.model_copy(update={"passes": 3})})
    assert not {job.id for job in jobs} & {job.id for job in plan_jobs(fewer_passes, expand(fewer_passes))}
    epoch_job = next(job for job in jobs if job.kind == "cross_epoch")
    assert epoch_job.epochs == (1, 2) and epoch_job.layers == (0, EPOCH_LAYERS - 1)
    assert all(job.output == f"similarity/{job.kind}/{job.id}.parquet" for job in jobs)
    assert len(set(jobs)) == len(jobs)  # plain hashable values
    # Another set of compared layers is another job; the paper's default set (unpooled) keeps the id a job had
    # before layer types and pooling existed, so its file from then is still found.
    cross_layer = next(job for job in jobs if job.kind == "cross_layer")
    assert cross_layer.layer_types == PAPER_LAYER_TYPES and epoch_job.layer_types == ALL_LAYER_TYPES
    assert dataclasses.replace(cross_layer, layer_types=ALL_LAYER_TYPES).id != cross_layer.id
    later = {"layer_types", "pool_features"}
    before = {key: value for key, value in dataclasses.asdict(cross_layer).items() if key not in later}
    assert cross_layer.id == hashlib.sha256(json.dumps(before, sort_keys=True).encode()).hexdigest()[:16]
    # svcca changed meaning (99% of the variance -> the paper's top 20 directions): its jobs' ids carry the
    # measure's revision, so a file computed under the old meaning is never read as the new one.
    svcca_job = next(job for job in jobs if job.measure == "svcca")
    old_svcca = {key: value for key, value in dataclasses.asdict(svcca_job).items() if key not in later}
    assert svcca_job.id != hashlib.sha256(json.dumps(old_svcca, sort_keys=True).encode()).hexdigest()[:16]
    # The layer types of a comparison are a set: their order in the file does not make another job.
    reordered = experiment.model_copy(update={"compare": [experiment.compare[0].model_copy(
        update={"layer_types": ["linear", "pool", "act", "bn", "conv"]})]})
    assert plan_jobs(reordered, expand(reordered))[0].id == cross_layer.id
    # Pooled features are other rows; `large_images` leaves 16-px digits unpooled, so their jobs are the same.
    def with_pooling(value):
        changed = experiment.model_copy(update={"cka": experiment.cka.model_copy(update={"pool_features": value})})
        return plan_jobs(changed, expand(changed))

    pooled = with_pooling(True)
    assert all(job.pool_features for job in pooled) and not {job.id for job in pooled} & {job.id for job in jobs}
    assert [job.id for job in with_pooling("large_images")] == [job.id for job in jobs]


def test_large_images_pools_the_imagenet_subsets_but_not_cifar(tmp_path):
    path = tmp_path / "pooled.yaml"
    path.write_text("grid: {dataset: [cifar10, imagenette]}\ncka: {pool_features: large_images}\n"
                    "compare: [{kind: cross_layer}]\n")
    experiment = load_experiment(path)
    pooled = {job.a.trial: job.pool_features for job in plan_jobs(experiment, expand(experiment))}
    assert pooled == {"cifar10": False, "imagenette": True}  # 32 px vs 224 px
    assert "pooled" in next(job for job in plan_jobs(experiment, expand(experiment)) if job.pool_features).describe()
    path.write_text("cka: {pool_features: sometimes}\n")
    with pytest.raises(SweepFileError, match="cka.pool_features: give true, false or large_images, got .sometimes."):
        load_experiment(path)
