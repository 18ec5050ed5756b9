"""How representations evolve over training (paper Section 5): CKA to the final epoch (Fig 6), epoch x epoch
CKA of chosen layers (Fig 25).

Fig 6: the first two blocks' benign representations (each block's output: its last residual block's, after
the addition) are close to their final state within a few epochs, for standard, PGD-AT and TRADES training
alike; later layers converge late and, without early stopping, move away again while the adversarial
validation loss rises (robust overfitting). Fig 25: later layers are similar
off the diagonal only early and at the end of training; adversarial representations more clearly so.
"""

from __future__ import annotations

from collections.abc import Sequence

import altair as alt
import polars as pl

from analysis.layers import block_of, layer_table
from analysis.load import BENIGN, FACET_LABEL, NoData, attach_trials, chart_data, facet_key, probe_kind
from analysis.uncertainty import over_seeds_frame, with_bounds

PANEL_WIDTH, CKA_HEIGHT, LOSS_HEIGHT = 220, 180, 110
EPOCH_PANEL = 130
LOSSES = {  # curve -> (split, evaluation, metrics.parquet column)
    "train benign": ("train", "benign", "train_clean_loss"),
    "train adversarial": ("train", "adversarial", "train_robust_loss"),
    "validation benign": ("validation", "benign", "test_clean_loss"),
    "validation adversarial": ("validation", "adversarial", "test_robust_loss"),
}
MAX_FIG25_LAYERS = 8  # as many as a cross_epoch comparison computes the matrix for (rayrs.config)


def fig6_convergence(similarity: pl.DataFrame, metrics: pl.DataFrame) -> alt.VConcatChart:
    """Fig 6: per block, CKA between each epoch's benign block output and the final epoch's (``cross_epoch``
    rows with ``epoch_b`` = the model's final epoch), one panel per configuration (standard / PGD-AT /
    TRADES ...); the line is the mean over seeds, the band its 95% interval (one seed: the value's jackknife
    interval; several: `analysis.uncertainty.over_seeds_frame`, which covers the seeds' spread). Beneath, on
    the same epoch axis, the train and validation losses (benign and adversarial), mean over seeds.

    A block is a stage of the network (WRN ``block1``..``block3``, ResNet ``layer1``..``layer4``) and its output
    that of the stage's last residual block (the ``block`` layer ``block1.3`` of a WRN-28), the tensor the
    paper's code records for ``block1``: "the output of the first two blocks" (§5).

    Trials with CKA-guided freezing (rayrs's, the paper's §7 proposal) get a dashed rule in the stage's colour at
    the epoch each residual block trained frozen from (`freeze_marks`), one per trial and frozen block.
    """
    rows = _cross_epoch(similarity, "Fig 6").filter(probe_a=BENIGN, probe_b=BENIGN)
    if rows.is_empty():
        raise NoData("Fig 6 needs cross_epoch rows on benign probes; add `- kind: cross_epoch` to `compare:`")
    rows = rows.filter(pl.col("epoch_b") == pl.col("epoch_b").max().over("model_a"))
    rows = stage_outputs(rows)
    if rows.is_empty():
        raise NoData(
            "Fig 6 plots each block's output (layers of type `block`), which the cross_epoch rows lack; keep "
            "`block` in the comparison's `layer_types` (its default) and rerun it"
        )
    rows = attach_trials(with_bounds(rows), metrics, sides="a")
    order = rows.sort("config_order_a")["config_a"].unique(maintain_order=True).to_list()
    blocks = rows.sort("layer_a")["block_a"].unique(maintain_order=True).to_list()
    cells = over_seeds_frame(
        rows.sort("config_order_a", "layer_a", "epoch_a"), ["config_a", "block_a", "epoch_a"], bounds=(-1.0, 1.0),
        first=["name_a"],
    )
    cka = cells.select(
        facet_key(cells["config_a"], order).alias("panel"),
        pl.col("epoch_a").alias("epoch"),
        "name_a",
        "block_a",
        pl.col("value").alias("cka"),
        "lower",
        "upper",
        "seeds",
    )
    trials = rows.select(pl.col("model_a").alias("trial"), pl.col("config_a").alias("config")).unique()
    marks = freeze_marks(metrics, trials, order)
    epoch_axis = alt.X("epoch:Q", title="epoch", axis=alt.Axis(format="d", tickMinStep=1), scale=alt.Scale(nice=False))
    base = alt.Chart().encode(
        x=epoch_axis,
        color=alt.Color("block_a:N", title="block output", sort=blocks, legend=alt.Legend(symbolOpacity=1)),
    )
    curves = alt.datum.mark == "curve"  # the facet needs one data set: curves and freeze marks share it
    band = base.transform_filter(curves).mark_area(opacity=0.2).encode(
        y=alt.Y("lower:Q", title="CKA to final epoch", scale=alt.Scale(domain=[0, 1], clamp=True)),
        y2="upper:Q",
    )
    line = base.transform_filter(curves).mark_line(point=alt.OverlayMarkDef(size=12, filled=True)).encode(
        y=alt.Y("cka:Q", title="CKA to final epoch", scale=alt.Scale(domain=[0, 1], clamp=True)),
        tooltip=[
            "block_a:N",
            alt.Tooltip("name_a:N", title="layer"),
            "epoch:Q",
            alt.Tooltip("cka:Q", format=".3f", title="CKA (mean over seeds)"),
            alt.Tooltip("lower:Q", format=".3f", title="95% interval from"),
            alt.Tooltip("upper:Q", format=".3f", title="95% interval to"),
            alt.Tooltip("seeds:Q", title="seeds"),
        ],
    )
    layers = [band, line]
    if not marks.is_empty():
        # CKA-guided freezing: a dashed rule, in the stage's colour, at the epoch each residual block trained frozen from.
        layers.append(base.transform_filter(alt.datum.mark == "freeze").mark_rule(strokeDash=[4, 3], opacity=0.8).encode(
            tooltip=["trial:N", alt.Tooltip("frozen_block:N", title="residual block"),
                     alt.Tooltip("epoch:Q", title="trained frozen from epoch")]))
    data = cka.with_columns(mark=pl.lit("curve"))
    if not marks.is_empty():
        data = pl.concat([data, marks.with_columns(mark=pl.lit("freeze"))], how="diagonal_relaxed")
    top = (
        alt.layer(*layers, data=chart_data(data))
        .properties(width=PANEL_WIDTH, height=CKA_HEIGHT)
        .facet(column=alt.Column("panel:N", title=None, header=alt.Header(labelExpr=FACET_LABEL, labelFontSize=12)))
    )
    losses = _loss_curves(metrics, trials, order)
    if losses.is_empty():
        return alt.vconcat(top)
    bottom = (
        alt.Chart(chart_data(losses))
        .mark_line()
        .encode(
            x=epoch_axis,
            y=alt.Y("mean(loss):Q", title="loss"),
            color=alt.Color(
                "evaluation:N",
                title="loss",
                scale=alt.Scale(domain=["benign", "adversarial"], range=["#4c78a8", "#e45756"]),
            ),
            strokeDash=alt.StrokeDash(
                "split:N",
                title=None,
                scale=alt.Scale(domain=["train", "validation"], range=[[1, 0], [6, 3]]),
                legend=alt.Legend(symbolType="stroke", symbolStrokeColor="#555"),
            ),
            tooltip=["curve:N", "epoch:Q", alt.Tooltip("mean(loss):Q", format=".3f")],
        )
        .properties(width=PANEL_WIDTH, height=LOSS_HEIGHT)
        .facet(column=alt.Column("panel:N", title=None, header=alt.Header(labels=False)))
    )
    return alt.vconcat(top, bottom, spacing=6).resolve_scale(x="shared", color="independent", strokeDash="independent")


def freeze_marks(metrics: pl.DataFrame, trials: pl.DataFrame, order: list[str]) -> pl.DataFrame:
    """Where CKA-guided freezing froze each residual block of ``trials`` (``trial, config``): one row per frozen
    block, ``panel`` (Fig 6's), ``trial``, ``frozen_block`` ("block1.0"), its stage ``block_a`` ("block1") and
    ``epoch``, the first epoch it trained frozen (`rayrs.schema.FREEZING_COLUMNS`, the trial's last row).
    Empty when no trial froze a block."""
    empty = pl.DataFrame(schema={"panel": pl.String, "trial": pl.String, "frozen_block": pl.String,
                                 "block_a": pl.String, "epoch": pl.Int64})
    if "block_frozen_from" not in metrics.columns:
        return empty
    last = metrics.filter(pl.col("block_frozen_from").is_not_null()).join(trials, on="trial")
    last = last.filter(pl.col("epoch") == pl.col("epoch").max().over("trial"))
    frozen = (
        last.select("trial", "config", pl.col("freeze_blocks").alias("frozen_block"), pl.col("block_frozen_from").alias("epoch"))
        .explode("frozen_block", "epoch")
        .drop_nulls("epoch")
    )
    if frozen.is_empty():
        return empty
    names = frozen["frozen_block"].unique(maintain_order=True).to_list()
    stages = dict(zip(names, block_of(names)))
    return frozen.select(
        facet_key(frozen["config"], order).alias("panel"),
        "trial",
        "frozen_block",
        pl.col("frozen_block").replace_strict(stages, return_dtype=pl.String).alias("block_a"),
        pl.col("epoch").cast(pl.Int64),
    )


def stage_outputs(rows: pl.DataFrame) -> pl.DataFrame:
    """The rows of each model's stage outputs: per model and stage (`analysis.layers.block_of`), the side-a
    ``block`` layer that runs last, with its stage in ``block_a`` ("block1"). Other rows are dropped."""
    blocks = rows.filter(pl.col("type_a") == "block")
    if blocks.is_empty():
        return blocks.with_columns(block_a=pl.lit(None, dtype=pl.String))
    layers = blocks.select("model_a", "layer_a", "name_a").unique()
    layers = layers.with_columns(block_a=pl.Series(block_of(layers["name_a"].to_list()), dtype=pl.String))
    last = layers.group_by("model_a", "block_a").agg(pl.col("layer_a").max())
    return blocks.join(last, on=["model_a", "layer_a"])


def fig25_epoch_heatmaps(
    similarity: pl.DataFrame, metrics: pl.DataFrame, layers: Sequence[str] | None = None
) -> alt.FacetChart:
    """Fig 25: epoch x epoch CKA of the same layer, for chosen layers (columns), rows = configuration x probe
    (benign, and adversarial where the comparison has adversarial probes); cells averaged over seeds, epoch 1
    at the bottom-left. Pairs stored one way (e1, e2) are mirrored: the matrix is symmetric.

    ``layers``: layer names; by default every layer the comparison computed the matrix for (its ``layers``),
    or, when that is more than `MAX_FIG25_LAYERS`, the last layer of each block (`default_fig25_layers`).
    """
    rows = _cross_epoch(similarity, "Fig 25").with_columns(probe_a=probe_kind("probe_a"), probe_b=probe_kind("probe_b"))
    rows = rows.filter(pl.col("probe_a") == pl.col("probe_b"))
    blocks = layer_table(rows, "a")  # blocks from every layer, before keeping the matrix's few
    spread = rows.group_by("model_a", "probe_a", "layer_a").agg(
        pl.col("epoch_a").n_unique().alias("a"), pl.col("epoch_b").n_unique().alias("b")
    )
    matrix = spread.filter((pl.col("a") > 1) & (pl.col("b") > 1))
    if matrix.is_empty():
        raise NoData(
            "Fig 25 needs cross_epoch pairs between every two epochs (the epoch x epoch matrix of the "
            "comparison's `layers`), not only against the final epoch; add `- kind: cross_epoch` with `epochs: all`"
        )
    matrix_layers = blocks.filter(pl.col("layer").is_in(matrix["layer_a"].implode()))
    if layers is not None:
        chosen = list(layers)
    elif matrix_layers.height <= MAX_FIG25_LAYERS:
        chosen = matrix_layers["name"].to_list()
    else:
        chosen = default_fig25_layers(matrix_layers)
    rows = rows.join(matrix.select("model_a", "probe_a", "layer_a"), on=["model_a", "probe_a", "layer_a"])
    mirrored = rows.rename({"epoch_a": "epoch_b", "epoch_b": "epoch_a"}).select(rows.columns)
    rows = pl.concat([rows, mirrored]).unique(
        subset=["model_a", "probe_a", "layer_a", "epoch_a", "epoch_b"], keep="first", maintain_order=True
    )
    rows = attach_trials(rows, metrics, sides="a").join(
        blocks.select(pl.col("layer").alias("layer_a"), pl.col("block").alias("block_a")), on="layer_a", how="left"
    )
    rows = rows.filter(pl.col("name_a").is_in(chosen))
    if rows.is_empty():
        raise NoData(
            f"Fig 25: none of the layers {', '.join(chosen)} has an epoch x epoch matrix in the cross_epoch rows"
        )
    cells = (
        over_seeds_frame(
            with_bounds(rows),
            ["config_a", "config_order_a", "probe_a", "layer_a", "name_a", "block_a", "epoch_a", "epoch_b"],
            bounds=(-1.0, 1.0),
        )
        .sort(
            ["config_order_a", "probe_a", "layer_a", "epoch_a", "epoch_b"],
            descending=[False, True, False, False, False],
        )
        .with_columns(
            row=pl.col("config_a") + " · " + pl.col("probe_a"), column=pl.col("block_a") + " · " + pl.col("name_a")
        )
    )
    data = cells.select(
        facet_key(cells["row"], cells["row"].unique(maintain_order=True).to_list()).alias("row_key"),
        facet_key(cells["column"], cells.sort("layer_a")["column"].unique(maintain_order=True).to_list()).alias(
            "column_key"
        ),
        "name_a",
        "epoch_a",
        "epoch_b",
        "value",
        "lower",
        "upper",
        "seeds",
    )
    chart = (
        alt.Chart(chart_data(data))
        .mark_rect()
        .encode(
            x=alt.X("epoch_a:O", title="epoch", axis=alt.Axis(labelAngle=0)),
            y=alt.Y("epoch_b:O", title="epoch", sort="descending"),
            color=alt.Color("value:Q", title="CKA", scale=alt.Scale(domain=[0, 1], scheme="magma", clamp=True)),
            tooltip=[
                "name_a:N",
                "epoch_a:O",
                "epoch_b:O",
                alt.Tooltip("value:Q", format=".3f", title="CKA"),
                alt.Tooltip("lower:Q", format=".3f", title="95% interval from"),
                alt.Tooltip("upper:Q", format=".3f", title="95% interval to"),
                "seeds:Q",
            ],
        )
        .properties(width=EPOCH_PANEL, height=EPOCH_PANEL)
    )
    return chart.facet(
        row=alt.Row("row_key:N", title=None, header=alt.Header(labelExpr=FACET_LABEL, labelAngle=0, labelAlign="left")),
        column=alt.Column("column_key:N", title=None, header=alt.Header(labelExpr=FACET_LABEL)),
        spacing=10,
    )


def default_fig25_layers(layers: pl.DataFrame) -> list[str]:
    """The last layer of each block but the stem (e.g. each WRN stage's last layer and the final linear layer),
    thinned evenly to at most `MAX_FIG25_LAYERS`. ``layers``: `analysis.layers.layer_table` rows."""
    last = (
        layers.filter(pl.col("block") != "stem")
        .group_by("block", maintain_order=True)
        .agg(pl.col("name").last(), pl.col("layer").max())
        .sort("layer")
    )
    names = last["name"].to_list() or layers["name"].tail(1).to_list()
    if len(names) <= MAX_FIG25_LAYERS:
        return names
    step = (len(names) - 1) / (MAX_FIG25_LAYERS - 1)
    return [names[round(i * step)] for i in range(MAX_FIG25_LAYERS)]


def _cross_epoch(similarity: pl.DataFrame, figure: str) -> pl.DataFrame:
    rows = similarity.filter(kind="cross_epoch", measure="cka")
    if rows.is_empty():
        raise NoData(f"{figure} needs a cross_epoch comparison; add `- kind: cross_epoch` to `compare:`")
    rows = rows.filter((pl.col("layer_a") == pl.col("layer_b")) & (pl.col("model_a") == pl.col("model_b")))
    # A pair against the final epoch may be stored twice (with the final-epoch column and in the matrix).
    pair = ["model_a", "probe_a", "probe_b", "layer_a", "epoch_a", "epoch_b"]
    return rows.unique(subset=pair, keep="first", maintain_order=True)


def _loss_curves(metrics: pl.DataFrame, trials: pl.DataFrame, order: list[str]) -> pl.DataFrame:
    """Loss per trial x epoch x curve (`LOSSES`) of ``trials`` (``trial, config``), keyed by Fig 6's panels."""
    rows = metrics.join(trials, on="trial")
    if rows.is_empty():
        return pl.DataFrame()
    curves = pl.DataFrame(
        {
            "column": [c for _, _, c in LOSSES.values()],
            "curve": list(LOSSES),
            "split": [s for s, _, _ in LOSSES.values()],
            "evaluation": [e for _, e, _ in LOSSES.values()],
        }
    )
    long = (
        rows.unpivot(
            index=["trial", "config", "epoch"], on=curves["column"].to_list(), variable_name="column", value_name="loss"
        )
        .drop_nulls("loss")
        .join(curves, on="column")
    )
    return long.select(
        facet_key(long["config"], order).alias("panel"), "trial", "epoch", "curve", "split", "evaluation", "loss"
    )
