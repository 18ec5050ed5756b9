"""Every figure and table of the paper from an experiment's Parquet files: PNG / SVG files, ``summary.parquet``
and one offline ``index.html``.

`FIGURES` is the registry, in page order: each entry says what the paper found, how to draw the figure and how
to put this run's numbers in words (`analysis.findings`). A figure whose rows are absent is skipped with the
reason (what to add to the sweep), never drawn empty. The page inlines the Vega, Vega-Lite and vega-embed
JavaScript once (from vl-convert), so it opens with no network: on a cluster node, in a CI artefact, on a plane.

Re-rendering is incremental: each figure's inputs (its similarity kinds' rows, the metrics) and the code that
draws it are hashed, and a figure whose hash is in the report folder's ``manifest.json`` with its files present
is not drawn again (its Vega-Lite spec, ``<name>.vl.json``, is reused for the page).
"""

from __future__ import annotations

import functools
import hashlib
import html
import inspect
import json
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType

import altair as alt
import polars as pl
import vl_convert
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from analysis import adversarial, curves, dynamics, findings, heatmaps, layers, load, measures, summary, table1, view
from analysis.load import NoData, read_metrics, read_similarity
from rayrs.errors import UserError
from rayrs.storage import REPORT_DIR, Storage

# html: the index.html page that embeds every figure; parquet: the joined similarity rows (`analysis.view`)
FORMATS = ("png", "svg", "pdf", "html", "parquet")
IMAGE_FORMATS = ("png", "svg", "pdf")  # one file per figure each, rendered from one SVG (`_write_images`)
PNG_SCALE = 2  # twice the chart's CSS size: sharp on high-density screens and in papers
INDEX = "index.html"
MANIFEST = "manifest.json"
MANIFEST_VERSION = 1


@dataclass(frozen=True)
class Inputs:
    """What every figure is drawn from: the two tables rayrs writes, and the summary computed from them."""

    metrics: pl.DataFrame
    similarity: pl.DataFrame
    summary: pl.DataFrame


@dataclass(frozen=True)
class Figure:
    """One figure of the paper: its heading, what the paper found there, how to draw it and describe it.

    ``reads``: the similarity kinds it draws from (with metrics.parquet, its inputs for the re-render check);
    ``code``: the modules whose source draws it (a change to them redraws it).
    """

    title: str
    paper: str
    build: Callable[[Inputs], alt.TopLevelMixin]
    finding: Callable[[pl.DataFrame, pl.DataFrame, pl.DataFrame], str]
    reads: tuple[str, ...]
    code: tuple[ModuleType, ...]
    html_table: Callable[[Inputs], str] | None = None  # a table the page shows above the chart
    # Files written beside the figure's images whatever the formats (name -> text), e.g. Table 1 as CSV and LaTeX.
    tables: Callable[[Inputs], dict[str, str]] | None = None


FIGURES: dict[str, Figure] = {
    "table1": Figure(
        title="Table 1: benign and robust accuracy, train and test",
        paper=(
            "Robust training trades benign accuracy for robust accuracy (WRN-28-10 on CIFAR-10: 94.9% → 87.6% "
            "benign test accuracy) and has a large generalisation gap in robust accuracy (98.2% train vs 44.2% test, "
            "Δ 54.0%). Best = the epoch of highest held-out robust accuracy (Rice et al.'s early stopping)."
        ),
        build=lambda i: table1.table1(i.metrics),
        finding=findings.table1_finding,
        reads=(),
        code=(table1,),
        html_table=lambda i: table1.table1_html(i.metrics),
        tables=lambda i: {"table1.csv": table1.table1_csv(i.metrics), "table1.tex": table1.table1_latex(i.metrics)},
    ),
    "accuracy_curves": Figure(
        title="Accuracy over training (Table 1, per epoch)",
        paper=(
            "Benign and robust accuracy on the training and test sets after every epoch. Robust trials sit lower in "
            "the benign column and higher in the robust one; a widening gap between the solid (train) and dashed "
            "(test) robust curves is robust overfitting."
        ),
        build=lambda i: curves.accuracy_curves(i.metrics),
        finding=findings.accuracy_finding,
        reads=(),
        code=(curves,),
    ),
    "cross_layer": Figure(
        title="Fig 2 (a–c): cross-layer similarity of benign representations",
        paper=(
            "Linear CKA between every pair of layers of each network, on clean test images; layer 0 is at the "
            "bottom-left. Non-robust networks show a block structure: bright squares along the diagonal, dark far "
            "from it. Robust networks lose it: their heatmaps are brighter far from the diagonal (long-range "
            "similarity between layers)."
        ),
        build=lambda i: heatmaps.fig2_cross_layer(i.similarity, i.metrics),
        finding=findings.cross_layer_finding,
        reads=("cross_layer",),
        code=(heatmaps, summary),
    ),
    "fig2d_cross_model": Figure(
        title="Fig 2d: non-robust vs robust model",
        paper="CKA between the layers of a non-robust and a robust model with identical setups is low throughout: they learn different representations.",
        build=lambda i: heatmaps.fig2d_cross_model(i.similarity, i.metrics),
        finding=findings.cross_model_finding,
        reads=("cross_model", "cross_layer"),
        code=(heatmaps,),
    ),
    "fig3_eps_width": Figure(
        title="Fig 3: training ε × network width",
        paper=(
            "Cross-layer heatmaps with the training ε growing down the rows and the WRN width across the columns. "
            "A larger ε brightens the heatmaps (the block structure fades, eventually disappears); a wider network "
            "barely changes them."
        ),
        build=lambda i: heatmaps.fig3_eps_width(i.similarity, i.metrics),
        finding=findings.eps_width_finding,
        reads=("cross_layer",),
        code=(heatmaps, summary),
    ),
    "block_structure": Figure(
        title="Block-structure score against ε and width (Figs 2, 3 in numbers)",
        paper=(
            "Mean CKA of neighbouring layers minus mean CKA of layers more than a third of the network apart, per "
            "model: high for a block structure, near zero when far layers are as alike as neighbours. The paper's "
            "figures show it falling as ε grows, at any width."
        ),
        build=lambda i: summary.block_structure_chart(i.summary),
        finding=findings.block_structure_finding,
        reads=("cross_layer",),
        code=(summary,),
    ),
    "fig4_benign_vs_adversarial": Figure(
        title="Fig 4: benign vs adversarial representations, layer by layer",
        paper=(
            "CKA between each layer's representation of clean and of adversarial images. In non-robust networks it "
            "stays high for up to the first third of the layers, then falls to near zero by the output; robust "
            "networks keep the two alike until the last few layers."
        ),
        build=lambda i: adversarial.fig4_benign_vs_adversarial(i.similarity, i.metrics),
        finding=findings.benign_vs_adversarial_finding,
        reads=("benign_vs_adversarial",),
        code=(adversarial,),
    ),
    "fig5a_transferability": Figure(
        title="Fig 5a: transferability of adversarial examples",
        paper=(
            "The target model's accuracy on adversarial examples crafted on the source (low = the attack transfers). "
            "Transfer is high among models trained alike and poorest from robust to non-robust models."
        ),
        build=lambda i: adversarial.fig5a_transferability(i.similarity, i.metrics),
        finding=findings.transferability_finding,
        reads=("transfer",),
        code=(adversarial,),
    ),
    "fig5bcd_transfer_cka": Figure(
        title="Fig 5 (b–d): source vs target representations of the source's adversarial examples",
        paper=(
            "Layer-wise CKA between source and target models fed the source's adversarial examples: high in early "
            "layers, dropping towards the end, when both are trained alike; dropping right after the first layer "
            "from a robust to a non-robust model (the pair with least transferability)."
        ),
        build=lambda i: adversarial.fig5bcd_transfer_cka(i.similarity, i.metrics),
        finding=findings.transfer_cka_finding,
        reads=("transfer",),
        code=(adversarial,),
    ),
    "fig6_convergence": Figure(
        title="Fig 6: convergence of each block over training",
        paper=(
            "CKA between each epoch's benign block outputs (each stage's last residual block, after the addition) "
            "and the final ones, for standard, PGD-AT and TRADES "
            "training (mean and spread over seeds), with the losses beneath. The first two blocks converge within a "
            "few epochs for every method; later layers converge late and, as the adversarial validation loss rises, "
            "move away again (overfitting in later layers only)."
        ),
        build=lambda i: dynamics.fig6_convergence(i.similarity, i.metrics),
        finding=findings.convergence_finding,
        reads=("cross_epoch",),
        code=(dynamics,),
    ),
    "convergence_epoch": Figure(
        title="Convergence epoch per layer (Fig 6 in numbers)",
        paper="The first epoch from which a layer's CKA to its final representation stays above the threshold. The paper finds early layers settle far sooner than late ones.",
        build=lambda i: summary.convergence_chart(i.summary),
        finding=findings.convergence_epoch_finding,
        reads=("cross_epoch",),
        code=(summary,),
    ),
    "fig25_epoch_by_epoch": Figure(
        title="Fig 25: epoch × epoch similarity of chosen layers",
        paper=(
            "CKA between the same layer's representations at every two epochs. Later layers are similar off the "
            "diagonal only early in training and at its end (several minima are visited); more so for adversarial "
            "than for benign representations."
        ),
        build=lambda i: dynamics.fig25_epoch_heatmaps(i.similarity, i.metrics),
        finding=findings.epoch_heatmap_finding,
        reads=("cross_epoch",),
        code=(dynamics,),
    ),
    "fig7_threat_models": Figure(
        title="Fig 7: robust models of different threat models",
        paper=(
            "Cross-model CKA between robust models trained against different threat models: top row each vs ℓ∞, "
            "bottom row each vs Snow. The ℓp models are alike across layers; Snow is closest to Gabor."
        ),
        build=lambda i: heatmaps.fig7_threat_models(i.similarity, i.metrics),
        finding=findings.threat_model_finding,
        reads=("cross_model",),
        code=(heatmaps,),
    ),
    "appb1_agreement": Figure(
        title="App. B.1: CKA vs Procrustes vs SVCCA",
        paper="The three measures lead to the same high-level insights; CKA is the cheapest.",
        build=lambda i: measures.appb1_agreement(i.similarity, i.metrics),
        finding=findings.agreement_finding,
        reads=("cross_layer", "cross_model", "benign_vs_adversarial", "transfer", "cross_epoch"),
        code=(measures,),
    ),
    "appb1_cost": Figure(
        title="App. B.1: cost of each measure",
        paper="CKA is 10× faster than Procrustes and 30× faster than SVCCA.",
        build=lambda i: measures.appb1_cost(i.similarity, i.metrics),
        finding=findings.cost_finding,
        reads=("cross_layer", "cross_model", "benign_vs_adversarial", "transfer", "cross_epoch"),
        code=(measures,),
    ),
}


@dataclass
class Report:
    """What `render_report` wrote: files per figure, figures skipped with the reason, and the page."""

    out_dir: Path
    written: dict[str, list[Path]] = field(default_factory=dict)  # figure name -> its image files
    tables: dict[str, list[Path]] = field(default_factory=dict)  # figure name -> its `Figure.tables` files
    skipped: dict[str, str] = field(default_factory=dict)  # figure name -> why it was not drawn
    unchanged: list[str] = field(default_factory=list)  # figures whose inputs and code had not changed: not redrawn
    index: Path | None = None
    summary: str | None = None  # where summary.parquet was written
    view: str | None = None  # where similarity_view.parquet was written (format "parquet")

    def __str__(self) -> str:
        lines = [f"{name}: {', '.join(p.name for p in paths)}" for name, paths in self.written.items()]
        lines += [f"{name}: skipped, {reason}" for name, reason in self.skipped.items()]
        if self.index is not None:
            lines.append(f"open {self.index}")
        return "\n".join(lines)


def render_report(storage: Storage, out_dir: Path | None = None, formats: Sequence[str] = ("png", "html")) -> Report:
    """Draw every figure in `FIGURES` from ``storage``'s Parquet files into ``out_dir``.

    ``out_dir`` defaults to the results' ``report/`` folder; it is required when the results are not local.
    ``formats``: any of ``png`` (vl-convert, scale 2), ``svg``, ``pdf`` (text kept as text) and ``html`` (one
    ``index.html``), and ``parquet``: `analysis.view.similarity_view`'s rows as ``similarity_view.parquet``.
    Table 1 is written as ``table1.csv`` and ``table1.tex`` too, whatever the formats. A figure without data
    is skipped, with the reason, rather than drawn empty; one whose inputs and code are as at the last render
    (``manifest.json``) is not redrawn. ``summary.parquet`` is written next to the page,
    in ``out_dir`` (`analysis.summary.SUMMARY`): reading results never writes into them, so results on a
    read-only disk or another user's folder render to any ``out_dir``.
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
    # Figures of comparisons label a sweep's model entries as trials (`read_metrics(models=True)`); figures of
    # training (no similarity kinds read) see the trials alone.
    compared = read_metrics(storage, models=True)
    summarized = summary.summarize(similarity, compared)
    inputs = Inputs(metrics, similarity, summarized)
    compared_inputs = Inputs(compared, similarity, summarized)
    report.summary = summary.write_summary(out, inputs.summary)
    if "parquet" in formats:
        out.write_table(view.VIEW_FILE, view.joined_view(similarity, compared).to_arrow())
        report.view = out.full_path(view.VIEW_FILE)
    manifest = _read_manifest(out)
    entries: dict[str, dict] = {}
    specs: dict[str, dict] = {}
    captions: dict[str, str] = {}
    images = [fmt for fmt in formats if fmt in IMAGE_FORMATS]
    with Progress(
        TextColumn("[bold]report[/]"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.description}"),
        TimeElapsedColumn(),
        console=Console(stderr=True),
        transient=True,
    ) as progress:
        task = progress.add_task("", total=len(FIGURES))
        for name, figure in FIGURES.items():
            progress.update(task, description=name)
            figure_inputs = compared_inputs if figure.reads else inputs
            key = _input_hash(figure, figure_inputs)
            previous = manifest.get(name, {})
            files = {fmt: f"{name}.{fmt}" for fmt in images}
            spec_file = f"{name}.vl.json"
            tables = previous.get("tables", []) if figure.tables is not None else []
            if previous.get("key") == key and all(out.exists(f) for f in [spec_file, *files.values(), *tables]):
                specs[name] = json.loads(out.read_bytes(spec_file))
                report.unchanged.append(name)
            else:
                try:
                    spec = figure.build(figure_inputs).to_dict()
                except NoData as reason:
                    report.skipped[name] = str(reason)
                    progress.advance(task)
                    continue
                specs[name] = spec
                out.write_bytes(spec_file, _script_json(spec).encode())
                _write_images(out, {fmt: files[fmt] for fmt in images}, spec)
                tables = _write_tables(out, figure, figure_inputs)
            entries[name] = {"key": key, "files": [spec_file, *files.values()], "tables": tables}
            report.written[name] = [Path(out.full_path(files[fmt])) for fmt in images]
            if tables:
                report.tables[name] = [Path(out.full_path(table)) for table in tables]
            captions[name] = _finding(figure, figure_inputs)
            progress.advance(task)
    out.write_json(MANIFEST, {"version": MANIFEST_VERSION, "figures": entries})

    if "html" in formats:
        page = index_html(_experiment_name(storage, compared), specs, report.skipped, captions, inputs)
        out.write_bytes(INDEX, page.encode())
        report.index = report.out_dir / INDEX
    return report


def index_html(
    experiment: str, specs: dict[str, dict], skipped: dict[str, str], captions: dict[str, str], inputs: Inputs
) -> str:
    """A self-contained page: the summary's numbers first, then a section per figure in `FIGURES` order (one
    chart container each, with what the paper found and what this run shows), the JavaScript inlined once."""
    contents, sections = [], []
    for name, figure in FIGURES.items():
        title = html.escape(figure.title)
        if name in specs:
            contents.append(f'<li><a href="#{name}">{title}</a></li>')
            table = figure.html_table(inputs) if figure.html_table is not None else ""
            this_run = (
                f'<p class="finding"><b>This run:</b> {html.escape(captions[name])}</p>' if captions.get(name) else ""
            )
            sections.append(
                f'<section id="{name}">\n<h2>{title}</h2>\n<p class="paper"><b>The paper:</b> {html.escape(figure.paper)}</p>\n'
                f'{this_run}\n{table}\n<div class="chart" id="fig-{name}"></div>\n'
                f'<script>show("fig-{name}", {_script_json(specs[name])});</script>\n</section>'
            )
        elif name in skipped:
            contents.append(f'<li class="skipped">{title}: not drawn</li>')
            sections.append(
                f'<section id="{name}">\n<h2>{title}</h2>\n'
                f'<p class="skipped">Not drawn: {html.escape(skipped[name])}.</p>\n</section>'
            )
    numbers = summary.summary_html(inputs.summary)
    numbers = (
        numbers
        + f"\n<p>Every trial's numbers are in <code>{html.escape(summary.SUMMARY)}</code> next to this page.</p>"
        if numbers
        else '<p class="skipped">No summary numbers: they need cross_layer or cross_epoch comparisons.</p>'
    )
    return _PAGE.format(
        title=html.escape(f"rayrs report: {experiment}"),
        bundle=_javascript_bundle(),
        summary=numbers,
        contents="\n".join(contents),
        sections="\n".join(sections),
    )


def _finding(figure: Figure, inputs: Inputs) -> str:
    """The figure's "this run" sentence; empty when it has nothing to say (the chart is drawn regardless)."""
    try:
        return figure.finding(inputs.metrics, inputs.similarity, inputs.summary)
    except (NoData, ValueError, TypeError, ZeroDivisionError, pl.exceptions.PolarsError):
        return ""


def _input_hash(figure: Figure, inputs: Inputs) -> str:
    """A content hash of what ``figure`` is drawn from: its similarity kinds' rows, the metrics, and its code."""
    digest = hashlib.sha256()
    for module in (*figure.code, load, layers, sys.modules[__name__]):
        digest.update(inspect.getsource(module).encode())
    for frame in (inputs.metrics, inputs.similarity.filter(pl.col("kind").is_in(figure.reads))):
        digest.update(str(frame.schema).encode())
        digest.update(frame.hash_rows(seed=0).to_numpy().tobytes())
    return digest.hexdigest()


def _read_manifest(out: Storage) -> dict[str, dict]:
    if not out.exists(MANIFEST):
        return {}
    try:
        manifest = json.loads(out.read_bytes(MANIFEST))
    except json.JSONDecodeError:
        return {}  # a damaged manifest only costs a full redraw
    return manifest.get("figures", {}) if manifest.get("version") == MANIFEST_VERSION else {}


def _write_images(out: Storage, files: dict[str, str], spec: dict) -> None:
    """Render ``spec`` once to SVG (vl-convert, no network) and write it as each of ``files`` (format -> name)."""
    if not files:
        return
    svg = vl_convert.vegalite_to_svg(spec, vl_version=_vl_version(), allowed_base_urls=[])
    render = {
        "svg": lambda: svg.encode(),
        "png": lambda: vl_convert.svg_to_png(svg, scale=PNG_SCALE),
        "pdf": lambda: vl_convert.svg_to_pdf(svg),  # vector, its text as text (searchable, selectable)
    }
    for fmt, name in files.items():
        out.write_bytes(name, render[fmt]())


def _write_tables(out: Storage, figure: Figure, inputs: Inputs) -> list[str]:
    """Write ``figure``'s `Figure.tables` files into ``out``; returns their names."""
    if figure.tables is None:
        return []
    files = figure.tables(inputs)
    for name, text in files.items():
        out.write_bytes(name, text.encode())
    return list(files)


@functools.cache
def _javascript_bundle() -> str:
    """Vega, Vega-Lite and vega-embed as one script (vl-convert builds it in seconds: once per process)."""
    return vl_convert.javascript_bundle(vl_version=_vl_version())


def _vl_version() -> str | None:
    """The Vega-Lite version Altair writes specs for, if vl-convert has it (else vl-convert's latest)."""
    major_minor = ".".join(alt.SCHEMA_VERSION.lstrip("v").split(".")[:2])
    return major_minor if major_minor in vl_convert.get_vegalite_versions() else None


def _experiment_name(storage: Storage, metrics: pl.DataFrame) -> str:
    names = metrics["experiment"].unique().to_list()
    return names[0] if len(names) == 1 else storage.root.rstrip("/").rsplit("/", 1)[-1]


def _script_json(spec: dict) -> str:
    # Inside a <script>, "</" would end it early and "<!--" followed by "<script" would keep the next "</script>"
    # from ending it (both blank the charts after it): no "<" at all, written as the JSON escape \u003c.
    return json.dumps(spec, separators=(",", ":")).replace("<", "\\u003c")


_PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>{title}</title>
<style>
body {{ font-family: system-ui, sans-serif; max-width: 1400px; margin: 2em auto; padding: 0 1em; color: #222; }}
p {{ max-width: 70em; line-height: 1.45; }}
section {{ margin-top: 2.5em; }}
.skipped {{ color: #8a5a00; }}
.finding {{ background: #f3f6fa; padding: 0.5em 0.8em; border-left: 3px solid #4c78a8; }}
table.numbers {{ border-collapse: collapse; margin: 1em 0; font-variant-numeric: tabular-nums; }}
table.numbers caption {{ text-align: left; font-weight: bold; padding-bottom: 0.4em; }}
table.numbers th, table.numbers td {{ border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: right; }}
table.numbers td:first-child, table.numbers td:nth-child(2) {{ text-align: left; }}
.vega-error {{ color: #b00; white-space: pre-wrap; }}
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
// Draw one chart; a failure is written into the page, where a reader (and the browser test) sees it.
function show(id, spec) {{
  vegaEmbed("#" + id, spec, EMBED_OPTIONS).catch((error) => {{
    const box = document.getElementById(id);
    box.innerHTML = "";
    const message = document.createElement("pre");
    message.className = "vega-error";
    message.textContent = "Vega error: " + error;
    box.appendChild(message);
  }});
}}
</script>
</head>
<body>
<h1>{title}</h1>
<section id="summary">
<h2>Summary: the numbers behind the pictures</h2>
{summary}
<ul class="contents">
{contents}
</ul>
</section>
{sections}
</body>
</html>
"""
