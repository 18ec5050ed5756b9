"""Experiment trackers: MLflow and Weights & Biases, fed by Ray Tune's own logger callbacks.

A sweep file's ``tracking:`` section (`rayrs.config.TrackingConfig`) names the trackers; each trial becomes one
run of each, with

- its parameters: the trial columns of ``metrics.parquet`` (``trial``, ``dataset``, ``arch``, ``depth``, ``width``,
  ``method``, ``threat_model``, ``eps``, ``seed``, ``freeze``), its fingerprint and, in MLflow, every field of its
  configuration by its sweep-file path (``train.lr``, ``eval.attack.steps``); W&B's run config is Tune's param
  space: the trial's spec under ``trial`` (and rayrs's ``storage`` and ``threads``);
- its per-epoch metrics: what the trial reports after every epoch (``test_robust_acc``, ``train_clean_loss``, ...,
  the columns of ``metrics.parquet``), at step = epoch in MLflow;
- where its results are: the tags ``rayrs.results`` (the experiment's folder or URI) and, once the sweep has drawn
  it, ``rayrs.report`` (its ``index.html``) in MLflow; W&B runs, which W&B closes with their trial, carry both
  paths in their notes from the start.

The packages are an optional extra (``uv sync --extra tracking``): a sweep without ``tracking:`` imports neither,
and a sweep that asks for one that is not installed, or for an MLflow store this MLflow would refuse, stops in
one line before anything is written.
Tune's callbacks run only when Tune trains: with ``--local`` nothing is tracked (the sweep says so).

A trial resumed by a later ``--resume`` run (after a Ctrl-C, a lost driver, a requeued job) goes on logging into
the run it started, at steps = epochs continuing where they stopped: each tracker's run id is recorded for the
trial under ``<results>/<name>/ray/tracking/<tracker>/<trial>.json`` when the run starts (`run_record`), and a
``--redo`` of the trial deletes it, so a retrained trial starts a new run. MLflow reopens the recorded run; W&B
is given the recorded id with ``resume="allow"`` (online, W&B's server appends to the run; offline, each
``rayrs sweep`` run writes its own offline folder, all with the run's id and epoch steps, which ``wandb sync``
uploads into that one run). An epoch whose report had not reached the driver when it stopped is not in the
tracker (``metrics.parquet`` has it); the trial's later epochs are.
"""

from __future__ import annotations

import importlib
import importlib.util
import urllib.parse
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rayrs import storage as layout
from rayrs.config import Experiment, TrialSpec
from rayrs.errors import UserError
from rayrs.schema import TRIAL_COLUMNS
from rayrs.storage import Storage

EXTRA_HINT = "uv sync --extra tracking"

# Keys Ray Tune adds to every result (`ray.tune.result.AUTO_RESULT_KEYS` and a few more); the rest is the trial's.
TUNE_RESULT_KEYS = frozenset({
    "training_iteration", "time_total_s", "episodes_total", "timesteps_total", "node_ip", "hostname", "pid",
    "time_this_iter_s", "timestamp", "date", "time_since_restore", "timesteps_since_restore",
    "iterations_since_restore", "config", "checkpoint_dir_name", "done", "trial_id", "experiment_tag",
    "should_checkpoint",
})


def trial_params(spec: TrialSpec) -> dict[str, Any]:
    """A trial's parameters, flat: ``metrics.parquet``'s trial columns, ``fingerprint``, and every config field by
    its dotted sweep-file path (``train.eps``, ``model.width``). MLflow keeps each as the text ``str`` gives."""
    from rayrs.train import trial_record

    record = trial_record(spec)
    params = {name: record[name] for name in TRIAL_COLUMNS}
    params["fingerprint"] = record["fingerprint"]

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, dict):
            for key, inner in value.items():
                walk(f"{prefix}.{key}" if prefix else key, inner)
        else:
            params[prefix] = value

    walk("", record["config"])
    return params


def trial_metrics(result: dict[str, Any]) -> dict[str, float]:
    """The trial's own numbers in a Tune result (its epoch's metrics), without the keys Tune adds."""
    return {
        key: float(value) for key, value in result.items()
        if key not in TUNE_RESULT_KEYS and isinstance(value, (int, float)) and not isinstance(value, bool)
    }


def run_tags(experiment: Experiment, storage: Storage, trial: str) -> dict[str, str]:
    """rayrs's tags on a trial's run: where to find its sweep, its results and (once drawn) its report."""
    return {"rayrs.experiment": experiment.name, "rayrs.trial": trial, "rayrs.results": storage.root}


def run_record(tracker: str, trial: str) -> str:
    """Where the id of ``trial``'s run in ``tracker`` is kept, relative to the experiment's folder."""
    return f"{layout.RAY_DIR}/tracking/{tracker}/{layout.trial_dir(trial).rsplit('/', 1)[-1]}.json"


def recorded_run(storage: Storage, tracker: str, trial: str) -> str | None:
    """The id of the run ``trial`` started in ``tracker`` in an earlier run of the sweep, if any (`run_record`)."""
    rel = run_record(tracker, trial)
    if not storage.exists(rel):
        return None
    try:
        return str(storage.read_json(rel)["run_id"])
    except (UserError, KeyError, TypeError):  # unreadable: the trial starts a new run, as before the record
        return None


def record_run(storage: Storage, tracker: str, trial: str, run_id: str) -> None:
    storage.write_json(run_record(tracker, trial), {"run_id": run_id, "trial": trial})


def forget_runs(storage: Storage, trial: str) -> None:
    """Drop ``trial``'s recorded runs (a ``--redo``: the retrained trial logs into new runs)."""
    for tracker in TRACKERS:
        storage.delete_file(run_record(tracker, trial))


# -- the trackers -----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Tracker:
    package: str  # the module its callback needs
    check: Callable[[Experiment], None]  # before anything runs: settings the tracker would refuse mid-sweep
    callback: Callable[[Experiment, Storage], Any]  # a Ray Tune logger callback for the sweep's trials
    finish: Callable[[Experiment, Storage, Path | None], None]  # after the sweep: the report's path, where possible


def _mlflow_check(experiment: Experiment) -> None:
    """The tracking URI names a store this MLflow will open (checked without contacting it).

    MLflow 3 opens its file store (``file:///...``, a plain path) only when ``MLFLOW_ALLOW_FILE_STORE=true``, and a
    database store (``sqlite:///...``, MLflow's default without a URI) only with SQLAlchemy, which the
    ``mlflow-skinny`` of the tracking extra leaves out; otherwise the first trial would fail with a traceback.
    """
    import os

    from mlflow.environment_variables import MLFLOW_ALLOW_FILE_STORE

    uri = experiment.tracking.mlflow.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
    where = "tracking.mlflow.tracking_uri"
    if uri is None:
        raise UserError(
            f"{where} is not set (nor MLFLOW_TRACKING_URI): give your MLflow server (http://HOST:5000) or a file "
            "store (file:///abs/path/mlruns, with MLFLOW_ALLOW_FILE_STORE=true in the environment)"
        )
    scheme = urllib.parse.urlparse(uri).scheme.split("+", 1)[0]  # postgresql+psycopg2://: postgresql
    if not scheme:  # a plain path is a file store; "databricks" a workspace
        scheme = "databricks" if uri.startswith("databricks") else "file"
    if scheme == "file" and not MLFLOW_ALLOW_FILE_STORE.get():
        raise UserError(
            f"{where} {uri} is MLflow's file store, which MLflow 3 opens only with MLFLOW_ALLOW_FILE_STORE=true: "
            "set that in the environment, or give an MLflow server (http://HOST:5000)"
        )
    if scheme in ("sqlite", "postgresql", "mysql", "mssql") and importlib.util.find_spec("sqlalchemy") is None:
        raise UserError(
            f"{where} {uri} is a database store, which needs the full MLflow (`uv pip install mlflow`; the tracking "
            "extra brings mlflow-skinny); or give an MLflow server (http://HOST:5000) or a file store"
        )


def _no_check(experiment: Experiment) -> None:
    """Nothing W&B would refuse mid-sweep that can be told before it starts (login is W&B's own prompt)."""


def _mlflow_callback(experiment: Experiment, storage: Storage) -> Any:
    from ray.air.integrations.mlflow import MLflowLoggerCallback

    settings = experiment.tracking.mlflow

    class TrialRuns(MLflowLoggerCallback):
        """Ray Tune's MLflow callback; a run's parameters are the trial's (not Tune's nested param space), its
        metrics the trial's epoch metrics at step = epoch (Tune's iteration count restarts on a resumed trial)."""

        def log_trial_start(self, trial):
            if trial in self._trial_runs:  # a trial restarted by Tune (a retry) keeps its run
                return
            spec = TrialSpec.model_validate(trial.config["trial"])
            resumed = self._reopen(recorded_run(storage, "mlflow", spec.name))
            if resumed is not None:  # a trial resumed by a later run of the sweep: its parameters are there
                self._trial_runs[trial] = resumed
                return
            tags = {**self.tags, **run_tags(experiment, storage, spec.name), "trial_name": spec.name}
            run = self.mlflow_util.start_run(run_name=spec.name, tags=tags)
            self._trial_runs[trial] = run.info.run_id
            record_run(storage, "mlflow", spec.name, run.info.run_id)
            self.mlflow_util.log_params(run_id=run.info.run_id, params_to_log=trial_params(spec))

        def _reopen(self, run_id: str | None) -> str | None:
            """The recorded run, marked running again; None if there is none on this tracking server."""
            if run_id is None:
                return None
            from mlflow.exceptions import MlflowException
            from mlflow.tracking import MlflowClient

            client = MlflowClient(tracking_uri=settings.tracking_uri)
            try:
                client.get_run(run_id)
            except MlflowException:  # deleted, or another server: a new run
                return None
            client.update_run(run_id, status="RUNNING")
            return run_id

        def log_trial_result(self, iteration, trial, result):
            self.mlflow_util.log_metrics(run_id=self._trial_runs[trial], metrics_to_log=trial_metrics(result),
                                         step=int(result["epoch"]))

    return TrialRuns(tracking_uri=settings.tracking_uri, experiment_name=settings.experiment or experiment.name,
                     tags=dict(settings.tags))


def _mlflow_finish(experiment: Experiment, storage: Storage, report: Path | None) -> None:
    """Tag every run of this experiment's results with the report's path (the callbacks closed them already)."""
    if report is None:
        return
    from mlflow.tracking import MlflowClient

    settings = experiment.tracking.mlflow
    client = MlflowClient(tracking_uri=settings.tracking_uri)
    found = client.get_experiment_by_name(settings.experiment or experiment.name)
    if found is None:  # nothing was trained by Tune in any run of this sweep (e.g. --local only)
        return
    # The experiment name is [A-Za-z0-9_.-] (config.Experiment.name): safe inside the filter's quotes; the
    # results root may hold any character, so it is compared here rather than in the filter.
    runs = client.search_runs([found.experiment_id], filter_string=f"tags.`rayrs.experiment` = '{experiment.name}'")
    for run in runs:
        if run.data.tags.get("rayrs.results") == storage.root:
            client.set_tag(run.info.run_id, "rayrs.report", str(report))


def _wandb_callback(experiment: Experiment, storage: Storage) -> Any:
    from ray.air.integrations.wandb import WandbLoggerCallback, _WandbLoggingActor

    class FlushedRunActor(_WandbLoggingActor):
        """Tune's W&B logging actor (one per trial), which waits for W&B to write the run out before it returns.

        Tune kills the actor, and with it W&B's service process (its child), as soon as `run` returns, and
        ``wandb.finish()`` can return before the service has written the run's records: seen with wandb 0.31 in
        offline mode, a run folder without its history or exit record. ``wandb.teardown()`` waits for them.
        """

        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self._wandb = _EpochSteps(self._wandb)

        def run(self):
            super().run()
            self._wandb.teardown()

    class TrialRuns(WandbLoggerCallback):
        """Tune's W&B callback; a trial resumed by a later run of the sweep continues its W&B run (`run_record`)."""

        _logger_actor_cls = FlushedRunActor

        def _start_logging_actor(self, trial, exclude_results, **wandb_init_kwargs):
            if trial not in self._trial_logging_futures:  # else Tune restarted the trial: its actor is still there
                name = trial.config["trial"]["name"]
                run_id = recorded_run(storage, "wandb", name)
                if run_id is None:  # Tune's trial id is new in every run of the sweep: W&B's id is rayrs's own
                    run_id = uuid.uuid4().hex[:16]
                    record_run(storage, "wandb", name, run_id)
                wandb_init_kwargs.update(id=run_id, resume="allow")
            super()._start_logging_actor(trial, exclude_results, **wandb_init_kwargs)

        def on_experiment_end(self, trials, **info):
            # A sweep that stops early (its driver failed, a trial raised) ends Tune with trials that never ended:
            # their actors would wait for more results and Tune for them, up to its upload timeout (30 minutes).
            # Every run is told it has all it gets, and written out.
            for trial in list(self._trial_logging_futures):
                self._signal_logging_actor_stop(trial)
            super().on_experiment_end(trials, **info)

    settings = experiment.tracking.wandb
    options = {key: value for key, value in (("entity", settings.entity), ("mode", settings.mode)) if value is not None}
    if settings.dir is not None:
        Path(settings.dir).mkdir(parents=True, exist_ok=True)  # W&B falls back to a temp folder if it is missing
        options["dir"] = str(Path(settings.dir).resolve())  # the logging actor runs in the trial's folder
    notes = f"rayrs sweep {experiment.name}: results in {storage.root}"
    if storage.is_local:
        notes += f", report in {storage.local_path(layout.REPORT_DIR) / 'index.html'} once the sweep has finished"
    # The run config is Tune's param space: the trial's spec (`trial.config.train.eps`), and rayrs's plumbing
    # (`storage`, `threads`), which W&B's actor copies back from every result whatever `excludes` says.
    return TrialRuns(project=settings.project, group=settings.group or experiment.name,
                     excludes=sorted(TUNE_RESULT_KEYS | {"storage", "threads"}), notes=notes,
                     tags=[experiment.name], **options)


class _EpochSteps:
    """The ``wandb`` module for Tune's W&B logging actor, logging each result at step = its epoch.

    Tune logs at step = its iteration count, which restarts at 1 when a later run of the sweep resumes the trial
    (and, as rayrs keeps Tune's keys out of the run, it passes no step at all: W&B counts from 0 in each process).
    """

    def __init__(self, wandb: Any):
        self._module = wandb

    def __getattr__(self, name: str) -> Any:
        return getattr(self._module, name)

    def log(self, data: dict[str, Any], step: int | None = None, **kwargs: Any) -> None:
        self._module.log(data, step=int(data["epoch"]) if "epoch" in data else step, **kwargs)


def _wandb_finish(experiment: Experiment, storage: Storage, report: Path | None) -> None:
    """Nothing to add: a W&B run is closed with its trial, and its notes already say where the report goes."""


TRACKERS: dict[str, Tracker] = {
    "mlflow": Tracker("mlflow", _mlflow_check, _mlflow_callback, _mlflow_finish),
    "wandb": Tracker("wandb", _no_check, _wandb_callback, _wandb_finish),
}


def requested(experiment: Experiment) -> list[str]:
    """The trackers the sweep file's ``tracking:`` section names, in `TRACKERS` order."""
    return [name for name in TRACKERS if getattr(experiment.tracking, name) is not None]


def check(experiment: Experiment) -> None:
    """Each requested tracker's package imports and its settings would be accepted, else one `UserError` line
    (before anything is written)."""
    for name in requested(experiment):
        package = TRACKERS[name].package
        try:
            importlib.import_module(package)
        except ImportError:
            raise UserError(
                f"tracking.{name}: the {package} package is not installed; run `{EXTRA_HINT}` "
                f"(or remove tracking.{name} from the sweep file)"
            ) from None
        TRACKERS[name].check(experiment)


def callbacks(experiment: Experiment, storage: Storage) -> list[Any]:
    """Ray Tune logger callbacks for the sweep's trackers (an empty list, importing nothing, without any)."""
    return [TRACKERS[name].callback(experiment, storage) for name in requested(experiment)]


def finish(experiment: Experiment, storage: Storage, report: Path | None) -> None:
    """After the sweep: record the report's path (``report``: its index.html, None when none was drawn)."""
    for name in requested(experiment):
        TRACKERS[name].finish(experiment, storage, report)
