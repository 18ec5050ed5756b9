"""Hundreds of trials (issue 15, section 3): what reading a sweep's results costs grows with its trials, never with
its files. Measured by `benchmarks/sweep_scale.py`; pinned here by counting an object store's requests."""

from typer.testing import CliRunner

from counting_fs import copy_tree, object_store
from rayrs import checkpoint
from rayrs import storage as layout
from rayrs.cli import app
from rayrs.config import expand, load_experiment
from rayrs.storage import Storage


def test_status_on_an_object_store_lists_each_trial_once_and_asks_nothing_per_file(finished_sweep, monkeypatch):
    sweep_file, results = finished_sweep
    trials = expand(load_experiment(sweep_file))
    store = object_store(monkeypatch)
    copy_tree(results / "kept", store, "bucket/kept")
    epochs = {t.name: checkpoint.completed_epochs(Storage(results / "kept"), t.name) for t in trials}
    assert epochs == {t.name: [1, 2] for t in trials}

    result = CliRunner().invoke(app, ["status", "mock:///bucket/kept"])
    assert result.exit_code == 0, result.output
    assert "trials: 2 done, 0 started, 0 pending; comparison jobs: 4/4 done" in result.output
    # Per trial: one LIST of its folder (its epochs are what the LIST shows), one GET of its trial.json and one
    # of each epoch's meta.json: nothing else grows with the trials or their files (before: two LISTs, a HEAD of
    # each meta.json and of trial.json, and each meta.json read twice). Fixed: LISTs of trials/ and similarity/;
    # HEADs of the root (`Storage.check`), of sweep.json (twice), of trials/ and of each comparison file; GETs of
    # sweep.json (twice), of each comparison file and of the lease.
    jobs = 4
    assert store.calls["listings"] == len(trials) + 2
    assert store.calls["reads"] == sum(1 + len(e) for e in epochs.values()) + 2 + jobs + 1
    assert store.calls["infos"] == 4 + jobs


def test_reading_a_sweep_and_planning_its_comparisons_never_imports_torch_dynamo():
    # The config checks each architecture by building it on the meta device, and comparisons are planned over
    # meta-device layer listings; torch's meta normal_ (He init) imports torch._dynamo, 4 s of every `rayrs status`
    # on a busy 2-core machine (benchmarks/README.md, sweep_scale.py). A fresh process: this one may hold it already.
    import subprocess
    import sys
    from pathlib import Path

    sweep = Path(__file__).resolve().parents[1] / "sweeps" / "quickstart.yaml"
    code = ("import sys; from rayrs.config import expand, load_experiment; from rayrs.similarity.jobs import plan_jobs; "
            "e = load_experiment(sys.argv[1]); print(len(plan_jobs(e, expand(e))), 'torch._dynamo' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code, str(sweep)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    jobs, imported = done.stdout.split()
    assert int(jobs) > 0 and imported == "False"


def _tiny(name: str, **train):
    from digits import digits_spec

    return digits_spec(name, model={"arch": "wrn", "depth": 10, "width": 1},
                       train={"epochs": 1, "batch_size": 256, "attack": {"steps": 1}, **train},
                       eval={"attack": {"steps": 1}, "train_subset": 32, "test_subset": 32})


def test_trials_on_one_reused_worker_share_its_dataset_and_train_the_bits_of_a_fresh_load(tmp_path):
    # Tune reuses a trial's actor for the next one, and the actor keeps the dataset it loaded (`_trial_data`): the
    # second trial must train exactly what it trains on data of its own, and the first must leave the data as read.
    import torch

    from rayrs import sweep
    from rayrs.train import load_trial_data, train_trial

    first, second = _tiny("first", method="pgd", eps=0.1, seed=1), _tiny("second", seed=2)
    sweep._actor_data.clear()
    shared = sweep._trial_data(first.config, torch.device("cpu"))
    pristine = load_trial_data(first.config, "cpu")
    reused = Storage(tmp_path / "reused")
    train_trial(first, reused, "cpu", threads=1, data=shared)
    for split in ("train_images", "train_labels", "test_images", "test_labels"):
        assert torch.equal(getattr(shared, split), getattr(pristine, split)), split  # read, never written
    assert sweep._trial_data(second.config, torch.device("cpu")) is shared  # not loaded again
    train_trial(second, reused, "cpu", threads=1, data=shared)
    fresh = Storage(tmp_path / "fresh")
    train_trial(second, fresh, "cpu", threads=1)
    assert reused.read_bytes(layout.weights("second", 1)) == fresh.read_bytes(layout.weights("second", 1))
    sweep._actor_data.clear()


def test_tune_creates_each_trial_without_copying_every_spec_of_the_grid(tmp_path):
    # Tune deep-copies its whole param space, grid values included, for each trial it creates: quadratic in the
    # trials with the specs as plain dicts (9.6 s of driver CPU at 500: benchmarks/README.md). Each trial's config
    # must hold its own spec, the very object given (not a copy), and every pending trial exactly once.
    from ray.tune.search.variant_generator import generate_variants

    from rayrs.config import Experiment
    from rayrs.sweep import _param_space

    experiment = Experiment.model_validate({"name": "grid", "data": {"dataset": "digits"}, "grid": {"seed": list(range(40))}})
    pending = expand(experiment)
    space = _param_space(pending, Storage(tmp_path), experiment)
    given = space["trial"]["grid_search"]
    configs = [config for _, config in generate_variants(space)]
    assert [c["trial"]["name"] for c in configs] == [t.name for t in pending]
    assert all(c["trial"] is spec for c, spec in zip(configs, given))
    assert [c["trial"] for c in configs] == [t.model_dump(mode="json") for t in pending]
    assert all(c["storage"] == str(tmp_path) and c["threads"] == 1 for c in configs)
