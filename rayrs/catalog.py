"""The catalog: every trial x epoch checkpoint with its parameters and metrics, as ``metrics.parquet``.

The checkpoints' ``meta.json`` files are the source of truth; the catalog is rebuilt from them after training,
so it can never disagree with what is on storage (a resumed trial's epochs appear once each).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import pyarrow as pa

from rayrs import checkpoint
from rayrs import storage as layout
from rayrs.config import TrialSpec
from rayrs.schema import EPOCH_COLUMNS, FREEZING_COLUMNS, METRICS_SCHEMA, TRIAL_COLUMNS
from rayrs.storage import Storage


def metrics_rows(storage: Storage, trials: Iterable[str]) -> list[dict]:
    """One row per complete epoch checkpoint of each trial, trial parameters first."""
    rows = []
    for trial in trials:
        if not storage.exists(layout.trial_spec(trial)):
            continue
        record = storage.read_json(layout.trial_spec(trial))
        epochs = [checkpoint.read_metrics(storage, trial, epoch) for epoch in checkpoint.completed_epochs(storage, trial)]
        best = max(epochs, key=lambda m: (m["test_robust_acc"], -m["epoch"]), default=None)  # earliest of ties
        for metrics in epochs:
            row = {**{k: record.get(k) for k in TRIAL_COLUMNS}, **{k: metrics.get(k) for k in EPOCH_COLUMNS},
                   "best_epoch": best["epoch"]}
            if "frozen_blocks" in metrics:  # CKA-guided freezing: its columns, the trace from meta.json
                freezing = checkpoint.read_meta(storage, trial, metrics["epoch"]).get("freezing") or {}
                row.update(frozen_blocks=metrics["frozen_blocks"], freeze_check_seconds=metrics.get("freeze_check_seconds"),
                           probe_cka_benign=freezing.get("cka_benign"), probe_cka_adversarial=freezing.get("cka_adversarial"))
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


def trial_status(storage: Storage, trial: TrialSpec) -> TrialStatus:
    """How far ``trial`` got, read from its checkpoints alone (no Ray)."""
    epochs = checkpoint.completed_epochs(storage, trial.name)
    metas = [checkpoint.read_metrics(storage, trial.name, e) for e in epochs]
    last = metas[-1] if metas else {}
    seconds = [m["epoch_seconds"] for m in metas if m.get("epoch_seconds") is not None]
    return TrialStatus(
        trial=trial.name,
        epochs_done=epochs[-1] if epochs else 0,
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
