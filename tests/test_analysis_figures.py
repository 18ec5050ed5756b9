"""The figure functions on small golden frames: Table 1, accuracy curves, Figs 4, 5, 6, 25 and App. B.1.

Each test builds the few schema-valid rows a figure reads, draws it, and checks that the right rows reach the
right encodings, that every panel has the rows it should, and that absent rows give `NoData` with the reason.
"""

from __future__ import annotations

import polars as pl
import pyarrow as pa
import pytest
from test_analysis import NET, data_rows, metrics_frame, metrics_row, pairs, similarity_frame

from analysis.adversarial import fig4_benign_vs_adversarial, fig5a_transferability, fig5bcd_transfer_cka
from analysis.curves import accuracy_curves
from analysis.dynamics import fig6_convergence, fig25_epoch_heatmaps
from analysis.load import NoData
from analysis.measures import appb1_agreement, appb1_cost
from synthetic import similarity_row
from analysis.table1 import table1, table1_frame, table1_html
from rayrs.schema import SIMILARITY_SCHEMA

LAYERS = len(NET)
EVERY_LAYER = tuple(range(LAYERS))
ADV = "adversarial:{}@3:linf:0.0313725:20"


def overfitting_metrics() -> pl.DataFrame:
    """Two standard seeds and one PGD-AT trial over 3 epochs; PGD-AT's test robust accuracy peaks at epoch 2."""
    rows = []
    for trial, method, eps, seed in (
        ("std0", "standard", 0.0, 0),
        ("std1", "standard", 0.0, 1),
        ("pgd", "pgd", 8 / 255, 0),
    ):
        for epoch in (1, 2, 3):
            robust = method == "pgd"
            rows.append(
                metrics_row(
                    trial,
                    method,
                    eps,
                    epoch,
                    seed=seed,
                    train_clean_acc=0.7 + 0.1 * epoch,
                    test_clean_acc=0.6 + 0.1 * epoch - 0.1 * robust + 0.02 * seed,
                    train_robust_acc=0.2 * epoch * robust,
                    test_robust_acc=[0.0, 0.2, 0.5, 0.4][epoch] * robust,
                )
            )
    return metrics_frame(rows)


# -- Table 1 -------------------------------------------------------------------------------------


def test_table1_has_last_and_best_epoch_per_configuration_with_train_minus_test_gaps():
    table = table1_frame(overfitting_metrics())

    assert table.select("config", "checkpoint", "epochs", "seeds").rows() == [
        ("standard", "last", "3", 2),
        ("standard", "best", "1", 2),  # 0% robust at every epoch: the earliest
        ("PGD-AT ε=8/255", "last", "3", 1),
        ("PGD-AT ε=8/255", "best", "2", 1),  # Rice et al.'s early stopping
    ]
    standard_last, _, pgd_last, pgd_best = table.iter_rows(named=True)
    assert standard_last["benign_test"] == pytest.approx(0.91)  # mean of the seeds' 0.90 and 0.92
    assert standard_last["benign_gap"] == pytest.approx(1.0 - 0.91)
    assert pgd_last["robust_gap"] == pytest.approx(0.6 - 0.4)
    assert (pgd_best["robust_train"], pgd_best["robust_test"], pgd_best["robust_gap"]) == pytest.approx(
        (0.4, 0.5, -0.1)
    )


def test_table1_takes_the_best_epoch_from_metrics_parquet_where_the_catalog_set_it():
    metrics = overfitting_metrics().with_columns(best_epoch=pl.when(pl.col("trial") == "pgd").then(3).otherwise(None))

    best = table1_frame(metrics).filter(checkpoint="best")

    assert best.select("config", "epochs").rows() == [("standard", "1"), ("PGD-AT ε=8/255", "3")]


def test_table1_chart_writes_every_cell_and_the_page_table_has_the_papers_columns():
    metrics = overfitting_metrics()

    spec = table1(metrics).to_dict()
    page = table1_html(metrics)

    assert spec["mark"]["type"] == "text"
    assert (spec["encoding"]["x"]["field"], spec["encoding"]["y"]["field"], spec["encoding"]["text"]["field"]) == (
        "header",
        "row",
        "label",  # the number and its interval
    )
    rows = data_rows(spec)
    assert len(rows) == 4 * 6  # 4 table rows x (benign, robust) x (train, test, Δ)
    assert {
        r["text"] for r in rows if r["row"] == "digits · PGD-AT ε=8/255 · best (epoch 2)" and r["header"] == "robust Δ"
    } == {"-10.0%"}
    assert "<th colspan=3>benign accuracy</th><th colspan=3>robust accuracy</th>" in page
    assert page.count("<tr><td>") == 4 and "<td>50.0%</td>" in page


def test_table1_without_metrics_says_why():
    with pytest.raises(NoData, match="Table 1 needs metrics.parquet rows"):
        table1(overfitting_metrics().clear())


# -- accuracy curves -----------------------------------------------------------------------------


def test_accuracy_curves_draw_four_lines_per_trial_on_a_zero_to_one_axis():
    metrics = overfitting_metrics()

    spec = accuracy_curves(metrics).to_dict()

    bands, lines, points = spec["spec"]["layer"]
    encoding = lines["encoding"]
    assert (bands["mark"]["type"], bands["encoding"]["y"]["field"], bands["encoding"]["y2"]["field"]) == (
        "area",
        "lower",
        "upper",
    )
    assert spec["facet"]["column"]["field"] == "evaluation"
    assert (encoding["x"]["field"], encoding["y"]["field"]) == ("epoch", "accuracy")
    assert (encoding["color"]["field"], encoding["strokeDash"]["field"]) == ("label", "split")
    assert encoding["y"]["scale"]["domain"] == [0, 1]
    rows = data_rows(spec)
    assert len(rows) == 4 * metrics.height
    assert len({(r["label"], r["split"], r["evaluation"]) for r in rows}) == 4 * 3


def test_accuracy_curves_without_metrics_say_why():
    with pytest.raises(NoData, match="no rows in metrics.parquet"):
        accuracy_curves(overfitting_metrics().clear())


# -- Fig 4 ---------------------------------------------------------------------------------------


def diverging(robust: bool):
    """Benign vs adversarial CKA: a standard model diverges after layer 1, a robust one only at the last layer."""
    return lambda i, j: (1.0 if i < (5 if robust else 2) else 0.1) if i == j else 0.3


def test_fig4_draws_the_diagonal_one_line_per_model_non_robust_dashed():
    metrics = overfitting_metrics()
    rows = pairs("benign_vs_adversarial", "std0", "std0", diverging(False), probe_b=ADV.format("std0")) + pairs(
        "benign_vs_adversarial", "pgd", "pgd", diverging(True), probe_b=ADV.format("pgd")
    )

    spec = fig4_benign_vs_adversarial(similarity_frame(rows), metrics).to_dict()

    band, line = spec["spec"]["layer"]
    encoding = line["encoding"]
    assert (encoding["x"]["field"], encoding["y"]["field"], encoding["color"]["field"]) == ("layer_a", "value", "line")
    assert encoding["strokeDash"]["field"] == "training"
    assert (band["mark"]["type"], band["encoding"]["y"]["field"], band["encoding"]["y2"]["field"]) == (
        "area",
        "lower",
        "upper",
    )
    drawn = data_rows(spec)
    assert len(drawn) == 2 * LAYERS  # the diagonal only
    by_line = {
        line: [r["value"] for r in sorted(drawn, key=lambda r: r["layer_a"]) if r["line"] == line]
        for line in {r["line"] for r in drawn}
    }
    assert by_line == {"standard (seed 0)": [1.0, 1.0, 0.1, 0.1, 0.1, 0.1], "PGD-AT ε=8/255": [1.0] * 5 + [0.1]}
    assert {r["training"] for r in drawn if r["line"] == "PGD-AT ε=8/255"} == {"robust"}
    assert spec["params"][0]["name"] == "layer_type"


def test_fig4_without_rows_says_what_to_add():
    with pytest.raises(
        NoData, match="Fig 4 needs a benign_vs_adversarial comparison; add `- kind: benign_vs_adversarial`"
    ):
        fig4_benign_vs_adversarial(similarity_frame([]), overfitting_metrics())


# -- Fig 5 ---------------------------------------------------------------------------------------


def transfer_rows() -> list[dict]:
    """Transfer among std0 and pgd: CKA per layer = 0.9 - 0.1 x layer (robust -> standard: 0.2 after layer 0);
    target accuracy 0.1 x (source robust) + 0.5 x (target robust) + 0.05 (0.05 for a white-box attack)."""
    robust = {"std0": 0, "pgd": 1}
    rows = []
    for source in robust:
        for target in robust:
            probe = ADV.format(source)
            r_to_nr = robust[source] and not robust[target]
            rows += pairs(
                "transfer",
                source,
                target,
                lambda i, j, f=r_to_nr: (0.2 if f and i > 0 else 0.9 - 0.1 * i),
                probe_a=probe,
                probe_b=probe,
            )
            accuracy = 0.05 if source == target else 0.1 * robust[source] + 0.5 * robust[target] + 0.05
            rows.append(
                similarity_row(
                    "transfer",
                    source,
                    target,
                    -1,
                    -1,
                    accuracy,
                    measure="transfer_accuracy",
                    probe_a=probe,
                    probe_b=probe,
                    layers=NET,
                )
            )
    return rows


def test_fig5a_is_a_source_by_target_matrix_of_target_accuracy_with_the_numbers_written_in():
    spec = fig5a_transferability(similarity_frame(transfer_rows()), overfitting_metrics()).to_dict()

    rects, text = spec["layer"]
    assert (rects["mark"]["type"], text["mark"]["type"]) == ("rect", "text")
    assert (rects["encoding"]["x"]["field"], rects["encoding"]["y"]["field"]) == ("config_b", "config_a")
    assert text["encoding"]["text"]["field"] == "value"
    matrix = {(r["config_a"], r["config_b"]): r["value"] for r in data_rows(spec)}
    assert matrix == pytest.approx(
        {
            ("standard", "standard"): 0.05,
            ("standard", "PGD-AT ε=8/255"): 0.55,
            ("PGD-AT ε=8/255", "standard"): 0.15,
            ("PGD-AT ε=8/255", "PGD-AT ε=8/255"): 0.05,
        }
    )
    assert rects["encoding"]["x"]["sort"] == ["standard", "PGD-AT ε=8/255"]


def test_fig5bcd_has_a_panel_per_kind_of_transfer_and_leaves_out_a_model_with_itself():
    spec = fig5bcd_transfer_cka(similarity_frame(transfer_rows()), overfitting_metrics()).to_dict()

    drawn = data_rows(spec)
    by_panel: dict[str, list[dict]] = {}
    for row in drawn:
        by_panel.setdefault(row["panel"][4:], []).append(row)
    assert sorted(by_panel) == ["non-robust → robust", "robust → non-robust"]
    assert all(len(rows) == LAYERS for rows in by_panel.values())  # layer_a == layer_b only, no output row
    assert [r["value"] for r in sorted(by_panel["robust → non-robust"], key=lambda r: r["layer_a"])] == pytest.approx(
        [0.9] + [0.2] * 5
    )
    band, line = spec["spec"]["layer"]
    assert line["encoding"]["y"]["field"] == "value" and band["encoding"]["y2"]["field"] == "upper"
    assert {r["seeds"] for r in drawn} == {1}  # one pair of trials per line: the mean over seed pairs is its value


def test_fig5_without_transfer_rows_says_what_to_add():
    with pytest.raises(NoData, match="Fig 5a needs a transfer comparison .*add `- kind: transfer`"):
        fig5a_transferability(similarity_frame([]), overfitting_metrics())
    with pytest.raises(NoData, match="add `- kind: transfer`"):
        fig5bcd_transfer_cka(similarity_frame([]), overfitting_metrics())


# -- Fig 6, Fig 25 -------------------------------------------------------------------------------


def cross_epoch_rows(
    trial: str, epochs: int = 3, pairs_of=None, probe: str = "benign", layers=EVERY_LAYER
) -> list[dict]:
    """Same-layer CKA between epochs: 1 - 0.1 x layer x |e_a - e_b|; by default every epoch pair. An
    adversarial ``probe`` (a format string) is crafted at each side's own epoch, as rayrs does."""
    pairs_of = pairs_of or [(a, b) for a in range(1, epochs + 1) for b in range(1, epochs + 1)]
    return [
        similarity_row(
            "cross_epoch",
            trial,
            trial,
            layer,
            layer,
            1 - 0.1 * layer * abs(a - b),
            epoch_a=a,
            epoch_b=b,
            probe_a=probe.format(a),
            probe_b=probe.format(b),
            job=trial,
            layers=NET,
        )
        for a, b in pairs_of
        for layer in layers
    ]


# A cross_epoch comparison's layers with block outputs (its default): two residual blocks in stage 1, one in 2.
EPOCH_NET = [
    ("conv1", "conv"),
    ("block1.0.conv1", "conv"),
    ("block1.0", "block"),
    ("block1.1.conv1", "conv"),
    ("block1.1", "block"),
    ("block2.0.conv1", "conv"),
    ("block2.0", "block"),
    ("fc", "linear"),
]


def epoch_rows(trial: str, epochs: int = 3) -> list[dict]:
    """Every layer of `EPOCH_NET` at every epoch vs the final one: CKA 1 - 0.1 x layer x (final - epoch)."""
    return [
        similarity_row("cross_epoch", trial, trial, layer, layer, 1 - 0.1 * layer * (epochs - a), epoch_a=a,
                       epoch_b=epochs, job=trial, layers=EPOCH_NET)
        for a in range(1, epochs + 1)
        for layer in range(len(EPOCH_NET))
    ]


def test_fig6_draws_each_blocks_output_to_the_final_epoch_over_losses_on_a_shared_epoch_axis():
    metrics = overfitting_metrics()
    rows = epoch_rows("std0") + epoch_rows("std1") + epoch_rows("pgd")

    spec = fig6_convergence(similarity_frame(rows), metrics).to_dict()

    top, bottom = spec["vconcat"]
    assert spec["resolve"]["scale"]["x"] == "shared"
    cka = data_rows(spec, top)
    # One line per stage, from the output of its last residual block (the paper code's `block1`); no other layer.
    assert {(r["block_a"], r["name_a"]) for r in cka} == {("block1", "block1.1"), ("block2", "block2.0")}
    assert all(r["epoch"] in (1, 2, 3) for r in cka)
    per_panel = {panel[4:]: sum(r["panel"] == panel for r in cka) for panel in {r["panel"] for r in cka}}
    assert per_panel == {"standard": 3 * 2, "PGD-AT ε=8/255": 3 * 2}  # epochs vs final x blocks, seeds averaged
    assert {r["seeds"] for r in cka if r["panel"].endswith("standard")} == {2}
    assert [r["cka"] for r in cka if r["block_a"] == "block1" and r["epoch"] == 1] == pytest.approx([1 - 0.1 * 4 * 2] * 2)
    band, line = top["spec"]["layer"]
    assert (band["mark"]["type"], line["mark"]["type"]) == ("area", "line")
    assert (band["encoding"]["y"]["field"], band["encoding"]["y2"]["field"]) == ("lower", "upper")
    assert line["encoding"]["y"]["field"] == "cka"
    assert top["spec"]["layer"][0]["encoding"]["color"]["sort"] == ["block1", "block2"]
    assert "params" not in spec  # one layer per block: nothing for a layer-type dropdown to filter
    losses = data_rows(spec, bottom)
    assert len(losses) == 4 * metrics.height  # train / validation x benign / adversarial
    assert bottom["spec"]["encoding"]["x"]["field"] == top["spec"]["layer"][0]["encoding"]["x"]["field"] == "epoch"


def test_fig6_without_block_outputs_says_to_compare_them():
    rows = cross_epoch_rows("pgd", pairs_of=[(1, 3), (2, 3), (3, 3)])  # the paper's five types only

    with pytest.raises(NoData, match="Fig 6 plots each block's output .layers of type `block`.*keep `block` in"):
        fig6_convergence(similarity_frame(rows), overfitting_metrics())


def test_fig6_and_fig25_without_cross_epoch_rows_say_what_to_add():
    for figure in (fig6_convergence, fig25_epoch_heatmaps):
        with pytest.raises(NoData, match="needs a cross_epoch comparison; add `- kind: cross_epoch` to `compare:`"):
            figure(similarity_frame([]), overfitting_metrics())


def test_fig25_draws_epoch_by_epoch_panels_of_the_matrix_layers_for_each_probe():
    to_final = [(a, 3) for a in (1, 2, 3)]
    triangle = [(a, b) for a in (1, 2, 3) for b in (1, 2, 3) if a <= b]
    adversarial = "adversarial:pgd@{}:linf:0.0313725:20"
    rows = cross_epoch_rows("pgd", pairs_of=to_final) + cross_epoch_rows("pgd", pairs_of=triangle, layers=[2, 5])
    rows += cross_epoch_rows("pgd", pairs_of=to_final, probe=adversarial)
    rows += cross_epoch_rows("pgd", pairs_of=triangle, probe=adversarial, layers=[2, 5])

    spec = fig25_epoch_heatmaps(similarity_frame(rows), overfitting_metrics()).to_dict()

    drawn = data_rows(spec)
    grid = {(r["row_key"][4:], r["column_key"][4:]) for r in drawn}
    assert grid == {
        (f"PGD-AT ε=8/255 · {p}", f"block{b} · block{b}.0.conv1") for p in ("benign", "adversarial") for b in (1, 2)
    }
    for key in grid:
        assert sum((r["row_key"][4:], r["column_key"][4:]) == key for r in drawn) == 9  # 3 x 3 epochs, mirrored
    mirrored = [r["value"] for r in drawn if r["name_a"] == "block2.0.conv1" and (r["epoch_a"], r["epoch_b"]) == (3, 1)]
    assert mirrored == pytest.approx([1 - 0.1 * 5 * 2] * 2)  # benign and adversarial, each stored as (1, 3) only
    assert (spec["spec"]["encoding"]["x"]["field"], spec["spec"]["encoding"]["y"]["field"]) == ("epoch_a", "epoch_b")

    one = fig25_epoch_heatmaps(similarity_frame(rows), overfitting_metrics(), layers=["block2.0.conv1"]).to_dict()
    assert {r["name_a"] for r in data_rows(one)} == {"block2.0.conv1"}


def test_fig25_with_only_pairs_against_the_final_epoch_asks_for_every_epoch_pair():
    rows = cross_epoch_rows("pgd", pairs_of=[(1, 3), (2, 3), (3, 3)])

    with pytest.raises(NoData, match="Fig 25 needs cross_epoch pairs between every two epochs"):
        fig25_epoch_heatmaps(similarity_frame(rows), overfitting_metrics())


# -- App B.1 -------------------------------------------------------------------------------------


def measured(measure: str, transform, seconds: float | None = None) -> list[dict]:
    rows = [
        r | {"measure": measure, "value": transform(r["value"]), "job": f"pgd-{measure}"}
        for r in pairs("cross_layer", "pgd", "pgd", lambda i, j: 1 / (1 + abs(i - j)), epoch=3)
    ]
    return [r | {"seconds": seconds} for r in rows] if seconds is not None else rows


def test_appb1_scatters_cka_against_each_measure_titled_with_the_rank_correlation():
    rows = measured("cka", lambda v: v) + measured("procrustes", lambda v: v**2) + measured("svcca", lambda v: 1 - v)

    spec = appb1_agreement(similarity_frame(rows), overfitting_metrics()).to_dict()

    procrustes, svcca = spec["hconcat"]
    assert procrustes["title"]["text"] == "CKA vs Procrustes"
    assert procrustes["title"]["subtitle"].startswith(
        f"Spearman ρ = 1.00 over {LAYERS * LAYERS} layer pairs"
    )  # same ranks
    assert svcca["title"]["subtitle"] == f"Spearman ρ = -1.00 over {LAYERS * LAYERS} layer pairs"
    assert (procrustes["encoding"]["x"]["field"], procrustes["encoding"]["y"]["field"]) == ("cka", "other")
    assert len(data_rows(spec, procrustes)) == LAYERS * LAYERS
    assert {(r["cka"], r["other"]) for r in data_rows(spec, procrustes)} == {
        (v, v**2) for v in {1 / (1 + d) for d in range(LAYERS)}
    }


def test_appb1_with_cka_alone_says_to_add_another_measure():
    with pytest.raises(
        NoData, match="App B.1 needs the same comparison measured with procrustes or svcca as well as cka"
    ):
        appb1_agreement(similarity_frame(measured("cka", lambda v: v)), overfitting_metrics())


def test_appb1_cost_bars_mean_seconds_per_comparison_and_says_the_multiple_of_cka():
    rows = measured("cka", lambda v: v, seconds=2.0) + measured("procrustes", lambda v: v, seconds=20.0)
    # A CKA-only comparison of other models is other work: it must not enter CKA's mean.
    rows += [r | {"job": "other-cka", "seconds": 100.0}
             for r in pairs("cross_layer", "standard", "standard", lambda i, j: 0.5, epoch=3)]
    similarity = pl.from_arrow(
        pa.Table.from_pylist(rows, schema=SIMILARITY_SCHEMA.append(pa.field("seconds", pa.float64())))
    )

    spec = appb1_cost(similarity, overfitting_metrics()).to_dict()

    bars = {r["name"]: (r["seconds"], r["text"]) for r in data_rows(spec)}
    assert bars == {"CKA": (2.0, "1.0× CKA"), "Procrustes": (20.0, "10.0× CKA")}


def test_appb1_cost_without_timings_says_to_rerun_the_comparisons():
    with pytest.raises(NoData, match="needs each comparison's compute time, the `seconds` column"):
        appb1_cost(similarity_frame(measured("cka", lambda v: v)), overfitting_metrics())
