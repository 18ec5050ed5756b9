"""Running a sweep: the Ray wiring, in one place.

    expand the sweep ──► train every unfinished trial (Ray Tune, one trial per grid point; or one by one with
    --local) ──► rebuild metrics.parquet from the checkpoints ──► every unfinished comparison job as a Ray
    remote task ──► the report.

Every stage reads only what the stage before it left on storage, and skips what is already there: finished
trials are not retrained, a trial interrupted mid-way resumes from its last checkpoint (Tune's retries rely
on the same rule), and finished comparison jobs are not recomputed.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from rayrs import catalog, checkpoint
from rayrs import storage as layout
from rayrs.config import Experiment, TrialConfig, TrialSpec, expand
from rayrs.data import check_dataset
from rayrs.errors import UserError
from rayrs.similarity.jobs import SimilarityJob, plan_jobs, run_job
from rayrs.storage import Storage
from rayrs.train import best_device, train_trial


@dataclass(frozen=True)
class SweepOptions:
    local: bool = False  # run trials and jobs one at a time in this process (debugging; breakpoints work)
    resume: bool = False  # continue a sweep whose results folder already exists
    address: str | None = None  # Ray cluster address; None starts (or joins) a local Ray instance
    report: bool = True  # render the report at the end
    max_failures: int = 2  # retries of a failed trial (each resumes from its last checkpoint)


@dataclass
class SweepOutcome:
    storage: Storage
    trials: list[TrialSpec]
    trained: list[str] = field(default_factory=list)  # trials that trained at least one epoch in this run
    jobs_run: int = 0
    jobs_skipped: int = 0
    report_dir: Path | None = None
    seconds: float = 0.0


def experiment_storage(experiment: Experiment, results: str | None = None) -> Storage:
    """Where ``experiment``'s results live: ``<results>/<name>`` (``results`` overrides the sweep file's)."""
    return Storage(results or experiment.results).child(experiment.name)


def run_sweep(experiment: Experiment, options: SweepOptions = SweepOptions(), results: str | None = None,
              console: Console | None = None) -> SweepOutcome:
    """Train, compare and report ``experiment``, skipping everything already on storage."""
    console = console or Console(stderr=True)
    started = time.perf_counter()
    trials = expand(experiment)
    storage = experiment_storage(experiment, results)
    _check_inputs(trials)
    _claim_results(storage, experiment, options.resume)
    outcome = SweepOutcome(storage=storage, trials=trials)
    pending = [t for t in trials if _epochs_done(storage, t) < t.config.train.epochs]
    console.print(
        f"[bold]{experiment.name}[/]: {len(trials)} trials ({len(trials) - len(pending)} already trained) "
        f"-> {storage.root}"
    )
    with _ray_session(options) as ray_module:
        if pending:
            outcome.trained = _train(pending, storage, experiment, options, ray_module, console)
        catalog.write_metrics(storage, [t.name for t in trials])
        jobs = plan_jobs(experiment, trials)
        todo = [job for job in jobs if not storage.exists(job.output)]
        outcome.jobs_skipped = len(jobs) - len(todo)
        if todo:
            configs = {t.name: t.config for t in trials}
            _compare(todo, configs, storage, experiment, options, ray_module, console)
        outcome.jobs_run = len(todo)
    if options.report and storage.is_local:
        from analysis.report import render_report

        report = render_report(storage)
        outcome.report_dir = storage.local_path(layout.REPORT_DIR)
        for name, reason in report.skipped.items():
            console.print(f"[yellow]skipped figure[/] {name}: {reason}")
    outcome.seconds = time.perf_counter() - started
    return outcome


# -- checks before anything is written ---------------------------------------------------------------------
def _check_inputs(trials: list[TrialSpec]) -> None:
    """Fail fast, on the driver, for inputs every trial would trip over (before any Ray worker starts)."""
    for dataset, root in sorted({(t.config.data.dataset, t.config.data.root) for t in trials}, key=str):
        check_dataset(dataset, root)


def _claim_results(storage: Storage, experiment: Experiment, resume: bool) -> None:
    if storage.exists(layout.SWEEP_CONFIG) and not resume:
        raise UserError(
            f"{storage.root} already holds results of sweep {experiment.name!r}; add --resume to finish it "
            "(finished trials and comparisons are kept), or pass --results DIR to start elsewhere"
        )
    storage.write_json(layout.SWEEP_CONFIG, experiment.model_dump(mode="json"))


def _epochs_done(storage: Storage, trial: TrialSpec) -> int:
    done = checkpoint.completed_epochs(storage, trial.name)
    return done[-1] if done else 0


# -- Ray ---------------------------------------------------------------------------------------------------
@contextmanager
def _ray_session(options: SweepOptions) -> Iterator[Any]:
    """Ray, started (or joined) for this sweep and shut down afterwards, also on error; None with --local."""
    if options.local:
        yield None
        return
    import ray

    started_here = not ray.is_initialized()
    if started_here:
        ray.init(address=options.address, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
    try:
        yield ray
    finally:
        if started_here:
            ray.shutdown()


def _gpus(requested: float, ray_module: Any, what: str, local: bool, console: Console) -> float:
    """The GPUs to give each trial or job: as requested, or a clear refusal when there are none."""
    if requested == 0:
        return 0
    available = torch.cuda.device_count() if ray_module is None else ray_module.cluster_resources().get("GPU", 0)
    if available:
        return requested
    if local:
        console.print(f"[yellow]warning:[/] resources.gpus_per_{what} is {requested} but this machine has no GPU; using the CPU")
        return 0
    raise UserError(
        f"resources.gpus_per_{what} is {requested} but the Ray cluster has no GPUs; "
        f"set it to 0 to run on CPUs, or start the sweep on a GPU cluster (ray up cluster.yaml)"
    )


def _unwrap(error: BaseException) -> BaseException:
    """The user's error inside Ray's wrappers (a `UserError` raised in a worker reads as one here)."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, UserError):
            return error
        error = getattr(error, "cause", None) or error.__cause__
    return error


# -- stage 1: training ---------------------------------------------------------------------------------------
def _train(pending: list[TrialSpec], storage: Storage, experiment: Experiment, options: SweepOptions,
           ray_module: Any, console: Console) -> list[str]:
    with _Progress(console) as progress:
        progress.add("train", "training", sum(t.config.train.epochs for t in pending))
        progress.advance("train", sum(_epochs_done(storage, t) for t in pending))
        gpus = _gpus(experiment.resources.gpus_per_trial, ray_module, "trial", options.local, console)
        if ray_module is None:  # --local: the single GPU if there is one, else the CPU
            for trial in pending:
                train_trial(trial, storage, best_device(), report=lambda m, t=trial.name: progress.epoch(t, m))
        else:
            _train_with_tune(pending, storage, experiment, options, gpus, progress)
    return [t.name for t in pending]


def _tune_trainable(config: dict[str, Any]) -> None:
    """A Ray Tune function trainable: one trial, resuming from storage, reporting every epoch."""
    from ray import tune

    spec = TrialSpec.model_validate(config["trial"])
    train_trial(spec, Storage(config["storage"]), best_device(), report=tune.report)


def _train_with_tune(pending: list[TrialSpec], storage: Storage, experiment: Experiment, options: SweepOptions,
                     gpus: float, progress: _Progress) -> None:
    from ray import tune

    class EpochProgress(tune.Callback):
        """Forwards each reported epoch to the progress bars (which live in this process only)."""

        def on_trial_result(self, iteration, trials, trial, result, **info):
            progress.epoch(trial.config["trial"]["name"], result)

        def __reduce__(self):
            # The Tuner pickles its run config for restoration; the bars (with their locks) stay behind.
            return (tune.Callback, ())

    def trial_name(trial) -> str:
        return trial.config["trial"]["name"]

    tuner = tune.Tuner(
        tune.with_resources(_tune_trainable, {"cpu": experiment.resources.cpus_per_trial, "gpu": gpus}),
        param_space={
            "trial": tune.grid_search([t.model_dump(mode="json") for t in pending]),
            "storage": storage.root,
        },
        tune_config=tune.TuneConfig(reuse_actors=True, trial_name_creator=trial_name, trial_dirname_creator=trial_name),
        run_config=tune.RunConfig(
            name="train",
            storage_path=storage.child(layout.RAY_DIR).root,
            failure_config=tune.FailureConfig(max_failures=options.max_failures),
            verbose=0,
            callbacks=[EpochProgress()],
        ),
    )
    results = tuner.fit()
    failures = [(r.config["trial"]["name"], _unwrap(r.error)) for r in results if r.error is not None]
    if failures:
        name, error = failures[0]
        if isinstance(error, UserError):
            raise UserError(f"trial {name!r}: {error}")
        raise RuntimeError(f"{len(failures)} trial(s) failed; first: {name}") from error


# -- stage 2: comparisons -------------------------------------------------------------------------------------
def _similarity_task(job: SimilarityJob, configs: dict[str, TrialConfig], root: str) -> int:
    return run_job(job, configs, Storage(root), best_device())


def _compare(todo: list[SimilarityJob], configs: dict[str, TrialConfig], storage: Storage, experiment: Experiment,
             options: SweepOptions, ray_module: Any, console: Console) -> None:
    gpus = _gpus(experiment.resources.gpus_per_job, ray_module, "job", options.local, console)
    with _Progress(console) as progress:
        progress.add("compare", "similarity", len(todo))
        if ray_module is None:
            for job in todo:
                run_job(job, configs, storage, best_device())
                progress.advance("compare", 1, job.describe())
            return
        task = ray_module.remote(num_cpus=experiment.resources.cpus_per_job, num_gpus=gpus)(_similarity_task)
        running = {
            task.remote(job, {name: configs[name] for name in {job.a.trial, job.b.trial}}, storage.root): job
            for job in todo
        }
        while running:
            done, _ = ray_module.wait(list(running), num_returns=1)
            job = running.pop(done[0])
            try:
                ray_module.get(done[0])
            except Exception as error:  # noqa: BLE001 - re-raised below, as the user's error when it is one
                cause = _unwrap(error)
                if isinstance(cause, UserError):
                    raise UserError(f"{job.describe()}: {cause}") from None
                raise
            progress.advance("compare", 1, job.describe())


# -- progress -------------------------------------------------------------------------------------------------------
class _Progress:
    """Rich progress bars: epochs trained over all trials (with the latest robust accuracy), jobs computed."""

    def __init__(self, console: Console):
        self._bars = Progress(
            TextColumn("{task.description:<11}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("eta"),
            TimeRemainingColumn(),
            TextColumn("{task.fields[detail]}"),
            console=console,
        )
        self._tasks: dict[str, Any] = {}

    def __enter__(self) -> _Progress:
        self._bars.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._bars.__exit__(*exc)

    def add(self, key: str, description: str, total: int) -> None:
        self._tasks[key] = self._bars.add_task(description, total=total, detail="")

    def advance(self, key: str, steps: int, detail: str = "") -> None:
        self._bars.update(self._tasks[key], advance=steps, detail=detail)

    def epoch(self, trial: str, metrics: dict[str, Any]) -> None:
        detail = (
            f"{trial} epoch {metrics.get('epoch')}: test clean {metrics.get('test_clean_acc', 0):.1%}, "
            f"robust {metrics.get('test_robust_acc', 0):.1%}"
        )
        self.advance("train", 1, detail)
