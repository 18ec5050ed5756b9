"""Numbers the paper only shows as pictures, each with its 95% interval: ``summary.parquet`` and its two charts.

- **Block-structure score** (Figs 2, 3), per model, from its benign cross_layer comparison at its last epoch:
  mean CKA of neighbouring layers (|i − j| = 1) minus mean CKA of layers far apart (|i − j| > L/3, L the
  number of layers). High: bright squares along the diagonal and dark far from it (the block structure of a
  non-robust network); near 0: as similar far away as next door (what robust training does, more so at
  larger ε). Both means are stored too (``cka_neighbours``, ``cka_far``). Interval: the jackknife, the score
  computed on replicate g of every CKA value it averages (the groups are the same probe images in every pair).
- **Convergence epoch** (Fig 6), per model and layer, from its benign cross_epoch rows against the final
  epoch: the first epoch from which CKA to the final epoch stays ≥ a threshold (`CONVERGENCE_THRESHOLD`) at
  every later measured epoch. The final epoch counts as converged (CKA of a representation with itself is 1),
  so a layer that never settles gets the final epoch. Interval ("threshold_band"): [the first epoch from which
  the upper edge of each epoch's 95% interval stays ≥ the threshold, the first from which the lower edge
  does]: the earliest and the latest convergence epoch that the measured CKA values allow. Why this and not a
  resampled epoch: the epoch is a step function of the curve, and a jackknife of it is 0 or jumps by whole
  epochs; the band's edges say directly which epochs the uncertainty of the curve cannot tell apart. It is a
  range of plausible epochs from pointwise 95% intervals, not a 95% interval with guaranteed coverage.
- **Best-vs-last gap** (Table 1, Rice et al.'s robust overfitting), per model: test robust accuracy at the
  best epoch minus at the last. The best epoch is chosen on the same test images, so the largest of the
  epochs' noisy accuracies is biased upward; the interval ("simultaneous", `analysis.uncertainty.best_minus_last`)
  bounds max_e θ_e − θ_last with Bonferroni-corrected intervals of every epoch's difference to the last, which
  hold together whichever epoch the noise favoured. It is conservative (the epochs' errors on the same images
  are positively correlated, which the Wilson-based MOVER intervals of the differences ignore).
- **Transfer accuracy** (Fig 5a), per source and target: the target's accuracy on the source's adversarial
  examples, with its Wilson interval over the probe's images (a jackknife interval collapses at 0% and 100%).

``summary.parquet`` (`SUMMARY_SCHEMA`) is long: one row per statistic per trial (per layer for the convergence
epoch, per target for the transfer accuracy) with ``scope`` "trial", and one per statistic per configuration
with ``scope`` "config": the mean over its seeds with the interval of `analysis.uncertainty.over_seeds` (the
trial's own interval where it has one seed). Rows carry the trial's parameters, so that they group without
joins; a configuration row has no trial and no seed.
"""

from __future__ import annotations

import html
import math

import altair as alt
import polars as pl
import pyarrow as pa

from analysis import uncertainty
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
from analysis.uncertainty import Estimate
from rayrs.schema import TRIAL_COLUMNS
from rayrs import storage as layout
from rayrs.storage import Storage

# Where summary.parquet lives, relative to the report folder (`analysis.report.render_report`'s out_dir): the
# report is analysis' to write, the results are not (they may be read-only).
SUMMARY = layout.SUMMARY
CONVERGENCE_THRESHOLD = 0.9
FAR_FRACTION = 1 / 3  # layers farther apart than this fraction of the network count as "far"

STATISTICS = ["block_structure", "cka_neighbours", "cka_far", "convergence_epoch", "best_last_gap", "transfer_accuracy"]
SCOPES = ["trial", "config"]
SUMMARY_SCHEMA = pa.schema(
    [
        ("statistic", pa.string()),  # one of STATISTICS
        ("scope", pa.string()),  # "trial": one trial; "config": the mean over a configuration's seeds
        *TRIAL_COLUMNS.items(),  # experiment, trial, dataset, arch, depth, width, method, threat_model, eps, seed
        ("label", pa.string()),  # the trial as figures name it, e.g. "PGD-AT ε=8/255 (seed 1)"; config: its config
        ("config", pa.string()),  # the same without the seed: what averaging over seeds groups by
        ("epoch", pa.int32()),  # cross_layer: its epoch; convergence: the final epoch; best_last_gap: the best one
        ("layer", pa.int32()),  # convergence_epoch only: the layer's index in network order (else null)
        ("name", pa.string()),  # convergence_epoch only: the layer's module path
        ("type", pa.string()),  # convergence_epoch only: conv / bn / act / pool / linear / block
        ("block", pa.string()),  # convergence_epoch only: stem / block1 / ... / head
        ("threshold", pa.float64()),  # convergence_epoch only: the CKA it must stay above
        ("target", pa.string()),  # transfer_accuracy only: the target trial (null in a config row)
        ("target_config", pa.string()),  # transfer_accuracy only: the target's configuration
        ("value", pa.float64()),  # the statistic (the convergence epoch as a number, accuracies as fractions)
        ("lower", pa.float64()),  # its 95% interval; null where the results hold no uncertainty (older files)
        ("upper", pa.float64()),
        ("interval", pa.string()),  # how the interval was made: a key of analysis.uncertainty.METHODS
        ("seeds", pa.int32()),  # trials the value is the mean of (1 in a trial row)
    ]
)


# -- per trial -----------------------------------------------------------------------------------------------
def block_structure(similarity: pl.DataFrame) -> pl.DataFrame:
    """Per model: ``trial, epoch, layers`` (L), ``cka_neighbours``, ``cka_far`` and ``block_structure`` =
    neighbours − far, each with its jackknife interval (``<name>_lower``, ``<name>_upper``; null where a CKA value
    lacks its replicates), from benign ``cross_layer`` CKA at each model's last epoch (pairs stored one way are
    counted both ways; a model's CKA with itself is symmetric). Empty when there are no such rows."""
    rows = uncertainty.with_uncertainty(similarity).filter(
        kind="cross_layer", measure="cka", probe_a=BENIGN, probe_b=BENIGN
    )
    rows = rows.filter(
        (pl.col("model_a") == pl.col("model_b")) & (pl.col("epoch_a") == pl.col("epoch_a").max().over("model_a"))
    )
    columns = {"i": "layer_a", "j": "layer_b", "value": "value", "jackknife": "jackknife"}
    swapped = {"i": "layer_b", "j": "layer_a", "value": "value", "jackknife": "jackknife"}
    pairs = (
        pl.concat([rows.select("model_a", "epoch_a", **columns), rows.select("model_a", "epoch_a", **swapped)])
        .unique(subset=["model_a", "i", "j"], keep="first", maintain_order=True)
        .with_columns(distance=(pl.col("i") - pl.col("j")).abs(), layers=pl.col("i").n_unique().over("model_a"))
        .with_columns(
            near=pl.col("distance") == 1,
            far=pl.col("distance") > FAR_FRACTION * pl.col("layers"),
        )
    )
    means = (
        pairs.group_by("model_a")
        .agg(
            pl.col("epoch_a").first().alias("epoch"),
            pl.col("layers").first(),
            pl.col("value").filter("near").mean().alias("cka_neighbours"),
            pl.col("value").filter("far").mean().alias("cka_far"),
            pl.col("jackknife").filter(pl.col("near") | pl.col("far")).is_null().any().alias("_incomplete"),
        )
        .with_columns(block_structure=pl.col("cka_neighbours") - pl.col("cka_far"))
        .rename({"model_a": "trial"})
        .sort("trial")
        .drop_nulls("block_structure")
    )
    replicates = _replicate_means(pairs.filter(pl.col("near") | pl.col("far")))
    out = []
    for row in means.iter_rows(named=True):
        groups = None if row.pop("_incomplete") else replicates.get(row["trial"])
        for name in ("cka_neighbours", "cka_far", "block_structure"):
            estimate = uncertainty.from_replicates(row[name], None if groups is None else groups[name])
            row[f"{name}_lower"], row[f"{name}_upper"] = estimate.lower, estimate.upper
        out.append(row)
    schema = {"trial": pl.String, "epoch": pl.Int32, "layers": pl.UInt32}
    schema |= {
        f"{name}{suffix}": pl.Float64
        for name in ("cka_neighbours", "cka_far", "block_structure")
        for suffix in ("", "_lower", "_upper")
    }
    frame = pl.DataFrame(out, schema=schema, orient="row")
    return frame.select(
        "trial", "epoch", "layers", "cka_neighbours", "cka_far", "block_structure",
        *[c for c in frame.columns if c.endswith(("_lower", "_upper"))],
    )


def _replicate_means(pairs: pl.DataFrame) -> dict[str, dict[str, list[float]]]:
    """trial -> {cka_neighbours, cka_far, block_structure: [replicate g of it, for each g]} from the pairs'
    ``jackknife`` lists (the same statistic, computed from replicate g of every value)."""
    complete = pairs.drop_nulls("jackknife")
    if complete.is_empty():
        return {}
    exploded = complete.with_columns(g=pl.int_ranges(0, pl.col("jackknife").list.len())).explode("jackknife", "g")
    per_group = (
        exploded.group_by("model_a", "g")
        .agg(
            pl.col("jackknife").filter("near").mean().alias("cka_neighbours"),
            pl.col("jackknife").filter("far").mean().alias("cka_far"),
        )
        .with_columns(block_structure=pl.col("cka_neighbours") - pl.col("cka_far"))
        .sort("model_a", "g")
    )
    result: dict[str, dict[str, list[float]]] = {}
    for (trial,), group in per_group.group_by(["model_a"], maintain_order=True):
        result[trial] = {name: group[name].to_list() for name in ("cka_neighbours", "cka_far", "block_structure")}
    return result


def convergence_epochs(similarity: pl.DataFrame, threshold: float = CONVERGENCE_THRESHOLD) -> pl.DataFrame:
    """Per model and layer: ``trial, layer, name, type, block, final_epoch, convergence_epoch`` and its range
    ``earliest``, ``latest`` (null where a value lacks its standard error), from benign ``cross_epoch`` CKA
    between each epoch and the final one (the model's latest ``epoch_b``): the first epoch from which CKA
    stays ≥ ``threshold`` at every later epoch, the final epoch when it never does; ``earliest`` / ``latest``
    the same for the upper / lower edge of each value's 95% interval (see the module docstring)."""
    rows = uncertainty.with_uncertainty(similarity).filter(
        kind="cross_epoch", measure="cka", probe_a=BENIGN, probe_b=BENIGN
    )
    rows = rows.filter((pl.col("model_a") == pl.col("model_b")) & (pl.col("layer_a") == pl.col("layer_b")))
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
                "earliest": pl.Int32,
                "latest": pl.Int32,
            }
        )
    rows = with_blocks(rows, sides="a").sort(["model_a", "layer_a", "epoch_a"])
    layer = ["model_a", "layer_a"]
    half = uncertainty.jackknife_t(20) * pl.col("std_error")

    def stays(curve: pl.Expr) -> pl.Expr:
        # 1 at an epoch iff the curve is >= threshold there and at every later epoch (a reversed running minimum).
        return (curve >= threshold).cast(pl.Int8).reverse().cum_min().reverse().over(layer)

    def first(column: str) -> pl.Expr:
        return pl.col("epoch_a").filter(pl.col(column) == 1).min()

    return (
        rows.with_columns(
            stays=stays(pl.col("value")),
            stays_upper=stays(pl.col("value") + half),
            stays_lower=stays(pl.col("value") - half),
        )
        .group_by(layer, maintain_order=True)
        .agg(
            pl.col("name_a").first().alias("name"),
            pl.col("type_a").first().alias("type"),
            pl.col("block_a").first().alias("block"),
            pl.col("epoch_b").first().alias("final_epoch"),
            first("stays").alias("converged"),
            first("stays_upper").alias("converged_early"),
            first("stays_lower").alias("converged_late"),
            pl.col("std_error").is_null().any().alias("incomplete"),
        )
        .with_columns(
            convergence_epoch=pl.col("converged").fill_null(pl.col("final_epoch")).cast(pl.Int32),
            earliest=pl.when(pl.col("incomplete"))
            .then(None)
            .otherwise(pl.col("converged_early").fill_null(pl.col("final_epoch")))
            .cast(pl.Int32),
            latest=pl.when(pl.col("incomplete"))
            .then(None)
            .otherwise(pl.col("converged_late").fill_null(pl.col("final_epoch")))
            .cast(pl.Int32),
        )
        .rename({"model_a": "trial", "layer_a": "layer"})
        .select("trial", "layer", "name", "type", "block", "final_epoch", "convergence_epoch", "earliest", "latest")
    )


def best_last_gaps(metrics: pl.DataFrame) -> dict[str, tuple[int, Estimate]]:
    """trial -> (best epoch, test robust accuracy at the best epoch minus at the last, with its simultaneous
    interval: `analysis.uncertainty.best_minus_last` over Wilson-based differences at the Bonferroni level).
    The best epoch is the earliest of highest test robust accuracy (as `rayrs.catalog` picks it)."""
    gaps = {}
    for (trial,), rows in metrics.drop_nulls("test_robust_acc").sort("epoch").group_by(["trial"], maintain_order=True):
        accuracies, counts, epochs = rows["test_robust_acc"].to_list(), rows["test_examples"].to_list(), rows["epoch"]
        best = epochs[max(range(len(accuracies)), key=lambda i: (accuracies[i], -i))]
        gaps[trial] = (int(best), _best_minus_last([accuracies], [counts]))
    return gaps


def _best_minus_last(accuracies: list[list[float]], counts: list[list[int | None]]) -> Estimate:
    """Best minus last of the seeds' mean accuracy curve (``accuracies[seed][epoch]``, measured on
    ``counts[seed][epoch]`` images), with the simultaneous interval (per epoch: `over_seeds` of each seed's
    Wilson-MOVER difference to the last epoch, every interval at the Bonferroni level)."""
    epochs = min(len(curve) for curve in accuracies)
    level = uncertainty.bonferroni(epochs - 1)
    per_epoch = []
    for epoch in range(epochs - 1):
        per_seed = [
            uncertainty.difference(
                uncertainty.accuracy(curve[epoch], n[epoch], level), uncertainty.accuracy(curve[epochs - 1], n[epochs - 1], level)
            )
            for curve, n in zip(accuracies, counts)
        ]
        per_epoch.append(uncertainty.over_seeds(per_seed, confidence=level, bounds=(-1.0, 1.0)))
    return uncertainty.best_minus_last(per_epoch)


def transfer_accuracies(similarity: pl.DataFrame) -> pl.DataFrame:
    """Per source (``trial``) and ``target``: the target's accuracy on the source's adversarial examples at the
    latest epochs compared, with its Wilson interval over the ``n_examples`` probe images."""
    rows = similarity.filter(kind="transfer", measure="transfer_accuracy")
    rows = rows.filter(pl.col("epoch_a") == pl.col("epoch_a").max().over(["model_a", "model_b"]))
    rows = rows.filter(pl.col("epoch_b") == pl.col("epoch_b").max().over(["model_a", "model_b"]))
    lower, upper = uncertainty.wilson_bounds(pl.col("value"), pl.col("n_examples"))
    return rows.select(
        pl.col("model_a").alias("trial"), pl.col("model_b").alias("target"), pl.col("epoch_a").alias("epoch"),
        "value", lower.alias("lower"), upper.alias("upper"),
    ).unique(subset=["trial", "target"], keep="first", maintain_order=True)


# -- the table -----------------------------------------------------------------------------------------------
def summarize(
    similarity: pl.DataFrame, metrics: pl.DataFrame, threshold: float = CONVERGENCE_THRESHOLD
) -> pl.DataFrame:
    """Every statistic of this module for every trial that has the rows, and for every configuration the mean
    over its seeds (``scope`` "config"), as a frame with `SUMMARY_SCHEMA`.

    Trials missing from ``metrics`` keep their statistics, with null parameters and their id as label."""
    info = trial_info(metrics) if not metrics.is_empty() else None
    params = {row["trial"]: row for row in info.to_dicts()} if info is not None else {}
    experiment = metrics["experiment"].unique().to_list()
    experiment = experiment[0] if len(experiment) == 1 else None
    rows: list[dict] = []

    def add(statistic: str, trial: str, estimate: Estimate, **fields) -> None:
        known = params.get(trial, {})
        rows.append(
            {column: known.get(column) for column in TRIAL_COLUMNS}
            | {
                "statistic": statistic,
                "scope": "trial",
                "experiment": experiment,
                "trial": trial,
                "label": known.get("label", trial),
                "config": known.get("config", trial),
                "value": estimate.value,
                "lower": estimate.lower,
                "upper": estimate.upper,
                "interval": estimate.method if estimate.has_interval else None,
                "seeds": 1,
            }
            | fields
        )

    for row in block_structure(similarity).iter_rows(named=True):
        for name in ("block_structure", "cka_neighbours", "cka_far"):
            estimate = Estimate(row[name], row[f"{name}_lower"], row[f"{name}_upper"], "jackknife")
            add(name, row["trial"], estimate, epoch=row["epoch"])
    for row in convergence_epochs(similarity, threshold).iter_rows(named=True):
        estimate = Estimate(float(row["convergence_epoch"]), _float(row["earliest"]), _float(row["latest"]),
                            "threshold_band")
        add("convergence_epoch", row["trial"], estimate, epoch=row["final_epoch"], layer=row["layer"],
            name=row["name"], type=row["type"], block=row["block"], threshold=threshold)
    if not metrics.is_empty():
        for trial, (best, gap) in best_last_gaps(metrics).items():
            add("best_last_gap", trial, gap, epoch=best)
    for row in transfer_accuracies(similarity).iter_rows(named=True):
        estimate = Estimate(row["value"], row["lower"], row["upper"], "wilson")
        add("transfer_accuracy", row["trial"], estimate, epoch=row["epoch"], target=row["target"],
            target_config=params.get(row["target"], {}).get("config", row["target"]))
    if not rows:
        return pl.from_arrow(SUMMARY_SCHEMA.empty_table())
    rows += _config_rows(rows, metrics)
    order = {name: i for i, name in enumerate(STATISTICS)}
    rows.sort(key=lambda r: (order[r["statistic"]], r["scope"] != "trial", r["config"] or "", r.get("trial") or "",
                             -1 if r.get("layer") is None else r["layer"], r.get("target_config") or "",
                             r.get("target") or ""))
    return pl.from_arrow(pa.Table.from_pylist(rows, schema=SUMMARY_SCHEMA))


def _config_rows(rows: list[dict], metrics: pl.DataFrame) -> list[dict]:
    """One row per statistic x configuration (x layer, x target configuration): the mean over its trials."""
    keys = ("statistic", "config", "layer", "target_config")
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        groups.setdefault(tuple(row.get(k) for k in keys), []).append(row)
    shared = ("dataset", "arch", "depth", "width", "method", "threat_model", "eps", "experiment", "name", "type",
              "block", "threshold")
    out = []
    for (statistic, config, layer, target_config), members in groups.items():
        if statistic == "best_last_gap" and len(members) > 1:
            estimate = _gap_over_seeds(metrics.filter(pl.col("trial").is_in([m["trial"] for m in members])))
        else:
            estimate = uncertainty.over_seeds(
                [Estimate(m["value"], m["lower"], m["upper"], m["interval"]) for m in members],
                bounds=_bounds(statistic, members),
            )
        first = members[0]
        epochs = {m["epoch"] for m in members}
        out.append(
            {column: first.get(column) for column in shared}
            | {
                "statistic": statistic,
                "scope": "config",
                "label": config,
                "config": config,
                "epoch": epochs.pop() if len(epochs) == 1 else None,
                "layer": layer,
                "target_config": target_config,
                "value": estimate.value,
                "lower": estimate.lower,
                "upper": estimate.upper,
                "interval": estimate.method if estimate.has_interval else None,
                "seeds": len(members),
            }
        )
    return out


def _bounds(statistic: str, members: list[dict]) -> tuple[float, float]:
    """The range ``statistic`` lives in (a t interval over seeds is clipped to it): an epoch between the first and
    the final one, an accuracy in [0, 1], a CKA difference in [-2, 2]."""
    if statistic == "convergence_epoch":
        return 1.0, float(max(m["epoch"] for m in members))
    if statistic == "transfer_accuracy":
        return 0.0, 1.0
    return -2.0, 2.0


def _gap_over_seeds(metrics: pl.DataFrame) -> Estimate:
    """The best-vs-last gap of the seeds' mean test robust accuracy curve (see `_best_minus_last`)."""
    curves = [rows.sort("epoch") for _, rows in metrics.drop_nulls("test_robust_acc").group_by("trial")]
    return _best_minus_last(
        [c["test_robust_acc"].to_list() for c in curves], [c["test_examples"].to_list() for c in curves]
    )


def _float(value: int | None) -> float | None:
    return None if value is None else float(value)


def write_summary(storage: Storage, summary: pl.DataFrame) -> str:
    """Write ``summary`` (`SUMMARY_SCHEMA`) atomically to `SUMMARY` under ``storage``; returns the path."""
    storage.write_table(SUMMARY, summary.to_arrow().cast(SUMMARY_SCHEMA))
    return storage.full_path(SUMMARY)


def configurations(summary: pl.DataFrame, statistic: str) -> pl.DataFrame:
    """The ``scope`` "config" rows of ``statistic``: one per configuration (per layer, per target)."""
    return summary.filter(statistic=statistic, scope="config")


# -- charts -------------------------------------------------------------------------------------------------
def block_structure_chart(summary: pl.DataFrame) -> alt.FacetChart:
    """Block-structure score against training ε (x, standard at 0), one line per width, one panel per robust
    training method (the standard models appear in each): mean over seeds, error bar = its 95% interval."""
    scores = configurations(summary, "block_structure").drop_nulls("eps")
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
        "config",
        "eps",
        "eps_label",
        "width_label",
        "value",
        "lower",
        "upper",
        "seeds",
        "interval",
    )
    base = alt.Chart().encode(
        x=alt.X("eps_label:O", sort=eps_order, title="training ε", axis=alt.Axis(labelAngle=0)),
        color=alt.Color("width_label:N", sort=widths, title="width"),
    )
    line = base.mark_line(point=True).encode(
        y=alt.Y("value:Q", title="block-structure score"),
        tooltip=[
            alt.Tooltip("config:N", title="model"),
            alt.Tooltip("value:Q", format=".3f", title="score (mean over seeds)"),
            alt.Tooltip("lower:Q", format=".3f", title="95% interval from"),
            alt.Tooltip("upper:Q", format=".3f", title="95% interval to"),
            alt.Tooltip("seeds:Q", title="seeds"),
        ],
    )
    bars = base.mark_rule().encode(y="lower:Q", y2="upper:Q")
    return (
        alt.layer(bars, line, data=chart_data(data))
        .properties(width=220, height=180)
        .facet(column=alt.Column("panel:N", title=None, header=alt.Header(labelExpr=FACET_LABEL, labelFontSize=12)))
        .resolve_scale(x="independent")  # each method's own ε values
    )


def convergence_chart(summary: pl.DataFrame) -> alt.TopLevelMixin:
    """Convergence epoch (y) per layer (x, network order, named by block), one line per configuration: mean
    over seeds, error bar = its range (`convergence_epochs`; over seeds, `analysis.uncertainty.over_seeds`).
    The layer-type dropdown filters the layers."""
    epochs = configurations(summary, "convergence_epoch")
    if epochs.is_empty():
        raise NoData(
            "the convergence epoch needs a cross_epoch comparison against the final epoch; add `- kind: cross_epoch` to `compare:`"
        )
    threshold = epochs["threshold"].max()
    data = epochs.select(
        "config",
        pl.col("layer").alias("layer_a"),
        pl.col("name").alias("name_a"),
        pl.col("type").alias("type_a"),
        pl.col("block").alias("block_a"),
        "value",
        "lower",
        "upper",
        "seeds",
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
        y=alt.Y("value:Q", title=f"epoch CKA to final stays ≥ {threshold:g}"),
        tooltip=[
            "config:N",
            "name_a:N",
            "type_a:N",
            alt.Tooltip("value:Q", format=".1f", title="epoch (mean over seeds)"),
            alt.Tooltip("lower:Q", format=".1f", title="earliest the 95% intervals allow"),
            alt.Tooltip("upper:Q", format=".1f", title="latest the 95% intervals allow"),
            alt.Tooltip("seeds:Q", title="seeds"),
        ],
    )
    bars = base.mark_rule(opacity=0.5).encode(y="lower:Q", y2="upper:Q")
    return with_layer_dropdown(
        alt.layer(bars, line, data=chart_data(data))
        .transform_filter(layer_type_filter("type_a"))
        .properties(width=480, height=200)
    )


# -- the page's first table --------------------------------------------------------------------------------
def block_structure_by_config(summary: pl.DataFrame) -> pl.DataFrame:
    """``config, dataset, eps, width, method, threat_model, mean, lower, upper, seeds`` of the block-structure
    score (``mean``: over seeds, with its 95% interval); standard first, then by ε."""
    return (
        configurations(summary, "block_structure")
        .select(
            "config", "dataset", "eps", "width", "method", "threat_model",
            pl.col("value").alias("mean"), "lower", "upper", "seeds",
        )
        .sort(["dataset", "eps", "method", "width", "config"], nulls_last=True)
    )


def convergence_by_block(summary: pl.DataFrame) -> pl.DataFrame:
    """``config, block, mean, lower, upper`` of the convergence epoch: its mean over the block's layers (of the
    means over seeds), and the means of the layers' bounds, the block's range; configurations by ε, blocks in
    network order."""
    epochs = configurations(summary, "convergence_epoch")
    return (
        epochs.group_by("config", "block", maintain_order=True)
        .agg(
            pl.col("value").mean().alias("mean"),
            pl.col("lower").mean().alias("lower"),
            pl.col("upper").mean().alias("upper"),
            pl.col("lower").is_null().any().alias("incomplete"),
            pl.col("layer").min().alias("first"),
            pl.col("eps").first(),
            pl.col("method").first(),
        )
        .with_columns(
            lower=pl.when("incomplete").then(None).otherwise("lower"),
            upper=pl.when("incomplete").then(None).otherwise("upper"),
        )
        .sort(["eps", "method", "config", "first"], nulls_last=True)
        .drop("first", "eps", "method", "incomplete")
    )


def summary_html(summary: pl.DataFrame) -> str:
    """The summary's numbers as HTML tables with their 95% intervals (block-structure score per configuration;
    convergence epoch per configuration x block); an empty string when there are none."""
    parts = []
    scores = block_structure_by_config(summary)
    if not scores.is_empty():
        rows = "".join(
            f"<tr><td>{html.escape(r['dataset'] or '')}</td><td>{html.escape(r['config'])}</td>"
            f"<td>{r['mean']:.3f}</td><td>{_interval(r['lower'], r['upper'], '.3f')}</td><td>{r['seeds']}</td></tr>"
            for r in scores.iter_rows(named=True)
        )
        parts.append(
            '<table class="numbers"><caption>Block-structure score: mean CKA of neighbouring layers − mean CKA of '
            "layers more than L/3 apart (benign cross-layer CKA, last epoch); 95% interval from the probe images' "
            "jackknife, and over seeds where there are several</caption>"
            "<thead><tr><th>dataset</th><th>model</th><th>score</th><th>95% interval</th><th>seeds</th></tr></thead>"
            f"<tbody>{rows}</tbody></table>"
        )
    epochs = convergence_by_block(summary)
    if not epochs.is_empty():
        threshold = summary.filter(statistic="convergence_epoch")["threshold"].max()
        blocks = epochs.sort("block")["block"].unique(maintain_order=True).to_list()
        blocks = sorted(blocks, key=lambda b: (b != "stem", b == "head", b))
        cells = {(r["config"], r["block"]): r for r in epochs.iter_rows(named=True)}
        configs = epochs["config"].unique(maintain_order=True).to_list()
        body = "".join(
            f"<tr><td>{html.escape(c)}</td>"
            + "".join(
                f"<td>{cells[c, b]['mean']:.1f} {_interval(cells[c, b]['lower'], cells[c, b]['upper'], '.1f')}</td>"
                if (c, b) in cells
                else "<td>–</td>"
                for b in blocks
            )
            + "</tr>"
            for c in configs
        )
        parts.append(
            f'<table class="numbers"><caption>Convergence epoch: first epoch from which benign CKA to the final epoch '
            f"stays ≥ {threshold:g} (mean over a block's layers and seeds); in brackets the earliest and latest "
            "epochs that the CKA values' 95% intervals allow</caption>"
            "<thead><tr><th>model</th>" + "".join(f"<th>{html.escape(b)}</th>" for b in blocks) + "</tr></thead>"
            f"<tbody>{body}</tbody></table>"
        )
    return "\n".join(parts)


def _threat_suffix(threat_model: str | None) -> str:
    return "" if threat_model in (None, "linf") else f" {threat_model_name(threat_model)}"


def _interval(lower: float | None, upper: float | None, spec: str) -> str:
    """"[0.380, 0.444]", or "–" where the results hold no uncertainty."""
    if lower is None or upper is None or math.isnan(lower) or math.isnan(upper):
        return "–"
    return f"[{lower:{spec}}, {upper:{spec}}]"
