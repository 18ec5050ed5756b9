"""Layer x layer CKA heatmaps (paper Fig 2 a-c, Fig 3): how similar each layer of a network is to every other.

A non-robust network shows a "block structure" (bright squares along the diagonal, dark elsewhere); robust
training washes it out, with long-range similarity between distant layers (Section 4, Figure 2).
"""

from __future__ import annotations

import math

import altair as alt
import polars as pl

from analysis.load import NoData, chart_data, trial_labels

PANEL_SIZE = 150  # pixels; square panels, five to a row, so a sweep's heatmaps compare at a glance
PANELS_PER_ROW = 5
COLOR_SCHEME = "magma"  # perceptually uniform, dark = dissimilar, bright = similar as in the paper's plots
_AXIS_LABELS = 6  # at most this many layer indices are written along an axis; a WRN-28 has ~100 layers

_PAIR_COLUMNS = ["layer_a", "layer_b", "name_a", "name_b", "type_a", "type_b", "value"]


def cross_layer_heatmap(rows: pl.DataFrame, title: str, subtitle: str | None = None) -> alt.Chart:
    """The heatmap of ONE comparison: x = side a's layer index, y = side b's, colour = CKA on a fixed [0, 1] scale.

    ``rows`` has one row per layer pair (columns ``layer_a, layer_b, name_a, name_b, type_a, type_b, value``);
    layer indices are in network order and layer 0 sits at the bottom-left corner, as in the paper.
    """
    if rows.is_empty():
        raise NoData(f"{title}: no layer pairs to draw")
    cells = rows.select(_PAIR_COLUMNS).sort(["layer_a", "layer_b"])
    return (
        alt.Chart(chart_data(cells), title=alt.Title(title, subtitle=subtitle) if subtitle else title)
        .mark_rect()
        .encode(
            x=alt.X("layer_a:O", sort="ascending", title="layer", axis=_layer_axis(cells["layer_a"])),
            # Descending, so that the first layer is at the bottom: the top of an ordinal y axis is its start.
            y=alt.Y("layer_b:O", sort="descending", title="layer", axis=_layer_axis(cells["layer_b"])),
            color=alt.Color(
                "value:Q",
                title="CKA",
                # Fixed domain so panels compare; unbiased CKA can stray just outside [0, 1], hence clamp.
                scale=alt.Scale(domain=[0, 1], scheme=COLOR_SCHEME, clamp=True),
            ),
            tooltip=[
                alt.Tooltip("layer_a:O", title="layer (x)"),
                alt.Tooltip("name_a:N", title="name (x)"),
                alt.Tooltip("type_a:N", title="type (x)"),
                alt.Tooltip("layer_b:O", title="layer (y)"),
                alt.Tooltip("name_b:N", title="name (y)"),
                alt.Tooltip("type_b:N", title="type (y)"),
                alt.Tooltip("value:Q", title="CKA", format=".3f"),
            ],
        )
        .properties(width=PANEL_SIZE, height=PANEL_SIZE)
    )


def cross_layer_panels(similarity: pl.DataFrame, metrics: pl.DataFrame) -> alt.ConcatChart:
    """One `cross_layer_heatmap` per trial, side by side: non-robust first, then by eps, titled by trial label.

    Each trial's panel is its benign cross-layer comparison at the latest epoch that has one. Pairs stored
    only once (i, j) are mirrored to (j, i): CKA of a model with itself is symmetric.
    Raises `NoData` when ``similarity`` has no such rows.
    """
    rows = similarity.filter(pl.col("kind") == "cross_layer")
    if rows.is_empty():
        raise NoData("no cross_layer rows in similarity/")
    rows = rows.filter(
        (pl.col("probe_a") == "benign") & (pl.col("probe_b") == "benign") & (pl.col("model_a") == pl.col("model_b"))
    )
    if rows.is_empty():
        raise NoData("no cross_layer rows on benign probes in similarity/ (only adversarial ones)")
    rows = rows.filter(pl.col("epoch_a") == pl.col("epoch_a").max().over("model_a"))

    panels = []
    for trial, label, epoch in _panel_order(rows, metrics).iter_rows():
        comparison = _symmetric(rows.filter(pl.col("model_a") == trial))
        panels.append(cross_layer_heatmap(comparison, title=label, subtitle=f"epoch {epoch}"))
    return alt.concat(*panels, columns=min(len(panels), PANELS_PER_ROW)).resolve_scale(color="shared")


def _panel_order(rows: pl.DataFrame, metrics: pl.DataFrame) -> pl.DataFrame:
    """``(trial, label, epoch)`` for each trial in ``rows``, in `trial_labels` order.

    A trial missing from ``metrics`` (metrics not built yet) is labelled by its id and placed last.
    """
    trials = rows.group_by("model_a").agg(epoch=pl.col("epoch_a").max()).rename({"model_a": "trial"})
    return (
        trials.join(trial_labels(metrics).select("trial", "label", "order"), on="trial", how="left")
        .with_columns(pl.col("label").fill_null(pl.col("trial")), pl.col("order").fill_null(len(metrics) + 1))
        .sort(["order", "trial"])
        .select("trial", "label", "epoch")
    )


def _symmetric(comparison: pl.DataFrame) -> pl.DataFrame:
    """``comparison``'s layer pairs with each (i, j) also present as (j, i); duplicate pairs kept once."""
    swapped = comparison.select(
        pl.col("layer_b").alias("layer_a"),
        pl.col("layer_a").alias("layer_b"),
        pl.col("name_b").alias("name_a"),
        pl.col("name_a").alias("name_b"),
        pl.col("type_b").alias("type_a"),
        pl.col("type_a").alias("type_b"),
        "value",
    )
    both = pl.concat([comparison.select(_PAIR_COLUMNS), swapped])
    return both.unique(subset=["layer_a", "layer_b"], keep="first", maintain_order=True)


def _layer_axis(layers: pl.Series) -> alt.Axis:
    """An axis that names at most `_AXIS_LABELS` evenly spaced layer indices (all of them would overlap)."""
    indices = layers.unique().sort().to_list()
    step = max(1, math.ceil(len(indices) / _AXIS_LABELS))
    return alt.Axis(values=indices[::step], labelAngle=0)
