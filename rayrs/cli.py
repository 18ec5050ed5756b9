"""The `rayrs` command: a thin shell over `rayrs.sweep` and `analysis.report`.

A user's mistake (bad sweep file, missing dataset, results in the way) prints one line and exits 1; anything
else is a bug and keeps its traceback.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from rayrs.attacks import THREAT_MODELS
from rayrs.config import comparison_kinds, expand, load_experiment
from rayrs.data import DATASETS
from rayrs.errors import UserError
from rayrs.methods import METHODS
from rayrs.models import MODELS

console = Console(stderr=True)


def _choices() -> str:
    def listing(title: str, registry: dict) -> str:
        rows = "\n\n".join(f"  {name}: {getattr(entry, 'description', '')}" for name, entry in registry.items())
        return f"{title}:\n\n{rows}"

    return "\n\n".join(
        [
            listing("Datasets (data.dataset)", DATASETS),
            listing("Models (model.arch)", MODELS),
            listing("Training methods (train.method)", METHODS),
            listing("Threat models (train.threat_model)", THREAT_MODELS),
            "Comparisons (compare[].kind): " + ", ".join(comparison_kinds()),
        ]
    )


app = typer.Typer(
    help="Ray-distributed sweeps of robust training and representation similarity (Cianfarani et al.).",
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode=None,
)


@contextmanager
def user_errors() -> Iterator[None]:
    """Turn a `UserError` into one line on stderr and exit status 1 (Ctrl-C: a hint to resume, status 130)."""
    try:
        yield
    except UserError as error:
        line = " ".join(str(error).split())  # one line, whatever a message quotes (a file's text, an SDK's error)
        console.print(f"[bold red]error:[/] {escape(line)}", highlight=False, soft_wrap=True)
        raise typer.Exit(1) from None
    except KeyboardInterrupt:
        console.print("interrupted: everything finished so far is kept; rerun with --resume to go on")
        raise typer.Exit(130) from None


@app.command(epilog=_choices())
def sweep(
    file: Annotated[Path, typer.Argument(help="Sweep file (YAML), e.g. sweeps/quickstart.yaml.")],
    local: Annotated[bool, typer.Option(help="Run trials one at a time in this process (debugging), on the GPU if any.")] = False,
    dry_run: Annotated[bool, typer.Option(help="Print the trials and comparison jobs, then exit without running.")] = False,
    resume: Annotated[bool, typer.Option(help="Finish a sweep whose results exist; finished work is not redone.")] = False,
    results: Annotated[str | None, typer.Option(help="Results folder or URI (overrides the sweep file's `results`).")] = None,
    address: Annotated[str | None, typer.Option(help="Ray cluster address (default: start or join a local Ray).")] = None,
    report: Annotated[bool, typer.Option(help="Render the report at the end.")] = True,
    redo: Annotated[list[str] | None, typer.Option(help="Retrain this trial from scratch (repeatable), redoing its comparisons.")] = None,
    gpu_tflops: Annotated[float, typer.Option(help="Sustained TFLOP/s assumed by --dry-run's GPU-hour estimate.")] = 50.0,
) -> None:
    """Train every trial of a sweep file, compute its comparisons, and render the report."""
    with user_errors():
        experiment = load_experiment(file)
        if not (math.isfinite(gpu_tflops) and gpu_tflops > 0):
            raise UserError(
                f"--gpu-tflops {gpu_tflops:g}: give the sustained TFLOP/s of one GPU, a positive number "
                "(benchmarks/train_step.py measures yours; default 50)"
            )
        from rayrs.sweep import experiment_storage

        # The results location answers now, or the sweep stops here in one line, before anything is written.
        experiment_storage(experiment, results).check(write=not dry_run)
        if dry_run:
            _print_plan(experiment, results, gpu_tflops)
            return
        from rayrs.sweep import SweepOptions, run_sweep

        options = SweepOptions(local=local, resume=resume, address=address, report=report, redo=tuple(redo or ()))
        outcome = run_sweep(experiment, options, results, console)
        from rayrs.console import final_accuracies, print_wide

        if outcome.trials:  # a sweep of `models:` alone trains nothing: no accuracies to show
            print_wide(console, final_accuracies(outcome.storage, outcome.trials))
        console.print(
            f"done in {outcome.seconds:.0f} s: {len(outcome.trained)} trials trained, "
            f"{outcome.jobs_run} comparison jobs computed ({outcome.jobs_skipped} already done) -> {outcome.storage.root}",
            soft_wrap=True,  # the path whole on one line, in a log as in a terminal
        )
        if outcome.report_dir is not None:
            console.print(f"report: {outcome.report_dir / 'index.html'}")


def _print_plan(experiment, results: str | None, gpu_tflops: float) -> None:
    from analysis.load import format_eps
    from rayrs.cost import format_bytes, trial_gpu_hours, trial_storage
    from rayrs.config import model_entries
    from rayrs.entries import describe_models
    from rayrs.similarity.jobs import plan_jobs
    from rayrs.sweep import experiment_storage

    trials = expand(experiment)
    # The plan needs no weights: a dry run reads none (the sweep checks and hashes them before it starts), so a
    # file not made yet (sweeps/your_models.yaml before the quickstart) is only named.
    models = [spec.model_copy(update={"digest": "dry-run"}) for spec in model_entries(experiment)]
    table = Table(title=f"{experiment.name}: {len(trials)} trials -> {experiment_storage(experiment, results).root}")
    for column in ("trial", "dataset", "model", "method", "threat model", "eps", "epochs", "seed", "GPU-h", "storage"):
        table.add_column(column)
    hours = [trial_gpu_hours(trial.config, gpu_tflops) for trial in trials]
    sizes = [trial_storage(trial.config) for trial in trials]
    for trial, trial_hours, size in zip(trials, hours, sizes):
        c = trial.config
        info = MODELS[c.model.arch]
        depth, width = c.model.depth or info.default_depth, c.model.width or info.default_width
        model = "-".join(str(part) for part in (c.model.arch, depth, width) if part is not None)
        table.add_row(trial.name, c.data.dataset, model, c.train.method, c.train.threat_model, format_eps(c.train.eps),
                      str(c.train.epochs), str(c.train.seed), f"{trial_hours:.2f}", format_bytes(size.total))
    out = Console()
    if not out.is_terminal:  # a log or a pipe: wide enough that trial names are never cut
        out = Console(width=200)
    out.print(table)
    out.print(f"training: ~{sum(hours):.1f} GPU-hours at {gpu_tflops:g} sustained TFLOP/s (--gpu-tflops)")
    kept = sorted({f"optimizer: {t.config.checkpoint.optimizer}, weights_dtype: {t.config.checkpoint.weights_dtype}" for t in trials})
    out.print(f"checkpoints: ~{format_bytes(sum(size.total for size in sizes))} (every epoch's weights; checkpoint: "
              f"{' | '.join(kept)})")
    if models:
        out.print(f"{len(models)} given models (models:, compared as they are, not trained):")
        for row in describe_models(models):
            out.print(f"  {row['model']}: {row['arch']}, {row['method']} {row['threat_model']} eps {format_eps(row['eps'])}, "
                      f"epochs {row['epochs']}", highlight=False)
        missing = [path for spec in models for path in spec.weights.values() if not Path(path).is_file()]
        if missing:
            out.print(f"  weights not there yet (the sweep stops on them): {escape(', '.join(missing))}", highlight=False)
    jobs = plan_jobs(experiment, [*trials, *models])
    out.print(f"{len(jobs)} comparison jobs:")
    for job in jobs:
        out.print(f"  {escape(job.describe())}")


@app.command()
def analyze(
    results_dir: Annotated[str, typer.Argument(help="An experiment's results folder, e.g. results/quickstart.")],
    out: Annotated[Path | None, typer.Option(help="Where to write the report (default: RESULTS_DIR/report).")] = None,
    format: Annotated[str, typer.Option(help=(
        "Comma-separated outputs: png, svg, pdf (one file per figure each), html (index.html, with why each "
        "skipped figure was skipped), parquet (similarity_view.parquet: the similarity rows with each layer's "
        "block and each model's training). Table 1 is also written as table1.csv and table1.tex."
    ))] = "png,html",
) -> None:
    """Render the report of an experiment from its Parquet files alone."""
    with user_errors():
        from analysis.report import render_report
        from rayrs import storage as layout
        from rayrs.catalog import similarity_files
        from rayrs.storage import Storage

        storage = Storage(results_dir)
        storage.check()
        if not storage.exists(layout.METRICS):
            raise UserError(f"{storage.root}: no {layout.METRICS} here; point at an experiment's results folder, e.g. results/quickstart")
        formats = [f.strip() for f in format.split(",") if f.strip()]
        report = render_report(storage, out, formats)
        from rayrs.console import figures_line

        console.print(figures_line(len(report.written), len(report.skipped), report.index), highlight=False, soft_wrap=True)
        if report.index is None:  # no page to hold the reasons: they are said here, one line each
            for name, reason in report.skipped.items():
                console.print(f"[yellow]skipped figure[/] {name}: {escape(reason)}")
        foreign = similarity_files(storage).note(storage)  # the report read only the sweep's own comparisons
        if foreign is not None:
            console.print(f"[yellow]comparisons:[/] {escape(foreign)}", soft_wrap=True)
        if report.view is not None:
            console.print(f"similarity view: {report.view}", soft_wrap=True)
        console.print(f"report: {report.out_dir}")


@app.command()
def status(
    results_dir: Annotated[str, typer.Argument(help="An experiment's results folder or URI, e.g. results/quickstart.")],
) -> None:
    """Progress of a sweep read from its results alone (no Ray): trials, epochs, accuracy, comparisons, time left,
    and the driver running it (its lease)."""
    with user_errors():
        from rayrs import storage as layout
        from rayrs.catalog import (
            TrialMismatch,
            check_trials,
            finished_jobs,
            read_sweep,
            remaining_trial_seconds,
            similarity_files,
            trial_status,
        )
        from rayrs.entries import describe_models, stored_models
        from rayrs.lease import EXPIRY_SECONDS, read_holder
        from rayrs.similarity.jobs import plan_jobs
        from rayrs.storage import Storage

        storage = Storage(results_dir)
        storage.check()
        if not storage.exists(layout.SWEEP_CONFIG):
            raise UserError(f"{storage.root}: no {layout.SWEEP_CONFIG} here; point at an experiment's results folder")
        sweep_json = storage.full_path(layout.SWEEP_CONFIG)
        experiment = read_sweep(storage)
        trials = expand(experiment, source=sweep_json)
        try:
            metrics = check_trials(storage, trials)  # the trials on storage are the ones sweep.json describes
        except TrialMismatch as error:
            raise UserError(f"{sweep_json} does not describe the trials stored next to it: {error}") from None
        statuses = [trial_status(storage, trial, metrics.get(trial.name, [])) for trial in trials]
        table = Table(title=f"{experiment.name} ({storage.root})")
        for column in ("trial", "state", "epoch", "test clean", "test robust", "s/epoch"):
            table.add_column(column)
        for s in statuses:
            percent = lambda value: "" if value is None else f"{value:.1%}"  # noqa: E731
            table.add_row(s.trial, s.state, f"{s.epochs_done}/{s.epochs}", percent(s.test_clean_acc),
                          percent(s.test_robust_acc), "" if s.epoch_seconds is None else f"{s.epoch_seconds:.1f}")
        models = stored_models(storage, experiment)  # a sweep's `models:` entries: compared, never trained
        for row in describe_models(models):
            table.add_row(row["model"], "given", row["epochs"], "", "", "")
        Console().print(table)
        counts = {state: sum(s.state == state for s in statuses) for state in ("done", "started", "pending")}
        jobs = plan_jobs(experiment, [*trials, *models])
        jobs_done = len(finished_jobs(storage, jobs))
        left = remaining_trial_seconds(statuses)
        Console().print(
            f"trials: {counts['done']} done, {counts['started']} started, {counts['pending']} pending; "
            f"comparison jobs: {jobs_done}/{len(jobs)} done; training left: "
            + ("unknown (no epoch finished yet)" if left is None else f"~{left / 3600:.2f} trial-hours")
        )
        foreign = similarity_files(storage).note(storage)
        if foreign is not None:
            Console().print(f"[yellow]comparisons:[/] {escape(foreign)}", soft_wrap=True)
        try:
            holder = read_holder(storage)
        except UserError as error:  # a damaged lease does not hide the progress above
            Console().print(f"driver: unknown ({escape(str(error))})", soft_wrap=True)
        else:
            line = "driver: none running" if holder is None else f"driver: {holder.describe()}"
            if holder is not None and holder.stale(EXPIRY_SECONDS):
                line += " (stale: the next sweep --resume takes it over)"
            Console().print(line, soft_wrap=True)
