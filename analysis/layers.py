"""Layers on a figure's axes: in network order, labelled by block, filterable by layer type.

A layer is an index in the model's execution order (``layer_*`` in `rayrs.schema`), its module path
(``name_*``, e.g. ``block2.0.conv1``) and its type (conv / bn / act / pool / linear, or block: a residual
block's output, named by the block, ``block2.0``, a ViT's ``blocks.3``; or named: a module selected by name).
Axes name blocks, not indices: a WRN-28 has ~100 layers, but only "stem", "block1", "block2", "block3" and
"head" are worth reading.
Every layer figure carries one dropdown, `LAYER_TYPE_PARAM`, that keeps only layers of one type (the paper's
heatmaps mix all types); a PNG is drawn with its default, "all".
"""

from __future__ import annotations

import re

import altair as alt
import polars as pl

# Every type a layer listing gives (`rayrs.models.comparable_layers`): the paper's five, ``block`` (a residual
# block's output) and ``named`` (a module selected by ``name:<glob>`` that has none of those types). Spelled
# out, not imported: rayrs.models imports torch, which `rayrs analyze` does without (tests/test_zoo.py checks
# that the two lists agree).
LAYER_TYPES = ["conv", "bn", "act", "pool", "linear", "block", "named"]
ALL = "all"
LAYER_TYPE_PARAM = "layer_type"

# A residual stage of a network: WRN's block1..3, torchvision ResNet's layer1..4. Anything before the first
# stage is the "stem", anything after the last the "head".
_STAGE = re.compile(r"^(block|layer|stage|group)\d+$")
# A stage held in a numbered container, as timm names them: a ViT's blocks.<i> (stage "block<i>", one a
# transformer block), a ConvNeXt's stages.<i>.blocks.<j> (stage "stage<i>"), a Swin's layers.<i>.
_NUMBERED_STAGE = re.compile(r"^(block|layer|stage|group)s\.(\d+)(\.|$)")


def layer_type_param() -> alt.Parameter:
    """The layer-type dropdown (``all`` or one of `LAYER_TYPES`), shared by every layer figure on the page."""
    return alt.param(
        name=LAYER_TYPE_PARAM,
        value=ALL,
        bind=alt.binding_select(options=[ALL, *LAYER_TYPES], name="layer type "),
    )


def with_layer_dropdown(chart: alt.TopLevelMixin) -> alt.TopLevelMixin:
    """``chart`` with the layer-type dropdown declared once, at its top level (where Vega-Lite wants a
    variable parameter). Set directly: Altair's ``add_params`` trips over facets inside a concatenation."""
    chart = chart.copy(deep=False)
    chart.params = [layer_type_param().param]
    return chart


def layer_type_filter(*type_columns: str) -> str:
    """A Vega expression keeping rows whose ``type_columns`` all match the dropdown (every row for "all")."""
    matches = " && ".join(f"datum.{column} == {LAYER_TYPE_PARAM}" for column in type_columns)
    return f"{LAYER_TYPE_PARAM} == '{ALL}' || ({matches})"


def block_of(names: list[str]) -> list[str]:
    """The block of each layer, for layer names in network order: its stage ("block2"), else "stem" / "head".

    ``["conv1", "block1.0.bn1", "block1.0.conv1", "block2.0.bn1", "bn", "fc"]`` ->
    ``["stem", "block1", "block1", "block2", "head", "head"]``; timm's numbered containers too: a ViT's
    ``["patch_embed.proj", "blocks.0", "blocks.11", "head"]`` -> ``["stem", "block0", "block11", "head"]``, a
    ConvNeXt's ``stages.2.blocks.5`` -> ``"stage2"``. A network without stages is one block, "network".
    """
    stages = [_stage(name) for name in names]
    if not any(stages):
        return ["network"] * len(names)
    seen_stage = False
    blocks = []
    for stage in stages:
        seen_stage = seen_stage or stage is not None
        blocks.append(stage if stage is not None else ("head" if seen_stage else "stem"))
    return blocks


def layer_table(rows: pl.DataFrame, side: str = "a") -> pl.DataFrame:
    """One row per layer of side ``side`` of ``rows``: ``layer``, ``name``, ``type``, ``block``, in network order.

    Layer -1 (the ``transfer_accuracy`` rows' "output") is not a layer and is left out.
    """
    layers = (
        rows.select(
            pl.col(f"layer_{side}").alias("layer"),
            pl.col(f"name_{side}").alias("name"),
            pl.col(f"type_{side}").alias("type"),
        )
        .filter(pl.col("layer") >= 0)
        .unique(subset="layer", keep="first")
        .sort("layer")
    )
    return layers.with_columns(pl.Series("block", block_of(layers["name"].to_list()), dtype=pl.String))


def with_blocks(rows: pl.DataFrame, sides: str = "ab") -> pl.DataFrame:
    """``rows`` with ``block_a`` / ``block_b``: the block of each side's layer (see `block_of`)."""
    for side in sides:
        blocks = layer_table(rows, side).select(
            pl.col("layer").alias(f"layer_{side}"), pl.col("block").alias(f"block_{side}")
        )
        rows = rows.join(blocks, on=f"layer_{side}", how="left")
    return rows


def block_label_expr(layers: pl.DataFrame) -> str:
    """A Vega ``labelExpr`` naming each block once, at its first layer shown.

    Which layer comes first in a block depends on the layer-type dropdown (a WRN block starts with a bn, its
    first conv comes two layers later), so the expression switches on `LAYER_TYPE_PARAM`. A block too small to
    hold its name (under `MIN_LABELLED_SHARE` of the layers shown, e.g. a one-conv stem) is left unnamed.
    """

    def mapping(subset: pl.DataFrame) -> str:
        starts = block_starts(subset)
        cases = "".join(f"datum.value == {layer} ? {_quote(block)} : " for block, layer in starts.iter_rows())
        return f"({cases}'')"

    expression = mapping(layers)
    for layer_type in reversed(LAYER_TYPES):
        subset = layers.filter(pl.col("type") == layer_type)
        if not subset.is_empty():
            expression = f"{LAYER_TYPE_PARAM} == {_quote(layer_type)} ? {mapping(subset)} : {expression}"
    return expression


MIN_LABELLED_SHARE = 0.08


def block_starts(layers: pl.DataFrame) -> pl.DataFrame:
    """``(block, layer)``: the first layer of each block of ``layers`` big enough to be named on an axis."""
    sizes = (
        layers.group_by("block", maintain_order=True).agg(pl.col("layer").min(), pl.len().alias("size")).sort("layer")
    )
    named = sizes.filter(pl.col("size") >= MIN_LABELLED_SHARE * layers.height)
    return (named if not named.is_empty() else sizes).select("block", "layer")


def layer_axis(
    layers: pl.DataFrame, title: str = "layer", quantitative: bool = False, horizontal: bool = True
) -> alt.Axis:
    """An axis over layer indices labelled by block (see `block_label_expr`).

    On a quantitative axis (a line over layers) ticks sit at every block's first layer; on an ordinal one (a
    heatmap) every layer is a band and only each block's first shown layer is named. Horizontal labels start
    at their block's first layer (left-aligned), so that they read as the start of a block.
    """
    align = {"labelAlign": "left"} if horizontal else {}
    if quantitative:
        starts = block_starts(layers)
        return alt.Axis(
            title=title,
            values=starts["layer"].to_list(),
            labelExpr=block_label_expr(layers.filter(pl.col("layer").is_in(starts["layer"].implode()))),
            labelAngle=0,
            grid=True,
            **align,
        )
    return alt.Axis(
        title=title, labelExpr=block_label_expr(layers), ticks=False, labelAngle=0, labelOverlap=False, **align
    )


def _stage(name: str) -> str | None:
    module = name.split("#", 1)[0]
    first = module.split(".", 1)[0]
    if _STAGE.match(first):
        return first
    numbered = _NUMBERED_STAGE.match(module)
    return f"{numbered[1]}{numbered[2]}" if numbered else None


def _quote(text: str) -> str:
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"
