"""The report end to end: a synthetic, schema-valid results tree with every comparison kind
(`tests/synthetic.py`) renders every figure to PNG, SVG and one offline page; re-rendering skips what did not
change; a figure without rows is listed with the reason instead of drawn."""

from __future__ import annotations

import re
import shutil
import struct
from pathlib import Path

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from test_analysis import write_golden

import synthetic
from analysis.report import FIGURES, MANIFEST, render_report
from analysis.summary import SUMMARY, SUMMARY_SCHEMA
from rayrs import storage as layout
from rayrs.errors import UserError
from rayrs.schema import SECONDS_FIELD, SIMILARITY_SCHEMA
from rayrs.storage import Storage

CROSS_EPOCH_FIGURES = {"fig6_convergence", "convergence_epoch", "fig25_epoch_by_epoch", "appb1_agreement", "appb1_cost"}


@pytest.fixture(scope="module")
def rendered(tmp_path_factory):
    results = synthetic.write_results(tmp_path_factory.mktemp("synthetic"))
    return results, render_report(results, formats=("png", "svg", "html"))


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    return struct.unpack(">II", data[16:24])  # IHDR width, height


def test_every_figure_with_rows_is_drawn_to_png_and_svg(rendered):
    results, report = rendered

    assert report.out_dir == results.local_path(layout.REPORT_DIR)
    assert list(report.written) == list(FIGURES) and report.skipped == {}
    for name, (png, svg) in report.written.items():
        assert (png.name, svg.name) == (f"{name}.png", f"{name}.svg")
        width, height = png_size(png)
        assert width > 300 and height > 150 and png.stat().st_size > 5_000, name
        assert svg.read_text().startswith("<svg"), name
    assert not list(report.out_dir.glob("*.tmp-*"))


def test_the_page_embeds_each_figure_once_offline_with_what_the_paper_and_this_run_show(rendered):
    _, report = rendered
    page = report.index.read_text()

    assert page.count("window.vegaEmbed=") == 1  # the bundle's last statement: inlined once
    assert not re.search(r"<(script|link|img)[^>]*(src|href)\s*=\s*[\"']?(https?:)?//", page)  # no CDN, no network
    for name in report.written:
        assert page.count(f'<div class="chart" id="fig-{name}">') == 1, name
    assert page.count('<div class="chart"') == len(report.written)
    assert page.count("<b>The paper:</b>") == len(report.written) and page.count("<b>This run:</b>") == len(
        report.written
    )
    assert "Cost per comparison: Procrustes 10.0× CKA&#x27;s time; SVCCA 8.0× CKA&#x27;s time" in page
    # Captions carry this run's numbers next to the paper's finding.
    assert re.search(
        r"Block-structure score \(neighbours − far layers\): standard \(width 1\) 0\.\d\d.* — robust is lower, as in the paper",
        page,
    )
    assert "robust → non-robust transfers least, as in the paper" in page
    assert "early layers converge first (strictly, beyond the ranges), as in the paper" in page
    # The summary's tables and Table 1 as HTML, before the first chart.
    first_chart = page.index('<div class="chart"')
    assert -1 < page.index("Block-structure score: mean CKA of neighbouring layers") < first_chart
    assert -1 < page.index("<th colspan=3>robust accuracy</th>") < first_chart


def test_summary_parquet_is_written_next_to_the_report(rendered):
    results, report = rendered

    table = pq.read_table(report.out_dir / SUMMARY)

    assert report.summary == str(report.out_dir / SUMMARY)
    assert table.schema == SUMMARY_SCHEMA
    statistics = set(table.column("statistic").to_pylist())
    assert statistics == {
        "block_structure", "cka_neighbours", "cka_far", "convergence_epoch", "best_last_gap", "transfer_accuracy"
    }
    scores = pl.from_arrow(table).filter(statistic="block_structure")
    assert scores.filter(scope="trial").height == len(synthetic.NAMES)  # every trial has a cross_layer comparison
    # One row per configuration too: the mean over its seeds, with an interval (every synthetic value has one).
    configs = scores.filter(scope="config")
    assert configs.height == scores.filter(scope="trial")["config"].n_unique()
    assert (configs["lower"] <= configs["value"]).all() and (configs["value"] <= configs["upper"]).all()


def test_rerendering_unchanged_results_redraws_nothing(rendered):
    results, report = rendered
    before = {p: p.stat().st_mtime_ns for paths in report.written.values() for p in paths}

    again = render_report(results, formats=("png", "svg", "html"))

    assert again.unchanged == list(report.written)
    assert again.skipped == report.skipped
    assert {p: p.stat().st_mtime_ns for p in before} == before
    assert again.index.read_text().count('<div class="chart"') == len(report.written)


def test_rerendering_redraws_only_the_figures_whose_rows_changed(rendered, tmp_path):
    results, _ = rendered
    copy = Storage(shutil.copytree(results.root, tmp_path / "copy"))
    job = layout.similarity("cross_epoch", synthetic.STANDARD)
    changed = pq.read_table(copy.full_path(job)).to_pylist()
    copy.write_table(
        job,
        pa.Table.from_pylist(
            [row | {"value": row["value"] * 0.5} for row in changed], schema=SIMILARITY_SCHEMA.append(SECONDS_FIELD)
        ),
    )

    again = render_report(copy, formats=("png", "svg", "html"))

    assert set(again.written) - set(again.unchanged) == CROSS_EPOCH_FIGURES
    assert (copy.local_path(layout.REPORT_DIR) / MANIFEST).exists()


def test_a_run_with_cross_layer_only_lists_every_other_figure_with_what_to_add(tmp_path):
    results = synthetic.write_results(tmp_path / "results", kinds={"cross_layer"})

    report = render_report(results, out_dir=tmp_path / "out", formats=("html",))

    assert set(report.written) == {
        "table1",
        "accuracy_curves",
        "cross_layer",
        "fig3_eps_width",
        "block_structure",
        "appb1_agreement",
        "appb1_cost",
    }
    expected = {
        "fig2d_cross_model": "add `- kind: cross_model` to `compare:`",
        "fig4_benign_vs_adversarial": "add `- kind: benign_vs_adversarial` to `compare:`",
        "fig5a_transferability": "add `- kind: transfer` to `compare:`",
        "fig5bcd_transfer_cka": "add `- kind: transfer` to `compare:`",
        "fig6_convergence": "add `- kind: cross_epoch` to `compare:`",
        "convergence_epoch": "add `- kind: cross_epoch` to `compare:`",
        "fig25_epoch_by_epoch": "add `- kind: cross_epoch` to `compare:`",
        "fig7_threat_models": "add `- kind: cross_model` to `compare:`",
    }
    assert set(report.skipped) == set(expected)
    for name, hint in expected.items():
        assert hint in report.skipped[name], name
    page = report.index.read_text()
    assert page.count("Not drawn:") == len(expected) and page.count('<div class="chart"') == len(report.written)
    assert report.written["cross_layer"] == []  # html only: no image files


def test_without_similarity_the_report_draws_the_accuracy_figures_and_says_why_the_rest_is_missing(tmp_path):
    results = write_golden(tmp_path / "results", with_similarity=False)

    report = render_report(results, out_dir=tmp_path / "out", formats=("svg", "html"))

    assert list(report.written) == ["table1", "accuracy_curves"]
    assert "Fig 2 needs a cross_layer comparison" in report.skipped["cross_layer"]
    assert "No summary numbers" in report.index.read_text()


def test_render_report_rejects_an_unknown_format(tmp_path):
    with pytest.raises(UserError, match="jpg unknown; choose from png, svg, pdf, html, parquet"):
        render_report(Storage(tmp_path), out_dir=tmp_path, formats=("jpg",))
