"""The catalog: every trial x epoch checkpoint with its parameters and metrics, as ``metrics.parquet``.

The checkpoints' ``meta.json`` files are the source of truth; the catalog is rebuilt from them after training,
so it can never disagree with what is on storage (a resumed trial's epochs appear once each).
"""

from __future__ import annotations

from collections.abc import Iterable

import pyarrow as pa

from rayrs import checkpoint
from rayrs import storage as layout
from rayrs.schema import EPOCH_COLUMNS, METRICS_SCHEMA, TRIAL_COLUMNS
from rayrs.storage import Storage


def metrics_rows(storage: Storage, trials: Iterable[str]) -> list[dict]:
    """One row per complete epoch checkpoint of each trial, trial parameters first."""
    rows = []
    for trial in trials:
        if not storage.exists(layout.trial_spec(trial)):
            continue
        record = storage.read_json(layout.trial_spec(trial))
        for epoch in checkpoint.completed_epochs(storage, trial):
            metrics = checkpoint.read_meta(storage, trial, epoch)["metrics"]
            rows.append({**{k: record.get(k) for k in TRIAL_COLUMNS}, **{k: metrics.get(k) for k in EPOCH_COLUMNS}})
    return rows


def write_metrics(storage: Storage, trials: Iterable[str]) -> int:
    """Rebuild ``metrics.parquet`` from the checkpoints of ``trials``; returns the number of rows."""
    rows = metrics_rows(storage, trials)
    storage.write_table(layout.METRICS, pa.Table.from_pylist(rows, schema=METRICS_SCHEMA))
    return len(rows)
