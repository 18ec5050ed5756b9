"""Adversarial representations (paper Section 4): benign vs adversarial per layer (Fig 4), transfer (Fig 5).

Fig 4: in a non-robust network adversarial representations match benign ones in the first third of the
layers, then diverge to near zero CKA by the output; in a robust network they stay alike until the last
few layers. Fig 5a: adversarial examples transfer between models trained alike (low target accuracy) and
hardly at all from a robust source to a non-robust target; 5b-d: CKA between source and target on the
source's adversarial examples is high early when both are trained alike, and drops right after the first
layer from a robust to a non-robust model.
"""

from __future__ import annotations

import altair as alt
import polars as pl

from analysis.layers import layer_axis, layer_table, layer_type_filter, with_layer_dropdown
from analysis.load import BENIGN, FACET_LABEL, NoData, attach_trials, chart_data, facet_key, last_epoch
from analysis.uncertainty import over_seeds_frame, with_bounds

LINE_WIDTH, LINE_HEIGHT = 320, 200
ACCURACY_SCHEME = "viridis"
TRANSFER_CATEGORIES = ["non-robust → non-robust", "non-robust → robust", "robust → robust", "robust → non-robust"]


def fig4_benign_vs_adversarial(similarity: pl.DataFrame, metrics: pl.DataFrame) -> alt.TopLevelMixin:
    """Fig 4: CKA between each layer's benign and adversarial representation (the diagonal layer_a ==
    layer_b of ``benign_vs_adversarial`` rows), x = layer in network order, one line per model at its last
    epoch, in its band (each value's jackknife 95% interval); colour = trial, dash = non-robust / robust; one
    panel per dataset."""
    rows = similarity.filter(kind="benign_vs_adversarial", measure="cka")
    if rows.is_empty():
        raise NoData(
            "Fig 4 needs a benign_vs_adversarial comparison; add `- kind: benign_vs_adversarial` to `compare:`"
        )
    rows = rows.filter(
        (pl.col("layer_a") == pl.col("layer_b")) & (pl.col("probe_a") == BENIGN) & (pl.col("probe_b") != BENIGN)
    )
    if rows.is_empty():
        raise NoData(
            "Fig 4 needs benign_vs_adversarial rows with probe_a benign and probe_b adversarial, at equal layers"
        )
    rows = attach_trials(with_bounds(last_epoch(rows)), metrics, sides="a")
    probes_per_trial = pl.col("probe_b").n_unique().over("model_a")
    lines = rows.with_columns(
        line=pl.when(probes_per_trial > 1)
        .then(pl.col("label_a") + " · " + pl.col("probe_b"))
        .otherwise(pl.col("label_a")),
        training=pl.when(pl.col("robust_a")).then(pl.lit("robust")).otherwise(pl.lit("non-robust")),
        panel=facet_key(rows["dataset_a"].fill_null("?"), None),
    ).sort(["order_a", "probe_b", "layer_a"])
    data = lines.select("panel", "line", "training", "layer_a", "name_a", "type_a", "value", "lower", "upper", "epoch_a")
    return _cka_by_layer(
        data,
        alt.Color(
            "line:N",
            title="model",
            sort=lines["line"].unique(maintain_order=True).to_list(),
            legend=alt.Legend(labelLimit=300, symbolOpacity=1),
        ),
        "CKA(benign, adversarial)",
        alt.Tooltip("value:Q", format=".3f", title="CKA"),
        ["line:N"],
        ["epoch_a:Q"],
        width=LINE_WIDTH,
        points=False,  # a point overlay would blank the dash legend's symbols
        strokeDash=alt.StrokeDash(
            "training:N",
            title=None,
            scale=alt.Scale(domain=["non-robust", "robust"], range=[[6, 3], [1, 0]]),
            legend=alt.Legend(symbolType="stroke", symbolStrokeColor="#555"),
        ),
    )


def fig5a_transferability(similarity: pl.DataFrame, metrics: pl.DataFrame) -> alt.LayerChart:
    """Fig 5a: the transferability matrix. y = source model, x = target model (configurations, averaged over
    seeds), value = the target's accuracy on the source's adversarial examples (``transfer_accuracy`` rows;
    the diagonal is the white-box attack), written in each cell; the hover shows its 95% interval (Wilson over
    the probe's images; over the pairs of seeds where there are several). Low accuracy = high transferability."""
    rows = similarity.filter(kind="transfer", measure="transfer_accuracy")
    if rows.is_empty():
        raise NoData(
            "Fig 5a needs a transfer comparison (its transfer_accuracy rows); add `- kind: transfer` to `compare:`"
        )
    rows = attach_trials(with_bounds(_last_transfer(rows)), metrics)
    cells = (
        over_seeds_frame(rows, ["config_a", "config_b"], bounds=(0.0, 1.0), first=["config_order_a", "config_order_b"])
        .rename({"seeds": "pairs"})
        .sort(["config_order_a", "config_order_b"])
    )
    order = (
        pl.concat([cells.select(c="config_a", o="config_order_a"), cells.select(c="config_b", o="config_order_b")])
        .unique()
        .sort(["o", "c"])["c"]
        .to_list()
    )
    base = alt.Chart(chart_data(cells.select("config_a", "config_b", "value", "lower", "upper", "pairs"))).encode(
        x=alt.X("config_b:N", sort=order, title="target model", axis=alt.Axis(labelAngle=-30, labelLimit=200)),
        y=alt.Y("config_a:N", sort=order, title="source model (adversarial examples)", axis=alt.Axis(labelLimit=200)),
        tooltip=[
            alt.Tooltip("config_a:N", title="source"),
            alt.Tooltip("config_b:N", title="target"),
            alt.Tooltip("value:Q", title="target accuracy", format=".1%"),
            alt.Tooltip("lower:Q", title="95% interval from", format=".1%"),
            alt.Tooltip("upper:Q", title="95% interval to", format=".1%"),
            "pairs:Q",
        ],
    )
    rects = base.mark_rect().encode(
        color=alt.Color("value:Q", title="target accuracy", scale=alt.Scale(domain=[0, 1], scheme=ACCURACY_SCHEME))
    )
    text = base.mark_text(fontSize=12).encode(
        text=alt.Text("value:Q", format=".0%"),
        color=alt.condition("datum.value > 0.6", alt.value("black"), alt.value("white")),
    )
    size = max(160, 60 * len(order))
    return alt.layer(rects, text).properties(width=size, height=size)


def fig5bcd_transfer_cka(similarity: pl.DataFrame, metrics: pl.DataFrame) -> alt.TopLevelMixin:
    """Fig 5 (b-d): per layer (x, network order), CKA between a source and a different target model, both fed
    the source's adversarial examples (``transfer`` rows, cka, layer_a == layer_b); one panel per kind of
    transfer (non-robust → robust, robust → robust, ...), one line per pair of configurations (mean over
    seeds) in its band (the 95% interval: the jackknife's for one pair of trials, over seeds for several)."""
    rows = similarity.filter(kind="transfer", measure="cka")
    if rows.is_empty():
        raise NoData("Fig 5b-d needs a transfer comparison; add `- kind: transfer` to `compare:`")
    rows = rows.filter(
        (pl.col("model_a") != pl.col("model_b")) & (pl.col("layer_a") == pl.col("layer_b")) & (pl.col("layer_a") >= 0)
    )
    if rows.is_empty():
        raise NoData("Fig 5b-d needs transfer comparisons between two different models of the same depth")
    rows = attach_trials(with_bounds(_last_transfer(rows)), metrics).filter(
        pl.col("robust_a").is_not_null() & pl.col("robust_b").is_not_null()
    )
    if rows.is_empty():
        raise NoData(
            "Fig 5b-d needs the transfer comparisons' trials in metrics.parquet (to tell robust from non-robust)"
        )
    robust = {True: "robust", False: "non-robust"}
    rows = rows.with_columns(
        category=pl.col("robust_a").replace_strict(robust, return_dtype=pl.String)
        + " → "
        + pl.col("robust_b").replace_strict(robust, return_dtype=pl.String),
        pair=pl.col("config_a") + " → " + pl.col("config_b"),
    ).sort(["config_order_a", "config_order_b", "layer_a"])
    cells = over_seeds_frame(rows, ["category", "pair", "layer_a"], bounds=(-1.0, 1.0), first=["name_a", "type_a"])
    data = cells.select(
        facet_key(cells["category"], TRANSFER_CATEGORIES).alias("panel"),
        "pair",
        "layer_a",
        "name_a",
        "type_a",
        "value",
        "lower",
        "upper",
        "seeds",
    )
    return _cka_by_layer(
        data,
        alt.Color(
            "pair:N",
            title="source → target",
            sort=rows["pair"].unique(maintain_order=True).to_list(),
            legend=alt.Legend(labelLimit=400, symbolOpacity=1),
        ),
        "CKA(source, target)",
        alt.Tooltip("value:Q", format=".3f", title="CKA (mean over seeds)"),
        ["pair:N"],
        [alt.Tooltip("seeds:Q", title="pairs of trials")],
        width=LINE_WIDTH * 3 // 4,
        points=True,
    )


def _cka_by_layer(
    data: pl.DataFrame,
    color: alt.Color,
    y_title: str,
    value_tooltip: alt.Tooltip,
    tooltip_head: list,
    tooltip_tail: list,
    *,
    width: int,
    points: bool,
    **line_encoding,
) -> alt.TopLevelMixin:
    """Fig 4's and Fig 5b-d's shared form: one panel per ``panel`` of ``data``, x = ``layer_a`` in network order,
    one line per ``color`` value with its 95% band (``lower`` to ``upper``), y = CKA on [0, 1]; the layer-type
    dropdown filters the layers shown. ``line_encoding`` adds channels to the line (Fig 4's dash)."""
    base = alt.Chart().encode(
        x=alt.X("layer_a:Q", axis=layer_axis(layer_table(data, "a"), quantitative=True), scale=alt.Scale(nice=False)),
        color=color,
    )
    y_scale = alt.Scale(domain=[0, 1], clamp=True)
    band = base.mark_area(opacity=0.15).encode(y=alt.Y("lower:Q", title=y_title, scale=y_scale), y2="upper:Q")
    mark = base.mark_line(point=alt.OverlayMarkDef(size=14, filled=True)) if points else base.mark_line()
    line = mark.encode(
        y=alt.Y("value:Q", title=y_title, scale=y_scale),
        **line_encoding,
        tooltip=[
            *tooltip_head,
            "name_a:N",
            "type_a:N",
            value_tooltip,
            alt.Tooltip("lower:Q", format=".3f", title="95% interval from"),
            alt.Tooltip("upper:Q", format=".3f", title="95% interval to"),
            *tooltip_tail,
        ],
    )
    chart = (
        alt.layer(band, line, data=chart_data(data))
        .transform_filter(layer_type_filter("type_a"))
        .properties(width=width, height=LINE_HEIGHT)
    )
    return with_layer_dropdown(
        chart.facet(column=alt.Column("panel:N", title=None, header=alt.Header(labelExpr=FACET_LABEL)))
    )


def _last_transfer(rows: pl.DataFrame) -> pl.DataFrame:
    """Each (source, target) pair's rows at the latest epochs compared."""
    rows = rows.filter(pl.col("epoch_a") == pl.col("epoch_a").max().over(["model_a", "model_b"]))
    return rows.filter(pl.col("epoch_b") == pl.col("epoch_b").max().over(["model_a", "model_b"]))
