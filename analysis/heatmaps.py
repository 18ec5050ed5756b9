"""Layer x layer CKA heatmaps: within a network (paper Figs 2a-c, 3) and between two networks (Figs 2d, 7).

A non-robust network shows a "block structure" (bright squares along the diagonal, dark elsewhere); robust
training washes it out, with long-range similarity between distant layers (Section 3, Figure 2), more so as
the training ε grows and hardly depending on width (Figure 3). Non-robust and robust networks share little
(Fig 2d); between threat models, the ℓp ones are alike and Snow is closest to Gabor (Fig 7).

Every figure here is Polars rows in (`rayrs.schema.SIMILARITY_SCHEMA`, plus ``metrics.parquet`` for the
trials' parameters), Altair out; cells are averaged over seeds, and each raises `NoData` saying what to add
to the sweep when its rows are absent. The heatmaps stay plain; a cell's hover shows its 95% interval (the
jackknife's for one trial, `analysis.uncertainty.over_seeds_frame`'s over seeds), where the rows carry one.
"""

from __future__ import annotations

import altair as alt
import polars as pl

from analysis.layers import layer_axis, layer_table, layer_type_filter, with_layer_dropdown
from analysis.load import (
    BENIGN,
    FACET_LABEL,
    NoData,
    attach_trials,
    chart_data,
    facet_key,
    format_eps,
    last_epoch,
    threat_model_name,
)
from analysis.uncertainty import over_seeds_frame, with_bounds

PANEL_SIZE = 150  # pixels; square panels, so a sweep's heatmaps compare at a glance
PANELS_PER_ROW = 5
COLOR_SCHEME = "magma"  # perceptually uniform, dark = dissimilar, bright = similar as in the paper's plots

_PAIR_COLUMNS = ["layer_a", "layer_b", "name_a", "name_b", "type_a", "type_b", "value", "lower", "upper"]
_TOOLTIP = [
    alt.Tooltip("name_a:N", title="layer (x)"),
    alt.Tooltip("type_a:N", title="type (x)"),
    alt.Tooltip("name_b:N", title="layer (y)"),
    alt.Tooltip("type_b:N", title="type (y)"),
    alt.Tooltip("value:Q", title="CKA", format=".3f"),
    alt.Tooltip("lower:Q", title="95% interval from", format=".3f"),
    alt.Tooltip("upper:Q", title="95% interval to", format=".3f"),
]


def cross_layer_heatmap(
    cells: pl.DataFrame,
    *,
    panel: str | None = None,
    panel_order: list[str] | None = None,
    row: str | None = None,
    row_order: list[str] | None = None,
    title: str | alt.Title | None = None,
    x_title: str = "layer",
    y_title: str = "layer",
) -> alt.Chart | alt.FacetChart:
    """Heatmaps of layer pairs: x = side a's layer, y = side b's, colour = CKA on a fixed [0, 1] scale.

    ``cells``: one row per layer pair and panel (``layer_a, layer_b, name_a, name_b, type_a, type_b, value``,
    optionally its 95% interval ``lower``, ``upper`` shown on hover, and the ``panel`` / ``row`` columns). Layers are in network order, layer 0 at the bottom-left as in the
    paper, axes named by block; the layer-type dropdown (`analysis.layers`) filters both sides. With ``panel``
    (and ``row``) the panels are facets: ``panel`` columns in ``panel_order``, ``row`` rows in ``row_order``
    (data rows carry ``column_key`` / ``row_key``: the position and the label, e.g. "001|PGD-AT ε=8/255").
    The dropdown's parameter is added by the caller, once, at the top level (`analysis.layers.with_layer_dropdown`).
    """
    if cells.is_empty():
        raise NoData(f"{title or 'heatmap'}: no layer pairs to draw")
    keys = [c for c in (row, panel) if c is not None]
    cells = cells.with_columns(
        pl.lit(None, dtype=pl.Float64).alias(name) for name in ("lower", "upper") if name not in cells.columns
    )
    data = cells.select(*keys, *_PAIR_COLUMNS)
    facets = {}
    for channel, field, order in (("row", row, row_order), ("column", panel, panel_order)):
        if field is not None:
            data = data.with_columns(facet_key(data[field], order).alias(f"{channel}_key"))
            facets[channel] = f"{channel}_key"
    data = data.sort([*facets.values(), "layer_a", "layer_b"])
    chart = (
        alt.Chart(chart_data(data))
        .mark_rect()
        .encode(
            x=alt.X("layer_a:O", sort="ascending", axis=layer_axis(layer_table(data, "a"), x_title)),
            # Descending, so that the first layer is at the bottom: the top of an ordinal y axis is its start.
            y=alt.Y("layer_b:O", sort="descending", axis=layer_axis(layer_table(data, "b"), y_title, horizontal=False)),
            color=alt.Color(
                "value:Q",
                title="CKA",
                # Fixed domain so panels compare; unbiased CKA can stray just outside [0, 1], hence clamp.
                scale=alt.Scale(domain=[0, 1], scheme=COLOR_SCHEME, clamp=True),
            ),
            tooltip=[*(alt.Tooltip(f"{k}:N", title=k.removesuffix("_a")) for k in keys), *_TOOLTIP],
        )
        .transform_filter(layer_type_filter("type_a", "type_b"))
        .properties(width=PANEL_SIZE, height=PANEL_SIZE)
    )
    if not facets:
        return chart.properties(title=title) if title is not None else chart
    # Panels are sorted by their keys ("003|PGD-AT ε=8/255"; see `facet_key`) and headed by the label.
    encodings = {
        "column": alt.Column(
            "column_key:N",
            title=None,
            header=alt.Header(labelExpr=FACET_LABEL, labelFontSize=12, labelLimit=2 * PANEL_SIZE),
        )
    }
    if "row" in facets:
        encodings["row"] = alt.Row(
            "row_key:N",
            title=None,
            header=alt.Header(labelExpr=FACET_LABEL, labelFontSize=12, labelAngle=0, labelAlign="left"),
        )
    faceted = chart.facet(**encodings, spacing=12)
    return faceted.properties(title=title) if title is not None else faceted


# -- Fig 2 a-c -------------------------------------------------------------------------------------------
def fig2_cross_layer(similarity: pl.DataFrame, metrics: pl.DataFrame) -> alt.TopLevelMixin:
    """Fig 2 (a-c): per dataset, the benign cross-layer heatmap of each configuration side by side, non-robust
    first, then robust by ε; one row of panels per dataset, cells averaged over seeds at each trial's last epoch.

    Per dataset the panels are one model family: the threat model, architecture and width holding both
    non-robust and robust trials (ℓ∞ and the widest first, as the paper's WRN-28-10); Fig 3 shows the rest.
    """
    rows = _benign_cross_layer(similarity, "Fig 2")
    rows = attach_trials(_symmetric(last_epoch(rows)), metrics, sides="a")
    charts = []
    for (dataset,), group in rows.group_by(["dataset_a"], maintain_order=True):
        family = _main_family(group)
        cells = _mean_over_seeds(family, ["config_a", "config_order_a"])
        order = cells.sort("config_order_a")["config_a"].unique(maintain_order=True).to_list()
        first = family.row(0, named=True)
        subtitle = f"{first['arch_a'] or ''}-{first['depth_a'] or ''}-{first['width_a'] or ''}, " + threat_model_name(
            first["threat_model_a"]
        )
        charts.append(
            cross_layer_heatmap(
                cells,
                panel="config_a",
                panel_order=order,
                title=alt.Title(
                    str(dataset or "trials missing from metrics.parquet"), subtitle=subtitle, anchor="start"
                ),
            )
        )
    return with_layer_dropdown(charts[0] if len(charts) == 1 else alt.vconcat(*charts).resolve_scale(color="shared"))


# -- Fig 2 d -------------------------------------------------------------------------------------------
def fig2d_cross_model(similarity: pl.DataFrame, metrics: pl.DataFrame) -> alt.TopLevelMixin:
    """Fig 2d: a non-robust model's layers (x) against a robust model's (y), benign probes, one panel per pair
    of configurations (averaged over the pairs of seeds), one row of panels per dataset."""
    rows = similarity.filter(kind="cross_model", measure="cka", probe_a=BENIGN, probe_b=BENIGN)
    if rows.is_empty():
        raise NoData("Fig 2d needs a cross_model comparison; add `- kind: cross_model` to `compare:`")
    rows = attach_trials(_last_pair_epoch(rows), metrics)
    rows = rows.filter(
        pl.col("robust_a").is_not_null() & pl.col("robust_b").is_not_null() & (pl.col("robust_a") != pl.col("robust_b"))
    )
    if rows.is_empty():
        raise NoData(
            "Fig 2d needs a cross_model comparison between a non-robust and a robust model; "
            "add `- kind: cross_model` to `compare:` and both `eps: 0` and a robust eps to `grid:`"
        )
    rows = _orient(_same_setup(rows), first=~pl.col("robust_a"))  # side a: the non-robust model
    rows = rows.with_columns(
        pair=pl.col("config_a") + " vs " + pl.col("config_b"),
        pair_order=pl.col("config_order_a") * 1000 + pl.col("config_order_b"),
    )
    charts = []
    for (dataset,), group in rows.group_by(["dataset_a"], maintain_order=True):
        cells = _mean_over_seeds(group, ["pair", "pair_order"])
        order = cells.sort("pair_order")["pair"].unique(maintain_order=True).to_list()
        charts.append(
            cross_layer_heatmap(
                cells,
                panel="pair",
                panel_order=order,
                title=alt.Title(str(dataset), anchor="start"),
                x_title="non-robust model's layer",
                y_title="robust model's layer",
            )
        )
    return with_layer_dropdown(charts[0] if len(charts) == 1 else alt.vconcat(*charts))


# -- Fig 3 ---------------------------------------------------------------------------------------------
def fig3_eps_width(similarity: pl.DataFrame, metrics: pl.DataFrame) -> alt.TopLevelMixin:
    """Fig 3: a grid of benign cross-layer heatmaps, rows = training (standard, then by ε), columns = width,
    cells averaged over seeds; one grid per dataset, architecture and threat model that varies ε or width."""
    rows = attach_trials(_symmetric(last_epoch(_benign_cross_layer(similarity, "Fig 3"))), metrics, sides="a")
    rows = rows.filter(pl.col("width_a").is_not_null())
    grids = []
    for (dataset, arch, depth, threat_model), group in rows.group_by(
        ["dataset_a", "arch_a", "depth_a", "threat_model_a"], maintain_order=True
    ):
        if group["training_a"].n_unique() < 2 and group["width_a"].n_unique() < 2:
            continue
        group = group.with_columns(column=pl.lit("width ") + pl.col("width_a").cast(pl.String))
        cells = _mean_over_seeds(group, ["training_a", "column", "width_a", "robust_a", "eps_a", "method_a"])
        row_order = cells.sort(["robust_a", "eps_a", "method_a"])["training_a"].unique(maintain_order=True).to_list()
        column_order = cells.sort("width_a")["column"].unique(maintain_order=True).to_list()
        title = alt.Title(f"{dataset} · {arch}-{depth} · {threat_model_name(threat_model)}", anchor="start")
        grids.append(
            cross_layer_heatmap(
                cells, panel="column", panel_order=column_order, row="training_a", row_order=row_order, title=title
            )
        )
    if not grids:
        raise NoData(
            "Fig 3 needs cross_layer comparisons of trials at 2+ training eps or 2+ widths; "
            "add e.g. `eps: [0, 2/255, 8/255]` and `width: [1, 2, 4]` to `grid:`"
        )
    return with_layer_dropdown(grids[0] if len(grids) == 1 else alt.vconcat(*grids))


# -- Fig 7 ---------------------------------------------------------------------------------------------
REFERENCE_THREAT_MODELS = ("linf", "snow")  # Fig 7's top row: every threat model vs ℓ∞; bottom row: vs Snow


def fig7_threat_models(similarity: pl.DataFrame, metrics: pl.DataFrame) -> alt.TopLevelMixin:
    """Fig 7: cross-model heatmaps between robust models of different threat models (from each trial's
    ``threat_model``): top row each vs ℓ∞, bottom row each vs Snow; y = the reference model's layers.

    A panel is named by the other model's threat model and ε, averaged over all pairs of such models.
    """
    rows = similarity.filter(kind="cross_model", measure="cka", probe_a=BENIGN, probe_b=BENIGN)
    if rows.is_empty():
        raise NoData("Fig 7 needs a cross_model comparison; add `- kind: cross_model` to `compare:`")
    rows = _same_setup(attach_trials(_last_pair_epoch(rows), metrics).filter(pl.col("robust_a") & pl.col("robust_b")))
    references = [r for r in REFERENCE_THREAT_MODELS if r in set(rows["threat_model_a"]) | set(rows["threat_model_b"])]
    models = set(rows["threat_model_a"]) | set(rows["threat_model_b"])
    if not references or len(models) < 2:
        raise NoData(
            "Fig 7 needs cross_model comparisons between robust models of different threat models, one of them "
            "linf or snow; add `- kind: cross_model` to `compare:` and e.g. `threat_model: [linf, l2, snow]` to `grid:`"
        )
    panels = []
    for reference in references:
        involved = rows.filter((pl.col("threat_model_a") == reference) | (pl.col("threat_model_b") == reference))
        oriented = _orient(involved, first=pl.col("threat_model_a") != reference)  # side b (y): the reference
        panels.append(
            oriented.with_columns(
                reference=pl.struct("threat_model_b", "eps_b").map_elements(
                    lambda m: "vs " + _threat_label(m["threat_model_b"], m["eps_b"]), return_dtype=pl.String
                ),
                reference_order=pl.lit(REFERENCE_THREAT_MODELS.index(reference)),
                other=pl.struct("threat_model_a", "eps_a").map_elements(
                    lambda m: _threat_label(m["threat_model_a"], m["eps_a"]), return_dtype=pl.String
                ),
            )
        )
    cells = _mean_over_seeds(
        pl.concat(panels, how="diagonal_relaxed"),
        ["reference", "reference_order", "eps_b", "other", "threat_model_a", "eps_a"],
    )
    known = ["linf", "l2", "jpeg", "gabor", "snow"]  # ℓp first, as the paper orders them
    column_order = (
        cells.with_columns(
            rank=pl.col("threat_model_a").map_elements(
                lambda t: known.index(t) if t in known else len(known), return_dtype=pl.Int64
            )
        )
        .sort(["rank", "eps_a"])["other"]
        .unique(maintain_order=True)
        .to_list()
    )
    row_order = cells.sort(["reference_order", "eps_b"])["reference"].unique(maintain_order=True).to_list()
    chart = cross_layer_heatmap(
        cells,
        panel="other",
        panel_order=column_order,
        row="reference",
        row_order=row_order,
        x_title="other model's layer",
        y_title="reference model's layer",
    )
    return with_layer_dropdown(chart)


# -- shared steps --------------------------------------------------------------------------------------
def _benign_cross_layer(similarity: pl.DataFrame, figure: str) -> pl.DataFrame:
    rows = similarity.filter(kind="cross_layer", measure="cka")
    if rows.is_empty():
        raise NoData(
            f"{figure} needs a cross_layer comparison; add `- kind: cross_layer` to `compare:` (no cross_layer rows in similarity/)"
        )
    rows = rows.filter(probe_a=BENIGN, probe_b=BENIGN).filter(pl.col("model_a") == pl.col("model_b"))
    if rows.is_empty():
        raise NoData(f"{figure} needs cross_layer rows on benign probes in similarity/ (only adversarial ones found)")
    return rows


def _same_setup(rows: pl.DataFrame) -> pl.DataFrame:
    """The pairs of models with identical setups but for training (dataset, architecture, depth, width), as the
    paper compares them; every pair when no pair is identical (``pairs: all`` also pairs different widths)."""
    same = pl.all_horizontal(
        pl.col(f"{c}_a").eq_missing(pl.col(f"{c}_b")) for c in ("dataset", "arch", "depth", "width")
    )
    identical = rows.filter(same)
    return identical if not identical.is_empty() else rows


def _main_family(rows: pl.DataFrame) -> pl.DataFrame:
    """The rows of the model family Fig 2 shows for one dataset (see `fig2_cross_layer`)."""
    family = ["threat_model_a", "arch_a", "depth_a", "width_a"]
    ranked = (
        rows.group_by(family)
        .agg(
            both=pl.col("robust_a").n_unique() == 2,
            linf=(pl.col("threat_model_a") == "linf").all(),
            configs=pl.col("config_a").n_unique(),
        )
        .sort(["both", "linf", "width_a", "configs"], descending=True, nulls_last=True)
    )
    best = ranked.row(0, named=True)
    # Non-robust trials of a family are trained "in" its threat model only nominally: any threat model will do.
    same = pl.all_horizontal(pl.col(c).eq_missing(best[c]) for c in family[1:])
    return rows.filter(
        same & ((pl.col("threat_model_a").eq_missing(best["threat_model_a"])) | ~pl.col("robust_a").fill_null(True))
    )


def _mean_over_seeds(rows: pl.DataFrame, keys: list[str]) -> pl.DataFrame:
    """One cell per ``keys`` x layer pair: the mean CKA over the trials (seeds) that share them with its 95%
    interval (``lower``, ``upper``: `analysis.uncertainty.over_seeds_frame`); ``n`` counts them."""
    return over_seeds_frame(
        with_bounds(rows),
        [*keys, "layer_a", "layer_b"],
        bounds=(-1.0, 1.0),
        first=["name_a", "name_b", "type_a", "type_b"],
    ).rename({"seeds": "n"})


def _symmetric(rows: pl.DataFrame) -> pl.DataFrame:
    """Within-model rows with each (i, j) also present as (j, i): CKA of a model with itself is symmetric.

    A pair stored both ways is kept once (the stored (i, j) wins).
    """
    swapped = _swap(rows)
    keys = ["model_a", "epoch_a", "probe_a", "model_b", "epoch_b", "probe_b", "measure", "layer_a", "layer_b"]
    return pl.concat([rows, swapped]).unique(subset=keys, keep="first", maintain_order=True)


def _swap(rows: pl.DataFrame) -> pl.DataFrame:
    """``rows`` with sides a and b exchanged (every ``*_a`` column renamed ``*_b`` and back)."""
    mapping = {}
    for column in rows.columns:
        if column.endswith("_a"):
            mapping[column] = column[:-2] + "_b"
        elif column.endswith("_b"):
            mapping[column] = column[:-2] + "_a"
    return rows.rename(mapping).select(rows.columns)


def _orient(rows: pl.DataFrame, first: pl.Expr) -> pl.DataFrame:
    """``rows`` with sides swapped where ``first`` is false, so that side a is the one ``first`` picks."""
    keep = rows.filter(first.fill_null(False))
    return pl.concat([keep, _swap(rows.filter(~first.fill_null(False)))])


def _last_pair_epoch(rows: pl.DataFrame) -> pl.DataFrame:
    """The rows of each pair of models at the latest pair of epochs compared."""
    latest = pl.col("epoch_a").max().over(["model_a", "model_b"])
    rows = rows.filter(pl.col("epoch_a") == latest)
    return rows.filter(pl.col("epoch_b") == pl.col("epoch_b").max().over(["model_a", "model_b"]))


def _threat_label(threat_model: str | None, eps: float | None) -> str:
    return threat_model_name(threat_model) + (f" ε={format_eps(eps)}" if eps is not None else "")
