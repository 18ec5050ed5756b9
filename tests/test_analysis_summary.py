"""summary.parquet: the block-structure score and the convergence epoch against hand-computed values."""

from __future__ import annotations

import numpy as np
import polars as pl
import pyarrow.parquet as pq
import pytest
from scipy import stats
from test_analysis import data_rows, metrics_frame, metrics_row, similarity_frame

from analysis.load import NoData
from analysis.summary import (
    SUMMARY,
    SUMMARY_SCHEMA,
    block_structure,
    block_structure_chart,
    convergence_chart,
    convergence_epochs,
    summarize,
    summary_html,
    write_summary,
)
from synthetic import frame_with_uncertainty, similarity_row
from rayrs.similarity.cka import JACKKNIFE_T95
from rayrs.storage import Storage

NET4 = [("conv1", "conv"), ("block1.0.conv1", "conv"), ("block2.0.bn1", "bn"), ("fc", "linear")]
# A 4-layer model stored as one triangle. L / 3 = 1.33, so "far" is |i - j| >= 2.
TRIANGLE = {
    (0, 1): 0.9,
    (1, 2): 0.7,
    (2, 3): 0.8,  # neighbours: mean 0.8
    (0, 2): 0.3,
    (0, 3): 0.1,
    (1, 3): 0.2,  # far: mean 0.2
}


def cross_layer(trial: str, cka, layers: int, epoch: int = 2) -> list[dict]:
    net = NET4 if layers == 4 else [(f"block{1 + i // 3}.0.conv{i}", "conv") for i in range(layers)]
    return [
        similarity_row(
            "cross_layer", trial, trial, i, j, cka(i, j), epoch_a=epoch, epoch_b=epoch, layers=net, job=trial
        )
        for i in range(layers)
        for j in range(layers)
        if cka(i, j) is not None
    ]


def triangle(i: int, j: int) -> float | None:
    return 1.0 if i == j else TRIANGLE.get((i, j))


def linear_decay(i: int, j: int) -> float:
    return 1 - 0.1 * abs(i - j)


# Convergence: CKA of epochs 1-4 with the final epoch 5, per layer (threshold 0.9).
TO_FINAL = {
    0: [0.95, 0.92, 0.97, 0.99],  # always above: epoch 1
    1: [0.50, 0.95, 0.85, 0.93],  # dips at epoch 3, stays from epoch 4
    2: [0.95, 0.96, 0.97, 0.80],  # falls at the last measured epoch: never settles, so the final epoch 5
    3: [0.20, 0.30, 0.91, 0.95],  # from epoch 3
}


def cross_epoch(trial: str, with_final_pair: bool = False) -> list[dict]:
    rows = [
        similarity_row(
            "cross_epoch", trial, trial, layer, layer, value, epoch_a=epoch, epoch_b=5, layers=NET4, job=trial
        )
        for layer, values in TO_FINAL.items()
        for epoch, value in enumerate(values, start=1)
    ]
    # Pairs with an earlier epoch_b are not against the final epoch: ignored.
    rows += [similarity_row("cross_epoch", trial, trial, 0, 0, 0.0, epoch_a=1, epoch_b=2, layers=NET4, job=trial)]
    if with_final_pair:
        rows += [
            similarity_row("cross_epoch", trial, trial, layer, layer, 1.0, epoch_a=5, epoch_b=5, layers=NET4, job=trial)
            for layer in TO_FINAL
        ]
    return rows


def test_block_structure_is_neighbour_cka_minus_far_cka_at_the_last_epoch():
    rows = (
        cross_layer("tri", triangle, 4)
        + cross_layer("tri", lambda i, j: 0.0, 4, epoch=1)
        + cross_layer("six", linear_decay, 6)
    )

    scores = {row["trial"]: row for row in block_structure(similarity_frame(rows)).iter_rows(named=True)}

    assert scores["tri"]["cka_neighbours"] == pytest.approx(0.8)
    assert scores["tri"]["cka_far"] == pytest.approx(0.2)
    assert scores["tri"]["block_structure"] == pytest.approx(0.6)
    assert (scores["tri"]["epoch"], scores["tri"]["layers"]) == (2, 4)
    # 6 layers: far is |i - j| > 2; distances 3, 4, 5 occur 3, 2, 1 times -> (3 x 0.7 + 2 x 0.6 + 0.5) / 6.
    assert scores["six"]["cka_far"] == pytest.approx(3.8 / 6)
    assert scores["six"]["block_structure"] == pytest.approx(0.9 - 3.8 / 6)


@pytest.mark.parametrize(("threshold", "expected"), [(0.9, [1, 4, 5, 3]), (0.96, [3, 5, 5, 5])])
def test_convergence_epoch_is_the_first_epoch_from_which_cka_to_the_final_epoch_stays_above_the_threshold(
    threshold, expected
):
    epochs = convergence_epochs(similarity_frame(cross_epoch("m")), threshold)

    assert epochs["layer"].to_list() == [0, 1, 2, 3]
    assert epochs["convergence_epoch"].to_list() == expected
    assert epochs["final_epoch"].unique().to_list() == [5]
    assert epochs["block"].to_list() == ["stem", "block1", "block2", "head"]


def test_the_final_epoch_with_itself_counts_as_converged():
    epochs = convergence_epochs(similarity_frame(cross_epoch("m", with_final_pair=True)), 0.9)

    assert epochs["convergence_epoch"].to_list() == [1, 4, 5, 3]  # layer 2 settles only at epoch 5 itself


def test_summarize_writes_a_long_table_with_the_trials_parameters(tmp_path):
    metrics = metrics_frame([metrics_row("tri", "pgd", 8 / 255, 2, width=4, seed=1)])
    similarity = similarity_frame(
        cross_layer("tri", triangle, 4) + cross_epoch("tri") + cross_layer("gone", linear_decay, 6)
    )

    summary = summarize(similarity, metrics)
    path = write_summary(Storage(tmp_path), summary)

    assert path == str(tmp_path / SUMMARY)
    assert pq.read_schema(path) == SUMMARY_SCHEMA
    statistics = summary.filter(trial="tri").group_by("statistic").len().sort("statistic").rows()
    assert statistics == [
        ("best_last_gap", 1),  # one epoch in metrics: the best is the last, a gap of exactly 0
        ("block_structure", 1),
        ("cka_far", 1),
        ("cka_neighbours", 1),
        ("convergence_epoch", 4),
    ]
    assert summary.filter(trial="tri")["scope"].unique().to_list() == ["trial"]
    score = summary.filter(trial="tri", statistic="block_structure").row(0, named=True)
    assert (score["value"], score["eps"], score["width"], score["seed"], score["label"], score["layer"]) == (
        pytest.approx(0.6),
        8 / 255,
        4,
        1,
        "PGD-AT ε=8/255",
        None,
    )
    converged = summary.filter(trial="tri", statistic="convergence_epoch").sort("layer")
    assert converged["value"].to_list() == [1.0, 4.0, 5.0, 3.0] and converged["threshold"].unique().to_list() == [0.9]
    # These rows carry no standard errors (files written before rayrs recorded them): no interval, not a made-up one.
    assert summary.filter(trial="tri", statistic="block_structure")[["lower", "upper", "interval"]].row(0) == (None,) * 3
    # The configuration rows: one trial each, so its own value and interval.
    config = summary.filter(scope="config", statistic="block_structure", config="PGD-AT ε=8/255").row(0, named=True)
    assert (config["value"], config["seeds"], config["trial"], config["seed"]) == (pytest.approx(0.6), 1, None, None)
    assert summary.filter(trial="gone")["label"].unique().to_list() == ["gone"]  # not in metrics: kept, named by id


def test_summary_charts_plot_the_score_against_eps_and_the_convergence_epoch_against_depth():
    metrics = metrics_frame(
        [
            metrics_row(f"{m}{w}{s}", m, e, 2, width=w, seed=s)
            for m, e in (("standard", 0.0), ("pgd", 8 / 255), ("trades", 8 / 255))
            for w in (1, 2)
            for s in (0, 1)
        ]
    )
    similarity = similarity_frame(
        [r for t in metrics["trial"].unique() for r in cross_layer(t, triangle, 4)] + cross_epoch("pgd10")
    )
    summary = summarize(similarity, metrics)

    scores = block_structure_chart(summary).to_dict()
    epochs = convergence_chart(summary).to_dict()

    rows = data_rows(scores)
    # One point per configuration (its seeds' mean); the 2 standard ones are the eps-0 point of both methods'
    # panels: 4 robust + 2 x 2 standard rows.
    assert len(rows) == 8 and {r["seeds"] for r in rows} == {2}
    assert {(r["panel"][4:], r["eps_label"]) for r in rows} == {
        ("PGD-AT", "0"),
        ("PGD-AT", "8/255"),
        ("TRADES", "0"),
        ("TRADES", "8/255"),
    }
    bars, line = scores["spec"]["layer"]
    assert (bars["mark"]["type"], bars["encoding"]["y"]["field"], bars["encoding"]["y2"]["field"]) == (
        "rule",
        "lower",
        "upper",
    )
    assert (line["encoding"]["y"]["field"], line["encoding"]["color"]["field"]) == ("value", "width_label")
    assert [r["value"] for r in data_rows(epochs)] == [1.0, 4.0, 5.0, 3.0]
    assert epochs["params"][0]["name"] == "layer_type"
    page = summary_html(summary)
    assert "<td>0.600</td>" in page and "Convergence epoch" in page


def test_summary_charts_without_rows_say_what_to_add():
    empty = summarize(similarity_frame([]), metrics_frame([]))

    assert empty.is_empty() and empty.columns == SUMMARY_SCHEMA.names
    with pytest.raises(NoData, match="add `- kind: cross_layer` to `compare:`"):
        block_structure_chart(empty)
    with pytest.raises(NoData, match="add `- kind: cross_epoch` to `compare:`"):
        convergence_chart(empty)


# -- intervals -------------------------------------------------------------------------------------------------
def test_the_block_structure_score_has_the_jackknife_interval_of_its_replicates():
    """Replicate g of the score is the score of replicate g of every value; checked by recomputing it by hand."""
    rows = cross_layer("tri", triangle, 4)
    frame = frame_with_uncertainty("tri", rows, error_of=lambda row: 0.0 if row["value"] == 1 else 0.02)
    replicates = {(r["layer_a"], r["layer_b"]): np.array(r["jackknife"]) for r in frame.iter_rows(named=True)}
    near = np.mean([replicates[pair] for pair in ((0, 1), (1, 2), (2, 3))], axis=0)
    far = np.mean([replicates[pair] for pair in ((0, 2), (0, 3), (1, 3))], axis=0)
    by_hand = near - far
    error = np.sqrt(19 / 20 * np.square(by_hand - by_hand.mean()).sum())

    score = block_structure(frame).row(0, named=True)

    assert score["block_structure"] == pytest.approx(0.6)
    assert (score["block_structure_lower"], score["block_structure_upper"]) == pytest.approx(
        (0.6 - JACKKNIFE_T95 * error, 0.6 + JACKKNIFE_T95 * error), abs=2e-6
    )
    assert 0.02 / 3 < error < 0.05  # six values of error 0.02 each, averaged: between independent and aligned
    # One value without replicates (an older file): no interval at all, rather than one from the rest.
    partial = frame.with_columns(
        jackknife=pl.when(pl.col("layer_a") == 0).then(None).otherwise(pl.col("jackknife")),
        std_error=pl.when(pl.col("layer_a") == 0).then(None).otherwise(pl.col("std_error")),
    )
    assert block_structure(partial).row(0, named=True)["block_structure_lower"] is None


def test_the_convergence_epochs_range_comes_from_the_edges_of_each_values_interval():
    # Layer 0 against the final epoch 5: CKA 0.88, 0.92, 0.95, 0.97 with standard error 0.01 (half-width 0.0209):
    # the value stays >= 0.9 from epoch 2, its upper edge (0.9009 at epoch 1) from epoch 1, its lower edge
    # (0.8991 at epoch 2) only from epoch 3.
    rows = [
        similarity_row("cross_epoch", "m", "m", 0, 0, value, epoch_a=epoch, epoch_b=5, layers=NET4, job="m")
        for epoch, value in enumerate([0.88, 0.92, 0.95, 0.97, 1.0], start=1)
    ]
    frame = frame_with_uncertainty("m", rows, error_of=lambda row: 0.0 if row["value"] == 1 else 0.01)

    epochs = convergence_epochs(frame, 0.9).row(0, named=True)

    assert (epochs["earliest"], epochs["convergence_epoch"], epochs["latest"]) == (1, 2, 3)
    assert convergence_epochs(similarity_frame(rows), 0.9).row(0, named=True)["earliest"] is None  # no errors


def test_the_best_vs_last_gap_of_each_trial_and_of_its_seeds_allows_for_the_choice_of_the_best_epoch():
    curve = [0.30, 0.50, 0.56, 0.55]  # the best epoch is 3, one point above the last
    metrics = metrics_frame(
        [
            metrics_row(f"s{seed}", "pgd", 8 / 255, epoch, seed=seed, test_robust_acc=accuracy, test_examples=256)
            for seed in (0, 1)
            for epoch, accuracy in enumerate(curve, start=1)
        ]
    )

    summary = summarize(similarity_frame([]), metrics)

    trial = summary.filter(statistic="best_last_gap", trial="s0").row(0, named=True)
    config = summary.filter(statistic="best_last_gap", scope="config").row(0, named=True)
    assert (trial["value"], trial["epoch"], trial["interval"]) == (pytest.approx(0.01), 3, "simultaneous")
    assert trial["lower"] == 0.0 and 0.05 < trial["upper"] < 0.2  # 256 images: a 1-point drop is noise
    assert (config["value"], config["seeds"], config["lower"]) == (pytest.approx(0.01), 2, 0.0)
    assert config["upper"] >= trial["upper"]  # two identical seeds are no more certain than the images allow


def test_a_transfer_accuracy_has_the_wilson_interval_of_its_probe_images():
    rows = [
        similarity_row("transfer", a, b, -1, -1, value, measure="transfer_accuracy", layers=NET4, job=f"{a}-{b}")
        | {"n_examples": 450}
        for a, b, value in (("x", "x", 0.0), ("x", "y", 0.6))
    ]

    summary = summarize(similarity_frame(rows), metrics_frame([]))

    accuracies = {r["target"]: r for r in summary.filter(statistic="transfer_accuracy", scope="trial").iter_rows(named=True)}
    for target, successes in (("x", 0), ("y", 270)):
        reference = stats.binomtest(successes, 450).proportion_ci(method="wilson")
        row = accuracies[target]
        assert (row["lower"], row["upper"], row["interval"]) == (
            pytest.approx(reference.low, abs=1e-12),
            pytest.approx(reference.high),
            "wilson",
        )
