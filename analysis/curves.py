"""Accuracy over training (paper Table 1, per epoch): benign and robust accuracy on the train and test sets.

Robust training trades benign accuracy for robust accuracy; a growing train/test gap in robust accuracy is
the robust overfitting of Section 4 (Fig 6). Each curve has a band: the Wilson 95% interval of each epoch's
accuracy over the images it was measured on (none for results written before rayrs counted them).
"""

from __future__ import annotations

import math

import altair as alt
import polars as pl

from analysis.load import NoData, chart_data, trial_labels
from analysis.uncertainty import wilson_bounds

EXAMPLES = {"train": "train_examples", "test": "test_examples"}  # split -> the images its accuracies count
# metrics.parquet column -> (split, evaluation) as the chart names them.
ACCURACY_COLUMNS = {
    "train_clean_acc": ("train", "benign"),
    "test_clean_acc": ("test", "benign"),
    "train_robust_acc": ("train", "robust"),
    "test_robust_acc": ("test", "robust"),
}
EVALUATIONS = ["benign", "robust"]
SPLITS = ["train", "test"]


def accuracy_long(metrics: pl.DataFrame) -> pl.DataFrame:
    """``metrics`` (one row per trial x epoch) as one row per trial x epoch x split x evaluation.

    Columns: ``trial, label, order, epoch, split`` (train | test), ``evaluation`` (benign | robust),
    ``accuracy`` in [0, 1] and its Wilson 95% interval ``lower``, ``upper`` (null where the image count is
    unknown); accuracies never measured (null) are left out.
    """
    mapping = pl.DataFrame(
        {
            "column": list(ACCURACY_COLUMNS),
            "split": [split for split, _ in ACCURACY_COLUMNS.values()],
            "evaluation": [evaluation for _, evaluation in ACCURACY_COLUMNS.values()],
        }
    )
    counts = metrics.unpivot(
        index=["trial", "epoch"], on=list(EXAMPLES.values()), variable_name="count_column", value_name="examples"
    ).with_columns(split=pl.col("count_column").replace_strict({v: k for k, v in EXAMPLES.items()}))
    long = (
        metrics.unpivot(
            index=["trial", "epoch"], on=list(ACCURACY_COLUMNS), variable_name="column", value_name="accuracy"
        )
        .drop_nulls("accuracy")
        .join(mapping, on="column")
        .join(counts.select("trial", "epoch", "split", "examples"), on=["trial", "epoch", "split"], how="left")
        .join(trial_labels(metrics).select("trial", "label", "order"), on="trial")
    )
    lower, upper = wilson_bounds(pl.col("accuracy"), pl.col("examples"))
    return (
        long.with_columns(lower=lower, upper=upper)
        .select("trial", "label", "order", "epoch", "split", "evaluation", "accuracy", "lower", "upper")
        .sort(["order", "evaluation", "split", "epoch"])
    )


def accuracy_curves(metrics: pl.DataFrame) -> alt.FacetChart:
    """Accuracy against epoch, one column per evaluation (benign, robust), four lines per trial, each in its
    band (the Wilson 95% interval of every epoch's accuracy).

    Colour = trial label (non-robust first, then by eps), dash = train / test, y fixed to [0, 1].
    Raises `NoData` when ``metrics`` has no rows.
    """
    if metrics.is_empty():
        raise NoData("no rows in metrics.parquet (no epoch has finished yet)")
    long = accuracy_long(metrics)
    labels = trial_labels(metrics)["label"].to_list()
    base = alt.Chart().encode(
        x=alt.X("epoch:Q", title="epoch", axis=alt.Axis(values=_epoch_ticks(long["epoch"]), format="d")),
        y=alt.Y("accuracy:Q", title="accuracy", scale=alt.Scale(domain=[0, 1])),
        color=alt.Color("label:N", title="trial", sort=labels, legend=alt.Legend(symbolOpacity=1)),
        detail="trial:N",
        tooltip=[
            alt.Tooltip("label:N", title="trial"),
            "split:N",
            "evaluation:N",
            alt.Tooltip("epoch:Q", format="d"),
            alt.Tooltip("accuracy:Q", format=".3f"),
            alt.Tooltip("lower:Q", format=".3f", title="95% interval from"),
            alt.Tooltip("upper:Q", format=".3f", title="95% interval to"),
        ],
    )
    lines = base.mark_line().encode(
        strokeDash=alt.StrokeDash(
            "split:N",
            title="split",
            # Pinned so that the page's text stays true: train solid, test dashed.
            scale=alt.Scale(domain=SPLITS, range=[[1, 0], [6, 3]]),
            legend=alt.Legend(symbolType="stroke", symbolStrokeColor="#555"),
        )
    )
    # Points in their own layer: a line's point overlay would blank the dash legend's symbols.
    points = base.mark_point(filled=True, size=16, opacity=1)
    # The band of each curve: train and test bands overlap where the curves do, hence the light fill.
    bands = base.mark_area(opacity=0.12).encode(
        y=alt.Y("lower:Q", title="accuracy", scale=alt.Scale(domain=[0, 1])), y2="upper:Q", detail="curve:N"
    )
    long = long.with_columns(curve=pl.col("trial") + "|" + pl.col("split"))
    return (
        alt.layer(bands, lines, points, data=chart_data(long))
        .properties(width=260, height=200)
        .facet(column=alt.Column("evaluation:N", title=None, sort=EVALUATIONS, header=alt.Header(labelFontSize=13)))
    )


def _epoch_ticks(epochs: pl.Series, most: int = 10) -> list[int]:
    """Whole epochs to mark on the x axis, at most ``most`` of them (Vega would otherwise tick at 1.5, 2.5)."""
    first, last = int(epochs.min()), int(epochs.max())
    step = max(1, math.ceil((last - first) / most))
    return list(range(first, last + 1, step))
