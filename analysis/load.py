"""Read a results folder's Parquet tables into Polars, and name its trials the way a figure shows them.

Everything here reads through `rayrs.storage.Storage`, so the same call works on a local folder and on an
object store. An experiment with nothing written yet gives empty frames that still carry the schema's
columns, so a figure function can say "no rows" instead of failing on a missing column.
"""

from __future__ import annotations

import altair as alt
import polars as pl
import pyarrow as pa

from rayrs.errors import UserError
from rayrs.schema import METRICS_SCHEMA, SIMILARITY_SCHEMA
from rayrs.storage import METRICS, SIMILARITY_DIR, Storage

# Display names of training methods, in the paper's words; an unknown method is shown as written.
METHOD_NAMES = {"standard": "standard", "pgd": "PGD-AT", "pgd_at": "PGD-AT", "trades": "TRADES"}

# Trial parameters that may tell apart two trials with the same method and eps, in the order they are named.
_DISTINGUISHING = ("dataset", "arch", "depth", "width", "threat_model", "seed")


class NoData(ValueError):
    """A figure has no rows to draw; the message says which rows are missing, for a report's "skipped" list."""


def read_metrics(storage: Storage) -> pl.DataFrame:
    """``metrics.parquet`` as a frame with `METRICS_SCHEMA`'s columns: one row per trial x epoch (empty if absent)."""
    if not storage.exists(METRICS):
        return _empty(METRICS_SCHEMA)
    return pl.from_arrow(_conform(storage, METRICS, METRICS_SCHEMA))


def read_similarity(storage: Storage) -> pl.DataFrame:
    """Every ``similarity/<kind>/<job>.parquet`` file concatenated, with `SIMILARITY_SCHEMA`'s columns.

    One row per layer pair per comparison; empty (with the columns) when no comparison has finished.
    """
    files = storage.list_files(SIMILARITY_DIR, ".parquet")
    if not files:
        return _empty(SIMILARITY_SCHEMA)
    return pl.from_arrow(pa.concat_tables(_conform(storage, rel, SIMILARITY_SCHEMA) for rel in files))


def trial_labels(metrics: pl.DataFrame) -> pl.DataFrame:
    """One row per trial: ``trial``, ``label`` (e.g. "PGD-AT ε=8/255"), ``robust``, ``eps`` and ``order``.

    A trial is non-robust when its method is "standard" or its eps is 0; it is then labelled "standard".
    Rows come sorted by ``order`` (0, 1, ...): non-robust trials first, then by eps. Labels are unique: trials
    that would share one get the parameters that differ between them appended, e.g. "(width 10, seed 1)".
    """
    trials = (
        metrics.unique(subset="trial", keep="first", maintain_order=True)
        .with_columns(robust=(pl.col("method") != "standard") & (pl.col("eps") > 0))
        .sort(["robust", "eps", "method", "trial"])
    )
    sharing: dict[str, list[dict]] = {}  # base label -> the trials that have it
    for row in trials.to_dicts():
        sharing.setdefault(_base_label(row), []).append(row)
    labels = {row["trial"]: _disambiguate(row, same, base) for base, same in sharing.items() for row in same}
    return trials.select(
        "trial",
        pl.col("trial").replace_strict(labels, return_dtype=pl.String).alias("label"),
        "robust",
        "eps",
        pl.int_range(pl.len(), dtype=pl.Int64).alias("order"),
    )


def format_eps(eps: float) -> str:
    """``eps`` (pixel scale [0, 1]) as people write it: a short decimal (0.1), else "k/255" (8/255)."""
    if round(eps, 3) == eps:
        return f"{eps:g}"
    steps = round(eps * 255)
    if abs(eps * 255 - steps) < 1e-6:
        return f"{steps}/255"
    return f"{eps:.3g}"


def chart_data(frame: pl.DataFrame) -> alt.InlineData:
    """``frame``'s rows as inline Vega-Lite data.

    Plain records rather than the frame itself: Altair refuses frames over 5000 rows by default, and a
    WRN-28 layer x layer heatmap alone has more cells than that.
    """
    return alt.InlineData(values=frame.to_dicts())


def _base_label(trial: dict) -> str:
    if not trial["robust"]:
        return "standard"
    method = METHOD_NAMES.get(trial["method"], trial["method"])
    return f"{method} ε={format_eps(trial['eps'])}"


def _disambiguate(trial: dict, same_label: list[dict], label: str) -> str:
    """``label``, followed by the parameters in which ``trial`` differs from others sharing that label."""
    if len(same_label) == 1:
        return label
    differing = [c for c in _DISTINGUISHING if len({r[c] for r in same_label}) > 1]
    if not differing:
        return f"{label} ({trial['trial']})"
    named = ", ".join(f"{column.replace('_', ' ')} {trial[column]}" for column in differing)
    return f"{label} ({named})"


def _empty(schema: pa.Schema) -> pl.DataFrame:
    return pl.from_arrow(schema.empty_table())


def _conform(storage: Storage, rel: str, schema: pa.Schema) -> pa.Table:
    """The table at ``rel``, reduced to ``schema``'s columns and types; a missing column is the user's to fix."""
    table = storage.read_table(rel)
    missing = [name for name in schema.names if name not in table.column_names]
    if missing:
        raise UserError(
            f"{storage.full_path(rel)} lacks column(s) {', '.join(missing)}; "
            "it was written by another version of rayrs: delete it to recompute it"
        )
    return table.select(schema.names).cast(schema)
