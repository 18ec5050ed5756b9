"""Running a sweep: the Ray wiring, in one place.

    expand the sweep (its grid's trials; its `models:` entries, `rayrs.entries`) ──► train every unfinished
    trial (Ray Tune, one trial per grid point; or one by one with --local) ──► rebuild metrics.parquet from the
    checkpoints ──► every unfinished comparison job, one Ray (generator) task per home trial, streaming
    progress ──► the report.

Every stage reads only what the stage before it left on storage, and skips what is already there: finished
trials are not retrained, a trial interrupted mid-way resumes from its last checkpoint (Tune's retries rely
on the same rule), and finished comparison jobs are not recomputed (nor, when a node is lost mid-stage, are the
jobs its task had already written: `_compare` resubmits only the rest).

What storage holds is trusted only once checked: the driver takes the experiment's lease (`rayrs.lease`: one
driver at a time), then `check_resume` holds every trial folder against the sweep before anything is
written. Comparisons start only once every trial has all its epochs; Ctrl-C stops the sweep at once
(`_interrupts`), whatever Ray and Tune were doing, and the CLI says to rerun with ``--resume``.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from rayrs import catalog, checkpoint, entries, tracking
from rayrs import storage as layout
from rayrs.config import CkaConfig, Experiment, ModelEntrySpec, TrialConfig, TrialSpec, expand
from rayrs.console import PlainProgress, elapsed, figures_line
from rayrs.data import ImageDataset, check_dataset
from rayrs.errors import UserError
from rayrs.lease import Lease
from rayrs.similarity.jobs import JobDone, SimilarityJob, SimilarityTask, TaskProgress, plan_jobs, plan_tasks, run_task
from rayrs.storage import Storage
from rayrs.train import best_device, load_trial_data, train_trial


@dataclass(frozen=True)
class SweepOptions:
    local: bool = False  # run trials and jobs one at a time in this process (debugging; breakpoints work)
    resume: bool = False  # continue a sweep whose results folder already exists
    address: str | None = None  # Ray cluster address; None starts (or joins) a local Ray instance
    report: bool = True  # render the report at the end
    max_failures: int = 2  # retries of a failed trial (resumed from its last checkpoint) or a lost similarity task
    redo: tuple[str, ...] = ()  # trials to retrain from scratch, with every comparison that involves them


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
    models = entries.model_specs(experiment)  # every weights file read and fitted to its architecture, here
    storage = experiment_storage(experiment, results)
    _check_inputs(trials, models)
    tracking.check(experiment)
    if options.local and tracking.requested(experiment):
        console.print(f"[yellow]warning:[/] tracking ({', '.join(tracking.requested(experiment))}) logs through Ray "
                      "Tune's callbacks, which --local does not use: this run is not tracked", soft_wrap=True)
    unknown = sorted(set(options.redo) - {t.name for t in trials})
    if unknown:
        raise UserError(f"--redo {unknown[0]}: no such trial in {experiment.name}; its trials are: {', '.join(t.name for t in trials)}")
    _refuse_existing(storage, experiment, options.resume or bool(options.redo))
    with _interrupts(), _ray_session(options) as ray_module:
        # Resources are checked before anything is written: a sweep that cannot run leaves no trace.
        trial_gpus = _gpus(experiment.resources.gpus_per_trial, ray_module, "trial", options.local, console)
        job_gpus = _gpus(experiment.resources.gpus_per_job, ray_module, "job", options.local, console)
        with Lease(storage) as lease:
            check_resume(storage, experiment, trials, redo=options.redo, models=models)
            storage.write_json(layout.SWEEP_CONFIG, experiment.model_dump(mode="json"))
            entries.write_models(storage, models)
            for trial in options.redo:
                _forget_trial(storage, trial, plan_jobs(experiment, [*trials, *models]))
            outcome = SweepOutcome(storage=storage, trials=trials)
            pending = [t for t in trials if _epochs_done(storage, t) < t.config.train.epochs]
            given = f", {len(models)} given models" if models else ""
            console.print(
                f"[bold]{experiment.name}[/]: {len(trials)} trials ({len(trials) - len(pending)} already trained){given} "
                f"-> {storage.root}",
                soft_wrap=True,
            )
            if pending:
                outcome.trained = _train(pending, storage, experiment, options, ray_module, trial_gpus, console, lease,
                                         started)
            _check_trained(storage, trials)  # comparisons never start on an unfinished trial
            catalog.write_metrics(storage, [t.name for t in trials])
            jobs = plan_jobs(experiment, [*trials, *models])
            todo = [job for job in jobs if not storage.exists(job.output)]  # those there were checked: check_resume
            outcome.jobs_skipped = len(jobs) - len(todo)
            if todo:
                configs = {t.name: t.config for t in [*trials, *models]}
                _compare(todo, configs, {m.name: m for m in models}, storage, experiment, ray_module, job_gpus,
                         console, lease, started, options.max_failures)
            outcome.jobs_run = len(todo)
            if options.report and storage.is_local:
                from analysis.report import render_report

                report = render_report(storage)
                outcome.report_dir = storage.local_path(layout.REPORT_DIR)
                # One line: the reasons of the skipped figures are on the report's page, where a reader needs them.
                console.print(figures_line(len(report.written), len(report.skipped), report.index), highlight=False,
                              soft_wrap=True)
                try:  # the report's path, on each tracked run; a tracker that is down costs the tag, not the sweep
                    tracking.finish(experiment, storage, report.index)
                except Exception as error:  # noqa: BLE001 - any tracker's client error; everything is on storage
                    line = " ".join(str(error).split())
                    console.print(f"[yellow]warning:[/] tracking: the report's path was not recorded ({line})",
                                  highlight=False, soft_wrap=True)
    outcome.seconds = time.perf_counter() - started
    return outcome


# -- checks before anything is written ---------------------------------------------------------------------
def _check_inputs(trials: list[TrialSpec], models: list[ModelEntrySpec] = ()) -> None:
    """Fail fast, on the driver, for inputs every trial would trip over (before any Ray worker starts).

    Trials need their dataset's training and test files; model entries only probe, so the test split's alone."""
    for dataset, root in sorted({(t.config.data.dataset, t.config.data.root) for t in trials}, key=str):
        check_dataset(dataset, root)
    for dataset, root in sorted({(m.config.data.dataset, m.config.data.root) for m in models}, key=str):
        check_dataset(dataset, root, test_only=True)


def _refuse_existing(storage: Storage, experiment: Experiment, resume: bool) -> None:
    if not resume and (storage.exists(layout.SWEEP_CONFIG) or storage.list_dir(layout.TRIALS_DIR)):
        raise UserError(
            f"{storage.root} already holds results of sweep {experiment.name!r}; add --resume to finish it "
            "(finished trials and comparisons are kept), or pass --results DIR to start elsewhere"
        )


def check_resume(storage: Storage, experiment: Experiment, trials: list[TrialSpec], redo: tuple[str, ...] = (),
                 models: list[ModelEntrySpec] = ()) -> None:
    """Hold what ``storage`` holds against the sweep, before anything is written; a mismatch is a `UserError`.

    Every trial folder must be a trial of the sweep with that trial's fingerprint in its ``trial.json`` and
    each committed epoch's record in its ``meta.json`` (`rayrs.catalog.check_trials`; ``redo`` trials are
    about to be deleted and skipped). Every comparison file there must hold its own job's rows
    (`rayrs.catalog.finished_jobs`), and finished comparisons must have used the sweep's CKA settings, or new
    and old rows would mix in the figures. A ``sweep.json`` that cannot be read is not trusted for anything:
    it is written again from the sweep file.
    """
    catalog.check_trials(storage, trials, skip=redo)
    jobs = plan_jobs(experiment, [*trials, *models])
    catalog.finished_jobs(storage, [job for job in jobs if not {job.a.trial, job.b.trial} & set(redo)])
    if not storage.list_files(layout.SIMILARITY_DIR, ".parquet"):
        return
    try:
        stored = CkaConfig.model_validate(storage.read_json(layout.SWEEP_CONFIG)["cka"])
    except (UserError, ValueError, KeyError, TypeError):
        return
    changed = next((field for field in CkaConfig.model_fields if getattr(stored, field) != getattr(experiment.cka, field)), None)
    if changed is not None:
        raise UserError(
            f"cka.{changed} is {getattr(experiment.cka, changed)} in the sweep file but was {getattr(stored, changed)} "
            f"for the comparisons in {storage.full_path(layout.SIMILARITY_DIR)} ({layout.SWEEP_CONFIG}); give the sweep "
            f"a new name to compare afresh, or delete that folder to recompute every comparison"
        )


def _check_trained(storage: Storage, trials: list[TrialSpec]) -> None:
    """Every trial has all its epochs: comparisons read final (and earlier) checkpoints, which must exist."""
    for trial in trials:
        done = _epochs_done(storage, trial)
        if done < trial.config.train.epochs:
            raise UserError(
                f"trial {trial.name!r} stopped after epoch {done} of {trial.config.train.epochs}, so no comparison was "
                "started; rerun with --resume to finish it"
            )


def _forget_trial(storage: Storage, trial: str, jobs: list[SimilarityJob]) -> None:
    """Delete a trial's checkpoints, the adversarial probes crafted on it and every comparison involving it."""
    storage.delete_dir(layout.trial_dir(trial))
    tracking.forget_runs(storage, trial)  # its tracked runs stay, but the retrained trial starts new ones
    for probe in storage.list_dir(layout.PROBES_DIR):
        if probe.startswith(f"adversarial:{trial}@"):
            storage.delete_file(f"{layout.PROBES_DIR}/{probe}")
    for job in jobs:
        if trial in (job.a.trial, job.b.trial):
            storage.delete_file(job.output)


def _epochs_done(storage: Storage, trial: TrialSpec) -> int:
    done = checkpoint.completed_epochs(storage, trial.name)
    return done[-1] if done else 0


# -- Ctrl-C and Ray ------------------------------------------------------------------------------------------
@contextmanager
def _interrupts() -> Iterator[threading.Event]:
    """Ctrl-C (SIGINT) stops the sweep at once, as a `KeyboardInterrupt` the CLI turns into its resume hint.

    Ray Tune's own handler would instead end ``fit()`` quietly and let the sweep go on to compare unfinished
    trials; it is switched off here. And whatever else fails once Ctrl-C was pressed (a Ray task killed by the
    same signal, a checkpoint not yet written) is a consequence of the interrupt, reported as the interrupt.
    """
    interrupted = threading.Event()
    if threading.current_thread() is not threading.main_thread():  # signals reach the main thread only
        yield interrupted
        return

    def stop(signum: int, frame: Any) -> None:
        interrupted.set()
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGINT, stop)
    tune_handler = os.environ.get("TUNE_DISABLE_SIGINT_HANDLER")
    os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = "1"
    try:
        yield interrupted
    except Exception:
        if interrupted.is_set():
            raise KeyboardInterrupt from None
        raise
    finally:
        signal.signal(signal.SIGINT, previous)
        if tune_handler is None:
            os.environ.pop("TUNE_DISABLE_SIGINT_HANDLER", None)
        else:
            os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = tune_handler


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
    """The user's error inside Ray's wrappers, else ``error`` itself.

    The innermost `UserError` of the chain: Ray's wrapper of a worker's `UserError` is one too, but its text
    carries the remote traceback, and the user gets one line.
    """
    found, seen, link = None, set(), error
    while link is not None and id(link) not in seen:
        seen.add(id(link))
        if isinstance(link, UserError):
            found = link
        link = getattr(link, "cause", None) or link.__cause__
    return found if found is not None else error


# -- stage 1: training ---------------------------------------------------------------------------------------
def trial_threads(experiment: Experiment) -> int:
    """CPU threads of every trial, in every mode: its ``resources.cpus_per_trial`` (at least one).

    The same count with ``--local`` as in a Ray worker, so that both train the same floats (`cpu_threads`).
    """
    return max(1, int(experiment.resources.cpus_per_trial))


def _train(pending: list[TrialSpec], storage: Storage, experiment: Experiment, options: SweepOptions,
           ray_module: Any, gpus: float, console: Console, lease: Lease, started: float) -> list[str]:
    with _Progress(console, "training", started, lease.check) as progress:
        done = {t.name: _epochs_done(storage, t) for t in pending}
        progress.track_trials({t.name: (done[t.name], t.config.train.epochs) for t in pending})
        progress.add("train", "epochs", sum(t.config.train.epochs for t in pending))
        progress.advance("train", sum(done.values()))
        if ray_module is None:  # --local: the single GPU if there is one, else the CPU
            for trial in pending:
                train_trial(trial, storage, best_device(), report=lambda m, t=trial.name: progress.epoch(t, m),
                            threads=trial_threads(experiment))
        else:
            _train_with_tune(pending, storage, experiment, options, gpus, progress)
    return [t.name for t in pending]


class _GridValue(dict):
    """A trial's spec (its JSON form) as one value of the Tuner's grid, which Tune copies as itself.

    Tune's grid search deep-copies the whole param space, every grid value included, once per trial it creates
    (`ray.tune.search.variant_generator._grid_search_generator`): with the specs as plain dicts that is quadratic in
    the trial count, 9.6 s of the driver's CPU at 500 trials, taken from the trials on a 2-core machine
    (benchmarks/README.md, sweep_scale). Nothing changes a spec once the grid is built, so a copy can be itself.
    """

    def __deepcopy__(self, memo: dict[int, Any]) -> _GridValue:
        return self


# The dataset of the last trial this process trained (key: its data section and device): Tune reuses a
# trial's actor for the next trial (`reuse_actors`), which then skips the load (digits: ~30 ms of parsing a CSV, a
# tenth of a 1-epoch trial's time outside its epochs). Trials only read their data (tests/test_scale.py checks that
# two trials in one process train the bits of two fresh processes).
_actor_data: dict[tuple[str, str], ImageDataset] = {}


def _trial_data(config: TrialConfig, device: torch.device) -> ImageDataset:
    """The trial's dataset, loaded once per process for consecutive trials on the same data (`_actor_data`)."""
    key = (config.data.model_dump_json(), str(device))  # the whole data section: all `load_trial_data` reads
    if key not in _actor_data:
        _actor_data.clear()  # one dataset held at a time: a worker's memory stays what one trial needs
        _actor_data[key] = load_trial_data(config, device)
    return _actor_data[key]


def _tune_trainable(config: dict[str, Any]) -> None:
    """A Ray Tune function trainable: one trial, resuming from storage, reporting every epoch."""
    import ray
    from ray import tune

    spec = TrialSpec.model_validate(config["trial"])
    node = {"ray_node": ray.get_runtime_context().get_node_id()}
    device = best_device()
    train_trial(spec, Storage(config["storage"]), device, report=tune.report, where=node,
                threads=config["threads"], data=_trial_data(spec.config, device))


def _param_space(pending: list[TrialSpec], storage: Storage, experiment: Experiment) -> dict[str, Any]:
    """The Tuner's param space: a grid over the pending trials' specs (JSON form), and what every trial shares."""
    from ray import tune

    return {
        "trial": tune.grid_search([_GridValue(t.model_dump(mode="json")) for t in pending]),
        "storage": storage.root,
        "threads": trial_threads(experiment),
    }


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
        param_space=_param_space(pending, storage, experiment),
        tune_config=tune.TuneConfig(reuse_actors=True, trial_name_creator=trial_name, trial_dirname_creator=trial_name),
        run_config=tune.RunConfig(
            name="train",
            storage_path=storage.child(layout.RAY_DIR).root,
            failure_config=tune.FailureConfig(max_failures=options.max_failures),
            verbose=0,
            # MLflow / W&B, if asked, before the bars: an epoch is logged even if the driver stops at its event.
            callbacks=[*tracking.callbacks(experiment, storage), EpochProgress()],
        ),
    )
    results = tuner.fit()
    # A trial that died before it started (its worker lost, Ray's session folder removed) has no config.
    failures = [((r.config or {}).get("trial", {}).get("name", "?"), _unwrap(r.error))
                for r in results if r.error is not None]
    if failures:
        name, error = failures[0]
        if isinstance(error, UserError):
            raise UserError(f"trial {name!r}: {error}")
        raise RuntimeError(f"{len(failures)} trial(s) failed; first: {name}") from error


# -- stage 2: comparisons -------------------------------------------------------------------------------------
def _similarity_task(task: SimilarityTask, configs: dict[str, TrialConfig], models: dict[str, ModelEntrySpec],
                     root: str) -> Iterator[TaskProgress | JobDone]:
    """A Ray generator task: one home trial's jobs (`rayrs.similarity.jobs`), streaming progress to the driver."""
    yield from run_task(task, configs, Storage(root), best_device(), models)


def _compare(todo: list[SimilarityJob], configs: dict[str, TrialConfig], models: dict[str, ModelEntrySpec],
             storage: Storage, experiment: Experiment, ray_module: Any, gpus: float, console: Console, lease: Lease,
             started: float, retries: int = 2) -> None:
    """Run the unfinished jobs as one task per home trial (or model entry), a Ray task each (GPU when asked),
    with progress bars; ``models``: the model entries among ``configs``.

    A task lost to the system (its node or worker died) is submitted again, up to ``retries`` times, with only
    its jobs whose file is not there yet (`_lost`): a job written before the loss is never computed twice.
    """
    tasks = plan_tasks(todo)
    with _Progress(console, "comparisons", started, lease.check) as progress:
        progress.add("compare", "similarity", len(todo))
        if ray_module is None:
            for task in tasks:
                for event in run_task(task, configs, storage, best_device(), models):
                    progress.similarity(task, event)
                progress.similarity_done(task)
            return
        # Ray's own retry (max_retries) would replay the generator from its start on another node, recomputing
        # (and rewriting) every job the lost attempt had finished; the driver resubmits the rest instead.
        remote = ray_module.remote(num_cpus=experiment.resources.cpus_per_job, num_gpus=gpus,
                                   max_retries=0)(_similarity_task)

        def submit(task: SimilarityTask) -> Any:
            return remote.remote(task, {name: configs[name] for name in task.trials},
                                 {name: models[name] for name in task.trials if name in models}, storage.root)

        streams = {submit(task): task for task in tasks}
        losses: dict[str, int] = {task.trial: 0 for task in tasks}
        reported: set[str] = set()  # ids of the jobs whose JobDone reached the driver
        while streams:
            (stream,), _ = ray_module.wait(list(streams), num_returns=1)
            task = streams[stream]
            try:
                event = ray_module.get(next(stream))
            except StopIteration:
                del streams[stream]
                progress.similarity_done(task)
                continue
            except Exception as error:  # noqa: BLE001 - re-raised below, as the user's error when it is one
                cause = _unwrap(error)
                if isinstance(cause, UserError):
                    raise UserError(f"comparisons of trial {task.trial!r}: {cause}") from None
                if not _lost(error, ray_module) or losses[task.trial] >= retries:
                    raise
                losses[task.trial] += 1
                del streams[stream]
                progress.similarity_done(task)
                rest = tuple(job for job in task.jobs if not storage.exists(job.output))
                # Jobs the lost attempt wrote but whose JobDone was lost with it count as done all the same.
                progress.advance("compare", sum(job not in rest and job.id not in reported for job in task.jobs))
                if rest:
                    again = SimilarityTask(task.trial, rest)
                    streams[submit(again)] = again
                continue
            if isinstance(event, JobDone):
                reported.add(event.job.id)
            progress.similarity(task, event)


def _lost(error: BaseException, ray_module: Any) -> bool:
    """Whether a Ray task failed for the system's reasons (its worker, node or objects lost), not its own code's."""
    lost = ray_module.exceptions
    return isinstance(error, (lost.WorkerCrashedError, lost.NodeDiedError, lost.LocalRayletDiedError,
                              lost.ObjectLostError, lost.OutOfMemoryError))


# -- progress -------------------------------------------------------------------------------------------------------
class _Progress:
    """Rich progress bars: epochs trained over all trials (with the latest robust accuracy), jobs computed.

    ``check`` runs at every event, in the driver's thread (the lease's: a driver that lost it stops here).
    On a console that is not a terminal (a log file, a pipe) the bars are not drawn; a plain line of the same
    counts is printed every ~30 s instead (`rayrs.console.PlainProgress`), and once more when the stage ends;
    ``started``: the sweep's start (`time.perf_counter`), from which those lines count the time.
    """

    def __init__(self, console: Console, stage: str, started: float, check: Callable[[], None] = lambda: None):
        self._check = check
        self._stage, self._since = stage, started
        self._plain = None if console.is_terminal else PlainProgress(console, self.line)
        self._bars = Progress(
            TextColumn("{task.description:<11}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("eta"),
            TimeRemainingColumn(),
            TextColumn("{task.fields[detail]}"),
            console=console,
            disable=self._plain is not None,
        )
        self._tasks: dict[str, Any] = {}
        self._trial_epochs: dict[str, tuple[int, int]] = {}  # trial -> (epochs done, epochs)
        self._started: set[str] = set()  # trials that reported an epoch in this run

    def __enter__(self) -> _Progress:
        self._bars.__enter__()
        if self._plain is not None:
            self._plain.start()
        return self

    def __exit__(self, *exc) -> None:
        self._bars.__exit__(*exc)
        if self._plain is not None:
            self._plain.stop()
            self._plain.print_now()  # where the stage ended

    def line(self) -> str:
        """The bars as one plain line: ``0:01:30 training: trials 1/3 (2 running, 0 pending), epochs 12/30 (...)``."""
        bars = [
            f"{task.description.strip()} {task.completed:g}/{task.total:g}"
            + (f" ({task.fields['detail']})" if task.fields.get("detail") else "")
            for task in self._bars.tasks
        ]
        return f"{elapsed(time.perf_counter() - self._since)} {self._stage}: " + ", ".join(bars)

    def add(self, key: str, description: str, total: int) -> None:
        self._tasks[key] = self._bars.add_task(description, total=total, detail="")

    def advance(self, key: str, steps: int, detail: str = "") -> None:
        self._bars.update(self._tasks[key], advance=steps, detail=detail)

    def similarity(self, task: SimilarityTask, event: TaskProgress | JobDone) -> None:
        """A similarity task's event: its own bar over probes and minibatches, or one more job done."""
        self._check()
        if isinstance(event, JobDone):
            self.advance("compare", 1, event.job.describe())
            return
        key = f"task:{task.trial}"
        if key not in self._tasks:
            self._tasks[key] = self._bars.add_task(f"  {task.trial}", total=event.total, detail="")
        self._bars.update(self._tasks[key], completed=event.done, total=event.total, detail=event.detail)

    def similarity_done(self, task: SimilarityTask) -> None:
        """Drop a finished task's bar (the jobs bar keeps the count)."""
        key = f"task:{task.trial}"
        if key in self._tasks:
            self._bars.remove_task(self._tasks.pop(key))

    def track_trials(self, epochs: dict[str, tuple[int, int]]) -> None:
        """A bar of trials done, with how many run and wait; ``epochs``: trial -> (epochs done, epochs)."""
        self._trial_epochs = dict(epochs)
        self.add("trials", "trials", len(epochs))
        self._count_trials()

    def _count_trials(self) -> None:
        done = sum(finished >= total for finished, total in self._trial_epochs.values())
        running = sum(t in self._started and f < n for t, (f, n) in self._trial_epochs.items())
        pending = len(self._trial_epochs) - done - running
        self._bars.update(self._tasks["trials"], completed=done, detail=f"{running} running, {pending} pending")

    def epoch(self, trial: str, metrics: dict[str, Any]) -> None:
        self._check()
        detail = (
            f"{trial} epoch {metrics.get('epoch')}: test clean {metrics.get('test_clean_acc', 0):.1%}, "
            f"robust {metrics.get('test_robust_acc', 0):.1%}"
        )
        self.advance("train", 1, detail)
        if trial in self._trial_epochs:
            self._started.add(trial)
            self._trial_epochs[trial] = (metrics.get("epoch", 0), self._trial_epochs[trial][1])
            self._count_trials()
