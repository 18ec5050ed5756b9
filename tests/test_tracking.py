"""Where the lab already looks: TensorBoard event files, MLflow and Weights & Biases runs of a real sweep.

One tiny sweep through Ray Tune (digits, WRN-10-1, 2 epochs, standard and PGD training) with both trackers;
each tracker's own files are then read back with its own package (MLflow's client on its local file store,
W&B's offline run files: W&B never touches the network here) and held against ``metrics.parquet``.

On demand (``RAYRS_TEST_TRACKING_RESUME=1``, about 50 s more on 2 loaded cores) the same tests run on the sweep
stopped after the first epoch of its first trial and finished with ``--resume``: one run per trial in each tracker,
the resumed trial's included, its steps going on at epoch 2.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest
from typer.testing import CliRunner

from rayrs import checkpoint, sweep
from rayrs import storage as layout
from rayrs.cli import app
from rayrs.config import expand, load_experiment
from rayrs.sweep import SweepOptions, run_sweep

TRACKED = """
name: tracked
data: {{dataset: digits}}
model: {{arch: wrn, depth: 10, width: 1}}
train: {{epochs: 2, batch_size: 128, lr: 0.05, attack: {{steps: 1}}}}
eval: {{eps: 0.1, attack: {{steps: 2}}, train_subset: 64, test_subset: 64}}
grid: {{method: [standard, pgd]}}
compare: []
resources: {{cpus_per_trial: {cpus}}}
tracking:
  mlflow: {{tracking_uri: "{mlruns}", experiment: rayrs-tests, tags: {{lab: tests}}}}
  wandb: {{project: rayrs-tests, mode: offline, dir: "{wandb}"}}
"""
STOP_AND_RESUME = os.environ.get("RAYRS_TEST_TRACKING_RESUME") == "1"
EPOCH_METRICS = ["train_clean_acc", "train_robust_acc", "test_clean_acc", "test_robust_acc", "test_robust_loss"]


class Stopped(Exception):
    """The driver stopped mid-sweep (as by a lost driver): raised from its progress callback."""


@pytest.fixture(scope="module")
def tracked(tmp_path_factory, ray_session):
    """The tracked sweep: ``(outcome, metrics frame, MLflow URI, W&B folder, stopped trial or None)``.

    With ``STOP_AND_RESUME`` the driver stops as the first trial's first epoch reaches it, and ``--resume`` finishes
    the sweep. The trials then run one at a time (2 CPUs each of the session's 2), and a Tune trial waits in its
    report until the driver asks for more, so at that moment no other epoch exists: the stopped trial has epoch 1
    of 2, the other none.
    """
    folder = tmp_path_factory.mktemp("tracked")
    mlruns, wandb_dir = (folder / "mlruns").as_uri(), folder / "wandb"
    sweep_file = folder / "tracked.yaml"
    sweep_file.write_text(TRACKED.format(mlruns=mlruns, wandb=wandb_dir, cpus=2 if STOP_AND_RESUME else 1))
    reported = sweep._Progress.epoch
    stopped = []

    def stop_at_first_epoch(progress, trial, metrics):
        reported(progress, trial, metrics)
        stopped.append(trial)
        raise Stopped(trial)

    with pytest.MonkeyPatch.context() as env:
        env.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow 3 opens its file store only when asked to
        env.setenv("WANDB_MODE", "offline")  # belt and braces: the sweep file already says offline
        env.setenv("WANDB_SILENT", "true")
        env.setenv("WANDB_DIR", str(wandb_dir))
        experiment, results = load_experiment(sweep_file), str(folder / "results")
        if not STOP_AND_RESUME:
            outcome = run_sweep(experiment, SweepOptions(), results=results)
            yield outcome, pl.read_parquet(outcome.storage.local_path(layout.METRICS)), mlruns, wandb_dir, None
            return
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(sweep._Progress, "epoch", stop_at_first_epoch)
            with pytest.raises(Exception) as raised:
                run_sweep(experiment, SweepOptions(), results=results)
        assert any(isinstance(e, Stopped) for e in _chain(raised.value)), raised.value
        storage = sweep.experiment_storage(experiment, results)
        assert {t.name: checkpoint.completed_epochs(storage, t.name) for t in expand(experiment)} == {
            t.name: [1] if t.name == stopped[0] else [] for t in expand(experiment)}
        outcome = run_sweep(experiment, SweepOptions(resume=True), results=results)
        metrics = pl.read_parquet(outcome.storage.local_path(layout.METRICS))
        yield outcome, metrics, mlruns, wandb_dir, stopped[0]


def _chain(error: BaseException | None):
    while error is not None:
        yield error
        error = error.__cause__ or error.__context__


def test_mlflow_has_one_run_per_trial_with_its_parameters_and_epoch_metrics(tracked):
    from mlflow.tracking import MlflowClient

    outcome, metrics, mlruns, _, _ = tracked
    client = MlflowClient(tracking_uri=mlruns)
    experiment = client.get_experiment_by_name("rayrs-tests")
    found = client.search_runs([experiment.experiment_id])
    runs = {run.data.tags["rayrs.trial"]: run for run in found}
    # One run per trial: the trial stopped after epoch 1 logged epoch 2 into the run it started, not a new one.
    assert len(found) == len(runs) and sorted(runs) == sorted(t.name for t in outcome.trials)
    for trial, run in runs.items():
        rows = metrics.filter(pl.col("trial") == trial).sort("epoch")
        assert run.info.status == "FINISHED" and run.info.run_name == trial
        assert run.data.tags["lab"] == "tests" and run.data.tags["rayrs.results"] == outcome.storage.root
        params = run.data.params  # MLflow keeps parameters as text
        assert params["method"] == rows["method"][0] and float(params["eps"]) == rows["eps"][0]
        assert params["train.method"] == rows["method"][0] and params["train.epochs"] == "2"
        assert params["fingerprint"] == next(t.fingerprint for t in outcome.trials if t.name == trial)
        for name in EPOCH_METRICS:
            history = sorted(client.get_metric_history(run.info.run_id, name), key=lambda m: m.step)
            assert [(m.step, m.value) for m in history] == list(zip(rows["epoch"], rows[name])), (trial, name)
        assert "training_iteration" not in run.data.metrics and "pid" not in run.data.metrics  # Tune's, not the trial's
        # The report's path, tagged after the sweep drew it.
        report = Path(run.data.tags["rayrs.report"])
        assert report == outcome.report_dir / "index.html" and report.is_file()


def _wandb_records(run_file: Path) -> list:
    """Every record of a W&B offline run file (``run-<id>.wandb``) as wandb's own protobuf ``Record``.

    The file is W&B's header (``:W&B``, magic, version: 7 bytes), then LevelDB's log format: 32 KiB blocks of
    chunks, each a 7-byte header (CRC, length, kind: full / first / middle / last) and its bytes (wandb 0.31
    reads it from Go and no longer ships a Python reader).
    """
    import struct

    from wandb.proto import wandb_internal_pb2

    data, block = run_file.read_bytes(), 32768
    assert data[:4] == b":W&B"
    records, chunk, at = [], b"", 7
    while at + 7 <= len(data):
        if block - at % block < 7:  # a block's tail too short for a header is padding
            at += block - at % block
            continue
        length, kind = struct.unpack("<HB", data[at + 4:at + 7])
        chunk, at = chunk + data[at + 7:at + 7 + length], at + 7 + length
        if kind in (1, 4):  # full, or the last chunk of a record
            record = wandb_internal_pb2.Record()
            record.ParseFromString(chunk)
            records.append(record)
            chunk = b""
    return records


def test_wandb_offline_has_one_run_per_trial_with_its_config_and_epoch_metrics(tracked):
    outcome, metrics, _, wandb_dir, stopped = tracked
    runs, folders = {}, {}
    # Offline, each run of the sweep writes a folder of its own (named by its start time); a resumed trial's
    # second folder carries the same run id, and its history goes on at step = epoch.
    for folder in sorted((wandb_dir / "wandb").glob("offline-run-*")):
        records = _wandb_records(next(folder.glob("run-*.wandb")))
        run = next(r.run for r in records if r.WhichOneof("record_type") == "run")
        config = {item.key: json.loads(item.value_json) for item in run.config.update}
        history = [
            {item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in r.history.item}
            for r in records if r.WhichOneof("record_type") == "history"
        ]
        assert [r.history.step.num for r in records if r.WhichOneof("record_type") == "history"] == [
            step["epoch"] for step in history]
        folders.setdefault(run.display_name, []).append(run.run_id)
        earlier = runs.get(run.display_name, (None, None, []))[2]
        runs[run.display_name] = (run, config, earlier + history)
    assert sorted(runs) == sorted(t.name for t in outcome.trials)
    assert {trial: len(ids) for trial, ids in folders.items()} == {t.name: 1 + (t.name == stopped) for t in outcome.trials}
    assert all(len(set(ids)) == 1 for ids in folders.values()), folders  # the resumed trial's run, continued
    assert len({ids[0] for ids in folders.values()}) == len(folders)  # and each trial a run of its own
    for trial, (run, config, history) in runs.items():
        rows = metrics.filter(pl.col("trial") == trial).sort("epoch")
        assert run.project == "rayrs-tests" and run.run_group == "tracked"
        spec = config["trial"]  # the trial's spec, as Tune's param space holds it
        assert spec["name"] == trial and spec["config"]["train"]["method"] == rows["method"][0]
        assert spec["config"]["train"]["eps"] == rows["eps"][0]
        assert str(outcome.storage.root) in run.notes  # where its results are
        assert [step["epoch"] for step in history] == rows["epoch"].to_list()
        for name in EPOCH_METRICS:
            assert [step[name] for step in history] == rows[name].to_list(), (trial, name)


def _event_scalars(event_file: Path) -> dict[str, list[tuple[int, float]]]:
    """tag -> [(step, value)] of a TensorBoard event file (TFRecord framing around tensorboardX's Event protos)."""
    import struct

    from tensorboardX.proto import event_pb2

    scalars: dict[str, list[tuple[int, float]]] = {}
    data, at = event_file.read_bytes(), 0
    while at < len(data):
        (length,) = struct.unpack("<Q", data[at:at + 8])
        event = event_pb2.Event()
        event.ParseFromString(data[at + 12:at + 12 + length])  # skip the length's CRC; the record's follows it
        at += 12 + length + 4
        for value in event.summary.value:
            scalars.setdefault(value.tag, []).append((event.step, value.simple_value))
    return scalars


def test_tune_writes_tensorboard_event_files_of_every_epoch(tracked):
    """The README's `tensorboard --logdir <results>/<name>/ray` finds each trial's per-epoch metrics there."""
    outcome, metrics, _, _, _ = tracked
    root = outcome.storage.local_path(layout.RAY_DIR)
    for trial in outcome.trials:
        rows = metrics.filter(pl.col("trial") == trial.name).sort("epoch")
        # An event file per run of the sweep that trained the trial, named by its start second (two runs within
        # one second share one), so the stopped trial's epochs may be spread over two.
        files = sorted(root.glob(f"train/{trial.name}/events.out.tfevents.*"), key=lambda f: int(f.name.split(".")[3]))
        assert files
        scalars: dict[str, list] = {}
        for event_file in files:
            for tag, values in _event_scalars(event_file).items():
                scalars.setdefault(tag, []).extend(values)
        if trial.name == tracked[4]:
            # Tune's own loggers run after rayrs's callbacks: the epoch at which the driver stopped never reached
            # them (nor Tune's result.json). The trackers have it: they come before the progress bars.
            rows = rows.filter(pl.col("epoch") > 1)
        for name in EPOCH_METRICS:
            assert [value for _, value in scalars[f"ray/tune/{name}"]] == pytest.approx(rows[name].to_list(), abs=1e-6)


def test_a_sweep_without_tracking_imports_neither_package(tmp_path):
    code = (
        "import sys\n"
        "from rayrs import sweep, tracking\n"
        "from rayrs.config import Experiment\n"
        "from rayrs.storage import Storage\n"
        "experiment = Experiment(name='plain')\n"
        "tracking.check(experiment)\n"
        f"assert tracking.callbacks(experiment, Storage({str(tmp_path)!r})) == []\n"
        "import ray.tune\n"
        "print(sorted(name for name in ('mlflow', 'wandb') if name in sys.modules))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_a_missing_tracker_package_is_one_line_and_nothing_is_written(tmp_path, monkeypatch):
    sweep_file = tmp_path / "tracked.yaml"
    sweep_file.write_text(TRACKED.format(mlruns=(tmp_path / "mlruns").as_uri(), wandb=tmp_path / "wandb", cpus=1))
    monkeypatch.setitem(sys.modules, "wandb", None)  # what Python does for a package that is not installed
    result = CliRunner().invoke(app, ["sweep", str(sweep_file), "--results", str(tmp_path / "results")])
    assert result.exit_code == 1
    assert result.output.strip() == (
        "error: tracking.wandb: the wandb package is not installed; run `uv sync --extra tracking` "
        "(or remove tracking.wandb from the sweep file)"
    )
    assert not (tmp_path / "results").exists() and not (tmp_path / "mlruns").exists()


@pytest.mark.parametrize(("uri", "allow", "expected"), [
    ("file:///nowhere/mlruns", None, "tracking.mlflow.tracking_uri file:///nowhere/mlruns is MLflow's file store, "
     "which MLflow 3 opens only with MLFLOW_ALLOW_FILE_STORE=true: set that in the environment, or give an MLflow "
     "server (http://HOST:5000)"),
    ("sqlite:///nowhere/mlflow.db", "true", "tracking.mlflow.tracking_uri sqlite:///nowhere/mlflow.db is a database "
     "store, which needs the full MLflow (`uv pip install mlflow`; the tracking extra brings mlflow-skinny); or give "
     "an MLflow server (http://HOST:5000) or a file store"),
])
def test_an_mlflow_store_this_mlflow_refuses_is_one_line_before_anything_runs(tmp_path, monkeypatch, uri, allow,
                                                                             expected):
    """Without these checks MLflow raises its own error from inside the first trial, after Ray has started."""
    if allow is None:
        monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE", raising=False)
    else:
        monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", allow)
    sweep_file = tmp_path / "tracked.yaml"
    sweep_file.write_text(f"data: {{dataset: digits}}\ntracking: {{mlflow: {{tracking_uri: '{uri}'}}}}\n")
    result = CliRunner().invoke(app, ["sweep", str(sweep_file), "--results", str(tmp_path / "results")])
    assert (result.exit_code, result.output.strip()) == (1, f"error: {expected}")
    assert not (tmp_path / "results").exists()


def test_a_tracking_mistake_names_the_field(tmp_path):
    sweep_file = tmp_path / "bad.yaml"
    sweep_file.write_text("data: {dataset: digits}\ntracking: {wandb: {project: p, mode: offlien}}\n")
    result = CliRunner().invoke(app, ["sweep", str(sweep_file), "--dry-run"])
    assert result.exit_code == 1
    assert "tracking.wandb.mode" in result.output and "offline" in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_local_mode_says_it_tracks_nothing_and_logs_nothing(tmp_path, monkeypatch):
    """Trackers are Ray Tune callbacks; --local trains without Tune, so it must say that nothing is tracked."""
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    sweep_file = tmp_path / "local.yaml"
    sweep_file.write_text(
        "data: {dataset: digits}\nmodel: {arch: wrn, depth: 10, width: 1}\n"
        "train: {method: standard, epochs: 1, batch_size: 256}\n"
        "eval: {eps: 0.1, attack: {steps: 1}, train_subset: 32, test_subset: 32}\ncompare: []\n"
        f"tracking: {{mlflow: {{tracking_uri: '{(tmp_path / 'mlruns').as_uri()}'}}}}\n"
    )
    result = CliRunner().invoke(app, ["sweep", str(sweep_file), "--results", str(tmp_path / "results"), "--local",
                                      "--no-report"])
    assert result.exit_code == 0, result.output
    assert ("warning: tracking (mlflow) logs through Ray Tune's callbacks, which --local does not use: this run is "
            "not tracked") in result.output
    assert not (tmp_path / "mlruns").exists()


def test_a_redone_trial_forgets_its_tracked_runs_and_the_others_keep_theirs(tmp_path):
    # --redo retrains a trial from scratch: it must start new runs (its old ones keep their history), while a trial
    # that is resumed goes on in the run recorded for it.
    from rayrs import tracking
    from rayrs.storage import Storage

    storage = Storage(tmp_path)
    for trial in ("redone", "kept"):
        tracking.record_run(storage, "mlflow", trial, f"mlflow-{trial}")
        tracking.record_run(storage, "wandb", trial, f"wandb-{trial}")
    sweep._forget_trial(storage, "redone", [])
    assert [tracking.recorded_run(storage, t, "redone") for t in ("mlflow", "wandb")] == [None, None]
    assert [tracking.recorded_run(storage, t, "kept") for t in ("mlflow", "wandb")] == ["mlflow-kept", "wandb-kept"]
    assert (tmp_path / "ray" / "tracking" / "wandb" / "kept.json").is_file()
