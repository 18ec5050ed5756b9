"""Numbers the paper only shows as pictures, computed per trial: ``summary.parquet`` and its two charts.

- **Block-structure score** (Figs 2, 3), per model, from its benign cross_layer comparison at its last epoch:
  mean CKA of neighbouring layers (|i − j| = 1) minus mean CKA of layers far apart (|i − j| > L/3, L the
  number of layers). High: bright squares along the diagonal and dark far from it (the block structure of a
  non-robust network); near 0: as similar far away as next door (what robust training does, more so at
  larger ε). Both means are stored too (``cka_neighbours``, ``cka_far``).
- **Convergence epoch** (Fig 6), per model and layer, from its benign cross_epoch rows against the final
  epoch: the first epoch from which CKA to the final epoch stays ≥ a threshold (`CONVERGENCE_THRESHOLD`) at
  every later measured epoch. The final epoch counts as converged (CKA of a representation with itself is 1),
  so a layer that never settles gets the final epoch.

``summary.parquet`` (`SUMMARY_SCHEMA`) is long: one row per statistic per trial (per layer for the
convergence epoch), with the trial's parameters so that it can be grouped without joins.
"""

from __future__ import annotations

import html

import altair as alt
import polars as pl
import pyarrow as pa

from analysis.layers import layer_axis, layer_table, layer_type_filter, with_blocks, with_layer_dropdown
from analysis.load import (
    BENIGN,
    FACET_LABEL,
    METHOD_NAMES,
    NoData,
    chart_data,
    facet_key,
    format_eps,
    threat_model_name,
    trial_info,
)
from rayrs.schema import TRIAL_COLUMNS
from rayrs import storage as layout
from rayrs.storage import Storage

# Where summary.parquet lives, relative to the report folder (`analysis.report.render_report`'s out_dir): the
# report is analysis' to write, the results are not (they may be read-only).
SUMMARY = layout.SUMMARY
CONVERGENCE_THRESHOLD = 0.9
FAR_FRACTION = 1 / 3  # layers farther apart than this fraction of the network count as "far"

STATISTICS = ["block_structure", "cka_neighbours", "cka_far", "convergence_epoch"]
SUMMARY_SCHEMA = pa.schema(
    [
        ("statistic", pa.string()),  # one of STATISTICS
        *TRIAL_COLUMNS.items(),  # experiment, trial, dataset, arch, depth, width, method, threat_model, eps, seed
        ("label", pa.string()),  # the trial as figures name it, e.g. "PGD-AT ε=8/255 (seed 1)"
        ("config", pa.string()),  # the same without the seed: what averaging over seeds groups by
        ("epoch", pa.int32()),  # the cross_layer comparison's epoch; for convergence, the final epoch
        ("layer", pa.int32()),  # convergence_epoch only: the layer's index in network order (else null)
        ("name", pa.string()),  # convergence_epoch only: the layer's module path
        ("type", pa.string()),  # convergence_epoch only: conv / bn / act / pool / linear
        ("block", pa.string()),  # convergence_epoch only: stem / block1 / ... / head
        ("threshold", pa.float64()),  # convergence_epoch only: the CKA it must stay above
        ("value", pa.float64()),  # the statistic (the convergence epoch as a number)
    ]
)


def block_structure(similarity: pl.DataFrame) -> pl.DataFrame:
    """Per model: ``trial, epoch, layers`` (L), ``cka_neighbours``, ``cka_far`` and ``block_structure`` =
    neighbours − far, from benign ``cross_layer`` CKA at each model's last epoch (pairs stored one way are
    counted both ways; a model's CKA with itself is symmetric). Empty when there are no such rows."""
    rows = similarity.filter(kind="cross_layer", measure="cka", probe_a=BENIGN, probe_b=BENIGN).filter(
        (pl.col("model_a") == pl.col("model_b")) & (pl.col("epoch_a") == pl.col("epoch_a").max().over("model_a"))
    )
    pairs = pl.concat(
        [
            rows.select("model_a", "epoch_a", i="layer_a", j="layer_b", value="value"),
            rows.select("model_a", "epoch_a", i="layer_b", j="layer_a", value="value"),
        ]
    ).unique(subset=["model_a", "i", "j"], keep="first", maintain_order=True)
    distance = (pl.col("i") - pl.col("j")).abs()
    size = pl.col("i").n_unique().over("model_a")
    scored = (
        pairs.with_columns(distance=distance, layers=size)
        .group_by("model_a")
        .agg(
            pl.col("epoch_a").first().alias("epoch"),
            pl.col("layers").first(),
            pl.col("value").filter(pl.col("distance") == 1).mean().alias("cka_neighbours"),
            pl.col("value").filter(pl.col("distance") > FAR_FRACTION * pl.col("layers")).mean().alias("cka_far"),
        )
        .with_columns(block_structure=pl.col("cka_neighbours") - pl.col("cka_far"))
        .rename({"model_a": "trial"})
        .sort("trial")
    )
    return scored.drop_nulls("block_structure")


def convergence_epochs(similarity: pl.DataFrame, threshold: float = CONVERGENCE_THRESHOLD) -> pl.DataFrame:
    """Per model and layer: ``trial, layer, name, type, block, final_epoch, convergence_epoch`` from benign
    ``cross_epoch`` CKA between each epoch and the final one (the model's latest ``epoch_b``): the first epoch
    from which CKA stays ≥ ``threshold`` at every later epoch; the final epoch when it never does."""
    rows = similarity.filter(kind="cross_epoch", measure="cka", probe_a=BENIGN, probe_b=BENIGN).filter(
        (pl.col("model_a") == pl.col("model_b")) & (pl.col("layer_a") == pl.col("layer_b"))
    )
    rows = rows.filter(
        (pl.col("epoch_b") == pl.col("epoch_b").max().over("model_a")) & (pl.col("epoch_a") <= pl.col("epoch_b"))
    )
    # A pair against the final epoch may be stored twice (in the Fig 6 rows and in a Fig 25 matrix): count it once.
    rows = rows.unique(subset=["model_a", "layer_a", "epoch_a"], keep="first", maintain_order=True)
    if rows.is_empty():
        return pl.DataFrame(
            schema={
                "trial": pl.String,
                "layer": pl.Int32,
                "name": pl.String,
                "type": pl.String,
                "block": pl.String,
                "final_epoch": pl.Int32,
                "convergence_epoch": pl.Int32,
            }
        )
    rows = with_blocks(rows, sides="a").sort(["model_a", "layer_a", "epoch_a"])
    layer = ["model_a", "layer_a"]
    # stays: 1 at an epoch iff CKA >= threshold there and at every later epoch (a reversed running minimum).
    stays = (pl.col("value") >= threshold).cast(pl.Int8).reverse().cum_min().reverse().over(layer)
    return (
        rows.with_columns(stays=stays)
        .group_by(layer, maintain_order=True)
        .agg(
            pl.col("name_a").first().alias("name"),
            pl.col("type_a").first().alias("type"),
            pl.col("block_a").first().alias("block"),
            pl.col("epoch_b").first().alias("final_epoch"),
            pl.col("epoch_a").filter(pl.col("stays") == 1).min().alias("converged"),
        )
        .with_columns(convergence_epoch=pl.col("converged").fill_null(pl.col("final_epoch")).cast(pl.Int32))
        .rename({"model_a": "trial", "layer_a": "layer"})
        .select("trial", "layer", "name", "type", "block", "final_epoch", "convergence_epoch")
    )


def summarize(
    similarity: pl.DataFrame, metrics: pl.DataFrame, threshold: float = CONVERGENCE_THRESHOLD
) -> pl.DataFrame:
    """Every statistic of this module for every trial that has the rows, as a frame with `SUMMARY_SCHEMA`.

    Trials missing from ``metrics`` keep their statistics, with null parameters and their id as label."""
    blocks = block_structure(similarity)
    long_blocks = blocks.unpivot(
        index=["trial", "epoch"], on=["block_structure", "cka_neighbours", "cka_far"], variable_name="statistic"
    )
    convergence = convergence_epochs(similarity, threshold).select(
        "trial",
        "layer",
        "name",
        "type",
        "block",
        pl.col("final_epoch").alias("epoch"),
        pl.lit("convergence_epoch").alias("statistic"),
        pl.lit(threshold).alias("threshold"),
        pl.col("convergence_epoch").cast(pl.Float64).alias("value"),
    )
    long = pl.concat([long_blocks, convergence], how="diagonal_relaxed")
    if long.is_empty():
        return pl.from_arrow(SUMMARY_SCHEMA.empty_table())
    info = (
        trial_info(metrics).select(*TRIAL_COLUMNS, "label", "config").drop("experiment")
        if not metrics.is_empty()
        else None
    )
    if info is not None:
        long = long.join(info, on="trial", how="left")
    experiment = metrics["experiment"].unique().to_list()
    long = long.with_columns(
        experiment=pl.lit(experiment[0] if len(experiment) == 1 else None, dtype=pl.String),
        label=pl.col("label").fill_null(pl.col("trial")) if "label" in long.columns else pl.col("trial"),
        config=pl.col("config").fill_null(pl.col("trial")) if "config" in long.columns else pl.col("trial"),
    )
    order = {name: i for i, name in enumerate(STATISTICS)}
    long = long.with_columns(pl.col("statistic").replace_strict(order, return_dtype=pl.Int8).alias("_order")).sort(
        ["_order", "trial", "layer"], nulls_last=True
    )
    table = pa.Table.from_pylist(
        long.select([c for c in SUMMARY_SCHEMA.names if c in long.columns]).to_dicts(), schema=SUMMARY_SCHEMA
    )
    return pl.from_arrow(table)


def write_summary(storage: Storage, summary: pl.DataFrame) -> str:
    """Write ``summary`` (`SUMMARY_SCHEMA`) atomically to `SUMMARY` under ``storage``; returns the path."""
    storage.write_table(SUMMARY, summary.to_arrow().cast(SUMMARY_SCHEMA))
    return storage.full_path(SUMMARY)


# -- charts -------------------------------------------------------------------------------------------------
def block_structure_chart(summary: pl.DataFrame) -> alt.FacetChart:
    """Block-structure score against training ε (x, standard at 0), one line per width, one panel per robust
    training method (the standard models appear in each): mean over seeds, error bar = min-max over seeds."""
    scores = summary.filter(statistic="block_structure").drop_nulls("eps")
    if scores.is_empty():
        raise NoData(
            "the block-structure score needs a cross_layer comparison (and metrics.parquet for ε); add `- kind: cross_layer` to `compare:`"
        )
    robust = (pl.col("method") != "standard") & (pl.col("eps") > 0)
    scores = scores.with_columns(
        training=pl.when(robust)
        .then(
            pl.col("method").replace(METHOD_NAMES)
            + pl.col("threat_model").map_elements(_threat_suffix, return_dtype=pl.String)
        )
        .otherwise(pl.lit("standard")),
        eps_label=pl.col("eps").map_elements(format_eps, return_dtype=pl.String),
        width_label=pl.lit("width ") + pl.col("width").cast(pl.String),
    )
    methods = scores.filter(pl.col("training") != "standard")["training"].unique(
        maintain_order=True
    ).sort().to_list() or ["standard"]
    # The standard models are every method's ε = 0 point.
    panels = pl.concat(
        [scores.filter(pl.col("training") != "standard")]
        + [scores.filter(training="standard").with_columns(training=pl.lit(method)) for method in methods]
    )
    eps_order = panels.sort("eps")["eps_label"].unique(maintain_order=True).to_list()
    widths = panels.sort("width")["width_label"].unique(maintain_order=True).to_list()
    data = panels.select(
        facet_key(panels["training"], methods).alias("panel"),
        "trial",
        "label",
        "eps",
        "eps_label",
        "width_label",
        "value",
    )
    base = alt.Chart().encode(
        x=alt.X("eps_label:O", sort=eps_order, title="training ε", axis=alt.Axis(labelAngle=0)),
        color=alt.Color("width_label:N", sort=widths, title="width"),
    )
    line = base.mark_line(point=True).encode(
        y=alt.Y("mean(value):Q", title="block-structure score"),
        tooltip=[
            "width_label:N",
            "eps_label:O",
            alt.Tooltip("mean(value):Q", format=".3f", title="score (mean)"),
            alt.Tooltip("count():Q", title="seeds"),
        ],
    )
    bars = base.mark_rule().encode(y="min(value):Q", y2="max(value):Q")
    return (
        alt.layer(bars, line, data=chart_data(data))
        .properties(width=220, height=180)
        .facet(column=alt.Column("panel:N", title=None, header=alt.Header(labelExpr=FACET_LABEL, labelFontSize=12)))
        .resolve_scale(x="independent")  # each method's own ε values
    )


def convergence_chart(summary: pl.DataFrame) -> alt.TopLevelMixin:
    """Convergence epoch (y) per layer (x, network order, named by block), one line per configuration: mean
    over seeds, error bar = min-max over seeds. The layer-type dropdown filters the layers."""
    epochs = summary.filter(statistic="convergence_epoch")
    if epochs.is_empty():
        raise NoData(
            "the convergence epoch needs a cross_epoch comparison against the final epoch; add `- kind: cross_epoch` to `compare:`"
        )
    threshold = epochs["threshold"].max()
    data = epochs.select(
        "config",
        "trial",
        pl.col("layer").alias("layer_a"),
        pl.col("name").alias("name_a"),
        pl.col("type").alias("type_a"),
        pl.col("block").alias("block_a"),
        "value",
    )
    configs = (
        epochs.sort(["eps", "method", "width", "config"], nulls_last=True)["config"]
        .unique(maintain_order=True)
        .to_list()
    )
    base = alt.Chart().encode(
        x=alt.X("layer_a:Q", axis=layer_axis(layer_table(data, "a"), quantitative=True), scale=alt.Scale(nice=False)),
        color=alt.Color("config:N", title="model", sort=configs, legend=alt.Legend(labelLimit=300)),
    )
    line = base.mark_line(point=alt.OverlayMarkDef(size=14, filled=True)).encode(
        y=alt.Y("mean(value):Q", title=f"epoch CKA to final stays ≥ {threshold:g}"),
        tooltip=[
            "config:N",
            "name_a:N",
            "type_a:N",
            alt.Tooltip("mean(value):Q", format=".1f", title="epoch (mean)"),
            alt.Tooltip("count():Q", title="seeds"),
        ],
    )
    bars = base.mark_rule(opacity=0.5).encode(y="min(value):Q", y2="max(value):Q")
    return with_layer_dropdown(
        alt.layer(bars, line, data=chart_data(data))
        .transform_filter(layer_type_filter("type_a"))
        .properties(width=480, height=200)
    )


# -- the page's first table --------------------------------------------------------------------------------
def block_structure_by_config(summary: pl.DataFrame) -> pl.DataFrame:
    """``config, dataset, eps, width, mean, std, min, max, seeds`` of the block-structure score; standard
    first, then by ε."""
    scores = summary.filter(statistic="block_structure")
    return (
        scores.group_by("config", maintain_order=True)
        .agg(
            pl.col("dataset").first(),
            pl.col("eps").first(),
            pl.col("width").first(),
            pl.col("method").first(),
            pl.col("value").mean().alias("mean"),
            pl.col("value").std().alias("std"),
            pl.col("value").min().alias("min"),
            pl.col("value").max().alias("max"),
            pl.len().alias("seeds"),
        )
        .sort(["dataset", "eps", "method", "width", "config"], nulls_last=True)
        .drop("method")
    )


def convergence_by_block(summary: pl.DataFrame) -> pl.DataFrame:
    """``config, block, mean`` (over the block's layers and seeds) and ``max`` of the convergence epoch."""
    epochs = summary.filter(statistic="convergence_epoch")
    return (
        epochs.group_by("config", "block", maintain_order=True)
        .agg(
            pl.col("value").mean().alias("mean"),
            pl.col("value").max().alias("max"),
            pl.col("layer").min().alias("first"),
            pl.col("eps").first(),
            pl.col("method").first(),
        )
        .sort(["eps", "method", "config", "first"], nulls_last=True)
        .drop("first", "eps", "method")
    )


def summary_html(summary: pl.DataFrame) -> str:
    """The summary's numbers as HTML tables (block-structure score per configuration; convergence epoch per
    configuration x block); an empty string when there are none."""
    parts = []
    scores = block_structure_by_config(summary)
    if not scores.is_empty():
        rows = "".join(
            f"<tr><td>{html.escape(r['dataset'] or '')}</td><td>{html.escape(r['config'])}</td>"
            f"<td>{r['mean']:.3f}</td><td>{_number(r['std'])}</td><td>{r['seeds']}</td></tr>"
            for r in scores.iter_rows(named=True)
        )
        parts.append(
            '<table class="numbers"><caption>Block-structure score: mean CKA of neighbouring layers − mean CKA of '
            "layers more than L/3 apart (benign cross-layer CKA, last epoch)</caption>"
            "<thead><tr><th>dataset</th><th>model</th><th>score</th><th>std over seeds</th><th>seeds</th></tr></thead>"
            f"<tbody>{rows}</tbody></table>"
        )
    epochs = convergence_by_block(summary)
    if not epochs.is_empty():
        threshold = summary.filter(statistic="convergence_epoch")["threshold"].max()
        blocks = epochs.sort("block")["block"].unique(maintain_order=True).to_list()
        blocks = sorted(blocks, key=lambda b: (b != "stem", b == "head", b))
        cells = {(r["config"], r["block"]): r["mean"] for r in epochs.iter_rows(named=True)}
        configs = epochs["config"].unique(maintain_order=True).to_list()
        body = "".join(
            f"<tr><td>{html.escape(c)}</td>"
            + "".join(f"<td>{cells[c, b]:.1f}</td>" if (c, b) in cells else "<td>–</td>" for b in blocks)
            + "</tr>"
            for c in configs
        )
        parts.append(
            f'<table class="numbers"><caption>Convergence epoch: first epoch from which benign CKA to the final epoch '
            f"stays ≥ {threshold:g} (mean over a block's layers and seeds)</caption>"
            "<thead><tr><th>model</th>" + "".join(f"<th>{html.escape(b)}</th>" for b in blocks) + "</tr></thead>"
            f"<tbody>{body}</tbody></table>"
        )
    return "\n".join(parts)


def _threat_suffix(threat_model: str | None) -> str:
    return "" if threat_model in (None, "linf") else f" {threat_model_name(threat_model)}"


def _number(value: float | None) -> str:
    return "–" if value is None else f"{value:.3f}"
