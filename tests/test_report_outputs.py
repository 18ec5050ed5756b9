"""What `rayrs analyze` writes for a paper: every figure as a PDF beside its PNG (vector, text kept as text),
Table 1 as CSV and LaTeX with the numbers and intervals of the PNG/HTML table, and one console line about
skipped figures. On the synthetic tree's metrics (`tests/synthetic.py`: 17 trials, two seeds for some
configurations, ℓ2 / Snow / Gabor labels that LaTeX must be given escaped).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import zlib
from pathlib import Path

import polars as pl
import pytest
from polars.testing import assert_frame_equal
from typer.testing import CliRunner

import synthetic
from analysis.load import read_metrics, trial_info
from analysis.report import FIGURES, render_report
from analysis.table1 import COLUMNS, latex_number, latex_text, table1_frame
from rayrs.cli import app
from rayrs.console import figures_line


@pytest.fixture(scope="module")
def table_report(tmp_path_factory):
    """The synthetic metrics alone (no comparison: Table 1 and the accuracy curves draw), rendered to PNG and PDF."""
    results = synthetic.write_results(tmp_path_factory.mktemp("metrics_only") / "results", kinds=[])
    return results, render_report(results, formats=("png", "pdf"))


# -- PDF ----------------------------------------------------------------------------------------------------
def pdf_text(pdf: bytes) -> str:
    """The text a PDF shows, in content-stream order: each ``(...) Tj`` string's 2-byte glyph codes mapped through
    its font's ToUnicode CMap. Enough for vl-convert's PDFs (one page, Type0 fonts, Flate streams); written here
    so the check needs no PDF library."""
    objects = {int(n): body for n, body in re.findall(rb"(?s)(\d+) 0 obj(.*?)endobj", pdf)}

    def stream(body: bytes) -> bytes:
        data = re.search(rb"(?s)stream\r?\n(.*?)\r?\nendstream", body).group(1)
        return zlib.decompress(data) if b"/FlateDecode" in body else data

    def to_unicode(font: int) -> dict[int, str]:
        cmap = stream(objects[int(re.search(rb"/ToUnicode (\d+) 0 R", objects[font]).group(1))])
        pairs = re.findall(rb"<([0-9A-Fa-f]+)>\s*<([0-9A-Fa-f]+)>", cmap.split(b"beginbfchar", 1)[1])
        return {int(code, 16): chr(int(char, 16)) for code, char in pairs}

    fonts = {
        name: to_unicode(int(ref))
        for body in objects.values()
        for table in re.findall(rb"(?s)/Font\s*<<(.*?)>>", body)
        for name, ref in re.findall(rb"/(\w+) (\d+) 0 R", table)
    }
    escapes = {b"n": b"\n", b"r": b"\r", b"t": b"\t", b"b": b"\b", b"f": b"\f"}

    def unescape(match: re.Match) -> bytes:
        code = match.group(1)
        return bytes([int(code, 8)]) if code[:1].isdigit() else escapes.get(code, code)

    text = []
    for body in objects.values():
        if b"stream" not in body or b"/Subtype /Image" in body:
            continue
        try:
            content = stream(body)
        except zlib.error:
            continue
        font = None
        for match in re.finditer(rb"/(\w+) [\d.]+ Tf|\(((?:\\.|[^\\)])*)\) Tj", content):
            if match.group(1):
                font = fonts.get(match.group(1))
            elif font is not None:
                raw = re.sub(rb"\\([0-7]{1,3}|.)", unescape, match.group(2))
                text.append("".join(font.get(int.from_bytes(raw[i : i + 2], "big"), "?") for i in range(0, len(raw), 2)))
    return "".join(text)


def test_every_drawn_figure_gets_a_pdf_beside_its_png_with_its_title_as_text(table_report):
    results, report = table_report

    assert list(report.written) == ["table1", "accuracy_curves"]
    for name, files in report.written.items():
        assert [f.name for f in files] == [f"{name}.png", f"{name}.pdf"]
    pdf = (report.out_dir / "table1.pdf").read_bytes()
    assert pdf.startswith(b"%PDF-") and pdf.rstrip().endswith(b"%%EOF")
    assert len(re.findall(rb"/Type\s*/Page\b", pdf)) == 1
    # The chart's title and cells are text in the PDF, not pixels: searchable and selectable in a paper.
    text = pdf_text(pdf)
    assert "Table 1: accuracy (%), Δ = train − test" in text
    assert "PGD-AT ℓ2 ε=0.5" in text and "benign train" in text
    curves = pdf_text((report.out_dir / "accuracy_curves.pdf").read_bytes())
    assert all(label in curves for label in trial_info(read_metrics(results))["label"])  # the legend, as text


# -- Table 1 as CSV and LaTeX ------------------------------------------------------------------------------
def test_table1_csv_beside_its_png_parses_back_to_the_tables_numbers(table_report):
    results, report = table_report
    frame = table1_frame(read_metrics(results))

    assert [p.name for p in report.tables["table1"]] == ["table1.csv", "table1.tex"]
    assert all(p.parent == report.out_dir for p in report.tables["table1"])
    parsed = pl.read_csv(report.out_dir / "table1.csv", schema_overrides={"epochs": pl.String})
    assert_frame_equal(parsed, frame.drop("config_order"), check_exact=True)
    assert frame.filter(pl.col("seeds") > 1).height > 0  # configurations averaged over seeds are in it too


def latex_rows(tex: str) -> list[list[str]]:
    """The body rows of a LaTeX tabular (between \\midrule and \\bottomrule), each as its cells."""
    body = tex.split("\\midrule\n", 1)[1].split("\\bottomrule", 1)[0]
    return [line.removesuffix(" \\\\").split(" & ") for line in body.strip().splitlines()]


def test_table1_latex_has_one_row_per_configuration_and_checkpoint_with_its_numbers(table_report):
    results, report = table_report
    frame = table1_frame(read_metrics(results))
    tex = (report.out_dir / "table1.tex").read_text()

    assert "\\begin{tabular}{lll" + "r" * 7 + "}" in tex and tex.rstrip().endswith("\\end{tabular}")
    rows = latex_rows(tex)
    assert len(rows) == frame.height
    for cells, row in zip(rows, frame.iter_rows(named=True)):
        assert len(cells) == 3 + len(COLUMNS) + 1
        assert cells[:3] == [row["dataset"], latex_text(row["config"]), f"{row['checkpoint']} (epoch {row['epochs']})".replace("–", "--")]
        for cell, column in zip(cells[3:], COLUMNS):
            value, lower, upper = (100 * row[f"{column}{s}"] for s in ("", "_lower", "_upper"))
            expected = f"{value:.1f} {{\\scriptsize [{lower:.1f}, {upper:.1f}]}}".replace("-", "$-$")
            assert cell == expected, (row["config"], column)
        assert cells[-1] == str(row["seeds"])
    # Labels with LaTeX's specials and the paper's symbols arrive escaped (pdfLaTeX reads no raw "ε" or "_").
    assert "PGD-AT $\\ell$2 $\\varepsilon$=" in tex
    body = "\n".join(" & ".join(cells) for cells in rows)
    assert "ε" not in body and "ℓ" not in body and "_" not in body.replace("\\_", "")


def test_latex_numbers_carry_a_minus_sign_not_a_hyphen():
    assert latex_number("-3.2 {\\scriptsize [-5.1, 0.4]}") == "$-$3.2 {\\scriptsize [$-$5.1, 0.4]}"
    assert latex_number("– {\\scriptsize –}") == "-- {\\scriptsize --}"  # unknown: an en dash, as in latex_text


def test_latex_text_escapes_specials_once_and_writes_symbols_in_math_mode():
    assert latex_text("PGD-AT ℓ∞ ε=8/255 (run_1 & 5% {x})") == (
        "PGD-AT $\\ell_\\infty$ $\\varepsilon$=8/255 (run\\_1 \\& 5\\% \\{x\\})"
    )
    assert latex_text("a\\b~c^d – e") == "a\\textbackslash{}b\\textasciitilde{}c\\textasciicircum{}d -- e"


@pytest.mark.skipif(shutil.which("pdflatex") is None, reason="pdflatex is not installed")
def test_table1_latex_compiles(table_report, tmp_path):
    _, report = table_report
    shutil.copy(report.out_dir / "table1.tex", tmp_path / "table1.tex")
    (tmp_path / "paper.tex").write_text(
        "\\documentclass{article}\n\\usepackage{booktabs}\n\\usepackage[margin=1cm,landscape]{geometry}\n"
        "\\begin{document}\n\\begin{table}\\tiny\n\\input{table1.tex}\n\\end{table}\n\\end{document}\n"
    )
    done = subprocess.run(["pdflatex", "-interaction=nonstopmode", "-halt-on-error", "paper.tex"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout[-2000:]
    assert (tmp_path / "paper.pdf").read_bytes().startswith(b"%PDF-")


# -- the console ---------------------------------------------------------------------------------------------
def test_analyze_prints_one_line_about_skipped_figures_their_reasons_on_the_page(table_report, tmp_path):
    results, _ = table_report
    out = tmp_path / "report"
    done = CliRunner().invoke(app, ["analyze", str(Path(results.root)), "--out", str(out), "--format", "html"],
                              terminal_width=400)

    assert done.exit_code == 0, done.output
    skipped = len(FIGURES) - 2
    assert figures_line(2, skipped, out / "index.html") in " ".join(done.output.split())
    assert "skipped figure" not in done.output
    page = (out / "index.html").read_text()
    assert page.count("Not drawn:") == skipped and "Fig 6 needs a cross_epoch comparison" in page
