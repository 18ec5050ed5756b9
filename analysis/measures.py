"""CKA against Procrustes and SVCCA (paper App. B.1): do the measures agree, and what does each cost?

The paper finds the three measures give similar high-level insights, CKA being 10x faster than Procrustes
and 30x faster than SVCCA. Agreement here is the Spearman rank correlation of the measures over the same
layer pairs (Procrustes is often reported as a distance: then agreement shows as ρ near -1, not +1).
"""

from __future__ import annotations

import altair as alt
import polars as pl

from analysis.load import BENIGN, NoData, chart_data

MEASURES = ["cka", "procrustes", "svcca", "svcca_variance"]
MEASURE_NAMES = {"cka": "CKA", "procrustes": "Procrustes", "svcca": "SVCCA", "svcca_variance": "SVCCA (99% variance)"}
# rayrs.similarity.measures stores Procrustes as a distance (0 = same): agreeing with CKA means ρ near -1.
MEASURE_NOTES = {"procrustes": " (a distance: agreement is ρ near −1)"}
PAIR_KEYS = ["kind", "model_a", "epoch_a", "probe_a", "model_b", "epoch_b", "probe_b", "layer_a", "layer_b"]
SCATTER_SIZE = 220


def measure_pairs(similarity: pl.DataFrame) -> pl.DataFrame:
    """One row per layer pair measured with CKA and at least one other measure: `PAIR_KEYS`, then a column
    per measure of `MEASURES` that has rows (null where that pair was not measured with it)."""
    rows = similarity.filter(pl.col("measure").is_in(MEASURES) & (pl.col("layer_a") >= 0))
    present = [m for m in MEASURES if m in set(rows["measure"])]
    if "cka" not in present or len(present) < 2:
        raise NoData(
            "App B.1 needs the same comparison measured with procrustes or svcca as well as cka "
            f"(found: {', '.join(present) or 'none'}); add `measures: [cka, procrustes, svcca]` to a comparison in `compare:`"
        )
    wide = rows.pivot(on="measure", index=PAIR_KEYS, values="value", aggregate_function="mean")
    others = [m for m in present if m != "cka"]
    return wide.filter(pl.col("cka").is_not_null() & pl.any_horizontal(pl.col(m).is_not_null() for m in others)).select(
        *PAIR_KEYS, *present
    )


def rank_agreement(pairs: pl.DataFrame) -> dict[str, tuple[float, int]]:
    """measure -> (Spearman ρ between CKA and that measure over the pairs measured with both, number of pairs)."""
    result = {}
    for measure in pairs.columns:
        if measure in MEASURES and measure != "cka":
            both = pairs.drop_nulls(["cka", measure])
            rho = both.select(pl.corr("cka", measure, method="spearman")).item() if both.height > 1 else None
            result[measure] = (float(rho) if rho is not None else float("nan"), both.height)
    return result


def appb1_agreement(similarity: pl.DataFrame, metrics: pl.DataFrame) -> alt.HConcatChart:
    """App B.1: one scatter per other measure, x = CKA and y = that measure over the same layer pairs (colour:
    comparison kind), titled with the Spearman rank correlation ρ and the number of pairs."""
    pairs = measure_pairs(similarity)
    panels = []
    for measure, (rho, n) in rank_agreement(pairs).items():
        data = pairs.drop_nulls(["cka", measure]).select(
            "kind", "model_a", "model_b", "layer_a", "layer_b", "cka", pl.col(measure).alias("other")
        )
        panels.append(
            alt.Chart(
                chart_data(data),
                title=alt.Title(
                    f"CKA vs {MEASURE_NAMES[measure]}",
                    subtitle=f"Spearman ρ = {rho:.2f} over {n} layer pairs{MEASURE_NOTES.get(measure, '')}",
                ),
            )
            .mark_circle(size=14, opacity=0.5)
            .encode(
                x=alt.X("cka:Q", title="CKA"),
                y=alt.Y("other:Q", title=MEASURE_NAMES[measure]),
                color=alt.Color("kind:N", title="comparison"),
                tooltip=[
                    "kind:N",
                    "model_a:N",
                    "model_b:N",
                    "layer_a:Q",
                    "layer_b:Q",
                    alt.Tooltip("cka:Q", format=".3f"),
                    alt.Tooltip("other:Q", format=".3f", title=measure),
                ],
            )
            .properties(width=SCATTER_SIZE, height=SCATTER_SIZE)
        )
    return alt.hconcat(*panels)


def measure_costs(similarity: pl.DataFrame) -> pl.DataFrame:
    """Mean compute seconds per comparison job of each measure: columns ``measure``, ``seconds``, ``jobs``.

    Only comparisons made with several measures count (same kind, models and probe side), so every measure
    is timed on the same work. Needs the ``seconds`` column rayrs writes (`rayrs.schema.SECONDS_FIELD`).
    """
    if "seconds" not in similarity.columns or similarity["seconds"].is_null().all():
        raise NoData(
            "App B.1's cost comparison needs each comparison's compute time, the `seconds` column of the "
            "similarity/ files; these were written without it: rerun the comparisons (`rayrs sweep FILE --resume` "
            "after deleting similarity/)"
        )
    benign = (pl.col("probe_a") == BENIGN).cast(pl.String)
    comparison = pl.concat_str([pl.col("kind"), pl.col("model_a"), pl.col("model_b"), benign], separator="|")
    jobs = (
        similarity.filter(pl.col("measure").is_in(MEASURES))
        .drop_nulls("seconds")
        .group_by("kind", "measure", "job")  # a job id is unique within its kind's folder
        .agg(pl.col("seconds").max(), comparison.first().alias("comparison"))
    )
    shared = jobs.filter(pl.col("measure") != "cka")["comparison"].unique()
    if shared.is_empty():
        raise NoData("App B.1's cost needs a comparison with `measures: [cka, procrustes, svcca]` in the sweep file")
    return (
        jobs.filter(pl.col("comparison").is_in(shared.to_list()))
        .group_by("measure")
        .agg(pl.col("seconds").mean(), pl.len().alias("jobs"))
        .sort("measure")
    )


def appb1_cost(similarity: pl.DataFrame, metrics: pl.DataFrame) -> alt.LayerChart:
    """App B.1's cost: mean seconds per comparison job for each measure (`measure_costs`), labelled with its
    multiple of CKA's."""
    jobs = measure_costs(similarity)
    cka = jobs.filter(measure="cka")["seconds"]
    jobs = jobs.with_columns(
        name=pl.col("measure").replace_strict(MEASURE_NAMES, return_dtype=pl.String),
        times=(pl.col("seconds") / cka.item()) if cka.len() == 1 and cka.item() > 0 else pl.lit(None, dtype=pl.Float64),
    ).with_columns(
        text=pl.when(pl.col("times").is_not_null())
        .then(pl.col("times").round(1).cast(pl.String) + "× CKA")
        .otherwise(pl.lit(""))
    )
    order = [MEASURE_NAMES[m] for m in MEASURES]
    base = alt.Chart(chart_data(jobs)).encode(
        x=alt.X("name:N", sort=order, title=None, axis=alt.Axis(labelAngle=0)),
        y=alt.Y("seconds:Q", title="seconds per comparison"),
        tooltip=["name:N", alt.Tooltip("seconds:Q", format=".2f"), "jobs:Q"],
    )
    return alt.layer(base.mark_bar(), base.mark_text(dy=-6).encode(text="text:N")).properties(width=240, height=200)
