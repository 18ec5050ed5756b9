"""Table 1: benign and robust accuracy, train and test, of non-robust and robust models, with the gap Δ.

The paper's Table 1 (WRN-28-10 on CIFAR-10): non-robust 100.0 / 94.9 benign (Δ 5.1), 0.0 / 0.0 robust;
robust 100.0 / 87.6 benign (Δ 12.4), 98.2 / 44.2 robust (Δ 54.0) — robust training costs benign accuracy and
has a large generalisation gap in robust accuracy. Here each configuration (averaged over seeds) gets two
rows: its last epoch, and its best epoch by held-out robust accuracy (Rice et al. 2020's early stopping).
"""

from __future__ import annotations

import html

import altair as alt
import polars as pl

from analysis.load import NoData, chart_data, trial_info

# (evaluation, split) -> metrics.parquet column; the table's column order.
ACCURACY = {
    ("benign", "train"): "train_clean_acc",
    ("benign", "test"): "test_clean_acc",
    ("robust", "train"): "train_robust_acc",
    ("robust", "test"): "test_robust_acc",
}
COLUMNS = ["benign_train", "benign_test", "benign_gap", "robust_train", "robust_test", "robust_gap"]
HEADERS = {  # column -> header of the chart's text table
    "benign_train": "benign train",
    "benign_test": "benign test",
    "benign_gap": "benign Δ",
    "robust_train": "robust train",
    "robust_test": "robust test",
    "robust_gap": "robust Δ",
}
CHECKPOINTS = ["last", "best"]


def best_epochs(metrics: pl.DataFrame) -> pl.DataFrame:
    """``(trial, epoch)``: each trial's best epoch, the one of highest held-out (test) robust accuracy.

    ``metrics.parquet``'s ``best_epoch`` where it is set (the catalog's choice), else computed the same way:
    the earliest of tied epochs (a non-robust model, at 0% robust accuracy throughout, is best at epoch 1).
    """
    computed = (
        metrics.sort(["trial", "test_robust_acc", "epoch"], descending=[False, True, False], nulls_last=True)
        .group_by("trial", maintain_order=True)
        .agg(pl.col("epoch").first().alias("computed"))
    )
    stored = (
        metrics.group_by("trial", maintain_order=True).agg(pl.col("best_epoch").drop_nulls().first())
        if "best_epoch" in metrics.columns
        else None
    )
    if stored is None:
        return computed.rename({"computed": "epoch"})
    joined = computed.join(stored, on="trial", how="left")
    return joined.select("trial", pl.coalesce("best_epoch", "computed").cast(pl.Int32).alias("epoch"))


def table1_frame(metrics: pl.DataFrame) -> pl.DataFrame:
    """Table 1 as a frame: one row per dataset x configuration x checkpoint ("last", "best").

    Columns: ``dataset, config, config_order, robust, checkpoint, epochs`` (the epoch(s) over seeds, e.g.
    "6" or "3–4"), ``seeds`` (how many trials were averaged), then `COLUMNS`: accuracies in [0, 1] averaged
    over seeds, and ``*_gap`` = train − test. Rows: per dataset, non-robust first, then by ε; last before best.
    """
    if metrics.is_empty():
        raise NoData("Table 1 needs metrics.parquet rows (no epoch has finished yet); run the sweep's training")
    info = trial_info(metrics).select("trial", "config", "config_order", "robust")
    last = metrics.filter(pl.col("epoch") == pl.col("epoch").max().over("trial")).with_columns(
        checkpoint=pl.lit("last")
    )
    best = metrics.join(best_epochs(metrics), on=["trial", "epoch"]).with_columns(checkpoint=pl.lit("best"))
    rows = pl.concat([last, best]).join(info, on="trial")
    table = (
        rows.group_by(["dataset", "config", "config_order", "robust", "checkpoint"])
        .agg(
            *(pl.col(column).mean().alias(f"{evaluation}_{split}") for (evaluation, split), column in ACCURACY.items()),
            pl.col("epoch").min().alias("first"),
            pl.col("epoch").max().alias("last_epoch"),
            pl.len().alias("seeds"),
        )
        .with_columns(
            benign_gap=pl.col("benign_train") - pl.col("benign_test"),
            robust_gap=pl.col("robust_train") - pl.col("robust_test"),
            epochs=pl.when(pl.col("first") == pl.col("last_epoch"))
            .then(pl.col("first").cast(pl.String))
            .otherwise(pl.col("first").cast(pl.String) + "–" + pl.col("last_epoch").cast(pl.String)),
            order=pl.col("checkpoint").replace_strict({c: i for i, c in enumerate(CHECKPOINTS)}, return_dtype=pl.Int8),
        )
        .sort(["dataset", "config_order", "order"])
    )
    return table.select("dataset", "config", "config_order", "robust", "checkpoint", "epochs", "seeds", *COLUMNS)


def table1(metrics: pl.DataFrame) -> alt.Chart:
    """Table 1 as a text-table chart: rows "dataset · configuration · checkpoint (epoch)", columns `HEADERS`,
    cells in percent. Raises `NoData` when ``metrics`` has no rows."""
    table = table1_frame(metrics).with_columns(
        row=pl.col("dataset")
        + " · "
        + pl.col("config")
        + " · "
        + pl.col("checkpoint")
        + " (epoch "
        + pl.col("epochs")
        + ")"
    )
    cells = table.unpivot(index=["row"], on=COLUMNS, variable_name="column", value_name="accuracy").with_columns(
        header=pl.col("column").replace_strict(HEADERS, return_dtype=pl.String),
        text=pl.col("accuracy").map_elements(_percent, return_dtype=pl.String),
    )
    return (
        alt.Chart(chart_data(cells))
        .mark_text(fontSize=12)
        .encode(
            x=alt.X(
                "header:N",
                sort=list(HEADERS.values()),
                title=None,
                axis=alt.Axis(orient="top", labelAngle=0, ticks=False, domain=False),
            ),
            y=alt.Y(
                "row:N",
                sort=table["row"].to_list(),
                title=None,
                axis=alt.Axis(ticks=False, domain=False, labelLimit=400),
            ),
            text="text:N",
            color=alt.condition("indexof(datum.column, 'gap') >= 0", alt.value("#8a3b00"), alt.value("#222")),
            tooltip=["row:N", "header:N", alt.Tooltip("accuracy:Q", format=".2%")],
        )
        .properties(width=90 * len(HEADERS), height=alt.Step(22), title="Table 1: accuracy (%), Δ = train − test")
        .configure_view(strokeWidth=0)  # a table, not a plot: no frame
    )


def table1_html(metrics: pl.DataFrame) -> str:
    """Table 1 as an HTML ``<table>`` laid out like the paper's (benign and robust accuracy, train / test / Δ)."""
    table = table1_frame(metrics)
    head = (
        "<thead><tr><th rowspan=2>dataset</th><th rowspan=2>network</th><th rowspan=2>checkpoint</th>"
        "<th colspan=3>benign accuracy</th><th colspan=3>robust accuracy</th><th rowspan=2>seeds</th></tr>"
        "<tr><th>train</th><th>test</th><th>Δ</th><th>train</th><th>test</th><th>Δ</th></tr></thead>"
    )
    body = []
    for row in table.iter_rows(named=True):
        cells = [
            html.escape(row["dataset"] or ""),
            html.escape(row["config"]),
            f"{row['checkpoint']} (epoch {row['epochs']})",
        ]
        cells += [_percent(row[column]) for column in COLUMNS] + [str(row["seeds"])]
        body.append("<tr>" + "".join(f"<td>{cell}</td>" for cell in cells) + "</tr>")
    return f'<table class="numbers table1">{head}<tbody>{"".join(body)}</tbody></table>'


def _percent(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.1f}%"
