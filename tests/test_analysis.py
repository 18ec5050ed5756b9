"""analysis/: Polars readers, trial labels, layer axes and the layer x layer heatmaps (Figs 2, 2d, 3, 7).

The golden experiment has three trials of a 6-layer network (stem conv, two one-block stages): a "standard"
one whose cross-layer CKA is block-diagonal (layers 0-2 and 3-5), and PGD-AT at eps 2/255 and 8/255 whose CKA
is bright everywhere, as the paper's Fig 2 reports for robust networks.
"""

from __future__ import annotations

import polars as pl
import pyarrow as pa
import pytest

from analysis.heatmaps import (
    cross_layer_heatmap,
    fig2_cross_layer,
    fig2d_cross_model,
    fig3_eps_width,
    fig7_threat_models,
)
from analysis.layers import block_label_expr, block_of, layer_table
from analysis.load import NoData, format_eps, read_metrics, read_similarity, trial_info, trial_labels
from synthetic import similarity_row
from rayrs import storage as layout
from rayrs.errors import UserError
from rayrs.schema import METRICS_SCHEMA, SIMILARITY_SCHEMA
from rayrs.storage import Storage

NET = [
    ("conv1", "conv"),
    ("block1.0.bn1", "bn"),
    ("block1.0.conv1", "conv"),
    ("block2.0.bn1", "bn"),
    ("block2.0.relu1", "act"),
    ("block2.0.conv1", "conv"),
]
LAYERS = len(NET)
EPOCHS = 3
TRIALS = {  # trial id -> (method, eps)
    "t_pgd8": ("pgd", 8 / 255),
    "t_standard": ("standard", 0.0),
    "t_pgd2": ("pgd", 2 / 255),
}
LABELS_IN_ORDER = ["standard", "PGD-AT ε=2/255", "PGD-AT ε=8/255"]


# -- golden results ------------------------------------------------------------------------------


def metrics_row(trial: str, method: str, eps: float, epoch: int, **overrides) -> dict:
    # Robust training trades benign accuracy for robust accuracy, more so at larger eps.
    trade = 0.02 * eps * 255 if method != "standard" else 0.0
    row = {
        "experiment": "golden",
        "trial": trial,
        "dataset": "digits",
        "arch": "wrn",
        "depth": 10,
        "width": 1,
        "method": method,
        "threat_model": "linf",
        "eps": eps,
        "seed": 0,
        "epoch": epoch,
        "lr": 0.1,
        "train_objective": 1.0 / epoch,
        "eval_eps": 8 / 255,
        "train_clean_acc": 0.6 + 0.1 * epoch - trade,
        "train_clean_loss": 1.0,
        "train_robust_acc": 0.05 * epoch + trade,
        "train_robust_loss": 2.0,
        "test_clean_acc": 0.55 + 0.1 * epoch - trade,
        "test_clean_loss": 1.1,
        "test_robust_acc": 0.03 * epoch + trade,
        "test_robust_loss": 2.1,
        "epoch_seconds": 3.0,
    }
    return row | overrides


def metrics_frame(rows: list[dict]) -> pl.DataFrame:
    return pl.from_arrow(pa.Table.from_pylist(rows, schema=METRICS_SCHEMA))


def similarity_frame(rows: list[dict]) -> pl.DataFrame:
    return pl.from_arrow(pa.Table.from_pylist(rows, schema=SIMILARITY_SCHEMA))


def write_metrics(results: Storage, rows: list[dict]) -> None:
    results.write_table(layout.METRICS, pa.Table.from_pylist(rows, schema=METRICS_SCHEMA))


def block_cka(i: int, j: int) -> float:
    """Block-diagonal: layers 0-2 and 3-5 alike within their block, unlike across blocks."""
    return 1.0 if i == j else 0.9 if i // 3 == j // 3 else 0.1


def bright_cka(i: int, j: int) -> float:
    return 1.0 if i == j else 0.8


def pairs(
    kind: str, a: str, b: str, cka, epoch: int = EPOCHS, upper_triangle_only: bool = False, **fields
) -> list[dict]:
    """Every layer pair of one comparison of the golden network (only i <= j if ``upper_triangle_only``)."""
    return [
        similarity_row(
            kind, a, b, i, j, cka(i, j), epoch_a=epoch, epoch_b=epoch, job=f"{a}-{b}-e{epoch}", layers=NET, **fields
        )
        for i in range(LAYERS)
        for j in range(LAYERS)
        if not upper_triangle_only or i <= j
    ]


def write_similarity(results: Storage, job: str, rows: list[dict], kind: str = "cross_layer") -> None:
    """``rows`` as the file of ``job``, which, as a real one, holds that job's rows only (its ``job`` column)."""
    rows = [row | {"job": job} for row in rows]
    results.write_table(layout.similarity(kind, job), pa.Table.from_pylist(rows, schema=SIMILARITY_SCHEMA))


def write_golden(root, with_similarity: bool = True) -> Storage:
    results = Storage(root)
    write_metrics(
        results, [metrics_row(t, m, e, epoch) for t, (m, e) in TRIALS.items() for epoch in range(1, EPOCHS + 1)]
    )
    if with_similarity:
        # The standard trial also has an early-epoch comparison (uniform 0.5) that the figure must not show.
        write_similarity(
            results,
            "standard",
            pairs("cross_layer", "t_standard", "t_standard", lambda i, j: 0.5, epoch=1)
            + pairs("cross_layer", "t_standard", "t_standard", block_cka),
        )
        write_similarity(results, "pgd8", pairs("cross_layer", "t_pgd8", "t_pgd8", bright_cka))
        # Stored as one triangle only: the panel must still be the full square.
        write_similarity(
            results, "pgd2", pairs("cross_layer", "t_pgd2", "t_pgd2", bright_cka, upper_triangle_only=True)
        )
    return results


@pytest.fixture(scope="module")
def golden(tmp_path_factory) -> Storage:
    return write_golden(tmp_path_factory.mktemp("golden"))


def data_rows(spec: dict, part: dict | None = None) -> list[dict]:
    """The data rows a (sub)chart of ``spec`` draws: Altair puts them in the top-level ``datasets``."""
    return spec["datasets"][(part or spec)["data"]["name"]]


def panels(spec: dict, part: dict | None = None) -> dict[tuple[str, ...], list[dict]]:
    """A faceted heatmap's rows by panel: (row label, column label) -> rows (labels without the sort prefix)."""
    grouped: dict[tuple[str, ...], list[dict]] = {}
    for row in data_rows(spec, part):
        key = tuple(row[k][4:] for k in ("row_key", "column_key") if k in row)
        grouped.setdefault(key, []).append(row)
    return grouped


def cells(rows: list[dict]) -> dict[tuple[int, int], float]:
    return {(r["layer_a"], r["layer_b"]): r["value"] for r in rows}


# -- readers -------------------------------------------------------------------------------------


def test_readers_return_every_row_with_the_schema_columns(golden):
    metrics, similarity = read_metrics(golden), read_similarity(golden)

    assert metrics.columns == METRICS_SCHEMA.names
    assert metrics.height == len(TRIALS) * EPOCHS
    assert similarity.columns == SIMILARITY_SCHEMA.names
    full, triangle = LAYERS * LAYERS, LAYERS * (LAYERS + 1) // 2
    assert similarity.height == 2 * full + full + triangle


def test_readers_of_an_empty_experiment_give_empty_frames_with_the_columns(tmp_path):
    results = Storage(tmp_path / "nothing_yet")

    assert read_metrics(results).columns == METRICS_SCHEMA.names
    assert read_metrics(results).is_empty()
    assert read_similarity(results).columns == SIMILARITY_SCHEMA.names
    assert read_similarity(results).is_empty()


def test_a_similarity_file_missing_a_column_is_a_user_error_naming_it(tmp_path):
    results = Storage(tmp_path)
    results.write_table(layout.similarity("cross_layer", "old"), pa.table({"kind": ["cross_layer"], "value": [0.5]}))

    with pytest.raises(UserError, match=r"old\.parquet lacks column\(s\) measure"):
        read_similarity(results)


def test_an_optional_seconds_column_is_kept_and_null_where_a_file_lacks_it(tmp_path):
    results = Storage(tmp_path)
    timed = pa.Table.from_pylist(pairs("cross_layer", "a", "a", bright_cka), schema=SIMILARITY_SCHEMA)
    results.write_table(
        layout.similarity("cross_layer", timed["job"][0].as_py()),
        timed.append_column("seconds", pa.array([2.0] * timed.num_rows)),
    )
    write_similarity(results, "untimed", pairs("cross_layer", "b", "b", bright_cka))

    similarity = read_similarity(results)

    assert similarity.columns == [*SIMILARITY_SCHEMA.names, "seconds"]
    assert similarity.group_by("model_a").agg(pl.col("seconds").max()).sort("model_a").rows() == [
        ("a", 2.0),
        ("b", None),
    ]


# -- labels --------------------------------------------------------------------------------------


def test_trial_labels_put_non_robust_first_then_sort_by_eps(golden):
    labels = trial_labels(read_metrics(golden))

    assert labels["label"].to_list() == LABELS_IN_ORDER
    assert labels["trial"].to_list() == ["t_standard", "t_pgd2", "t_pgd8"]
    assert labels["order"].to_list() == [0, 1, 2]
    assert labels["robust"].to_list() == [False, True, True]


def test_trial_labels_name_eps_zero_standard_other_threat_models_and_tell_apart_seeds():
    metrics = metrics_frame(
        [
            metrics_row("a", "pgd", 0.0, 1),  # eps 0: no attack, hence not robust
            metrics_row("b", "trades", 0.5, 1, threat_model="l2"),
            metrics_row("c", "pgd", 4 / 255, 1, seed=0),
            metrics_row("d", "pgd", 4 / 255, 1, seed=1),
        ]
    )

    assert trial_labels(metrics)["label"].to_list() == [
        "standard",
        "PGD-AT ε=4/255 (seed 0)",
        "PGD-AT ε=4/255 (seed 1)",
        "TRADES ℓ2 ε=0.5",
    ]


def test_trial_info_gives_seeds_of_one_configuration_one_config_label():
    metrics = metrics_frame(
        [metrics_row(f"w{w}s{s}", "pgd", 8 / 255, 1, width=w, seed=s) for w in (1, 2) for s in (0, 1)]
        + [metrics_row("std", "standard", 0.0, 1)]
    )

    info = trial_info(metrics)

    assert info.select("trial", "config", "config_order", "training").rows() == [
        ("std", "standard", 0, "standard"),
        ("w1s0", "PGD-AT ε=8/255 (width 1)", 1, "PGD-AT ε=8/255"),
        ("w1s1", "PGD-AT ε=8/255 (width 1)", 1, "PGD-AT ε=8/255"),
        ("w2s0", "PGD-AT ε=8/255 (width 2)", 2, "PGD-AT ε=8/255"),
        ("w2s1", "PGD-AT ε=8/255 (width 2)", 2, "PGD-AT ε=8/255"),
    ]


@pytest.mark.parametrize(
    ("eps", "shown"), [(8 / 255, "8/255"), (1 / 255, "1/255"), (0.5, "0.5"), (0.2, "0.2"), (0.031, "0.031")]
)
def test_format_eps_shows_short_decimals_as_written_and_255ths_as_fractions(eps, shown):
    assert format_eps(eps) == shown


# -- layers --------------------------------------------------------------------------------------


def test_blocks_come_from_layer_names_with_stem_and_head_around_the_stages():
    names = ["conv1", "block1.0.bn1", "block1.0.relu1#1", "block2.0.conv1", "bn", "relu", "fc"]
    assert block_of(names) == ["stem", "block1", "block1", "block2", "head", "head", "head"]
    assert block_of(["layer1.0.conv1", "layer4.1.bn2", "avgpool"]) == ["layer1", "layer4", "head"]
    assert block_of(["features.0", "classifier"]) == ["network", "network"]
    # timm's numbered containers: a ViT's transformer blocks, a ConvNeXt's stages.
    assert block_of(["patch_embed.proj", "blocks.0", "blocks.11.mlp.fc2", "norm", "head"]) == [
        "stem", "block0", "block11", "head", "head"]
    assert block_of(["stem.0", "stages.0.blocks.1", "stages.3.blocks.0.conv_dw", "head.fc"]) == [
        "stem", "stage0", "stage3", "head"]


def test_block_labels_follow_the_layer_type_dropdown():
    rows = similarity_frame(pairs("cross_layer", "m", "m", bright_cka))

    expression = block_label_expr(layer_table(rows, "a"))

    # All layers: block1 starts at its bn (1), block2 at its bn (3); convs only: block1's first conv is 2.
    assert expression.startswith(
        "layer_type == 'conv' ? (datum.value == 0 ? 'stem' : datum.value == 2 ? 'block1' : datum.value == 5 ? 'block2' : '')"
    )
    assert expression.endswith(
        "(datum.value == 0 ? 'stem' : datum.value == 1 ? 'block1' : datum.value == 3 ? 'block2' : '')"
    )


# -- heatmaps ------------------------------------------------------------------------------------


def test_cross_layer_heatmap_maps_layers_to_axes_and_cka_to_a_fixed_colour_scale(golden):
    rows = read_similarity(golden).filter(model_a="t_pgd8")

    spec = cross_layer_heatmap(rows, title="PGD-AT ε=8/255").to_dict()

    encoding = spec["encoding"]
    assert (encoding["x"]["field"], encoding["y"]["field"]) == ("layer_a", "layer_b")
    assert encoding["color"]["field"] == "value"
    assert encoding["x"]["sort"] == "ascending" and encoding["y"]["sort"] == "descending"  # layer 0 bottom-left
    assert encoding["color"]["scale"]["domain"] == [0, 1]
    assert "block1" in encoding["x"]["axis"]["labelExpr"]
    assert {t["field"] for t in encoding["tooltip"]} == {"name_a", "name_b", "type_a", "type_b", "value", "lower", "upper"}
    assert spec["transform"] == [
        {"filter": "layer_type == 'all' || (datum.type_a == layer_type && datum.type_b == layer_type)"}
    ]
    assert spec["width"] == spec["height"]
    assert len(data_rows(spec)) == LAYERS * LAYERS


def test_fig2_shows_each_trial_once_in_label_order_at_its_last_epoch(golden):
    spec = fig2_cross_layer(read_similarity(golden), read_metrics(golden)).to_dict()

    by_panel = panels(spec)
    assert list(by_panel) == [(label,) for label in LABELS_IN_ORDER]
    assert all(len(rows) == LAYERS * LAYERS for rows in by_panel.values())  # the triangle-only trial too
    standard, pgd2, pgd8 = (cells(by_panel[(label,)]) for label in LABELS_IN_ORDER)
    assert standard == {(i, j): block_cka(i, j) for i in range(LAYERS) for j in range(LAYERS)}  # not epoch 1's 0.5
    assert pgd2 == pgd8 == {(i, j): bright_cka(i, j) for i in range(LAYERS) for j in range(LAYERS)}
    assert pgd8[(0, 5)] > standard[(0, 5)]  # the robust network is brighter far from the diagonal
    assert spec["title"]["text"] == "digits"
    [dropdown] = spec["params"]
    assert dropdown["name"] == "layer_type" and dropdown["bind"]["options"] == [
        "all",
        "conv",
        "bn",
        "act",
        "pool",
        "linear",
        "block",
        "named",
    ]


def test_fig2_panels_of_trials_missing_from_metrics_are_titled_by_trial_id(golden):
    spec = fig2_cross_layer(read_similarity(golden), read_metrics(golden).clear()).to_dict()

    assert sorted(panels(spec)) == [("t_pgd2",), ("t_pgd8",), ("t_standard",)]


def test_fig2_without_rows_says_what_to_add(golden):
    metrics = read_metrics(golden)
    adversarial_only = read_similarity(golden).with_columns(probe_a=pl.lit("pgd20"), probe_b=pl.lit("pgd20"))

    with pytest.raises(NoData, match="Fig 2 needs a cross_layer comparison; add `- kind: cross_layer` to `compare:`"):
        fig2_cross_layer(read_similarity(golden).clear(), metrics)
    with pytest.raises(NoData, match="benign"):
        fig2_cross_layer(adversarial_only, metrics)


def test_fig2d_puts_the_non_robust_model_on_x_and_the_robust_one_on_y(golden):
    metrics = read_metrics(golden)
    # Stored robust-first: the figure must turn it round. value = 0.1 x robust layer + 0.01 x standard layer.
    stored = pairs("cross_model", "t_pgd8", "t_standard", lambda i, j: 0.1 * i + 0.01 * j)

    spec = fig2d_cross_model(similarity_frame(stored), metrics).to_dict()

    [(panel, rows)] = panels(spec).items()
    assert panel == ("standard vs PGD-AT ε=8/255",)
    assert len(rows) == LAYERS * LAYERS
    assert cells(rows)[(5, 2)] == pytest.approx(0.1 * 2 + 0.01 * 5)  # x = standard layer 5, y = robust layer 2
    assert spec["spec"]["encoding"]["x"]["axis"]["title"] == "non-robust model's layer"


def test_fig2d_without_a_non_robust_vs_robust_pair_says_what_to_add(golden):
    metrics = read_metrics(golden)
    robust_pair = similarity_frame(pairs("cross_model", "t_pgd8", "t_pgd2", bright_cka))

    with pytest.raises(NoData, match="add `- kind: cross_model` to `compare:`"):
        fig2d_cross_model(robust_pair.clear(), metrics)
    with pytest.raises(NoData, match="between a non-robust and a robust model"):
        fig2d_cross_model(robust_pair, metrics)


def test_fig3_puts_training_eps_on_rows_width_on_columns_and_averages_seeds():
    trials = {
        f"{m}-w{w}-s{s}": (m, e, w, s) for m, e in (("standard", 0.0), ("pgd", 8 / 255)) for w in (1, 2) for s in (0, 1)
    }
    metrics = metrics_frame([metrics_row(t, m, e, 1, width=w, seed=s) for t, (m, e, w, s) in trials.items()])
    # Each trial's CKA is constant: 0.1 x width + 0.2 x robust + 0.05 x seed, so seed means end in .025.
    value = {t: 0.1 * w + 0.2 * (m == "pgd") + 0.05 * s for t, (m, e, w, s) in trials.items()}
    similarity = similarity_frame(
        [r for t in trials for r in pairs("cross_layer", t, t, lambda i, j, t=t: value[t], epoch=1)]
    )

    spec = fig3_eps_width(similarity, metrics).to_dict()

    grid = panels(spec)
    assert list(grid) == [
        ("standard", "width 1"),
        ("standard", "width 2"),
        ("PGD-AT ε=8/255", "width 1"),
        ("PGD-AT ε=8/255", "width 2"),
    ]
    assert all(len(rows) == LAYERS * LAYERS for rows in grid.values())
    assert {k: rows[0]["value"] for k, rows in grid.items()} == pytest.approx(
        {
            ("standard", "width 1"): 0.125,
            ("standard", "width 2"): 0.225,
            ("PGD-AT ε=8/255", "width 1"): 0.325,
            ("PGD-AT ε=8/255", "width 2"): 0.425,
        }
    )
    assert spec["facet"]["row"]["field"] == "row_key" and spec["facet"]["column"]["field"] == "column_key"


def test_fig3_with_one_eps_and_one_width_says_to_sweep_them(golden):
    metrics = read_metrics(golden).filter(trial="t_pgd8")

    with pytest.raises(
        NoData, match=r"Fig 3 needs .*2\+ training eps or 2\+ widths; add e\.g\. `eps: \[0, 2/255, 8/255\]`"
    ):
        fig3_eps_width(read_similarity(golden).filter(model_a="t_pgd8"), metrics)


def test_fig7_compares_each_threat_model_with_linf_on_top_and_snow_below():
    threat = {"linf": 8 / 255, "l2": 0.5, "snow": 0.0625, "gabor": 0.05}
    metrics = metrics_frame([metrics_row(t, "pgd", e, 1, threat_model=t) for t, e in threat.items()])
    # Stored with the reference on either side; value = 0.1 x y-layer identifies the orientation.
    stored = (
        pairs("cross_model", "linf", "l2", lambda i, j: 0.1 * i, epoch=1)  # reference linf on side a: swapped
        + pairs("cross_model", "snow", "linf", lambda i, j: 0.1 * i, epoch=1)  # both references
        + pairs("cross_model", "gabor", "snow", lambda i, j: 0.1 * j, epoch=1)  # reference snow on side b: kept
    )

    spec = fig7_threat_models(similarity_frame(stored), metrics).to_dict()

    grid = panels(spec)
    assert sorted(grid) == sorted(
        [("vs ℓ∞ ε=8/255", k) for k in ("ℓ2 ε=0.5", "Snow ε=0.0625")]
        + [("vs Snow ε=0.0625", k) for k in ("ℓ∞ ε=8/255", "Gabor ε=0.05")]
    )
    assert all(len(rows) == LAYERS * LAYERS for rows in grid.values())
    assert cells(grid[("vs ℓ∞ ε=8/255", "ℓ2 ε=0.5")])[(1, 4)] == pytest.approx(0.4)  # y = the ℓ∞ model's layer 4
    assert cells(grid[("vs Snow ε=0.0625", "Gabor ε=0.05")])[(1, 4)] == pytest.approx(0.4)
    assert sorted({r["row_key"] for r in data_rows(spec)}) == ["000|vs ℓ∞ ε=8/255", "001|vs Snow ε=0.0625"]  # ℓ∞ on top


def test_fig7_without_two_threat_models_says_what_to_add(golden):
    metrics = read_metrics(golden)
    same_threat = similarity_frame(pairs("cross_model", "t_pgd8", "t_pgd2", bright_cka))

    with pytest.raises(NoData, match="different threat models.*`threat_model: \\[linf, l2, snow\\]`"):
        fig7_threat_models(same_threat, metrics)


def test_metrics_written_before_rayrs_counted_images_read_as_nulls_and_show_no_interval(tmp_path):
    from analysis.table1 import table1_frame
    from rayrs.schema import OPTIONAL_EPOCH_COLUMNS

    results = Storage(tmp_path)
    older = pa.schema([field for field in METRICS_SCHEMA if field.name not in OPTIONAL_EPOCH_COLUMNS])
    results.write_table(layout.METRICS, pa.Table.from_pylist([metrics_row("m", "pgd", 8 / 255, 1)], schema=older))

    metrics = read_metrics(results)

    assert metrics["train_examples"].to_list() == [None] and metrics["test_examples"].to_list() == [None]
    row = table1_frame(metrics).filter(checkpoint="last").row(0, named=True)
    assert row["robust_test"] == pytest.approx(0.03 + 0.02 * 8) and row["robust_test_lower"] is None


def test_every_registered_threat_model_has_a_display_name_and_the_variants_are_told_apart():
    from analysis.load import THREAT_MODEL_NAMES, threat_model_name
    from rayrs.attacks import THREAT_MODELS

    assert set(THREAT_MODELS) <= set(THREAT_MODEL_NAMES), set(THREAT_MODELS) - set(THREAT_MODEL_NAMES)
    names = [threat_model_name(name) for name in THREAT_MODELS]
    assert len(set(names)) == len(names)  # jpeg vs jpeg_unblurred, gabor vs gabor_sparse, snow vs snow_projected


def test_a_frozen_trial_is_its_own_configuration_not_a_seed_of_its_unfrozen_twin(finished_sweep):
    # The finished tiny sweep has trial seed0 and its twin block1-from_epoch2 (same method, eps and seed, frozen
    # through block1 from epoch 2). Without the freeze column they shared a label and a configuration, and every
    # figure averaged them as two seeds of one training.
    from analysis.load import read_metrics, trial_info

    _, results = finished_sweep
    metrics = read_metrics(Storage(results / "kept"))
    freeze = dict(metrics.select("trial", "freeze").unique().iter_rows())
    assert freeze == {"seed0": None, "block1-from_epoch2": "block1 from epoch 2"}
    info = {row["trial"]: row for row in trial_info(metrics).to_dicts()}
    assert info["seed0"]["config"] != info["block1-from_epoch2"]["config"]
    assert info["block1-from_epoch2"]["label"].endswith("(frozen block1 from epoch 2)")
    assert info["seed0"]["label"].endswith("(unfrozen)")
