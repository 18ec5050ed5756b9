"""The `rayrs` command as a person meets it: help that lists the choices, one-line errors, nothing written on a mistake."""

from pathlib import Path

import pytest
from typer.testing import CliRunner

from rayrs.cli import app

REPO = Path(__file__).resolve().parents[1]
runner = CliRunner()


def test_sweep_help_lists_datasets_models_methods_and_threat_models():
    result = runner.invoke(app, ["sweep", "--help"], terminal_width=200)
    assert result.exit_code == 0
    for name in ("digits", "cifar10", "imagenette", "imagewoof", "wrn", "resnet18", "standard", "pgd", "linf", "l2",
                 "cross_layer", "--local", "--dry-run", "--resume"):
        assert name in result.output, name


def test_dry_run_prints_the_trials_and_jobs_and_writes_nothing(tmp_path):
    result = runner.invoke(app, ["sweep", str(REPO / "sweeps" / "quickstart.yaml"), "--dry-run", "--results", str(tmp_path / "r")],
                           terminal_width=200)
    assert result.exit_code == 0, result.output
    for trial in ("eps0", "eps0.05", "eps0.15"):
        assert trial in result.output
    assert "3 comparison jobs" in result.output
    assert "GPU-hours at 50 sustained TFLOP/s" in result.output
    # Storage next to the GPU-hours: each WRN-10-2 trial keeps 10 epochs' weights and 1 optimiser state, 1.22 MB
    # each (its 303k parameters and BatchNorm statistics in float32).
    assert result.output.count("13.4 MB") == 3
    assert "checkpoints: ~40.2 MB (every epoch's weights; checkpoint: optimizer: last, weights_dtype: float32)" in result.output
    assert not (tmp_path / "r").exists()


BAD = {
    "missing file": (None, "no such sweep file"),
    "unknown dataset": ("data: {dataset: mnist}\n", "unknown dataset 'mnist'; choose one of: digits, cifar10"),
    "unknown model": ("model: {arch: vit}\n", "unknown model 'vit'; choose one of: wrn"),
    "negative eps": ("train: {eps: -1/255}\n", "train.eps: Input should be greater than or equal to 0"),
    "unreadable YAML": ("train: [\n", "not valid YAML"),
    "missing dataset folder": ("data: {dataset: cifar10, root: /nonexistent/cifar}\n",
                               "cifar10: no CIFAR-10 python batches at /nonexistent/cifar/cifar-10-batches-py"),
    "dataset without a root": ("data: {dataset: imagenette}\n", "imagenette: no data root given (data.root)"),
    # Once refused only after sweep.json and trial.json were written (issue 12, item 12).
    "freezing an unknown layer": ("train: {epochs: 1, freeze: {through: stage9, from_epoch: 1}}\n",
                                  "train.freeze.through: no layer name starts with 'stage9'"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_exits_non_zero_with_one_line_and_writes_nothing(tmp_path, case):
    text, expected = BAD[case]
    sweep_file = tmp_path / "bad.yaml"
    if text is not None:
        sweep_file.write_text(text)
    results = tmp_path / "results"
    result = runner.invoke(app, ["sweep", str(sweep_file), "--results", str(results), "--local"], terminal_width=400)
    assert result.exit_code == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert expected in lines[0]
    assert "Traceback" not in result.output
    assert not results.exists()


def test_analyze_refuses_a_folder_without_results(tmp_path):
    result = runner.invoke(app, ["analyze", str(tmp_path)], terminal_width=400)
    assert result.exit_code == 1
    assert f"{tmp_path}: no metrics.parquet here" in result.stderr


@pytest.mark.parametrize(
    ("results", "expected"),
    [
        ("FILE", "is a file, not a folder; choose a folder path"),
        ("ftp://host/results", "unknown storage scheme 'ftp://'; use a local folder or one of file://, s3://"),
    ],
    ids=["results path is a file", "unknown storage scheme"],
)
def test_a_bad_results_location_exits_non_zero_with_one_line(tmp_path, results, expected):
    if results == "FILE":
        results = str(tmp_path / "a_file")
        (tmp_path / "a_file").write_text("not a folder")
    result = runner.invoke(app, ["sweep", str(REPO / "sweeps" / "quickstart.yaml"), "--results", results, "--local"],
                           terminal_width=400)
    assert result.exit_code == 1
    assert len(result.stderr.strip().splitlines()) == 1 and expected in result.stderr


def test_analyze_says_which_figures_it_skipped_and_what_to_add_brackets_included(tmp_path):
    from synthetic import write_results

    write_results(tmp_path / "results", kinds=["cross_model"])  # CKA alone: no App. B.1
    # No page (html) to hold the reasons: the console says them, one line each.
    result = runner.invoke(app, ["analyze", str(tmp_path / "results"), "--format", "parquet"], terminal_width=400)
    assert result.exit_code == 0, result.output
    # Square brackets in a reason are text, not console markup (rich would swallow "[cka, ...]").
    output = " ".join(result.output.split())  # the console wraps long lines
    assert "add `measures: [cka, procrustes, svcca]` to a comparison" in output
    assert "skipped figure fig6_convergence: Fig 6 needs a cross_epoch comparison" in output
