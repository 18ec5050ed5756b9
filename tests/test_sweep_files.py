"""Every sweep file of the paper's experiments validates and dry-runs (without Ray, data or GPUs)."""

from pathlib import Path

import pytest
from typer.testing import CliRunner

from rayrs.cli import app
from rayrs.config import expand, load_experiment

SWEEPS = sorted((Path(__file__).resolve().parents[1] / "sweeps").glob("*.yaml"))
PAPER_FILES = {"quickstart", "width_eps", "robust_vs_standard", "dynamics", "threat_models", "transfer", "freezing"}


def test_every_paper_experiment_has_a_sweep_file():
    assert PAPER_FILES <= {path.stem for path in SWEEPS}


@pytest.mark.parametrize("path", SWEEPS, ids=[p.stem for p in SWEEPS])
def test_a_sweep_file_names_its_paper_figure_and_dry_runs(path, tmp_path):
    header = path.read_text().split("\nname:")[0]
    assert "Fig" in header or "App." in header  # the opening comment names the paper's figure or appendix
    result = CliRunner().invoke(app, ["sweep", str(path), "--dry-run", "--results", str(tmp_path)], terminal_width=200)
    assert result.exit_code == 0, result.output
    assert "GPU-hours" in result.output and "comparison jobs" in result.output
    assert not any(tmp_path.iterdir())  # a dry run writes nothing


def test_the_paper_settings_are_what_the_files_say():
    width_eps = expand(load_experiment(Path(SWEEPS[0]).parent / "width_eps.yaml"))
    assert {(t.config.model.width, round(t.config.train.eps * 255)) for t in width_eps} == {
        (w, e) for w in (1, 2, 5, 10) for e in (0, 2, 4, 8, 16)
    }
    threat = expand(load_experiment(Path(SWEEPS[0]).parent / "threat_models.yaml"))
    assert {t.config.train.threat_model: t.config.train.eps for t in threat} == {
        "linf": pytest.approx(8 / 255), "l2": 1.0, "jpeg": 25.0, "gabor": 75.0, "snow": 2.0,
    }
    dynamics = expand(load_experiment(Path(SWEEPS[0]).parent / "dynamics.yaml"))
    assert sorted({t.config.train.method for t in dynamics}) == ["pgd", "standard", "trades"] and len(dynamics) == 9
