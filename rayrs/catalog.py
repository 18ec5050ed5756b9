"""The catalog: every trial x epoch checkpoint with its parameters and metrics, as ``metrics.parquet``, and
the check that what storage holds is what the sweep asks for.

The checkpoints' ``meta.json`` files are the source of truth; the catalog is rebuilt from them after training,
so it can never disagree with what is on storage (a resumed trial's epochs appear once each). Who a trial
folder belongs to is its ``trial.json`` (`read_trial_record`); `check_trials` holds every folder against the
sweep before a run writes anything. Which comparison files are the experiment's is what its ``sweep.json``
plans (`similarity_files`): a file of an older run left under ``similarity/`` is never read beside them.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from rayrs import checkpoint
from rayrs import storage as layout
from rayrs.config import Experiment, TrialSpec, describe
from rayrs.errors import UserError
from rayrs.schema import EPOCH_COLUMNS, FREEZING_COLUMNS, METRICS_SCHEMA, TRIAL_COLUMNS, check_job_rows
from rayrs.storage import DamagedFile, MissingFile, Storage

START_AFRESH = "or give the sweep a new name to start afresh"


class TrialMismatch(UserError):
    """A trial folder that is not what the sweep says: no such trial, or trained with another configuration."""


def read_trial_record(storage: Storage, trial: str) -> dict[str, Any]:
    """The trial's ``trial.json`` (`rayrs.train.trial_record`), checked to name this trial and carry a fingerprint.

    A trial that has committed an epoch without one has lost its identity: a `UserError` with the way out.
    """
    path = layout.trial_spec(trial)
    try:
        record = storage.read_json(path)  # no HEAD first: on an object store, one request per trial
    except MissingFile:
        raise UserError(
            f"{storage.full_path(path)} is missing, so the checkpoints of trial {trial!r} have no identity; "
            f"rerun the sweep with --redo {trial} to retrain it, {START_AFRESH}"
        ) from None
    if not isinstance(record, dict) or record.get("trial") != trial or not isinstance(record.get("fingerprint"), str):
        found = f"trial {record.get('trial')!r}" if isinstance(record, dict) else f"a {type(record).__name__}"
        raise DamagedFile(
            f"{storage.full_path(path)} does not describe trial {trial!r} (it names {found}); "
            f"rerun the sweep with --redo {trial} to retrain it, {START_AFRESH}"
        )
    return record


def check_trials(storage: Storage, trials: Sequence[TrialSpec], skip: Iterable[str] = ()) -> dict[str, list[dict]]:
    """Hold every trial folder in storage against the sweep's trials; the first mismatch is a `UserError`.

    A folder must belong to a trial of the sweep, its ``trial.json`` must carry that trial's fingerprint, and
    each committed epoch's ``meta.json`` must be that epoch's record. A folder with no committed epoch and no
    ``trial.json`` holds nothing yet and passes. ``skip``: trials about to be deleted (``--redo``).

    Returns the metrics of every committed epoch of each trial checked (`rayrs.checkpoint.read_metrics`, by
    epoch), read here once so that a caller need not read them again (`trial_status`).
    """
    expected = {t.name: t for t in trials}
    skip = set(skip)
    checked: dict[str, list[dict]] = {}
    for name in storage.list_dir(layout.TRIALS_DIR):
        if name in skip:
            continue
        folder = storage.full_path(f"{layout.TRIALS_DIR}/{name}")
        spec = expected.get(name)
        if spec is None:
            raise TrialMismatch(
                f"{folder} is not a trial of this sweep (its trials: {', '.join(expected) or 'none'}): the sweep file "
                f"changed since these results were made; move that folder out of the experiment, {START_AFRESH}"
            )
        epochs = checkpoint.completed_epochs(storage, name)
        if not epochs and not storage.exists(layout.trial_spec(name)):
            continue
        record = read_trial_record(storage, name)
        if record["fingerprint"] != spec.fingerprint:
            raise TrialMismatch(
                f"{storage.full_path(layout.trial_spec(name))}: trial {name!r} was trained with another configuration "
                f"than the sweep file gives it (fingerprint {record['fingerprint']}, now {spec.fingerprint}): the "
                f"sweep file changed since; rerun the sweep with --redo {name} to retrain it, {START_AFRESH}"
            )
        checked[name] = [checkpoint.read_metrics(storage, name, epoch) for epoch in epochs]
    return checked


def metrics_rows(storage: Storage, trials: Iterable[str]) -> list[dict]:
    """One row per complete epoch checkpoint of each trial, trial parameters first (a trial with no epoch has none)."""
    rows = []
    for trial in trials:
        done = checkpoint.completed_epochs(storage, trial)
        if not done:
            continue
        record = read_trial_record(storage, trial)
        epochs = [checkpoint.read_metrics(storage, trial, epoch) for epoch in done]
        best = max(epochs, key=lambda m: (m["test_robust_acc"], -m["epoch"]), default=None)  # earliest of ties
        for metrics in epochs:
            row = {**{k: record.get(k) for k in TRIAL_COLUMNS}, **{k: metrics.get(k) for k in EPOCH_COLUMNS},
                   "best_epoch": best["epoch"]}
            if "frozen_blocks" in metrics:  # CKA-guided freezing: its columns, the trace from meta.json
                freezing = checkpoint.read_meta(storage, trial, metrics["epoch"]).get("freezing") or {}
                row.update(frozen_blocks=metrics["frozen_blocks"], freeze_check_seconds=metrics.get("freeze_check_seconds"),
                           probe_cka_benign=freezing.get("cka_benign"), probe_cka_adversarial=freezing.get("cka_adversarial"),
                           frozen_macs_share=metrics.get("frozen_macs_share"), freeze_blocks=freezing.get("blocks"),
                           block_frozen_from=freezing.get("frozen_from"))
            rows.append(row)
    return rows


def write_metrics(storage: Storage, trials: Iterable[str]) -> int:
    """Rebuild ``metrics.parquet`` from the checkpoints of ``trials``; returns the number of rows.

    `FREEZING_COLUMNS` are appended only when some trial used CKA-guided freezing (null for the others).
    """
    rows = metrics_rows(storage, trials)
    schema = METRICS_SCHEMA
    if any("frozen_blocks" in row for row in rows):
        schema = pa.schema(list(METRICS_SCHEMA) + [pa.field(name, kind) for name, kind in FREEZING_COLUMNS.items()])
    storage.write_table(layout.METRICS, pa.Table.from_pylist(rows, schema=schema))
    return len(rows)


@dataclass(frozen=True)
class TrialStatus:
    trial: str
    epochs_done: int
    epochs: int
    test_clean_acc: float | None  # of the latest epoch
    test_robust_acc: float | None
    epoch_seconds: float | None  # mean over the finished epochs

    @property
    def state(self) -> str:
        return "done" if self.epochs_done >= self.epochs else "started" if self.epochs_done else "pending"


def trial_status(storage: Storage, trial: TrialSpec, metrics: list[dict] | None = None) -> TrialStatus:
    """How far ``trial`` got, read from its checkpoints alone (no Ray); ``metrics``: its committed epochs'
    metrics when already read (`check_trials` returns them), else read here."""
    if metrics is None:
        epochs = checkpoint.completed_epochs(storage, trial.name)
        metrics = [checkpoint.read_metrics(storage, trial.name, epoch) for epoch in epochs]
    last = metrics[-1] if metrics else {}
    seconds = [m["epoch_seconds"] for m in metrics if m.get("epoch_seconds") is not None]
    return TrialStatus(
        trial=trial.name,
        epochs_done=last.get("epoch", 0),
        epochs=trial.config.train.epochs,
        test_clean_acc=last.get("test_clean_acc"),
        test_robust_acc=last.get("test_robust_acc"),
        epoch_seconds=sum(seconds) / len(seconds) if seconds else None,
    )


def remaining_trial_seconds(statuses: Sequence[TrialStatus]) -> float | None:
    """Training time left, summed over trials (divide by the parallel slots for wall time).

    Unstarted trials are assumed to take as long per epoch as the started ones on average.
    """
    known = [s.epoch_seconds for s in statuses if s.epoch_seconds is not None]
    if not known:
        return None
    typical = sum(known) / len(known)
    return sum((s.epochs - s.epochs_done) * (s.epoch_seconds or typical) for s in statuses)


def read_sweep(storage: Storage) -> Experiment:
    """The experiment of ``sweep.json``, validated; an unreadable or schema-invalid one is one line with the way out."""
    from pydantic import ValidationError

    try:
        return Experiment.model_validate(storage.read_json(layout.SWEEP_CONFIG))
    except ValidationError as error:
        raise DamagedFile(
            f"{storage.full_path(layout.SWEEP_CONFIG)} is not a sweep this rayrs can read ({describe(error)}); "
            "rerun the sweep file with --resume to rewrite it"
        ) from None


@dataclass(frozen=True)
class SimilarityFiles:
    """The Parquet files under ``similarity/``: ``planned``, those of jobs the sweep plans (to read), and
    ``foreign``, the others (an older run's job ids, an older measure definition), never read. Relative paths."""

    planned: list[str]
    foreign: list[str]

    def note(self, storage: Storage) -> str | None:
        """One line about the foreign files, for a person; None when there are none."""
        if not self.foreign:
            return None
        count = len(self.foreign)
        return (
            f"{count} file{'s' if count > 1 else ''} under {storage.full_path(layout.SIMILARITY_DIR)} "
            f"{'are' if count > 1 else 'is'} not of a comparison that {layout.SWEEP_CONFIG} plans (e.g. "
            f"{self.foreign[0]}, an older run's) and {'were' if count > 1 else 'was'} not read; delete or move "
            f"{'them' if count > 1 else 'it'} to keep the folder to this sweep"
        )


def similarity_files(storage: Storage) -> SimilarityFiles:
    """The experiment's comparison files, split by whether ``sweep.json`` plans their job (`SimilarityFiles`).

    Without a ``sweep.json`` (results assembled by hand, e.g. the tests' `synthetic` tree) every file counts as planned; an
    unreadable one is a `DamagedFile` (`read_sweep`): which files are the sweep's would be unknown.
    """
    from rayrs.entries import stored_units  # both import the training code, which imports this module
    from rayrs.similarity.jobs import plan_jobs

    files = storage.list_files(layout.SIMILARITY_DIR, ".parquet")
    if not files or not storage.exists(layout.SWEEP_CONFIG):
        return SimilarityFiles(planned=files, foreign=[])
    experiment = read_sweep(storage)
    units = stored_units(storage, experiment, source=storage.full_path(layout.SWEEP_CONFIG))  # trials and model entries
    outputs = {job.output for job in plan_jobs(experiment, units)}
    return SimilarityFiles(planned=[f for f in files if f in outputs], foreign=[f for f in files if f not in outputs])


def finished_jobs(storage: Storage, jobs: Iterable[Any]) -> set[str]:
    """Ids of the comparison jobs (`rayrs.similarity.jobs.SimilarityJob`) whose Parquet file is there.

    A file that is there must be that job's: readable, and its rows of that very job (the ``job`` and ``kind``
    columns), else a `DamagedFile` naming it, so a file copied or swapped from another job never counts as
    done (nor is it read into a figure: `analysis.load.read_similarity` checks the same).
    """
    done = set()
    for job in jobs:
        if storage.exists(job.output):
            check_job_rows(storage, job.output, storage.read_table(job.output))
            done.add(job.id)
    return done
