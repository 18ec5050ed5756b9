"""Every figure of an experiment, from its Parquet files alone: PNG / SVG files and one offline ``index.html``.

The page inlines the Vega, Vega-Lite and vega-embed JavaScript once (from vl-convert), so it opens with no
network: on a cluster node, in a CI artefact, on a plane.
"""

from __future__ import annotations

import html
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import altair as alt
import polars as pl
import vl_convert

from analysis.curves import accuracy_curves
from analysis.heatmaps import cross_layer_panels
from analysis.load import NoData, read_metrics, read_similarity
from rayrs.errors import UserError
from rayrs.storage import REPORT_DIR, Storage

FORMATS = ("png", "svg", "html")  # html: the index.html page that embeds every figure
PNG_SCALE = 2  # twice the chart's CSS size: sharp on high-density screens and in papers
INDEX = "index.html"


@dataclass(frozen=True)
class Figure:
    """One figure family: its heading, what the paper found there (for the page), and how to build it."""

    title: str
    about: str
    build: Callable[[pl.DataFrame, pl.DataFrame], alt.TopLevelMixin]  # (metrics, similarity) -> chart


FIGURES: dict[str, Figure] = {
    "accuracy_curves": Figure(
        title="Accuracy over training (Table 1)",
        about=(
            "Benign and robust accuracy on the training and test sets after every epoch. The paper finds that "
            "robust training trades benign accuracy for robust accuracy: robust trials sit lower in the benign "
            "column and higher in the robust one. A widening gap between the solid (train) and dashed (test) "
            "robust curves is robust overfitting."
        ),
        build=lambda metrics, similarity: accuracy_curves(metrics),
    ),
    "cross_layer": Figure(
        title="Cross-layer similarity of benign representations (Fig 2, Fig 3)",
        about=(
            "Linear CKA between every pair of layers of each network, on clean test images; layer 0 is at the "
            "bottom-left. Non-robust networks show a block structure: bright squares along the diagonal, dark "
            "far from it. The paper finds that robust networks lose it: their heatmaps are brighter far from "
            "the diagonal (long-range similarity between layers), and more so as the training eps grows."
        ),
        build=lambda metrics, similarity: cross_layer_panels(similarity, metrics),
    ),
}


@dataclass
class Report:
    """What `render_report` wrote: files per figure, figures skipped with the reason, and the page."""

    out_dir: Path
    written: dict[str, list[Path]] = field(default_factory=dict)  # figure name -> files
    skipped: dict[str, str] = field(default_factory=dict)  # figure name -> why it was not drawn
    index: Path | None = None

    def __str__(self) -> str:
        lines = [f"{name}: {', '.join(p.name for p in paths)}" for name, paths in self.written.items()]
        lines += [f"{name}: skipped, {reason}" for name, reason in self.skipped.items()]
        if self.index is not None:
            lines.append(f"open {self.index}")
        return "\n".join(lines)


def render_report(storage: Storage, out_dir: Path | None = None, formats: Sequence[str] = ("png", "html")) -> Report:
    """Draw every figure in `FIGURES` from ``storage``'s Parquet files into ``out_dir``.

    ``out_dir`` defaults to the results' ``report/`` folder; it is required when the results are not local.
    ``formats``: any of ``png`` (vl-convert, scale 2), ``svg`` and ``html`` (one ``index.html``).
    A figure without data is skipped, with the reason, rather than drawn empty.
    """
    unknown = sorted(set(formats) - set(FORMATS))
    if unknown:
        raise UserError(f"report format(s) {', '.join(unknown)} unknown; choose from {', '.join(FORMATS)}")
    if out_dir is None:
        if not storage.is_local:
            raise UserError(f"results at {storage.root} are not a local folder; give an output folder for the report")
        out_dir = storage.local_path(REPORT_DIR)
    out = Storage(out_dir)  # atomic writes: temporary name, then rename
    report = Report(out_dir=Path(out.root))

    metrics, similarity = read_metrics(storage), read_similarity(storage)
    specs: dict[str, dict] = {}
    for name, figure in FIGURES.items():
        try:
            spec = figure.build(metrics, similarity).to_dict()
        except NoData as reason:
            report.skipped[name] = str(reason)
            continue
        specs[name] = spec
        report.written[name] = [_write_image(out, name, spec, fmt) for fmt in formats if fmt in ("png", "svg")]

    if "html" in formats:
        out.write_bytes(INDEX, index_html(_experiment_name(storage, metrics), specs, report.skipped).encode())
        report.index = report.out_dir / INDEX
    return report


def index_html(experiment: str, specs: dict[str, dict], skipped: dict[str, str]) -> str:
    """A self-contained page: a section per figure in `FIGURES` order, the JavaScript inlined once."""
    sections = []
    for name, figure in FIGURES.items():
        if name in specs:
            sections.append(
                f'<section>\n<h2>{html.escape(figure.title)}</h2>\n<p>{html.escape(figure.about)}</p>\n'
                f'<div id="fig-{name}"></div>\n'
                f'<script>vegaEmbed("#fig-{name}", {_script_json(specs[name])}, EMBED_OPTIONS);</script>\n</section>'
            )
        elif name in skipped:
            sections.append(
                f'<section>\n<h2>{html.escape(figure.title)}</h2>\n'
                f'<p class="skipped">Not drawn: {html.escape(skipped[name])}.</p>\n</section>'
            )
    return _PAGE.format(
        title=html.escape(f"rayrs report: {experiment}"),
        bundle=vl_convert.javascript_bundle(vl_version=_vl_version()),
        sections="\n".join(sections),
    )


def _write_image(out: Storage, name: str, spec: dict, fmt: str) -> Path:
    if fmt == "png":
        data = vl_convert.vegalite_to_png(spec, vl_version=_vl_version(), scale=PNG_SCALE, allowed_base_urls=[])
    else:
        data = vl_convert.vegalite_to_svg(spec, vl_version=_vl_version(), allowed_base_urls=[]).encode()
    out.write_bytes(f"{name}.{fmt}", data)
    return Path(out.full_path(f"{name}.{fmt}"))


def _vl_version() -> str | None:
    """The Vega-Lite version Altair writes specs for, if vl-convert has it (else vl-convert's latest)."""
    major_minor = ".".join(alt.SCHEMA_VERSION.lstrip("v").split(".")[:2])
    return major_minor if major_minor in vl_convert.get_vegalite_versions() else None


def _experiment_name(storage: Storage, metrics: pl.DataFrame) -> str:
    names = metrics["experiment"].unique().to_list()
    return names[0] if len(names) == 1 else storage.root.rstrip("/").rsplit("/", 1)[-1]


def _script_json(spec: dict) -> str:
    # "</" inside a <script> would end it early (a trial named "</script>" must not break the page).
    return json.dumps(spec, separators=(",", ":")).replace("</", "<\\/")


_PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>{title}</title>
<style>
body {{ font-family: system-ui, sans-serif; max-width: 1200px; margin: 2em auto; padding: 0 1em; color: #222; }}
p {{ max-width: 60em; line-height: 1.45; }}
.skipped {{ color: #8a5a00; }}
</style>
<script>
{bundle}
</script>
<script>
const EMBED_OPTIONS = {{
  mode: "vega-lite",
  renderer: "svg",
  // No "open in editor": it would send the spec to a web site.
  actions: {{export: true, source: true, compiled: false, editor: false}},
}};
</script>
</head>
<body>
<h1>{title}</h1>
{sections}
</body>
</html>
"""
