"""Read a results folder's Parquet tables into Polars, and name its trials the way a figure shows them.

Everything here reads through `rayrs.storage.Storage`, so the same call works on a local folder and on an
object store. An experiment with nothing written yet gives empty frames that still carry the schema's
columns, so a figure function can say "no rows" instead of failing on a missing column.

Names: a *trial* is one training run (one seed); a *configuration* is what a figure averages over seeds
(every trial parameter but the seed), labelled like "PGD-AT ε=8/255" by `trial_info`.
"""

from __future__ import annotations

from typing import Any

import altair as alt
import polars as pl
import pyarrow as pa
from altair.utils.schemapi import debug_mode

from rayrs.catalog import similarity_files
from rayrs.errors import UserError
from rayrs.schema import (
    JACKKNIFE_FIELD,
    FREEZING_COLUMNS,
    METRICS_SCHEMA,
    SECONDS_FIELD,
    SIMILARITY_SCHEMA,
    STD_ERROR_FIELD,
    OPTIONAL_EPOCH_COLUMNS,
    OPTIONAL_TRIAL_COLUMNS,
    TRIAL_COLUMNS,
    check_job_rows,
)
from rayrs.storage import METRICS, MODELS, SWEEP_CONFIG, DamagedFile, Storage, way_out

# Display names of training methods and threat models, in the paper's words; unknown ones are shown as written.
METHOD_NAMES = {"standard": "standard", "pgd": "PGD-AT", "pgd_at": "PGD-AT", "trades": "TRADES"}
THREAT_MODEL_NAMES = {
    "linf": "ℓ∞",
    "l2": "ℓ2",
    "l1": "ℓ1",
    "jpeg": "JPEG",
    "gabor": "Gabor",
    "snow": "Snow",
    # rayrs's variants of the paper's attacks (rayrs.attacks): named so that a figure never shows them as the paper's.
    "jpeg_unblurred": "JPEG (unblurred)",
    "gabor_sparse": "Gabor (sparse grid)",
    "snow_projected": "Snow (projected)",
}

BENIGN = "benign"  # the probe of clean test images; every other probe id is adversarial (rayrs.schema)

# Columns that similarity files may carry beyond the schema; kept (null where a file lacks them) when present.
# ``seconds``: the compute time of the comparison (`rayrs.schema.SECONDS_FIELD`), for App. B.1's cost.
# ``std_error`` / ``jackknife``: each value's uncertainty (`rayrs.schema.STD_ERROR_FIELD`); older files lack them.
OPTIONAL_SIMILARITY_COLUMNS = {field.name: field.type for field in (SECONDS_FIELD, STD_ERROR_FIELD, JACKKNIFE_FIELD)}

# Trial parameters that may tell apart two trials with the same method and eps, in the order they are named.
_DISTINGUISHING = ("dataset", "arch", "depth", "width", "threat_model", "freeze", "seed")


class NoData(ValueError):
    """A figure has no rows to draw; the message says which rows are missing, for a report's "skipped" list."""


def read_metrics(storage: Storage, models: bool = False) -> pl.DataFrame:
    """``metrics.parquet`` as a frame with `METRICS_SCHEMA`'s columns: one row per trial x epoch (empty if absent).

    Files written before rayrs counted the evaluated examples get null ``train_examples`` / ``test_examples``
    (`rayrs.schema.OPTIONAL_EPOCH_COLUMNS`): their accuracies are shown without an interval. A file of a sweep
    with CKA-guided freezing keeps `rayrs.schema.FREEZING_COLUMNS` after those (what Fig 6 marks).
    ``models``: add a row per model entry of the sweep (`read_models`), so that `attach_trials` names and
    labels them as it does trials (for comparisons; accuracies over training are of trials alone)."""
    if not storage.exists(METRICS):
        metrics = _empty(METRICS_SCHEMA)
    else:
        table = storage.read_table(METRICS)
        conformed = _conform(storage, METRICS, METRICS_SCHEMA, table)
        if "frozen_blocks" in table.column_names:  # CKA-guided freezing's columns, kept (null where an older file lacks one)
            for name, kind in FREEZING_COLUMNS.items():
                present = name in table.column_names
                conformed = conformed.append_column(name, table.column(name).cast(kind) if present else pa.nulls(table.num_rows, kind))
        metrics = pl.from_arrow(conformed)
        _check_experiment(storage, metrics)
    if models:
        given = read_models(storage)
        if given.height:
            metrics = pl.concat([metrics, given], how="diagonal")
    return metrics


def read_models(storage: Storage) -> pl.DataFrame:
    """One row per model entry of the sweep (a sweep file's ``models:``, recorded in ``models.json`` by
    `rayrs.entries`), with `METRICS_SCHEMA`'s columns: its parameters as a trial's (dataset, arch, depth and
    width for rayrs's own architectures, method, threat model, eps), ``epoch`` its last weights epoch, and
    every measured column null: rayrs neither trained nor evaluated it. Empty when the sweep has none."""
    from pydantic import ValidationError

    from rayrs.config import ModelEntrySpec
    from rayrs.models import MODELS as ARCHITECTURES

    if not storage.exists(MODELS):
        return _empty(METRICS_SCHEMA)
    try:
        specs = [ModelEntrySpec.model_validate(item) for item in storage.read_json(MODELS)]
    except (ValidationError, TypeError):
        raise DamagedFile(f"{storage.full_path(MODELS)} is not a list of model entries; {way_out(MODELS)}") from None
    rows = []
    for spec in specs:
        config, info = spec.config, ARCHITECTURES.get(spec.config.model.arch)
        rows.append({
            "experiment": spec.experiment, "trial": spec.name, "dataset": config.data.dataset,
            "arch": config.model.arch,
            "depth": config.model.depth if config.model.depth is not None or info is None else info.default_depth,
            "width": config.model.width if config.model.width is not None or info is None else info.default_width,
            "method": config.train.method, "threat_model": config.train.threat_model, "eps": config.train.eps,
            "epoch": max(spec.weights),
        })
    return pl.from_arrow(pa.Table.from_pylist(rows, schema=METRICS_SCHEMA))


def _check_experiment(storage: Storage, metrics: pl.DataFrame) -> None:
    """Refuse a ``metrics.parquet`` of another experiment (copied over this one's): its rows name their
    experiment, and ``sweep.json``, where there is a readable one, names this one."""
    try:
        name = storage.read_json(SWEEP_CONFIG)["name"]
    except (UserError, KeyError, TypeError):  # none, or damaged: the sweep's to repair, not the report's
        return
    others = sorted(set(metrics["experiment"].drop_nulls().to_list()) - {name})
    if others:
        raise DamagedFile(
            f"{storage.full_path(METRICS)} holds rows of experiment {others[0]!r}, not of {name!r} "
            f"({storage.full_path(SWEEP_CONFIG)}); {way_out(METRICS)}"
        )


def read_similarity(storage: Storage) -> pl.DataFrame:
    """The experiment's ``similarity/<kind>/<job>.parquet`` files concatenated, with `SIMILARITY_SCHEMA`'s columns.

    Only the files of jobs that ``sweep.json`` plans are read (`rayrs.catalog.similarity_files`): an older run's
    file left beside them (an old job id, an old measure definition) never enters a figure. One row per layer pair
    per comparison; empty (with the columns) when no comparison has finished.
    """
    files = similarity_files(storage).planned
    if not files:
        return _empty(SIMILARITY_SCHEMA)
    tables = [storage.read_table(rel) for rel in files]
    extra = [name for name in OPTIONAL_SIMILARITY_COLUMNS if any(name in t.column_names for t in tables)]
    schema = pa.schema(list(SIMILARITY_SCHEMA) + [pa.field(name, OPTIONAL_SIMILARITY_COLUMNS[name]) for name in extra])
    tables = [_conform(storage, rel, schema, table) for rel, table in zip(files, tables)]
    for rel, table in zip(files, tables):
        check_job_rows(storage, rel, table)  # a file copied or swapped from another job is refused, never drawn
    return pl.from_arrow(pa.concat_tables(tables))


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


def trial_info(metrics: pl.DataFrame) -> pl.DataFrame:
    """One row per trial: its parameters (`rayrs.schema.TRIAL_COLUMNS`), ``robust``, ``label`` and ``order``
    (as `trial_labels`), ``training`` (method and eps alone: "standard", "PGD-AT ε=8/255") and its
    configuration: ``config``, the label without the seed (trials differing only by seed share it, e.g.
    "PGD-AT ε=8/255 (width 2)"), and ``config_order`` (0, 1, ... in label order).
    """
    labels = trial_labels(metrics)
    trials = metrics.unique(subset="trial", keep="first", maintain_order=True).select(list(TRIAL_COLUMNS))
    info = labels.join(trials.drop("eps"), on="trial", how="left")
    configs: dict[str, str] = {}
    sharing: dict[str, list[dict]] = {}
    for row in info.to_dicts():
        sharing.setdefault(_base_label(row), []).append(row)
    for base, same in sharing.items():
        differing = [c for c in _DISTINGUISHING if c != "seed" and len({r[c] for r in same}) > 1]
        for row in same:
            named = ", ".join(_setting(c, row[c]) for c in differing)
            configs[row["trial"]] = f"{base} ({named})" if named else base
    training = {row["trial"]: _base_label(row) for row in info.to_dicts()}
    info = info.with_columns(
        pl.col("trial").replace_strict(configs, return_dtype=pl.String).alias("config"),
        pl.col("trial").replace_strict(training, return_dtype=pl.String).alias("training"),
    )
    first = info.group_by("config").agg(pl.col("order").min().alias("first"))
    ranked = first.sort("first").with_columns(pl.int_range(pl.len(), dtype=pl.Int64).alias("config_order"))
    return info.join(ranked.select("config", "config_order"), on="config").sort("order")


def attach_trials(rows: pl.DataFrame, metrics: pl.DataFrame, sides: str = "ab") -> pl.DataFrame:
    """``rows`` (similarity rows) with each side's trial: ``label_a``, ``config_a``, ``robust_a``, ``eps_a``, ...

    For each side in ``sides`` every `trial_info` column is added with that side's suffix. A trial missing from
    ``metrics`` (not built yet) is labelled by its id, with null parameters, and sorted last.
    """
    info = trial_info(metrics)
    for side in sides:
        renamed = info.rename({c: f"{c}_{side}" for c in info.columns if c != "trial"}).rename(
            {"trial": f"model_{side}"}
        )
        rows = rows.join(renamed, on=f"model_{side}", how="left").with_columns(
            pl.col(f"label_{side}").fill_null(pl.col(f"model_{side}")),
            pl.col(f"config_{side}").fill_null(pl.col(f"model_{side}")),
            pl.col(f"order_{side}").fill_null(info.height),
            pl.col(f"config_order_{side}").fill_null(info.height),
        )
    return rows


def last_epoch(rows: pl.DataFrame, model: str = "model_a", epoch: str = "epoch_a") -> pl.DataFrame:
    """The rows at each model's latest ``epoch`` (a figure of trained networks shows them fully trained)."""
    return rows.filter(pl.col(epoch) == pl.col(epoch).max().over(model))


def probe_kind(column: str) -> pl.Expr:
    """``"benign"`` or ``"adversarial"`` for a probe id column (any probe but `BENIGN` is adversarial)."""
    return pl.when(pl.col(column) == BENIGN).then(pl.lit(BENIGN)).otherwise(pl.lit("adversarial"))


def threat_model_name(threat_model: str | None) -> str:
    """The paper's name of a threat model: "ℓ∞" for linf, "Snow" for snow; unknown names as written."""
    return THREAT_MODEL_NAMES.get(threat_model or "", threat_model or "?")


# Facet panels are keyed "<position>|<label>" (see `facet_key`); a header shows the label with this expression.
FACET_LABEL = "substring(datum.label, 4)"


def facet_key(labels: pl.Series, order: list[str] | None) -> pl.Series:
    """``labels`` as facet keys that sort as text: "<position in ``order``>|<label>" (others last, by name).

    Vega-Lite misplaces the panels of a grid with missing cells when its facets are sorted any other way than
    by their values, so a figure sorts its panels through these keys and shows the label (`FACET_LABEL`).
    """
    order = list(order or [])
    order += sorted(set(labels.drop_nulls().to_list()) - set(order))
    position = {label: f"{i:03d}|{label}" for i, label in enumerate(order)}
    return labels.replace_strict(position, return_dtype=pl.String)


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
    WRN-28 layer x layer heatmap alone has more cells than that. Built without validation: checking every
    record against the Vega-Lite schema would take seconds per figure (the whole spec is validated anyway).
    """
    with debug_mode(False):
        return alt.InlineData(values=frame.to_dicts())


def _base_label(trial: dict) -> str:
    """How the paper names a training: "standard", "PGD-AT ε=8/255"; a threat model other than ℓ∞ is named."""
    if not trial["robust"]:
        return "standard"
    method = METHOD_NAMES.get(trial["method"], trial["method"])
    threat = "" if trial.get("threat_model") in (None, "linf") else f" {threat_model_name(trial['threat_model'])}"
    return f"{method}{threat} ε={format_eps(trial['eps'])}"


def _disambiguate(trial: dict, same_label: list[dict], label: str) -> str:
    """``label``, followed by the parameters in which ``trial`` differs from others sharing that label."""
    if len(same_label) == 1:
        return label
    differing = [c for c in _DISTINGUISHING if len({r[c] for r in same_label}) > 1]
    if not differing:
        return f"{label} ({trial['trial']})"
    named = ", ".join(_setting(column, trial[column]) for column in differing)
    return f"{label} ({named})"


def _setting(column: str, value: Any) -> str:
    """One parameter of a trial in words, e.g. "width 2", "frozen block1 from epoch 20", "unfrozen"."""
    if column == "freeze":
        return f"frozen {value}" if value is not None else "unfrozen"
    return f"{column.replace('_', ' ')} {value}"


def _empty(schema: pa.Schema) -> pl.DataFrame:
    return pl.from_arrow(schema.empty_table())


def _conform(storage: Storage, rel: str, schema: pa.Schema, table: pa.Table | None = None) -> pa.Table:
    """The table at ``rel``, reduced to ``schema``'s columns and types; a missing column is the user's to fix.

    Optional columns (`OPTIONAL_SIMILARITY_COLUMNS`, `OPTIONAL_EPOCH_COLUMNS`, `OPTIONAL_TRIAL_COLUMNS`) that the file
    lacks are added as nulls.
    """
    table = storage.read_table(rel) if table is None else table
    for name in (*OPTIONAL_SIMILARITY_COLUMNS, *OPTIONAL_EPOCH_COLUMNS, *OPTIONAL_TRIAL_COLUMNS):
        if name in schema.names and name not in table.column_names:
            table = table.append_column(name, pa.nulls(table.num_rows, schema.field(name).type))
    missing = [name for name in schema.names if name not in table.column_names]
    if missing:
        raise UserError(
            f"{storage.full_path(rel)} lacks column(s) {', '.join(missing)}; "
            "it was written by another version of rayrs: delete it to recompute it"
        )
    return table.select(schema.names).cast(schema)
