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
