"""analysis/: Polars readers, Altair figures and the offline report, on a small schema-valid results tree.

The golden experiment has three trials of a 6-layer network: a "standard" one whose cross-layer CKA is
block-diagonal (two blocks of three layers), and PGD-AT at eps 2/255 and 8/255 whose CKA is bright
everywhere, as the paper's Fig 2 reports for robust networks.
"""

from __future__ import annotations

import re
import struct
from pathlib import Path

import polars as pl
import pyarrow as pa
import pytest

from analysis.curves import accuracy_curves
from analysis.heatmaps import cross_layer_heatmap, cross_layer_panels
from analysis.load import NoData, format_eps, read_metrics, read_similarity, trial_labels
from analysis.report import render_report
from rayrs import storage as layout
from rayrs.errors import UserError
from rayrs.schema import METRICS_SCHEMA, SIMILARITY_SCHEMA
from rayrs.storage import Storage

LAYERS = 6
EPOCHS = 3
TRIALS = {  # trial id -> (method, eps)
    "t_pgd8": ("pgd", 8 / 255),
    "t_standard": ("standard", 0.0),
    "t_pgd2": ("pgd", 2 / 255),
}
LABELS_IN_ORDER = ["standard", "PGD-AT ε=2/255", "PGD-AT ε=8/255"]
TYPES = ["conv", "bn", "act", "conv", "bn", "act"]


# -- golden results ------------------------------------------------------------------------------


def metrics_row(trial: str, method: str, eps: float, epoch: int, **overrides) -> dict:
    # Robust training trades benign accuracy for robust accuracy, more so at larger eps.
    trade = 0.02 * eps * 255 if method != "standard" else 0.0
    row = {
        "experiment": "golden", "trial": trial, "dataset": "digits", "arch": "wrn", "depth": 10, "width": 1,
        "method": method, "threat_model": "linf", "eps": eps, "seed": 0, "epoch": epoch, "lr": 0.1,
        "train_objective": 1.0 / epoch, "eval_eps": 8 / 255,
        "train_clean_acc": 0.6 + 0.1 * epoch - trade, "train_clean_loss": 1.0,
        "train_robust_acc": 0.05 * epoch + trade, "train_robust_loss": 2.0,
        "test_clean_acc": 0.55 + 0.1 * epoch - trade, "test_clean_loss": 1.1,
        "test_robust_acc": 0.03 * epoch + trade, "test_robust_loss": 2.1,
        "epoch_seconds": 3.0,
    }
    return row | overrides


def write_metrics(results: Storage, rows: list[dict]) -> None:
    results.write_table(layout.METRICS, pa.Table.from_pylist(rows, schema=METRICS_SCHEMA))


def block_cka(i: int, j: int) -> float:
    """Block-diagonal: layers 0-2 and 3-5 alike within their block, unlike across blocks."""
    return 1.0 if i == j else 0.9 if i // 3 == j // 3 else 0.1


def bright_cka(i: int, j: int) -> float:
    return 1.0 if i == j else 0.8


def similarity_rows(trial: str, epoch: int, cka, upper_triangle_only: bool = False) -> list[dict]:
    return [
        {
            "kind": "cross_layer", "measure": "cka",
            "model_a": trial, "epoch_a": epoch, "probe_a": "benign",
            "model_b": trial, "epoch_b": epoch, "probe_b": "benign",
            "layer_a": i, "layer_b": j, "name_a": f"layer{i}", "name_b": f"layer{j}",
            "type_a": TYPES[i], "type_b": TYPES[j], "value": cka(i, j),
            "n_examples": 64, "passes": 1, "job": f"{trial}-e{epoch}",
        }
        for i in range(LAYERS)
        for j in range(LAYERS)
        if not upper_triangle_only or i <= j
    ]


def write_similarity(results: Storage, job: str, rows: list[dict]) -> None:
    results.write_table(layout.similarity("cross_layer", job), pa.Table.from_pylist(rows, schema=SIMILARITY_SCHEMA))


def write_golden(root: Path, with_similarity: bool = True) -> Storage:
    results = Storage(root)
    write_metrics(
        results,
        [
            metrics_row(trial, method, eps, epoch)
            for trial, (method, eps) in TRIALS.items()
            for epoch in range(1, EPOCHS + 1)
        ],
    )
    if with_similarity:
        # The standard trial also has an early-epoch comparison (uniform 0.5) that the figure must not show.
        write_similarity(
            results, "standard",
            similarity_rows("t_standard", 1, lambda i, j: 0.5) + similarity_rows("t_standard", EPOCHS, block_cka),
        )
        write_similarity(results, "pgd8", similarity_rows("t_pgd8", EPOCHS, bright_cka))
        # Stored as one triangle only: the panel must still be the full square.
        write_similarity(results, "pgd2", similarity_rows("t_pgd2", EPOCHS, bright_cka, upper_triangle_only=True))
    return results


@pytest.fixture(scope="module")
def golden(tmp_path_factory) -> Storage:
    return write_golden(tmp_path_factory.mktemp("golden"))


def panel_rows(spec: dict, panel: dict) -> list[dict]:
    """The data rows a (sub)chart of ``spec`` draws: Altair puts them in the top-level ``datasets``."""
    return spec["datasets"][panel["data"]["name"]]


# -- readers -------------------------------------------------------------------------------------


def test_readers_return_every_row_with_the_schema_columns(golden):
    metrics, similarity = read_metrics(golden), read_similarity(golden)

    assert metrics.columns == METRICS_SCHEMA.names
    assert metrics.height == len(TRIALS) * EPOCHS
    assert similarity.columns == SIMILARITY_SCHEMA.names
    full, triangle = LAYERS * LAYERS, LAYERS * (LAYERS + 1) // 2
    assert similarity.height == 2 * full + full + triangle
    assert sorted(similarity["job"].unique().to_list()) == ["t_pgd2-e3", "t_pgd8-e3", "t_standard-e1", "t_standard-e3"]


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


# -- labels --------------------------------------------------------------------------------------


def test_trial_labels_put_non_robust_first_then_sort_by_eps(golden):
    labels = trial_labels(read_metrics(golden))

    assert labels["label"].to_list() == LABELS_IN_ORDER
    assert labels["trial"].to_list() == ["t_standard", "t_pgd2", "t_pgd8"]
    assert labels["order"].to_list() == [0, 1, 2]
    assert labels["robust"].to_list() == [False, True, True]


def test_trial_labels_name_eps_zero_standard_and_tell_apart_seeds(tmp_path):
    rows = [
        metrics_row("a", "pgd", 0.0, 1),  # eps 0: no attack, hence not robust
        metrics_row("b", "trades", 0.5, 1, threat_model="l2"),
        metrics_row("c", "pgd", 4 / 255, 1, seed=0),
        metrics_row("d", "pgd", 4 / 255, 1, seed=1),
    ]
    write_metrics(Storage(tmp_path), rows)

    labels = trial_labels(read_metrics(Storage(tmp_path)))

    assert labels["label"].to_list() == [
        "standard",
        "PGD-AT ε=4/255 (seed 0)",
        "PGD-AT ε=4/255 (seed 1)",
        "TRADES ε=0.5",
    ]


@pytest.mark.parametrize(("eps", "shown"), [(8 / 255, "8/255"), (1 / 255, "1/255"), (0.5, "0.5"), (0.2, "0.2"), (0.031, "0.031")])
def test_format_eps_shows_short_decimals_as_written_and_255ths_as_fractions(eps, shown):
    assert format_eps(eps) == shown


# -- heatmaps ------------------------------------------------------------------------------------


def test_cross_layer_heatmap_maps_layers_to_axes_and_cka_to_a_fixed_colour_scale(golden):
    rows = read_similarity(golden).filter(job="t_pgd8-e3")

    spec = cross_layer_heatmap(rows, title="PGD-AT ε=8/255").to_dict()

    encoding = spec["encoding"]
    assert (encoding["x"]["field"], encoding["y"]["field"]) == ("layer_a", "layer_b")
    assert encoding["color"]["field"] == "value"
    assert encoding["x"]["sort"] == "ascending" and encoding["y"]["sort"] == "descending"  # layer 0 bottom-left
    assert encoding["color"]["scale"]["domain"] == [0, 1]
    tooltip = {t["field"] for t in encoding["tooltip"]}
    assert tooltip == {"layer_a", "layer_b", "name_a", "name_b", "type_a", "type_b", "value"}
    assert spec["width"] == spec["height"]
    assert len(panel_rows(spec, spec)) == LAYERS * LAYERS


def test_cross_layer_panels_show_each_trial_once_in_label_order_at_its_last_epoch(golden):
    spec = cross_layer_panels(read_similarity(golden), read_metrics(golden)).to_dict()

    panels = spec["concat"]
    assert [p["title"]["text"] for p in panels] == LABELS_IN_ORDER
    assert [p["title"]["subtitle"] for p in panels] == [f"epoch {EPOCHS}"] * 3
    for panel in panels:
        assert len(panel_rows(spec, panel)) == LAYERS * LAYERS  # the triangle-only trial too
        assert panel["encoding"]["color"]["scale"]["domain"] == [0, 1]
    standard, pgd2, pgd8 = ({(r["layer_a"], r["layer_b"]): r["value"] for r in panel_rows(spec, p)} for p in panels)
    assert standard == {(i, j): block_cka(i, j) for i in range(LAYERS) for j in range(LAYERS)}  # not epoch 1's 0.5
    assert pgd2 == pgd8 == {(i, j): bright_cka(i, j) for i in range(LAYERS) for j in range(LAYERS)}
    assert pgd8[(0, 5)] > standard[(0, 5)]  # the robust network is brighter far from the diagonal


def test_cross_layer_panels_of_trials_missing_from_metrics_are_titled_by_trial_id(golden):
    spec = cross_layer_panels(read_similarity(golden), read_metrics(golden).clear()).to_dict()

    assert [p["title"]["text"] for p in spec["concat"]] == ["t_pgd2", "t_pgd8", "t_standard"]


def test_cross_layer_panels_without_rows_say_why(golden):
    metrics = read_metrics(golden)
    empty = read_similarity(golden).clear()
    adversarial_only = read_similarity(golden).with_columns(probe_a=pl.lit("pgd20"), probe_b=pl.lit("pgd20"))

    with pytest.raises(NoData, match="no cross_layer rows in similarity/"):
        cross_layer_panels(empty, metrics)
    with pytest.raises(NoData, match="benign"):
        cross_layer_panels(adversarial_only, metrics)


# -- curves --------------------------------------------------------------------------------------


def test_accuracy_curves_draw_four_lines_per_trial_on_a_zero_to_one_axis(golden):
    metrics = read_metrics(golden)

    spec = accuracy_curves(metrics).to_dict()

    lines, points = spec["spec"]["layer"]
    encoding = lines["encoding"]
    assert spec["facet"]["column"]["field"] == "evaluation"
    assert (encoding["x"]["field"], encoding["y"]["field"]) == ("epoch", "accuracy")
    assert (encoding["color"]["field"], encoding["strokeDash"]["field"]) == ("label", "split")
    assert points["encoding"]["color"]["field"] == "label"
    assert encoding["color"]["sort"] == LABELS_IN_ORDER
    assert encoding["y"]["scale"]["domain"] == [0, 1]
    rows = panel_rows(spec, spec)
    assert len(rows) == 4 * metrics.height
    lines = {(r["label"], r["split"], r["evaluation"]) for r in rows}
    assert len(lines) == 4 * len(TRIALS)
    best = {(r["label"], r["split"], r["evaluation"]): r["accuracy"] for r in rows if r["epoch"] == EPOCHS}
    assert best[("standard", "test", "benign")] == pytest.approx(0.55 + 0.1 * EPOCHS)
    assert best[("PGD-AT ε=8/255", "test", "robust")] == pytest.approx(0.03 * EPOCHS + 0.16)


def test_accuracy_curves_without_metrics_say_why(tmp_path):
    with pytest.raises(NoData, match="no rows in metrics.parquet"):
        accuracy_curves(read_metrics(Storage(tmp_path)))


# -- report --------------------------------------------------------------------------------------


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    return struct.unpack(">II", data[16:24])  # IHDR width, height


def test_render_report_writes_pngs_and_one_offline_page(golden):
    report = render_report(golden)

    assert report.out_dir == golden.local_path(layout.REPORT_DIR)
    assert report.skipped == {}
    assert sorted(report.written) == ["accuracy_curves", "cross_layer"]
    for paths in report.written.values():
        [png] = paths
        width, height = png_size(png)
        assert width > 400 and height > 200 and png.stat().st_size > 5_000
    page = report.index.read_text()
    bundle_marker = "window.vegaEmbed="  # the bundle's last statement: present once iff inlined once
    assert page.count(bundle_marker) == 1
    assert len(page) > 500_000  # the whole bundle, not a reference to it
    assert page.count('vegaEmbed("#fig-') == 2
    assert not re.search(r"<(script|link)[^>]*(src|href)\s*=\s*[\"']?(https?:)?//", page)
    assert "block structure" in page and "benign accuracy for robust accuracy" in page
    assert not list(report.out_dir.glob("*.tmp-*"))


def test_render_report_without_similarity_draws_curves_and_says_why_heatmaps_are_missing(tmp_path):
    results = write_golden(tmp_path / "results", with_similarity=False)

    report = render_report(results, out_dir=tmp_path / "out", formats=("svg", "html"))

    assert list(report.written) == ["accuracy_curves"]
    [svg] = report.written["accuracy_curves"]
    assert svg.suffix == ".svg" and svg.read_text().startswith("<svg")
    assert "no cross_layer rows in similarity/" in report.skipped["cross_layer"]
    page = report.index.read_text()
    assert page.count('vegaEmbed("#fig-') == 1
    assert "Not drawn" in page and "no cross_layer rows in similarity/" in page


def test_render_report_rejects_an_unknown_format(golden, tmp_path):
    with pytest.raises(UserError, match="pdf unknown; choose from png, svg, html"):
        render_report(golden, out_dir=tmp_path, formats=("pdf",))
