"""Table 1: benign and robust accuracy, train and test, of non-robust and robust models, with the gap Δ.

The paper's Table 1 (WRN-28-10 on CIFAR-10): non-robust 100.0 / 94.9 benign (Δ 5.1), 0.0 / 0.0 robust;
robust 100.0 / 87.6 benign (Δ 12.4), 98.2 / 44.2 robust (Δ 54.0) — robust training costs benign accuracy and
has a large generalisation gap in robust accuracy. Here each configuration (averaged over seeds) gets two
rows: its last epoch, and its best epoch by held-out robust accuracy (Rice et al. 2020's early stopping).

Every number has its 95% interval (`analysis.uncertainty`): with one seed, an accuracy's Wilson interval over
the images it was measured on (``train_examples`` / ``test_examples``) and a gap's Newcombe interval (the
train and test subsets are different images); with 2+ seeds, the t interval over the seeds' values, widened
to the images' interval where that is wider (the seeds share their test images, whose sampling the seeds'
spread cannot show). Results written before rayrs counted the images show no interval. The best epoch's test
robust accuracy is the largest of the epochs' noisy values and reads high: its gap to the last epoch is
judged with an interval that allows for that choice (`analysis.summary`'s ``best_last_gap``).
"""

from __future__ import annotations

import html

import altair as alt
import polars as pl

from analysis import uncertainty
from analysis.load import NoData, chart_data, trial_info
from analysis.uncertainty import Estimate

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
EXAMPLES = {"train": "train_examples", "test": "test_examples"}  # split -> its image count column
INTERVAL_NOTE = (
    "95% intervals in brackets: Wilson over the evaluated images for one seed (Newcombe for a gap Δ); over seeds "
    "(t), widened to the images' interval where wider, for several"
)


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
    over seeds, and ``*_gap`` = train − test, each with ``<column>_lower`` / ``<column>_upper``, its 95%
    interval (null where the image counts are unknown; see the module docstring). Rows: per dataset,
    non-robust first, then by ε; last before best.
    """
    if metrics.is_empty():
        raise NoData("Table 1 needs metrics.parquet rows (no epoch has finished yet); run the sweep's training")
    info = trial_info(metrics).select("trial", "config", "config_order", "robust")
    last = metrics.filter(pl.col("epoch") == pl.col("epoch").max().over("trial")).with_columns(
        checkpoint=pl.lit("last")
    )
    best = metrics.join(best_epochs(metrics), on=["trial", "epoch"]).with_columns(checkpoint=pl.lit("best"))
    rows = pl.concat([last, best]).join(info, on="trial")
    keys = ["dataset", "config", "config_order", "robust", "checkpoint"]
    table = []
    for key, group in rows.sort("trial").group_by(keys, maintain_order=True):
        trials = group.to_dicts()
        row = dict(zip(keys, key))
        epochs = [t["epoch"] for t in trials]
        row["epochs"] = str(min(epochs)) if min(epochs) == max(epochs) else f"{min(epochs)}–{max(epochs)}"
        row["seeds"] = len(trials)
        for column, estimate in _config_numbers(trials).items():
            row[column], row[f"{column}_lower"], row[f"{column}_upper"] = estimate.value, estimate.lower, estimate.upper
        table.append(row)
    schema = {"dataset": pl.String, "config": pl.String, "config_order": pl.Int64, "robust": pl.Boolean,
              "checkpoint": pl.String, "epochs": pl.String, "seeds": pl.Int64}
    schema |= {f"{c}{suffix}": pl.Float64 for c in COLUMNS for suffix in ("", "_lower", "_upper")}
    frame = pl.DataFrame(table, schema=schema, orient="row").with_columns(
        order=pl.col("checkpoint").replace_strict({c: i for i, c in enumerate(CHECKPOINTS)}, return_dtype=pl.Int8)
    )
    return frame.sort(["dataset", "config_order", "order"]).drop("order")


def _config_numbers(trials: list[dict]) -> dict[str, Estimate]:
    """`COLUMNS` of one table row from its trials' metrics rows (one per seed), each an `Estimate`."""
    per_trial: dict[str, list[Estimate]] = {column: [] for column in COLUMNS}
    for trial in trials:
        for evaluation in ("benign", "robust"):
            measured = {
                split: uncertainty.accuracy(trial[ACCURACY[evaluation, split]], trial.get(EXAMPLES[split]))
                for split in ("train", "test")
            }
            per_trial[f"{evaluation}_train"].append(measured["train"])
            per_trial[f"{evaluation}_test"].append(measured["test"])
            per_trial[f"{evaluation}_gap"].append(uncertainty.difference(measured["train"], measured["test"]))
    return {
        column: uncertainty.over_seeds(values, bounds=(-1.0, 1.0) if column.endswith("_gap") else (0.0, 1.0))
        for column, values in per_trial.items()
    }


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
    cells = pl.concat(
        [
            table.select(
                "row",
                pl.lit(column).alias("column"),
                pl.col(column).alias("accuracy"),
                pl.col(f"{column}_lower").alias("lower"),
                pl.col(f"{column}_upper").alias("upper"),
                "seeds",
            )
            for column in COLUMNS
        ]
    ).with_columns(header=pl.col("column").replace_strict(HEADERS, return_dtype=pl.String))
    cells = cells.with_columns(
        text=pl.Series([_percent(r["accuracy"]) for r in cells.iter_rows(named=True)], dtype=pl.String),
        interval=pl.Series([_interval(r["lower"], r["upper"]) for r in cells.iter_rows(named=True)], dtype=pl.String),
    ).with_columns(label=pl.concat_str(["text", pl.lit(" "), pl.col("interval").str.replace("^–$", "")]).str.strip_chars())
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
            text="label:N",
            color=alt.condition("indexof(datum.column, 'gap') >= 0", alt.value("#8a3b00"), alt.value("#222")),
            tooltip=[
                "row:N",
                "header:N",
                alt.Tooltip("accuracy:Q", format=".2%"),
                alt.Tooltip("interval:N", title="95% interval"),
                alt.Tooltip("seeds:Q", title="seeds"),
            ],
        )
        .properties(
            width=130 * len(HEADERS),
            height=alt.Step(30),
            title=alt.Title("Table 1: accuracy (%), Δ = train − test", subtitle=INTERVAL_NOTE),
        )
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
        cells += [
            _percent(row[column])
            + (
                f"<br><small>{_interval(row[f'{column}_lower'], row[f'{column}_upper'])}</small>"
                if row[f"{column}_lower"] is not None
                else ""
            )
            for column in COLUMNS
        ] + [str(row["seeds"])]
        body.append("<tr>" + "".join(f"<td>{cell}</td>" for cell in cells) + "</tr>")
    caption = f"<caption>{html.escape(INTERVAL_NOTE)}</caption>"
    return f'<table class="numbers table1">{caption}{head}<tbody>{"".join(body)}</tbody></table>'


def table1_csv(metrics: pl.DataFrame) -> str:
    """Table 1 as CSV: `table1_frame`'s rows and columns (accuracies and their 95% interval bounds as fractions in
    [0, 1], full precision; empty where unknown), less the internal ``config_order``."""
    return table1_frame(metrics).drop("config_order").write_csv()


LATEX_NOTE = "needs \\usepackage{booktabs}; \\input{table1.tex} inside a table environment"


def table1_latex(metrics: pl.DataFrame) -> str:
    """Table 1 as a LaTeX ``tabular`` (booktabs rules), laid out like `table1_html`: one row per dataset x
    configuration x checkpoint, accuracies in percent with their 95% interval in brackets, as on the PNG."""
    table = table1_frame(metrics)
    lines = [
        f"% Table 1 (rayrs analyze): accuracy (%), Delta = train - test. {INTERVAL_NOTE}.",
        f"% {LATEX_NOTE}",
        "\\begin{tabular}{lll" + "r" * len(COLUMNS) + "r}",
        "\\toprule",
        " & & & \\multicolumn{3}{c}{benign accuracy (\\%)} & \\multicolumn{3}{c}{robust accuracy (\\%)} & \\\\",
        "\\cmidrule(lr){4-6} \\cmidrule(lr){7-9}",
        "dataset & network & checkpoint & train & test & $\\Delta$ & train & test & $\\Delta$ & seeds \\\\",
        "\\midrule",
    ]
    for row in table.iter_rows(named=True):
        cells = [
            latex_text(row["dataset"] or ""),
            latex_text(row["config"]),
            latex_text(f"{row['checkpoint']} (epoch {row['epochs']})"),
        ]
        for column in COLUMNS:
            cell = _percent(row[column]).removesuffix("%")
            if row[f"{column}_lower"] is not None:
                cell += " {\\scriptsize " + _interval(row[f"{column}_lower"], row[f"{column}_upper"]) + "}"
            cells.append(latex_text(cell) if row[column] is None else latex_number(cell))
        cells.append(str(row["seeds"]))
        lines.append(" & ".join(cells) + " \\\\")
    lines += ["\\bottomrule", "\\end{tabular}", ""]
    return "\n".join(lines)


# LaTeX's special characters, and the symbols rayrs's labels use, as pdfLaTeX reads them with no extra package.
_LATEX = [
    ("\\", "\\textbackslash{}"),
    *[(char, "\\" + char) for char in "&%$#_{}"],
    ("~", "\\textasciitilde{}"),
    ("^", "\\textasciicircum{}"),
    ("ℓ∞", "$\\ell_\\infty$"),
    ("ℓ", "$\\ell$"),
    ("∞", "$\\infty$"),
    ("ε", "$\\varepsilon$"),
    ("Δ", "$\\Delta$"),
    ("−", "$-$"),
    ("–", "--"),
    ("·", "$\\cdot$"),
    ("×", "$\\times$"),
]


def latex_text(text: str) -> str:
    """``text`` as LaTeX text: its special characters escaped, the labels' Greek and math symbols in math mode."""
    out = []
    i = 0
    while i < len(text):  # one pass, so that a replacement is never escaped again
        for plain, latex in _LATEX:
            if text.startswith(plain, i):
                out.append(latex)
                i += len(plain)
                break
        else:
            out.append(text[i])
            i += 1
    return "".join(out)


def latex_number(text: str) -> str:
    """A numeric cell ("-3.2 {\\scriptsize [-5.1, 0.4]}") for LaTeX: a minus sign in math mode, since a bare
    "-" in text mode prints as a hyphen, shorter than the sign and misaligned in a column of numbers."""
    return text.replace("-", "$-$").replace("–", "--")


def _percent(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.1f}%"


def _interval(lower: float | None, upper: float | None) -> str:
    """"[84.1, 90.5]" (percent), or "–" where the interval is unknown."""
    return "–" if lower is None or upper is None else f"[{100 * lower:.1f}, {100 * upper:.1f}]"
