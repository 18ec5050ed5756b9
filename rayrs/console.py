"""What a sweep tells the person who runs it, beyond the live bars: plain progress lines where the output is not
a terminal, one line about the report's figures, and a table of every trial's final accuracies.

In a terminal the sweep shows rich's live bars (`rayrs.sweep`). Where its output goes to a log file or a pipe
(``nohup``, CI, a cluster's tmux log) those bars would print nothing until the end, so `PlainProgress` writes
one line every `progress_interval` seconds instead: the stage, trials done / total, epochs, jobs done / total
and the time since the sweep started.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from rayrs import checkpoint
from rayrs.config import TrialSpec
from rayrs.storage import Storage

PROGRESS_SECONDS_ENV = "RAYRS_PROGRESS_SECONDS"  # seconds between plain progress lines (tests make it short)
DEFAULT_PROGRESS_SECONDS = 30.0


def progress_interval() -> float:
    """Seconds between plain progress lines: ``$RAYRS_PROGRESS_SECONDS`` if it is a positive number, else 30."""
    try:
        seconds = float(os.environ.get(PROGRESS_SECONDS_ENV, DEFAULT_PROGRESS_SECONDS))
    except ValueError:
        return DEFAULT_PROGRESS_SECONDS
    return seconds if seconds > 0 else DEFAULT_PROGRESS_SECONDS


def elapsed(seconds: float) -> str:
    """``seconds`` as h:mm:ss, as rich's bars show elapsed time."""
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


class PlainProgress:
    """Prints ``line()`` on ``console`` every ``interval`` seconds from a background thread, until `stop`.

    ``line`` is called from that thread: it must only read state that the sweep's thread updates.
    """

    def __init__(self, console: Console, line: Callable[[], str], interval: float | None = None):
        self._console = console
        self._line = line
        self._interval = progress_interval() if interval is None else interval
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rayrs-progress", daemon=True)

    def start(self) -> PlainProgress:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopped.set()
        self._thread.join()

    def print_now(self) -> None:
        # soft_wrap: one line however long, so that a log reads (and greps) one line per report
        self._console.print(escape(self._line()), highlight=False, soft_wrap=True)

    def _run(self) -> None:
        while not self._stopped.wait(self._interval):
            self.print_now()


def figures_line(drawn: int, skipped: int, index: Path | str | None) -> str:
    """One line about the report: how many figures it drew and how many it could not, pointing at the page
    where each skipped figure's reason (what to add to the sweep) is written."""
    where = f": see the report ({index})" if index is not None else ": `rayrs analyze RESULTS` lists why"
    if not skipped:
        return f"drew all {drawn} figures of the report"
    noun = "figure" if drawn == 1 else "figures"
    verb = "needs" if skipped == 1 else "need"
    return f"drew {drawn} {noun}; {skipped} {verb} comparisons or trials this sweep does not ask for{where}"


def print_wide(console: Console, renderable: Any) -> None:
    """Print ``renderable`` (a table) on ``console``; into a log or a pipe 200 columns wide, so that no trial
    name is cut to fit an 80-column default (a terminal keeps its own width)."""
    if not console.is_terminal:
        console = Console(file=console.file, width=200)
    console.print(renderable)


def final_accuracies(storage: Storage, trials: Sequence[TrialSpec]) -> Table:
    """Every trial's accuracies at its last finished epoch, benign (clean) and robust on the test subset.

    Robust is under the trial's evaluation attack at ``eval_eps`` (its threat model's own units), as in
    ``metrics.parquet``; a trial without a finished epoch shows dashes.
    """
    table = Table(title="final test accuracy (robust: under the evaluation attack at eval eps)")
    for column in ("trial", "method", "threat model", "eps", "epoch", "test clean", "test robust", "eval eps"):
        table.add_column(column, no_wrap=True, justify="left" if column in ("trial", "method", "threat model") else "right")
    for trial in trials:
        epochs = checkpoint.completed_epochs(storage, trial.name)
        meta = checkpoint.read_metrics(storage, trial.name, epochs[-1]) if epochs else {}
        c = trial.config
        table.add_row(
            escape(trial.name), c.train.method, c.train.threat_model, _number(c.train.eps),
            f"{epochs[-1]}/{c.train.epochs}" if epochs else f"0/{c.train.epochs}",
            _percent(meta.get("test_clean_acc")), _percent(meta.get("test_robust_acc")), _number(meta.get("eval_eps")),
        )
    return table


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{value:.1%}"


def _number(value: float | None) -> str:
    if value is None:
        return "-"
    steps = value * 255
    if round(value, 3) != value and abs(steps - round(steps)) < 1e-6:
        return f"{round(steps)}/255"
    return f"{value:.3g}"

