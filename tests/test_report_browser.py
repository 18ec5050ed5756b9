"""The report page in a real browser: headless Chromium opens ``index.html`` from disk, with no network, and
every figure must have drawn its marks (the DOM holds each chart's SVG), with no Vega error on the page.

Skipped only where Chromium is not installed (CI installs Debian's ``chromium``: see ``.ci/run``).
"""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest

import synthetic
from analysis.report import render_report

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")

# The Vega mark each figure must have drawn (its SVG holds `class="mark-<mark>`).
MARKS = {
    "table1": "text",
    "accuracy_curves": "line",
    "cross_layer": "rect",
    "fig2d_cross_model": "rect",
    "fig3_eps_width": "rect",
    "block_structure": "line",
    "fig4_benign_vs_adversarial": "line",
    "fig5a_transferability": "rect",
    "fig5bcd_transfer_cka": "line",
    "fig6_convergence": "area",
    "convergence_epoch": "line",
    "fig25_epoch_by_epoch": "rect",
    "fig7_threat_models": "rect",
    "appb1_agreement": "symbol",
    "appb1_cost": "rect",
}
LAYER_FIGURES = {
    "cross_layer",
    "fig2d_cross_model",
    "fig3_eps_width",
    "fig4_benign_vs_adversarial",
    "fig5bcd_transfer_cka",
    "convergence_epoch",
    "fig7_threat_models",
}  # layers on an axis: a type dropdown (Fig 6 draws one layer per block, its output: nothing to filter)


def dump_dom(page, profile) -> str:
    """The page's DOM after its scripts ran, as headless Chromium serialises it (no network, no GPU)."""
    command = [
        CHROMIUM,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={profile}",
        "--virtual-time-budget=10000",
        "--dump-dom",
        page.as_uri(),
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=180, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def charts(dom: str) -> dict[str, str]:
    """Each chart container's id (without "fig-") -> the DOM from its opening tag to the next container's."""
    starts = [(m.start(), m.group(1)) for m in re.finditer(r'<div class="chart[^"]*" id="fig-([a-z0-9_]+)"', dom)]
    ends = [start for start, _ in starts[1:]] + [len(dom)]
    return {name: dom[start:end] for (start, name), end in zip(starts, ends)}


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install -y chromium)")
def test_every_chart_of_the_offline_page_renders_in_headless_chromium(tmp_path):
    results = synthetic.write_results(tmp_path / "results")
    report = render_report(results, formats=("html",))
    assert set(report.written) == set(MARKS)

    dom = dump_dom(report.index, tmp_path / "profile")

    drawn = charts(dom)
    assert sorted(drawn) == sorted(MARKS)  # one container per figure, no more
    for name, mark in MARKS.items():
        assert "<svg" in drawn[name], f"{name}: no chart was drawn"
        assert f'class="mark-{mark}' in drawn[name], f"{name}: no {mark} marks"
        assert ("<select" in drawn[name]) == (name in LAYER_FIGURES), f"{name}: layer-type dropdown"
    shown = re.sub(r"<script.*?</script>|<style.*?</style>", "", dom, flags=re.S)  # what the page shows
    assert "vega-error" not in shown and "Vega error" not in shown
