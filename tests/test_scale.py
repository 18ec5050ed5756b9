"""Hundreds of trials (issue 15, section 3): what reading a sweep's results costs grows with its trials, never with
its files. Measured by `benchmarks/sweep_scale.py`; pinned here by counting an object store's requests."""

from typer.testing import CliRunner

from counting_fs import copy_tree, object_store
from rayrs import checkpoint
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
