"""The `rayrs` command: a thin shell over `rayrs.sweep` and `analysis.report`.

A user's mistake (bad sweep file, missing dataset, results in the way) prints one line and exits 1; anything
else is a bug and keeps its traceback.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from rayrs.attacks import THREAT_MODELS
from rayrs.config import comparison_kinds, expand, load_experiment
from rayrs.data import DATASETS
from rayrs.errors import UserError
from rayrs.models import MODELS
from rayrs.train import METHODS

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
    """Turn a `UserError` into one line on stderr and exit status 1."""
    try:
        yield
    except UserError as error:
        console.print(f"[bold red]error:[/] {error}", highlight=False, soft_wrap=True)
        raise typer.Exit(1) from None


@app.command(epilog=_choices())
def sweep(
    file: Annotated[Path, typer.Argument(help="Sweep file (YAML), e.g. sweeps/quickstart.yaml.")],
    local: Annotated[bool, typer.Option(help="Run trials one at a time in this process (debugging), on the GPU if any.")] = False,
    dry_run: Annotated[bool, typer.Option(help="Print the trials and comparison jobs, then exit without running.")] = False,
    resume: Annotated[bool, typer.Option(help="Finish a sweep whose results exist; finished work is not redone.")] = False,
    results: Annotated[str | None, typer.Option(help="Results folder or URI (overrides the sweep file's `results`).")] = None,
    address: Annotated[str | None, typer.Option(help="Ray cluster address (default: start or join a local Ray).")] = None,
    report: Annotated[bool, typer.Option(help="Render the report at the end.")] = True,
) -> None:
    """Train every trial of a sweep file, compute its comparisons, and render the report."""
    with user_errors():
        experiment = load_experiment(file)
        if dry_run:
            _print_plan(experiment, results)
            return
        from rayrs.sweep import SweepOptions, run_sweep

        outcome = run_sweep(experiment, SweepOptions(local=local, resume=resume, address=address, report=report), results, console)
        console.print(
            f"done in {outcome.seconds:.0f} s: {len(outcome.trained)} trials trained, "
            f"{outcome.jobs_run} comparison jobs computed ({outcome.jobs_skipped} already done) -> {outcome.storage.root}"
        )
        if outcome.report_dir is not None:
            console.print(f"report: {outcome.report_dir / 'index.html'}")


def _print_plan(experiment, results: str | None) -> None:
    from rayrs.similarity.jobs import plan_jobs
    from rayrs.sweep import experiment_storage

    trials = expand(experiment)
    table = Table(title=f"{experiment.name}: {len(trials)} trials -> {experiment_storage(experiment, results).root}")
    for column in ("trial", "dataset", "model", "method", "threat model", "eps", "epochs", "seed"):
        table.add_column(column)
    for trial in trials:
        c = trial.config
        model = f"{c.model.arch}-{c.model.depth or ''}-{c.model.width or ''}".rstrip("-")
        table.add_row(trial.name, c.data.dataset, model, c.train.method, c.train.threat_model, f"{c.train.eps:.4g}",
                      str(c.train.epochs), str(c.train.seed))
    Console().print(table)
    jobs = plan_jobs(experiment, trials)
    Console().print(f"{len(jobs)} comparison jobs:")
    for job in jobs:
        Console().print(f"  {job.describe()}")


@app.command()
def analyze(
    results_dir: Annotated[str, typer.Argument(help="An experiment's results folder, e.g. results/quickstart.")],
    out: Annotated[Path | None, typer.Option(help="Where to write the report (default: RESULTS_DIR/report).")] = None,
    format: Annotated[str, typer.Option(help="Comma-separated outputs: png, svg, html.")] = "png,html",
) -> None:
    """Render the report of an experiment from its Parquet files alone."""
    with user_errors():
        from analysis.report import render_report
        from rayrs import storage as layout
        from rayrs.storage import Storage

        storage = Storage(results_dir)
        if not storage.exists(layout.METRICS):
            raise UserError(f"{storage.root}: no {layout.METRICS} here; point at an experiment's results folder, e.g. results/quickstart")
        formats = [f.strip() for f in format.split(",") if f.strip()]
        report = render_report(storage, out, formats)
        for name, reason in report.skipped.items():
            console.print(f"[yellow]skipped figure[/] {name}: {reason}")
        console.print(f"report: {report.out_dir}")
