"""What `rayrs sweep` prints: one line about the report's figures, every trial's final accuracies, and plain
progress lines where the output is not a terminal (a log file, nohup)."""

import io
import re
from pathlib import Path

import polars as pl
import pytest
from rich.console import Console
from typer.testing import CliRunner

from rayrs.cli import app
from rayrs.console import PROGRESS_SECONDS_ENV, figures_line

# Two trials of two epochs, cross_layer only: the report draws a few figures and skips the rest.
TINY = """
name: tiny
data: {dataset: digits}
model: {arch: wrn, depth: 10, width: 1}
train: {method: pgd, epochs: 2, batch_size: 128, attack: {steps: 2}}
eval: {eps: 0.1, attack: {steps: 2}, train_subset: 64, test_subset: 64}
grid: {eps: [0, 0.1]}
compare: [{kind: cross_layer}]
cka: {probe_size: 128, batch_size: 64, passes: 1}
"""
PROGRESS_LINE = re.compile(r"^\d+:\d\d:\d\d (training|comparisons): ")


@pytest.fixture(scope="module")
def logged_sweep(tmp_path_factory):
    """`rayrs sweep --local` of TINY with its output captured (CliRunner: not a terminal), a line every 0.2 s."""
    folder = tmp_path_factory.mktemp("console")
    sweep_file = folder / "tiny.yaml"
    sweep_file.write_text(TINY)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(PROGRESS_SECONDS_ENV, "0.2")
        result = CliRunner().invoke(app, ["sweep", str(sweep_file), "--local", "--results", str(folder / "r")],
                                    terminal_width=100)
    assert result.exit_code == 0, result.output
    return folder / "r" / "tiny", result.output


def test_the_skipped_figures_are_one_line_and_their_reasons_are_in_the_report(logged_sweep):
    from analysis.report import FIGURES

    root, output = logged_sweep
    report = root / "report"
    drawn = len(list(report.glob("*.png")))  # every drawn figure writes one PNG
    assert 0 < drawn < len(FIGURES)
    assert "skipped figure" not in output
    expected = figures_line(drawn, len(FIGURES) - drawn, report / "index.html")
    assert [line for line in output.splitlines() if line.startswith("drew ")] == [expected]
    page = (report / "index.html").read_text()
    assert page.count('<p class="skipped">Not drawn: ') == len(FIGURES) - drawn
    assert "Fig 6 needs a cross_epoch comparison; add `- kind: cross_epoch` to `compare:`" in page


def test_every_trial_s_final_accuracies_are_in_one_table(logged_sweep):
    root, output = logged_sweep
    last = pl.read_parquet(root / "metrics.parquet").filter(pl.col("epoch") == pl.col("epoch").max().over("trial"))
    assert last.height == 2
    rows = {line.split()[1]: line for line in output.splitlines() if line.startswith("│ eps")}
    assert sorted(rows) == ["eps0", "eps0.1"]
    for trial in last.iter_rows(named=True):
        cells = [cell.strip() for cell in rows[trial["trial"]].strip("│").split("│")]
        assert cells[4:] == ["2/2", f"{trial['test_clean_acc']:.1%}", f"{trial['test_robust_acc']:.1%}", "0.1"]


def test_a_log_gets_plain_progress_lines_of_every_stage(logged_sweep):
    _, output = logged_sweep
    lines = [line for line in output.splitlines() if PROGRESS_LINE.match(line)]
    training = [line for line in lines if " training: " in line]
    comparisons = [line for line in lines if " comparisons: " in line]
    # The stage's last line is printed when it ends; more than one means the 0.2 s timer printed as well
    # (two trials of two PGD epochs take seconds).
    assert len(training) >= 2 and len(comparisons) >= 1, output
    assert training[-1].split(": ", 1)[1].startswith("trials 2/2 (0 running, 0 pending), epochs 4/4 (")
    assert "similarity 2/2" in comparisons[-1]
    assert not re.search(r"━ +\d+/\d+ .* eta ", output)  # no bars drawn into the log
    print(output)


def test_a_terminal_keeps_the_live_bars_and_gets_no_plain_lines():
    from rayrs.sweep import _Progress

    screen = io.StringIO()
    with _Progress(Console(file=screen, force_terminal=True, width=120), "training", 0.0) as progress:
        progress.add("train", "epochs", 4)
        progress.advance("train", 2, "eps0 epoch 2")
    assert "epochs" in screen.getvalue() and "━" in screen.getvalue()
    assert not any(PROGRESS_LINE.match(line) for line in screen.getvalue().splitlines())


def test_the_figures_line_counts_in_words():
    assert figures_line(5, 10, Path("r/index.html")) == (
        "drew 5 figures; 10 need comparisons or trials this sweep does not ask for: see the report (r/index.html)"
    )
    assert figures_line(14, 1, None).startswith("drew 14 figures; 1 needs ")
    assert figures_line(15, 0, Path("r/index.html")) == "drew all 15 figures of the report"
